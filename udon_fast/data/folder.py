"""Read a user's own domain from a folder-per-class layout.

Two forms:
- `root/<class>/<image>`: a single train split;
- `root/<split>/<class>/<image>` with split folders among train, val, test, index, small_index
  (train required): one split per folder, classes matched by folder name.
Class folder names are the original class ids: sorted train class names map to 0..C-1.
"""
import os
from pathlib import Path

from .domain import Domain, Split, build_class_map, labels_array
from .errors import DatasetError

SPLIT_NAMES = ("train", "val", "test", "index", "small_index")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def _scan(folder: Path) -> tuple[list[str], list[list[str]]]:
    """(absolute image paths, [[class name]]) of a `<class>/<image>` folder, in sorted order."""
    paths, class_ids = [], []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for image in sorted(class_dir.iterdir()):
            if image.is_file() and image.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(str(image))
                class_ids.append([class_dir.name])
    return paths, class_ids


def load_folder_domain(root: str | os.PathLike, name: str | None = None) -> Domain:
    """A `Domain` from a folder-per-class layout (see module docstring); `name` defaults to the folder name."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"folder domain: {root} is not a directory")
    subdirs = {p.name for p in root.iterdir() if p.is_dir()}
    split_layout = "train" in subdirs and subdirs <= set(SPLIT_NAMES)
    scanned = {s: _scan(root / s) for s in SPLIT_NAMES if s in subdirs} if split_layout else {"train": _scan(root)}
    if not scanned["train"][0]:
        raise DatasetError(f"folder domain: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in "
                           f"{root / 'train' if split_layout else root}/<class>/")
    others = [ids for s, (_, entries) in scanned.items() if s != "train" for ids in entries]
    class_map = build_class_map(scanned["train"][1], others)
    splits = {s: Split(paths, labels_array(ids, class_map), name=s) for s, (paths, ids) in scanned.items()}
    num_classes = len({ids[0] for ids in scanned["train"][1]})
    return Domain(name or root.name, splits["train"], splits, num_classes, class_map, root)
