"""The AdamW step of sampled rows (udon_fast/optim/row_adamw.py, `adamw_rows`) against torch.optim.AdamW
applied to each row as its own parameter, stepped only when the row is sampled: bit for bit, on both
paths where they serve torch's AdamW (the native kernel for fused groups on CPU, torch ops for the
others).  The torch-op path also serves fused groups on accelerators; on CPU it is checked against the
fused AdamW within rtol 2e-6 (torch.sqrt on CPU and the fused kernel's sqrt instruction differ by an ulp)."""

import pytest
import torch

from udon_fast.losses.partial_fc import SampledRows
from udon_fast.losses.partial_fc import adamw_rows as reexported
from udon_fast.optim import adamw_rows, row_adamw

CLASSES = 29


EXACT = torch.backends.cpu.get_cpu_capability() in ("AVX512", "AVX2")  # where the native kernel mirrors torch's


@pytest.fixture(params=["native", "torch ops"])
def path(request, monkeypatch):
    """Both implementations: the torch-op one forced by turning the native one off."""
    if request.param == "torch ops":
        monkeypatch.setattr(row_adamw, "_native", lambda group, parameter: False)
    return request.param


def _samples(gen, steps=6):
    """Random samples of different sizes (K = 1 included), so the rows' step counts diverge; row 0 is
    never sampled."""
    sizes = [1, 7, 28, 3, 1, 15][:steps]
    return [(torch.randperm(CLASSES - 1, generator=gen)[:k] + 1).sort().values for k in sizes]


def _train(dim, fused, weight_decay=0.05, lr=0.01, maximize=False):
    """The weight stepped by adamw_rows and the per-row reference after the same samples and gradients."""
    gen = torch.Generator().manual_seed(1000 + dim)
    weight = torch.nn.Parameter(torch.randn(CLASSES, dim, generator=gen))
    start = weight.detach().clone()
    options = dict(lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay, fused=fused, maximize=maximize)
    optimizer = torch.optim.AdamW([weight], **options)
    rows = [torch.nn.Parameter(r.clone()) for r in start]
    reference = torch.optim.AdamW(rows, **options)
    for index in _samples(gen):
        grad = torch.randn(len(index), dim, generator=gen)
        sampled = SampledRows.take(weight, index)
        sampled.rows.grad = grad
        optimizer.step()  # skips the weight: it has no gradient
        adamw_rows(optimizer, sampled)
        for row in rows:
            row.grad = None
        for position, cls in enumerate(index.tolist()):
            rows[cls].grad = grad[position].clone()
        reference.step()
    return start, weight, optimizer.state[weight], rows, reference


def _reference_state(rows, reference, dim):
    zeros = torch.zeros(dim)
    state = [reference.state.get(r) or {"step": torch.tensor(0.0), "exp_avg": zeros, "exp_avg_sq": zeros} for r in rows]
    return (
        torch.stack([r.detach() for r in rows]),
        torch.stack([s["exp_avg"] for s in state]),
        torch.stack([s["exp_avg_sq"] for s in state]),
        torch.stack([s["step"].float() for s in state]),
    )


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dim", [64, 48, 20, 7, 1])
@pytest.mark.parametrize("weight_decay", [0.05, 0.0])
def test_rows_move_as_torch_adamw_moves_each_row(fused, dim, weight_decay, path):
    start, weight, state, rows, reference = _train(dim, fused, weight_decay)
    expected = _reference_state(rows, reference, dim)
    assert torch.equal(state["step"], expected[3])
    assert len(set(state["step"].tolist())) > 2  # the per-row counts diverged
    assert torch.equal(weight[0], start[0]) and not state["exp_avg"][0].any() and state["step"][0] == 0
    _assert_rows(weight, state, expected, exact=not fused or (path == "native" and EXACT))


def _assert_rows(weight, state, expected, exact):
    for got, want in zip((weight.detach(), state["exp_avg"], state["exp_avg_sq"]), expected):
        if exact:
            assert torch.equal(got, want)
        else:
            torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-9)


