"""State-dict converters timm does not have.

timm's own converters (OpenCLIP / OpenAI CLIP visual towers, position-embedding resizing, npz) are
reused by `weights.py`; only the lukemelas EfficientNet layout is remapped here.
"""

import re

import torch
import torch.nn as nn

# lukemelas `_blocks.N.<name>` -> timm sub-module name, per timm block kind.
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
}
_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
}
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")


def is_lukemelas_efficientnet(state_dict: dict[str, torch.Tensor]) -> bool:
    """True for an EfficientNet state dict in lukemelas/EfficientNet-PyTorch layout (`_conv_stem`, `_blocks.N`)."""
    return "_conv_stem.weight" in state_dict


def lukemelas_efficientnet_to_timm(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename lukemelas EfficientNet keys to the timm EfficientNet `model` (e.g. `tf_efficientnet_lite0`).

    lukemelas numbers blocks flat (`_blocks.7`), timm by stage (`blocks.3.1`): the flat index is
    matched to timm's blocks in order.  Keys that match nothing keep their name, so a strict load
    reports them as unexpected.
    """
    flat = [(f"blocks.{s}.{j}", block) for s, stage in enumerate(model.blocks) for j, block in enumerate(stage)]
    out = {}
    for key, value in state_dict.items():
        match = _BLOCK_KEY.match(key)
        if match and int(match.group(1)) < len(flat):
            prefix, block = flat[int(match.group(1))]
            table = _INVERTED_RESIDUAL if hasattr(block, "conv_pwl") else _DEPTHWISE_SEPARABLE
            if match.group(2) in table:
                key = f"{prefix}.{table[match.group(2)]}.{match.group(3)}"
        else:
            module, _, leaf = key.partition(".")
            if module in _TOP_LEVEL:
                key = f"{_TOP_LEVEL[module]}.{leaf}"
        out[key] = value
    return out
