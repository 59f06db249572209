"""Multi-node launch on one machine: two `torchrun --nnodes 2 --node-rank {0,1} --rdzv-backend c10d` launchers
of one rank each train exactly like one `torchrun --nproc_per_node 2` launcher (gloo, CPU).

Both jobs run `python -m udon_fast.train` on the same tiny data and options (tiny ViT, 32 px, 4 steps,
frozen backbone for the first epoch, then trained); the per-step losses in metrics.jsonl must agree to
1e-6 relative (the same two ranks, the same global batches; only who hosts the rendezvous differs).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from distributed_helpers import free_port

from udon_fast.data.synthetic import write_tiny_uned

TERMS = ("total", "teacher_ce", "student_ce", "kl", "similarity")
TRAIN = [
    "-m",
    "udon_fast.train",
    "--backbone",
    "vit_tiny_patch16_224",
    "--pretrained",
    "none",
    "--image-size",
    "32",
    "--batch-size",
    "4",
    "--steps",
    "4",
    "--update-every",
    "2",
    "--eval-batch-size",
    "4",
    "--frozen-epochs",
    "1",
    "--no-compile",
    "--no-progress",
    "--no-baseline",
    "--deterministic",
    "--data-threads",
    "1",
]


def _torchrun(launcher: list[str], data_root: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            *launcher,
            *TRAIN,
            "--data-root",
            str(data_root),
            "--out",
            str(out),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-4000:]


def _losses(out: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if k in (*TERMS, "step", "domain")}
        for line in (out / "metrics.jsonl").read_text().splitlines()
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    data_root = root / "uned"
    write_tiny_uned(data_root, {"shops": {"train": 4, "test": 3}, "birds": {"train": 5, "test": 3}}, per_class=2)
    _finish(_torchrun(["--standalone", "--nproc_per_node", "2"], data_root, root / "one_node"))
    port = free_port()
    nodes = [
        _torchrun(
            [
                "--nnodes",
                "2",
                "--node-rank",
                str(node),
                "--nproc-per-node",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "--rdzv-id",
                "udon-test",
            ],
            data_root,
            root / "two_nodes",
        )
        for node in range(2)
    ]
    for node in nodes:
        _finish(node)
    return root


def test_two_single_rank_nodes_train_like_one_node_of_two_ranks(runs):
    one, two = _losses(runs / "one_node"), _losses(runs / "two_nodes")
    assert [r["step"] for r in two] == list(range(4))
    assert [r["domain"] for r in two] == [r["domain"] for r in one]
    for a, b in zip(one, two):
        for term in TERMS:
            assert b[term] == pytest.approx(a[term], rel=1e-6), (a["step"], term)
    assert (runs / "two_nodes" / "checkpoints" / "last.pt").is_file()
    assert json.loads((runs / "two_nodes" / "results.json").read_text()) == json.loads(
        (runs / "one_node" / "results.json").read_text()
    )
