"""One way to build a backbone: timm by name, never downloading weights.

Weights come only from a local file through `weights.load_backbone_weights`.
"""

import difflib
from typing import Any

import torch.nn as nn

from ..errors import InputError
from ..extras import needs_extra

with needs_extra("train"):
    import timm


def _unknown_backbone(name: str) -> InputError:
    """An InputError for an unknown timm name, listing the closest registered names."""
    arch = name.split(".", 1)[0]
    stem = arch.split("_", 1)[0]
    candidates = timm.list_models(f"{stem}*") or timm.list_models()
    close = difflib.get_close_matches(arch, candidates, n=8, cutoff=0.5) or candidates[:8]
    return InputError(f"unknown backbone {name!r}: timm has no such model; close matches: {', '.join(close)}")


def create_backbone(name: str, image_size: int = 224, **kwargs: Any) -> nn.Module:
    """A timm model without classifier, randomly initialised (`pretrained=False`, never a hub download).

    `name` may carry a pretrained tag (`"vit_base_patch16_clip_224.openai"`): the tag selects the
    pretrained config (normalisation mean/std), not weights.  `image_size` is passed as `img_size`
    to models that take it (ViTs size their position embedding from it); models that do not take it
    (CNNs) accept any input size.  Extra `kwargs` go to `timm.create_model` (e.g. `depth`,
    `drop_path_rate`).  Calling the result on (B, 3, H, W) float gives pooled features
    (B, `feature_dim(model)`): the CLS token for ViTs, average pooling for CNNs.
    """
    if not timm.is_model(name):
        raise _unknown_backbone(name)
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, img_size=image_size, **kwargs)
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)


def image_size_rule(backbone: nn.Module) -> tuple[int, int]:
    """(minimum, step): the square image sides the backbone can use are multiples of `step` >= `minimum`.

    The minimum is the total stride of the last feature map (timm's `feature_info` reduction: 32 for
    EfficientNet-Lite0, the patch size for a ViT): smaller images leave no full cell of it.  A ViT
    with a fixed patch grid (no `dynamic_img_pad`) drops the pixels beyond a whole number of patches,
    so it needs a multiple of its patch size.
    """
    info = getattr(backbone, "feature_info", None)
    minimum = int(info[-1]["reduction"]) if info else 1
    step = 1
    patch_embed = getattr(backbone, "patch_embed", None)
    if patch_embed is not None and not getattr(patch_embed, "dynamic_img_pad", False):
        patch = getattr(patch_embed, "patch_size", None) or 1
        step = max(patch) if isinstance(patch, (tuple, list)) else int(patch)
    return max(minimum, step), step


def check_image_size(backbone: nn.Module, name: str, image_size: int) -> None:
    """Raise ValueError when the backbone cannot use `image_size` (see `image_size_rule`)."""
    minimum, step = image_size_rule(backbone)
    if image_size % step:
        below = image_size // step * step
        options = " or ".join(str(s) for s in (below, below + step) if s >= minimum)
        raise InputError(
            f"image size {image_size} does not suit backbone {name!r}: it cuts images into {step} px "
            f"patches, so use a multiple of {step} (e.g. {options})"
        )
    if image_size < minimum:
        raise InputError(
            f"image size {image_size} is too small for backbone {name!r}: its total stride is "
            f"{minimum}, so use at least {minimum}"
        )


def feature_dim(backbone: nn.Module) -> int:
    """Width F of the pooled features the backbone returns."""
    return int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)


def normalization(backbone: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per RGB channel, from timm's data config of the backbone's pretrained config."""
    config = timm.data.resolve_data_config({}, model=backbone)
    return tuple(float(m) for m in config["mean"]), tuple(float(s) for s in config["std"])
