"""Checkpoints of a run on N > 1 ranks (data parallel or `--class-parallel`) through torch.distributed.checkpoint.

Layout: `udon_fast.model.distributed_checkpoint` (a manifest `<name>.pt` naming a DCP folder
`<name>-step<S>/`).  `save_distributed_run`: every rank writes its part of the folder (DCP: replicated
tensors once, each classifier slice as its rank's shard of one DTensor); then rank 0 writes the manifest
atomically (temp file, fsync, rename: the commit point) and deletes the folders no manifest names any more.
A kill at any point leaves the previous manifest and its folder.  A failed write (a full disk) raises
`OutputError` on every rank, one line naming the folder, the ranks and the cause.

`load_distributed_run` resumes on M ranks, M = N or not: DCP reshards the classifier slices and their AdamW
moments to the M ranks' slices.  The global batch (per-rank batch x ranks) must be the one saved: the data
order is defined on the global batch (`data/sampling.py`), so the resumed run sees the same global batches.
Each domain's data position is the saved rank's own when M = N, else the furthest of the saved ranks' (they
are equal unless a rank skipped a corrupt file); the torch RNG state is saved rank r mod N's.
"""

import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard

from ..data import TrainLoader
from ..distributed import Ranks
from ..files.outputs import OutputError, writing
from ..model import UDONModel
from ..model.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from ..model.distributed_checkpoint import DISTRIBUTED, MODEL, OPTIMIZER, failure, folder
from ..sampler import DomainSampler
from .state import Progress


def _all_gather(value: Any, world_size: int) -> list:
    values = [None] * world_size
    dist.all_gather_object(values, value)
    return values


def _global(local: torch.Tensor, num_classes: int, ranks: Ranks) -> DTensor:
    """This rank's classifier rows (C_r, D) (or their AdamW moments, or the (C_r,) per-row step counts of a
    Partial-FC run) as its shard of the whole (C, D) (or (C,)) tensor."""
    mesh = init_device_mesh(ranks.device.type, (ranks.world_size,))
    shape = (num_classes, *local.shape[1:])
    return DTensor.from_local(
        local, mesh, [Shard(0)], run_check=False, shape=shape, stride=torch.empty(shape, device="meta").stride()
    )


def _row_shaped(value_shape, parameter: torch.Tensor) -> bool:
    """A classifier slice's state of one value per weight element or per row (Partial FC's step counts)."""
    return tuple(value_shape) in (tuple(parameter.shape), tuple(parameter.shape[:1]))


def _sharded_classes(model: UDONModel) -> dict[str, int]:
    """Parameter name -> C of the class-parallel classifier slices."""
    return {name: model.classifiers[name.split(".")[1]].num_classes for name, _ in model.sharded_parameters()}


def _model_tensors(model: UDONModel, ranks: Ranks) -> dict[str, torch.Tensor]:
    """`model.<name>`: the model's tensors (the live ones) but the classifiers' `layout` (rank-specific; the
    modules compute it), classifier slices as DTensors."""
    sharded = _sharded_classes(model)
    return {
        MODEL + name: _global(value, sharded[name], ranks) if name in sharded else value
        for name, value in model.state_dict(keep_vars=True).items()
        if not (name.startswith("classifiers.") and name.endswith(".layout"))
    }


def _optimizer_tensors(
    model: UDONModel, moments: dict[str, dict[str, torch.Tensor]], ranks: Ranks
) -> dict[str, torch.Tensor]:
    """`optimizer.<name>.<key>`: {parameter name: its AdamW state}, the moments of classifier slices as DTensors."""
    sharded, parameters = _sharded_classes(model), dict(model.named_parameters())
    return {
        f"{OPTIMIZER}{name}.{key}": (
            _global(value, sharded[name], ranks)
            if name in sharded and _row_shaped(value.shape, parameters[name])
            else value
        )
        for name, values in moments.items()
        for key, value in values.items()
    }


