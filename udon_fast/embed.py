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

from .cli import add_max_pixels, check_positive
from .data import Split
from .data.decoders import DECODERS
from .data.image_bytes import set_max_pixels
from .evaluation import embed_split
from .index import embeddings_meta_path as meta_path
from .model import load_embedder
from .output_files import atomic_write, atomic_write_text, check_writable_folder

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def list_images(folder: Path, flag: str = "--images") -> list[str]:
    """Image files below `folder` (recursive, sorted), by suffix; errors name `flag`."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{flag} folder not found: {folder}")
    paths = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ValueError(f"{flag} {folder} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


def embed_paths(model, paths: list[str], *, device: torch.device, batch_size: int = 128, threads: int = 2,
                decoder: str = "dali", progress: bool = True) -> np.ndarray:
    """Universal embeddings (N, 64) float32 of image files, in order (`decoder`: "dali" or "torchvision")."""
    split = Split(paths=paths, labels=np.zeros(len(paths), dtype=np.int64), name="images")
    return embed_split(model, split, None, batch_size=batch_size, device=device, teacher=False, num_threads=threads,
                       decoder=decoder, progress=progress).student


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m udon_fast.embed", description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--images", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--out", required=True, help="output .npy file")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decoder", choices=DECODERS, default="dali", help="image decoder")
    add_max_pixels(parser)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.suffix != ".npy":
        parser.error(f"--out must name a .npy file, got {out}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        check_positive(args, "batch_size", "threads")
        set_max_pixels(args.max_pixels)
        model = load_embedder(args.checkpoint, map_location=device)
        paths = list_images(Path(args.images))
        check_writable_folder(out.parent, "--out")
        embeddings = embed_paths(model, paths, device=device, batch_size=args.batch_size, threads=args.threads,
                                 decoder=args.decoder)
        with atomic_write(out, "--out") as f:
            np.save(f, embeddings)
        meta = {"checkpoint": str(Path(args.checkpoint).resolve()), "paths": paths}
        atomic_write_text(meta_path(out), json.dumps(meta, ensure_ascii=False))
    except (OSError, ValueError) as exc:  # bad files (every undecodable image is named), options, --out
        print(f"udon_fast.embed: error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(paths)} embeddings {embeddings.shape} -> {out} (paths in {meta_path(out)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
