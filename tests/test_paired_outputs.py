"""`embed` and `index build` write their data file and metadata file as a pair: a full disk leaves the
old pair, and `index build` / `search` refuse files that do not belong together or a gallery row
that is not finite, in one line naming the files (or the row)."""

import errno
import json
import os

import numpy as np
import pytest
from PIL import Image

from udon_fast.commands import index as index_cli
from udon_fast.commands.embed import main as embed_main
from udon_fast.commands.search import main as search_main
from udon_fast.files.pairs import file_sha256
from udon_fast.model import UDONModel, save_checkpoint

EMBED = ["--data-threads", "1", "--decoder", "torchvision"]


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """(folder of 4 images, a checkpoint)."""
    root = tmp_path_factory.mktemp("gallery")
    folder = root / "images"
    folder.mkdir()
    for k in range(4):
        Image.fromarray(np.full((40, 40, 3), (50 * k, 200 - 40 * k, 30), np.uint8)).save(folder / f"{k}.jpg")
    model = UDONModel("vit_tiny_patch16_224", {"a": 3}, image_size=32, backbone_kwargs={"depth": 1})
    return folder, str(save_checkpoint(root / "model.pt", model))


def _embed(checkpoint: str, images, out) -> None:
    assert embed_main(["--checkpoint", checkpoint, "--images", str(images), "--out", str(out), *EMBED]) == 0


@pytest.fixture
def embedded(tmp_path, gallery, capsys):
    """(the image folder, its E.npy written by embed)."""
    folder, checkpoint = gallery
    out = tmp_path / "e.npy"
    _embed(checkpoint, folder, out)
    capsys.readouterr()
    return folder, out


def _one_line(capsys, prefix: str) -> str:
    err = capsys.readouterr().err  # progress bars aside (\r), exactly one line: the error
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("udon_fast.")]
    assert len(lines) == 1 and lines[0].startswith(f"udon_fast.{prefix}: error: ") and "Traceback" not in err, err
    return lines[0]


def _fail_fsync_of(monkeypatch, fragment: str) -> None:
    """Make fsync fail with ENOSPC (a full disk) for files whose name contains `fragment`."""
    real = os.fsync

    def fsync(fd):
        if fragment in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("failing", [".e.meta.json", ".e.npy"])
def test_a_full_disk_leaves_the_old_pair(tmp_path, gallery, capsys, monkeypatch, failing):
    folder, checkpoint = gallery
    out = tmp_path / "e.npy"
    _embed(checkpoint, folder, out)
    capsys.readouterr()
    old = out.read_bytes(), out.with_suffix(".meta.json").read_bytes()
    more = tmp_path / "more"
    more.mkdir()
    for k in range(6):
        Image.fromarray(np.full((40, 40, 3), 30 * k, np.uint8)).save(more / f"m{k}.jpg")
    _fail_fsync_of(monkeypatch, failing)
    assert embed_main(["--checkpoint", checkpoint, "--images", str(more), "--out", str(out), *EMBED]) == 2
    assert "No space left on device" in _one_line(capsys, "embed")
    assert (out.read_bytes(), out.with_suffix(".meta.json").read_bytes()) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.meta.json", "e.npy", "more"]
    monkeypatch.undo()
    assert index_cli.main(["build", "--embeddings", str(out), "--out", str(tmp_path / "g.faiss")]) == 0


def test_files_from_two_writes_are_not_paired(tmp_path, gallery, capsys):
    """What a kill between the two renames would leave: one file of the new pair, one of the old."""
    folder, checkpoint = gallery
    first, second = tmp_path / "first.npy", tmp_path / "second.npy"
    _embed(checkpoint, folder, first)
    reversed_folder = tmp_path / "reversed"
    reversed_folder.mkdir()
    for k, image in enumerate(sorted(folder.iterdir(), reverse=True)):  # same count, other rows
        (reversed_folder / f"{k}.jpg").write_bytes(image.read_bytes())
    _embed(checkpoint, reversed_folder, second)
    capsys.readouterr()
    second.replace(first)  # new .npy, old .meta.json
    query = str(folder / "0.jpg")
    assert index_cli.main(["build", "--embeddings", str(first), "--out", str(tmp_path / "g.faiss")]) == 2
    err = _one_line(capsys, "index")
    assert f"{first} and {first.with_suffix('.meta.json')} are not a pair" in err
    assert search_main(["--embeddings", str(first), "--query", query]) == 2
    assert "are not a pair" in _one_line(capsys, "search")

    meta = first.with_suffix(".meta.json")
    record = json.loads(meta.read_text())
    del record["sha256"]
    meta.write_text(json.dumps(record))
    assert search_main(["--embeddings", str(first), "--query", query]) == 2
    assert f"{meta} records no checksum of {first}" in _one_line(capsys, "search")


def test_index_file_and_its_meta_file_are_checked(tmp_path, embedded, capsys):
    folder, embeddings = embedded
    flat, hnsw = tmp_path / "flat.faiss", tmp_path / "hnsw.faiss"
    for out, kind in ((flat, "flat"), (hnsw, "hnsw")):
        assert index_cli.main(["build", "--embeddings", str(embeddings), "--out", str(out), "--kind", kind]) == 0
    capsys.readouterr()
    query = str(folder / "1.jpg")
    assert search_main(["--index", str(flat), "--query", query]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(query)
    hnsw.replace(flat)  # same count and dimension: only the checksum tells
    assert search_main(["--index", str(flat), "--query", query]) == 2
    assert f"{flat} and {flat}.meta.json are not a pair" in _one_line(capsys, "search")


def test_a_row_that_is_not_finite_is_named(tmp_path, embedded, capsys):
    folder, out = embedded
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    vectors = np.load(out)
    vectors[2, 5] = np.nan
    np.save(out, vectors)  # a pair again: the checksum recorded is the new file's
    out.with_suffix(".meta.json").write_text(
        json.dumps({**meta, "sha256": file_sha256(out), "bytes": out.stat().st_size})
    )
    assert index_cli.main(["build", "--embeddings", str(out), "--out", str(tmp_path / "g.faiss")]) == 2
    assert f"row 2 ({meta['paths'][2]}) holds NaN or inf values" in _one_line(capsys, "index")
    assert search_main(["--embeddings", str(out), "--query", str(folder / "0.jpg")]) == 2
    assert "row 2" in _one_line(capsys, "search")
