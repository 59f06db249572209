"""Exact resume after `kill -9` at chosen points, with the default backbone (EfficientNet-Lite0 from its
packaged ImageNet weights: BatchNorm) and with a ViT (no BatchNorm).

Each run is `python -m udon_fast.train` in its own process (the `cli` fixture: forked from a server
that imported udon_fast once, one CPU thread).  The kill hook (`UDON_FAST_KILL_AT`, see
`udon_fast.kill_points`) makes a run SIGKILL itself at a named point: no timer, no polling.  A run
that finishes before its point is reached is not a failure: the chain goes on and must still end
with the outputs of the uninterrupted run.
"""

import json
import signal
from pathlib import Path

import pytest
import torch
from cli_process import hit_kill_point, kill_chain

from udon_fast.kill_points import ENV, kill_point

COMMON = [
    "--batch-size",
    "8",
    "--update-every",
    "3",
    "--log-every",
    "4",
    "--checkpoint-every",
    "3",
    "--eval-batch-size",
    "16",
    "--frozen-epochs",
    "1",
    "--no-compile",
    "--no-progress",
    "--deterministic",
    "--data-threads",
    "1",
    "--steps",
    "8",
]
BACKBONES = {
    # The default backbone and weights at the smallest image size it accepts (its total stride).
    "lite0": ["--backbone", "tf_efficientnet_lite0", "--pretrained", "packaged", "--image-size", "32"],
    "vit": ["--backbone", "vit_tiny_patch16_224", "--pretrained", "none", "--image-size", "32"],
}
# 48 train images / batch 8 = 6 steps per epoch; 8 steps: checkpoints after steps 3, 6 (validation) and
# 8 (validation); log points after steps 3, 4, 6 and 8 (sampler updates after 3 and 6).  Each kill is
# counted in its own process; a resumed run has no initial evaluation.
CHAIN = [
    ("step:2", "before the first checkpoint"),
    (
        "step:5",
        "mid-epoch, two steps after the checkpoint of step 3, between the log points 4 and 6 (the "
        "5th step's row not written yet)",
    ),
    ("evaluation:1", "during the validation of step 6"),
    ("checkpoint_write:2", "while last.pt of step 6 is written (best.pt already replaced)"),
    ("checkpoint:1", "right after last.pt of step 6"),
    (None, "to the end"),
]


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
def test_resume_after_kills_matches_the_uninterrupted_run(backbone, cli, data_root, tmp_path):
    args = ["--data-root", data_root, *BACKBONES[backbone], *COMMON]
    reference, out = tmp_path / "reference", tmp_path / "killed"
    run = cli("train", [*args, "--out", reference], tmp_path / "reference.log")
    assert run.code == 0, run.output[-3000:]
    killed = []
    for stage, kill_at, run in kill_chain(cli, args, out, CHAIN, tmp_path):
        if run.code == -signal.SIGKILL:
            killed.append(kill_at)
            assert not (out / "results.json").exists()
        if kill_at == "step:2" and run.code == -signal.SIGKILL:
            assert not (out / "checkpoints" / "last.pt").exists()
        if stage == 1 and killed[:1] == ["step:2"]:
            assert "--resume: no checkpoint in" in run.output
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


def test_kill_hook_fires_at_the_chosen_occurrence_only(cli, monkeypatch):
    assert cli.call(hit_kill_point, "step:3", "step", 2) == 0
    assert cli.call(hit_kill_point, "step:3", "step", 3) == -signal.SIGKILL
    assert cli.call(hit_kill_point, "step:1", "checkpoint", 4) == 0
    assert cli.call(hit_kill_point, None, "step", 4) == 0
    monkeypatch.setenv(ENV, "steps:1")
    with pytest.raises(ValueError, match="UDON_FAST_KILL_AT='steps:1': expected EVENT:N"):
        kill_point("step")
