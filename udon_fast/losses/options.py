"""Options with `F.cross_entropy`'s meaning on the fused CE terms: `reduction`, `ignore_index`,
`label_smoothing` and a per-class weight (`class_weight`, F.cross_entropy's `weight`).

One implementation above every backend and the class-parallel loss: the backends keep computing the
per-row CE_b = lse_b - z_by (head_op.py); this module turns those rows into F.cross_entropy's rows and
reduces them.  For a row b with target y, per-class weights w (all 1 without class_weight), label
smoothing eps and C classes (PyTorch's definition, which tests/test_loss_options.py checks against
`F.cross_entropy` on the reference's materialised logits):

    loss_b = (1 - eps) w_y CE_b + (eps / C) sum_c w_c (lse_b - z_bc),     0 for an ignored row.

The smoothing sum needs no (B, C) matrix.  With z_bc = s cos_bc off target and z_by = s f(cos_by):

    sum_c w_c (lse_b - z_bc) = W lse_b - part_b,   W = sum_c w_c,   lse_b = CE_b + z_by,
    part_b = sum_c w_c z_bc = s e_b . V + w_y (z_by - s cos_by),   V = sum_c w_c W_c / ||W_c|| (D,),

one pass over the (C, D) weights for V plus the B target rows, in plain PyTorch with autograd.  z_by
is computed here with autograd too (the backends take it as a constant), so lse_b = CE_b + z_by has
the gradient of the log-sum-exp.  Sums over classes (part_b, z_by) come from `class_terms` on the
classes a call sees; a class-parallel rank sees a slice and `combine` adds the slices' parts.

An ignored row (label == ignore_index) reaches the backends as `margins.NO_TARGET`; its rows are
zeroed here with `torch.where`, so its upstream gradient, and so every gradient it would give, is 0.

Reductions: "none" returns the (B,) rows; "sum" their sum; "mean" their sum divided by the sum of
w_y over the rows not ignored (the number of those rows without class_weight), as F.cross_entropy
does: when every row is ignored that is 0 / 0 = nan, with zero gradients, as in PyTorch.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .margins import NO_TARGET, Margin, transform

REDUCTIONS = ("mean", "sum", "none")


@dataclass(frozen=True)
class CEOptions:
    """The CE options of one call.  class_weight: (C,) float tensor (all classes) or None."""

    reduction: str = "mean"
    ignore_index: int | None = None
    label_smoothing: float = 0.0
    class_weight: torch.Tensor | None = None

    @property
    def weighs_rows(self) -> bool:
        """Whether the per-row CE differs from the backends' (smoothing or class weights)."""
        return self.label_smoothing != 0 or self.class_weight is not None


def check_scalars(reduction: str, ignore_index: int | None, label_smoothing: float) -> None:
    """One-line ValueError naming the bad argument among reduction, ignore_index and label_smoothing."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if ignore_index is not None and (not isinstance(ignore_index, int) or isinstance(ignore_index, bool)):
        raise ValueError(f"ignore_index must be an int or None, got {ignore_index!r}")
    eps = label_smoothing
    if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps) and 0 <= eps <= 1):
        raise ValueError(f"label_smoothing must be a number in [0, 1], got {eps!r}")


def check(options: CEOptions, num_classes: int, device: torch.device) -> None:
    """`check_scalars` and class_weight's type, shape and device: one-line ValueError/TypeError naming
    the bad argument; no data is read (no synchronisation)."""
    check_scalars(options.reduction, options.ignore_index, options.label_smoothing)
    weight = options.class_weight
    if weight is None:
        return
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"class_weight must be a torch.Tensor or None, got {type(weight).__name__}")
    if not weight.is_floating_point() or tuple(weight.shape) != (num_classes,):
        raise ValueError(
            f"class_weight must be a floating (C,) = ({num_classes},) tensor, got "
            f"{weight.dtype} of shape {tuple(weight.shape)}"
        )
    if weight.device != device:
        raise ValueError(f"class_weight is on {weight.device} but the embeddings are on {device}")


def check_values(options: CEOptions) -> None:
    """The data check of class_weight (reads it on the host): finite values."""
    if options.class_weight is not None and not bool(torch.isfinite(options.class_weight).all()):
        raise ValueError("class_weight contains NaN or inf values")


def split_ignored(labels: torch.Tensor, ignore_index: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(labels with the ignored rows set to NO_TARGET, (B,) bool mask of the rows kept or None when
    ignore_index is None)."""
    if ignore_index is None:
        return labels, None
    keep = labels != ignore_index
    return torch.where(keep, labels, NO_TARGET), keep


