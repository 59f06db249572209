"""Registers a backend's fused head-loss forward/backward pair as `torch.library` custom ops.

Every fused backend (chunked, triton, native) implements the same two functions, keyword-only,
declared as `head_backend.HeadForward` / `HeadBackward` and exposed as the module's `BACKEND`:

forward(*, e_t, w_t, e_s, w_s, labels, z_y, dz_y, scale, tau_t, tau_s)
    -> ce_t (B,) f32, ce_s (B,) f32, kl (B,) f32, stats (B, 4) f32
backward(*, g_ce_t, g_ce_s, g_kl, e_t, w_t, e_s, w_s, labels, stats, z_y, dz_y, scale, tau_t, tau_s)
    -> d_e_t (B, Dt), d_w_t (C, Dt), d_e_s (B, Ds), d_w_s (C, Ds)   (dtypes of the inputs)

e_t (B, Dt), w_t (C, Dt) teacher; e_s (B, Ds), w_s (C, Ds) student, or both None for a single head
(then ce_s = kl = 0 and the student gradients are empty (0,) tensors); labels (B,) int64 in [0, C),
or `margins.NO_TARGET` (-1) for a row whose target is not among these C classes (the class-parallel
loss passes slices of the classes): its logits are all s * cos and its ce rows are the log-sum-exps
(z_y = 0).  The backends do not range-check labels beyond that; the public API does.
z_y, dz_y (B, H) f32, H = 2 (columns `layout.Head`) or 1 (single head): each row's margin-transformed
target logit and its derivative in the target cosine, from `margins.target_terms` (0 in NO_TARGET
rows).  The backends never see the margin itself: CE = lse(z) - z_y with z_y in place of the
target's s * cos, and dCE/dcos_y = (softmax_y - 1) * dz_y.  z_y and dz_y get no gradient.
stats columns (`layout.Stat`): log-sum-exp of the teacher CE logits, the student CE logits,
cos_t / tau_t and cos_s / tau_s.  Gradients follow docs/method.md: CE_t reaches (e_t, w_t); CE_s and KL reach
(e_s, w_s); the teacher side of KL is detached.

Registration gives each backend fake (meta) implementations and autograd, so `torch.compile`
traces through `udon_loss` without graph breaks.  The ops keep positional schemas; callers reach
them through the keyword-only function `register_head_backend` returns.  How the backends work: docs/kernels.md.
"""

import torch

from .head_backend import HeadBackend, HeadForward, check_backend
from .layout import Stat


def _fake_forward(e_t, w_t, e_s, w_s, labels, z_y, dz_y, scale, tau_t, tau_s):
    rows = e_t.new_empty((e_t.shape[0],), dtype=torch.float32)
    return (
        rows,
        torch.empty_like(rows),
        torch.empty_like(rows),
        e_t.new_empty((e_t.shape[0], len(Stat)), dtype=torch.float32),
    )


def _fake_backward(g_ce_t, g_ce_s, g_kl, e_t, w_t, e_s, w_s, labels, stats, z_y, dz_y, scale, tau_t, tau_s):
    if e_s is None:
        return torch.empty_like(e_t), torch.empty_like(w_t), e_t.new_empty((0,)), w_t.new_empty((0,))
    return torch.empty_like(e_t), torch.empty_like(w_t), torch.empty_like(e_s), torch.empty_like(w_s)


def register_head_backend(backend: HeadBackend) -> HeadForward:
    """Define `udon_fast::head_loss_<name>` (+ `_backward`) from a backend's pair (checked against the
    contract, TypeError if it differs); return the forward op behind a keyword-only function."""
    check_backend(backend)
    name = backend.name

    def forward_op(
        e_t: torch.Tensor,
        w_t: torch.Tensor,
        e_s: torch.Tensor | None,
        w_s: torch.Tensor | None,
        labels: torch.Tensor,
        z_y: torch.Tensor,
        dz_y: torch.Tensor,
        scale: float,
        tau_t: float,
        tau_s: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return backend.forward(
            e_t=e_t, w_t=w_t, e_s=e_s, w_s=w_s, labels=labels, z_y=z_y, dz_y=dz_y, scale=scale, tau_t=tau_t, tau_s=tau_s
        )

    def backward_op(
        g_ce_t: torch.Tensor,
        g_ce_s: torch.Tensor,
        g_kl: torch.Tensor,
        e_t: torch.Tensor,
        w_t: torch.Tensor,
        e_s: torch.Tensor | None,
        w_s: torch.Tensor | None,
        labels: torch.Tensor,
        stats: torch.Tensor,
        z_y: torch.Tensor,
        dz_y: torch.Tensor,
        scale: float,
        tau_t: float,
        tau_s: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        d_e_t, d_w_t, d_e_s, d_w_s = backend.backward(
            g_ce_t=g_ce_t,
            g_ce_s=g_ce_s,
            g_kl=g_kl,
            e_t=e_t,
            w_t=w_t,
            e_s=e_s,
            w_s=w_s,
            labels=labels,
            stats=stats,
            z_y=z_y,
            dz_y=dz_y,
            scale=scale,
            tau_t=tau_t,
            tau_s=tau_s,
        )
        if e_s is None:
            d_e_s, d_w_s = e_t.new_empty((0,)), w_t.new_empty((0,))
        return d_e_t, d_w_t, d_e_s, d_w_s

    fwd = torch.library.custom_op(f"udon_fast::head_loss_{name}", forward_op, mutates_args=())
    bwd = torch.library.custom_op(f"udon_fast::head_loss_{name}_backward", backward_op, mutates_args=())
    fwd.register_fake(_fake_forward)
    bwd.register_fake(_fake_backward)

    def setup_context(ctx, inputs, output):
        e_t, w_t, e_s, w_s, labels, z_y, dz_y, scale, tau_t, tau_s = inputs
        ctx.save_for_backward(e_t, w_t, e_s, w_s, labels, output[3], z_y, dz_y)
        ctx.params = (scale, tau_t, tau_s)

    def backward_rule(ctx, g_ce_t, g_ce_s, g_kl, _g_stats):
        e_t, w_t, e_s, w_s, labels, stats, z_y, dz_y = ctx.saved_tensors
        rows = torch.zeros_like(stats[:, Stat.LSE_ZT])
        grads = [rows if g is None else g.float().contiguous() for g in (g_ce_t, g_ce_s, g_kl)]
        d_e_t, d_w_t, d_e_s, d_w_s = bwd(*grads, e_t, w_t, e_s, w_s, labels, stats, z_y, dz_y, *ctx.params)
        if e_s is None:
            d_e_s = d_w_s = None
        return d_e_t, d_w_t, d_e_s, d_w_s, None, None, None, None, None, None

    fwd.register_autograd(backward_rule, setup_context=setup_context)

    def head_loss(*, e_t, w_t, e_s, w_s, labels, z_y, dz_y, scale, tau_t, tau_s):
        return fwd(e_t, w_t, e_s, w_s, labels, z_y, dz_y, scale, tau_t, tau_s)

    return head_loss
