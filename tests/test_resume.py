"""Exact resume after `kill -9` at chosen points, with the default backbone (EfficientNet-Lite0 from its
packaged ImageNet weights: BatchNorm) and with a ViT (no BatchNorm).

Each run is `udon_fast.train.main` in its own process, forked from a server that imported the package
once (a fresh interpreter per run would cost seconds of imports each).  The kill hook
(`UDON_FAST_KILL_AT`, see `udon_fast.kill_points`) makes a run SIGKILL itself at a named point: no
timer, no polling.  A run that finishes before its point is reached is not a failure: the chain goes
on and must still end with the outputs of the uninterrupted run.
"""
import json
import multiprocessing
import os
import signal
import sys
import threading
from pathlib import Path

import pytest
import torch
from tqdm import tqdm

from udon_fast.data.synthetic import write_tiny_uned
from udon_fast.kill_points import ENV

COMMON = ["--batch-size", "8", "--update-every", "2", "--checkpoint-every", "3", "--eval-batch-size", "16",
          "--frozen-epochs", "1", "--no-compile", "--no-progress", "--deterministic", "--data-threads", "1",
          "--steps", "8"]
BACKBONES = {
    # The default backbone and weights at the smallest image size it accepts (its total stride).
    "lite0": ["--backbone", "tf_efficientnet_lite0", "--pretrained", "packaged", "--image-size", "32"],
    "vit": ["--backbone", "vit_tiny_patch16_224", "--pretrained", "none", "--image-size", "32"],
}
# 48 train images / batch 8 = 6 steps per epoch; 8 steps: checkpoints after steps 3, 6 (validation) and
# 8 (validation).  Each kill is counted in its own process; a resumed run has no initial evaluation.
CHAIN = [
    ("step:2", "before the first checkpoint"),
    ("step:5", "mid-epoch, two steps after the checkpoint of step 3"),
    ("evaluation:1", "during the validation of step 6"),
    ("checkpoint_write:2", "while last.pt of step 6 is written (best.pt already replaced)"),
    ("checkpoint:1", "right after last.pt of step 6"),
    (None, "to the end"),
]


def _train_in_child(argv: list[str], kill_at: str | None, log: str) -> None:
    """Process body: `python -m udon_fast.train ARGV` with one fixed CPU thread, output to `log`."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
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
    from udon_fast import train

    code = train.main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


@pytest.fixture(scope="module")
def launcher():
    """Start a run in a process forked from a server that has udon_fast imported; returns its exit code."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["udon_fast.train", "udon_fast.trainer.loop"])

    def launch(argv: list[str], kill_at: str | None, log: Path) -> int:
        process = context.Process(target=_train_in_child, args=(argv, kill_at, str(log)))
        process.start()
        process.join()
        return process.exitcode

    return launch


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("uned")
    write_tiny_uned(root, {"shops": {"train": 6, "val": 3, "test": 3, "index": 3},
                           "birds": {"train": 10, "val": 4, "test": 4}}, per_class=3)
    return root


def _metrics(out: Path) -> list[dict]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        del record["images_per_s"]
    return records


def _assert_same_tensors(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_resume_after_kills_matches_the_uninterrupted_run(backbone, launcher, data_root, tmp_path):
    args = ["--data-root", str(data_root), *BACKBONES[backbone], *COMMON]
    reference, out = tmp_path / "reference", tmp_path / "killed"
    assert launcher([*args, "--out", str(reference)], None, tmp_path / "reference.log") == 0, \
        (tmp_path / "reference.log").read_text()[-3000:]
    killed = []
    for stage, (kill_at, where) in enumerate(CHAIN):
        log = tmp_path / f"stage{stage}.log"
        argv = [*args, "--out", str(out)] + (["--resume"] if stage else [])
        code = launcher(argv, kill_at, log)
        assert code in (0, -signal.SIGKILL), f"{where}: exit code {code}\n{log.read_text()[-3000:]}"
        if code == -signal.SIGKILL:
            killed.append(kill_at)
            assert not (out / "results.json").exists()
        if kill_at == "step:2" and code == -signal.SIGKILL:
            assert not (out / "checkpoints" / "last.pt").exists()
    assert json.loads((out / "results.json").read_text()) == json.loads((reference / "results.json").read_text())
    assert _metrics(out) == _metrics(reference)
    for name in ("last.pt", "best.pt"):
        mine = torch.load(out / "checkpoints" / name, weights_only=True)
        theirs = torch.load(reference / "checkpoints" / name, weights_only=True)
        _assert_same_tensors(mine["model"], theirs["model"], f"{name} model")
        _assert_same_tensors(mine["optimizer"], theirs["optimizer"], f"{name} optimizer")
        _assert_same_tensors(mine["extra"]["progress"], theirs["extra"]["progress"], f"{name} progress")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    print(f"{backbone}: killed at {killed}")
