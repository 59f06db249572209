"""Searching a gallery (an index file of `udon_fast.retrieval.index`, or embeddings searched exactly) with
query images: open it, pick the model that embeds the queries, rank the hits
(`python -m udon_fast.search` is the command)."""

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..gallery import Hit, QueryResult
from ..model import Embedder, load_embedder
from .embed import list_images
from .index import Gallery, build_index, load_gallery, read_embeddings


def open_gallery(index: str | None, embeddings: str | None) -> Gallery:
    """The gallery named by --index (an index file) or --embeddings (a flat index built in memory)."""
    if index is not None:
        return load_gallery(index)
    vectors, meta = read_embeddings(Path(embeddings))
    flat, info = build_index(vectors, "flat")
    return Gallery(flat, meta["paths"], {**info, "checkpoint": meta.get("checkpoint")})


def query_embedder(gallery: Gallery, checkpoint: str | None, device: torch.device) -> Embedder:
    """The model that embeds queries for `gallery`, on `device`: `checkpoint`, or the one recorded with the
    gallery.  ValueError when there is neither, or when its embeddings are not as wide as the gallery's."""
    checkpoint = checkpoint or gallery.meta.get("checkpoint")
    if not checkpoint:
        raise InputError("--checkpoint is needed: the gallery records no checkpoint")
    model = load_embedder(checkpoint, map_location=device)
    if model.dim != gallery.dimension:
        raise InputError(
            f"{checkpoint} gives {model.dim}-d embeddings but the gallery holds {gallery.dimension}-d ones"
        )
    return model


def query_paths(query: str) -> list[str]:
    """One image file, or every image below a folder (sorted)."""
    path = Path(query)
    if path.is_dir():
        return list_images(path, flag="--query")
    if not path.is_file():
        raise FileNotFoundError(f"--query image or folder not found: {query}")
    return [str(path)]


def ranked(gallery: Gallery, queries: np.ndarray, paths: list[str], top: int) -> list[dict]:
    """[{"query", "neighbours": [{"rank", "score", "path"}]}] for (Q, D) query embeddings."""
    scores, ids = gallery.search(queries, top)
    results = []
    for query, row_scores, row_ids in zip(paths, scores, ids):
        hits = [(float(s), int(i)) for s, i in zip(row_scores, row_ids) if i >= 0]
        results.append(
            {
                "query": query,
                "neighbours": [
                    {"rank": r, "score": s, "path": gallery.paths[i]} for r, (s, i) in enumerate(hits, start=1)
                ],
            }
        )
    return results


def html_results(results: list[dict]) -> list[QueryResult]:
    """`ranked`'s results as gallery rows: each image's class shown as its folder's name."""
    return [
        QueryResult(
            r["query"], "", "", [Hit(h["path"], "", Path(h["path"]).parent.name, h["score"]) for h in r["neighbours"]]
        )
        for r in results
    ]
