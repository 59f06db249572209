"""Which fused head-loss backends exist here, and the choice behind backend="auto".

Each fused backend module (`chunked`, `triton_backend`, `native_backend`) exposes `BACKEND`, a
`head_backend.HeadBackend` (the forward/backward pair described in `head_op.py`); it is registered
as a custom op on first use.
"""
import importlib
import os

import torch

from .head_backend import HeadBackend, HeadForward
from .head_op import register_head_backend

BACKENDS = ("auto", "reference", "chunked", "triton", "native")
_MODULES = {"chunked": ".chunked", "triton": ".triton_backend", "native": ".native_backend"}


def _triton_status() -> tuple[bool, str]:
    try:
        import triton
    except ImportError as exc:
        return False, f"triton not importable ({exc})"
    if torch.cuda.is_available():
        return True, f"triton {triton.__version__} on CUDA"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, f"triton {triton.__version__} interpreter (TRITON_INTERPRET=1, CPU tensors, slow)"
    return False, f"triton {triton.__version__} installed but no CUDA device (set TRITON_INTERPRET=1 to interpret)"


def _native_status() -> tuple[bool, str]:
    from .. import native_library

    ok, reason = native_library.status()
    if ok and not hasattr(torch.ops.udon_fast_native, "head_forward"):
        return False, f"{reason}; it has no head-loss ops (udon_fast_native::head_forward)"
    return ok, reason


def _status() -> dict[str, tuple[bool, str]]:
    return {
        "reference": (True, "eager PyTorch, materialises (B, C) logits"),
        "chunked": (True, "PyTorch, classes in chunks, any device"),
        "triton": _triton_status(),
        "native": _native_status(),
    }


def _auto(usable: dict[str, tuple[bool, str]], device_type: str) -> str:
    if device_type == "cuda" and usable["triton"][0]:
        return "triton"
    if device_type == "cpu" and usable["native"][0]:
        return "native"
    return "chunked"


# Decided once, at import, so that code traced by torch.compile only reads these dicts.
STATUS = _status()
AUTO = {device_type: _auto(STATUS, device_type) for device_type in ("cpu", "cuda")}
FUSED_BACKENDS = {name: importlib.import_module(_MODULES[name], __package__).BACKEND
                  for name in _MODULES if STATUS[name][0]}
FUSED_OPS = {name: register_head_backend(backend) for name, backend in FUSED_BACKENDS.items()}


def status() -> dict[str, tuple[bool, str]]:
    """{backend: (usable, one-line reason)} for every backend except "auto"."""
    return STATUS


def auto_backend(device_type: str) -> str:
    """backend="auto": triton on CUDA, otherwise native when built, otherwise chunked."""
    return AUTO.get(device_type, "chunked")


def resolve(backend: str, device: torch.device) -> str:
    """Validate a backend name and resolve "auto" for tensors on `device`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return auto_backend(device.type)
    if backend in ("triton", "native"):
        ok, reason = STATUS[backend]
        if not ok:
            raise ValueError(f"backend={backend!r} is not available here: {reason}")
        if backend == "native" and device.type != "cpu":
            raise ValueError(f"backend='native' runs on CPU tensors only, got tensors on {device}")
    return backend


def fused_op(name: str) -> HeadForward:
    """The registered custom op `udon_fast::head_loss_<name>` of a fused backend, keyword-only."""
    return FUSED_OPS[name]


def fused_backend(name: str) -> HeadBackend:
    """A fused backend's forward/backward as plain functions (head_op.py's contract), for callers with
    their own autograd rule (the class-parallel loss): no custom-op dispatch."""
    if name not in FUSED_BACKENDS:
        raise ValueError(f"no fused backend {name!r} is available here; available: {sorted(FUSED_BACKENDS)}")
    return FUSED_BACKENDS[name]
