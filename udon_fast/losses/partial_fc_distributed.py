"""Partial FC with more than one process: the sampled classes of a step under class or data parallelism.

Every rank passes the same number of rows B_r (the global batch is B = W x B_r, ranks' rows in rank
order); everything stays on the device (collectives, no host synchronisation).

Class parallelism (`sample_class_parallel`): rank r holds classes [start_r, start_r + C_r) and samples
K_r = `sample_size(C_r, B, rate)` rows of its slice: every class of the GLOBAL batch's labels it holds,
plus a uniform sample of its other classes (its own torch RNG).  K_r depends on shapes only, so every
rank knows every K_q without communicating.  The sampled slices form a virtual class space of
K = sum_q K_q classes in which rank r's rows are [V_r, V_r + K_r), V_r = sum_{q<r} K_q; each rank
renumbers the global labels it owns into it and one all-reduce SUM gives every rank the virtual
labels (each label is owned by exactly one rank).  The class-parallel loss then runs unchanged on
(K_r, D) rows with `ClassShard(V_r, K)`: exact on the union of the ranks' samples, and each rank's
sampled rows get their complete gradient (over all global rows), as a slice does.

Data parallelism with replicated classifiers (`sample_replicated`): every rank must step the same
rows, so the ranks sample the same classes: the labels are all-gathered (the global batch), every
rank draws the sample of `sample_classes` over them, and rank 0's sample is broadcast (one (K,)
int64 broadcast: identical on every rank by construction, whatever the ranks' RNG states).  The
sampled rows are leaves outside DDP, so their gradients are averaged over the ranks by
`average_row_gradients`, as DDP averages the replicated parameters' gradients.
"""

import torch
import torch.distributed as dist

from .class_parallel import ClassShard, all_gather_into
from .margins import NO_TARGET
from .partial_fc import sample_classes, sample_size


def _global_labels(labels: torch.Tensor, group) -> torch.Tensor:
    """(B_r,) int64 on every rank (the same B_r) -> the global (W x B_r,) labels in rank order."""
    gathered = labels.new_empty(dist.get_world_size(group) * labels.shape[0])
    all_gather_into(gathered, labels.contiguous(), group=group)
    return gathered


def _in_range(labels: torch.Tensor, renumbered: torch.Tensor, num_classes: int) -> torch.Tensor:
    """renumbered where the label is a class id in [0, num_classes), else the label itself (ignore_index,
    or a bad id the loss's input check then names)."""
    return torch.where((labels >= 0) & (labels < num_classes), renumbered, labels)


def sample_class_parallel(
    labels: torch.Tensor, num_classes: int, counts: tuple[int, ...], sample_rate: float, group=None
) -> tuple[torch.Tensor, torch.Tensor, ClassShard]:
    """This rank's Partial-FC sample of its class slice and the virtual class space of all ranks' samples.

    labels (B_r,) int64 global class ids of this rank's rows; counts: C_q, every rank's slice size in rank
    order (the slices tile [0, num_classes)); group: the class-parallel process group (None: default).
    Returns index (K_r,) int64 ascending rows of this rank's slice, virtual_labels (B_r,) int64 (ids in
    the virtual space of K = sum_q K_q classes; labels outside [0, num_classes) unchanged) and the
    `ClassShard(V_r, K, group)` under which the class-parallel loss takes this rank's sampled rows.
    """
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if len(counts) != world or sum(counts) != num_classes:
        raise ValueError(
            f"counts must give the class slices of the {world} ranks, summing to {num_classes}, got {tuple(counts)}"
        )
    batch = labels.shape[0]
    all_labels = _global_labels(labels, group)
    sizes = [sample_size(count, all_labels.numel(), sample_rate) for count in counts]
    start, virtual_start = sum(counts[:rank]), sum(sizes[:rank])
    if counts[rank]:
        index, positions = sample_classes(all_labels, counts[rank], sample_rate, start)
    else:
        index = torch.empty(0, dtype=torch.int64, device=labels.device)
        positions = torch.full_like(all_labels, NO_TARGET)
    virtual = torch.where(positions != NO_TARGET, positions + virtual_start, 0)
    dist.all_reduce(virtual, group=group)
    mine = virtual[rank * batch : (rank + 1) * batch]
    return index, _in_range(labels, mine, num_classes), ClassShard(virtual_start, sum(sizes), group)


def sample_replicated(
    labels: torch.Tensor, num_classes: int, sample_rate: float, group=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Partial-FC sample of a classifier replicated on every rank of `group`: the same classes on all.

    labels (B_r,) int64 global class ids of this rank's rows.  Returns index (K,) int64 ascending classes,
    K = `sample_size(C, W x B_r, rate)`, holding every class of the global batch (rank 0's draw), and
    sampled_labels (B_r,) int64, each label's position in index (labels outside [0, C) unchanged).
    """
    index, _ = sample_classes(_global_labels(labels, group), num_classes, sample_rate)
    dist.broadcast(index, src=0 if group is None else dist.get_global_rank(group, 0), group=group)
    position = torch.full((num_classes,), NO_TARGET, dtype=torch.int64, device=labels.device)
    position.index_copy_(0, index, torch.arange(index.numel(), device=labels.device))
    return index, _in_range(labels, position[labels.clamp(0, num_classes - 1)], num_classes)


def average_row_gradients(rows: list[torch.Tensor], group=None) -> None:
    """Average the .grad of replicated sampled rows over the ranks (in place, one all-reduce): what DDP does
    for the replicated parameters, for leaves it does not see.  Rows without a gradient are skipped (the
    same rows on every rank: the ranks run the same graph)."""
    grads = [r.grad for r in rows if r.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    flat /= dist.get_world_size(group)
    for grad, part in zip(grads, flat.split([g.numel() for g in grads])):
        grad.copy_(part.view_as(grad))


def virtual_class_values(values: torch.Tensor, index: torch.Tensor, start: int, shard: ClassShard) -> torch.Tensor:
    """A per-class vector (C,) (e.g. class_weight) taken at the classes of the virtual space of
    `sample_class_parallel`: (K,) of values' dtype, rank r's part values[start_r + index_r] at
    [V_r, V_r + K_r) (one all-reduce SUM); index and shard are what `sample_class_parallel` returned."""
    taken = values.new_zeros(shard.num_classes)
    taken[shard.start : shard.start + index.numel()] = values.index_select(0, index + start)
    dist.all_reduce(taken, group=shard.group)
    return taken
