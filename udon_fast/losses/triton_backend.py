"""Triton backend: launches `udon_fast.kernels.triton_head` (see head_op.py for the contract).

forward = forward_kernel (per-split online softmax states over class tiles) + a (splits, B)-sized
torch epilogue merging the splits.  backward = grad_weight_kernel (dW, one program per class tile) +
grad_emb_kernel (per-split dE partials, summed here in a fixed order).  The target logits z_y and
their derivatives dz_y come in (head_op.py's contract), the same tensors in both passes.  Nothing
of size (B, C) is allocated; no atomics, so results are deterministic.  Runs on CUDA tensors, or
on CPU tensors under TRITON_INTERPRET=1 (slow).
"""

import functools
import os

import torch
import triton
import triton.language as tl

from ..kernels import triton_head as kernels
from .head_backend import FusedBackend
from .layout import MAX_FIELDS, SUM_FIELDS, Head, Partial, Stat

PROGRAMS_PER_SM = 2
# Under TRITON_INTERPRET=1 the cost is per interpreted op, not per element: few, large tiles.
INTERPRETER_PROGRAMS = 2
INTERPRETER_BLOCK_C = 1024
NUM_WARPS = 8


def _check_device(t: torch.Tensor) -> None:
    if t.is_cuda:
        return
    if t.device.type != "cpu" or os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"the triton backend needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {t.device}"
        )
    if t.dtype == torch.bfloat16:
        raise TypeError("the Triton interpreter computes bf16 dots wrongly: use fp32 or fp16 CPU tensors")


def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


class _Launch:
    """Inputs as the kernels take them, tile sizes, class splits and shared kernel arguments of one call.

    Heads of mixed float dtypes are promoted to one dtype (a copy; same dtype: no copy).

    BLOCK_B: 16..64 by B; BLOCK_C on CUDA: 128 for D <= 128, else 64, halved for fp32 inputs (keeps
    a W tile <= 32 KiB so the pipelined tiles fit the 227 KiB of shared memory of an H200);
    splits: enough (batch tile, split) programs to fill the GPU (PROGRAMS_PER_SM per SM), each split
    holding >= 1 class tile.  The interpreter uses INTERPRETER_BLOCK_C and INTERPRETER_PROGRAMS.
    """

    def __init__(self, *, e_t, w_t, e_s, w_s, labels, z_y, dz_y):
        for t in (e_t, w_t, labels, z_y, dz_y) + (() if e_s is None else (e_s, w_s)):
            _check_device(t)
        self.batch, self.classes = e_t.shape[0], w_t.shape[0]
        self.d_t = e_t.shape[1]
        self.d_s = self.d_t if e_s is None else e_s.shape[1]
        self.two_heads = e_s is not None
        heads = (e_t, w_t) * 2 if e_s is None else (e_t, w_t, e_s, w_s)  # single head: dummy student
        dtype = functools.reduce(torch.promote_types, [t.dtype for t in heads])
        self.tensors = (*(t.to(dtype).contiguous() for t in heads), labels.contiguous())
        self.z_y, self.dz_y = z_y.float().contiguous(), dz_y.float().contiguous()
        self.block_b = min(64, max(16, triton.next_power_of_2(self.batch)))
        self.block_dt, self.block_ds = _block_d(self.d_t), _block_d(self.d_s)
        if labels.is_cuda:
            self.block_c = (128 if max(self.block_dt, self.block_ds) <= 128 else 64) // (dtype.itemsize // 2)
            programs = PROGRAMS_PER_SM * torch.cuda.get_device_properties(labels.device).multi_processor_count
        else:
            self.block_c, programs = INTERPRETER_BLOCK_C, INTERPRETER_PROGRAMS
        self.row_tiles = triton.cdiv(self.batch, self.block_b)
        self.class_tiles = triton.cdiv(self.classes, self.block_c)
        wanted = min(self.class_tiles, max(1, triton.cdiv(programs, self.row_tiles)))
        self.tiles_per_split = triton.cdiv(self.class_tiles, wanted)
        self.splits = triton.cdiv(self.class_tiles, self.tiles_per_split)
        self.meta = dict(
            TWO_HEADS=self.two_heads,
            HEADS=2 if self.two_heads else 1,
            DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32",
            BLOCK_B=self.block_b,
            BLOCK_C=self.block_c,
            BLOCK_DT=self.block_dt,
            BLOCK_DS=self.block_ds,
        )
        self.num_warps = NUM_WARPS


