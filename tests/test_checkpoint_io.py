"""Writing run outputs: file modes, stale temporary files, a full disk, an unwritable --out, a file
that is not a checkpoint.  The full disk is a real tmpfs of a few MB (CI runs as root); where
mounting is not permitted those tests skip and say why.
"""

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from udon_fast.data.synthetic import write_tiny_uned
from udon_fast.files.outputs import OutputError, atomic_write, atomic_write_text, remove_stale_temp_files
from udon_fast.model import CheckpointError, UDONModel, load_model, save_checkpoint
from udon_fast.trainer.report import MetricsLog, read_metrics

TINY = dict(backbone_name="vit_tiny_patch16_224", image_size=32, backbone_kwargs={"depth": 1})
RUN = [
    "--backbone",
    "tf_efficientnet_lite0",
    "--pretrained",
    "packaged",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--update-every",
    "2",
    "--checkpoint-every",
    "2",
    "--eval-batch-size",
    "16",
    "--no-compile",
    "--no-progress",
    "--deterministic",
    "--data-threads",
    "1",
    "--steps",
    "4",
]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return UDONModel(domains={"a": 3}, **TINY)


def _mount_tmpfs(where: Path, *options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(where)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'mount failed'}); CI runs as root")


@pytest.fixture()
def small_disk(tmp_path):
    """A 48 MiB tmpfs (unmounted afterwards) and a function that fills it up to `free` bytes left."""
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "size=48m")

    def fill(free: int = 0) -> None:
        stats = os.statvfs(disk)
        filler = disk / "filler"
        with filler.open("ab") as f:
            remaining = stats.f_bavail * stats.f_frsize - free
            chunk = b"\0" * (1 << 20)
            while remaining > 0:
                try:
                    remaining -= f.write(chunk[:remaining])
                    f.flush()
                except OSError:
                    break

    yield disk, fill
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_checkpoints_get_the_umask_mode_like_other_files(tmp_path, model):
    old = os.umask(0o027)
    try:
        path = save_checkpoint(tmp_path / "last.pt", model)
        atomic_write_text(tmp_path / "results.json", "{}")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    assert [(tmp_path / n).stat().st_mode & 0o777 for n in ("last.pt", "results.json", "plain.txt")] == [0o640] * 3
    assert load_model(path)[0].config == model.config


