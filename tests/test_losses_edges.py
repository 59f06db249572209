"""Every fused backend against `reference` at the edges: truly extreme logits, ArcFace's clamp,
labels on tile boundaries, odd embedding widths.

- Scale 128 and temperature 0.005 with embeddings close to their target (cos ~ 0.9) or to another
  class: CE logits reach ~128 and KL logits ~200, beyond fp32 exp's overflow at 88.7, so only a
  max-subtracted (online) log-sum-exp survives.
- Rows with cos_y = +1 and -1 exactly (embedding = +/- the normalised target weight row): the
  angular margins' (arcface, combined) clamp to [-1 + eps, 1 - eps] and its zero-gradient branch run.
- Labels 0 and C - 1 and on both sides of every tile boundary (and Triton's split boundaries),
  with several tiles and a ragged last one; widths D = 13 (student) and 37 (teacher), which are
  not multiples of the native 8-lane vectors or of Triton's power-of-two D blocks.

Non-uniform per-row upstream gradients go through each backend's op (see test_losses_row_grads.py).
"""

import pytest
import torch
import torch.nn.functional as F
from loss_cases import (
    MARGINS,
    assert_rows_and_grads_close,
    fused_backends,
    head_rows_and_grads,
    make_head_inputs,
    margin_of,
    upstream_grads,
)

from udon_fast.losses.margins import transform

EXTREME = dict(scale=128.0, tau_t=0.005, tau_s=0.005)


def _extreme_inputs(batch, classes, d_s, d_t, *, seed=0):
    """Rows [0, B/4): both heads near the target class (cos ~ 0.9); [B/4, B/2): teacher near the
    target, student near the next class (KL ~ 100s); then random rows; the last two rows exactly
    +/- the normalised target weight rows of both heads (cos_y = +1, -1)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (batch,), generator=gen)
    e_s, e_t, w_s, w_t, labels = (t.detach() for t in make_head_inputs(labels, d_s, d_t, classes, seed=seed))
    quarter, half = batch // 4, batch // 2

    def near(w, rows, classes_of_rows):
        direction = F.normalize(w[classes_of_rows], dim=1)
        noise = F.normalize(torch.randn(len(rows), w.shape[1], generator=gen), dim=1)
        return F.normalize(direction + 0.5 * noise, dim=1)

    rows = torch.arange(half)
    e_t[rows] = near(w_t, rows, labels[rows])
    e_s[:quarter] = near(w_s, rows[:quarter], labels[:quarter])
    e_s[quarter:half] = near(w_s, rows[quarter:], (labels[quarter:half] + 1) % classes)
    for row, sign in ((batch - 2, 1.0), (batch - 1, -1.0)):
        e_t[row] = sign * F.normalize(w_t[labels[row]], dim=0)
        e_s[row] = sign * F.normalize(w_s[labels[row]], dim=0)
    return (*(t.requires_grad_() for t in (e_s, e_t, w_s, w_t)), labels)


def _compare(backend, inputs, margin_type, options, *, scale, tau_t, tau_s, rtol=2e-4, atol=2e-5):
    upstream = upstream_grads(inputs[0].shape[0])
    options = dict(margin=margin_of(margin_type, options), scale=scale, tau_t=tau_t, tau_s=tau_s)
    got = head_rows_and_grads(backend, inputs, upstream, **options)
    want = head_rows_and_grads("reference", inputs, upstream, **options)
    assert_rows_and_grads_close(got, want, rtol=rtol, atol=atol)
    return want


@pytest.mark.parametrize("backend", fused_backends())
@pytest.mark.parametrize("margin_type,options", MARGINS)
def test_extreme_logits_and_angular_clamp_match_reference(backend, margin_type, options):
    inputs = _extreme_inputs(16, 2000, 48, 96)
    e_s, e_t, w_s, w_t, labels = (t.detach() for t in inputs)
    cos_y = (e_t * F.normalize(w_t[labels], dim=1)).sum(dim=1)
    assert cos_y[:8].min() > 0.85 and 128 * cos_y[:8].min() > 88.8, "CE logits must overflow a plain fp32 exp"
    assert cos_y[-2] > 1 - 1e-6 and cos_y[-1] < -1 + 1e-6
    if margin_type in ("arcface", "combined"):  # the clamp's zero-gradient branch runs on the last two rows
        assert not transform(margin_of(margin_type, options), cos_y[-2:])[1].any()
    (ce_t, ce_s, kl), _ = _compare(backend, inputs, margin_type, options, **EXTREME)
    assert kl[4:8].min() > 50, "the student disagrees with the teacher: KL logits far apart"


def _boundary_labels(tile: int, classes: int) -> list[int]:
    """0, C - 1 and both sides of every multiple of `tile` below C."""
    edges = [c for k in range(1, (classes - 1) // tile + 1) for c in (k * tile - 1, k * tile)]
    return [0, *edges, classes - 1]


@pytest.fixture
def tiles(monkeypatch, request):
    """configure(backend) cuts the classes into small tiles (several, the last ragged) and returns
    the tile size in classes."""

    def configure(backend):
        if backend == "chunked":
            from udon_fast.losses import chunked

            monkeypatch.setattr(chunked, "TILE_ELEMENTS", 1)  # the 64-class minimum chunk
            return chunked.chunk_size(1, 10**6)
        if backend == "native":
            from udon_fast.losses import native_backend

            previous = native_backend.set_tile_classes(13)  # 8 + a 5-lane tail per tile
            request.addfinalizer(lambda: native_backend.set_tile_classes(previous))
            return 13
        from udon_fast.losses import triton_backend

        monkeypatch.setattr(triton_backend, "INTERPRETER_BLOCK_C", 16)
        monkeypatch.setattr(triton_backend, "INTERPRETER_PROGRAMS", 8)  # splits of 3 tiles: 48-class bounds
        return 16

    return configure


@pytest.mark.parametrize("backend", fused_backends())
@pytest.mark.parametrize("margin_type,options", MARGINS)
def test_labels_on_tile_boundaries_and_odd_widths_match_reference(tiles, backend, margin_type, options):
    classes = 300
    tile = tiles(backend)
    assert classes % tile, "the last tile must be ragged"
    labels = _boundary_labels(tile, classes)
    inputs = make_head_inputs(labels, 13, 37, classes)
    _compare(backend, inputs, margin_type, options, scale=16.0, tau_t=0.1, tau_s=0.07)
