"""The triton backend against `reference` in fp32 on CPU tensors, under TRITON_INTERPRET=1.

The interpreter is slow (~2-9 s per case here), so instead of the full product
this is a covering design of the same axes as test_losses_matrix.py: every (B, C) pair with B in {1, 7, 64} and C in
{1, 3, 1000, 3001} x the three margins at (Ds, Dt) = (48, 96), plus (64, 256) x margins at the
smallest and largest (B, C); extreme scale / temperatures, the single-head `normalized_softmax_ce`,
many small class tiles and splits, and a bitwise-deterministic backward.  The CUDA runs of the full
product (fp32 and bf16) are in test_losses_gpu.py.
"""

import os

import pytest
import torch
from loss_cases import EXTREME, MARGINS, assert_matches_reference, make_inputs, margin_of

import udon_fast
from udon_fast.losses.margins import target_terms

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "runs the Triton kernels on CPU tensors: set TRITON_INTERPRET=1 (CUDA runs: test_losses_gpu.py)",
        allow_module_level=True,
    )
pytest.importorskip("triton", reason="triton is not installed")

from udon_fast.losses import triton_backend  # noqa: E402  (needs TRITON_INTERPRET checked first)

SHAPES = [(batch, classes, 48, 96) for batch in (1, 7, 64) for classes in (1, 3, 1000, 3001)] + [
    (1, 1, 64, 256),
    (64, 3001, 64, 256),
]


@pytest.mark.parametrize("margin_type,options", MARGINS)
@pytest.mark.parametrize("batch,classes,d_s,d_t", SHAPES)
def test_triton_matches_reference(margin_type, options, batch, classes, d_s, d_t):
    assert_matches_reference("triton", batch, classes, d_s, d_t, margin_type=margin_type, **options)


@pytest.mark.parametrize("margin_type,options", MARGINS)
def test_triton_extreme_scale_and_temperature(margin_type, options):
    assert_matches_reference("triton", 64, 3001, 48, 96, margin_type=margin_type, **options, **EXTREME)


@pytest.mark.parametrize("batch", [1, 7])
def test_triton_many_small_tiles(monkeypatch, batch):
    """Sixteen-class tiles over eight splits: tile masks, split bounds and the split merge."""
    monkeypatch.setattr(triton_backend, "INTERPRETER_BLOCK_C", 16)
    monkeypatch.setattr(triton_backend, "INTERPRETER_PROGRAMS", 8)
    assert_matches_reference("triton", batch, 300, 48, 96, margin_type="arcface", margin=0.5)


@pytest.mark.parametrize("margin_type,options", MARGINS)
@pytest.mark.parametrize("batch,classes", [(1, 1), (7, 1000), (64, 3001)])
def test_triton_single_head_matches_reference(margin_type, options, batch, classes):
    _, emb, _, weight, labels = make_inputs(batch, classes, 48, 96)
    losses, grads = [], []
    for backend in ("reference", "triton"):
        loss = udon_fast.normalized_softmax_ce(emb, weight, labels, margin_type=margin_type, **options, backend=backend)
        losses.append(loss.detach())
        grads.append(torch.autograd.grad(loss, (emb, weight)))
    torch.testing.assert_close(losses[1], losses[0], rtol=2e-4, atol=2e-5)
    for got, want in zip(grads[1], grads[0]):
        scale = want.abs().max().clamp_min(1e-12)
        torch.testing.assert_close(got / scale, want / scale, rtol=2e-4, atol=2e-5)


def test_triton_mixed_dtypes_promote():
    """fp16 embeddings with fp32 weights run in fp32; gradients come back in each input's dtype."""
    e_s, e_t, w_s, w_t, labels = (t.detach() for t in make_inputs(7, 300, 48, 96))
    terms = target_terms(margin_of("cosface", {"margin": 0.35}), 16.0, labels, [(e_t, w_t), (e_s, w_s)])
    args = dict(labels=labels, z_y=terms[0], dz_y=terms[1], scale=16.0, tau_t=0.1, tau_s=0.1)
    rows = torch.linspace(0.5, 1.5, 7)
    got = triton_backend.forward(e_t=e_t.half(), w_t=w_t, e_s=e_s.half(), w_s=w_s, **args)
    want = triton_backend.forward(e_t=e_t.half().float(), w_t=w_t, e_s=e_s.half().float(), w_s=w_s, **args)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    grads = triton_backend.backward(
        g_ce_t=rows, g_ce_s=rows, g_kl=rows, e_t=e_t.half(), w_t=w_t, e_s=e_s.half(), w_s=w_s, stats=got[3], **args
    )
    assert [g.dtype for g in grads] == [torch.float16, torch.float32, torch.float16, torch.float32]


def test_triton_backward_is_deterministic():
    e_s, e_t, w_s, w_t, labels = (t.detach() for t in make_inputs(64, 3001, 48, 96))
    terms = target_terms(margin_of("arcface", {"margin": 0.5}), 64.0, labels, [(e_t, w_t), (e_s, w_s)])
    args = dict(
        e_t=e_t, w_t=w_t, e_s=e_s, w_s=w_s, labels=labels, z_y=terms[0], dz_y=terms[1], scale=64.0, tau_t=0.1, tau_s=0.1
    )
    ce_t, ce_s, kl, stats = triton_backend.forward(**args)
    rows = torch.linspace(0.5, 1.5, 64)
    first, second = [
        triton_backend.backward(g_ce_t=rows, g_ce_s=rows.flip(0), g_kl=rows * 0.3, stats=stats, **args)
        for _ in range(2)
    ]
    for a, b in zip(first, second):
        assert torch.equal(a, b)
