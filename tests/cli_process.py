"""Run a udon_fast command line (`python -m udon_fast.<module> ARGV`) in its own process, cheaply.

Each run is the module's `main(argv)` in a process forked from a server that imported udon_fast once
(a fresh interpreter per run would cost seconds of imports each), with one CPU thread, stdout and
stderr captured in a log file, and optionally the kill hook armed (`UDON_FAST_KILL_AT`, see
`udon_fast.kill_points`).  A crash of the command (a segfault, SIGKILL) cannot take the test
process with it: it shows as a negative exit code.
"""

import importlib
import multiprocessing
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from udon_fast.kill_points import ENV, kill_point

PRELOAD = [
    "udon_fast.train",
    "udon_fast.trainer.loop",
    "udon_fast.evaluate",
    "udon_fast.embed",
    "udon_fast.search",
    "udon_fast.data.__main__",
]


@dataclass
class Result:
    """Exit code (negative: killed by that signal) and everything the command printed."""

    code: int
    output: str


def _main_in_child(module: str, argv: list[str], kill_at: str | None, log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if kill_at is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = kill_at
    torch.set_num_threads(1)
    # tqdm's default lock is a multiprocessing semaphore, which a killed child would leak (a warning
    # at exit); a thread lock does its job in this one process.
    tqdm.set_lock(threading.RLock())
    code = importlib.import_module(f"udon_fast.commands.{module}").main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


def hit_kill_point(spec: str | None, event: str, times: int) -> None:
    """Process body: reach `event` `times` times with `UDON_FAST_KILL_AT=spec`."""
    if spec is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = spec
    for _ in range(times):
        kill_point(event)


class CliRunner:
    """`runner(module, argv, log, kill_at=None) -> Result`; `runner.call(function, *args) -> exit code`."""

    def __init__(self):
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(PRELOAD)

    def __call__(self, module: str, argv: list[str], log: Path, kill_at: str | None = None) -> Result:
        process = self.context.Process(target=_main_in_child, args=(module, [str(a) for a in argv], kill_at, str(log)))
        process.start()
        process.join()
        return Result(process.exitcode, Path(log).read_text(errors="replace"))

    def call(self, function, *args) -> int:
        """Run the module-level `function(*args)` in a forked process; its exit code."""
        process = self.context.Process(target=function, args=args)
        process.start()
        process.join()
        return process.exitcode


def kill_chain(cli: "CliRunner", argv: list, out: Path, chain: list[tuple[str | None, str]], logs: Path):
    """Run `python -m udon_fast.train ARGV --out OUT` once per (kill point, description) of `chain`, each
    run after the first with --resume; yields (stage, kill point, Result) after checking that the run
    finished or was killed at its point (SIGKILL)."""
    for stage, (kill_at, where) in enumerate(chain):
        run = cli("train", [*argv, "--out", out] + (["--resume"] if stage else []), logs / f"{stage}.log", kill_at)
        assert run.code in (0, -signal.SIGKILL), f"{where}: exit code {run.code}\n{run.output[-3000:]}"
        yield stage, kill_at, run
