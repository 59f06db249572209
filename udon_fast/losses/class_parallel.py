"""Class-parallel fused head loss on torch.distributed: each rank holds a slice of the classes.

`udon_loss(..., class_shard=ClassShard(start, num_classes))` (and `normalized_softmax_ce`) route here.
Rank r passes its own rows (e_t, e_s, labels: B_r rows, global labels in [0, num_classes)) and its
slice of the class weights: classes [start_r, start_r + C_r), contiguous slices that tile
[0, num_classes) over the group (uneven sizes, C_r = 0 and uneven B_r allowed).

Forward, per call:
1. one all-gather of (B_r, start_r, C_r, num_classes, Dt, Ds, input error) per rank: row counts for the
   uneven gathers, the slice layout check, and every rank raises together when one rank's inputs
   are bad (no rank is left waiting in a collective);
2. `_GatherRows`: all-gather of the embeddings (one buffer, both heads, padded to max B_r), and an
   all-gather of the labels: the global batch (B rows in rank order) on every rank;
3. the target logits z_y and their derivatives of the rows whose class this slice owns
   (`margins.target_terms`, 0 elsewhere), then the fused backend on the slice, with labels
   start-relative where this slice owns the class and NO_TARGET elsewhere: per row the slice's four
   log-sum-exps and its KL numerator;
4. all-reduce MAX of the (B, 4) log-sum-exps, then one all-reduce SUM of (B, 7): the four rescaled
   sums exp(lse_r - max), the KL numerator riding with the teacher softmax, and the target logits
   z_y of both heads (non-zero only on the owning rank).  lse = max + log(sum); CE = lse - z_y;
   KL = numerator / sum_a - lse_a + lse_b.  Per-row results are the same on every rank.
Backward: the backend's backward on the slice with the GLOBAL log-sum-exps gives dW of the slice,
complete (all global rows), and this slice's share of dE for every global row; `_GatherRows`'
backward reduce-scatters dE, so each rank receives the sum over slices for its own rows.

Communication per call: forward, all-gathers of 7 ints per rank, of B x (Dt + Ds) embeddings and of B
labels, and all-reduces of (B, 4) and (B, 7) floats; backward, one reduce-scatter of B x (Dt + Ds).  Nothing of size (B, C) or
(B, C_r) exists: the slice runs through the fused backends.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from . import backends
from .layout import Head, Stat
from .margins import NO_TARGET, Margin, target_terms

# The torch >= 2.14 names, else the older ones (deprecated there) for the torch 2.6 .. 2.13 supported.
all_gather_into = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
reduce_scatter_into = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


@dataclass(frozen=True)
class ClassShard:
    """This rank's share of class-parallel classifiers.

    start: first global class id of this rank's weight slice (the slice holds classes
        [start, start + W.shape[0])).
    num_classes: C, the number of classes over all ranks.
    group: the torch.distributed process group sharing the classes (None: the default group).
    """

    start: int
    num_classes: int
    group: object = None

    def __post_init__(self):
        for name in ("start", "num_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"ClassShard.{name} must be an int, got {type(value).__name__}")
        if self.num_classes < 1:
            raise ValueError(f"ClassShard.num_classes must be >= 1, got {self.num_classes}")
        if not 0 <= self.start <= self.num_classes:
            raise ValueError(f"ClassShard.start must lie in [0, {self.num_classes}], got {self.start}")


@dataclass(frozen=True)
class Plan:
    """The layout of one class-parallel call, the same on every rank: rows[r] = B_r, slices[r] = (start, C_r)."""

    group: object
    rank: int
    rows: tuple[int, ...]
    slices: tuple[tuple[int, int], ...]

    @property
    def world(self) -> int:
        return len(self.rows)

    @property
    def max_rows(self) -> int:
        return max(self.rows)

    @property
    def offset(self) -> int:
        """First global row of this rank (ranks' rows are concatenated in rank order)."""
        return sum(self.rows[: self.rank])


def _metadata(
    shard: ClassShard, batch: int, classes: int, dims: tuple[int, int], failed: bool, device: torch.device
) -> torch.Tensor:
    """All ranks' (B_r, start_r, C_r, num_classes, Dt, Ds, failed): (world, 7) int64 on the CPU."""
    world = dist.get_world_size(shard.group)
    mine = torch.tensor(
        [batch, shard.start, classes, shard.num_classes, *dims, int(failed)], dtype=torch.int64, device=device
    )
    table = torch.empty(world * mine.numel(), dtype=torch.int64, device=device)
    all_gather_into(table, mine, group=shard.group)
    return table.view(world, -1).cpu()


def plan(shard: ClassShard, check: Callable[[], None], *, e_t, w_t, e_s, what: str) -> Plan:
    """Run this rank's argument checks, agree on the layout with every rank of `shard.group`, or raise on all.

    check() raises ValueError/TypeError for bad local inputs; then e_t (B_r, Dt), w_t (C_r, Dt) and
    e_s (B_r, Ds) or None give this rank's layout.  Raises the local error on a rank whose inputs are
    bad and a ValueError naming the bad ranks on the others; a ValueError on every rank when the slices
    do not tile [0, num_classes) in rank order or the ranks disagree on num_classes or embedding widths.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            f"{what}: class_shard needs an initialised torch.distributed process group "
            f"(torch.distributed.init_process_group, or a torchrun launch)"
        )
    try:
        check()
        error = None
    except (TypeError, ValueError) as exc:
        error = exc
    if error is None:
        dims = (e_t.shape[1], 0 if e_s is None else e_s.shape[1])
        table = _metadata(shard, e_t.shape[0], w_t.shape[0], dims, False, e_t.device)
    else:
        comm = (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend(shard.group) == "nccl"
            else torch.device("cpu")
        )
        table = _metadata(shard, 0, 0, (0, 0), True, comm)
    if error is not None:
        raise error
    failed = [r for r in range(len(table)) if table[r, 6]]
    if failed:
        raise ValueError(
            f"{what}: rank(s) {failed} of the class-parallel group rejected their inputs (their own error says why)"
        )
    rows, starts, counts, totals = (table[:, i].tolist() for i in range(4))
    if len(set(totals)) != 1:
        raise ValueError(f"{what}: the ranks disagree on ClassShard.num_classes: {totals}")
    if len({tuple(d) for d in table[:, 4:6].tolist()}) != 1:
        raise ValueError(f"{what}: the ranks' embedding widths differ: (Dt, Ds) per rank {table[:, 4:6].tolist()}")
    expected = 0
    for start, count in zip(starts, counts):
        if start != expected:
            break
        expected += count
    if expected != totals[0] or starts[0] != 0:
        layout = [(s, s + c) for s, c in zip(starts, counts)]
        raise ValueError(
            f"{what}: the ranks' class slices {layout} must tile [0, {totals[0]}) contiguously in rank order"
        )
    return Plan(shard.group, dist.get_rank(shard.group), tuple(rows), tuple(zip(starts, counts)))


class _GatherRows(torch.autograd.Function):
    """All-gather of row blocks (B_r, D_i) from every rank -> (B, D_i) in rank order.

    Backward: the gradient of each rank's copy is summed over ranks and each rank keeps its rows
    (a reduce-scatter): what makes per-slice partial gradients add up to the full one.
    """

    @staticmethod
    def forward(ctx, plan: Plan, *blocks: torch.Tensor):
        dtype = blocks[0].dtype
        for block in blocks[1:]:
            dtype = torch.promote_types(dtype, block.dtype)
        ctx.plan, ctx.widths, ctx.dtypes = plan, [b.shape[1] for b in blocks], [b.dtype for b in blocks]
        local = torch.cat([b.to(dtype) for b in blocks], dim=1)
        padded = local.new_zeros(plan.max_rows, local.shape[1])
        padded[: local.shape[0]] = local
        gathered = local.new_empty(plan.world * plan.max_rows, local.shape[1])
        all_gather_into(gathered, padded, group=plan.group)
        gathered = gathered.view(plan.world, plan.max_rows, -1)
        rows = torch.cat([gathered[r, :n] for r, n in enumerate(plan.rows)])
        return tuple(part.to(t).contiguous() for part, t in zip(rows.split(ctx.widths, dim=1), ctx.dtypes))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        plan = ctx.plan
        total = sum(plan.rows)
        dtype = grads[0].dtype if grads[0] is not None else torch.float32
        parts = [
            torch.zeros(total, w, dtype=dtype, device=_device(grads)) if g is None else g.to(dtype)
            for g, w in zip(grads, ctx.widths)
        ]
        full = torch.cat(parts, dim=1)
        padded = full.new_zeros(plan.world, plan.max_rows, full.shape[1])
        offset = 0
        for r, n in enumerate(plan.rows):
            padded[r, :n] = full[offset : offset + n]
            offset += n
        padded = padded.view(plan.world * plan.max_rows, -1)
        mine = full.new_empty(plan.max_rows, full.shape[1])
        reduce_scatter_into(mine, padded, group=plan.group)
        mine = mine[: plan.rows[plan.rank]]
        return (None, *(part.to(t) for part, t in zip(mine.split(ctx.widths, dim=1), ctx.dtypes)))


def _device(tensors) -> torch.device:
    return next(t.device for t in tensors if t is not None)


def gather_labels(labels: torch.Tensor, plan: Plan) -> torch.Tensor:
    """(B_r,) int64 per rank -> the global (B,) int64 labels in rank order (no gradient)."""
    padded = labels.new_full((plan.max_rows,), NO_TARGET)
    padded[: labels.shape[0]] = labels
    gathered = labels.new_empty(plan.world * plan.max_rows)
    all_gather_into(gathered, padded, group=plan.group)
    gathered = gathered.view(plan.world, plan.max_rows)
    return torch.cat([gathered[r, :n] for r, n in enumerate(plan.rows)])


def _slice_targets(*, e_t, w_t, e_s, w_s, local, margin: Margin, scale: float):
    """z_y, dz_y (B, H) f32 of the rows this slice owns (local label != NO_TARGET), 0 elsewhere."""
    heads = [(e_t, w_t)] if e_s is None else [(e_t, w_t), (e_s, w_s)]
    if w_t.shape[0] == 0:
        zeros = torch.zeros(e_t.shape[0], len(heads), device=e_t.device)
        return zeros, zeros.clone()
    return target_terms(margin, scale, labels=local, heads=heads)


# Columns of `_merge`'s summed (B, 7) buffer: the `Stat` sums, the KL numerator, z_y (`Head` order).
_PACKED_SUMS = slice(0, len(Stat))
_PACKED_KL = len(Stat)
_PACKED_Z_Y = slice(len(Stat) + 1, len(Stat) + 1 + len(Head))


def _merge(plan: Plan, *, stats: torch.Tensor, kl_mean: torch.Tensor, z_y: torch.Tensor):
    """Per-slice (B, 4) log-sum-exps, (B,) KL means and (B, 2) owner target logits -> global (B, 4)
    log-sum-exps, (B,) KL numerator over sum_a, (B, 2) target logits (two all-reduces)."""
    top = stats.clone()
    dist.all_reduce(top, op=dist.ReduceOp.MAX, group=plan.group)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # all -inf: a single head's KL columns
    sums = torch.exp(stats - top)
    packed = torch.cat([sums, (sums[:, Stat.LSE_A] * kl_mean)[:, None], z_y], dim=1)
    dist.all_reduce(packed, group=plan.group)
    lse = top + torch.log(packed[:, _PACKED_SUMS])
    return lse, packed[:, _PACKED_KL] / packed[:, Stat.LSE_A], packed[:, _PACKED_Z_Y]


class _ShardedHead(torch.autograd.Function):
    """The fused head loss of this rank's class slice over the global batch, merged over ranks.

    Inputs: e_t (B, Dt), w_t (C_r, Dt), e_s (B, Ds) / w_s (C_r, Ds) or None, local labels (B,) int64
    (start-relative or NO_TARGET).  Outputs: global per-row ce_t, ce_s, kl (B,) f32, equal on all ranks.
    """

    @staticmethod
    def forward(ctx, e_t, w_t, e_s, w_s, local, plan: Plan, backend: str, margin: Margin, params: tuple):
        batch, two_heads = e_t.shape[0], e_s is not None
        z_y, dz_y = _slice_targets(e_t=e_t, w_t=w_t, e_s=e_s, w_s=w_s, local=local, margin=margin, scale=params[0])
        if w_t.shape[0] > 0:
            scale, tau_t, tau_s = params
            _, _, kl, stats = backends.fused_backend(backend).forward(
                e_t=e_t,
                w_t=w_t,
                e_s=e_s,
                w_s=w_s,
                labels=local,
                z_y=z_y,
                dz_y=dz_y,
                scale=scale,
                tau_t=tau_t,
                tau_s=tau_s,
            )
            kl_mean = kl + stats[:, Stat.LSE_A] - stats[:, Stat.LSE_B] if two_heads else torch.zeros_like(kl)
        else:
            stats = torch.full((batch, len(Stat)), float("-inf"), device=e_t.device)
            kl_mean = torch.zeros(batch, device=e_t.device)
        owner_z_y = z_y if two_heads else torch.cat([z_y, torch.zeros_like(z_y)], dim=1)
        lse, kl_mean, global_z_y = _merge(
            plan, stats=stats, kl_mean=torch.where(torch.isfinite(kl_mean), kl_mean, 0.0), z_y=owner_z_y
        )
        ce_t = lse[:, Stat.LSE_ZT] - global_z_y[:, Head.TEACHER]
        if two_heads:
            ce_s = lse[:, Stat.LSE_ZS] - global_z_y[:, Head.STUDENT]
            kl = kl_mean - lse[:, Stat.LSE_A] + lse[:, Stat.LSE_B]
        else:
            ce_s, kl = torch.zeros_like(ce_t), torch.zeros_like(ce_t)
        ctx.save_for_backward(e_t, w_t, e_s, w_s, local, lse, z_y, dz_y)
        ctx.backend, ctx.params = backend, params
        return ce_t, ce_s, kl

    @staticmethod
    def backward(ctx, g_ce_t, g_ce_s, g_kl):
        e_t, w_t, e_s, w_s, local, lse, z_y, dz_y = ctx.saved_tensors
        if w_t.shape[0] == 0:
            d_e_s = None if e_s is None else torch.zeros_like(e_s)
            d_w_s = None if w_s is None else torch.zeros_like(w_s)
            return torch.zeros_like(e_t), torch.zeros_like(w_t), d_e_s, d_w_s, None, None, None, None, None
        rows = [
            torch.zeros_like(lse[:, Stat.LSE_ZT]) if g is None else g.float().contiguous()
            for g in (g_ce_t, g_ce_s, g_kl)
        ]
        scale, tau_t, tau_s = ctx.params
        d_e_t, d_w_t, d_e_s, d_w_s = backends.fused_backend(ctx.backend).backward(
            g_ce_t=rows[0],
            g_ce_s=rows[1],
            g_kl=rows[2],
            e_t=e_t,
            w_t=w_t,
            e_s=e_s,
            w_s=w_s,
            labels=local,
            stats=lse,
            z_y=z_y,
            dz_y=dz_y,
            scale=scale,
            tau_t=tau_t,
            tau_s=tau_s,
        )
        if e_s is None:
            d_e_s = d_w_s = None
        return d_e_t, d_w_t, d_e_s, d_w_s, None, None, None, None, None


def gather(plan: Plan, *, e_t: torch.Tensor, e_s: torch.Tensor | None, labels: torch.Tensor):
    """All ranks' rows in rank order: (B, Dt) teacher and (B, Ds) student (or None) embeddings,
    differentiable (`_GatherRows`), and the (B,) int64 global labels."""
    gathered = _GatherRows.apply(plan, *((e_t,) if e_s is None else (e_t, e_s)))
    return gathered[0], (None if e_s is None else gathered[1]), gather_labels(labels, plan)


def slice_labels(plan: Plan, all_labels: torch.Tensor) -> torch.Tensor:
    """Global (B,) labels -> relative to this rank's slice, NO_TARGET where the slice does not own the class."""
    start, count = plan.slices[plan.rank]
    owned = (all_labels >= start) & (all_labels < start + count)
    return torch.where(owned, all_labels - start, torch.full_like(all_labels, NO_TARGET))


def gathered_head_rows(
    plan: Plan,
    backend: str,
    *,
    all_e_t: torch.Tensor,
    w_t: torch.Tensor,
    all_e_s: torch.Tensor | None,
    w_s: torch.Tensor | None,
    local: torch.Tensor,
    margin: Margin,
    scale: float,
    tau_t: float,
    tau_s: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`head_rows` on rows already gathered (`gather`) and labels relative to the slice (`slice_labels`)."""
    return _ShardedHead.apply(
        all_e_t,
        w_t.contiguous(),
        all_e_s,
        None if w_s is None else w_s.contiguous(),
        local,
        plan,
        backend,
        margin,
        (float(scale), float(tau_t), float(tau_s)),
    )


class _SumOverRanks(torch.autograd.Function):
    """All-reduce SUM of a per-rank partial whose result feeds the same loss on every rank: the
    gradient of each rank's partial is the (identical) upstream gradient, so backward passes it through."""

    @staticmethod
    def forward(ctx, plan: Plan, partial: torch.Tensor):
        total = partial.clone()
        dist.all_reduce(total, group=plan.group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, grad


def sum_over_ranks(plan: Plan, partial: torch.Tensor) -> torch.Tensor:
    """Sum of `partial` over the ranks of `plan`, differentiable (see `_SumOverRanks`)."""
    return _SumOverRanks.apply(plan, partial)


def head_rows(
    plan: Plan,
    backend: str,
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
    """Global per-row teacher CE, student CE and KL, each (B,) float32 (B = all ranks' rows), the same on
    every rank; differentiable w.r.t. this rank's e_t, w_t, e_s, w_s (see the module docstring)."""
    all_e_t, all_e_s, all_labels = gather(plan, e_t=e_t, e_s=e_s, labels=labels)
    return gathered_head_rows(
        plan,
        backend,
        all_e_t=all_e_t,
        w_t=w_t,
        all_e_s=all_e_s,
        w_s=w_s,
        local=slice_labels(plan, all_labels),
        margin=margin,
        scale=scale,
        tau_t=tau_t,
        tau_s=tau_s,
    )
