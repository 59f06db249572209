"""Data parallelism for `torchrun`: every rank trains on the same domain each step, on its own shard.

Gradients are averaged with one all-reduce per step over the parameters that received a gradient
(the same set on every rank, since all ranks share the step's domain); nccl on CUDA, gloo on CPU.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup() -> Ranks:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Ranks(rank, world_size, device)


def average_gradients(parameters, world_size: int) -> None:
    """All-reduce (mean) the gradients of `parameters` that have one, as one flat buffer."""
    _all_reduce_gradients(parameters, world_size, mean=True)


def sum_gradients(parameters, world_size: int) -> None:
    """All-reduce (sum) the gradients of `parameters` that have one, as one flat buffer."""
    _all_reduce_gradients(parameters, world_size, mean=False)


def _all_reduce_gradients(parameters, world_size: int, mean: bool) -> None:
    if world_size == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    if mean:
        flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def mean_over_ranks(value: torch.Tensor, world_size: int) -> torch.Tensor:
    """Mean of a tensor over ranks (a copy)."""
    value = value.detach().clone()
    if world_size > 1:
        dist.all_reduce(value)
        value /= world_size
    return value


def broadcast_from_main(tensors, world_size: int) -> None:
    """Overwrite `tensors` in place with rank 0's values (the same list, in the same order, on every rank)."""
    if world_size > 1:
        for tensor in tensors:
            dist.broadcast(tensor, src=0)


def barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
