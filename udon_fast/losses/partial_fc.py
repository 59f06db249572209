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

from ..optim.row_adamw import adamw_rows, row_state  # noqa: F401  (re-exported: the Partial FC API)
from .margins import NO_TARGET


def sample_size(num_classes: int, batch: int, sample_rate: float) -> int:
    """K, the classes one step keeps: ceil(sample_rate * C), at least min(C, batch) (room for every positive)."""
    return min(num_classes, max(math.ceil(sample_rate * num_classes), batch))


def check_sample_rate(name: str, sample_rate: float) -> None:
    """ValueError naming `name` unless 0 < sample_rate <= 1."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)) or not 0 < sample_rate <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {sample_rate!r}")


def sample_classes(
    labels: torch.Tensor, num_classes: int, sample_rate: float, start: int = 0
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