class _WeightedDirections(torch.autograd.Function):
    """V = sum_c a_c W_c / ||W_c|| (D,) f32 of raw weights W (K, D), K >= 1, and constant a (K,) f32.

    Backward: dW_c = a_c / ||W_c|| (g - (W_c . g) W_c / ||W_c||^2), written in place into the one
    (K, D) tensor it returns (autograd's own rule for the same expression allocates three).
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        w = weight.float()
        norm = torch.linalg.vector_norm(w, dim=1)
        ctx.save_for_backward(weight, coef, norm)
        return (coef / norm) @ w

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, coef, norm = ctx.saved_tensors
        w = weight.float()
        a = coef / norm
        d_weight = w * (-a * (w @ grad) / (norm * norm))[:, None]
        return d_weight.addr_(a, grad).to(weight.dtype), None


def class_terms(
    *,
    emb: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    class_weight: torch.Tensor | None,
    margin: Margin,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """z_by = s f(cos_by) and part_b = sum_c w_c z_bc over the classes of `weight`, both (B,) f32 and
    differentiable in emb and weight.

    emb (B, D); weight (K, D) raw, the classes seen (all, or a class-parallel slice; K may be 0);
    labels (B,) int64 in [0, K), or NO_TARGET for a row whose target is not among them (z_by = 0 and
    part_b = s e_b . V there); class_weight (K,) of these classes or None (all 1).
    """
    e = emb.float()
    if weight.shape[0] == 0:
        zeros = e.new_zeros(e.shape[0])
        return zeros, zeros.clone()
    coef = e.new_ones(weight.shape[0]) if class_weight is None else class_weight.float()
    part = scale * (e @ _WeightedDirections.apply(weight, coef))
    has_target = labels != NO_TARGET
    index = labels.clamp_min(0)
    target_w = weight[index].float()
    cos_y = (e * target_w).sum(dim=1) / torch.linalg.vector_norm(target_w, dim=1)
    z_y = scale * transform(margin, cos_y)[0]
    w_y = 1.0 if class_weight is None else class_weight.float()[index]
    part = part + torch.where(has_target, w_y * (z_y - scale * cos_y), 0.0)
    return torch.where(has_target, z_y, 0.0), part


def ce_rows(
    options: CEOptions,
    *,
    ce: list[torch.Tensor],
    heads: list[tuple[torch.Tensor, torch.Tensor]],
    labels: torch.Tensor,
    keep: torch.Tensor | None,
    margin: Margin,
    scale: float,
    num_classes: int,
    local_labels: torch.Tensor | None = None,
    first_class: int = 0,
    combine: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """F.cross_entropy's per-row losses of each head and the denominator of reduction="mean".

    ce: per head, the backend's (B,) f32 CE rows (ignored rows labelled NO_TARGET).
    heads: per head (emb (B, D), weight (K, D)), the rows and the classes the backend saw: all C
        classes, or a class-parallel slice [first_class, first_class + K) with `local_labels` (B,)
        relative to it (NO_TARGET off the slice) and `combine` summing a (B,) tensor over the slices
        (an all-reduce whose backward passes the gradient through).
    labels: (B,) global labels, NO_TARGET in the ignored rows; keep: `split_ignored`'s mask.
    Returns (per-head (B,) f32 rows, 0 in ignored rows; (0-d) denominator of the mean, or None when
    it is B).
    """
    weight = None if options.class_weight is None else options.class_weight.float()
    target_weight = None if weight is None else weight[labels.clamp_min(0)]
    rows = []
    for ce_head, (emb, head_weight) in zip(ce, heads):
        loss = ce_head if target_weight is None else target_weight * ce_head
        eps = options.label_smoothing
        if eps != 0:
            slice_weight = None if weight is None else weight[first_class : first_class + head_weight.shape[0]]
            z_y, part = class_terms(
                emb=emb,
                weight=head_weight,
                labels=labels if local_labels is None else local_labels,
                class_weight=slice_weight,
                margin=margin,
                scale=scale,
            )
            z_y, part = combine(z_y), combine(part)
            total_weight = num_classes if weight is None else weight.sum()
            loss = (1 - eps) * loss + (eps / num_classes) * (total_weight * (ce_head + z_y) - part)
        rows.append(loss if keep is None else torch.where(keep, loss, 0.0))
    if target_weight is not None:
        return rows, (target_weight if keep is None else torch.where(keep, target_weight, 0.0)).sum()
    return rows, None if keep is None else keep.sum()


def reduce(rows: torch.Tensor, denominator: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """(B,) rows -> "none": the rows; "sum": 0-d sum; "mean": 0-d sum / denominator (rows.mean() when None)."""
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.mean() if denominator is None else rows.sum() / denominator
