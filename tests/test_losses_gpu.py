"""The triton backend on CUDA: the full matrix of test_losses_matrix.py in fp32 against `reference`,
bf16/fp16 inputs against the fp32 reference within bounds derived from their unit roundoff, single
head, determinism, and the UnED-sized head (B = 128, C = 224,408) without a (B, C) allocation.
Skipped without CUDA."""

import pytest
import torch
from loss_cases import (
    EXTREME,
    MARGINS,
    TRITON_GRAD_ROUNDOFF,
    assert_low_precision_matches_reference,
    assert_results_close,
    make_inputs,
    margin_of,
    run,
)

import udon_fast
from udon_fast.losses.margins import target_terms

pytest.importorskip("triton", reason="triton is not installed")
from udon_fast.losses import reference, triton_backend  # noqa: E402

pytestmark = pytest.mark.gpu

MET_CLASSES = 224408


@pytest.mark.parametrize("margin_type,options", MARGINS)
@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("classes", [1, 3, 1000, 3001])
@pytest.mark.parametrize("d_s,d_t", [(64, 256), (48, 96)])
def test_triton_cuda_fp32_matches_reference(margin_type, options, batch, classes, d_s, d_t):
    inputs = make_inputs(batch, classes, d_s, d_t, device="cuda")
    kwargs = dict(margin_type=margin_type, **options)
    assert_results_close(run("triton", inputs, **kwargs), run("reference", inputs, **kwargs), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("margin_type,options", MARGINS)
def test_triton_cuda_extreme_scale_and_temperature(margin_type, options):
    inputs = make_inputs(64, 3001, 48, 96, device="cuda")
    kwargs = dict(margin_type=margin_type, **options, **EXTREME)
    assert_results_close(run("triton", inputs, **kwargs), run("reference", inputs, **kwargs), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("margin_type,options", MARGINS)
@pytest.mark.parametrize("batch,classes,d_s,d_t", [(7, 1000, 48, 96), (64, 3001, 64, 256), (130, 30001, 64, 256)])
def test_triton_cuda_low_precision_matches_fp32_reference(dtype, margin_type, options, batch, classes, d_s, d_t):
    """bf16/fp16 inputs against the fp32 reference, per row and per gradient element, through the op
    with non-uniform row gradients (`loss_cases.assert_low_precision_matches_reference`).

    Rows against the reference on the unrounded fp32 inputs x, bound derived from the unit
    roundoff u of the dtype (bf16 2^-8, fp16 2^-11) and the logit range: rounding moves a unit
    embedding by <= u and a normalised weight row by <= 2u, so every cosine by delta <= 3u (plus
    fp32 evaluation); CE = lse(z) - z_y is 1-Lipschitz in the logits, so |dCE| <= (max(s, L_y) +
    L_y) delta with L_y = sup |dz_y/dcos_y| near cos_y (s without margin); KL moves by
    <= 2 (alpha + beta) + (exp(2 alpha) - 1) R / 2 with alpha = delta_t / tau_t, beta = delta_s / tau_s
    and R the row's range of cos_t / tau_t - cos_s / tau_s (`loss_cases.row_error_bounds`).
    Rows against the reference on the rounded values, to fp32 accuracy (2e-4): products of two
    bf16/fp16 numbers are exact in fp32 and the kernels accumulate in fp32.
    Gradients against the reference at the rounded point: the kernels round dL/dcos to bf16 (bf16
    inputs) or tf32 (fp16 inputs) before the dE and dW products and the result to the input dtype,
    so each element is within (u_G + gamma) |dL/dcos| |W| (resp. |E|) + u |reference|
    (`loss_cases.grad_error_bounds`).  The same bounds hold for chunked and native on CPU
    (test_losses_low_precision.py), which checks their logic there.
    """
    inputs = make_inputs(batch, classes, d_s, d_t, device="cuda")
    assert_low_precision_matches_reference(
        "triton", inputs, dtype, margin=margin_of(margin_type, options), grad_roundoff=TRITON_GRAD_ROUNDOFF[dtype]
    )


@pytest.mark.parametrize("margin_type,options", MARGINS)
def test_triton_cuda_single_head(margin_type, options):
    _, emb, _, weight, labels = make_inputs(64, 3001, 48, 96, device="cuda")
    results = []
    for backend in ("reference", "triton"):
        loss = udon_fast.normalized_softmax_ce(emb, weight, labels, margin_type=margin_type, **options, backend=backend)
        results.append(([loss.detach()], list(torch.autograd.grad(loss, (emb, weight)))))
    assert_results_close(results[1], results[0], rtol=2e-4, atol=2e-5)


def test_triton_cuda_met_head_never_allocates_batch_by_classes():
    """B = 128, C = 224,408 in bf16: the backend's extra peak memory over forward + backward, beyond
    the gradients it returns, stays below a quarter of one fp32 (B, C) tensor; rows match the fp32
    reference.  (Measured on the op itself: the API's input validation has its own temporaries.)"""
    batch = 128
    inputs = make_inputs(batch, MET_CLASSES, 64, 256, dtype=torch.bfloat16, device="cuda")
    e_s, e_t, w_s, w_t, labels = (t.detach() for t in inputs)
    normface = margin_of("normface", {})
    z_y, dz_y = target_terms(normface, 16.0, labels, [(e_t, w_t), (e_s, w_s)])
    args = dict(e_t=e_t, w_t=w_t, e_s=e_s, w_s=w_s, labels=labels, z_y=z_y, dz_y=dz_y, scale=16.0, tau_t=0.1, tau_s=0.1)
    rows = torch.full((batch,), 1.0 / batch, device="cuda")

    def step():
        ce_t, ce_s, kl, stats = triton_backend.forward(**args)
        grads = triton_backend.backward(g_ce_t=rows, g_ce_s=rows, g_kl=rows, stats=stats, **args)
        return (ce_t, ce_s, kl), grads

    step()  # compile outside the measurement
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    head_rows, grads = step()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base - sum(g.numel() * g.element_size() for g in grads)
    assert extra < batch * MET_CLASSES * 4 // 4, f"extra peak {extra / 2**20:.1f} MiB"
    ref_rows = reference.head_loss_rows(
        e_t=e_t.float(),
        w_t=w_t.float(),
        e_s=e_s.float(),
        w_s=w_s.float(),
        labels=labels,
        margin=normface,
        scale=16.0,
        tau_t=0.1,
        tau_s=0.1,
    )
    for got, want in zip(head_rows, ref_rows):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


def test_triton_cuda_backward_is_deterministic():
    e_s, e_t, w_s, w_t, labels = (t.detach() for t in make_inputs(128, 30001, 64, 256, device="cuda"))
    terms = target_terms(margin_of("arcface", {"margin": 0.5}), 16.0, labels, [(e_t, w_t), (e_s, w_s)])
    args = dict(
        e_t=e_t, w_t=w_t, e_s=e_s, w_s=w_s, labels=labels, z_y=terms[0], dz_y=terms[1], scale=16.0, tau_t=0.1, tau_s=0.1
    )
    *_, stats = triton_backend.forward(**args)
    rows = torch.linspace(0.5, 1.5, 128, device="cuda")
    first, second = [
        triton_backend.backward(g_ce_t=rows, g_ce_s=rows.flip(0), g_kl=rows * 0.3, stats=stats, **args)
        for _ in range(2)
    ]
    for a, b in zip(first, second):
        assert torch.equal(a, b)
