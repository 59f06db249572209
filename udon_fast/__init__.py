"""udon_fast: fast, exact UDON universal image embeddings.

Dataflow: images -> `data` (DALI pipelines) -> `model` (backbone + UDON heads) -> `losses`
(fused head losses) -> optimizer; embeddings -> `knn` (faiss) -> metrics.
"""
from .losses import UDONLoss, UDONLossOutput, normalized_softmax_ce, udon_loss

__version__ = "0.1.0"

__all__ = ["UDONLoss", "UDONLossOutput", "__version__", "normalized_softmax_ce", "udon_loss"]
