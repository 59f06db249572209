"""Shared pytest setup: `gpu` tests skip cleanly without CUDA; every test starts seeded; the tiny
two-domain UnED dataset the trainer tests share."""

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


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """A tiny UnED layout (read-only for the tests that share it): "shops" with val/test queries searching
    an index split, "birds" evaluated leave-one-out; 3 solid-colour JPEGs per class."""
    from udon_fast.data.synthetic import write_tiny_uned

    root = tmp_path_factory.mktemp("uned")
    write_tiny_uned(
        root,
        {"shops": {"train": 6, "val": 3, "test": 3, "index": 3}, "birds": {"train": 10, "val": 4, "test": 4}},
        per_class=3,
    )
    return root


@pytest.fixture(scope="session")
def served_gallery(data_root, tmp_path_factory):
    """(run folder, index file) shared by the service and browser tests: a 4-step run on `data_root`
    (its gallery pages included) and a flat index of every image (tests/served_gallery.py)."""
    from served_gallery import trained_gallery

    return trained_gallery(data_root, tmp_path_factory.mktemp("served"))
