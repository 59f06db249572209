"""NO_TARGET (-1) labels in every fused backend against `reference`: rows whose target class is not among
the classes given (what a class-parallel slice sees for rows owned elsewhere).  Per-row CE, KL, the four
log-sum-exps and all four gradients, fp32, all margins; the public API keeps rejecting -1."""

import os

import pytest
import torch
from loss_cases import MARGINS, fused_rows, make_inputs, margin_of

import udon_fast
from udon_fast.losses import backends, reference
from udon_fast.losses.margins import NO_TARGET, resolve

FUSED = [
    pytest.param("chunked"),
    pytest.param(
        "native", marks=pytest.mark.skipif(not backends.status()["native"][0], reason="native library not built")
    ),
    pytest.param(
        "triton",
        marks=pytest.mark.skipif(
            os.environ.get("TRITON_INTERPRET") != "1" or not backends.status()["triton"][0],
            reason="triton runs here only with TRITON_INTERPRET=1",
        ),
    ),
]
TAU_T, TAU_S, SCALE = 0.1, 0.07, 16.0


def _labels(batch, classes, pattern, seed=3):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (batch,), generator=gen)
    if pattern == "all":
        labels[:] = NO_TARGET
    elif pattern == "mixed":
        labels[torch.rand(batch, generator=gen) < 0.5] = NO_TARGET
        labels[0] = NO_TARGET
    return labels


def _reference(e_s, e_t, w_s, w_t, labels, margin):
    """Per-row (ce_t, ce_s, kl) and the (B, 4) log-sum-exps, eagerly from `reference`."""
    rows = reference.head_loss_rows(
        e_t=e_t, w_t=w_t, e_s=e_s, w_s=w_s, labels=labels, margin=margin, scale=SCALE, tau_t=TAU_T, tau_s=TAU_S
    )
    cos_t = reference.cosine_logits(e_t, w_t)
    cos_s = reference.cosine_logits(e_s, w_s)
    stats = torch.stack(
        [
            torch.logsumexp(reference.margin_logits(cos_t, labels, margin, SCALE), dim=1),
            torch.logsumexp(reference.margin_logits(cos_s, labels, margin, SCALE), dim=1),
            torch.logsumexp(cos_t / TAU_T, dim=1),
            torch.logsumexp(cos_s / TAU_S, dim=1),
        ],
        dim=1,
    )
    return rows, stats


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("margin_type,options", MARGINS)
@pytest.mark.parametrize(
    "batch,classes,pattern", [(1, 1, "all"), (7, 300, "mixed"), (24, 1000, "mixed"), (33, 5, "all")]
)
def test_no_target_rows_match_reference(backend, margin_type, options, batch, classes, pattern):
    e_s, e_t, w_s, w_t, _ = make_inputs(batch, classes, 48, 96)
    labels = _labels(batch, classes, pattern)
    margin = margin_of(margin_type, options)
    probe = [torch.linspace(0.5, 1.5, batch), torch.linspace(1.2, -0.3, batch), torch.linspace(0.2, 0.9, batch)]
    (ref_rows, ref_stats) = _reference(e_s, e_t, w_s, w_t, labels, margin)
    ref_grads = torch.autograd.grad(sum((r * p).sum() for r, p in zip(ref_rows, probe)), (e_s, e_t, w_s, w_t))
    ce_t, ce_s, kl, stats = fused_rows(
        backend, e_t=e_t, w_t=w_t, e_s=e_s, w_s=w_s, labels=labels, margin=margin, scale=SCALE, tau_t=TAU_T, tau_s=TAU_S
    )
    grads = torch.autograd.grad(sum((r * p).sum() for r, p in zip((ce_t, ce_s, kl), probe)), (e_s, e_t, w_s, w_t))
    for name, got, want in zip(("ce_t", "ce_s", "kl", "stats"), (ce_t, ce_s, kl, stats), (*ref_rows, ref_stats)):
        torch.testing.assert_close(got.detach(), want.detach(), rtol=2e-5, atol=2e-5, msg=lambda m: f"{name}: {m}")
    for name, got, want in zip(("d e_s", "d e_t", "d w_s", "d w_t"), grads, ref_grads):
        scale = want.abs().max().clamp_min(1e-12)
        torch.testing.assert_close(got / scale, want / scale, rtol=2e-5, atol=2e-5, msg=lambda m: f"{name}: {m}")


def test_no_target_row_is_the_log_sum_exp_of_its_logits():
    """The oracle itself: a -1 row's CE is logsumexp(s * cos), and labelled rows are unchanged."""
    e_s, e_t, w_s, w_t, labels = (t.detach() for t in make_inputs(6, 40, 48, 96))
    mixed = labels.clone()
    mixed[::2] = NO_TARGET
    arcface = resolve("arcface", 0.5)
    heads = dict(e_t=e_t, w_t=w_t, e_s=e_s, w_s=w_s, margin=arcface, scale=SCALE, tau_t=TAU_T, tau_s=TAU_S)
    ce_t, _, _ = reference.head_loss_rows(labels=mixed, **heads)
    full, _, _ = reference.head_loss_rows(labels=labels, **heads)
    lse = torch.logsumexp(SCALE * reference.cosine_logits(e_t, w_t), dim=1)
    torch.testing.assert_close(ce_t[::2], lse[::2])
    torch.testing.assert_close(ce_t[1::2], full[1::2])


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_public_api_still_rejects_no_target_labels(backend):
    e_s, e_t, w_s, w_t, labels = make_inputs(4, 10, 8, 16)
    labels[1] = NO_TARGET
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        udon_fast.udon_loss(e_s, e_t, w_s, w_t, labels, backend=backend)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        udon_fast.normalized_softmax_ce(e_t, w_t, labels, backend=backend)
