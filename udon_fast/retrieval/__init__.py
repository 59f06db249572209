"""Retrieval over embeddings: `knn` (exact kNN metrics with faiss), `index` (faiss index files of a gallery),
`embed` (embeddings of image files, written as a checked pair) and `search` (query images against a
gallery)."""

from .knn import knn_metrics, knn_metrics_by_domain

__all__ = ["knn_metrics", "knn_metrics_by_domain"]
