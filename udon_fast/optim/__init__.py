"""Optimizer steps udon_fast adds to torch.optim: the AdamW step of a weight's sampled rows (`adamw_rows`)."""

from .row_adamw import adamw_rows, row_state

__all__ = ["adamw_rows", "row_state"]
