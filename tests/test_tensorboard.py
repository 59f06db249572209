"""--tensorboard event files and summary.csv, and both across four kills and resumes: the resumed run's
events, read back with TensorBoard's own EventAccumulator, hold every step once, equal to the
uninterrupted run's (images/s aside)."""

import csv
import signal
from pathlib import Path

from cli_process import kill_chain
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from udon_fast.losses.api import UDONLossOutput

ARGS = [
    "--backbone",
    "vit_tiny_patch16_224",
    "--pretrained",
    "none",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--update-every",
    "2",
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
    "--gallery",
    "0",
    "--tensorboard",
]
# 48 train images / batch 8 = 6 steps per epoch; checkpoints after steps 3, 6 (validation) and 8
# (validation).  The kills leave logged steps and a logged validation past the last checkpoint.
CHAIN = [
    ("step:2", "before the first checkpoint: the next run starts from step 0"),
    ("step:5", "two steps after the checkpoint of step 3"),
    ("checkpoint_write:2", "while last.pt of step 6 is written: validation of step 6 already logged"),
    ("checkpoint:1", "right after last.pt of step 6"),
    (None, "to the end"),
]


def _scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _summary(out: Path) -> list[dict[str, str]]:
    with (out / "summary.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_events_and_summary_survive_kills_and_resumes(cli, data_root, tmp_path):
    args = ["--data-root", data_root, *ARGS]
    reference, out = tmp_path / "reference", tmp_path / "killed"
    run = cli("train", [*args, "--out", reference], tmp_path / "reference.log")
    assert run.code == 0, run.output[-3000:]
    killed = [kill_at for _, kill_at, run in kill_chain(cli, args, out, CHAIN, tmp_path) if run.code == -signal.SIGKILL]
    assert len(killed) == 4, killed
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 5  # one file per process

    expected = _scalars(reference)
    domains = ("birds", "shops")
    assert {f"loss/{d}/{t}" for d in domains for t in UDONLossOutput._fields} <= set(expected)
    assert {f"sampler_weight/{d}" for d in domains} | {"lr/heads", "lr/backbone", "images_per_s"} <= set(expected)
    for metric in ("p_at_1", "mmp_at_5"):
        assert {f"val/{metric}/{d}" for d in (*domains, "mean")} <= set(expected)
        assert [step for step, _ in expected[f"val/{metric}/mean"]] == [5, 7]  # each epoch's last step
    assert [step for step, _ in expected["images_per_s"]] == list(range(8))
    steps_by_loss = sorted(s for d in domains for s, _ in expected[f"loss/{d}/total"])
    assert steps_by_loss == list(range(8))

    resumed = _scalars(out)
    assert set(resumed) == set(expected)
    for tag, points in expected.items():
        steps = [step for step, _ in resumed[tag]]
        assert steps == [step for step, _ in points], tag  # every step once, in order: nothing doubled
        if tag != "images_per_s":
            assert resumed[tag] == points, tag

    rows = _summary(out)
    assert [r["epoch"] for r in rows] == ["0", "1"] and [r["end_step"] for r in rows] == ["6", "8"]
    assert [r["steps"] for r in rows] == ["6", "2"]
    for mine, theirs in zip(rows, _summary(reference)):
        for column in (
            "total",
            "teacher_ce",
            "kl",
            "lr_heads",
            "val_p_at_1",
            "val_mmp_at_5",
            "val_p_at_1_birds",
            "val_mmp_at_5_shops",
        ):
            assert mine[column] == theirs[column], column
    for row, (_, value) in zip(rows, expected["val/p_at_1/mean"]):  # events hold float32
        assert abs(float(row["val_p_at_1"]) - value) < 1e-6
