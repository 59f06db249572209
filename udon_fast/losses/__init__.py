"""Fused UDON head losses: cosine-classifier softmax CE with margins, KL and similarity distillation."""

from .api import UDONLoss, UDONLossOutput, normalized_softmax_ce, udon_loss
from .backends import BACKENDS
from .class_parallel import ClassShard

__all__ = ["BACKENDS", "ClassShard", "UDONLoss", "UDONLossOutput", "normalized_softmax_ce", "udon_loss"]
