"""Deployable embedders: an image batch in, L2-normalised embeddings out, the preprocessing as data.

- `load_embedder(CKPT)`: the universal UDON student of a checkpoint (backbone + student projection).
  Only the `backbone.*` and `student_projection.*` tensors are read: teacher heads and classifiers
  are never needed, so a checkpoint whose classifiers are sharded or absent embeds the same.
- `backbone_embedder(NAME, PRETRAINED, S)`: the off-the-shelf baseline, the pretrained backbone's own
  pooled features (CLS token / average pool), L2-normalised, with no projection.

Both return an `Embedder`, which `evaluation.protocol.evaluate_model` scores like a `UDONModel` (student only)
and `export` writes as ONNX or TorchScript.
"""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import check_image_size, create_backbone, feature_dim, normalization
from .checkpoint import CheckpointError, read_checkpoint
from .heads import projection
from .packaged import resolve_pretrained
from .weights import load_backbone_weights

# Checkpoint prefixes an embedder reads, and its own module names for them.
_PREFIXES = {"backbone.": "backbone.", "student_projection.": "projection."}


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for an embedder (the evaluation transform of udon_fast).

    Decode to RGB, resize the shorter side to `image_size` (bilinear), centre-crop
    `image_size` x `image_size`, scale to 0..1, then per channel `(x - mean) / std`; feed
    (N, 3, image_size, image_size) float32, channels first.
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields plus the fixed steps, as stored beside exported models."""
        return {
            **asdict(self),
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": "shorter side, bilinear",
            "crop": "centre",
            "scale": "0..1 before mean/std",
            "layout": "NCHW float32, RGB",
        }


class Embedder(nn.Module):
    """images (N, 3, S, S) float32, prepared as `preprocessing` says -> (N, dim) float32, unit-norm rows.

    backbone: a timm backbone returning pooled features (N, F); projection: the UDON student
    projection (F -> 64), or `nn.Identity()` for the off-the-shelf baseline (dim = F).
    config: what built it (backbone name, image size, ...; "image_size" is what evaluation reads).
    """

    def __init__(
        self, backbone: nn.Module, projection: nn.Module, preprocessing: Preprocessing, dim: int, config: dict[str, Any]
    ):
        super().__init__()
        self.backbone = backbone
        self.projection = projection
        self.preprocessing = preprocessing
        self.dim = dim
        self.config = {**config, "image_size": preprocessing.image_size}

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.preprocessing.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.preprocessing.std

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> L2-normalised backbone features (N, F)."""
        return F.normalize(self.backbone(images), dim=-1)

    def student_embedding(self, features: torch.Tensor) -> torch.Tensor:
        """(N, F) features -> (N, dim) float32 unit-norm embedding."""
        return F.normalize(self.projection(features).float(), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.student_embedding(self.features(images))

    @classmethod
    def of_backbone(cls, backbone: nn.Module, image_size: int, config: dict[str, Any]) -> "Embedder":
        """The backbone's own L2-normalised pooled features at `image_size` (shares `backbone`), eval mode."""
        mean, std = normalization(backbone)
        return cls(backbone, nn.Identity(), Preprocessing(image_size, mean, std), feature_dim(backbone), config).eval()


def load_embedder(checkpoint: str | Path, map_location: str | torch.device = "cpu") -> Embedder:
    """The universal (student) embedder of a udon_fast checkpoint, in eval mode on `map_location`.

    Reads the architecture from the checkpoint's config and only the backbone and student-projection
    tensors (strictly: every one of them must be there).  Errors name the file.
    """
    path = Path(checkpoint)
    saved = read_checkpoint(path, map_location)
    config = saved["config"]
    try:
        backbone = create_backbone(
            config["backbone_name"], config["image_size"], **(config.get("backbone_kwargs") or {})
        )
        head = projection(feature_dim(backbone), config["student_dim"], "student_dim")
        preprocessing = Preprocessing(int(config["image_size"]), tuple(config["mean"]), tuple(config["std"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path}: its config does not describe a UDON model ({type(exc).__name__}: {exc})"
        ) from exc
    embedder = Embedder(
        backbone,
        head,
        preprocessing,
        head[-1].out_features,
        {"backbone_name": config["backbone_name"], "source": str(path)},
    )
    state = {}
    for key, value in saved["model"].items():
        for prefix, own in _PREFIXES.items():
            if key.startswith(prefix):
                state[own + key[len(prefix) :]] = value
    try:
        missing, unexpected = embedder.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path}: backbone or student projection does not fit its config: {exc}"
        ) from exc
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path}: backbone/student projection tensors do not match its config: "
            f"missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}"
        )
    return embedder.to(map_location).eval()


def backbone_embedder(backbone_name: str, pretrained: str | Path | None, image_size: int) -> Embedder:
    """The off-the-shelf baseline: `backbone_name` with `pretrained` weights (a file, "packaged", or
    None), features at `image_size`, L2-normalised, no projection.  In eval mode, on the CPU."""
    backbone = create_backbone(backbone_name, image_size)
    check_image_size(backbone, backbone_name, image_size)
    weights = resolve_pretrained(backbone_name, pretrained)
    if weights is not None:
        load_backbone_weights(backbone, weights)
    return Embedder.of_backbone(
        backbone, image_size, {"backbone_name": backbone_name, "pretrained": None if weights is None else str(weights)}
    )
