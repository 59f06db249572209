"""Triton with more than one row tile (B > BLOCK_B = 64): fp32 against `reference`, gradients included.

`grad_weight_kernel` loops over the batch in BLOCK_B-row tiles and the other kernels run one
program per row tile; with B <= 64 the loop runs once.  B = 65 (a last tile of one row), 128 (the
UnED preset, two full tiles) and 130 (a ragged third tile), with several class tiles and
non-uniform per-row upstream gradients through the op (rows and all four gradients).
Interpreter runs (TRITON_INTERPRET=1, CPU tensors) and CUDA runs (marker gpu).
"""

import os

import pytest
from loss_cases import MARGINS, assert_rows_and_grads_close, head_rows_and_grads, make_inputs, margin_of, upstream_grads

pytest.importorskip("triton", reason="triton is not installed")

# The interpreter is slow (~1-3 s a case): each B once, the margins rotated; CUDA runs the product.
INTERPRETER_CASES = [(65, *MARGINS[0]), (128, *MARGINS[1]), (130, *MARGINS[2]), (65, *MARGINS[3])]
CUDA_CASES = [(batch, margin_type, options) for batch in (65, 128, 130) for margin_type, options in MARGINS]


def _check(device, batch, margin_type, options, classes, d_s, d_t):
    inputs = make_inputs(batch, classes, d_s, d_t, device=device)
    upstream = upstream_grads(batch, device=device)
    options = dict(margin=margin_of(margin_type, options), scale=16.0, tau_t=0.1, tau_s=0.07)
    assert_rows_and_grads_close(
        head_rows_and_grads("triton", inputs, upstream, **options),
        head_rows_and_grads("reference", inputs, upstream, **options),
    )


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="Triton on CPU tensors needs TRITON_INTERPRET=1")
@pytest.mark.parametrize("batch,margin_type,options", INTERPRETER_CASES)
def test_interpreter_several_row_tiles_match_reference(batch, margin_type, options):
    _check("cpu", batch, margin_type, options, 3001, 48, 96)


@pytest.mark.gpu
@pytest.mark.parametrize("batch,margin_type,options", CUDA_CASES)
@pytest.mark.parametrize("classes,d_s,d_t", [(3001, 48, 96), (30001, 64, 256)])
def test_cuda_several_row_tiles_match_reference(batch, margin_type, options, classes, d_s, d_t):
    _check("cuda", batch, margin_type, options, classes, d_s, d_t)
