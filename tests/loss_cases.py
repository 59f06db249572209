"""Random UDON head-loss inputs and the comparison of a backend against `reference`."""

import os

import pytest
import torch

import udon_fast
from udon_fast.losses import backends, reference
from udon_fast.losses.margins import ANGLE_EPS, Margin, resolve, target_terms, transform

# (margin_type, its keyword arguments): every margin type of margins.MARGIN_TYPES.  The combined one
# has m1 != 1, m2 and m3 all active.
MARGINS = [
    ("normface", {}),
    ("cosface", {"margin": 0.35}),
    ("arcface", {"margin": 0.5}),
    ("combined", {"margins": (1.2, 0.3, 0.15)}),
]
EXTREME = dict(scale=64.0, teacher_temperature=0.02, student_temperature=0.02)


def make_inputs(batch, classes, d_s, d_t, *, seed=0, dtype=torch.float32, device="cpu"):
    """Unit-norm embeddings, raw weights with uneven row norms, int64 labels; all requiring grad."""
    gen = torch.Generator().manual_seed(seed)
    e_s = torch.nn.functional.normalize(torch.randn(batch, d_s, generator=gen), dim=1)
    e_t = torch.nn.functional.normalize(torch.randn(batch, d_t, generator=gen), dim=1)
    row_scale = torch.rand(classes, 1, generator=gen) * 2 + 0.05
    w_s = torch.randn(classes, d_s, generator=gen) * row_scale
    w_t = torch.randn(classes, d_t, generator=gen) * row_scale
    labels = torch.randint(0, classes, (batch,), generator=gen)
    tensors = [t.to(device=device, dtype=dtype).requires_grad_() for t in (e_s, e_t, w_s, w_t)]
    return (*tensors, labels.to(device))


def run(backend, inputs, **kwargs):
    """Forward + backward of `udon_loss` with random output weights; returns (outputs, grads)."""
    return run_loss(lambda *args: udon_fast.udon_loss(*args, backend=backend, **kwargs), inputs)


def run_loss(loss_fn, inputs):
    """Forward + backward of `loss_fn(e_s, e_t, w_s, w_t, labels) -> UDONLossOutput` with fixed
    unequal weights on its five outputs; returns (outputs, grads of the four float inputs)."""
    e_s, e_t, w_s, w_t, labels = inputs
    out = loss_fn(e_s, e_t, w_s, w_t, labels)
    probe = torch.tensor([1.0, 0.7, -0.4, 1.3, 0.9])
    (torch.stack(list(out)) * probe.to(out.total.device)).sum().backward()
    grads = [t.grad.detach().clone() for t in (e_s, e_t, w_s, w_t)]
    for t in (e_s, e_t, w_s, w_t):
        t.grad = None
    return [o.detach() for o in out], grads


def assert_results_close(got, want, rtol, atol):
    """(outputs, grads) pairs from `run`: outputs elementwise, gradients relative to the largest
    reference entry (a gradient's scale varies over orders of magnitude with B, C and the scale)."""
    (out, grads), (ref_out, ref_grads) = got, want
    names = ["total", "teacher_ce", "student_ce", "kl", "similarity"]
    for name, a, b in zip(names, out, ref_out):
        torch.testing.assert_close(a.float().cpu(), b.float().cpu(), rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")
    for name, a, b in zip(["d student_emb", "d teacher_emb", "d student_weight", "d teacher_weight"], grads, ref_grads):
        scale = b.abs().max().clamp_min(1e-12)
        torch.testing.assert_close(
            (a.float() / scale).cpu(), (b.float() / scale).cpu(), rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}"
        )


def assert_matches_reference(backend, batch, classes, d_s, d_t, *, rtol=2e-4, atol=2e-5, **kwargs):
    inputs = make_inputs(batch, classes, d_s, d_t)
    assert_results_close(run(backend, inputs, **kwargs), run("reference", inputs, **kwargs), rtol, atol)


