"""Batch-similarity distillation (SIM), the one implementation every backend shares (it is B x B)."""

import torch


def similarity_loss(
    student_emb: torch.Tensor,
    teacher_emb: torch.Tensor,
    n_devices: int = 1,
    *,
    keep: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """(n_devices / 4) * sum_ij (S_s - S_t)_ij^2 / B with S = E E^T and S_t detached.

    student_emb (B, Ds), teacher_emb (B, Dt), unit-norm rows -> 0-d float32 tensor.
    keep: (B,) bool, the rows that count (None: all): the sum runs over pairs of kept rows and the
    mean divides by the number of kept rows, or by 1 when there is none (no pair, SIM 0: a
    class-parallel rank whose own rows are all ignored still trains on the others').  reduction: "mean", "sum", or
    "none": the (B,) rows (n_devices / 4) sum_j (S_s - S_t)_ij^2 (0 in rows not kept), whose sum is
    the "sum".
    """
    e_s = student_emb.float()
    e_t = teacher_emb.detach().float()
    squares = (e_s @ e_s.t() - e_t @ e_t.t()).square()
    if keep is not None:
        squares = torch.where(keep[:, None] & keep[None, :], squares, 0.0)
    if reduction == "none":
        return (n_devices / 4.0) * squares.sum(dim=1)
    total = (n_devices / 4.0) * squares.sum()
    if reduction == "sum":
        return total
    return total / (e_s.shape[0] if keep is None else keep.sum().clamp_min(1))
