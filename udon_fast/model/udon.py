"""`UDONModel`: backbone -> L2-normalised features -> teacher / universal student embeddings."""

import copy
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError
from .backbone import check_image_size, create_backbone, feature_dim, normalization
from .heads import output_dim, projection
from .sharded_classifier import HEADS, DomainClassifier
from .weights import load_backbone_weights


def _check_domains(domains: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(domains, Mapping) or not domains:
        raise InputError(f"domains must be a non-empty mapping name -> number of classes, got {domains!r}")
    for name, classes in domains.items():
        if (
            not isinstance(name, str)
            or not name
            or "." in name
            or hasattr(nn.ParameterDict, name)
            or hasattr(nn.ModuleDict, name)
        ):
            raise InputError(
                f"domain name {name!r} is not usable as a parameter name (non-empty, no '.', "
                f"not an nn.ModuleDict attribute)"
            )
        if not isinstance(classes, int) or isinstance(classes, bool) or classes <= 0:
            raise InputError(f"domain {name!r}: number of classes must be a positive int, got {classes!r}")
    return dict(domains)


def head_embedding(projection, features: torch.Tensor) -> torch.Tensor:
    """A head's embedding: `projection(features)` (B, D) in float32, L2-normalised along D."""
    return F.normalize(projection(features).float(), dim=-1)


class UDONModel(nn.Module):
    """UDON (docs/method.md, section 1): a shared timm backbone, one teacher head per domain, one universal student head.

    Args:
        backbone_name: timm model name, optionally with a pretrained tag (`"vit_base_patch16_clip_224.openai"`).
        domains: domain name -> number of classes C_d (insertion order is kept).
        teacher_dim: teacher projection width (Linear F -> 256), or a list of dims for an MLP.
        student_dim: universal student projection width (Linear F -> 64), or a list of dims for an MLP.
        pretrained: optional local weights file for the backbone (see `weights.load_backbone_weights`);
            never a hub download.
        image_size: training/eval image side; ViTs size their position embedding from it.  Sizes the
            backbone cannot use raise ValueError (`backbone.image_size_rule`: at least its total
            stride, a multiple of a ViT's patch size).
        backbone_kwargs: extra keyword arguments for `timm.create_model` (e.g. `drop_path_rate`).
        classifier_shard: (rank, world_size): every domain's classifiers (`classifiers[d]`, a
            `DomainClassifier`) hold only rank's slice of the classes (class-parallel training), drawn so
            that the slices equal the rows of the unsharded initialisation.  (0, 1) (default): every row.
            Not part of `config`: a checkpoint describes the whole model, whatever its training layout.

    Attributes: `mean`, `std` (per-channel input normalisation of the backbone), `num_features` (F),
    `teacher_dim_out`, `student_dim_out`, `domains`, `config` (everything `from_config` needs).
    Images are (B, 3, image_size, image_size) float, normalised with `mean`/`std`.
    Embeddings are float32 and unit-norm along the last dimension (also under autocast).

    BatchNorm layers of a backbone (EfficientNet, ResNet, ...) keep their running statistics frozen
    (eval mode) also in `train()`: every UDON batch comes from one domain, and updating the
    statistics from single-domain batches drags them towards whichever domain came last, which
    wrecks the shared features.  Their affine parameters still train.  (ViTs have no BatchNorm.)
    A new model is in this training state (`train()`), so its state never depends on whether an
    evaluation ran before; `eval()` switches everything to inference.
    """

    def __init__(
        self,
        backbone_name: str,
        domains: Mapping[str, int],
        teacher_dim: int | Sequence[int] = 256,
        student_dim: int | Sequence[int] = 64,
        pretrained: str | Path | None = None,
        image_size: int = 224,
        backbone_kwargs: Mapping[str, Any] | None = None,
        classifier_shard: tuple[int, int] = (0, 1),
    ):
        super().__init__()
        self.domains = _check_domains(domains)
        backbone_kwargs = dict(backbone_kwargs or {})
        self.backbone = create_backbone(backbone_name, image_size, **backbone_kwargs)
        check_image_size(self.backbone, backbone_name, image_size)
        if pretrained is not None:
            load_backbone_weights(self.backbone, pretrained)
        self.num_features = feature_dim(self.backbone)
        self.mean, self.std = normalization(self.backbone)
        self.teacher_projections = nn.ModuleDict(
            {d: projection(self.num_features, teacher_dim, "teacher_dim") for d in self.domains}
        )
        self.student_projection = projection(self.num_features, student_dim, "student_dim")
        self.teacher_dim_out = output_dim(teacher_dim)
        self.student_dim_out = output_dim(student_dim)
        self.classifiers = nn.ModuleDict(
            {
                d: DomainClassifier(c, self.teacher_dim_out, self.student_dim_out, *classifier_shard)
                for d, c in self.domains.items()
            }
        )
        for head in HEADS:  # every teacher, then every student: the draw order of the unsharded model
            for classifier in self.classifiers.values():
                classifier.reset_parameters(head)
        self.config = {
            "backbone_name": backbone_name,
            "domains": dict(self.domains),
            "teacher_dim": copy.deepcopy(teacher_dim),
            "student_dim": copy.deepcopy(student_dim),
            "image_size": image_size,
            "backbone_kwargs": backbone_kwargs,
            "mean": list(self.mean),
            "std": list(self.std),
        }
        self.train()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "UDONModel":
        """A randomly initialised model of the architecture described by `config` (see `config`)."""
        args = {k: config[k] for k in ("backbone_name", "domains", "teacher_dim", "student_dim", "image_size")}
        return cls(**args, backbone_kwargs=config.get("backbone_kwargs"))

    def train(self, mode: bool = True) -> "UDONModel":
        super().train(mode)
        for module in self.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def _check_domain(self, domain: str) -> None:
        if domain not in self.domains:
            raise KeyError(f"unknown domain {domain!r}; the model has {list(self.domains)}")

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> backbone features (CLS / pooled) (B, F), L2-normalised, in the compute dtype."""
        return F.normalize(self.backbone(images), dim=-1)

    def student_embedding(self, features: torch.Tensor) -> torch.Tensor:
        """Universal student embedding (B, 64) float32, unit-norm, from `features` (B, F)."""
        return head_embedding(self.student_projection, features)

    def teacher_embedding(self, features: torch.Tensor, domain: str) -> torch.Tensor:
        """Teacher embedding of `domain` (B, 256) float32, unit-norm, from `features` (B, F)."""
        self._check_domain(domain)
        return head_embedding(self.teacher_projections[domain], features)

    def forward(self, images: torch.Tensor, domain: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass (one backbone pass): (student (B, 64), teacher of `domain` (B, 256)), float32, unit-norm."""
        features = self.features(images)
        return self.student_embedding(features), self.teacher_embedding(features, domain)

    def embed(self, images: torch.Tensor, domain: str | None = None, teacher: bool = False) -> torch.Tensor:
        """The universal embedding (B, 64), or with `teacher=True` the teacher embedding of `domain` (B, 256).

        float32, unit-norm.  Gradient mode is the caller's (wrap in `torch.inference_mode()` to evaluate).
        """
        if teacher:
            if domain is None:
                raise ValueError("embed(teacher=True) needs the domain whose teacher head to use")
            return self.teacher_embedding(self.features(images), domain)
        return self.student_embedding(self.features(images))

    def teacher_classifier(self, domain: str) -> nn.Parameter:
        """Raw teacher cosine-classifier weight W_t^d, (C_d, 256) float32 (rows not normalised)."""
        self._check_domain(domain)
        return self.classifiers[domain].teacher

    def student_classifier(self, domain: str) -> nn.Parameter:
        """Raw student cosine-classifier weight W_s^d, (C_d, 64) float32 (rows not normalised)."""
        self._check_domain(domain)
        return self.classifiers[domain].student

    @property
    def sharded(self) -> bool:
        """Whether the classifiers are class-parallel slices."""
        return any(c.sharded for c in self.classifiers.values())

    def sharded_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) of the class-parallel classifier slices (none when not sharded)."""
        return ((n, p) for n, p in self.named_parameters() if n.startswith("classifiers.") and self.sharded)

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Projections and classifiers (AdamW LR 1e-3; docs/method.md, section 4)."""
        for module in (self.teacher_projections, self.student_projection, self.classifiers):
            yield from module.parameters()

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """The backbone (AdamW LR 1e-5, frozen for the first epochs; docs/method.md, section 4)."""
        return self.backbone.parameters()
