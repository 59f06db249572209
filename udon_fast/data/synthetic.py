"""Generated images for tests and benchmarks (of this package and of its users).

- `write_tiny_uned`: tiny datasets in the UnED layout; each image is a solid colour that encodes
  its global index (recoverable after any crop/flip), saved as JPEG; each class id is an arbitrary
  non-contiguous int.
- `photo_like`, `write_photos`: photo-like RGB images of any size (a random region of one of
  scikit-image's real photos, rescaled, with sensor-like noise), so decoding costs what real
  photos cost (flat colours decode several times faster).
"""

import json
import os
from pathlib import Path

import numpy as np

from ..extras import needs_extra

with needs_extra("train"):
    from PIL import Image

from .builtin import skimage_data_dir

_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png")


def colour_of(index: int) -> tuple[int, int, int]:
    """The RGB colour (steps of 16, JPEG-safe) of image `index` (index < 4096)."""
    return (16 * (index % 16), 16 * (index // 16 % 16), 16 * (index // 256 % 16))


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (40, 48)) -> None:
    """A solid-colour JPEG of (h, w) = size at `path` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), colour, dtype=np.uint8)).save(path, "JPEG", quality=95)


def write_tiny_uned(
    root: str | os.PathLike, splits: dict[str, dict[str, int]], per_class: int = 2, size: tuple[int, int] = (40, 48)
) -> Path:
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


def photo_like(rng: np.random.Generator, size: tuple[int, int], noise: float = 6.0) -> np.ndarray:
    """An RGB uint8 (h, w, 3) image, (h, w) = size: a random region (half to all of each side) of a
    random scikit-image photo, resized (bicubic, aspect not kept), plus Gaussian noise of `noise` levels."""
    name = _PHOTOS[rng.integers(len(_PHOTOS))]
    with Image.open(skimage_data_dir() / name) as source:
        source = source.convert("RGB")
        fraction = rng.uniform(0.5, 1.0, 2)
        w, h = int(source.width * fraction[0]), int(source.height * fraction[1])
        x, y = rng.integers(0, source.width - w + 1), rng.integers(0, source.height - h + 1)
        view = source.resize((size[1], size[0]), Image.Resampling.BICUBIC, box=(x, y, x + w, y + h))
    pixels = np.asarray(view, dtype=np.float32) + rng.normal(0.0, noise, (*size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write_photos(
    folder: str | os.PathLike, count: int, size: tuple[int, int], quality: int = 90, classes: int = 10, seed: int = 0
) -> Path:
    """Write `count` photo-like JPEGs of (h, w) = size at `quality` as a class-folder domain
    (folder/c<k>/<i>.jpg, image i in class i % classes) and return `folder`."""
    folder, rng = Path(folder), np.random.default_rng(seed)
    for i in range(count):
        path = folder / f"c{i % classes}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo_like(rng, size)).save(path, "JPEG", quality=quality)
    return folder
