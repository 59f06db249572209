"""Evaluation across the ranks of a torch.distributed job: each rank embeds a share, rank 0 gathers.

A split of N images in batches of `batch_size` is cut into W contiguous runs of whole batches
(`rank_share`), so every image is embedded inside exactly the batch it has in a single-rank run: the
gathered embeddings are those of single-rank evaluation, bit for bit on the same hardware and threads.
`gather_to_main` collects the (n_r, D) float32 parts on rank 0 in rank order (one all-gather of the row
counts, one gather of padded blocks; CUDA tensors under nccl); `broadcast_from_main` shares rank 0's
results.  Every rank of the default process group must call these.
"""

import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..losses.class_parallel import all_gather_into


def rank_share(items: int, batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """[lo, hi): the whole batches rank `rank` of `world_size` embeds out of `items` (contiguous, in order)."""
    batches = math.ceil(items / batch_size)
    first, last = batches * rank // world_size, batches * (rank + 1) // world_size
    return min(first * batch_size, items), min(last * batch_size, items)


def _comm_device(device: torch.device) -> torch.device:
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_to_main(part: np.ndarray, device: torch.device) -> np.ndarray | None:
    """Concatenate every rank's (n_r, D) float32 `part` in rank order on rank 0 (None on the other ranks)."""
    world, comm = dist.get_world_size(), _comm_device(torch.device(device))
    rows = torch.tensor([part.shape[0]], device=comm)
    counts = torch.empty(world, dtype=rows.dtype, device=comm)
    all_gather_into(counts, rows)
    counts = counts.tolist()
    padded = torch.zeros(max(counts), part.shape[1], dtype=torch.float32, device=comm)
    padded[: part.shape[0]] = torch.from_numpy(part).to(comm)
    main = dist.get_rank() == 0
    blocks = [torch.empty_like(padded) for _ in range(world)] if main else None
    dist.gather(padded, blocks, dst=0)
    if not main:
        return None
    return torch.cat([block[:n] for block, n in zip(blocks, counts)]).cpu().numpy()


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's `value` on every rank (pickled)."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
