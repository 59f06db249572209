"""Tar shards (`python -m udon_fast.data shard`, udon_fast/data/shards.py): the writer and its index, reading
them back with both decoders (DALI's webdataset reader for evaluation), training, resuming and evaluating
from them exactly as from the files, damaged members named, bad arguments and a full disk in one line.

The tiny datasets are solid-colour JPEGs (`synthetic.write_tiny_uned`); shards of 24 KB hold a few
images each, so splits span several shards and a rank's share of a split starts and ends mid-shard.
"""

import json
import os
import shutil
import signal
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_bad_inputs import garbage_in_middle

from udon_fast.commands.data import main as data_main
from udon_fast.data import (
    CorruptImageError,
    DatasetError,
    EvalLoader,
    MissingFilesError,
    TrainLoader,
    load_domains,
    load_domains_with_splits,
)
from udon_fast.data.decoders import DECODERS
from udon_fast.data.shards import INDEX_FILE, is_shard_root, parse_size, write_shards
from udon_fast.data.synthetic import write_tiny_uned
from udon_fast.evaluation.protocol import evaluate_model
from udon_fast.files.outputs import OutputError
from udon_fast.model import UDONModel

SHARD_SIZE = "24KB"
IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
RUN = [
    "--backbone",
    "tf_efficientnet_lite0",
    "--pretrained",
    "packaged",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--update-every",
    "2",
    "--checkpoint-every",
    "3",
    "--eval-batch-size",
    "16",
    "--no-compile",
    "--no-progress",
    "--deterministic",
    "--data-threads",
    "1",
    "--steps",
    "8",
    "--decoder",
    "torchvision",
]


def shard(source: Path, out: Path, *extra: str) -> Path:
    assert data_main(["shard", "--data-root", str(source), "--out", str(out), "--shard-size", SHARD_SIZE, *extra]) == 0
    return out


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """(UnED root, its shard root): "shops" (val/test searching index splits) and "birds" (leave-one-out)."""
    base = tmp_path_factory.mktemp("shards")
    files = write_tiny_uned(
        base / "uned",
        {"shops": {"train": 6, "val": 3, "test": 3, "index": 3}, "birds": {"train": 10, "val": 4, "test": 4}},
        per_class=3,
    )
    return files, shard(files, base / "shards")


@pytest.fixture(params=DECODERS)
def decoder(request) -> str:
    return request.param


def test_writer_and_index_round_trip(roots):
    files, shards = roots
    index = json.loads((shards / INDEX_FILE).read_text())
    assert is_shard_root(shards) and not is_shard_root(files)
    assert index["format"] == "udon_fast-shards" and index["shard_size"] == 24_000
    by_file, by_shard = load_domains(files), load_domains(shards)
    assert sorted(by_shard) == sorted(by_file) == sorted(index["domains"])
    for name, domain in by_file.items():
        entry, loaded = index["domains"][name], by_shard[name]
        assert loaded.class_map == domain.class_map and loaded.num_classes == domain.num_classes == entry["num_classes"]
        assert dict(map(tuple, entry["class_map"])) == domain.class_map  # original int ids kept as ints
        for split_name, split in domain.splits.items():
            spec, table = (
                entry["splits"][split_name],
                json.loads((shards / entry["splits"][split_name]["members"]).read_text()),
            )
            read_back = loaded.splits[split_name]
            assert spec["count"] == len(split) == len(read_back) and np.array_equal(read_back.labels, split.labels)
            assert table["source"] == split.paths and table["label"] == split.labels.tolist()
            assert (
                len(spec["shards"]) > 1
                and max(s["count"] for s in spec["shards"]) > 2
                and sum(s["count"] for s in spec["shards"]) == len(split)
            )
            for k, entry_shard in enumerate(spec["shards"]):
                tar_path = shards / entry_shard["file"]
                assert tar_path.stat().st_size == entry_shard["bytes"] and (
                    entry_shard["bytes"] <= 24_000 or entry_shard["count"] == 1
                )
                rows = range(entry_shard["first"], entry_shard["first"] + entry_shard["count"])
                assert [table["shard"][i] for i in rows] == [k] * len(rows)
                with tarfile.open(tar_path) as tar:
                    members = tar.getmembers()
                    keys = [f"{i:09d}" for i in rows]
                    assert [m.name for m in members] == [f"{key}.{ext}" for key in keys for ext in ("jpg", "cls")]
                    for i, key in zip(rows, keys):
                        assert tar.extractfile(f"{key}.jpg").read() == Path(split.paths[i]).read_bytes()
                        assert int(tar.extractfile(f"{key}.cls").read()) == split.labels[i]
                        image = next(m for m in members if m.name == f"{key}.jpg")
                        assert (table["offset"][i], table["size"][i]) == (image.offset_data, image.size)
                dali_index = (shards / entry_shard["index"]).read_text().splitlines()
                assert dali_index[0] == f"v1.2 {len(rows)}"
                first = dali_index[1].split()
                assert (
                    first[:4] == ["jpg", str(table["offset"][rows[0]]), str(table["size"][rows[0]]), f"{keys[0]}.jpg"]
                    and first[4] == "cls"
                    and len(first) == 8
                )
            for i in range(len(split)):
                assert np.array_equal(read_back.read(i), np.fromfile(split.paths[i], dtype=np.uint8))
                tar_name, member = read_back.paths[i].rsplit(":", 1)
                assert member == f"{i:09d}.jpg" and Path(tar_name).parent == shards / name


