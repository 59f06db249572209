"""Load a local weights file into a timm backbone, strictly, reusing timm's converters.

Formats (chosen by content, then by extension):
- timm / PyTorch state dicts (`.pth`, `.pt`, `.bin`; also wrapped in `{"state_dict": ...}` or
  `{"model": ...}`, with DDP/compile prefixes) and `.safetensors`: read by timm's `load_state_dict`;
- OpenCLIP / OpenAI CLIP visual towers (`visual.conv1...`, `visual.transformer.resblocks...`) and
  OpenCLIP timm towers (`visual.trunk...`): converted by the architecture's timm
  `checkpoint_filter_fn` (for ViTs `_convert_openai_clip`), which also resizes the position
  embedding (`resample_abs_pos_embed`) to the backbone's image size;
- lukemelas EfficientNet state dicts (`_conv_stem`, `_blocks.N`): `convert.lukemelas_efficientnet_to_timm`;
- AugReg / big_vision JAX `.npz`: timm's own npz reader (`VisionTransformer.load_pretrained`,
  i.e. `_load_weights`), which also resizes the position embedding.
The classifier head of the file (timm's `pretrained_cfg["classifier"]`) is dropped; every other
tensor must match the backbone exactly, or a `WeightsError` names the file and the keys.
"""
import sys
from pathlib import Path

import timm
import torch
import torch.nn as nn

from .convert import is_lukemelas_efficientnet, lukemelas_efficientnet_to_timm

_MAX_LISTED = 12


class WeightsError(ValueError):
    """A weights file that cannot be read or does not match the backbone."""


def _architecture(backbone: nn.Module) -> str:
    return backbone.pretrained_cfg.get("architecture", type(backbone).__name__)


def _listed(keys: list[str]) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .pth/.pt/.bin/.safetensors file, unwrapped from trainer checkpoints."""
    try:
        state_dict = timm.models.load_state_dict(str(path), use_ema=False)
    except Exception as exc:  # torch.load / safetensors raise many types for a bad file
        raise WeightsError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict (name -> tensor)")
    return state_dict


def _to_timm_keys(state_dict: dict[str, torch.Tensor], backbone: nn.Module) -> dict[str, torch.Tensor]:
    """Apply the lukemelas remap, then the architecture's own timm `checkpoint_filter_fn` if it has one.

    timm defines each architecture's converter as `checkpoint_filter_fn` in the architecture's module
    and passes it to its factory as `pretrained_filter_fn`; it is taken from there.
    """
    if is_lukemelas_efficientnet(state_dict):
        state_dict = lukemelas_efficientnet_to_timm(state_dict, backbone)
    filter_fn = getattr(sys.modules[type(backbone).__module__], "checkpoint_filter_fn", None)
    return filter_fn(state_dict, backbone) if filter_fn is not None else state_dict


def _drop_classifier(state_dict: dict[str, torch.Tensor], backbone: nn.Module) -> dict[str, torch.Tensor]:
    classifier = backbone.pretrained_cfg.get("classifier") or ()
    prefixes = tuple(f"{name}." for name in ((classifier,) if isinstance(classifier, str) else classifier))
    return {k: v for k, v in state_dict.items() if not (prefixes and k.startswith(prefixes))}


def _load_strict(backbone: nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    arch = _architecture(backbone)
    try:
        missing, unexpected = backbone.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:
        raise WeightsError(f"weights file {path} does not fit backbone {arch!r}: {exc}") from exc
    if missing or unexpected:
        raise WeightsError(
            f"weights file {path} does not match backbone {arch!r}: "
            f"missing keys [{_listed(list(missing))}]; unexpected keys [{_listed(list(unexpected))}]"
        )


def _load_npz(backbone: nn.Module, path: Path) -> None:
    arch = _architecture(backbone)
    if not hasattr(backbone, "load_pretrained"):
        raise WeightsError(f"{path}: JAX .npz weights need a timm model that reads them (ViT, ResNetV2); {arch!r} does not")
    try:
        backbone.load_pretrained(str(path))
    except KeyError as exc:
        raise WeightsError(f"npz weights file {path} lacks array {exc} needed by backbone {arch!r}") from exc
    except (ValueError, RuntimeError) as exc:
        raise WeightsError(f"npz weights file {path} does not fit backbone {arch!r}: {exc}") from exc


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load the local weights file `path` into the timm `backbone` in place (strict, head dropped).

    Raises FileNotFoundError for a missing file and `WeightsError` (naming the file) for a file that
    cannot be read or whose tensors do not match the backbone.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    if path.suffix == ".npz":
        _load_npz(backbone, path)
        return
    state_dict = _drop_classifier(_to_timm_keys(_read_state_dict(path), backbone), backbone)
    _load_strict(backbone, state_dict, path)
