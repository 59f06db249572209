"""Partial FC (losses/partial_fc.py): the sampled classes, the loss exact on them on every backend, and the
AdamW step of the sampled rows: bit for bit torch.optim.AdamW's on those rows, nothing else touched."""
import math

import pytest
import torch

import udon_fast
from loss_cases import MARGINS, assert_results_close, fused_backends, make_inputs, run, run_loss
from udon_fast.losses.margins import NO_TARGET
from udon_fast.losses.partial_fc import SampledRows, adamw_rows, sample_classes, sample_size


@pytest.mark.parametrize("classes,batch,rate", [(1000, 64, 0.1), (1000, 64, 0.01), (37, 5, 0.5), (3, 8, 0.1),
                                                (1, 1, 1.0)])
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
@pytest.mark.parametrize("batch,classes,d_s,d_t,rate", [(1, 7, 5, 9, 0.3), (13, 301, 16, 33, 0.1),
                                                        (8, 1000, 64, 256, 0.01)])
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


def _steps(fused, dim, samples, classes=13, weight_decay=0.05):
    """A (classes, dim) weight trained on `samples` (one index per step) with adamw_rows, and the
    reference: one torch.optim.AdamW over the rows as separate parameters, the unsampled ones without a
    gradient that step (AdamW skips them).  Returns (weight, its optimizer, reference rows, reference optimizer)."""
    gen = torch.Generator().manual_seed(dim)
    weight = torch.nn.Parameter(torch.randn(classes, dim, generator=gen))
    options = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay, fused=fused)
    optimizer = torch.optim.AdamW([weight], **options)
    rows = [torch.nn.Parameter(r.clone()) for r in weight.detach()]
    reference = torch.optim.AdamW(rows, **options)
    for index in samples:
        grad = torch.randn(len(index), dim, generator=gen)
        sampled = SampledRows.take(weight, torch.tensor(index))
        sampled.rows.grad = grad
        optimizer.step()  # skips the weight: it has no gradient
        adamw_rows(optimizer, sampled)
        for row in rows:
            row.grad = None
        for position, cls in enumerate(index):
            rows[cls].grad = grad[position].clone()
        reference.step()
    return weight, optimizer, rows, reference


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dim", [64, 7])
def test_adamw_rows_is_torch_adamw_on_the_sampled_rows_only(fused, dim):
    """Four steps over different samples (class 12 never sampled): every row, its exp_avg, exp_avg_sq and
    step count bit for bit those of torch.optim.AdamW stepping that row only when sampled."""
    samples = [[0, 3, 5], [3, 4, 11], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [5]]
    initial = torch.Generator().manual_seed(dim)
    start = torch.randn(13, dim, generator=initial)
    weight, optimizer, rows, reference = _steps(fused, dim, samples)
    state = optimizer.state[weight]
    for cls, row in enumerate(rows):
        assert torch.equal(weight[cls], row), cls
        ref = reference.state.get(row)
        if not ref:
            assert torch.equal(weight[cls], start[cls]) and state["step"][cls] == 0
            assert not state["exp_avg"][cls].any() and not state["exp_avg_sq"][cls].any()
            continue
        assert state["step"][cls] == ref["step"], cls
        assert torch.equal(state["exp_avg"][cls], ref["exp_avg"]) and torch.equal(state["exp_avg_sq"][cls],
                                                                                   ref["exp_avg_sq"]), cls
    assert torch.equal(state["step"], torch.tensor([2., 1, 1, 3, 2, 3, 1, 1, 1, 1, 1, 2, 0]))


@pytest.mark.parametrize("fused", [True, False])
def test_adamw_rows_matches_adamw_on_the_stacked_rows(fused):
    """The same sample every step: the rows move exactly as torch.optim.AdamW moves one (K, 64) parameter
    made of them (the trainer's widths are multiples of the vector width)."""
    index = [1, 4, 9]
    weight, optimizer, _, _ = _steps(fused, 64, [index] * 3)
    gen = torch.Generator().manual_seed(64)
    stacked = torch.nn.Parameter(torch.randn(13, 64, generator=gen)[index])
    reference = torch.optim.AdamW([stacked], lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05, fused=fused)
    for _ in range(3):
        stacked.grad = torch.randn(3, 64, generator=gen)
        reference.step()
    assert torch.equal(weight[index], stacked)
    assert torch.equal(optimizer.state[weight]["exp_avg"][index], reference.state[stacked]["exp_avg"])


def test_adamw_rows_honours_found_inf():
    weight = torch.nn.Parameter(torch.randn(6, 8))
    optimizer = torch.optim.AdamW([weight], lr=0.1, fused=True)
    optimizer.found_inf = torch.ones(())
    before = weight.detach().clone()
    sampled = SampledRows.take(weight, torch.tensor([1, 2]))
    sampled.rows.grad = torch.randn(2, 8)
    adamw_rows(optimizer, sampled)
    assert torch.equal(weight, before) and not optimizer.state[weight]["step"].any()


def test_a_weight_stepped_whole_is_refused():
    weight = torch.nn.Parameter(torch.randn(6, 8))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    weight.grad = torch.randn(6, 8)
    optimizer.step()
    sampled = SampledRows.take(weight, torch.tensor([1]))
    sampled.rows.grad = torch.randn(1, 8)
    with pytest.raises(ValueError, match="stepped whole"):
        adamw_rows(optimizer, sampled)
