"""The built-in dataset (generated once per session) and the `python -m udon_fast.data` CLI."""

import json

import numpy as np
import pytest

from udon_fast.commands.data import main
from udon_fast.data import TrainLoader, ensure_builtin, knn_pairs, load_domains
from udon_fast.data.builtin import MARKER, UNSEEN_CLASS_DOMAINS, VERSION, _faces, _glyphs, _landmarks
from udon_fast.data.synthetic import write_tiny_uned


@pytest.fixture(scope="session")
def builtin_root(tmp_path_factory):
    return ensure_builtin(cache_dir=tmp_path_factory.mktemp("cache"), seed=0)


def test_builtin_structure(builtin_root):
    assert (builtin_root / MARKER).is_file() and builtin_root.name == VERSION == "builtin-v2"
    domains = load_domains(builtin_root)
    assert sorted(domains) == ["faces", "glyphs", "landmarks", "textures"]
    classes = {name: d.num_classes for name, d in domains.items()}
    assert classes == {"faces": 60, "glyphs": 300, "landmarks": 205, "textures": 24}
    total = sum(len(s) for d in domains.values() for s in d.splits.values())
    assert 4000 <= total <= 8000
    for d in domains.values():
        assert {"train", "val", "test"} <= set(d.splits)
        assert np.bincount(d.train.labels, minlength=d.num_classes).min() >= 2
    landmark_counts = np.bincount(domains["landmarks"].train.labels)
    assert landmark_counts.max() >= 8 and landmark_counts.min() == 3  # long tail
    assert knn_pairs(domains["landmarks"], "test")[1] is domains["landmarks"].splits["index"]
    assert knn_pairs(domains["landmarks"], "val")[1] is domains["landmarks"].splits["small_index"]


def test_every_query_has_a_positive(builtin_root):
    for d in load_domains(builtin_root).values():
        for split in ("val", "test"):
            query, index = knn_pairs(d, split)
            if index is None:  # the query set is its own index: each class needs a second image
                assert np.unique(query.labels, return_counts=True)[1].min() >= 2, (d.name, split)
            else:
                assert set(query.labels.tolist()) <= set(index.labels.tolist()), (d.name, split)


def test_unseen_class_domains_have_disjoint_classes(builtin_root):
    domains = load_domains(builtin_root)
    assert len(UNSEEN_CLASS_DOMAINS) * 2 >= len(domains)
    for name, d in domains.items():
        train, val, test = (set(d.splits[s].labels.tolist()) for s in ("train", "val", "test"))
        if name in UNSEEN_CLASS_DOMAINS:
            assert not (train & val) and not (train & test) and not (val & test), name
            assert len(test) >= 25 and len(val) >= 15, name
        else:  # seen-class domains evaluate on new images of training classes
            assert val <= train and test <= train, name


def test_builtin_is_cached(builtin_root):
    marker = (builtin_root / MARKER).stat().st_mtime_ns
    assert ensure_builtin(cache_dir=builtin_root.parent, seed=0) == builtin_root
    assert (builtin_root / MARKER).stat().st_mtime_ns == marker
    assert not [p for p in builtin_root.parent.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("make", [_faces, _landmarks, _glyphs])
def test_builtin_domain_is_deterministic(make, tmp_path):
    first = make(tmp_path / "a", np.random.default_rng([0, 3]))
    second = make(tmp_path / "b", np.random.default_rng([0, 3]))
    assert first == second
    for split in first:
        info = (tmp_path / "a" / "info_files").glob(f"*/{split}.json")
        for path in info:
            entries = json.loads(path.read_text())
            assert entries == json.loads((tmp_path / "b" / path.relative_to(tmp_path / "a")).read_text())
            for entry in entries[:: max(1, len(entries) // 15)]:
                rel = f"images/{entry['path']}"
                assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_builtin_seed_changes_the_data(tmp_path):
    _faces(tmp_path / "a", np.random.default_rng([0, 3]))
    _faces(tmp_path / "b", np.random.default_rng([1, 3]))
    train = "info_files/faces/train.json"
    assert (tmp_path / "a" / train).read_text() != (tmp_path / "b" / train).read_text()


def test_builtin_trains_through_dali(builtin_root):
    domains = load_domains(builtin_root)
    train = TrainLoader(
        domains, batch_size=8, image_size=64, mean=(0.5,) * 3, std=(0.5,) * 3, num_threads=1, device_id=None
    )
    for name, d in domains.items():
        images, labels = train.next_batch(name)
        assert images.shape == (8, 3, 64, 64) and labels.max() < d.num_classes


def test_verify_cli(tmp_path, capsys):
    root = write_tiny_uned(tmp_path, {"a": {"train": 3, "test": 2}, "b": {"train": 2}})
    assert main(["verify", "--data-root", str(root)]) == 0
    assert "14 images listed, 0 bad file(s)" in capsys.readouterr().out
    bad = root / "images" / "a" / "test" / "c1_0.jpg"
    bad.write_bytes(bad.read_bytes()[:80])
    assert main(["verify", "--data-root", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"BAD {bad}" in out and "1 bad file(s)" in out
    (root / "images" / "b" / "train" / "c0_0.jpg").unlink()
    assert main(["verify", "--data-root", str(root)]) == 1
    assert "missing or unreadable" in capsys.readouterr().err


def test_builtin_cli_refuses_non_empty_folder(tmp_path, capsys):
    (tmp_path / "x").write_text("x")
    assert main(["builtin", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
