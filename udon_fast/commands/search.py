"""`python -m udon_fast.search`: the gallery images nearest to query images.

    python -m udon_fast.search --index GALLERY.faiss --query IMG|DIR [--checkpoint CKPT] [--top K] [--json OUT]
                               [--html OUT]
    python -m udon_fast.search --embeddings E.npy --query IMG|DIR [--checkpoint CKPT] [--top K] [--json OUT]

The gallery is an index file from `python -m udon_fast.index build` (flat, ivf or hnsw) or the
.npy of `python -m udon_fast.embed` (searched exactly).  The query is one image or a folder of
images (recursive); queries are embedded in batches with CKPT (default: the checkpoint recorded
with the gallery) and searched together.  stdout: per query, lines `rank  score  path` (for a
folder, each block starts with `query: PATH`).  --json OUT: {"gallery", "checkpoint", "top",
"results": [{"query": path, "neighbours": [{"rank", "score", "path"}, ...]}, ...]}.
--html OUT: OUT/index.html, each query with its hits as thumbnails copied into OUT (the gallery pages'
layout, `udon_fast.gallery`); a hit's class is shown as the folder its image is in.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from ..checks import check_positive
from ..data.decoders import DECODERS
from ..data.image_bytes import set_max_pixels
from ..files.outputs import atomic_write_text
from ..gallery import write_search_page
from ..retrieval.embed import embed_paths
from ..retrieval.search import html_results, open_gallery, query_embedder, query_paths, ranked
from .cli import (
    add_batch_size,
    add_checkpoint,
    add_data_threads,
    add_decoder,
    add_index_file,
    add_max_pixels,
    command_parser,
    run_command,
)


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("python -m udon_fast.search", __doc__)
    gallery = parser.add_argument_group("gallery (one of --index, --embeddings)")
    source = gallery.add_mutually_exclusive_group(required=True)
    add_index_file(source, required=False)
    source.add_argument("--embeddings", metavar="E.npy", help=".npy written by python -m udon_fast.embed")
    queries = parser.add_argument_group("queries")
    queries.add_argument("--query", required=True, help="query image file, or a folder of query images")
    add_checkpoint(queries, "model to embed the queries (default: the one recorded with the gallery)")
    add_max_pixels(queries)
    add_data_threads(queries)
    add_decoder(queries, DECODERS)
    add_batch_size(queries, 128, "queries embedded per batch")
    output = parser.add_argument_group("output")
    output.add_argument("--top", type=int, default=10, metavar="K", help="hits per query (default 10)")
    output.add_argument("--json", metavar="OUT.json", help="also write the ranked lists to this JSON file")
    output.add_argument("--html", metavar="OUT", help="also write OUT/index.html: the hits as thumbnails")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit code (docs/cli.md): 0 done, 2 bad options or input (a file, an undecodable query image)."""
    args = build_parser().parse_args(argv)
    return run_command(lambda: _search(args), "udon_fast.search")


def _search(args: argparse.Namespace) -> int:
    check_positive(args, "top", "batch_size", "data_threads")
    set_max_pixels(args.max_pixels)
    gallery = open_gallery(args.index, args.embeddings)
    paths = query_paths(args.query)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = query_embedder(gallery, args.checkpoint, device)
    queries = embed_paths(
        model,
        paths,
        device=device,
        batch_size=args.batch_size,
        threads=args.data_threads,
        decoder=args.decoder,
        progress=len(paths) > args.batch_size,
    )
    results = ranked(gallery, queries, paths, args.top)
    if args.json:
        checkpoint = args.checkpoint or gallery.meta["checkpoint"]
        record = {
            "gallery": args.index or args.embeddings,
            "checkpoint": str(checkpoint),
            "top": args.top,
            "results": results,
        }
        atomic_write_text(Path(args.json), json.dumps(record, indent=1, ensure_ascii=False))
    if args.html:
        write_search_page(args.html, html_results(results), title=f"udon_fast search of {args.query}")
    for result in results:
        if len(results) > 1:
            print(f"query: {result['query']}")
        for hit in result["neighbours"]:
            print(f"{hit['rank']:3d}  {hit['score']:.4f}  {hit['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