# ---- per-row losses and gradients of the fused ops (the contract of udon_fast/losses/head_op.py) ----


def fused_backends(*, triton: bool = True) -> list:
    """pytest params of the fused backends runnable on CPU tensors here: chunked, native when built,
    triton under TRITON_INTERPRET=1 (its CUDA runs are in the gpu-marked tests)."""
    params = [
        pytest.param("chunked"),
        pytest.param(
            "native", marks=pytest.mark.skipif(not backends.status()["native"][0], reason="native library not built")
        ),
    ]
    if triton:
        params.append(
            pytest.param(
                "triton",
                marks=pytest.mark.skipif(
                    os.environ.get("TRITON_INTERPRET") != "1" or not backends.status()["triton"][0],
                    reason="the triton backend on CPU tensors needs TRITON_INTERPRET=1",
                ),
            )
        )
    return params


def make_head_inputs(labels, d_s, d_t, classes, *, seed=0, dtype=torch.float32, device="cpu"):
    """`make_inputs` with the given labels ((B,) int64): unit-norm embeddings, raw weights with uneven
    row norms; the four float tensors require grad."""
    labels = torch.as_tensor(labels, dtype=torch.int64)
    e_s, e_t, w_s, w_t, _ = make_inputs(len(labels), classes, d_s, d_t, seed=seed, dtype=dtype, device=device)
    return e_s, e_t, w_s, w_t, labels.to(device)


def upstream_grads(batch, *, seed=1, device="cpu"):
    """Three different, non-uniform (B,) f32 upstream gradients for (CE_t, CE_s, KL): signed, one row 0,
    none equal to another row's, so a kernel that mixes rows or terms up gets a different answer."""
    gen = torch.Generator().manual_seed(seed)
    g_ce_t = torch.randn(batch, generator=gen)
    g_ce_s = torch.rand(batch, generator=gen) * 2 - 0.5
    g_kl = torch.linspace(-0.7, 1.9, batch)[torch.randperm(batch, generator=gen)]
    g_ce_s[batch // 2] = 0.0
    return tuple(g.to(device) for g in (g_ce_t, g_ce_s, g_kl))


def margin_of(margin_type: str, options: dict) -> Margin:
    """The Margin of one MARGINS entry."""
    return resolve(margin_type, **options)


def fused_rows(backend, *, e_t, w_t, e_s, w_s, labels, margin: Margin, scale, tau_t, tau_s):
    """A fused backend's registered op on the target terms of `margin` (as `udon_loss` calls it):
    (ce_t, ce_s, kl, stats)."""
    heads = [(e_t, w_t)] if e_s is None else [(e_t, w_t), (e_s, w_s)]
    z_y, dz_y = target_terms(margin, scale, labels, heads)
    return backends.fused_op(backend)(
        e_t=e_t,
        w_t=w_t,
        e_s=e_s,
        w_s=w_s,
        labels=labels,
        z_y=z_y,
        dz_y=dz_y,
        scale=float(scale),
        tau_t=float(tau_t),
        tau_s=float(tau_s),
    )


def head_rows_and_grads(backend, inputs, upstream, *, margin, scale, tau_t=0.1, tau_s=0.1, single_head=False):
    """Per-row (CE_t, CE_s, KL) and the gradients of sum_b g_ce_t*CE_t + g_ce_s*CE_s + g_kl*KL.

    backend "reference": torch.autograd through `reference.head_loss_rows`; a fused backend: its
    registered op `backends.fused_op(name)` on `margins.target_terms`, whose backward receives
    `upstream` row by row.  inputs as `make_inputs`; margin a `margins.Margin`; upstream: three (B,)
    f32.  Returns ([3 x (B,) f32], [d_e_t, d_w_t] or [d_e_t, d_w_t, d_e_s, d_w_s]).
    """
    e_s, e_t, w_s, w_t, labels = inputs
    student = (None, None) if single_head else (e_s, w_s)
    args = dict(
        e_t=e_t,
        w_t=w_t,
        e_s=student[0],
        w_s=student[1],
        labels=labels,
        margin=margin,
        scale=float(scale),
        tau_t=float(tau_t),
        tau_s=float(tau_s),
    )
    if backend == "reference":
        rows = reference.head_loss_rows(**args)
    else:
        rows = fused_rows(backend, **args)[:3]
    leaves = (e_t, w_t) if single_head else (e_t, w_t, e_s, w_s)
    terms = 1 if single_head else 3
    grads = torch.autograd.grad(rows[:terms], leaves, grad_outputs=upstream[:terms])
    return [r.detach() for r in rows], list(grads)


def assert_rows_and_grads_close(got, want, *, rtol=2e-4, atol=2e-5):
    """`head_rows_and_grads` results: rows elementwise; each gradient relative to its largest reference entry."""
    (rows, grads), (ref_rows, ref_grads) = got, want
    for name, a, b in zip(["CE_t", "CE_s", "KL"], rows, ref_rows):
        assert torch.isfinite(a).all(), f"{name} rows are not finite"
        torch.testing.assert_close(
            a.float().cpu(), b.float().cpu(), rtol=rtol, atol=atol, msg=lambda m: f"{name} rows: {m}"
        )
    for name, a, b in zip(["d e_t", "d w_t", "d e_s", "d w_s"], grads, ref_grads):
        assert a.shape == b.shape and torch.isfinite(a).all(), (
            f"{name}: {tuple(a.shape)}, finite {torch.isfinite(a).all()}"
        )
        scale = b.float().abs().max().clamp_min(1e-12)
        torch.testing.assert_close(
            (a.float() / scale).cpu(), (b.float() / scale).cpu(), rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}"
        )


