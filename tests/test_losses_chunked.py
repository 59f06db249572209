"""The chunked backend against `reference` in fp32: all outputs and all four gradients."""
import pytest

from loss_cases import assert_matches_reference

MARGINS = [("normface", 0.0), ("cosface", 0.35), ("arcface", 0.5)]


@pytest.mark.parametrize("margin_type,margin", MARGINS)
@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("classes", [1, 3, 1000, 3001])
@pytest.mark.parametrize("d_s,d_t", [(64, 256), (48, 96)])
def test_chunked_matches_reference(margin_type, margin, batch, classes, d_s, d_t):
    assert_matches_reference("chunked", batch, classes, d_s, d_t, margin_type=margin_type, margin=margin)


@pytest.mark.parametrize("margin_type,margin", MARGINS)
def test_chunked_extreme_scale_and_temperature(margin_type, margin):
    assert_matches_reference("chunked", 64, 3001, 48, 96, margin_type=margin_type, margin=margin, scale=64.0,
                             teacher_temperature=0.02, student_temperature=0.02)


@pytest.mark.parametrize("batch", [1, 7])
def test_chunked_many_small_chunks(monkeypatch, batch):
    monkeypatch.setattr("udon_fast.losses.chunked.TILE_ELEMENTS", 64)
    assert_matches_reference("chunked", batch, 1000, 48, 96, margin_type="arcface", margin=0.5)
