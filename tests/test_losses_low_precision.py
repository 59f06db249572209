"""bf16 / fp16 inputs against the fp32 reference (not against a backend's own fp32 run), forward and
gradients, on multi-tile shapes with all margins: chunked and native (several class chunks/tiles,
the last ragged), and Triton's interpreter in fp16 (it refuses bf16; CUDA bf16 runs are in
test_losses_gpu.py).

Each case checks (see `loss_cases.assert_low_precision_matches_reference`): per-row losses within
the bound derived from the dtype's unit roundoff and the logit range (`row_error_bounds`) of the
fp32 reference on the unrounded inputs; per-row losses equal to fp32 accuracy to the fp32 reference
on the rounded values (the backends compute in fp32 on the values they are given); gradients in the
input dtype within `grad_error_bounds` of the reference at the rounded point: for chunked and
native only the final rounding to the input dtype (they keep dL/dcos in fp32), for Triton also its
rounding of dL/dcos.
"""

import os

import pytest
import torch
from loss_cases import (
    MARGINS,
    TRITON_GRAD_ROUNDOFF,
    assert_low_precision_matches_reference,
    fused_backends,
    make_inputs,
    margin_of,
)

DTYPES = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("backend", fused_backends(triton=False))
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("margin_type,options", MARGINS)
def test_cpu_backends_low_precision_match_fp32_reference(backend, dtype, margin_type, options):
    inputs = make_inputs(64, 3001, 48, 96)  # chunked: 2 chunks; native: 3 tiles of 1024 classes
    assert_low_precision_matches_reference(backend, inputs, dtype, margin=margin_of(margin_type, options))


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="Triton on CPU tensors needs TRITON_INTERPRET=1")
@pytest.mark.parametrize("margin_type,options", MARGINS)
def test_triton_interpreter_fp16_matches_fp32_reference(margin_type, options):
    assert_low_precision_matches_reference(
        "triton",
        make_inputs(64, 3001, 48, 96),
        torch.float16,
        margin=margin_of(margin_type, options),
        grad_roundoff=TRITON_GRAD_ROUNDOFF[torch.float16],
    )