# ---- bf16 / fp16 inputs: error bounds against the fp32 reference ----------------------------------

UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}  # u: |fl(x) - x| <= u |x|
FP32_ROUNDOFF = 2.0**-24
# Triton's backward rounds dL/dcos to bf16 for bf16 inputs and to tf32 (11 significant bits) for fp16.
TRITON_GRAD_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def rounded_inputs(inputs, dtype):
    """(low-precision leaves, fp32 leaves holding the same rounded values), labels shared."""
    *tensors, labels = inputs
    low = [t.detach().to(dtype).requires_grad_() for t in tensors]
    return (*low, labels), (*[t.detach().float().requires_grad_() for t in low], labels)


def row_error_bounds(inputs, dtype, *, margin, scale, tau_t, tau_s):
    """Per-row bounds (3 x (B,) f32) on |row(fl(x)) - row(x)| for CE_t, CE_s and KL, where x are the
    fp32 `inputs` (unit-norm embeddings) and fl rounds them to `dtype` (unit roundoff u).

    Cosines.  |fl(e) - e| <= u |e| = u and |fl(w) - w| <= u |w|, so the normalised weight row moves by
    at most 2u (|a/|a| - b/|b|| <= 2 |a - b| / |b|) and every cosine cos = e . w / |w| by at most
    delta = 3u, plus the fp32 evaluation of both sides, 2 (D + 4) 2^-24.
    CE = lse(z) - z_y with z_c = s cos_c off target and z_y = f(cos_y) (the margin).  lse is
    1-Lipschitz in the max norm, so |dCE| <= max(s, L_y) delta + L_y delta, where L_y = sup |f'| on
    [cos_y - delta, cos_y + delta] (s for normface and cosface; for the angular margins the sup of
    |f'| over the endpoints and the centre, as |f'| is monotone over so short an interval).
    KL(p || q), p = softmax(a), q = softmax(b), a = cos_t / tau_t, b = cos_s / tau_s moved by at most
    alpha = delta_t / tau_t and beta = delta_s / tau_s: each log p_c moves by <= 2 alpha, each log q_c
    by <= 2 beta, and sum_c |p'_c - p_c| <= exp(2 alpha) - 1, so
        |dKL| <= sum p' |d log p - d log q| + |sum (p' - p)(log p - log q)|
              <= 2 (alpha + beta) + (exp(2 alpha) - 1) R / 2,
    R = max_c (a_c - b_c) - min_c (a_c - b_c): the range of the logit difference, per row.
    A 1e-4 (1 + |row|) slack covers the fp32 log-sum-exp of both sides.
    """
    u = UNIT_ROUNDOFF[dtype]
    *tensors, labels = inputs
    e_s, e_t, w_s, w_t = (t.detach().float() for t in tensors)
    delta_t = 3 * u + 2 * (e_t.shape[1] + 4) * FP32_ROUNDOFF
    delta_s = 3 * u + 2 * (e_s.shape[1] + 4) * FP32_ROUNDOFF
    cos_t, cos_s = reference.cosine_logits(e_t, w_t), reference.cosine_logits(e_s, w_s)
    rows = reference.head_loss_rows(
        e_t=e_t, w_t=w_t, e_s=e_s, w_s=w_s, labels=labels, margin=margin, scale=scale, tau_t=tau_t, tau_s=tau_s
    )

    def ce_bound(cos, delta):
        cos_y = cos.gather(1, labels[:, None])[:, 0]
        ends = [(cos_y + shift).clamp(-1 + ANGLE_EPS, 1 - ANGLE_EPS) for shift in (-delta, 0.0, delta)]
        lipschitz = torch.stack([scale * transform(margin, c)[1].abs() for c in ends]).amax(dim=0)
        return (torch.clamp(lipschitz, min=scale) + lipschitz) * delta

    alpha, beta = delta_t / tau_t, delta_s / tau_s
    diff = cos_t / tau_t - cos_s / tau_s
    spread = diff.amax(dim=1) - diff.amin(dim=1)
    kl = 2 * (alpha + beta) + torch.expm1(torch.tensor(2 * alpha)) * spread / 2
    return [
        bound + 1e-4 * (1 + row.abs())
        for bound, row in zip((ce_bound(cos_t, delta_t), ce_bound(cos_s, delta_s), kl), rows)
    ]


