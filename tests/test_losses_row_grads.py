"""Per-row upstream gradients: every fused backend's op against reference autograd.

`udon_loss` averages each term, so through the public API every row gets the same upstream
gradient and a backward that applied one row's gradient to all rows, or swapped the CE_s and KL
gradients, would still pass.  Here three different non-uniform (B,) gradients (signed, one zero)
go straight into each backend's registered op (`backends.fused_op`), two heads and one, and all
gradients are compared with torch.autograd through `reference.head_loss_rows` weighted the same way.
"""

import pytest
from loss_cases import (
    MARGINS,
    assert_rows_and_grads_close,
    fused_backends,
    head_rows_and_grads,
    make_inputs,
    margin_of,
    upstream_grads,
)

# (margin_type, options, B, C): every margin once with one class tile and with several (C = 3001).
CASES = [
    (margin_type, options, batch, classes)
    for batch, classes in ((7, 1000), (33, 3001))
    for margin_type, options in MARGINS
]


def _compare(backend, inputs, single_head, margin_type, options):
    upstream = upstream_grads(inputs[0].shape[0])
    options = dict(margin=margin_of(margin_type, options), scale=24.0, tau_t=0.1, tau_s=0.07, single_head=single_head)
    got = head_rows_and_grads(backend, inputs, upstream, **options)
    want = head_rows_and_grads("reference", inputs, upstream, **options)
    assert_rows_and_grads_close(got, want)


@pytest.mark.parametrize("backend", fused_backends())
@pytest.mark.parametrize("margin_type,options,batch,classes", CASES)
def test_row_gradients_match_reference(backend, margin_type, options, batch, classes):
    _compare(backend, make_inputs(batch, classes, 48, 96), False, margin_type, options)


@pytest.mark.parametrize("backend", fused_backends())
@pytest.mark.parametrize("margin_type,options", MARGINS[1:])
def test_single_head_row_gradients_match_reference(backend, margin_type, options):
    _compare(backend, make_inputs(33, 3001, 48, 96), True, margin_type, options)
