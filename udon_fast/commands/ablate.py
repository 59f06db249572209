"""`python -m udon_fast.ablate --out DIR [--seeds N] [any train flag]`: what each part of UDON adds.

Runs UDON (dynamic sampler + distillation), the dynamic sampler without distillation,
round-robin with distillation and the UnED baseline (round-robin, no distillation), each for
seeds 0..N-1, every run with the same train flags (passed through to `python -m udon_fast.train`;
the grid sets --sampler, --distill/--no-distill, --seed and --out itself).  Writes
`ablation.json`, `ablation.md` and `ablation.png` into DIR; each run lives in
DIR/runs/<variant>/seed<k>/.  Rerunning the same command resumes a partly finished grid: complete
runs are kept, an interrupted one continues from its last checkpoint.  While a grid runs, DIR is locked
(and each run's folder by its run): a second grid on DIR exits at once, naming the running process.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..extras import needs_extra

with needs_extra("train"):
    from tqdm import tqdm

from ..ablation.grid import (
    GRID_OPTIONS,
    VARIANTS,
    GridError,
    claim_folder,
    make_cells,
    planned_steps,
    raising,
    run_cell,
)
from ..ablation.summary import write_outputs
from ..config import TrainConfig, load_yaml
from ..files.run_lock import lock_folder
from .cli import command_parser, run_command
from .train import build_parser as train_parser
from .train import parse_args as parse_train_args


def build_parser() -> argparse.ArgumentParser:
    parser = raising(
        command_parser(
            "python -m udon_fast.ablate",
            __doc__,
            "Any other flag is a train flag (python -m udon_fast.train --help), e.g. --epochs 3.",
            allow_abbrev=False,
        )
    )
    grid = parser.add_argument_group("grid")
    grid.add_argument("--out", required=True, help="grid folder (new, or a grid folder to resume)")
    grid.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per variant (default 3)")
    return parser


def parse(argv: list[str] | None):
    """(grid arguments, pass-through train flags, base TrainConfig); GridError/ValueError on bad input."""
    args, train_args = build_parser().parse_known_args(argv)
    if args.seeds < 1:
        raise GridError(f"--seeds must be >= 1, got {args.seeds}")
    return args, train_args, check_train_args(train_args)


def check_train_args(train_args: Sequence[str]) -> TrainConfig:
    """Validate the pass-through flags with the trainer's own parser; refuse the grid's options."""
    args = raising(train_parser()).parse_args(list(train_args))
    given = [name for name in GRID_OPTIONS if getattr(args, name) is not None]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise GridError(
            f"{flags} cannot be passed through: the grid sets --sampler, --distill/--no-distill, "
            f"--seed and --out (= <--out>/runs/<variant>/seed<k>) for each run itself"
        )
    if args.config:
        clash = sorted(set(load_yaml(args.config)) & set(GRID_OPTIONS))
        if clash:
            raise GridError(
                f"{args.config}: sets {', '.join(clash)}, which the grid sets for each run itself; "
                f"remove {'it' if len(clash) == 1 else 'them'} from the file"
            )
    return parse_train_args(list(train_args))


def main(argv: list[str] | None = None) -> int:
    """Exit code (docs/cli.md): 0 done, 1 a run failed, 2 bad flags or an unusable --out, 130 interrupted."""
    return run_command(lambda: _ablate(argv), "udon_fast.ablate")


def _ablate(argv: list[str] | None) -> int:
    args, train_args, config = parse(argv)
    out = Path(args.out)
    per_run = planned_steps(config)
    with lock_folder(out, "--out"):  # one grid per folder; each run also locks its own folder
        claim_folder(out, train_args)
        return _run_grid(out, args.seeds, train_args, config, per_run)


def _run_grid(out: Path, seeds: int, train_args: list[str], config, per_run: int) -> int:
    cells = make_cells(out, seeds)
    header = (
        f"{len(VARIANTS)} variants x {seeds} seed(s), {per_run} steps per run; "
        f"train flags: {' '.join(train_args) or '(defaults)'}"
    )
    runs_bar = tqdm(total=len(cells), desc="runs", unit="run", position=0, disable=not config.progress)
    steps_bar = tqdm(total=per_run * len(cells), desc="steps", unit="step", position=1, disable=not config.progress)
    finished = sum(per_run for c in cells if c.complete)
    runs_bar.update(sum(c.complete for c in cells))
    failure = None
    try:
        for cell in cells:
            if cell.complete:
                continue
            runs_bar.set_postfix_str(cell.name)

            def poll(cell=cell):
                steps_bar.n = finished + min(cell.steps_done(), per_run)
                steps_bar.refresh()

            run_cell(cell, train_args, on_poll=poll)
            finished += per_run
            runs_bar.update()
            write_outputs(out, cells, VARIANTS, header)
    except (GridError, OSError) as exc:
        failure = (f"udon_fast.ablate: error: {exc}", 1)
    except KeyboardInterrupt:
        failure = (f"udon_fast.ablate: interrupted; rerun the same command to resume the grid in {out}", 130)
    finally:
        steps_bar.close()
        runs_bar.close()
    if failure:
        print(failure[0], file=sys.stderr)
        return failure[1]
    try:
        write_outputs(out, cells, VARIANTS, header)
    except OSError as exc:
        print(f"udon_fast.ablate: error: {exc}", file=sys.stderr)
        return 1
    print((out / "ablation.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
