"""One process per output folder: a second train or --resume on a folder a run holds exits at once with one
line naming the holder, torchrun's ranks all stop (no deadlock), ablate's grid folder is locked, and a dead
holder never blocks the next run."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from udon_fast.commands import ablate
from udon_fast.commands import train as train_cli
from udon_fast.files.run_lock import LOCK_FILE, FolderInUse, lock_folder

TINY = [
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


def _train_held_at_first_step(argv, ready, release):
    """Process body: a real training that stops after its first step until `release` is set."""
    from udon_fast.trainer import loop

    def hold(event):
        if event == "step" and not ready.is_set():
            ready.set()
            release.wait(120)

    loop.kill_point = hold
    sys.exit(train_cli.main(argv))


def _refusal(output: str, out) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in output, output[-3000:]
    assert lines[0].startswith(f"udon_fast.train: error: --out {out} is in use by another run: pid "), lines[0]
    return lines[0]


def test_a_second_run_and_a_second_resume_on_a_held_out_are_refused(cli, data_root, tmp_path):
    out = tmp_path / "run"
    argv = [str(a) for a in ["--data-root", data_root, "--out", out, *TINY]]
    ready, release = cli.context.Event(), cli.context.Event()
    first = cli.context.Process(target=_train_held_at_first_step, args=(argv, ready, release))
    first.start()
    try:
        assert ready.wait(300), "the first run never reached its first step"
        for name, extra in (("second", []), ("resume", ["--resume"])):
            run = cli("train", [*argv, *extra], tmp_path / f"{name}.log")
            assert run.code == 2
            line = _refusal(run.output, out)
            assert f"pid {first.pid} on host {socket.gethostname()}, started " in line
    finally:
        release.set()
        first.join(300)
    assert first.exitcode == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]
    assert json.loads((out / "config.json").read_text())["steps"] == 4
    assert not (out / LOCK_FILE).exists()


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from udon_fast.files.run_lock import lock_folder; "
            f"lock_folder({str(out)!r}); print('locked', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            FolderInUse,
            match=rf"^--out {out} is in use by another run: pid {holder.pid} on host "
            rf"{socket.gethostname()}, started \d{{4}}-\d\d-\d\dT[\d:]+Z: .*time",
        ):
            lock_folder(out)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with lock_folder(out) as lock:  # the OS dropped the dead holder's lock
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert out.is_dir() and not any(out.iterdir())  # the folder existed before this lock: kept, lock file gone


def test_a_folder_made_for_the_lock_is_removed_when_nothing_was_written(tmp_path):
    with lock_folder(tmp_path / "new" / "run"):
        assert (tmp_path / "new" / "run" / LOCK_FILE).is_file()
    assert not (tmp_path / "new" / "run").exists()


@pytest.mark.slow
def test_torchrun_ranks_all_stop_when_rank_0_finds_the_folder_in_use(data_root, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with lock_folder(out):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                "2",
                "--standalone",
                "-m",
                "udon_fast.train",
                "--data-root",
                str(data_root),
                "--out",
                str(out),
                *TINY,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
    assert result.returncode != 0
    # Rank 0's refusal; rank 1 got the same verdict and stops with the same line, unless torchrun, seeing
    # rank 0 exit first, stops it before it prints (a race between the two exits).  Either way no hang.
    refusal = f"udon_fast.train: error: --out {out} is in use by another run: pid {os.getpid()}"
    assert 1 <= result.stderr.count(refusal) <= 2, result.stderr[-3000:]
    assert result.stderr.count("udon_fast.train: error:") == result.stderr.count(refusal), result.stderr[-3000:]
    assert not (out / "config.json").exists()


def test_ablate_refuses_a_grid_folder_in_use(data_root, tmp_path, capsys):
    out = tmp_path / "grid"
    with lock_folder(out):
        code = ablate.main(["--out", str(out), "--seeds", "1", "--data-root", str(data_root), *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"udon_fast.ablate: error: --out {out} is in use by another run: pid {os.getpid()}")
    assert not (out / "runs").exists()
