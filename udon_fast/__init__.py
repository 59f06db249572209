"""udon_fast: fast, exact UDON universal image embeddings.

Dataflow: images -> `data` (DALI pipelines) -> `model` (backbone + UDON heads) -> `losses`
(fused head losses) -> optimizer; embeddings -> `knn` (faiss) -> metrics.
"""
from .knn import knn_metrics, knn_metrics_by_domain
from .losses import ClassShard, UDONLoss, UDONLossOutput, normalized_softmax_ce, udon_loss
from .sampler import DomainSampler

__version__ = "0.1.0"

__all__ = ["ClassShard", "DomainSampler", "UDONLoss", "UDONLossOutput", "__version__", "knn_metrics", "knn_metrics_by_domain",
           "normalized_softmax_ce", "udon_loss"]
