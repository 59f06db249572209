"""Checkpoints carry a CRC-32 per record (torch.save's zip archive) and every load verifies them: flipped
bytes are refused with one line naming the file, for the library and for train --resume."""

import zipfile

import pytest
import torch

from udon_fast.commands import train as train_cli
from udon_fast.model import CheckpointError, UDONModel, load_model, save_checkpoint
from udon_fast.model.checkpoint import read_checkpoint

TINY = dict(backbone_name="vit_tiny_patch16_224", image_size=32, backbone_kwargs={"depth": 1})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = UDONModel(domains={"a": 3}, **TINY)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.pt", model, extra={"step": 7})


def _flipped(source, target, offset: int):
    data = bytearray(source.read_bytes())
    data[offset] ^= 0x01
    target.write_bytes(bytes(data))
    return target


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_a_flipped_byte_in_a_tensor_is_refused_naming_the_file_and_record(checkpoint, tmp_path):
    with zipfile.ZipFile(checkpoint) as archive:
        record = max(archive.infolist(), key=lambda info: info.file_size)
        start = record.header_offset + 30 + len(record.filename.encode()) + len(record.extra)
    damaged = _flipped(checkpoint, tmp_path / "damaged.pt", start + record.file_size // 2)
    with pytest.raises(CheckpointError) as error:
        load_model(damaged)
    assert str(error.value) == (
        f"checkpoint {damaged} is damaged: record {record.filename!r} does not match its "
        f"CRC-32 checksum (flipped or overwritten bytes); use another checkpoint or rerun"
    )


def test_a_flip_anywhere_is_refused_or_changes_nothing(checkpoint, tmp_path):
    """Flips spread over the whole file: each is refused with one line naming the file, or (in zip padding
    that no record's content covers) loads exactly the saved content."""
    original = read_checkpoint(checkpoint)
    size = checkpoint.stat().st_size
    refused = 0
    for i in range(64):
        damaged = _flipped(checkpoint, tmp_path / "flip.pt", (i * size) // 64 + 3)
        try:
            loaded = read_checkpoint(damaged)
        except CheckpointError as exc:
            assert str(damaged) in str(exc) and "\n" not in str(exc)
            refused += 1
            continue
        assert _same(loaded, original), f"a flip at byte {(i * size) // 64 + 3} loaded changed content"
    assert refused >= 48


def test_resume_from_a_damaged_last_pt_is_one_line(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "--data-root",
        str(data_root),
        "--out",
        str(out),
        "--backbone",
        "vit_tiny_patch16_224",
        "--pretrained",
        "none",
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--no-compile",
        "--no-progress",
        "--data-threads",
        "1",
        "--eval-batch-size",
        "16",
        "--steps",
        "2",
    ]
    assert train_cli.main(argv) == 0
    last = out / "checkpoints" / "last.pt"
    _flipped(last, last, last.stat().st_size // 2)
    capsys.readouterr()
    assert train_cli.main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"udon_fast.train: error: checkpoint {last} is damaged: record ") and err.count("\n") == 1
