"""Shared pytest setup: `gpu` tests skip cleanly without CUDA; every test starts seeded."""
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def cli():
    """`cli(module, argv, log, kill_at=None) -> Result(code, output)`: `python -m udon_fast.<module> ARGV`
    in a forked process (see tests/cli_process.py)."""
    from cli_process import CliRunner

    return CliRunner()
