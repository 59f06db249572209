"""The ablation grid: which runs it holds, where each lives, and running them (resumable).

The grid crosses the two parts of UDON that the baseline lacks, the dynamic sampler and the
distillation terms, over seeds 0..N-1:

    udon               --sampler dynamic     --distill
    dynamic_only       --sampler dynamic     --no-distill
    round_robin_distill --sampler round_robin --distill
    baseline           --sampler round_robin --no-distill   (the UnED baseline)

The off-the-shelf backbone (results "baseline": its own features, before any training) does not depend
on the variant or the seed, so only the grid's first run evaluates it; every other run gets
`--no-baseline`.

Each run is one `python -m udon_fast.train` subprocess (its DALI threads and memory end with it)
writing to `<out>/runs/<variant>/seed<k>/`, with its stdout/stderr in `train.log` there.  A run
whose `results.json` exists is complete and never redone; any other run is started with
`--resume`, which continues from its last checkpoint (or starts fresh when it has none).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import TrainConfig, parse_folders
from ..data import default_data_root, load_domains_with_splits
from ..errors import InputError
from ..files.outputs import atomic_write_text
from ..files.run_lock import LOCK_FILE


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: a sampler and whether distillation (KL + similarity) is on."""

    name: str
    label: str
    sampler: str
    distill: bool


VARIANTS = (
    Variant("udon", "UDON (dynamic sampler + distillation)", "dynamic", True),
    Variant("dynamic_only", "dynamic sampler, no distillation", "dynamic", False),
    Variant("round_robin_distill", "round-robin + distillation", "round_robin", True),
    Variant("baseline", "baseline (round-robin, no distillation)", "round_robin", False),
)
# Train options the grid sets itself; a pass-through flag or --config key may not set them.
GRID_OPTIONS = ("sampler", "distill", "seed", "out", "resume")
STATE_FILE = "grid.json"


class GridError(InputError):
    """A user mistake (bad flag, mismatched grid folder) or a failed run: one line for the CLI."""


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    variant: Variant
    seed: int
    out: Path
    baseline: bool = False  # evaluate the off-the-shelf backbone (the grid's first run only)

    @property
    def name(self) -> str:
        return f"{self.variant.name}/seed{self.seed}"

    @property
    def complete(self) -> bool:
        return (self.out / "results.json").is_file()

    def argv(self, train_args: Sequence[str]) -> list[str]:
        """The trainer's command line for this run (always --resume: a fresh run starts anyway)."""
        return [
            *train_args,
            "--sampler",
            self.variant.sampler,
            "--distill" if self.variant.distill else "--no-distill",
            "--seed",
            str(self.seed),
            "--out",
            str(self.out),
            "--resume",
            "--no-progress",
            *(() if self.baseline else ("--no-baseline",)),
        ]

    def steps_done(self) -> int:
        """Training steps recorded so far (lines of metrics.jsonl)."""
        try:
            with (self.out / "metrics.jsonl").open("rb") as f:
                return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))
        except FileNotFoundError:
            return 0


def raising(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`parser`, made to raise GridError (one line for the CLI) instead of printing usage and exiting."""

    def error(message: str):
        raise GridError(message)

    parser.error = error
    return parser


def make_cells(out: Path, seeds: int) -> list[Cell]:
    """Every run of the grid, seed-major (all variants of seed 0 first): a partial grid is comparable.
    The first evaluates the off-the-shelf backbone for the whole grid."""
    return [
        Cell(v, s, out / "runs" / v.name / f"seed{s}", baseline=s == 0 and i == 0)
        for s in range(seeds)
        for i, v in enumerate(VARIANTS)
    ]


def planned_steps(config: TrainConfig) -> int:
    """Training steps of one run (one process: the trainer's `TrainConfig.schedule`)."""
    folders = parse_folders(config.folder)
    domains, _ = load_domains_with_splits(
        default_data_root(config.data_root, folders), config.domains, folders, config.split_seed
    )
    return config.schedule(sum(len(d.train) for d in domains.values()))[1]


def claim_folder(out: Path, train_args: Sequence[str]) -> None:
    """Create `out` with grid.json, or check that an existing grid there used the same train flags (the
    caller holds `out`'s lock, `files.run_lock.lock_folder`)."""
    state = out / STATE_FILE
    if state.is_file():
        saved = json.loads(state.read_text(encoding="utf-8"))["train_args"]
        if saved != list(train_args):
            raise GridError(
                f"--out {out} holds a grid run with the train flags {saved!r}, not {list(train_args)!r}; "
                f"repeat those flags to resume it or choose another --out"
            )
        return
    if out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()):
        raise GridError(f"--out {out} is not empty and holds no {STATE_FILE}; choose a new folder")
    atomic_write_text(state, json.dumps({"train_args": list(train_args)}, indent=2))


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["(no output)"])[-1].strip()


def run_cell(
    cell: Cell, train_args: Sequence[str], on_poll: Callable[[], None] = lambda: None, poll_s: float = 1.0
) -> None:
    """Run (or continue) one cell in a subprocess; `on_poll` is called while it runs.

    Raises GridError naming the run and its log when the trainer fails; on KeyboardInterrupt the
    trainer is stopped (its last checkpoint stays) and the interrupt propagates.
    """
    cell.out.mkdir(parents=True, exist_ok=True)
    log = cell.out / "train.log"
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p),
    )
    with log.open("a", encoding="utf-8") as sink:
        sink.write(f"$ python -m udon_fast.train {' '.join(cell.argv(train_args))}\n")
        sink.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "udon_fast.train", *cell.argv(train_args)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            while proc.poll() is None:
                on_poll()
                time.sleep(poll_s)
        except BaseException:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    on_poll()
    if proc.returncode != 0 or not cell.complete:
        raise GridError(f"run {cell.name} failed (exit code {proc.returncode}): {_last_line(log)} (log: {log})")