@pytest.mark.parametrize("fused", [True, False])
def test_lr_as_a_tensor_and_maximize(fused, path):
    _, weight, state, rows, reference = _train(20, fused, lr=torch.tensor(0.01), maximize=True)
    _assert_rows(weight, state, _reference_state(rows, reference, 20), exact=not fused or (path == "native" and EXACT))


@pytest.mark.parametrize("fused", [True, False])
def test_same_sample_every_step_is_adamw_on_the_stacked_rows(fused, path):
    """Rows sampled together every step move exactly as torch.optim.AdamW moves one (K, 64) parameter."""
    gen = torch.Generator().manual_seed(7)
    weight = torch.nn.Parameter(torch.randn(CLASSES, 64, generator=gen))
    index = torch.tensor([1, 4, 9, 28])
    stacked = torch.nn.Parameter(weight.detach()[index].clone())
    options = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05, fused=fused)
    optimizer, reference = torch.optim.AdamW([weight], **options), torch.optim.AdamW([stacked], **options)
    for _ in range(3):
        sampled = SampledRows.take(weight, index)
        sampled.rows.grad = stacked.grad = torch.randn(4, 64, generator=gen)
        adamw_rows(optimizer, sampled)
        reference.step()
    state = {k: v[index] for k, v in optimizer.state[weight].items()}
    expected = (stacked.detach(), reference.state[stacked]["exp_avg"], reference.state[stacked]["exp_avg_sq"])
    _assert_rows(weight[index], state, expected, exact=not fused or (path == "native" and EXACT))


@pytest.mark.parametrize("nonfinite", [False, True])
def test_found_inf_leaves_everything_as_it_was(nonfinite, path):
    """The fused group's found_inf = 1 (the trainer's skipped step): weights, moments and step counts
    unchanged, also when the gradient is not finite; found_inf = 0 steps as without it."""
    gen = torch.Generator().manual_seed(3)
    weight = torch.nn.Parameter(torch.randn(CLASSES, 20, generator=gen))
    optimizer = torch.optim.AdamW([weight], lr=0.1, weight_decay=0.05, fused=True)
    twin = torch.nn.Parameter(weight.detach().clone())
    plain = torch.optim.AdamW([twin], lr=0.1, weight_decay=0.05, fused=True)
    optimizer.found_inf = torch.zeros(())
    for index in _samples(gen, steps=3):
        grad = torch.randn(len(index), 20, generator=gen)
        for parameter, opt in ((weight, optimizer), (twin, plain)):
            sampled = SampledRows.take(parameter, index)
            sampled.rows.grad = grad.clone()
            adamw_rows(opt, sampled)
    assert torch.equal(weight, twin)
    assert all(torch.equal(optimizer.state[weight][k], plain.state[twin][k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    before = {k: v.clone() for k, v in optimizer.state[weight].items()}
    weight_before = weight.detach().clone()
    optimizer.found_inf = torch.ones(())
    sampled = SampledRows.take(weight, torch.arange(CLASSES))
    grad = torch.full((CLASSES, 20), float("inf")) if nonfinite else torch.randn(CLASSES, 20, generator=gen)
    sampled.rows.grad = grad
    adamw_rows(optimizer, sampled)
    assert torch.equal(weight, weight_before)
    assert all(torch.equal(optimizer.state[weight][k], v) for k, v in before.items())


def test_refusals_and_reexport():
    assert reexported is adamw_rows
    weight = torch.nn.Parameter(torch.randn(6, 8))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    weight.grad = torch.randn(6, 8)
    optimizer.step()
    sampled = SampledRows.take(weight, torch.tensor([1]))
    sampled.rows.grad = torch.randn(1, 8)
    with pytest.raises(ValueError, match="stepped whole"):
        adamw_rows(optimizer, sampled)
    other = torch.nn.Parameter(torch.randn(6, 8))
    sampled = SampledRows.take(other, torch.tensor([1]))
    sampled.rows.grad = torch.randn(1, 8)
    with pytest.raises(ValueError, match="amsgrad"):
        adamw_rows(torch.optim.AdamW([other], amsgrad=True), sampled)
    with pytest.raises(ValueError, match="not among"):
        adamw_rows(optimizer, sampled)
    sampled.rows.grad = None
    adamw_rows(optimizer, sampled)  # no gradient: nothing to do
