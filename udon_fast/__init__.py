"""udon_fast: fast, exact UDON universal image embeddings.

Dataflow: images -> `data` (DALI or torchvision pipelines) -> `model` (backbone + UDON heads) -> `losses`
(fused head losses) -> `trainer`; embeddings -> `retrieval` (faiss kNN, index files, search) -> `evaluation`.
The command lines (`commands`) sit on top and import the library, never the reverse (docs/architecture.md).
"""

from .errors import (
    CheckFailed,
    CheckpointError,
    CompileError,
    DataError,
    ExportCheckFailed,
    InputError,
    TrainingDiverged,
    UdonFastError,
)
from .losses import ClassShard, UDONLoss, UDONLossOutput, normalized_softmax_ce, udon_loss
from .retrieval.knn import knn_metrics, knn_metrics_by_domain
from .sampler import DomainSampler

__version__ = "0.1.0"

__all__ = [
    "ClassShard",
    "CosineClassifier",
    "DomainSampler",
    "UDONLoss",
    "UDONLossOutput",
    "__version__",
    "knn_metrics",
    "knn_metrics_by_domain",
    "load_embedder",
    "normalized_softmax_ce",
    "udon_loss",
]
__all__ += [
    "CheckFailed",
    "CheckpointError",
    "CompileError",
    "DataError",
    "ExportCheckFailed",
    "InputError",
    "TrainingDiverged",
    "UdonFastError",
]  # udon_fast.errors


def __getattr__(name: str):
    """`udon_fast.load_embedder` (model.embedder) and `udon_fast.CosineClassifier` are imported on first
    use: they pull in timm (through udon_fast.model)."""
    if name == "load_embedder":
        from .model.embedder import load_embedder

        return load_embedder
    if name == "CosineClassifier":
        from .cosine_classifier import CosineClassifier

        return CosineClassifier
    raise AttributeError(f"module 'udon_fast' has no attribute {name!r}")
