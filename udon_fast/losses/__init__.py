"""Fused UDON head losses: cosine-classifier softmax CE with margins, KL and similarity distillation."""
from .api import UDONLoss, UDONLossOutput, normalized_softmax_ce, udon_loss
from .backends import BACKENDS

__all__ = ["BACKENDS", "UDONLoss", "UDONLossOutput", "normalized_softmax_ce", "udon_loss"]
