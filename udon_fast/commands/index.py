"""`python -m udon_fast.index build`: a faiss index file for a gallery (the format and the kinds:
`udon_fast.retrieval.index`)."""

import argparse
import sys
from pathlib import Path

from ..retrieval import index as gallery_index
from ..retrieval.index import KINDS, build, meta_path
from .cli import add_subcommand, command_parser, run_command, subcommands


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("python -m udon_fast.index", gallery_index.__doc__)
    commands = subcommands(parser)
    build = add_subcommand(commands, "build", "build a faiss index file from udon_fast.embed output")
    inputs = build.add_argument_group("input")
    inputs.add_argument(
        "--embeddings", required=True, metavar="E.npy", help=".npy written by python -m udon_fast.embed"
    )
    index = build.add_argument_group("index")
    index.add_argument(
        "--kind",
        choices=KINDS,
        default="flat",
        help="flat (default): exact; ivf or hnsw: approximate, for large galleries (module docstring)",
    )
    index.add_argument("--gpu", action="store_true", help="build on the GPU (flat, ivf)")
    output = build.add_argument_group("output")
    output.add_argument(
        "--out",
        required=True,
        metavar="GALLERY.faiss",
        help="index file to write (GALLERY.faiss.meta.json is written beside it)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit code (docs/cli.md): 0 done, 2 bad options or input (a missing or mismatched embeddings pair)."""
    args = build_parser().parse_args(argv)
    return run_command(lambda: _build(args), "udon_fast.index")


def _build(args: argparse.Namespace) -> int:
    meta = build(Path(args.embeddings), Path(args.out), args.kind, args.gpu)
    print(
        f"{args.out}: {meta['kind']} index of {meta['count']} x {meta['dimension']}-d vectors, "
        f"parameters {meta['parameters'] or '-'} (paths in {meta_path(Path(args.out))})"
    )
    if meta["note"]:
        print(f"note: {meta['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
