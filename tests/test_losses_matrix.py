"""The CPU fused backends (chunked, native) against `reference` in fp32: all five outputs and all four
gradients, on the full matrix of margins x B x C x (Ds, Dt), plus extreme scale and temperatures.
(Triton's interpreter runs a covering design of the same axes: test_losses_triton.py.)"""

import pytest
from loss_cases import EXTREME, MARGINS, assert_matches_reference

from udon_fast.losses import backends

BACKENDS = [
    pytest.param("chunked"),
    pytest.param(
        "native", marks=pytest.mark.skipif(not backends.status()["native"][0], reason="native library not built")
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("margin_type,options", MARGINS)
@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("classes", [1, 3, 1000, 3001])
@pytest.mark.parametrize("d_s,d_t", [(64, 256), (48, 96)])
def test_matches_reference(backend, margin_type, options, batch, classes, d_s, d_t):
    assert_matches_reference(backend, batch, classes, d_s, d_t, margin_type=margin_type, **options)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("margin_type,options", MARGINS)
def test_extreme_scale_and_temperature(backend, margin_type, options):
    assert_matches_reference(backend, 64, 3001, 48, 96, margin_type=margin_type, **options, **EXTREME)