def grad_error_bounds(inputs, upstream, ref_grads, *, grad_roundoff, out_roundoff, margin, scale, tau_t, tau_s):
    """Per-element bounds on a backend's (d_e_t, d_w_t, d_e_s, d_w_s) at the rounded point `inputs`
    (fp32 leaves holding bf16/fp16 values) against `ref_grads`, the fp32 reference's there.

    With G = dL/dcos (B, C) of the weighted rows, the gradients are dE = G_n W and
    dW = G_n^T E - (sum_b G cos)_c W_c / |W_c|^2 (G_n = G / |W_c|).  A backend may round G_n to
    `grad_roundoff` before the two products (Triton: bf16 for bf16 inputs, tf32 for fp16 ones; the
    CPU backends keep fp32: pass 0) and rounds each result to the input dtype (`out_roundoff`).
    The fp32 products and the recomputed cosines and softmax add at most
    gamma = (C + B + 4 s max(Dt, Ds) + 64) 2^-24 of the same absolute sums.  Bound:
        (grad_roundoff + gamma) |G_n| |W|  (resp. |G_n|^T |E| + |G cos|^T |W| / |W|^2)
        + out_roundoff |reference| + 1e-7 max |reference|.
    """
    *tensors, labels = inputs
    e_s, e_t, w_s, w_t = (t.detach().float() for t in tensors)
    cos_t = reference.cosine_logits(e_t, w_t).requires_grad_()
    cos_s = reference.cosine_logits(e_s, w_s).requires_grad_()
    rows = (
        reference.softmax_ce_rows(cos_t, labels, margin, scale),
        reference.softmax_ce_rows(cos_s, labels, margin, scale),
        reference.kl_rows(cos_t, cos_s, tau_t, tau_s),
    )
    g_t, g_s = torch.autograd.grad(rows, (cos_t, cos_s), grad_outputs=upstream)
    gamma = (w_t.shape[0] + e_t.shape[0] + 4 * scale * max(e_t.shape[1], e_s.shape[1]) + 64) * FP32_ROUNDOFF
    bounds = []
    for g, cos, e, w in ((g_t, cos_t, e_t, w_t), (g_s, cos_s, e_s, w_s)):
        norm = w.norm(dim=1)
        g_n = (g / norm).abs()
        cos_term = (g * cos.detach()).abs().sum(dim=0) / norm**2
        bounds.append((grad_roundoff + gamma) * (g_n @ w.abs()))
        bounds.append((grad_roundoff + gamma) * (g_n.t() @ e.abs() + cos_term[:, None] * w.abs()))
    return [b + out_roundoff * r.abs() + 1e-7 * r.abs().max() for b, r in zip(bounds, ref_grads)]


