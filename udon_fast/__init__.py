"""udon_fast: fast, exact UDON universal image embeddings.

Dataflow: images -> `data` (DALI or torchvision pipelines) -> `model` (backbone + UDON heads) -> `losses`
(fused head losses) -> optimizer; embeddings -> `knn` (faiss) -> metrics.
"""
from .knn import knn_metrics, knn_metrics_by_domain
from .losses import ClassShard, UDONLoss, UDONLossOutput, normalized_softmax_ce, udon_loss
from .sampler import DomainSampler

__version__ = "0.1.0"

__all__ = ["ClassShard", "DomainSampler", "UDONLoss", "UDONLossOutput", "__version__", "knn_metrics",
           "knn_metrics_by_domain", "load_embedder", "normalized_softmax_ce", "udon_loss"]


def __getattr__(name: str):
    """`udon_fast.load_embedder` (model.embedder) is imported on first use: it pulls in timm."""
    if name == "load_embedder":
        from .model.embedder import load_embedder

        return load_embedder
    raise AttributeError(f"module 'udon_fast' has no attribute {name!r}")