def _named_state(model: UDONModel, optimizer: torch.optim.Optimizer) -> dict[str, dict[str, torch.Tensor]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(parameter)]: moments for parameter, moments in optimizer.state.items()}


def save_distributed_run(
    path: Path,
    model: UDONModel,
    optimizer: torch.optim.Optimizer,
    sampler: DomainSampler,
    loader: TrainLoader,
    progress: Progress,
    ranks: Ranks,
    global_batch: int,
) -> None:
    """Write `path` (the manifest) and its DCP folder from every rank (a collective)."""
    path = Path(path)
    target = path.parent / f"{path.stem}-step{progress.step:09d}"

    def clear() -> None:  # a folder left by a save killed before its manifest
        if ranks.is_main and target.exists():
            with writing(target, "checkpoint folder"):
                shutil.rmtree(target)

    _collectively(clear, ranks)
    try:
        dcp.save(
            {**_model_tensors(model, ranks), **_optimizer_tensors(model, _named_state(model, optimizer), ranks)},
            checkpoint_id=target,
        )
    except CheckpointException as exc:
        raise OutputError(f"cannot write checkpoint folder {target}: {failure(exc)}") from None
    data = _all_gather(loader.state_dict(), ranks.world_size)
    rng = _all_gather(torch.get_rng_state(), ranks.world_size)
    error = None
    if ranks.is_main:
        groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        info = {
            "dir": target.name,
            "world_size": ranks.world_size,
            "step": progress.step,
            "global_batch": global_batch,
            "data": data,
            "rng": rng,
            "optimizer_groups": groups,
        }
        try:
            write_checkpoint(
                path,
                model.config,
                {},
                None,
                {"progress": vars(progress), "sampler": sampler.state_dict(), DISTRIBUTED: info},
            )
            for old in path.parent.glob(f"{path.stem}-step*"):
                if old.is_dir() and old != target:
                    shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:
            error = str(exc)
    errors = _all_gather(error, ranks.world_size)
    if errors[0] is not None:
        raise OutputError(errors[0] if ranks.is_main else f"rank 0 failed to write {path}: {errors[0]}")


def _manifest(path: Path, model: UDONModel) -> dict[str, Any]:
    manifest = read_checkpoint(path, model_state=False)
    info = manifest["extra"].get(DISTRIBUTED)
    if info is None:
        raise CheckpointError(f"--resume: {path} was written by a single-process run; resume it without torchrun")
    if manifest["config"] != model.config:
        raise CheckpointError(
            f"--resume: {path} was written for a different model "
            f"({manifest['config'].get('backbone_name')}, domains "
            f"{sorted(manifest['config'].get('domains', {}))}); use the same options or "
            f"another --out"
        )
    return manifest


