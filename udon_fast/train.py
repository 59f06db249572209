"""`python -m udon_fast.train`: train and evaluate UDON.  No arguments: the built-in dataset on CPU.

`torchrun --nproc_per_node N -m udon_fast.train ...` trains data-parallel (nccl on GPU, gloo on CPU).
"""
import shlex
import sys

from .cli import run_command
from .config import parse_args
from .errors import EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    """Exit code (docs/cli.md): 0 done, 1 the run failed (diverged, could not compile), 2 bad options or
    input, 130 interrupted (Ctrl-C; one line says how to resume)."""
    argv = sys.argv[1:] if argv is None else argv
    return run_command(lambda: _train(argv), "udon_fast.train")


def _train(argv: list[str]) -> int:
    config = parse_args(argv)
    from .trainer.loop import TrainingInterrupted, train

    try:
        train(config)
    except TrainingInterrupted as exc:
        again = shlex.join(["python", "-m", "udon_fast.train", *map(str, argv), *([] if config.resume else ["--resume"])])
        print(f"udon_fast.train: {exc}; to continue: {again}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
