"""Partial FC: the softmax over a sampled subset of the classes, and the AdamW step of the sampled rows.

Each training step keeps every class of the batch's labels plus a uniform sample of the others, K rows
of the (C, D) weight in all (`sample_size`: ceil(rate * C), raised to min(C, B) so that every positive
fits; K depends only on shapes, so the sampling needs no host synchronisation).  The loss is the
ordinary loss of the K sampled rows with the labels renumbered into them: exact on that set.

The sampled rows enter the loss as a new leaf tensor (`SampledRows.rows`, (K, D)), not through an
autograd index of the parameter: a dense zero gradient on the parameter would make AdamW move and
decay the rows that were not sampled (their moments decay, weight decay shrinks them).  The parameter
keeps `grad = None`, so `torch.optim.AdamW` skips it, and `adamw_rows` applies the optimizer's own
AdamW function (same group options: fused or not, lr, betas, eps, weight decay, and the trainer's
`found_inf`) to the K rows only, with one step count per row.  The rows that were not sampled keep
their weights, moments and step counts bit for bit (docs/kernels.md, "Partial FC").
"""
import math
from dataclasses import dataclass

import torch
from torch.optim.adamw import adamw

from .margins import NO_TARGET


def sample_size(num_classes: int, batch: int, sample_rate: float) -> int:
    """K, the classes one step keeps: ceil(sample_rate * C), at least min(C, batch) (room for every positive)."""
    return min(num_classes, max(math.ceil(sample_rate * num_classes), batch))


def check_sample_rate(name: str, sample_rate: float) -> None:
    """ValueError naming `name` unless 0 < sample_rate <= 1."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)) or not 0 < sample_rate <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {sample_rate!r}")


def sample_classes(labels: torch.Tensor, num_classes: int, sample_rate: float, start: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The classes of one step among the C = num_classes rows [start, start + C) of a weight (slice).

    labels (B,) int64 global class ids.  Returns (index, sampled_labels): index (K,) int64, ascending
    rows of the slice (K = `sample_size(C, B, sample_rate)`): every class of `labels` the slice holds,
    then classes drawn uniformly without replacement from the global torch RNG of labels' device;
    sampled_labels (B,) int64: each label's position in index, NO_TARGET (-1) where the slice does not
    hold it.  All on labels' device, no host synchronisation.
    """
    k = sample_size(num_classes, labels.numel(), sample_rate)
    owned = (labels >= start) & (labels < start + num_classes)
    local = (labels - start).clamp(0, num_classes - 1)
    positives = torch.zeros(num_classes, device=labels.device).index_add_(0, local, owned.float())
    scores = torch.rand(num_classes, device=labels.device) + 2.0 * positives.clamp_max(1.0)
    index = scores.topk(k, sorted=False).indices.sort().values
    position = torch.full((num_classes,), NO_TARGET, dtype=torch.int64, device=labels.device)
    position.index_copy_(0, index, torch.arange(k, device=labels.device))
    return index, torch.where(owned, position[local], NO_TARGET)


@dataclass
class SampledRows:
    """The rows one step samples of a (C, D) parameter: index (K,) int64, rows (K, D) a leaf copy of
    parameter[index] that requires grad (the loss's weight; its .grad is the rows' gradient)."""

    parameter: torch.nn.Parameter
    index: torch.Tensor
    rows: torch.Tensor

    @classmethod
    def take(cls, parameter: torch.nn.Parameter, index: torch.Tensor) -> "SampledRows":
        return cls(parameter, index, parameter.detach().index_select(0, index).requires_grad_())


def _group(optimizer: torch.optim.Optimizer, parameter: torch.Tensor) -> dict:
    for group in optimizer.param_groups:
        if any(p is parameter for p in group["params"]):
            return group
    raise ValueError("the sampled classifier weight is not among the optimizer's parameters")


def row_state(optimizer: torch.optim.Optimizer, parameter: torch.Tensor) -> dict[str, torch.Tensor]:
    """The AdamW state of a row-sampled (C, D) parameter, created on first use: exp_avg and exp_avg_sq
    (C, D) like the parameter, step (C,) float32 on its device (one count per row)."""
    state = optimizer.state[parameter]
    if not state:
        state["step"] = torch.zeros(parameter.shape[0], dtype=torch.float32, device=parameter.device)
        state["exp_avg"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
    if state["step"].shape != parameter.shape[:1]:
        raise ValueError("this classifier weight was stepped whole by the optimizer (one step count); "
                         "Partial FC keeps one per row: train it with sample_rate < 1 from the start")
    return state


def adamw_rows(optimizer: torch.optim.AdamW, sampled: SampledRows) -> None:
    """The AdamW update of `optimizer` (its group's options) on the sampled rows only, from rows.grad.

    Each row is one tensor of the optimizer's own `adamw` function, with its own step count, so a
    sampled row moves exactly as `torch.optim.AdamW` moves a parameter made of that row; the others
    are not read.  Honours the optimizer's `found_inf` (fused AdamW).  No-op when rows.grad is None.
    """
    grad = sampled.rows.grad
    if grad is None:
        return
    group, state = _group(optimizer, sampled.parameter), row_state(optimizer, sampled.parameter)
    if group["amsgrad"]:
        raise ValueError("Partial FC supports AdamW without amsgrad")
    index = sampled.index
    with torch.no_grad():
        rows = sampled.parameter.index_select(0, index)
        exp_avg, exp_avg_sq = state["exp_avg"].index_select(0, index), state["exp_avg_sq"].index_select(0, index)
        steps = state["step"].index_select(0, index)
        tensors = [list(t.unbind(0)) for t in (rows, grad.contiguous(), exp_avg, exp_avg_sq)]
        options = dict(lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
                       weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"], amsgrad=False)
        if group["fused"]:
            # What torch.optim.adam._fused_adam does for the group (count, kernel, uncount a skipped step),
            # with the K step counts counted as one vector instead of K tensors grouped in Python.
            found_inf = getattr(optimizer, "found_inf", None)
            steps.add_(1)
            torch._fused_adamw_(*tensors, [], list(steps.unbind(0)), grad_scale=None, found_inf=found_inf, **options)
            if found_inf is not None:
                steps.sub_(found_inf)
        else:
            adamw(*tensors, [], list(steps.unbind(0)), foreach=group["foreach"], capturable=group["capturable"],
                  differentiable=False, fused=False, **options)
        sampled.parameter.index_copy_(0, index, rows)
        state["exp_avg"].index_copy_(0, index, exp_avg)
        state["exp_avg_sq"].index_copy_(0, index, exp_avg_sq)
        state["step"].index_copy_(0, index, steps)
