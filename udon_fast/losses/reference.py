"""Plain eager reference of the UDON head losses, written to mirror docs/method.md (section 2) line by line.

It materialises the (B, C) logits of every head.  It is the oracle of the tests and the baseline of
the benchmarks; the fused backends must agree with it in fp32, forward and all gradients.
"""

import torch
import torch.nn.functional as F

from .margins import NO_TARGET, Margin, transform


def cosine_logits(emb: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """cos_{b,c} = e_b . W_c / ||W_c||.  emb (B, D) unit-norm, weight (C, D) raw -> (B, C)."""
    return emb @ (weight / weight.norm(dim=1, keepdim=True)).t()


def margin_logits(cos: torch.Tensor, labels: torch.Tensor, margin: Margin, scale: float) -> torch.Tensor:
    """z = s * cos with the margin's f applied to the target logit only: z_y = s * f(cos_y).  (B, C) -> (B, C).

    Autograd differentiates f itself (f' of `margins.transform` is not used here).  Rows labelled
    NO_TARGET keep z = s * cos everywhere.
    """
    has_target = labels != NO_TARGET
    index = labels.clamp_min(0)[:, None]
    cos_y = cos.gather(1, index)[:, 0]
    z = scale * cos
    z_y = torch.where(has_target, scale * transform(margin, cos_y)[0], scale * cos_y)
    return z.scatter(1, index, z_y[:, None])


def softmax_ce_rows(cos: torch.Tensor, labels: torch.Tensor, margin: Margin, scale: float) -> torch.Tensor:
    """Per-row CE(z(cos), y): (B, C) cosines, (B,) int64 labels -> (B,) float.

    A NO_TARGET row (its target is outside these classes) gets logsumexp(z), i.e. z_y = 0.
    """
    z = margin_logits(cos, labels, margin, scale)
    ce = F.cross_entropy(z, labels.clamp_min(0), reduction="none")
    return torch.where(labels != NO_TARGET, ce, torch.logsumexp(z, dim=1))


def kl_rows(cos_t: torch.Tensor, cos_s: torch.Tensor, tau_t: float, tau_s: float) -> torch.Tensor:
    """KL(softmax(cos_t / tau_t) || softmax(cos_s / tau_s)) per row on raw cosines, teacher detached.

    cos_t, cos_s: (B, C) -> (B,) float.
    """
    log_p_t = F.log_softmax(cos_t.detach() / tau_t, dim=1)
    log_p_s = F.log_softmax(cos_s / tau_s, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)


def head_loss_rows(
    *,
    e_t: torch.Tensor,
    w_t: torch.Tensor,
    e_s: torch.Tensor | None,
    w_s: torch.Tensor | None,
    labels: torch.Tensor,
    margin: Margin,
    scale: float,
    tau_t: float,
    tau_s: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row teacher CE, student CE and KL, each (B,) float32.  labels (B,) int64 in [0, C) or NO_TARGET.

    e_t (B, Dt), w_t (C, Dt); e_s (B, Ds), w_s (C, Ds) or both None (single head: ce_s = kl = 0).
    margin: a `margins.Margin` (from `margins.resolve`).
    """
    cos_t = cosine_logits(e_t.float(), w_t.float())
    ce_t = softmax_ce_rows(cos_t, labels, margin, scale)
    if e_s is None:
        zeros = torch.zeros_like(ce_t)
        return ce_t, zeros, zeros
    cos_s = cosine_logits(e_s.float(), w_s.float())
    ce_s = softmax_ce_rows(cos_s, labels, margin, scale)
    return ce_t, ce_s, kl_rows(cos_t, cos_s, tau_t, tau_s)
