"""Per-row upstream gradients: every fused backend's op against reference autograd.

`udon_loss` averages each term, so through the public API every row gets the same upstream
gradient and a backward that applied one row's gradient to all rows, or swapped the CE_s and KL
gradients, would still pass.  Here three different non-uniform (B,) gradients (signed, one zero)
go straight into each backend's registered op (`backends.fused_op`), two heads and one, and all
gradients are compared with torch.autograd through `reference.head_loss_rows` weighted the same way.
"""
import pytest

from loss_cases import assert_rows_and_grads_close, fused_backends, head_rows_and_grads, make_inputs, upstream_grads
from udon_fast.losses.margins import margin_code

# (margin_type, margin, B, C): every margin once with one class tile and with several (C = 3001).
CASES = [("normface", 0.0, 7, 1000), ("cosface", 0.35, 7, 1000), ("arcface", 0.5, 7, 1000),
         ("normface", 0.0, 33, 3001), ("cosface", 0.35, 33, 3001), ("arcface", 0.5, 33, 3001)]


def _compare(backend, inputs, single_head, margin_type, margin):
    upstream = upstream_grads(inputs[0].shape[0])
    options = dict(code=margin_code(margin_type), margin=margin, scale=24.0, tau_t=0.1, tau_s=0.07,
                   single_head=single_head)
    got = head_rows_and_grads(backend, inputs, upstream, **options)
    want = head_rows_and_grads("reference", inputs, upstream, **options)
    assert_rows_and_grads_close(got, want)


@pytest.mark.parametrize("backend", fused_backends())
@pytest.mark.parametrize("margin_type,margin,batch,classes", CASES)
def test_row_gradients_match_reference(backend, margin_type, margin, batch, classes):
    _compare(backend, make_inputs(batch, classes, 48, 96), False, margin_type, margin)


@pytest.mark.parametrize("backend", fused_backends())
@pytest.mark.parametrize("margin_type,margin", [("cosface", 0.35), ("arcface", 0.5)])
def test_single_head_row_gradients_match_reference(backend, margin_type, margin):
    _compare(backend, make_inputs(33, 3001, 48, 96), True, margin_type, margin)
