"""`python -m udon_fast.train`: train and evaluate UDON.  No arguments: the built-in dataset on CPU.

`torchrun --nproc_per_node N -m udon_fast.train ...` trains data-parallel (nccl on GPU, gloo on CPU).
"""

import argparse
import shlex
import sys

from ..config import DATA, FIELDS, LOSS, MODEL, NEGATABLE, OUTPUT, PRESETS, SCHEDULE, TrainConfig, load_yaml, on_off
from ..errors import EXIT_INTERRUPTED
from .cli import command_parser, run_command


def build_parser() -> argparse.ArgumentParser:
    """The train parser: --preset and --config, then one flag per TrainConfig field in its field's group, with
    its field's help (`_option`); every default is None, so that only the flags given override."""
    parser = command_parser(
        "python -m udon_fast.train",
        "Train a UDON universal embedding. With no arguments: the built-in dataset on CPU.",
        "Precedence: the defaults < --preset < --config FILE.yaml < the flags given. Exit code "
        "130 on Ctrl-C: the run stops at a checkpoint, and one line says how to resume it.",
    )
    sources = parser.add_argument_group("presets and files")
    sources.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="builtin",
        help="builtin: small CPU run (default); uned: the paper's full setup (ViT-B/16, B=128, 10 epochs)",
    )
    sources.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (keys as the flags, - or _)")
    groups = {name: parser.add_argument_group(name) for name in (DATA, MODEL, LOSS, SCHEDULE, OUTPUT)}
    for name, f in FIELDS.items():
        group, help_text, flag = groups[f.metadata["group"]], f.metadata["help"], "--" + name.replace("_", "-")
        if name == "compile":
            group.add_argument(
                flag, dest=name, nargs="?", const=True, default=None, type=on_off, metavar="{on,off}", help=help_text
            )
            group.add_argument("--no-compile", dest=name, action="store_false", help="the same as --compile off")
        elif name in NEGATABLE:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.type is bool:
            group.add_argument(flag, dest=name, action="store_true", default=None, help=help_text)
        elif name == "margins":
            group.add_argument(flag, dest=name, type=_margins_flag, metavar="M1,M2,M3", help=help_text)
        elif name == "domains":
            group.add_argument(flag, dest=name, nargs="+", default=None, help=help_text)
        elif name == "folder":
            group.add_argument(flag, dest=name, action="append", default=None, metavar="NAME=DIR", help=help_text)
        else:
            kind = {int: int, float: float, int | None: int, float | None: float}.get(f.type, str)
            group.add_argument(flag, dest=name, type=kind, default=None, help=help_text)
    return parser


def _margins_flag(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers M1,M2,M3, got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """TrainConfig from the command line (presets, YAML, flags), validated."""
    args = build_parser().parse_args(argv)
    values = dict(PRESETS[args.preset])
    if args.config:
        values.update(load_yaml(args.config))
    values.update({k: v for k, v in vars(args).items() if k in FIELDS and v is not None})
    return TrainConfig(**values).validate()


def main(argv: list[str] | None = None) -> int:
    """Exit code (docs/cli.md): 0 done, 1 the run failed (diverged, could not compile), 2 bad options or
    input, 130 interrupted (Ctrl-C; one line says how to resume)."""
    argv = sys.argv[1:] if argv is None else argv
    return run_command(lambda: _train(argv), "udon_fast.train")


def _train(argv: list[str]) -> int:
    config = parse_args(argv)
    from ..trainer.loop import TrainingInterrupted, train

    try:
        train(config)
    except TrainingInterrupted as exc:
        again = shlex.join(
            ["python", "-m", "udon_fast.train", *map(str, argv), *([] if config.resume else ["--resume"])]
        )
        print(f"udon_fast.train: {exc}; to continue: {again}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
