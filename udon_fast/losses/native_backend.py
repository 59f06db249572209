"""The native CPU backend: `udon_fast_native::head_forward` / `head_backward` (kernels/native/head_loss.cpp).

C++ with OpenMP: classes in tiles, per-tile products through ATen's BLAS, a fused vectorised
epilogue (cosines, target logit, online log-sum-exp of the four softmax families, KL), recompute in the
backward; no (B, C) buffer.  Same contract and math as `chunked.py`; see `head_op.py`.
"""

import torch

from .. import native_library
from .head_backend import FusedBackend

native_library.load()
_ops = torch.ops.udon_fast_native


def forward(*, e_t, w_t, e_s, w_s, labels, z_y, dz_y, scale, tau_t, tau_s):
    """Per-row CE_t, CE_s, KL (B,) f32 and stats (B, 4) f32; see head_op.py."""
    return tuple(_ops.head_forward(e_t, w_t, e_s, w_s, labels, z_y, dz_y, scale, tau_t, tau_s))


def backward(*, g_ce_t, g_ce_s, g_kl, e_t, w_t, e_s, w_s, labels, stats, z_y, dz_y, scale, tau_t, tau_s):
    """Gradients (d_e_t, d_w_t, d_e_s, d_w_s) in the input dtypes; student ones None for a single head."""
    d_e_t, d_w_t, d_e_s, d_w_s = _ops.head_backward(
        g_ce_t, g_ce_s, g_kl, e_t, w_t, e_s, w_s, labels, stats, z_y, dz_y, scale, tau_t, tau_s
    )
    if e_s is None:
        return d_e_t, d_w_t, None, None
    return d_e_t, d_w_t, d_e_s, d_w_s


def set_tile_classes(classes: int) -> int:
    """Classes per tile (0 = automatic, ~64k (B, K) elements); returns the previous setting."""
    return _ops.set_tile_classes(classes)


BACKEND = FusedBackend("native", forward, backward)
