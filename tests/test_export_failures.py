"""Export failures are one line and leave nothing behind: TorchScript on a full disk (a real tmpfs; skipped
where mounting is not permitted), an ONNX opset the exporter cannot write."""

import subprocess

import pytest
import torch
from test_checkpoint_io import _mount_tmpfs

from udon_fast.commands import export
from udon_fast.model import UDONModel, save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = UDONModel("vit_tiny_patch16_224", {"a": 3}, image_size=32, backbone_kwargs={"depth": 1})
    return save_checkpoint(tmp_path_factory.mktemp("export") / "model.pt", model)


def test_torchscript_on_a_full_disk_is_one_line_and_removes_its_temp_file(cli, checkpoint, tmp_path):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "size=256k")
    try:
        out = disk / "embedder.ts.pt"
        run = cli("export", ["--checkpoint", checkpoint, "--format", "torchscript", "--out", out], tmp_path / "ts.log")
        leftovers = sorted(p.name for p in disk.iterdir())
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    assert run.code == 2, run.output[-3000:]
    assert (
        run.output.strip() == f"udon_fast.export: error: cannot write torchscript file {out}: No space left on device"
    )
    assert leftovers == []


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--format", "onnx", "--opset", "1"], "--opset 1 is not supported: the ONNX exporter writes opsets 18 to "),
        (["--format", "onnx", "--opset", "99"], "--opset 99 is not supported: the ONNX exporter writes opsets 18 to "),
        (
            ["--format", "torchscript", "--opset", "18"],
            "--opset applies to --format onnx only, got --format torchscript",
        ),
    ],
)
def test_an_opset_the_exporter_cannot_write_is_refused(argv, message, checkpoint, tmp_path, capsys):
    out = tmp_path / "embedder.onnx"
    assert export.main(["--checkpoint", str(checkpoint), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"udon_fast.export: error: {message}") and err.count("\n") == 1, err
    assert not out.exists() and list(tmp_path.iterdir()) == []
