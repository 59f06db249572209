"""Outputs that cannot be written are one line: ablate with a read-only --out, `data builtin` on a full disk
(which also removes its partial folder, so a rerun is not refused).  Real tmpfs mounts; skipped where
mounting is not permitted."""

import subprocess

import pytest
from test_checkpoint_io import _mount_tmpfs

from udon_fast.commands import ablate
from udon_fast.commands.data import main as data_main


@pytest.fixture()
def mounted(tmp_path):
    mounts = []

    def mount(name: str, *options: str):
        where = tmp_path / name
        _mount_tmpfs(where, *options)
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_ablate_with_a_read_only_out_is_one_line(mounted, data_root, capsys):
    read_only = mounted("ro", "ro", "size=1m")
    code = ablate.main(
        [
            "--out",
            str(read_only / "grid"),
            "--seeds",
            "1",
            "--data-root",
            str(data_root),
            "--backbone",
            "vit_tiny_patch16_224",
            "--pretrained",
            "none",
            "--image-size",
            "32",
            "--steps",
            "2",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert (
        code == 2
        and err == f"udon_fast.ablate: error: cannot write --out {read_only / 'grid'}: Read-only file system\n"
    )


def test_data_builtin_on_a_full_disk_is_one_line_and_cleans_up(mounted, capsys):
    disk = mounted("disk", "size=2m")
    out = disk / "builtin"
    for _ in range(2):  # the rerun meets the same full disk, not a refusal of a partial folder
        assert data_main(["builtin", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err == f"udon_fast.data: error: cannot write the built-in dataset to {out}: No space left on device\n"
        assert not out.exists() and list(disk.iterdir()) == []
