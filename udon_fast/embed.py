"""`python -m udon_fast.embed`: universal 64-d descriptors for every image of a folder (or one image file).

Writes FILE.npy ((N, 64) float32, unit-norm rows) and FILE.meta.json ({"checkpoint", "paths",
"shape", "dtype", "sha256", "bytes"}: the model used, the N image paths in row order, the array's
shape and dtype, the .npy file's SHA-256 and size), written as a pair (`paired_files`: a failure
leaves the old pair); `python -m udon_fast.index build` and `python -m udon_fast.search` read them
and check that they belong together.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from .cli import add_max_pixels, check_positive
from .data import Split
from .data.decoders import DECODERS
from .data.folder import IMAGE_SUFFIXES, image_files, warn_unsupported
from .data.image_bytes import set_max_pixels
from .evaluation import embed_split
from .index import embeddings_meta_path as meta_path
from .model import load_embedder
from .output_files import check_writable_folder
from .paired_files import write_pair

def list_images(folder: Path, flag: str = "--images") -> list[str]:
    """Image files below `folder` (recursive, sorted, by suffix, hidden files and folders skipped), or
    `folder` itself when it is an image file; errors name `flag`, a warning names unsupported formats."""
    suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
    if folder.is_file():
        if folder.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{flag} {folder} is not an image file ({suffixes})")
        return [str(folder)]
    if not folder.is_dir():
        raise FileNotFoundError(f"{flag} image file or folder not found: {folder}")
    images, unsupported = image_files(folder, recursive=True)
    warn_unsupported(f"{flag} {folder}", unsupported)
    if not images:
        raise ValueError(f"{flag} {folder} holds no image files ({suffixes})")
    return list(map(str, images))


def embed_paths(model, paths: list[str], *, device: torch.device, batch_size: int = 128, threads: int = 2,
                decoder: str = "dali", progress: bool = True) -> np.ndarray:
    """Universal embeddings (N, 64) float32 of image files, in order (`decoder`: "dali" or "torchvision")."""
    split = Split(paths=paths, labels=np.zeros(len(paths), dtype=np.int64), name="images")
    return embed_split(model, split, None, batch_size=batch_size, device=device, teacher=False, num_threads=threads,
                       decoder=decoder, progress=progress).student


def write_embeddings(out: Path, embeddings: np.ndarray, paths: list[str], checkpoint: str | None) -> dict:
    """Write OUT.npy (`embeddings` (N, D)) and OUT.meta.json as a pair (module docstring); return the meta."""
    meta = {"checkpoint": checkpoint, "paths": list(paths), "shape": list(embeddings.shape),
            "dtype": str(embeddings.dtype)}
    return write_pair(out, lambda f: np.save(f, embeddings), meta_path(out), meta, "--out")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m udon_fast.embed", description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--images", required=True, help="folder of images (searched recursively), or one image file")
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
        write_embeddings(out, embeddings, paths, str(Path(args.checkpoint).resolve()))
    except (OSError, ValueError) as exc:  # bad files (every undecodable image is named), options, --out
        print(f"udon_fast.embed: error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(paths)} embeddings {embeddings.shape} -> {out} (paths in {meta_path(out)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