def assert_within(name, got, want, bound):
    """|got - want| <= bound elementwise, with the worst offender in the message."""
    err = (got.detach().float().cpu() - want.detach().float().cpu()).abs()
    bound = bound.detach().float().cpu()
    assert torch.isfinite(err).all(), f"{name}: non-finite values"
    ratio = err / bound
    worst = int(ratio.argmax())
    assert ratio.max() <= 1, (
        f"{name}: error {err.flatten()[worst]:.3g} exceeds its bound {bound.flatten()[worst]:.3g} "
        f"at flat index {worst} (max error / bound {ratio.max():.3g})"
    )
    return float(ratio.max())


def assert_low_precision_matches_reference(
    backend, inputs32, dtype, *, margin: Margin, scale=16.0, tau_t=0.1, tau_s=0.07, grad_roundoff=0.0
):
    """`backend` on `inputs32` rounded to `dtype`, through its op with non-uniform row gradients:
    rows against the fp32 reference on the original inputs within `row_error_bounds`, and against
    the fp32 reference on the rounded values to fp32 accuracy (2e-4; every backend computes in fp32
    on the stored values: products of two bf16/fp16 numbers are exact in fp32); gradients in
    `dtype`, within `grad_error_bounds` of the reference at the rounded point.  Returns the largest
    error / bound ratios (rows, gradients)."""
    options = dict(margin=margin, scale=scale, tau_t=tau_t, tau_s=tau_s)
    low, upcast = rounded_inputs(inputs32, dtype)
    upstream = upstream_grads(inputs32[0].shape[0], device=inputs32[0].device)
    rows, grads = head_rows_and_grads(backend, low, upstream, **options)
    exact_rows, _ = head_rows_and_grads("reference", inputs32, upstream, **options)
    upcast_rows, upcast_grads = head_rows_and_grads("reference", upcast, upstream, **options)
    row_ratio = max(
        assert_within(f"{name} rows vs the fp32 inputs' reference", a, b, bound)
        for name, a, b, bound in zip(
            ["CE_t", "CE_s", "KL"], rows, exact_rows, row_error_bounds(inputs32, dtype, **options)
        )
    )
    for name, a, b in zip(["CE_t", "CE_s", "KL"], rows, upcast_rows):
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=2e-4, atol=2e-5, msg=lambda m: f"{name} rows: {m}")
    u = UNIT_ROUNDOFF[dtype]
    bounds = grad_error_bounds(upcast, upstream, upcast_grads, grad_roundoff=grad_roundoff, out_roundoff=u, **options)
    grad_ratio = 0.0
    for name, a, b, bound in zip(["d e_t", "d w_t", "d e_s", "d w_s"], grads, upcast_grads, bounds):
        assert a.dtype == dtype, f"{name} has dtype {a.dtype}, expected the input dtype {dtype}"
        grad_ratio = max(grad_ratio, assert_within(name, a, b, bound))
    return row_ratio, grad_ratio
