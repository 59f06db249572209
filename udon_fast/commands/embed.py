"""`python -m udon_fast.embed`: universal 64-d descriptors for every image of a folder (or one image file).

Writes FILE.npy ((N, 64) float32, unit-norm rows) and FILE.meta.json ({"checkpoint", "paths",
"shape", "dtype", "sha256", "bytes"}: the model used, the N image paths in row order, the array's
shape and dtype, the .npy file's SHA-256 and size), written as a pair (`files.pairs`: a failure
leaves the old pair); `python -m udon_fast.index build` and `python -m udon_fast.search` read them
and check that they belong together.
"""

import argparse
import sys
from pathlib import Path

import torch

from ..checks import check_positive
from ..data.decoders import DECODERS
from ..data.image_bytes import set_max_pixels
from ..files.outputs import check_writable_folder
from ..model import load_embedder
from ..retrieval.embed import embed_paths, list_images, meta_path, write_embeddings
from .cli import (
    add_batch_size,
    add_checkpoint,
    add_data_threads,
    add_decoder,
    add_max_pixels,
    command_parser,
    run_command,
)


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("python -m udon_fast.embed", __doc__)
    inputs = parser.add_argument_group("inputs")
    add_checkpoint(inputs, required=True)
    inputs.add_argument("--images", required=True, help="folder of images (searched recursively), or one image file")
    add_max_pixels(inputs)
    add_data_threads(inputs)
    add_decoder(inputs, DECODERS)
    add_batch_size(inputs, 128)
    output = parser.add_argument_group("output")
    output.add_argument(
        "--out", required=True, metavar="FILE.npy", help="output .npy file (FILE.meta.json is written beside it)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit code (docs/cli.md): 0 done, 2 bad options or input (every undecodable image is named)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if Path(args.out).suffix != ".npy":
        parser.error(f"--out must name a .npy file, got {args.out}")
    return run_command(lambda: _embed(args), "udon_fast.embed")


def _embed(args: argparse.Namespace) -> int:
    out = Path(args.out)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_positive(args, "batch_size", "data_threads")
    set_max_pixels(args.max_pixels)
    model = load_embedder(args.checkpoint, map_location=device)
    paths = list_images(Path(args.images))
    check_writable_folder(out.parent, "--out")
    embeddings = embed_paths(
        model, paths, device=device, batch_size=args.batch_size, threads=args.data_threads, decoder=args.decoder
    )
    write_embeddings(out, embeddings, paths, str(Path(args.checkpoint).resolve()))
    print(f"{len(paths)} embeddings {embeddings.shape} -> {out} (paths in {meta_path(out)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
