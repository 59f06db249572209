"""Tiny generated datasets in the UnED layout, for tests (of this package and of its users).

Each image is a solid colour that encodes its global index (recoverable after any crop/flip),
saved as JPEG; each class id is an arbitrary non-contiguous int.
"""
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image


def colour_of(index: int) -> tuple[int, int, int]:
    """The RGB colour (steps of 16, JPEG-safe) of image `index` (index < 4096)."""
    return (16 * (index % 16), 16 * (index // 16 % 16), 16 * (index // 256 % 16))


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (40, 48)) -> None:
    """A solid-colour JPEG of (h, w) = size at `path` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), colour, dtype=np.uint8)).save(path, "JPEG", quality=95)


def write_tiny_uned(root: str | os.PathLike, splits: dict[str, dict[str, int]], per_class: int = 2,
                    size: tuple[int, int] = (40, 48)) -> Path:
    """Write `root` in the UnED layout: splits = {domain: {split: number of classes}}.

    Class c of a split gets `per_class` images at images/<domain>/<split>/c<c>_<k>.jpg, class id
    100 + 7 * c (so ids are shared across splits); image colours follow a running index.
    """
    root, index = Path(root), 0
    for domain, split_classes in splits.items():
        (root / "info_files" / domain).mkdir(parents=True, exist_ok=True)
        for split, classes in split_classes.items():
            entries = []
            for c in range(classes):
                for k in range(per_class):
                    rel = f"{domain}/{split}/c{c}_{k}.jpg"
                    write_image(root / "images" / rel, colour_of(index), size)
                    entries.append({"path": rel, "class_id": 100 + 7 * c})
                    index += 1
            (root / "info_files" / domain / f"{split}.json").write_text(json.dumps(entries), encoding="utf-8")
    return root
