"""The UDON model: a timm backbone, per-domain teacher heads and one universal student head.

Dataflow: images (B, 3, H, W) -> `backbone` (timm, by name, local weights only) -> L2-normalised
features (B, F) -> `heads` (teacher projection per domain, universal student projection, cosine
classifiers) -> embeddings.  `checkpoint` saves and rebuilds a trained model from one file;
`embedder` gives the deployable part (backbone + student projection, or the bare backbone); `export` writes
it as one ONNX or TorchScript file.
"""

from .backbone import create_backbone, feature_dim, normalization
from .checkpoint import CheckpointError, load_model, save_checkpoint
from .embedder import Embedder, Preprocessing, backbone_embedder, load_embedder
from .udon import UDONModel
from .weights import WeightsError, load_backbone_weights

__all__ = [
    "UDONModel",
    "create_backbone",
    "feature_dim",
    "normalization",
    "load_backbone_weights",
    "WeightsError",
    "save_checkpoint",
    "load_model",
    "CheckpointError",
    "Embedder",
    "Preprocessing",
    "load_embedder",
    "backbone_embedder",
]
