"""Batch-similarity distillation (SIM), the one implementation every backend shares (it is B x B)."""
import torch


def similarity_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor, n_devices: int = 1) -> torch.Tensor:
    """(n_devices / 4) * sum_ij (S_s - S_t)_ij^2 / B with S = E E^T and S_t detached.

    student_emb (B, Ds), teacher_emb (B, Dt), unit-norm rows -> 0-d float32 tensor.
    """
    e_s = student_emb.float()
    e_t = teacher_emb.detach().float()
    diff = e_s @ e_s.t() - e_t @ e_t.t()
    return (n_devices / 4.0) * diff.square().sum() / e_s.shape[0]
