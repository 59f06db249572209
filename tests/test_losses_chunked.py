"""The chunked backend with many small class chunks (the full matrix is in test_losses_matrix.py)."""

import pytest
from loss_cases import assert_matches_reference


@pytest.mark.parametrize("batch", [1, 7])
def test_chunked_many_small_chunks(monkeypatch, batch):
    monkeypatch.setattr("udon_fast.losses.chunked.TILE_ELEMENTS", 64)
    assert_matches_reference("chunked", batch, 1000, 48, 96, margin_type="arcface", margin=0.5)
