"""Data parallelism for `torchrun`: every rank trains on the same domain each step, on its rows of the global batch.

The replicated parameters are synchronised by `torch.nn.parallel.DistributedDataParallel`
(`data_parallel`; the ranks: `udon_fast.distributed`): bucketed all-reduces that start while the backward pass is still running.  UDON trains
one domain per step (the other domains' heads get no gradient) and freezes the backbone in the first
epochs (no gradient at all), so DDP looks for the unused parameters every step; those without a gradient
on every rank keep none.  Class-parallel classifier slices stay out of DDP (each rank owns different
rows); their runs sum the replicated gradients instead of averaging them (`trainer/class_parallel.py`).
nccl on CUDA, gloo on CPU.
"""

from collections.abc import Iterable

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel


def _sum_hook(group: dist.ProcessGroup, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: all-reduce SUM of the bucket (DDP's default divides by the world size)."""
    work = dist.all_reduce(bucket.buffer(), group=group, async_op=True)
    return work.get_future().then(lambda future: future.value()[0])


def data_parallel(module: nn.Module, ignore: Iterable[str] = (), reduce: str = "mean") -> DistributedDataParallel:
    """`module` under DDP with a process group of its own (so its gradient all-reduces never interleave with
    the class-parallel loss's collectives on the default group).

    ignore: names of parameters (in `module`) DDP leaves alone: neither broadcast at the start nor reduced.
    reduce: "mean" (data parallel) or "sum" (the replicated gradients of a class-parallel run).
    Buffers are broadcast from rank 0 once, at construction, not before every forward
    (forward_sync_buffers=False): the only ones that could change, the BatchNorm running statistics, are
    frozen in training (`UDONModel.train`), so a per-forward broadcast would resend identical values every
    step.  The gradients are views into DDP's buckets (no second copy of them).
    """
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, list(ignore))
    group = dist.new_group(backend=dist.get_backend())
    device = next(module.parameters()).device
    wrapped = DistributedDataParallel(
        module,
        device_ids=[device] if device.type == "cuda" else None,
        process_group=group,
        find_unused_parameters=True,
        forward_sync_buffers=False,
        gradient_as_bucket_view=True,
    )
    if reduce == "sum":
        wrapped.register_comm_hook(group, _sum_hook)
    return wrapped
