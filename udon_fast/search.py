"""`python -m udon_fast.search`: the images nearest to a query image in a `udon_fast.embed` output."""
import argparse
import json
import sys
from pathlib import Path

import faiss
import numpy as np
import torch

from .cli import check_positive
from .embed import embed_paths, meta_path
from .model import load_model


def nearest(embeddings: np.ndarray, query: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product search: (scores (top,), row ids (top,)) of one (D,) query in (N, D)."""
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    scores, ids = index.search(np.ascontiguousarray(query[None], dtype=np.float32), min(top, len(embeddings)))
    return scores[0], ids[0]


def read_embeddings(path: Path) -> tuple[np.ndarray, dict]:
    """The (N, D) float embeddings and the {"checkpoint", "paths"} metadata `udon_fast.embed` wrote;
    ValueError / FileNotFoundError naming the file that is missing or malformed."""
    meta_file = meta_path(path)
    if not path.is_file() or not meta_file.is_file():
        raise FileNotFoundError(f"--embeddings: need {path} and {meta_file} (written by udon_fast.embed)")
    try:
        embeddings = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"--embeddings {path} is not a .npy array written by udon_fast.embed ({exc})") from exc
    if embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.floating):
        raise ValueError(f"--embeddings {path}: expected an (N, D) float array, got {embeddings.dtype} "
                         f"{embeddings.shape}")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{meta_file}: malformed JSON ({exc})") from exc
    if not (isinstance(meta, dict) and isinstance(meta.get("checkpoint"), str) and isinstance(meta.get("paths"), list)):
        raise ValueError(f"{meta_file}: expected {{\"checkpoint\": path, \"paths\": [image paths]}} as written by "
                         f"udon_fast.embed")
    if len(meta["paths"]) != len(embeddings):
        raise ValueError(f"--embeddings: {path} has shape {embeddings.shape} but {meta_file} lists "
                         f"{len(meta['paths'])} paths")
    return embeddings, meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m udon_fast.search", description=__doc__)
    parser.add_argument("--embeddings", required=True, help=".npy written by `python -m udon_fast.embed`")
    parser.add_argument("--query", required=True, help="query image file")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--checkpoint", help="model to embed the query (default: the one recorded by embed)")
    args = parser.parse_args(argv)
    try:
        check_positive(args, "top")
        path = Path(args.embeddings)
        embeddings, meta = read_embeddings(path)
        if not Path(args.query).is_file():
            raise FileNotFoundError(f"--query image not found: {args.query}")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, _ = load_model(args.checkpoint or meta["checkpoint"], map_location=device)
        query = embed_paths(model, [args.query], device=device, batch_size=1, progress=False)[0]
        if query.shape[0] != embeddings.shape[1]:
            raise ValueError(f"the model gives {query.shape[0]}-d embeddings but {path} holds "
                             f"{embeddings.shape[1]}-d ones")
    except (OSError, ValueError) as exc:  # bad files (named), options, an undecodable query image
        print(f"udon_fast.search: error: {exc}", file=sys.stderr)
        return 1
    scores, ids = nearest(embeddings, query, args.top)
    for rank, (score, row) in enumerate(zip(scores, ids), start=1):
        print(f"{rank:3d}  {score:.4f}  {meta['paths'][row]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
