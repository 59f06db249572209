"""The native (C++/OpenMP) backend: small tiles, determinism, the single-head path, reduced-precision
inputs and torch.compile (its fp32 matrix against `reference` is in test_losses_matrix.py)."""

import pytest
import torch
from loss_cases import MARGINS, assert_matches_reference, make_inputs, margin_of, run

import udon_fast
from udon_fast.losses import backends
from udon_fast.losses.margins import target_terms

pytestmark = pytest.mark.skipif(not backends.status()["native"][0], reason="native library not built")


@pytest.fixture
def tile_classes():
    """Force the classes per tile (many tiles and work groups, ragged vector tails); restores auto."""
    from udon_fast.losses import native_backend

    previous = native_backend.set_tile_classes(0)
    yield native_backend.set_tile_classes
    native_backend.set_tile_classes(previous)


@pytest.mark.parametrize("tile", [1, 5, 8, 64])
@pytest.mark.parametrize("batch", [1, 7])
def test_native_many_small_tiles(tile_classes, tile, batch):
    tile_classes(tile)
    assert_matches_reference("native", batch, 1000, 48, 96, margin_type="arcface", margin=0.5)


@pytest.mark.parametrize("tile", [0, 40])
def test_native_bitwise_deterministic(tile_classes, tile):
    tile_classes(tile)
    inputs = make_inputs(64, 3001, 48, 96)
    first_out, first_grads = run("native", inputs, margin_type="cosface", margin=0.35)
    second_out, second_grads = run("native", inputs, margin_type="cosface", margin=0.35)
    for a, b in zip(first_out + first_grads, second_out + second_grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize("margin_type,options", MARGINS)
def test_native_single_head(margin_type, options):
    _, e_t, _, w_t, labels = make_inputs(7, 1000, 48, 96)
    results = {}
    for backend in ("reference", "native"):
        loss = udon_fast.normalized_softmax_ce(e_t, w_t, labels, margin_type=margin_type, **options, backend=backend)
        loss.backward()
        results[backend] = (loss.detach(), e_t.grad.clone(), w_t.grad.clone())
        e_t.grad = w_t.grad = None
    for a, b in zip(results["native"], results["reference"]):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-6)


def test_native_single_head_stats():
    from udon_fast.losses import native_backend

    _, e_t, _, w_t, labels = make_inputs(7, 100, 48, 96)
    z_y, dz_y = target_terms(margin_of("normface", {}), 16.0, labels, [(e_t, w_t)])
    ce_t, ce_s, kl, stats = native_backend.forward(
        e_t=e_t.detach(),
        w_t=w_t.detach(),
        e_s=None,
        w_s=None,
        labels=labels,
        z_y=z_y,
        dz_y=dz_y,
        scale=16.0,
        tau_t=0.1,
        tau_s=0.1,
    )
    assert stats.shape == (7, 4) and torch.isinf(stats[:, 1:]).all() and (stats[:, 1:] < 0).all()
    assert not ce_s.any() and not kl.any()
    grads = torch.ops.udon_fast_native.head_backward(
        torch.ones(7),
        torch.zeros(7),
        torch.zeros(7),
        e_t.detach(),
        w_t.detach(),
        None,
        None,
        labels,
        stats,
        z_y,
        dz_y,
        16.0,
        0.1,
        0.1,
    )
    assert grads[2].shape == (0,) and grads[3].shape == (0,)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_native_reduced_precision_inputs(dtype):
    inputs = make_inputs(7, 1000, 48, 96, dtype=dtype)
    ref_out, ref_grads = run("reference", inputs, margin_type="arcface", margin=0.5)
    out, grads = run("native", inputs, margin_type="arcface", margin=0.5)
    for a, b in zip(out, ref_out):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads[:4], ref_grads):
        assert a.dtype == dtype
        torch.testing.assert_close(
            a.float() / b.float().abs().max(), b.float() / b.float().abs().max(), rtol=2e-2, atol=1e-2
        )


def test_native_torch_compile_fullgraph():
    inputs = make_inputs(7, 1000, 48, 96)

    def loss_fn(e_s, e_t, w_s, w_t, labels):
        return udon_fast.udon_loss(e_s, e_t, w_s, w_t, labels, margin_type="cosface", margin=0.35, backend="native")

    compiled = torch.compile(loss_fn, fullgraph=True)
    eager_out = loss_fn(*inputs)
    eager_out.total.backward()
    eager_grads = [t.grad.clone() for t in inputs[:4]]
    for t in inputs[:4]:
        t.grad = None
    out = compiled(*inputs)
    out.total.backward()
    for a, b in zip(out, eager_out):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)
    for t, b in zip(inputs[:4], eager_grads):
        torch.testing.assert_close(t.grad, b, rtol=1e-5, atol=1e-6)
