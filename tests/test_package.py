"""The package imports on a CPU-only machine, reports its accelerated paths, and keeps README and CI in step."""
import subprocess
import sys
from pathlib import Path

import udon_fast
from udon_fast import info

ROOT = Path(__file__).resolve().parents[1]


def test_public_names_import():
    for name in ("udon_loss", "normalized_softmax_ce", "UDONLoss", "UDONLossOutput"):
        assert hasattr(udon_fast, name), name


def test_info_runs_and_reports_every_component():
    result = subprocess.run([sys.executable, "-m", "udon_fast.info"], capture_output=True, text=True, check=True)
    for item in ("torch", "CUDA device", "triton", "DALI", "faiss", "timm", "loss backend native",
                 "loss backend triton", "backend='auto' on"):
        assert item in result.stdout, item


def test_info_rows_are_honest_about_cuda():
    rows = dict(info.report())
    assert rows["CUDA device"].startswith("yes") == udon_fast.losses.backends.torch.cuda.is_available()
    assert rows["loss backend reference"].startswith("available")


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = [line.strip() for line in readme.splitlines() if line.strip().startswith("pip install torch==")]
    assert len(commands) == 2, commands
    assert commands[1].endswith("python -m pytest")
    assert commands[1] in (ROOT / ".ci" / "run").read_text()