def test_folder_domains_keep_their_class_split(tmp_path):
    write_tiny_uned(tmp_path / "src", {"tags": {"train": 12}}, per_class=2)
    folder = tmp_path / "tags"
    for k, path in enumerate(sorted((tmp_path / "src" / "images" / "tags" / "train").iterdir())):
        (folder / f"class{k // 2}").mkdir(parents=True, exist_ok=True)
        (folder / f"class{k // 2}" / path.name).write_bytes(path.read_bytes())
    assert data_main(["shard", "--folder", f"tags={folder}", "--split-seed", "3", "--out", str(tmp_path / "s")]) == 0
    expected, records = load_domains_with_splits(None, None, {"tags": str(folder)}, 3)
    loaded = load_domains(tmp_path / "s")["tags"]
    assert set(loaded.splits) == {"train", "val", "test"} and loaded.class_map == expected["tags"].class_map
    for name, split in expected["tags"].splits.items():
        assert np.array_equal(loaded.splits[name].labels, split.labels)
    assert json.loads((tmp_path / "s" / INDEX_FILE).read_text())["domains"]["tags"]["folder_split"] == records["tags"]


def test_multi_label_splits_keep_every_label(tmp_path):
    root = write_tiny_uned(tmp_path / "uned", {"tags": {"train": 4, "test": 3}}, per_class=2)
    info = root / "info_files" / "tags" / "test.json"
    entries = json.loads(info.read_text())
    entries[1]["class_id"], entries[4]["class_id"] = [100, 107, 114], [121, 100]
    info.write_text(json.dumps(entries))
    expected = load_domains(root)["tags"]
    loaded = load_domains(shard(root, tmp_path / "shards"))["tags"]
    assert loaded.splits["test"].multi_label and np.array_equal(
        loaded.splits["test"].labels, expected.splits["test"].labels
    )
    assert loaded.class_map == expected.class_map and 121 in loaded.class_map  # an id seen only in test
    with tarfile.open(tmp_path / "shards" / "tags" / "test-000000.tar") as tar:
        assert int(tar.extractfile("000000001.cls").read()) == expected.splits["test"].labels[1, 0]


def _train_loader(domains, decoder, **kw):
    options = dict(batch_size=5, image_size=32, num_threads=1, device_id=None, seed=0, decoder=decoder, **IDENTITY)
    return TrainLoader(domains, **{**options, **kw})


def _eval(split, decoder, batch_size=4):
    return list(
        EvalLoader(
            split, batch_size=batch_size, image_size=32, num_threads=1, device_id=None, decoder=decoder, **IDENTITY
        )
    )


def test_both_decoders_read_the_same_batches_as_from_files(roots, decoder):
    by_file, by_shard = load_domains(roots[0]), load_domains(roots[1])
    for rank in range(2):
        files = _train_loader(by_file, decoder, rank=rank, world_size=2)
        tars = _train_loader(by_shard, decoder, rank=rank, world_size=2)
        for domain in ["birds", "shops", "birds", "birds", "shops", "birds"]:
            (x, y), (x2, y2) = files.next_batch(domain), tars.next_batch(domain)
            assert torch.equal(x, x2) and torch.equal(y, y2)
        files.close()
        tars.close()
    for name, domain in by_file.items():
        for split_name, split in domain.splits.items():
            expected = _eval(split, decoder)
            got = _eval(by_shard[name].splits[split_name], decoder)
            assert [len(x) for x, _ in got] == [len(x) for x, _ in expected]
            for (x, y), (x2, y2) in zip(expected, got):
                assert torch.equal(x, x2) and torch.equal(y, y2)
            # a rank's share of whole batches (distributed evaluation) starts and ends inside shards
            share = by_shard[name].splits[split_name].part(3, len(split) - 2)
            images = torch.cat([x for x, _ in _eval(share, decoder, batch_size=3)])
            assert torch.equal(images, torch.cat([x for x, _ in expected])[3 : len(split) - 2])


