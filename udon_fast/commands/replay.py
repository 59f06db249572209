"""`python -m udon_fast.ablation.replay RUN [--update-every 20 50 100] [--seeds 20] [--steps N]`: replay the
dynamic sampler on RUN's measured loss curves: which `update_every` starves a domain
(`udon_fast.ablation.starvation`)?

RUN is a finished run, best one with `--sampler round_robin` (every domain's teacher CE is then measured
all along); the replay runs over RUN's number of steps (or --steps), for several seeds.  Prints, per
`update_every`: each domain's mean share of the steps, the mean number of steps it is starved (its weight
below 1 / (10 x domains)), and in how many seeds it is starved for more than half the run.
"""

import argparse
import sys
from pathlib import Path

from ..ablation.starvation import loss_curves, starvation
from ..errors import InputError
from ..trainer.report import read_metrics
from .cli import command_parser, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("python -m udon_fast.ablation.replay", __doc__)
    parser.add_argument("run", help="a run folder with metrics.jsonl (best: --sampler round_robin)")
    replayed = parser.add_argument_group("replay")
    replayed.add_argument(
        "--update-every",
        type=int,
        nargs="+",
        default=[20, 50, 100, 200],
        metavar="STEPS",
        help="the update_every values to compare (default 20 50 100 200)",
    )
    replayed.add_argument("--seeds", type=int, default=20, help="replays per setting, seeds 0..N-1 (default 20)")
    replayed.add_argument("--steps", type=int, help="steps to replay (default: the run's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit code (docs/cli.md): 0 done, 2 bad options or a run folder without metrics.jsonl."""
    args = build_parser().parse_args(argv)
    return run_command(lambda: _replay(args), "udon_fast.ablation.replay")


def _replay(args: argparse.Namespace) -> int:
    path = Path(args.run) / "metrics.jsonl"
    if not path.is_file():
        raise InputError(f"{path} not found")
    if args.seeds < 1 or min(args.update_every) < 1 or (args.steps is not None and args.steps < 1):
        raise InputError("--seeds, --steps and --update-every must be >= 1")
    records = read_metrics(path)
    curves = loss_curves(records)
    steps = args.steps or len(records)
    print(
        f"{path}: {len(records)} steps measured, {steps} replayed, domains {', '.join(curves)}; "
        f"{args.seeds} seeds per setting"
    )
    print("| update_every | " + " | ".join(f"{n}: share / missed windows / replays with a miss" for n in curves) + " |")
    print("|---|" + "---|" * len(curves))
    for every in args.update_every:
        stats = starvation(curves, steps, every, args.seeds)
        cells = [
            f"{100 * s['share']:.0f}% / {s['missed_windows']:.2f} / {s['replays_with_a_miss']}" for s in stats.values()
        ]
        print(f"| {every} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
