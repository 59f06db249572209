"""UnED / folder layout parsing, validation errors, class remapping and kNN pairs."""

import json

import numpy as np
import pytest

from udon_fast.data import DatasetError, InfoFileError, MissingFilesError, knn_pairs, load_domains, load_folder_domain
from udon_fast.data.synthetic import write_image, write_tiny_uned


def test_parses_uned_layout_and_remaps_ids(tmp_path):
    root = write_tiny_uned(tmp_path, {"a": {"train": 3, "val": 2, "test": 2}, "b": {"train": 2, "test": 1}})
    domains = load_domains(root)
    assert sorted(domains) == ["a", "b"]
    a = domains["a"]
    assert a.num_classes == 3 and len(a.train) == 6 and sorted(a.splits) == ["test", "train", "val"]
    assert a.class_map == {100: 0, 107: 1, 114: 2}
    assert a.train.labels.dtype == np.int64 and a.train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert a.splits["val"].labels.tolist() == [0, 0, 1, 1]
    assert json.loads(json.dumps(a.class_map_json())) == {"100": 0, "107": 1, "114": 2}
    assert all(p.startswith(str(root / "images")) for p in a.train.paths)
    assert list(load_domains(root, domains=["b"])) == ["b"]


def test_eval_only_classes_follow_train_classes(tmp_path):
    root = write_tiny_uned(tmp_path, {"a": {"train": 2, "test": 4}})
    a = load_domains(root)["a"]
    assert a.num_classes == 2
    assert a.splits["test"].labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_knn_pairs_are_data_driven(tmp_path):
    root = write_tiny_uned(
        tmp_path,
        {
            "plain": {"train": 2, "val": 2, "test": 2},
            "met": {"train": 2, "val": 2, "small_index": 2, "test": 2, "index": 3},
        },
    )
    domains = load_domains(root)
    query, index = knn_pairs(domains["plain"], "test")
    assert query is domains["plain"].splits["test"] and index is None
    assert knn_pairs(domains["plain"], "val")[1] is None
    assert knn_pairs(domains["met"], "val")[1] is domains["met"].splits["small_index"]
    assert knn_pairs(domains["met"], "test")[1] is domains["met"].splits["index"]
    with pytest.raises(ValueError, match="no split 'index'"):
        knn_pairs(domains["plain"], "index")


def test_multi_label_and_non_ascii_names(tmp_path):
    names = ["čaj/šálek 1.jpg", "日本/寿司.jpg", "naïve café.jpg"]
    for i, name in enumerate(names):
        write_image(tmp_path / "images" / name, (40 * i, 0, 0))
    info = tmp_path / "info_files" / "mix"
    info.mkdir(parents=True)
    entries = [
        {"path": names[0], "class_id": 5},
        {"path": names[1], "class_id": [9, 5]},
        {"path": names[2], "class_id": [7]},
    ]
    (info / "train.json").write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    (info / "test.json").write_text(json.dumps([{"path": names[1], "class_id": [5, 11, 9]}]), encoding="utf-8")
    mix = load_domains(tmp_path)["mix"]
    assert mix.num_classes == 3 and mix.class_map == {5: 0, 7: 1, 9: 2, 11: 3}
    assert mix.train.multi_label and mix.train.labels.tolist() == [[0, -1], [2, 0], [1, -1]]
    assert mix.train.first_labels().tolist() == [0, 2, 1]
    assert mix.splits["test"].labels.tolist() == [[0, 3, 2]]
    assert mix.train.paths[1].endswith("日本/寿司.jpg")


def test_missing_files_are_reported_together(tmp_path):
    root = write_tiny_uned(tmp_path, {"a": {"train": 4, "val": 2}, "b": {"train": 2}})
    for rel in ["a/train/c0_0.jpg", "a/train/c1_1.jpg", "a/train/c2_0.jpg", "b/train/c0_0.jpg"]:
        (root / "images" / rel).unlink()
    with pytest.raises(MissingFilesError) as error:
        load_domains(root)
    message = str(error.value)
    assert isinstance(error.value, ValueError)
    assert message.startswith("4 image file(s)")
    assert "info_files/a/train.json: 3 missing" in message and "info_files/b/train.json: 1 missing" in message
    assert "c0_0.jpg" in message and "c1_1.jpg" in message
    assert sorted(error.value.missing) == [str(root / "info_files/a/train.json"), str(root / "info_files/b/train.json")]


@pytest.mark.parametrize(
    "content, expected",
    [
        ('[{"path": "x.jpg", "class_id": 1},', "malformed JSON"),
        ('{"path": "x.jpg"}', "expected a JSON list"),
        ('[{"path": "a/train/c0_0.jpg", "class_id": 1}, {"class_id": 2}]', "entry 1 has no field 'path'"),
        ('[{"path": "a/train/c0_0.jpg"}]', "entry 0 has no field 'class_id'"),
        ('[{"path": "a/train/c0_0.jpg", "class_id": "cat"}]', "entry 0 field 'class_id'"),
        ('[{"path": "a/train/c0_0.jpg", "class_id": []}]', "entry 0 field 'class_id'"),
        ('[{"path": 3, "class_id": 1}]', "entry 0 field 'path'"),
    ],
)
def test_malformed_info_file_names_file_and_field(tmp_path, content, expected):
    root = write_tiny_uned(tmp_path, {"a": {"train": 1, "val": 1}})
    (root / "info_files" / "a" / "val.json").write_text(content, encoding="utf-8")
    with pytest.raises(InfoFileError, match=expected) as error:
        load_domains(root)
    assert "info_files/a/val.json" in str(error.value)


def test_layout_errors(tmp_path):
    with pytest.raises(DatasetError, match="no 'info_files/' folder"):
        load_domains(tmp_path)
    root = write_tiny_uned(tmp_path / "r", {"a": {"val": 1}})
    with pytest.raises(DatasetError, match="every domain needs a train split"):
        load_domains(root)
    with pytest.raises(DatasetError, match="unknown domain"):
        load_domains(root, domains=["zzz"])


def test_folder_layouts(tmp_path):
    for cls in ["dog", "cat"]:
        for k in range(2):
            write_image(tmp_path / "flat" / cls / f"{k}.jpg", (10, 20, 30))
            write_image(tmp_path / "split" / "train" / cls / f"{k}.jpg", (10, 20, 30))
    write_image(tmp_path / "split" / "test" / "cat" / "q.jpg", (1, 2, 3))
    write_image(tmp_path / "split" / "test" / "fox" / "q.jpg", (1, 2, 3))
    flat = load_folder_domain(tmp_path / "flat")
    assert flat.name == "flat" and flat.num_classes == 2 and list(flat.splits) == ["train"]
    assert flat.class_map == {"cat": 0, "dog": 1} and flat.train.labels.tolist() == [0, 0, 1, 1]
    split = load_folder_domain(tmp_path / "split", name="mine")
    assert sorted(split.splits) == ["test", "train"] and split.splits["test"].labels.tolist() == [0, 2]
    both = load_domains(write_tiny_uned(tmp_path / "u", {"a": {"train": 1}}), folders={"mine": tmp_path / "flat"})
    assert sorted(both) == ["a", "mine"]
    with pytest.raises(DatasetError, match="no images"):
        load_folder_domain(tmp_path / "split" / "test" / "cat")
