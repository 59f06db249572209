"""The package imports on a CPU-only machine and reports its accelerated paths."""

import subprocess
import sys

import udon_fast
from udon_fast.commands import info


def test_public_names_import():
    for name in ("udon_loss", "normalized_softmax_ce", "UDONLoss", "UDONLossOutput"):
        assert hasattr(udon_fast, name), name


def test_info_runs_and_reports_every_component():
    result = subprocess.run([sys.executable, "-m", "udon_fast.info"], capture_output=True, text=True, check=True)
    for item in (
        "torch",
        "CUDA device",
        "triton",
        "DALI",
        "faiss",
        "timm",
        "loss backend native",
        "loss backend triton",
        "backend='auto' on",
    ):
        assert item in result.stdout, item


def test_info_rows_are_honest_about_cuda():
    rows = dict(info.report())
    assert rows["CUDA device"].startswith("yes") == udon_fast.losses.backends.torch.cuda.is_available()
    assert rows["loss backend reference"].startswith("available")
