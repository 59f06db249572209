"""Embeddings of image files: list a folder's images, embed them in batches, and write them as the
(FILE.npy, FILE.meta.json) pair that `python -m udon_fast.embed` writes and `udon_fast.retrieval.index`
reads.

FILE.npy: (N, 64) float32, unit-norm rows.  FILE.meta.json: {"checkpoint", "paths", "shape", "dtype",
"sha256", "bytes"}: the model used, the N image paths in row order, the array's shape and dtype, the .npy
file's SHA-256 and size; written as a pair (`files.pairs`: a failure leaves the old pair).
"""

from pathlib import Path

import numpy as np
import torch

from ..data import Split
from ..data.folder import IMAGE_SUFFIXES, image_files, warn_unsupported
from ..errors import InputError
from ..evaluation.protocol import embed_split
from ..files.pairs import write_pair
from .index import embeddings_meta_path as meta_path


def list_images(folder: Path, flag: str = "--images") -> list[str]:
    """Image files below `folder` (recursive, sorted, by suffix, hidden files and folders skipped), or
    `folder` itself when it is an image file; errors name `flag`, a warning names unsupported formats."""
    suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
    if folder.is_file():
        if folder.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(f"{flag} {folder} is not an image file ({suffixes})")
        return [str(folder)]
    if not folder.is_dir():
        raise FileNotFoundError(f"{flag} image file or folder not found: {folder}")
    images, unsupported = image_files(folder, recursive=True)
    warn_unsupported(f"{flag} {folder}", unsupported)
    if not images:
        raise InputError(f"{flag} {folder} holds no image files ({suffixes})")
    return list(map(str, images))


def embed_paths(
    model,
    paths: list[str],
    *,
    device: torch.device,
    batch_size: int = 128,
    threads: int = 2,
    decoder: str = "dali",
    progress: bool = True,
) -> np.ndarray:
    """Universal embeddings (N, 64) float32 of image files, in order (`decoder`: "dali" or "torchvision")."""
    split = Split(paths=paths, labels=np.zeros(len(paths), dtype=np.int64), name="images")
    return embed_split(
        model,
        split,
        None,
        batch_size=batch_size,
        device=device,
        teacher=False,
        num_threads=threads,
        decoder=decoder,
        progress=progress,
    ).student


def write_embeddings(out: Path, embeddings: np.ndarray, paths: list[str], checkpoint: str | None) -> dict:
    """Write OUT.npy (`embeddings` (N, D)) and OUT.meta.json as a pair (module docstring); return the meta."""
    meta = {
        "checkpoint": checkpoint,
        "paths": list(paths),
        "shape": list(embeddings.shape),
        "dtype": str(embeddings.dtype),
    }
    return write_pair(out, lambda f: np.save(f, embeddings), meta_path(out), meta, "--out")
