"""Run state in atomic checkpoints: everything an exact resume needs.

`last.pt` holds the model, the optimizer, the sampler, each domain's data position, the RNG
states, the step reached, the best validation score so far, the untrained model's and the off-the-shelf
backbone's results;
`best.pt` the model of the best validation epoch.  Both are written through
`model.save_checkpoint` (temp file, fsync, rename), so a kill at any point leaves the previous file.
These are the single-process checkpoints; runs on several ranks write `distributed_checkpoint`'s.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import TrainLoader
from ..errors import InputError
from ..model import UDONModel
from ..model.checkpoint import read_checkpoint, save_checkpoint
from ..model.distributed_checkpoint import DISTRIBUTED
from ..sampler import DomainSampler


@dataclass
class Progress:
    """Counters that travel in `last.pt` (plain Python values)."""

    step: int = 0
    best_score: float = float("-inf")
    best_step: int = -1
    initial: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    validations: list[dict[str, Any]] = field(default_factory=list)


def save_run(
    path: Path,
    model: UDONModel,
    optimizer: torch.optim.Optimizer,
    sampler: DomainSampler,
    loader: TrainLoader,
    progress: Progress,
) -> None:
    extra = {
        "progress": vars(progress),
        "sampler": sampler.state_dict(),
        "data": loader.state_dict(),
        "rng": torch.get_rng_state(),
    }
    save_checkpoint(path, model, optimizer, extra=extra)


def load_run(
    path: Path, model: UDONModel, optimizer: torch.optim.Optimizer, sampler: DomainSampler, loader: TrainLoader
) -> Progress:
    """Restore everything `save_run` wrote into the given (freshly built) objects; return the counters."""
    checkpoint = read_checkpoint(path, map_location="cpu", model_state=False)
    if DISTRIBUTED in checkpoint["extra"]:
        raise InputError(
            f"--resume: {path} was written by a run on {checkpoint['extra'][DISTRIBUTED]['world_size']} "
            f"ranks; resume it with torchrun (on any number of ranks)"
        )
    if checkpoint["config"] != model.config:
        raise InputError(
            f"--resume: {path} was written for a different model "
            f"({checkpoint['config'].get('backbone_name')}, domains "
            f"{sorted(checkpoint['config'].get('domains', {}))}); use the same options or another --out"
        )
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    extra = checkpoint["extra"]
    sampler.load_state_dict(extra["sampler"])
    loader.load_state_dict(extra["data"])
    torch.set_rng_state(extra["rng"])
    return Progress(**extra["progress"])
