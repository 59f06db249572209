"""Which fused head-loss backends exist here, and the choice behind backend="auto".

Each fused backend module (`chunked`, `triton_backend`, `native_backend`) exposes `BACKEND`, a
`head_backend.HeadBackend` (the forward/backward pair described in `head_op.py`); it is registered
as a custom op on first use.  Nothing is decided at import: `import udon_fast` neither imports Triton nor loads the native
library.  A backend's availability is checked, and its module imported and its op registered, the
first time a loss asks for it.  Under torch.compile that first time can be inside a trace: the
functions that check and register (`backend_status`, `auto_backend`, `_register`) carry
`torch.compiler.assume_constant_result`'s mark, so Dynamo calls them eagerly and keeps their result
(a bool/str constant) instead of tracing them: the traced code only reads values, with no graph break.
"""

import importlib
import os

import torch

from .head_backend import HeadBackend, HeadForward
from .head_op import register_head_backend

BACKENDS = ("auto", "reference", "chunked", "triton", "native")
_MODULES = {"chunked": ".chunked", "triton": ".triton_backend", "native": ".native_backend"}
_STATUS: dict[str, tuple[bool, str]] = {}  # backend -> (usable, reason), filled on first use
_FUSED_BACKENDS: dict[str, HeadBackend] = {}  # backend -> its module's BACKEND, imported on first use
_FUSED_OPS: dict[str, HeadForward] = {}  # backend -> its registered op (keyword-only), on first use


def _constant_under_compile(fn):
    """What `torch.compiler.assume_constant_result(fn)` does (sets the mark Dynamo reads), without
    importing torch._dynamo, which imports Triton: `import udon_fast` must stay light.
    tests/test_lean_import.py checks that the public decorator still sets exactly this mark."""
    fn._dynamo_marked_constant = True
    return fn


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


_CHECKS = {
    "reference": lambda: (True, "eager PyTorch, materialises (B, C) logits"),
    "chunked": lambda: (True, "PyTorch, classes in chunks, any device"),
    "triton": _triton_status,
    "native": _native_status,
}


@_constant_under_compile
def backend_status(name: str) -> tuple[bool, str]:
    """(usable, one-line reason) of one backend (not "auto"), checked once per process."""
    if name not in _STATUS:
        _STATUS[name] = _CHECKS[name]()
    return _STATUS[name]


def status() -> dict[str, tuple[bool, str]]:
    """{backend: (usable, one-line reason)} for every backend except "auto" (checks them all)."""
    return {name: backend_status(name) for name in _CHECKS}


@_constant_under_compile
def auto_backend(device_type: str) -> str:
    """backend="auto": triton on CUDA, otherwise native when built, otherwise chunked."""
    if device_type == "cuda" and backend_status("triton")[0]:
        return "triton"
    if device_type == "cpu" and backend_status("native")[0]:
        return "native"
    return "chunked"


def resolve(backend: str, device: torch.device) -> str:
    """Validate a backend name and resolve "auto" for tensors on `device`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return auto_backend(device.type)
    if backend in ("triton", "native"):
        ok, reason = backend_status(backend)
        if not ok:
            raise ValueError(f"backend={backend!r} is not available here: {reason}")
        if backend == "native" and device.type != "cpu":
            raise ValueError(f"backend='native' runs on CPU tensors only, got tensors on {device}")
    return backend


def fused_backend(name: str) -> HeadBackend:
    """A fused backend's forward/backward as plain functions (head_op.py's contract), for callers with
    their own autograd rule (the class-parallel loss): no custom-op dispatch.  Imported on first use."""
    if name not in _MODULES or not backend_status(name)[0]:
        available = sorted(n for n in _MODULES if backend_status(n)[0])
        raise ValueError(f"no fused backend {name!r} is available here; available: {available}")
    if name not in _FUSED_BACKENDS:
        _FUSED_BACKENDS[name] = importlib.import_module(_MODULES[name], __package__).BACKEND
    return _FUSED_BACKENDS[name]


@_constant_under_compile
def _register(name: str) -> str:
    """Register `udon_fast::head_loss_<name>` (+ `_backward`) once; return `name`."""
    if name not in _FUSED_OPS:
        _FUSED_OPS[name] = register_head_backend(fused_backend(name))
    return name


def fused_op(name: str) -> HeadForward:
    """The registered custom op `udon_fast::head_loss_<name>` of a fused backend, keyword-only."""
    registered = _register(name)  # before reading _FUSED_OPS: under torch.compile it runs eagerly here
    return _FUSED_OPS[registered]