def test_stale_temp_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".last.pt.udon-{dead_pid}-0a1b2c3d.tmp"
    stale.write_bytes(b"partial checkpoint")
    own_leftover = tmp_path / f".best.pt.udon-{os.getpid()}-00000000.tmp"  # an earlier process with this pid
    own_leftover.write_bytes(b"partial")
    starting = tmp_path / f".last.pt.udon-{os.getppid()}-11111111.tmp"  # a live process, not locked yet
    starting.write_bytes(b"")
    foreign = tmp_path / ".last.pt.abcdef.tmp"  # not ours: an old-style or another tool's temp file
    foreign.write_bytes(b"x")
    dead_and_locked = tmp_path / f".metrics.jsonl.udon-{dead_pid}-22222222.tmp"
    with dead_and_locked.open("wb") as writing:  # held by a live writer (here: this test)
        fcntl.flock(writing.fileno(), fcntl.LOCK_EX)
        removed = remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted([stale.name, own_leftover.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([starting.name, foreign.name, dead_and_locked.name])


def test_a_write_in_progress_is_never_removed_as_stale(tmp_path):
    with atomic_write(tmp_path / "last.pt") as f:
        f.write(b"half")
        assert remove_stale_temp_files(tmp_path) == []  # same pid as the writer, but its lock is held
        f.write(b" and the rest")
    assert (tmp_path / "last.pt").read_bytes() == b"half and the rest"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_file_that_is_not_a_checkpoint_gets_one_line_naming_it(tmp_path):
    not_torch = tmp_path / "results.json"
    not_torch.write_text(json.dumps({"final": {}}))
    with pytest.raises(
        CheckpointError, match=f"{not_torch} is not a udon_fast checkpoint .not a file written by torch.save"
    ) as error:
        load_model(not_torch)
    foreign_objects = tmp_path / "pickled.pt"
    torch.save({"format": "udon_fast.checkpoint", "obj": OutputError("x")}, foreign_objects)
    with pytest.raises(CheckpointError, match=f"{foreign_objects} is not a udon_fast checkpoint") as second:
        load_model(foreign_objects)
    for message in (str(error.value), str(second.value)):
        assert "\n" not in message and "weights_only" not in message and "issue" not in message


def test_full_disk_names_the_file_and_keeps_the_last_good_checkpoint(small_disk, model):
    disk, fill = small_disk
    path = save_checkpoint(disk / "checkpoints" / "last.pt", model, extra={"step": 1})
    before = path.read_bytes()
    fill(free=64 * 1024)
    with pytest.raises(OutputError, match=rf"cannot write checkpoint {path}: No space left on device$"):
        save_checkpoint(path, model, extra={"step": 2})
    assert path.read_bytes() == before and load_model(path)[1]["extra"]["step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
    fill(free=0)
    metrics = disk / "metrics.jsonl"
    with pytest.raises(OutputError, match=rf"cannot write {metrics}: No space left on device$"):
        log = MetricsLog(metrics)
        for step in range(2000):
            log.append({"step": step, "loss": 1.0})
    with pytest.raises(OutputError, match=rf"cannot write {disk / 'results.json'}: No space left on device$"):
        atomic_write_text(disk / "results.json", "{}" * 10000)


def test_torn_last_metrics_line_is_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"ste')
    assert read_metrics(path) == [{"step": 0}, {"step": 1}]
    path.write_text('{"step": 0}\n{"ste\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_metrics(path)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("uned")
    write_tiny_uned(
        root, {"shops": {"train": 6, "test": 3, "index": 3}, "birds": {"train": 10, "test": 4}}, per_class=3
    )
    return root


def test_train_on_a_full_disk_stops_with_one_line_and_a_valid_checkpoint(small_disk, cli, data_root, tmp_path):
    disk, fill = small_disk
    out = disk / "run"
    args = ["--data-root", data_root, "--out", out, *RUN]
    first = cli("train", args, tmp_path / "first.log", kill_at="checkpoint:1")  # killed after last.pt of step 2
    if first.code == 0:
        pytest.skip("the run finished before its first checkpoint could be followed by a full disk")
    assert first.code == -signal.SIGKILL, first.output[-3000:]
    last = out / "checkpoints" / "last.pt"
    saved = last.read_bytes()
    fill(free=256 * 1024)  # room for metrics lines, none for a checkpoint
    resumed = cli("train", [*args, "--resume"], tmp_path / "resumed.log")
    errors = [line for line in resumed.output.splitlines() if "error" in line.lower()]
    assert resumed.code == 2 and "Traceback" not in resumed.output, resumed.output[-3000:]
    # No val split here: the end of an epoch writes best.pt (the epoch's model), then last.pt.
    assert len(errors) == 1 and re.fullmatch(
        f"udon_fast.train: error: cannot write checkpoint "
        f"{re.escape(str(last.parent))}/(best|last).pt: No space left on device",
        errors[0],
    ), errors
    assert last.read_bytes() == saved and load_model(last)[1]["extra"]["progress"]["step"] == 2
    assert not [p for p in out.rglob("*.tmp")]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [0, 1, 2, 3]


def test_unwritable_out_is_refused_before_any_work(cli, data_root, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    run = cli("train", ["--data-root", data_root, "--out", blocker / "run", *RUN], tmp_path / "notdir.log")
    assert (
        run.code == 2
        and run.output.strip() == f"udon_fast.train: error: cannot write --out {blocker / 'run'}: Not a directory"
    )
    read_only = tmp_path / "read_only"
    if os.geteuid() == 0:
        _mount_tmpfs(read_only, "ro", "size=1m")
        cause = "Read-only file system"
    else:
        read_only.mkdir()
        read_only.chmod(0o500)
        cause = "Permission denied"
    try:
        run = cli("train", ["--data-root", data_root, "--out", read_only / "run", *RUN], tmp_path / "ro.log")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(read_only)], check=False)
    assert (
        run.code == 2
        and run.output.strip() == f"udon_fast.train: error: cannot write --out {read_only / 'run'}: {cause}"
    )
