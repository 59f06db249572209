"""The ranks of a `torchrun` job: joining the process group (nccl on CUDA, gloo on CPU), this rank's
device, and the few collectives the trainer and the evaluation share.  Without torchrun (WORLD_SIZE
unset or 1) there is one rank and every collective is a no-op."""

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


def mean_over_ranks(value: torch.Tensor, world_size: int) -> torch.Tensor:
    """Mean of a tensor over ranks (a copy)."""
    value = value.detach().clone()
    if world_size > 1:
        dist.all_reduce(value)
        value /= world_size
    return value


def all_reduce_sum(value: torch.Tensor, world_size: int) -> torch.Tensor:
    """Sum of a tensor over ranks (in place; returned)."""
    if world_size > 1:
        dist.all_reduce(value)
    return value


def barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
