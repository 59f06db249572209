"""`python -m udon_fast.embed`: universal 64-d descriptors for every image of a folder.

Writes FILE.npy ((N, 64) float32, unit-norm rows) and FILE.meta.json ({"checkpoint", "paths"}:
the model used and the N image paths in row order), which `python -m udon_fast.search` reads.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from .data import Split
from .data.decoders import DECODERS
from .evaluation import embed_split
from .model import load_model

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def list_images(folder: Path) -> list[str]:
    """Image files below `folder` (recursive, sorted), by suffix."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--images folder not found: {folder}")
    paths = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ValueError(f"--images {folder} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


def embed_paths(model, paths: list[str], *, device: torch.device, batch_size: int = 128, threads: int = 2,
                decoder: str = "dali", progress: bool = True) -> np.ndarray:
    """Universal embeddings (N, 64) float32 of image files, in order (`decoder`: "dali" or "torchvision")."""
    split = Split(paths=paths, labels=np.zeros(len(paths), dtype=np.int64), name="images")
    return embed_split(model, split, None, batch_size=batch_size, device=device, teacher=False, num_threads=threads,
                       decoder=decoder, progress=progress).student


def meta_path(embeddings: Path) -> Path:
    return embeddings.with_suffix(".meta.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m udon_fast.embed", description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--images", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--out", required=True, help="output .npy file")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decoder", choices=DECODERS, default="dali", help="image decoder")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.suffix != ".npy":
        parser.error(f"--out must name a .npy file, got {out}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model, _ = load_model(args.checkpoint, map_location=device)
        paths = list_images(Path(args.images))
    except (FileNotFoundError, ValueError) as exc:
        print(f"udon_fast.embed: error: {exc}", file=sys.stderr)
        return 1
    embeddings = embed_paths(model, paths, device=device, batch_size=args.batch_size, threads=args.threads,
                              decoder=args.decoder)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, embeddings)
    meta = {"checkpoint": str(Path(args.checkpoint).resolve()), "paths": paths}
    meta_path(out).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    print(f"{len(paths)} embeddings {embeddings.shape} -> {out} (paths in {meta_path(out)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
