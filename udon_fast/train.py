"""`python -m udon_fast.train`: train and evaluate UDON.  No arguments: the built-in dataset on CPU.

`torchrun --nproc_per_node N -m udon_fast.train ...` trains data-parallel (nccl on GPU, gloo on CPU).
"""
import shlex
import sys

from .config import parse_args


def main(argv: list[str] | None = None) -> int:
    """Exit code: 0 done, 1 the run failed, 2 bad options, 130 interrupted (Ctrl-C; one line says how to resume)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        config = parse_args(argv)
    except (ValueError, FileNotFoundError) as exc:
        print(f"udon_fast.train: error: {exc}", file=sys.stderr)
        return 2
    from .trainer.loop import TrainingDiverged, TrainingInterrupted, train
    from .trainer.step import CompileError

    try:
        train(config)
    except (TrainingDiverged, CompileError, OSError, ValueError) as exc:
        print(f"udon_fast.train: error: {exc}", file=sys.stderr)
        return 1
    except TrainingInterrupted as exc:
        again = shlex.join(["python", "-m", "udon_fast.train", *map(str, argv), *([] if config.resume else ["--resume"])])
        print(f"udon_fast.train: {exc}; to continue: {again}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
