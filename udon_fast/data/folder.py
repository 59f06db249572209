"""Read a user's own domain from a folder-per-class layout.

Two forms:
- `root/<class>/<image>`: a single train split;
- `root/<split>/<class>/<image>` with split folders among train, val, test, index, small_index
  (train required): one split per folder, classes matched by folder name.
Class folder names are the original class ids: sorted train class names map to 0..C-1.

Hidden files and folders (names starting with '.': macOS `._*` resource forks, `.DS_Store`,
`.ipynb_checkpoints`, ...) are ignored everywhere and never count as a split or class folder.
Images that are not read are named in one warning per kind instead of being dropped silently:
images in sub-folders of a class folder (only `<class>/<image>` is read: such a folder is more
likely a mistake than a part of the class), images directly in a folder that holds class folders,
and image formats the decoders do not read (`UNSUPPORTED_SUFFIXES`: GIF, which DALI does not
decode, HEIC, AVIF).
"""

import logging
import os
from pathlib import Path

from .domain import Domain, Split, build_class_map, labels_array
from .errors import DatasetError

SPLIT_NAMES = ("train", "val", "test", "index", "small_index")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
UNSUPPORTED_SUFFIXES = {".gif", ".heic", ".heif", ".avif"}
SHOWN = 3  # files named in a warning
log = logging.getLogger(__name__)


def visible(entries) -> list[Path]:
    """The entries whose name does not start with '.', sorted."""
    return sorted(p for p in entries if not p.name.startswith("."))


def image_files(folder: Path, recursive: bool) -> tuple[list[Path], list[Path]]:
    """(image files, files of an unsupported image format) in `folder` (and, when `recursive`, in its
    sub-folders), sorted, hidden files and folders skipped."""
    images, unsupported = [], []
    for directory, subdirs, files in os.walk(folder) if recursive else [(folder, [], os.listdir(folder))]:
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        for name in files:
            path = Path(directory) / name
            if name.startswith(".") or not path.is_file():
                continue
            suffix = path.suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                images.append(path)
            elif suffix in UNSUPPORTED_SUFFIXES:
                unsupported.append(path)
    return sorted(images), sorted(unsupported)


def warn_unused(where: str, files: list[Path], why: str) -> None:
    """One warning: `where`: N file(s) `why`, naming the first few."""
    if files:
        more = f" (+{len(files) - SHOWN} more)" if len(files) > SHOWN else ""
        log.warning("%s: %d %s: %s%s", where, len(files), why, ", ".join(map(str, files[:SHOWN])), more)


def warn_unsupported(where: str, files: list[Path]) -> None:
    warn_unused(
        where,
        files,
        f"file(s) of an image format the decoders do not read are not used "
        f"({', '.join(sorted(UNSUPPORTED_SUFFIXES))}; convert them to PNG or JPEG)",
    )


def _scan(folder: Path, where: str) -> tuple[list[str], list[list[str]]]:
    """(absolute image paths, [[class name]]) of a `<class>/<image>` folder, in sorted order; warns
    (`where` names the domain) about the images it leaves out."""
    paths, class_ids, nested, unsupported = [], [], [], []
    loose, loose_unsupported = image_files(folder, recursive=False)
    for class_dir in (p for p in visible(folder.iterdir()) if p.is_dir()):
        images, skipped = image_files(class_dir, recursive=False)
        paths += map(str, images)
        class_ids += [[class_dir.name]] * len(images)
        unsupported += skipped
        for sub in (p for p in visible(class_dir.iterdir()) if p.is_dir()):
            below, skipped = image_files(sub, recursive=True)
            nested += below + skipped
    warn_unused(
        where,
        nested,
        "image(s) in sub-folders of class folders are not used (only <class>/<image> is "
        "read; move them into the class folder, or make the sub-folder a class)",
    )
    warn_unused(
        where,
        loose + loose_unsupported,
        f"image(s) directly in {folder} are not used (images go in class folders: {folder}/<class>/<image>)",
    )
    warn_unsupported(where, unsupported)
    return paths, class_ids


def load_folder_domain(root: str | os.PathLike, name: str | None = None) -> Domain:
    """A `Domain` from a folder-per-class layout (see module docstring); `name` defaults to the folder name."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"folder domain: {root} is not a directory")
    name = name or root.name
    where = f"folder domain {name!r} ({root})"
    subdirs = {p.name for p in visible(root.iterdir()) if p.is_dir()}
    split_layout = "train" in subdirs and subdirs <= set(SPLIT_NAMES)
    scanned = (
        {s: _scan(root / s, where) for s in SPLIT_NAMES if s in subdirs}
        if split_layout
        else {"train": _scan(root, where)}
    )
    if not scanned["train"][0]:
        raise DatasetError(
            f"folder domain: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in "
            f"{root / 'train' if split_layout else root}/<class>/"
        )
    others = [ids for s, (_, entries) in scanned.items() if s != "train" for ids in entries]
    class_map = build_class_map(scanned["train"][1], others)
    splits = {s: Split(paths, labels_array(ids, class_map), name=s) for s, (paths, ids) in scanned.items()}
    num_classes = len({ids[0] for ids in scanned["train"][1]})
    return Domain(name, splits["train"], splits, num_classes, class_map, root)
