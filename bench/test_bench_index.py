"""Approximate faiss indexes (`udon_fast.index`, parameters chosen by size) against exact flat search:
recall@10 and search time, on two galleries.

- synthetic, synthetic_wide: 100k x 64-d unit vectors around 1,000 unit centres plus Gaussian noise
  of std 0.1 (wide: 0.15) per dimension, queries 1,000 new points around the same centres: the
  shape of a 64-d UDON gallery, tight and loose classes (`UDON_BENCH_QUICK=1`: 20k, 200 queries);
- builtin_lite0: real embeddings, the off-the-shelf EfficientNet-Lite0 (packaged ImageNet weights)
  features (1280-d) of every image of the built-in dataset at 64 px, 500 of them held out as
  queries (quick: 1,500 images).

Run: `pytest bench/test_bench_index.py`.  Each case stores in `extra_info`: kind, parameters,
recall_at_10 (mean fraction of the exact top 10 returned), build_s, search_s (the benchmarked
call), speedup_vs_flat (flat search_s / search_s, same run).
"""

import time

import numpy as np
import pytest
import torch

from bench.suite import quick
from udon_fast.retrieval.index import build_index

K = 10
SEARCH_S: dict[str, float] = {}


def _synthetic(spread: float) -> tuple[np.ndarray, np.ndarray]:
    n, queries, dim, centres = (20_000, 200, 64, 1_000) if quick() else (100_000, 1_000, 64, 1_000)
    rng = np.random.default_rng(0)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)

    def around(count):
        x = c[rng.integers(0, centres, count)] + spread * rng.standard_normal((count, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return around(n), around(queries)


def _builtin_lite0(root) -> tuple[np.ndarray, np.ndarray]:
    from udon_fast.data import Split, load_domains, write_builtin
    from udon_fast.evaluation.protocol import embed_split
    from udon_fast.model import backbone_embedder

    write_builtin(root)
    paths = sorted({p for d in load_domains(root).values() for s in d.splits.values() for p in s.paths})
    if quick():
        paths = paths[:1_500]
    embedder = backbone_embedder("tf_efficientnet_lite0", "packaged", 64)
    split = Split(paths, np.zeros(len(paths), np.int64), name="all")
    x = embed_split(
        embedder, split, None, batch_size=128, device=torch.device("cpu"), teacher=False, progress=False
    ).student
    held_out = np.random.default_rng(0).permutation(len(x))
    return np.ascontiguousarray(x[held_out[500:]]), np.ascontiguousarray(x[held_out[:500]])


@pytest.fixture(scope="module", params=["synthetic", "synthetic_wide", "builtin_lite0"])
def gallery(request, tmp_path_factory):
    if request.param == "builtin_lite0":
        gallery, queries = _builtin_lite0(tmp_path_factory.mktemp("builtin"))
    else:
        gallery, queries = _synthetic(0.15 if request.param == "synthetic_wide" else 0.1)
    flat, _ = build_index(gallery, "flat")
    _, exact = flat.search(queries, K)
    return request.param, gallery, queries, exact


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_bench_index_recall_vs_flat(benchmark, gallery, kind):
    name, vectors, queries, exact = gallery
    start = time.perf_counter()
    index, info = build_index(vectors, kind)
    build_s = time.perf_counter() - start
    _, ids = benchmark.pedantic(index.search, args=(queries, K), rounds=3, iterations=1, warmup_rounds=1)
    recall = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, exact)]))
    SEARCH_S[f"{name}/{kind}"] = benchmark.stats.stats.mean
    benchmark.group = f"index {name}"
    benchmark.extra_info.update(
        gallery=name,
        count=len(vectors),
        dim=vectors.shape[1],
        queries=len(queries),
        kind=info["kind"],
        parameters=info["parameters"],
        recall_at_10=round(recall, 4),
        build_s=round(build_s, 2),
        search_s=round(benchmark.stats.stats.mean, 4),
        speedup_vs_flat=round(SEARCH_S.get(f"{name}/flat", float("nan")) / benchmark.stats.stats.mean, 2),
    )
