"""`python -m udon_fast.search`: the images nearest to a query image in a `udon_fast.embed` output."""
import argparse
import json
import sys
from pathlib import Path

import faiss
import numpy as np
import torch

from .data.decoders import DECODERS
from .embed import embed_paths, meta_path
from .model import load_model


def nearest(embeddings: np.ndarray, query: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product search: (scores (top,), row ids (top,)) of one (D,) query in (N, D)."""
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    scores, ids = index.search(np.ascontiguousarray(query[None], dtype=np.float32), min(top, len(embeddings)))
    return scores[0], ids[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m udon_fast.search", description=__doc__)
    parser.add_argument("--embeddings", required=True, help=".npy written by `python -m udon_fast.embed`")
    parser.add_argument("--query", required=True, help="query image file")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--checkpoint", help="model to embed the query (default: the one recorded by embed)")
    parser.add_argument("--decoder", choices=DECODERS, default="dali", help="image decoder")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error(f"--top must be >= 1, got {args.top}")
    try:
        path = Path(args.embeddings)
        if not path.is_file() or not meta_path(path).is_file():
            raise FileNotFoundError(f"--embeddings: need {path} and {meta_path(path)} (written by udon_fast.embed)")
        embeddings = np.load(path)
        meta = json.loads(meta_path(path).read_text(encoding="utf-8"))
        if embeddings.ndim != 2 or len(meta["paths"]) != len(embeddings):
            raise ValueError(f"--embeddings: {path} has shape {embeddings.shape} but {meta_path(path)} lists "
                             f"{len(meta['paths'])} paths")
        if not Path(args.query).is_file():
            raise FileNotFoundError(f"--query image not found: {args.query}")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, _ = load_model(args.checkpoint or meta["checkpoint"], map_location=device)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"udon_fast.search: error: {exc}", file=sys.stderr)
        return 1
    query = embed_paths(model, [args.query], device=device, batch_size=1, decoder=args.decoder, progress=False)[0]
    if query.shape[0] != embeddings.shape[1]:
        print(f"udon_fast.search: error: the model gives {query.shape[0]}-d embeddings but {path} holds "
              f"{embeddings.shape[1]}-d ones", file=sys.stderr)
        return 1
    scores, ids = nearest(embeddings, query, args.top)
    for rank, (score, row) in enumerate(zip(scores, ids), start=1):
        print(f"{rank:3d}  {score:.4f}  {meta['paths'][row]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
