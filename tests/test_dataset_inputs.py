"""What users' folders and info files hold besides clean images: hidden files and folders, images in
the wrong place or format, entries that point outside the data root, duplicates, NUL bytes, deeply
nested JSON.  Each is ignored, refused or reported in one line naming the file (and entry)."""

import json
import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from udon_fast.commands.data import main as data_main
from udon_fast.commands.embed import main as embed_main
from udon_fast.commands.search import main as search_main
from udon_fast.data import InfoFileError, load_domains, load_folder_domain
from udon_fast.data.synthetic import write_tiny_uned
from udon_fast.model import UDONModel, save_checkpoint

APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64)  # a macOS ._* file: not an image


def _image(path, value: int = 90, size: int = 40, kind: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path, kind)


def _one_error_line(err: str, command: str) -> str:
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("udon_fast.")]
    assert len(lines) == 1 and lines[0].startswith(f"udon_fast.{command}: error: ") and "Traceback" not in err, err
    return lines[0]


def test_hidden_files_and_folders_are_ignored_and_keep_the_split_layout(tmp_path, caplog):
    root = tmp_path / "shoes"
    for split, classes in (("train", ("a", "b", "c")), ("test", ("d", "e"))):
        for c in classes:
            _image(root / split / c / "0.jpg")
            _image(root / split / c / "1.jpg")
            (root / split / c / "._0.jpg").write_bytes(APPLE_DOUBLE)
            (root / split / c / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    _image(root / ".ipynb_checkpoints" / "a" / "0-checkpoint.jpg")  # Jupyter's copy, beside the split folders
    _image(root / "train" / ".cache" / "0.jpg")  # a hidden class folder
    with caplog.at_level(logging.WARNING):
        domain = load_folder_domain(root)
    assert sorted(domain.splits) == ["test", "train"] and domain.num_classes == 3
    paths = [p for split in domain.splits.values() for p in split.paths]
    assert len(paths) == 10 and not any("/." in p for p in paths)
    assert not caplog.records


def test_images_left_out_of_a_folder_domain_are_named(tmp_path, caplog):
    root = tmp_path / "cars"
    for c in ("a", "b"):
        _image(root / c / "0.jpg")
    _image(root / "a" / "extra" / "deeper" / "1.jpg")
    _image(root / "a" / "extra" / "2.jpg")
    _image(root / "b" / "anim.gif", kind="GIF")
    _image(root / "stray.jpg")
    with caplog.at_level(logging.WARNING, logger="udon_fast.data"):
        domain = load_folder_domain(root)
    assert domain.train.paths == [str(root / "a" / "0.jpg"), str(root / "b" / "0.jpg")]
    nested, loose, gif = (record.getMessage() for record in caplog.records)
    assert (
        nested.startswith(f"folder domain 'cars' ({root}): 2 image(s) in sub-folders of class folders are not used")
        and str(root / "a" / "extra" / "deeper" / "1.jpg") in nested
    )
    assert str(root / "stray.jpg") in loose and "are not used" in loose
    assert "1 file(s) of an image format the decoders do not read" in gif and str(root / "b" / "anim.gif") in gif


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = UDONModel("vit_tiny_patch16_224", {"a": 3}, image_size=32, backbone_kwargs={"depth": 1})
    return str(save_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", model))


def test_embed_takes_one_image_file_and_skips_hidden_files(tmp_path, checkpoint, capsys, caplog):
    folder = tmp_path / "photos"
    _image(folder / "a.jpg", 40)
    _image(folder / "sub" / "b.png", 80, kind="PNG")
    (folder / "._a.jpg").write_bytes(APPLE_DOUBLE)
    _image(folder / ".thumbnails" / "a.jpg", 10)
    _image(folder / "c.gif", kind="GIF")
    out = tmp_path / "e.npy"
    common = ["--checkpoint", checkpoint, "--data-threads", "1", "--decoder", "torchvision"]
    with caplog.at_level(logging.WARNING, logger="udon_fast.data"):
        assert embed_main([*common, "--images", str(folder), "--out", str(out)]) == 0
    assert json.loads(out.with_suffix(".meta.json").read_text())["paths"] == [
        str(folder / "a.jpg"),
        str(folder / "sub" / "b.png"),
    ]
    assert str(folder / "c.gif") in caplog.text and "not used" in caplog.text
    single = tmp_path / "one.npy"
    assert embed_main([*common, "--images", str(folder / "a.jpg"), "--out", str(single)]) == 0
    np.testing.assert_allclose(np.load(single)[0], np.load(out)[0], atol=1e-6)
    assert json.loads(single.with_suffix(".meta.json").read_text())["paths"] == [str(folder / "a.jpg")]
    capsys.readouterr()
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    assert embed_main([*common, "--images", str(notes), "--out", str(single)]) == 2
    assert f"--images {notes} is not an image file" in _one_error_line(capsys.readouterr().err, "embed")


@pytest.fixture
def uned(tmp_path):
    return write_tiny_uned(tmp_path / "data", {"a": {"train": 3, "test": 3}}, per_class=1)


def _set_entry(root, split: str, index: int, path: str) -> str:
    info = root / "info_files" / "a" / f"{split}.json"
    entries = json.loads(info.read_text())
    entries[index]["path"] = path
    info.write_text(json.dumps(entries))
    return str(info)


@pytest.mark.parametrize(
    "entry,problem",
    [
        ("/etc/passwd", "is an absolute path"),
        ("../../../../../../../../etc/passwd", "leads outside the data root's images/ folder"),
        ("a/train/../../../info_files/a/train.json", "leads outside the data root's images/ folder"),
        ("a/train/c0\x00_0.jpg", "holds a NUL byte"),
    ],
)
def test_entries_that_leave_the_data_root_are_refused(uned, capsys, entry, problem):
    info = _set_entry(uned, "train", 1, entry)
    with pytest.raises(InfoFileError) as raised:
        load_domains(uned)
    assert str(raised.value).startswith(f"{info}: entry 1 field 'path' {entry!r} {problem}")
    assert data_main(["verify", "--data-root", str(uned)]) == 2
    assert f"{info}: entry 1" in _one_error_line(capsys.readouterr().err, "data")


def test_paths_inside_images_with_dots_still_load(uned):
    info = _set_entry(uned, "train", 1, "a/train/../train/c1_0.jpg")
    _set_entry(uned, "test", 0, "a/test/c0_0.jpg")
    shutil.copy(uned / "images" / "a" / "train" / "c2_0.jpg", uned / "images" / "a" / "train" / "x..y.jpg")
    _set_entry(uned, "train", 2, "a/train/x..y.jpg")
    domain = load_domains(uned)["a"]
    assert domain.train.paths[1].endswith("a/train/../train/c1_0.jpg") and len(domain.train) == 3, info


def test_duplicate_entries_are_reported(uned, caplog):
    info = _set_entry(uned, "test", 2, "a/test/c0_0.jpg")
    with caplog.at_level(logging.WARNING, logger="udon_fast.data"):
        load_domains(uned)
    (record,) = caplog.records
    assert record.getMessage() == f"{info}: 1 duplicate entry; the first: entry 2 ('a/test/c0_0.jpg') repeats entry 0"


def test_deeply_nested_json_gives_one_line(uned, tmp_path, capsys):
    info = uned / "info_files" / "a" / "test.json"
    info.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(InfoFileError, match=f"^{info}: malformed JSON \\(nested too deeply\\)$"):
        load_domains(uned)
    embeddings = tmp_path / "e.npy"
    np.save(embeddings, np.eye(2, dtype=np.float32))
    embeddings.with_suffix(".meta.json").write_text('{"paths": ' + "[" * 200_000 + "]" * 200_000 + "}")
    query = tmp_path / "q.jpg"
    _image(query)
    assert search_main(["--embeddings", str(embeddings), "--query", str(query)]) == 2
    assert "malformed JSON (nested too deeply)" in _one_error_line(capsys.readouterr().err, "search")
