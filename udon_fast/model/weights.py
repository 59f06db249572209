"""Load a local weights file into a timm backbone, strictly, reusing timm's converters.

Formats (chosen by content, then by extension):
- timm / PyTorch state dicts (`.pth`, `.pt`, `.bin`; also wrapped in `{"state_dict": ...}` or
  `{"model": ...}`, with DDP/compile prefixes) and `.safetensors`: read by timm's `load_state_dict`;
- OpenCLIP / OpenAI CLIP visual towers (`visual.conv1...`, `visual.transformer.resblocks...`) and
  OpenCLIP timm towers (`visual.trunk...`): converted by the architecture's timm
  `checkpoint_filter_fn` (for ViTs `_convert_openai_clip`), which also resizes the position
  embedding (`resample_abs_pos_embed`) to the backbone's image size;
- lukemelas EfficientNet state dicts (`_conv_stem`, `_blocks.N`): `convert.lukemelas_efficientnet_to_timm`;
- AugReg / big_vision JAX `.npz` (the official UDON release's ImageNet-21k start, e.g.
  `B_16-i21k-300ep-...-res_224.npz`): timm's own npz reader (`VisionTransformer.load_pretrained`,
  i.e. `_load_weights`), which also resizes the position embedding;
- the official UDON release's CLIP start `vit_b16.npy`: a NumPy file holding a pickled dict of torch
  tensors, the OpenAI CLIP ViT-B/16 state dict (`visual.*` plus the text tower).  Its pickle is read
  by a restricted unpickler (`_SafeUnpickler`) that builds only NumPy arrays and dtypes, torch
  tensors and their storages (themselves read with `torch.load(weights_only=True)`), ordered dicts
  and the plain containers and scalars pickle makes itself; any other object in the file (a class, a
  function such as `os.system`) is refused, naming the file and the object, before it is called, so
  no code from the file runs.  The CLIP image-text projection `visual.proj` and the text tower are
  dropped, and the visual tower goes through the OpenAI CLIP converter above.  Use it with the
  QuickGELU CLIP ViT, `--backbone vit_base_patch16_clip_quickgelu_224` (CLIP's mean/std).
The classifier head of the file (timm's `pretrained_cfg["classifier"]`) is dropped; every other
tensor must match the backbone exactly, or a `WeightsError` names the file and the keys.
"""

import codecs
import collections
import io
import pickle
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import CheckpointError
from ..extras import needs_extra
from .convert import is_lukemelas_efficientnet, lukemelas_efficientnet_to_timm

with needs_extra("train"):
    import timm

_MAX_LISTED = 12


class WeightsError(CheckpointError):
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


def _storage_from_bytes(data: bytes) -> torch.UntypedStorage:
    """A tensor storage pickled by `torch.Tensor.__reduce_ex__` (bytes of a `torch.save`), loaded safely."""
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except pickle.UnpicklingError:  # torch's message spans many lines
        raise pickle.UnpicklingError("a tensor storage in it holds objects other than tensors") from None


_NUMPY_ARRAY, _NUMPY_SCALAR = np.empty(0).__reduce__()[0], np.float32(0).__reduce__()[0]
# (module, name) -> what `_SafeUnpickler` may build: NumPy arrays and scalars (their module was renamed in
# NumPy 2) and dtypes, torch tensors and storages, ordered dicts (a tensor's backward hooks) and the bytes
# codec of Python 2 pickles.
_ALLOWED = {
    **{
        (module, name): function
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name, function in (("_reconstruct", _NUMPY_ARRAY), ("scalar", _NUMPY_SCALAR))
    },
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): codecs.encode,
}
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class _SafeUnpickler(pickle.Unpickler):
    """Builds only the objects in `_ALLOWED`; `pickle.UnpicklingError` naming any other one."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(
                f"it holds a {module}.{name} object, which weights files never need "
                f"(only arrays, tensors, containers and numbers are read)"
            ) from None


def _read_pickled_npy(path: Path) -> dict[str, torch.Tensor]:
    """The visual-tower tensors of a `vit_b16.npy`-style file: `np.save` of {name: torch tensor}.

    The file's header is read by NumPy, its pickle by `_SafeUnpickler` (see the module docstring);
    NumPy arrays among the values are accepted as well.  The OpenAI CLIP converter maps `visual.proj`
    (CLIP's projection into the text space) to `head.*`, which is dropped with the classifier.
    """
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in _NPY_HEADERS:
                raise ValueError(f".npy format version {version} (this reader takes 1.0 and 2.0)")
            shape, _, dtype = _NPY_HEADERS[version](f)
            if dtype.kind != "O" or shape != ():
                found = f"an array {dtype} {shape}"
            else:
                array = _SafeUnpickler(f).load()
                found = (
                    None if isinstance(array, np.ndarray) and isinstance(array.item(), dict) else type(array).__name__
                )
    except pickle.UnpicklingError as exc:
        raise WeightsError(f"weights file {path} refused: {exc}") from None
    except Exception as exc:  # a bad header or pickle raises many types
        raise WeightsError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from exc
    if found is not None:
        raise WeightsError(
            f"weights file {path}: expected a .npy holding a pickled dict name -> tensor (the UDON "
            f"release's CLIP vit_b16.npy), found {found}"
        )
    state_dict = {}
    for key, value in array.item().items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsError(f"weights file {path}: entry {key!r} is {type(value).__name__}, expected a tensor")
        state_dict[key] = value
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
        raise WeightsError(
            f"{path}: JAX .npz weights need a timm model that reads them (ViT, ResNetV2); {arch!r} does not"
        )
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
    raw = _read_pickled_npy(path) if path.suffix == ".npy" else _read_state_dict(path)
    state_dict = _drop_classifier(_to_timm_keys(raw, backbone), backbone)
    _load_strict(backbone, state_dict, path)
