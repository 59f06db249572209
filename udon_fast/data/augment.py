"""The augmentations, defined once for every decoder (DALI, torchvision) and the PIL baseline.

Pixel (column, row) centres sit at integer + 0.5 in continuous image coordinates; "resize" is an
antialiased linear resampling (a triangle filter whose radius is max(1, source px per output px)),
the same filter family in DALI (`fn.resize`, linear, antialias) and torch
(`F.interpolate(mode="bilinear", antialias=True)`).

Train, per sample, with its draw (crop_x, crop_y in [0, 1), flip in {0, 1}) from
`sampling.EpochStream`:
  1. resize the decoded RGB image (h, w) to S x S, S = `train_resize(size)` (aspect not kept);
  2. crop size x size at column x0 = `crop_origin(crop_x, S, size)`, row y0 = `crop_origin(crop_y, S, size)`:
     floor(pos * (S - size) + 0.5) with a float32 product (DALI's crop_mirror_normalize rounding),
     so x0, y0 in 0..S-size;
  3. mirror left-right when flip == 1;
  4. normalise: (pixel / 255 - mean) / std per channel; CHW float32.
Equivalently the crop is the source window [x0 * w / S, (x0 + size) * w / S) x
[y0 * h / S, (y0 + size) * h / S) resampled to size x size: the DALI decoder resamples that window
directly, the torchvision decoder resizes the whole image and slices.  The two agree up to the
filters' rounding (docs/decoders.md gives the measured differences).

Eval: resize to `eval_resize(h, w, size)` (shorter side `size`, longer side rounded, each axis
scaled to its rounded length), centre crop size x size at origin floor((side - size) / 2 + 0.5),
normalise as above.
"""

from collections.abc import Sequence

import numpy as np


def train_resize(image_size: int) -> int:
    """Side S of the square train resize for a crop of `image_size` (256 for 224)."""
    return round(image_size * 256 / 224)


def crop_origin(position: float | np.ndarray, side: int, size: int) -> np.ndarray:
    """Integer start (int64) of a `size` crop in a `side` long axis at relative `position` in [0, 1]."""
    product = np.asarray(position, dtype=np.float32) * np.float32(side - size)
    return np.floor(product + np.float32(0.5)).astype(np.int64)


def eval_resize(h: int, w: int, image_size: int) -> tuple[int, int]:
    """(height, width) of the eval resize: the shorter side `image_size`, the longer one
    floor(long * image_size / short + 0.5)."""
    longer = int(np.floor(max(h, w) * image_size / min(h, w) + 0.5))
    return (image_size, longer) if h <= w else (longer, image_size)


def centre_origin(side: int, size: int) -> int:
    """Start of the centred `size` crop along an axis of length `side` (round half up)."""
    return int(np.floor((side - size) / 2 + 0.5))


def check_norm(mean: Sequence[float], std: Sequence[float]) -> None:
    """Reject mean/std that are not 3 values in 0..1 units (std > 0)."""
    for name, values in (("mean", mean), ("std", std)):
        if len(values) != 3 or not all(0.0 <= v <= 1.0 for v in values):
            raise ValueError(
                f"{name} must be 3 values in 0..1 units (e.g. ImageNet mean (0.485, 0.456, 0.406)), got {tuple(values)}"
            )
    if min(std) <= 0:
        raise ValueError(f"std must be positive, got {tuple(std)}")
