"""The layout of a multi-rank run's checkpoints (torch.distributed.checkpoint, DCP) and reading its model
in one process.

A checkpoint `checkpoints/<name>.pt` of a run on N > 1 ranks is a small ordinary udon_fast checkpoint (the
manifest: the model config, no tensors, `extra[DISTRIBUTED]`) next to the DCP folder it names,
`checkpoints/<name>-step<S>/` (`.metadata` plus the ranks' `.distcp` files).  The DCP folder holds, by
flat key:
- `model.<name>`: every tensor of `UDONModel.state_dict()` but the classifiers' `layout`; a class-parallel
  classifier slice is saved as its rank's shard of one DTensor (`Shard(0)`, torch.chunk's layout), so
  the folder holds each classifier whole, whatever the number of ranks;
- `optimizer.<name>.<key>`: the AdamW state of each parameter that has one (`exp_avg`, `exp_avg_sq`
  sharded like their parameter; `step`).
`extra[DISTRIBUTED]` = {"dir", "world_size", "step", "global_batch", "data": [per-rank loader states],
"rng": [per-rank torch RNG states], "optimizer_groups": [AdamW hyperparameters per group]}.

`read_model_state` rebuilds the whole (unsharded) model state dict from the folder: `read_checkpoint`
returns it under "model", so `load_model`, `load_embedder`, `evaluate`, `embed` and `export` read these
checkpoints as they read a single file.  Writing and resuming: `udon_fast.trainer.distributed_checkpoint`.
"""

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

DISTRIBUTED = "distributed_checkpoint"
MODEL = "model."
OPTIMIZER = "optimizer."


def folder(manifest: Path, info: dict[str, Any]) -> Path:
    """The DCP folder a manifest names (a sibling of the manifest)."""
    return Path(manifest).parent / info["dir"]


def failure(exc: CheckpointException) -> str:
    """One line from a DCP failure: the ranks and the first rank's error."""
    failures = exc.failures
    rank, (error, _) = next(iter(sorted(failures.items(), key=lambda item: item[0])))
    cause = getattr(error, "strerror", None) or f"{type(error).__name__}: {error}"
    return f"rank(s) {sorted(failures)}; rank {rank}: {cause}"


def read_model_state(
    manifest: Path, checkpoint: dict[str, Any], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """The whole model's state dict (classifiers unsharded, with their whole-model `layout`) from the DCP folder
    the manifest `checkpoint` (read from `manifest`) names; one process, no process group needed."""
    from .checkpoint import CheckpointError
    from .sharded_classifier import layout

    where = folder(manifest, checkpoint["extra"][DISTRIBUTED])
    reader = dcp.FileSystemReader(where)
    try:
        metadata = reader.read_metadata()
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{manifest} names the checkpoint folder {where}, which cannot be read: {type(exc).__name__}: {exc}"
        ) from exc
    state = {
        key: torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in metadata.state_dict_metadata.items()
        if key.startswith(MODEL) and isinstance(meta, TensorStorageMetadata)
    }
    try:
        with warnings.catch_warnings():  # DCP warns that it loads in one process: what no_dist asks for
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
            dcp.load(state, storage_reader=reader, no_dist=True)
    except CheckpointException as exc:
        raise CheckpointError(f"cannot read checkpoint folder {where}: {failure(exc)}") from None
    model = {key[len(MODEL) :]: value.to(map_location) for key, value in state.items()}
    for domain, classes in checkpoint["config"]["domains"].items():
        model[f"classifiers.{domain}.layout"] = layout(classes).to(map_location)
    return model
