"""Partial FC (losses/partial_fc.py): the sampled classes, the loss exact on them on every backend, and the
AdamW step of the sampled rows is tested in tests/test_row_adamw.py."""

import math

import pytest
import torch
from loss_cases import MARGINS, assert_results_close, fused_backends, make_inputs, run, run_loss

import udon_fast
from udon_fast.losses.margins import NO_TARGET
from udon_fast.losses.partial_fc import SampledRows, sample_classes, sample_size


@pytest.mark.parametrize(
    "classes,batch,rate", [(1000, 64, 0.1), (1000, 64, 0.01), (37, 5, 0.5), (3, 8, 0.1), (1, 1, 1.0)]
)
def test_sample_keeps_every_positive_and_has_a_fixed_size(classes, batch, rate):
    labels = torch.randint(0, classes, (batch,))
    index, sampled = sample_classes(labels, classes, rate)
    assert index.shape == (sample_size(classes, batch, rate),) == (min(classes, max(math.ceil(rate * classes), batch)),)
    assert torch.equal(index, index.unique())  # ascending, no repeats
    assert torch.equal(index[sampled], labels)


def test_sample_is_seeded_and_uniform_over_the_negatives():
    labels = torch.tensor([3, 3, 17])
    torch.manual_seed(5)
    first = sample_classes(labels, 50, 0.2)[0]
    torch.manual_seed(5)
    assert torch.equal(sample_classes(labels, 50, 0.2)[0], first)
    counts = torch.zeros(50)
    for _ in range(2000):
        counts[sample_classes(labels, 50, 0.2)[0]] += 1
    assert counts[3] == counts[17] == 2000
    negatives = counts[[c for c in range(50) if c not in (3, 17)]]
    # each negative: 8 of 48 per draw, 333 expected (binomial std 16.7); a bias of 10% would fail
    assert negatives.sum() == 2000 * 8
    assert (negatives - 2000 * 8 / 48).abs().max() < 5 * 16.7


def test_sample_of_a_slice_keeps_its_own_positives_and_marks_the_others():
    labels = torch.tensor([0, 12, 15, 29, 40])
    index, sampled = sample_classes(labels, 20, 0.1, start=10)  # the slice holds classes 10..29
    assert index.shape == (5,)
    assert torch.equal(sampled == NO_TARGET, torch.tensor([True, False, False, False, True]))
    assert torch.equal(index[sampled[1:4]] + 10, labels[1:4])


BACKENDS = [pytest.param("reference"), *fused_backends()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("margin_type,options", MARGINS)
@pytest.mark.parametrize(
    "batch,classes,d_s,d_t,rate", [(1, 7, 5, 9, 0.3), (13, 301, 16, 33, 0.1), (8, 1000, 64, 256, 0.01)]
)
def test_loss_is_exact_on_the_sample(backend, margin_type, options, batch, classes, d_s, d_t, rate):
    """udon_loss on the sampled rows with the renumbered labels against the reference that materialises
    the logits of the same rows (forward and the gradients of the embeddings and of the sampled rows),
    and the full weight's gradient through the sample: the rows' gradient at their classes, 0 elsewhere."""
    if backend == "triton" and classes > 301:
        pytest.skip("the interpreter runs the small shapes")
    e_s, e_t, w_s, w_t, labels = make_inputs(batch, classes, d_s, d_t)
    index, sampled = sample_classes(labels, classes, rate)
    rows = [SampledRows.take(w, index).rows for w in (w_s, w_t)]
    inputs = (e_s, e_t, *rows, sampled)
    kwargs = dict(margin_type=margin_type, **options)
    got = run(backend, inputs, **kwargs)
    assert_results_close(got, run("reference", inputs, **kwargs), 2e-4, 2e-5)
    full = run("reference", (e_s, e_t, w_s, w_t, labels), **kwargs)
    if index.numel() == classes:  # nothing left out: the ordinary loss
        assert_results_close(got, full, 2e-4, 2e-5)

    def through_index(e_s, e_t, w_s, w_t, labels):
        return udon_fast.udon_loss(e_s, e_t, w_s[index], w_t[index], sampled, backend="reference", **kwargs)

    _, dense = run_loss(through_index, (e_s, e_t, w_s, w_t, labels))
    outside = torch.ones(classes, dtype=torch.bool)
    outside[index] = False
    for grad_rows, grad_full in zip(got[1][2:], dense[2:]):
        assert not grad_full[outside].any()
        scale = grad_full.abs().max().clamp_min(1e-12)
        torch.testing.assert_close(grad_rows / scale, grad_full[index] / scale, rtol=2e-4, atol=2e-5)