def test_loader_resume_from_shards_is_exact(roots, decoder):
    domains = load_domains(roots[1])
    steps = ["shops", "birds", "shops", "shops", "birds", "birds", "shops", "birds", "birds"]
    reference = _train_loader(domains, decoder)
    expected = [reference.next_batch(d) for d in steps]
    first = _train_loader(domains, decoder)
    for d in steps[:4]:
        first.next_batch(d)
    resumed = _train_loader(domains, decoder)
    resumed.load_state_dict(first.state_dict())
    for d, (x, y) in zip(steps[4:], expected[4:]):
        x2, y2 = resumed.next_batch(d)
        assert torch.equal(x, x2) and torch.equal(y, y2)
    for loader in (reference, first, resumed):
        loader.close()


def test_evaluation_from_shards_equals_evaluation_from_files(roots, decoder):
    """The test split: "shops" queries search its index split, "birds" is evaluated leave-one-out."""
    by_file, by_shard = load_domains(roots[0]), load_domains(roots[1])
    torch.manual_seed(0)
    model = UDONModel("tf_efficientnet_lite0", {n: d.num_classes for n, d in by_file.items()}, image_size=32)
    options = dict(batch_size=4, num_threads=1, decoder=decoder, progress=False)
    assert evaluate_model(model, by_shard, "test", **options) == evaluate_model(model, by_file, "test", **options)


def _metrics(out: Path) -> list[dict]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        del record["images_per_s"]
    return records


def test_training_and_resume_from_shards_match_training_from_files(roots, cli, tmp_path):
    files, shards = roots
    from_files = cli("train", ["--data-root", files, *RUN, "--out", tmp_path / "files"], tmp_path / "files.log")
    assert from_files.code == 0, from_files.output[-3000:]
    killed = cli("train", ["--data-root", shards, *RUN, "--out", tmp_path / "tars"], tmp_path / "killed.log", "step:5")
    assert killed.code == -signal.SIGKILL, killed.output[-3000:]
    resumed = cli(
        "train", ["--data-root", shards, *RUN, "--out", tmp_path / "tars", "--resume"], tmp_path / "resumed.log"
    )
    assert resumed.code == 0, resumed.output[-3000:]
    assert _metrics(tmp_path / "tars") == _metrics(tmp_path / "files")
    results = [json.loads((tmp_path / run / "results.json").read_text()) for run in ("files", "tars")]
    assert results[0] == results[1]
    # the gallery's thumbnails, read from the tars: the same images as from the files
    thumbs = [
        sorted(p.read_bytes() for p in (tmp_path / run / "gallery" / "thumbs").iterdir()) for run in ("files", "tars")
    ]
    assert thumbs[0] and thumbs[0] == thumbs[1]


def indices_of(images: torch.Tensor) -> list[int]:
    """Each image's running index in `write_tiny_uned`, from its solid colour (`synthetic.colour_of`)."""
    rgb = (images.mean(dim=(2, 3)) * 255 / 16).round().long().tolist()
    return [r + 16 * g + 256 * b for r, g, b in rgb]


def _damage(shards: Path, domain: str, split: str, sample: int) -> str:
    """Overwrite the middle of sample `sample`'s JPEG inside its tar; returns its name "<tar>:<member>"."""
    table = json.loads((shards / domain / f"{split}.json").read_text())
    spec = json.loads((shards / INDEX_FILE).read_text())["domains"][domain]["splits"][split]
    tar = shards / spec["shards"][table["shard"][sample]]["file"]
    offset, size = table["offset"][sample], table["size"][sample]
    with open(tar, "r+b") as f:
        f.seek(offset + 4)
        f.write(bytes(size - 8))  # header tables and scan gone, SOI/EOI intact: only a decoder notices
    return f"{tar}:{sample:09d}.jpg"