def _load_tensors(path: Path, info: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    try:
        dcp.load(state, checkpoint_id=folder(path, info))
    except CheckpointException as exc:
        raise CheckpointError(f"cannot read checkpoint folder {folder(path, info)}: {failure(exc)}") from None


def _collectively(action, ranks: Ranks):
    """action() on every rank; an error on one rank is raised on every rank (none waits in a collective)."""
    try:
        result, error = action(), None
    except (CheckpointError, OSError, ValueError) as exc:
        result, error = None, exc
    errors = _all_gather(None if error is None else str(error), ranks.world_size)
    if error is not None:
        raise error
    failed = [rank for rank, message in enumerate(errors) if message is not None]
    if failed:
        raise CheckpointError(f"rank(s) {failed} failed: {errors[failed[0]]}")
    return result


def load_distributed_run(
    path: Path,
    model: UDONModel,
    optimizer: torch.optim.Optimizer,
    sampler: DomainSampler,
    loader: TrainLoader,
    ranks: Ranks,
    global_batch: int,
) -> Progress:
    """Restore what `save_distributed_run` wrote, on any number of ranks, into fresh objects (a collective)."""
    path = Path(path)
    manifest = _collectively(lambda: _manifest(path, model), ranks)
    info = manifest["extra"][DISTRIBUTED]
    if info["global_batch"] != global_batch:
        raise CheckpointError(
            f"--resume: {path} was written with a global batch of {info['global_batch']} images "
            f"(--batch-size x ranks); this run has {global_batch}: pass --batch-size "
            f"{info['global_batch'] // ranks.world_size} on {ranks.world_size} ranks"
            if info["global_batch"] % ranks.world_size == 0
            else f"--resume: {path} was written with a global batch of {info['global_batch']} images, "
            f"which {ranks.world_size} ranks cannot share equally"
        )
    metadata = dcp.FileSystemReader(folder(path, info)).read_metadata().state_dict_metadata
    sharded, parameters = _sharded_classes(model), dict(model.named_parameters())
    moments: dict[str, dict[str, torch.Tensor]] = {}
    for key, meta in metadata.items():
        if key.startswith(OPTIMIZER) and isinstance(meta, TensorStorageMetadata):
            name, _, moment = key[len(OPTIMIZER) :].rpartition(".")
            parameter = parameters[name]
            shaped = name in sharded and tuple(meta.size) in ((sharded[name], parameter.shape[1]), (sharded[name],))
            local = parameter.shape[: len(meta.size)] if shaped else meta.size
            moments.setdefault(name, {})[moment] = torch.empty(
                local, dtype=meta.properties.dtype, device=parameter.device
            )
    state = {**_model_tensors(model, ranks), **_optimizer_tensors(model, moments, ranks)}
    _collectively(lambda: _load_tensors(path, info, state), ranks)
    _copy_into_model(model, state)
    order = [n for group in optimizer.param_groups for n in _names(model, group["params"])]
    index = {name: i for i, name in enumerate(order)}
    optimizer.load_state_dict(
        {
            "state": {
                index[name]: {key: _local(state[f"{OPTIMIZER}{name}.{key}"]) for key in values}
                for name, values in moments.items()
            },
            "param_groups": [
                {**saved, "params": [index[n] for n in _names(model, group["params"])]}
                for saved, group in zip(info["optimizer_groups"], optimizer.param_groups)
            ],
        }
    )
    sampler.load_state_dict(manifest["extra"]["sampler"])
    loader.load_state_dict(
        info["data"][ranks.rank] if info["world_size"] == ranks.world_size else _furthest(info["data"])
    )
    torch.set_rng_state(info["rng"][ranks.rank % info["world_size"]])
    return Progress(**manifest["extra"]["progress"])


def _names(model: UDONModel, parameters) -> list[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for p in parameters]


def _local(value: torch.Tensor) -> torch.Tensor:
    return value.to_local() if isinstance(value, DTensor) else value


def _copy_into_model(model: UDONModel, state: dict[str, torch.Tensor]) -> None:
    """Copy the loaded `model.<name>` tensors into the model (a no-op where DCP loaded in place)."""
    with torch.no_grad():
        for name, value in model.state_dict(keep_vars=True).items():
            if MODEL + name in state:
                loaded = _local(state[MODEL + name])
                if loaded.data_ptr() != value.data_ptr():
                    value.copy_(loaded)


def _furthest(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One loader state whose every domain stands at the furthest position of `states`."""
    furthest = dict(states[0], domains={})
    for name in states[0]["domains"]:
        furthest["domains"][name] = max((s["domains"][name] for s in states), key=lambda p: (p["epoch"], p["position"]))
    return furthest


def load_distributed_weights(path: Path, model: UDONModel, ranks: Ranks) -> None:
    """Load the model tensors of a distributed checkpoint into `model` (this rank's slices; a collective)."""
    path = Path(path)
    info = _collectively(lambda: _manifest(path, model), ranks)["extra"][DISTRIBUTED]
    state = _model_tensors(model, ranks)
    _collectively(lambda: _load_tensors(path, info, state), ranks)
    _copy_into_model(model, state)
