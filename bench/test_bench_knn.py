"""knn_metrics on CPU against a bare faiss search of the same data (target: metric overhead <= 25%).

Run: `pytest bench/test_bench_knn.py` (20k queries x 500k index x 64-d; a few minutes on 2 cores).
`UDON_BENCH_QUICK=1` shrinks it to 2k x 50k for a quick suite.

Figures in `benchmark.extra_info` (seconds unless named otherwise):
- search_s: bare faiss `IndexFlatIP` add + search, k = 5.
- knn_metrics_s: `knn_metrics` end to end (the benchmarked call).
- metrics_only_s: `knn_metrics` with the faiss search replaced by the ids of the bare search, i.e.
  everything but the search: validation, class numbering, n_q counts, relevance, means.
- overhead_fraction: metrics_only_s / search_s, the figure the target is about; measured directly
  because the end-to-end difference is within the run-to-run noise of the search.
- end_to_end_ratio: knn_metrics_s / search_s.
"""

import os
import time

import faiss
import numpy as np
import pytest

from udon_fast.retrieval import knn

QUICK = os.environ.get("UDON_BENCH_QUICK") == "1"
NUM_QUERIES, NUM_INDEX = (2_000, 50_000) if QUICK else (20_000, 500_000)
DIM, K, NUM_CLASSES, NUM_DOMAINS = 64, 5, 5_000, 8
TARGET_OVERHEAD = 0.25


def unit_rows(rng, n):
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return {
        "query_emb": unit_rows(rng, NUM_QUERIES),
        "query_labels": rng.integers(0, NUM_CLASSES, NUM_QUERIES),
        "index_emb": unit_rows(rng, NUM_INDEX),
        "index_labels": rng.integers(0, NUM_CLASSES, NUM_INDEX),
        "query_domains": rng.integers(0, NUM_DOMAINS, NUM_QUERIES),
        "index_domains": rng.integers(0, NUM_DOMAINS, NUM_INDEX),
    }


def run_knn_metrics(data):
    return knn.knn_metrics(
        data["query_emb"],
        data["query_labels"],
        data["index_emb"],
        data["index_labels"],
        query_domains=data["query_domains"],
        index_domains=data["index_domains"],
        k=K,
        use_gpu=False,
    )


def test_bench_knn_metrics_vs_faiss_search(benchmark, data, monkeypatch):
    start = time.perf_counter()
    index = faiss.IndexFlatIP(DIM)
    index.add(data["index_emb"])
    _, ids = index.search(data["query_emb"], K)
    search_s = time.perf_counter() - start

    start = time.perf_counter()
    metrics = benchmark.pedantic(run_knn_metrics, args=(data,), rounds=1, iterations=1)
    knn_metrics_s = time.perf_counter() - start

    def precomputed_search(query, index_emb, k, batch_size, use_gpu):
        for first in range(0, len(query), batch_size):
            yield first, ids[first : first + batch_size]

    monkeypatch.setattr(knn, "_search_batches", precomputed_search)
    start = time.perf_counter()
    assert run_knn_metrics(data) == metrics
    metrics_only_s = time.perf_counter() - start

    benchmark.extra_info.update(
        {
            "num_queries": NUM_QUERIES,
            "num_index": NUM_INDEX,
            "dim": DIM,
            "k": K,
            "search_s": round(search_s, 3),
            "knn_metrics_s": round(knn_metrics_s, 3),
            "metrics_only_s": round(metrics_only_s, 3),
            "overhead_fraction": round(metrics_only_s / search_s, 4),
            "end_to_end_ratio": round(knn_metrics_s / search_s, 4),
            "target_overhead_fraction": TARGET_OVERHEAD,
        }
    )
    assert metrics["num_queries"] == NUM_QUERIES and 0.0 <= metrics["mmp_at_5"] <= 1.0
    assert metrics_only_s / search_s <= TARGET_OVERHEAD