def test_a_damaged_member_is_named(roots, tmp_path, decoder, caplog):
    shards = tmp_path / "shards"
    shutil.copytree(roots[1], shards)
    train_bad, test_bad = _damage(shards, "birds", "train", 7), _damage(shards, "birds", "test", 2)
    domains = load_domains(shards)
    loader = _train_loader(domains, decoder)
    seen = [i for _ in range(8) for i in indices_of(loader.next_batch("birds")[0])]
    loader.close()
    assert loader.skipped["birds"].keys() == {train_bad} and train_bad in caplog.text
    birds_train = range(18 + 9 + 9 + 9, 18 + 9 + 9 + 9 + 30)  # after the 45 images of "shops"
    assert set(seen) == set(birds_train) - {birds_train[7]}
    with pytest.raises(CorruptImageError, match=f"{test_bad} "):
        _eval(domains["birds"].splits["test"], decoder)
    report = tmp_path / "report.txt"
    assert data_main(["verify", "--data-root", str(shards), "--report", str(report)]) == 1
    bad = [line for line in report.read_text().splitlines() if line.startswith("BAD ")]
    assert sorted(line.split(": ", 1)[0] for line in bad) == [f"BAD {test_bad}", f"BAD {train_bad}"]


def test_a_member_only_the_decoder_rejects_is_found_and_skipped(tmp_path):
    """Garbage over a photo's scan data passes the cheap checks; torchvision's decoder fails on it
    mid-batch, and the loader's recovery finds the member by decoding the batch's members with PIL.
    (DALI's libjpeg-turbo decodes that file with warnings, from files as from shards.)"""
    root = write_tiny_uned(tmp_path / "uned", {"c": {"train": 12}}, per_class=1)
    (root / "images" / "c" / "train" / "c4_0.jpg").write_bytes(garbage_in_middle())
    domains = load_domains(shard(root, tmp_path / "shards"))
    loader = _train_loader(domains, "torchvision", batch_size=4)
    labels = {i for _ in range(6) for i in loader.next_batch("c")[1].tolist()}
    loader.close()
    name = domains["c"].train.paths[4]
    assert name.endswith(".tar:000000004.jpg") and list(loader.skipped["c"]) == [name]
    assert labels == set(range(12)) - {4}


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_bad_arguments_and_broken_shard_roots_give_one_line(roots, tmp_path, capsys):
    files, shards = roots
    assert data_main(["shard", "--out", str(tmp_path / "x")]) == 2
    assert "give --data-root DIR" in _one_line(capsys)
    assert data_main(["shard", "--data-root", str(files), "--out", str(tmp_path / "x"), "--shard-size", "big"]) == 2
    assert "--shard-size: expected a size such as 256MB" in _one_line(capsys)
    assert data_main(["shard", "--data-root", str(files), "--out", str(shards)]) == 2
    assert f"--out {shards} exists and is not an empty folder" in _one_line(capsys)
    assert data_main(["shard", "--data-root", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "no 'info_files/' folder" in _one_line(capsys)
    assert not (tmp_path / "x").exists()
    assert (parse_size("256MB"), parse_size("1.5 GB"), parse_size("64MiB"), parse_size("4096")) == (
        256 * 10**6,
        15 * 10**8,
        64 * 2**20,
        4096,
    )

    broken = tmp_path / "broken"
    shutil.copytree(shards, broken)
    tars = sorted((broken / "shops").glob("train-*.tar"))
    with open(tars[1], "r+b") as f:
        f.truncate(600)
    with pytest.raises(DatasetError, match=rf"{tars[1]}: truncated shard \(600 bytes"):
        load_domains(broken)
    tars[1].unlink()
    with pytest.raises(MissingFilesError, match=rf"{broken / 'shops' / 'train.json'}: 1 missing, first: {tars[1]}"):
        load_domains(broken)
    index = json.loads((broken / INDEX_FILE).read_text())
    del index["domains"]["birds"]["splits"]["test"]["shards"]
    (broken / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(DatasetError, match=r"index.json: malformed entry of domain 'birds' \(KeyError: 'shards'\)"):
        load_domains(broken, ["birds"])
    (broken / INDEX_FILE).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(DatasetError, match="not a udon_fast shard index"):
        load_domains(broken)


def test_a_full_disk_gives_one_line_and_leaves_nothing(roots, tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'}); CI runs as root")
    try:
        assert data_main(["shard", "--data-root", str(roots[0]), "--out", str(disk / "shards")]) == 2
        line = _one_line(capsys)
        assert line.startswith("udon_fast.data: error: cannot write ") and line.endswith(": No space left on device")
        assert str(disk) in line and os.listdir(disk) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_write_shards_refuses_a_file_as_out(roots, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is not an empty folder"):
        write_shards(load_domains(roots[0]), tmp_path / "file")
    with pytest.raises(OutputError):
        write_shards(load_domains(roots[0]), tmp_path / "file" / "below")