def forward(*, e_t, w_t, e_s, w_s, labels, z_y, dz_y, scale, tau_t, tau_s):
    """Per-row CE_t, CE_s, KL (B,) f32 and stats (B, 4) f32; see head_op.py."""
    launch = _Launch(e_t=e_t, w_t=w_t, e_s=e_s, w_s=w_s, labels=labels, z_y=z_y, dz_y=dz_y)
    z_y = launch.z_y
    batch = launch.batch
    part = torch.empty(launch.splits, len(Partial), batch, device=e_t.device)
    kernels.forward_kernel[(launch.row_tiles, launch.splits)](
        *launch.tensors,
        z_y,
        part,
        batch,
        launch.classes,
        launch.d_t,
        launch.d_s,
        launch.tiles_per_split,
        scale,
        1.0 / tau_t,
        1.0 / tau_s,
        **launch.meta,
        num_warps=launch.num_warps,
    )
    families = len(Stat) if launch.two_heads else 1
    maxima = part[:, list(MAX_FIELDS[:families])]  # (splits, families, B)
    sums = part[:, list(SUM_FIELDS[:families])]
    top = maxima.amax(dim=0)
    rescale = torch.exp(maxima - top)
    total = (sums * rescale).sum(dim=0)
    lse = top + torch.log(total)  # (families, B), `Stat` order
    ce_t = lse[Stat.LSE_ZT] - z_y[:, Head.TEACHER]
    if not launch.two_heads:
        zeros = torch.zeros_like(ce_t)
        stats = torch.full((batch, len(Stat)), float("-inf"), device=e_t.device)
        stats[:, Stat.LSE_ZT] = lse[Stat.LSE_ZT]
        return ce_t, zeros, zeros.clone(), stats
    kl_mean = (part[:, Partial.KL_NUM] * rescale[:, Stat.LSE_A]).sum(dim=0) / total[Stat.LSE_A]
    kl = kl_mean - lse[Stat.LSE_A] + lse[Stat.LSE_B]
    return ce_t, lse[Stat.LSE_ZS] - z_y[:, Head.STUDENT], kl, lse.t().contiguous()


def backward(*, g_ce_t, g_ce_s, g_kl, e_t, w_t, e_s, w_s, labels, stats, z_y, dz_y, scale, tau_t, tau_s):
    """Gradients of sum_b (g_ce_t*CE_t + g_ce_s*CE_s + g_kl*KL) w.r.t. e_t, w_t, e_s, w_s (input dtypes)."""
    launch = _Launch(e_t=e_t, w_t=w_t, e_s=e_s, w_s=w_s, labels=labels, z_y=z_y, dz_y=dz_y)
    batch, device = launch.batch, e_t.device
    row_grads = [g.float().contiguous() for g in (g_ce_t, g_ce_s, g_kl)]
    common = (*launch.tensors, launch.z_y, launch.dz_y, stats.float().contiguous(), *row_grads)
    shapes = (batch, launch.classes, launch.d_t, launch.d_s)
    scalars = (scale, 1.0 / tau_t, 1.0 / tau_s)
    grad_dtype = tl.bfloat16 if launch.tensors[0].dtype == torch.bfloat16 else tl.float32
    d_w_t = torch.empty_like(launch.tensors[1])
    d_w_s = torch.empty_like(launch.tensors[3]) if launch.two_heads else d_w_t
    kernels.grad_weight_kernel[(launch.class_tiles,)](
        *common, d_w_t, d_w_s, *shapes, *scalars, **launch.meta, GRAD_DTYPE=grad_dtype, num_warps=launch.num_warps
    )
    d_e_t = torch.empty(launch.splits, batch, launch.d_t, device=device)
    d_e_s = torch.empty(launch.splits, batch, launch.d_s, device=device) if launch.two_heads else d_e_t
    kernels.grad_emb_kernel[(launch.row_tiles, launch.splits)](
        *common,
        d_e_t,
        d_e_s,
        *shapes,
        launch.tiles_per_split,
        *scalars,
        **launch.meta,
        GRAD_DTYPE=grad_dtype,
        num_warps=launch.num_warps,
    )
    d_e_t, d_w_t = d_e_t.sum(dim=0).to(e_t.dtype), d_w_t.to(w_t.dtype)
    if not launch.two_heads:
        return d_e_t, d_w_t, None, None
    return d_e_t, d_w_t, d_e_s.sum(dim=0).to(e_s.dtype), d_w_s.to(w_s.dtype)


BACKEND = FusedBackend("triton", forward, backward)
