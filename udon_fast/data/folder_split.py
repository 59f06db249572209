"""Folder domains (`--folder NAME=DIR`, parsed by `config.parse_folders`): the seeded class-disjoint
split of a folder domain that has no test (or no val) split of its own.

The split (like UnED's metric-learning domains Cars, SOP, iNat: evaluation classes are never
trained on): the sorted train class names are permuted by `numpy.random.default_rng([split_seed,
crc32(NAME)])`; when the folder has no `test/`, the first max(2, round(0.25 C)) classes become the
test split; when it has no `val/`, the next max(2, round(0.1 C)) become the val split (model
selection); the rest, at least 2, stay in train.  Every image of a class goes with its class.  Test
and val are then evaluated leave-one-out (the query set is its own index).  Labels: train classes
0..C_train-1 (sorted), then the held-out classes (see `domain.build_class_map`).

The record of a split (JSON-ready, written into the run's config.json and into checkpoints as
`config["folder_splits"][NAME]`): {"seed", "train", "val", "test": sorted class names (only the
carved splits), "images": {split: count}}.  Given a record, `split_folder_domain` applies it
instead of drawing (evaluation of a trained model) and refuses a folder whose classes or image
counts changed.
"""

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .domain import Domain, Split, build_class_map, labels_array
from .errors import DatasetError
from .sampling import stream_id
from .uned import load_domains

TEST_FRACTION, VAL_FRACTION, MIN_CLASSES = 0.25, 0.1, 2


def _class_names(split: Split, domain: Domain) -> list[str]:
    names = {label: name for name, label in domain.class_map.items()}
    return [names[int(label)] for label in split.first_labels()]


def _draw(domain: Domain, seed: int, carve: list[str]) -> dict[str, Any]:
    names = sorted(str(c) for c, label in domain.class_map.items() if label < domain.num_classes)
    sizes = {
        "test": max(MIN_CLASSES, round(TEST_FRACTION * len(names))),
        "val": max(MIN_CLASSES, round(VAL_FRACTION * len(names))),
    }
    needed = sum(sizes[s] for s in carve) + MIN_CLASSES
    if len(names) < needed:
        raise DatasetError(
            f"folder domain {domain.name!r} ({domain.source}): {len(names)} classes are too few to "
            f"split off {' and '.join(carve)} classes (needs at least {needed}: {MIN_CLASSES} per "
            f"split); add classes or give it {' and '.join(s + '/' for s in carve)} folders"
        )
    order = [names[i] for i in np.random.default_rng([seed, stream_id(domain.name)]).permutation(len(names))]
    record: dict[str, Any] = {"seed": seed}
    start = 0
    for split in carve:
        record[split] = sorted(order[start : start + sizes[split]])
        start += sizes[split]
    record["train"] = sorted(order[start:])
    return record


def split_folder_domain(
    domain: Domain, seed: int, record: Mapping[str, Any] | None = None
) -> tuple[Domain, dict[str, Any] | None]:
    """(the domain with carved test/val splits, the record), or (domain, None) when it has both.

    `record`: a split recorded earlier for this domain; it is applied (and checked) instead of a draw.
    """
    carve = [s for s in ("test", "val") if s not in domain.splits]
    if not carve:
        return domain, None
    if record is None:
        record = _draw(domain, seed, carve)
    names = _class_names(domain.train, domain)
    recorded = {c: s for s in ("train", *carve) for c in record.get(s, ())}
    present = set(names)
    if present != set(recorded):
        raise DatasetError(
            f"folder domain {domain.name!r} ({domain.source}): its classes differ from the recorded "
            f"split (not recorded: {sorted(present - set(recorded))[:5]}, missing: "
            f"{sorted(set(recorded) - present)[:5]})"
        )
    by_split: dict[str, tuple[list[str], list[list[str]]]] = {s: ([], []) for s in ("train", *carve)}
    for path, name in zip(domain.train.paths, names):
        by_split[recorded[name]][0].append(path)
        by_split[recorded[name]][1].append([name])
    counts = {s: len(paths) for s, (paths, _) in by_split.items()}
    if "images" in record and dict(record["images"]) != counts:
        raise DatasetError(
            f"folder domain {domain.name!r} ({domain.source}): image counts {counts} differ from the "
            f"recorded split's {dict(record['images'])}"
        )
    kept = {s: (sp.paths, _class_names(sp, domain)) for s, sp in domain.splits.items() if s != "train"}
    train_ids = by_split["train"][1]
    others = [[c] for s in kept for c in kept[s][1]] + [ids for s in carve for ids in by_split[s][1]]
    class_map = build_class_map(train_ids, others)
    splits = {"train": Split(by_split["train"][0], labels_array(train_ids, class_map), name="train")}
    for s, (paths, class_names) in kept.items():
        splits[s] = Split(paths, labels_array([[c] for c in class_names], class_map), name=s)
    for s in carve:
        splits[s] = Split(by_split[s][0], labels_array(by_split[s][1], class_map), name=s)
    num_classes = len({ids[0] for ids in train_ids})
    full = {"seed": int(record["seed"]), **{s: list(record[s]) for s in ("train", *carve)}, "images": counts}
    return Domain(domain.name, splits["train"], splits, num_classes, class_map, domain.source), full


def load_domains_with_splits(
    data_root: str | os.PathLike | None,
    domains: Iterable[str] | None,
    folders: Mapping[str, str],
    split_seed: int,
    records: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[dict[str, Domain], dict[str, dict[str, Any]]]:
    """`uned.load_domains` plus the split of every folder domain lacking test/val.

    Returns (domains by name, {folder name: split record} for the folders that were split).
    """
    loaded = load_domains(data_root, domains, folders)
    out, made = {}, {}
    for name, domain in loaded.items():
        if name in folders:
            domain, record = split_folder_domain(domain, split_seed, (records or {}).get(name))
            if record is not None:
                made[name] = record
        out[name] = domain
    return out, made
