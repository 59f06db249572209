"""The dataset model shared by every layout: `Split`, `Domain`, class-id remapping, kNN pairs.

A domain's class ids are remapped to 0..C-1 from its train split (sorted original ids); ids that
only appear in evaluation splits follow as C, C+1, ... (sorted), so labels stay comparable across
all splits of the domain while `num_classes` (C) sizes the classifiers.
"""

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .errors import DatasetError
from .image_bytes import decode_check, decode_check_bytes, read_encoded

# Evaluation split -> the split that serves as its kNN index when the domain has it.
INDEX_SPLIT_FOR = {"val": "small_index", "test": "index"}


@dataclass(frozen=True)
class Split:
    """One split of a domain.

    paths: absolute image paths (str), N of them; for a split stored in tar shards, the names of its
        samples ("<tar file>:<member>"), which every message about an image uses.
    labels: int64, shape (N,) for single-label splits, or (N, L) padded with -1 when any entry
        carries several labels (multi-label); contiguous ids from the domain's `class_map`.
    members: None (images are files), or where the samples lie in tar shards (`shards.ShardMembers`).
    """

    paths: list[str]
    labels: np.ndarray
    name: str = ""
    members: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.labels.dtype != np.int64 or self.labels.ndim not in (1, 2) or len(self.labels) != len(self.paths):
            raise ValueError(
                f"Split {self.name!r}: labels must be int64 of shape (N,) or (N, L) with "
                f"N = {len(self.paths)}, got {self.labels.dtype} {self.labels.shape}"
            )

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def multi_label(self) -> bool:
        return self.labels.ndim == 2

    def read(self, i: int) -> np.ndarray:
        """Image i's encoded bytes, uint8 (n,) (OSError when unreadable)."""
        return read_encoded(self.paths[i]) if self.members is None else self.members.read(i)

    def check(self, i: int) -> str | None:
        """None when image i passes `image_bytes.decode_check` (a full decode), else the reason."""
        if self.members is None:
            return decode_check(self.paths[i])
        try:
            data = self.members.read(i)
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"
        return decode_check_bytes(data)

    def part(self, lo: int, hi: int) -> "Split":
        """Images lo..hi-1 as a split of the same name."""
        members = None if self.members is None else self.members[lo:hi]
        return Split(self.paths[lo:hi], self.labels[lo:hi], self.name, members)

    def first_labels(self) -> np.ndarray:
        """int64 (N,): the first label of each entry (the training target of multi-label entries)."""
        return self.labels[:, 0].copy() if self.multi_label else self.labels


@dataclass(frozen=True)
class Domain:
    """A domain: its splits by name (always including "train"), classifier size and class mapping.

    class_map: original class id (int, or class folder name for folder domains) -> contiguous id.
    source: the info folder or image folder the domain was read from.
    """

    name: str
    train: Split
    splits: dict[str, Split]
    num_classes: int
    class_map: dict[Hashable, int]
    source: Path | None = field(default=None, compare=False)

    def class_map_json(self) -> dict[str, int]:
        """The class mapping with string keys, ready for `json.dump` (checkpoints, reports)."""
        return {str(original): new for original, new in self.class_map.items()}


def select_domains(root: Path, available: list[str], domains: Iterable[str] | None) -> list[str]:
    """`domains` (default: every one `available` under `root`); `DatasetError` names unknown ones."""
    wanted = list(available if domains is None else domains)
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise DatasetError(f"{root}: unknown domain(s) {unknown}; available: {available}")
    return wanted


def build_class_map(
    train_ids: Sequence[Sequence[Hashable]], other_ids: Sequence[Sequence[Hashable]]
) -> dict[Hashable, int]:
    """Train ids (sorted) -> 0..C-1, then ids seen only in other splits (sorted) -> C, C+1, ..."""
    train = sorted({c for ids in train_ids for c in ids})
    extra = sorted({c for ids in other_ids for c in ids} - set(train))
    return {c: i for i, c in enumerate(train + extra)}


def labels_array(class_ids: Sequence[Sequence[Hashable]], class_map: dict[Hashable, int]) -> np.ndarray:
    """int64 (N,) when every entry has one id, else (N, L) padded with -1."""
    width = max((len(ids) for ids in class_ids), default=1)
    if width == 1:
        return np.array([class_map[ids[0]] for ids in class_ids], dtype=np.int64)
    out = np.full((len(class_ids), width), -1, dtype=np.int64)
    for row, ids in enumerate(class_ids):
        out[row, : len(ids)] = [class_map[c] for c in ids]
    return out


def knn_pairs(domain: Domain, split: str) -> tuple[Split, Split | None]:
    """(query, index) for evaluating `split` of `domain` (UnED protocol, data-driven).

    "val" searches "small_index" and "test" searches "index" when the domain has that split;
    otherwise the index is None, meaning the query set is its own index (leave-one-out).
    """
    if split not in domain.splits:
        raise InputError(f"domain {domain.name!r} has no split {split!r} (has {sorted(domain.splits)})")
    index_name = INDEX_SPLIT_FOR.get(split)
    index = domain.splits.get(index_name) if index_name else None
    return domain.splits[split], index


def split_source(domain: Domain, split: str) -> Path | None:
    """The file or folder a split of `domain` was read from (UnED: `<split>.json`; folders: `<split>/`),
    else the domain's source (None when unknown)."""
    if domain.source is None:
        return None
    for candidate in (domain.source / f"{split}.json", domain.source / split):
        if candidate.exists():
            return candidate
    return domain.source
