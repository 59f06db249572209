"""`python -m udon_fast.train`: train and evaluate UDON.  No arguments: the built-in dataset on CPU.

`torchrun --nproc_per_node N -m udon_fast.train ...` trains data-parallel (nccl on GPU, gloo on CPU).
"""
import sys

from .config import parse_args


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(argv)
    except (ValueError, FileNotFoundError) as exc:
        print(f"udon_fast.train: error: {exc}", file=sys.stderr)
        return 2
    from .trainer.loop import TrainingDiverged, train
    from .trainer.step import CompileError

    try:
        train(config)
    except (TrainingDiverged, CompileError, OSError, ValueError) as exc:
        print(f"udon_fast.train: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
