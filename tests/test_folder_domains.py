"""`--folder NAME=DIR` domains: flag parsing, the seeded class-disjoint test/val split and its record."""

import pytest

from udon_fast.commands.train import parse_args
from udon_fast.config import parse_folders
from udon_fast.data import DatasetError, load_domains_with_splits, load_folder_domain, split_folder_domain
from udon_fast.data.synthetic import write_image


def class_folders(root, classes: int, per_class: int = 3, layout: str = ""):
    for c in range(classes):
        for k in range(per_class):
            write_image(root / layout / f"class{c:02d}" / f"{k}.jpg", (8 * c, 8 * k, 0), size=(8, 8))
    return root


def names_of(split, domain):
    inverse = {v: k for k, v in domain.class_map.items()}
    return {inverse[int(label)] for label in split.labels}


def test_split_is_seeded_class_disjoint_and_recorded(tmp_path):
    folder = load_folder_domain(class_folders(tmp_path / "shoes", 20), "shoes")
    domain, record = split_folder_domain(folder, seed=3)
    assert sorted(domain.splits) == ["test", "train", "val"]
    train, val, test = (names_of(domain.splits[s], domain) for s in ("train", "val", "test"))
    assert len(test) == 5 and len(val) == 2 and len(train) == 13  # 0.25 C, max(2, 0.1 C), the rest
    assert not (train & val or train & test or val & test)
    assert record == {
        "seed": 3,
        "train": sorted(train),
        "val": sorted(val),
        "test": sorted(test),
        "images": {"train": 39, "val": 6, "test": 15},
    }
    assert domain.num_classes == 13 and sorted(set(domain.train.labels.tolist())) == list(range(13))
    assert min(domain.splits["test"].labels) >= 13  # held-out classes follow the train classes
    assert all(path.split("/")[-2] in test for path in domain.splits["test"].paths)
    assert split_folder_domain(folder, seed=3)[1] == record
    assert split_folder_domain(folder, seed=4)[1]["test"] != record["test"]
    again, same = split_folder_domain(folder, seed=0, record=record)  # a record wins over the seed
    assert same == record and again.splits["test"].paths == domain.splits["test"].paths


def test_recorded_split_refuses_a_changed_folder(tmp_path):
    root = class_folders(tmp_path / "shoes", 8)
    _, record = split_folder_domain(load_folder_domain(root, "shoes"), seed=0)
    write_image(root / "class00" / "extra.jpg", (1, 2, 3), size=(8, 8))
    with pytest.raises(DatasetError, match="image counts"):
        split_folder_domain(load_folder_domain(root, "shoes"), seed=0, record=record)
    class_folders(tmp_path / "shoes", 9)
    with pytest.raises(DatasetError, match=r"classes differ from the recorded split \(not recorded: \['class08'\]"):
        split_folder_domain(load_folder_domain(root, "shoes"), seed=0, record=record)


def test_only_missing_splits_are_made(tmp_path):
    root = class_folders(tmp_path / "cars", 8, layout="train")
    class_folders(root, 3, layout="test")
    domain, record = split_folder_domain(load_folder_domain(root, "cars"), seed=0)
    assert sorted(domain.splits) == ["test", "train", "val"] and "test" not in record
    assert len(names_of(domain.splits["val"], domain)) == 2 and domain.num_classes == 6
    assert names_of(domain.splits["test"], domain) == {"class00", "class01", "class02"}
    class_folders(root, 2, layout="val")
    full = load_folder_domain(root, "cars")
    assert split_folder_domain(full, seed=0) == (full, None)


def test_too_few_classes_is_one_error(tmp_path):
    root = class_folders(tmp_path / "tiny", 5)
    with pytest.raises(
        DatasetError,
        match=r"'tiny' .*5 classes are too few to split off test and val classes "
        r"\(needs at least 6",
    ):
        split_folder_domain(load_folder_domain(root, "tiny"), seed=0)


def test_folder_flag_errors(tmp_path):
    class_folders(tmp_path / "a", 6)
    assert parse_folders([f"a={tmp_path / 'a'}"]) == {"a": str(tmp_path / "a")}
    assert parse_folders({"a": str(tmp_path / "a")}) == {"a": str(tmp_path / "a")}  # a YAML mapping
    for value, message in [
        ("a", "expected NAME=DIR"),
        ("=x", "expected NAME=DIR"),
        (f"a.b={tmp_path}", "may not contain"),
        ("a=/no/such/dir", "/no/such/dir is not a directory"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_folders([value])
    with pytest.raises(ValueError, match="'a' is given twice"):
        parse_folders([f"a={tmp_path / 'a'}", f"a={tmp_path}"])
    with pytest.raises(ValueError, match="is not a directory"):
        parse_args(["--folder", f"a={tmp_path / 'missing'}"])
    assert parse_args(["--folder", f"a={tmp_path / 'a'}", "--folder", f"b={tmp_path / 'a'}"]).folder == [
        f"a={tmp_path / 'a'}",
        f"b={tmp_path / 'a'}",
    ]


def test_folders_alongside_uned_and_their_records(tmp_path):
    from udon_fast.data.synthetic import write_tiny_uned

    root = write_tiny_uned(tmp_path / "uned", {"birds": {"train": 3, "test": 2}})
    folder = class_folders(tmp_path / "shoes", 8)
    domains, records = load_domains_with_splits(root, None, {"shoes": folder}, split_seed=1)
    assert sorted(domains) == ["birds", "shoes"] and list(records) == ["shoes"] and records["shoes"]["seed"] == 1
    with pytest.raises(DatasetError, match="clashes with a UnED domain"):
        load_domains_with_splits(root, None, {"birds": folder}, split_seed=1)


def test_cli_errors_for_folders_are_one_line(tmp_path, capsys):
    from udon_fast.commands import evaluate, train

    tiny = class_folders(tmp_path / "tiny", 5)
    assert train.main(["--folder", f"tiny={tiny}", "--out", str(tmp_path / "run")]) == 2
    assert (
        evaluate.main(
            [
                "--backbone",
                "vit_tiny_patch16_224",
                "--pretrained",
                "none",
                "--folder",
                f"tiny={tiny}",
                "--out",
                str(tmp_path / "ev"),
            ]
        )
        == 2
    )
    assert train.main(["--folder", "tiny"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 3 and all(
        e.startswith(("udon_fast.train: error:", "udon_fast.evaluate: error:")) for e in errors
    )
    assert "too few to split" in errors[0] and "too few to split" in errors[1] and "NAME=DIR" in errors[2]
    assert not (tmp_path / "run").exists()
