"""Checkpoints of a `--class-parallel` run: per-rank shards of the classifier slices and a manifest.

Layout (`save_sharded_run` / `load_sharded_run`; docs/class_parallel.md):
- `checkpoints/shards/<name>-step<S>-rank<r>-of<W>.pt`, one per rank (atomic): the rank's classifier slices,
  their AdamW states, its data position and RNG state;
- `checkpoints/<name>.pt`, the manifest, written by rank 0 after every shard is on disk: an ordinary
  udon_fast checkpoint of the model without classifier rows (config "class_slices" all [0, 0], empty
  (0, D) classifier tensors), the replicated AdamW states, the sampler and counters, and under
  extra["class_parallel"] the world size, step and each shard's file, size and slices.
A kill at any point leaves the previous manifest with its shards (stale shards are deleted only after the
new manifest is in place).  `udon_fast.model.load_model(manifest)` rebuilds a model that embeds; resume checks
every shard against the manifest; `consolidate_checkpoint` writes one file with the full classifiers.
"""
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..data import TrainLoader
from ..model import UDONModel
from ..model.checkpoint import CheckpointError, atomic_save, read_checkpoint, write_checkpoint
from ..sampler import DomainSampler
from .class_parallel import classifier_names
from .distributed import Ranks
from .state import Progress

SHARD_FORMAT = "udon_fast.class_parallel_shard"
SHARD_VERSION = 1


def _collectively(world_size: int, action: Callable[[], Any], what: str) -> Any:
    """action() on this rank; if it failed on any rank, raise on every rank (none is left in a collective)."""
    try:
        result, error = action(), None
    except Exception as exc:  # re-raised below, on this rank and (named) on the others
        result, error = None, exc
    errors = [None] * world_size
    dist.all_gather_object(errors, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = {rank: message for rank, message in enumerate(errors) if message is not None}
    if failed:
        rank, message = next(iter(failed.items()))
        raise CheckpointError(f"{what} failed on rank(s) {sorted(failed)}; rank {rank}: {message}")
    return result


def _all_gather(world_size: int, value: Any) -> list:
    values = [None] * world_size
    dist.all_gather_object(values, value)
    return values


def shard_path(manifest: Path, step: int, rank: int, world_size: int) -> Path:
    """The shard file of `rank` for the manifest `manifest` (e.g. checkpoints/last.pt) at `step`."""
    return manifest.parent / "shards" / f"{manifest.stem}-step{step:09d}-rank{rank:05d}-of{world_size:05d}.pt"


def embedding_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A model config without classifier rows (what a manifest records)."""
    return {**config, "class_slices": {domain: [0, 0] for domain in config["domains"]}}


def _optimizer_indices(model: UDONModel, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Parameter name -> its index in `optimizer.state_dict()["state"]`."""
    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    return {name: index for index, name in enumerate(order)}


def save_sharded_run(path: Path, model: UDONModel, optimizer: torch.optim.Optimizer, sampler: DomainSampler,
                     loader: TrainLoader, progress: Progress, ranks: Ranks) -> None:
    """Every rank writes its shard, then rank 0 the manifest at `path`, then stale shards go (collective)."""
    path = Path(path)
    rank, world = ranks.rank, ranks.world_size
    names = classifier_names(model)
    parameters = dict(model.named_parameters())
    index = _optimizer_indices(model, optimizer)
    optimizer_state = optimizer.state_dict()
    sharded = {index[name] for name in names}
    shard = shard_path(path, progress.step, rank, world)
    payload = {
        "format": SHARD_FORMAT, "version": SHARD_VERSION, "rank": rank, "world_size": world, "step": progress.step,
        "class_slices": model.config["class_slices"],
        "classifiers": {name: parameters[name].detach() for name in names},
        "optimizer": {name: optimizer_state["state"][index[name]] for name in names
                      if index[name] in optimizer_state["state"]},
        "data": loader.state_dict(), "rng": torch.get_rng_state(),
    }
    size = _collectively(world, lambda: atomic_save(shard, payload).stat().st_size, f"writing shard {shard.name}")
    entries = [{"file": f"shards/{shard_path(path, progress.step, r, world).name}", "rank": r, "bytes": b,
                "class_slices": s} for r, (b, s) in enumerate(_all_gather(world, (size, model.config["class_slices"])))]

    def write_manifest():
        if rank != 0:
            return
        state = {name: (value.new_empty((0, value.shape[1])) if name in names else value)
                 for name, value in model.state_dict().items()}
        replicated = {"state": {i: s for i, s in optimizer_state["state"].items() if i not in sharded},
                      "param_groups": optimizer_state["param_groups"]}
        extra = {"progress": vars(progress), "sampler": sampler.state_dict(),
                 "class_parallel": {"world_size": world, "step": progress.step, "shards": entries}}
        write_checkpoint(path, embedding_config(model.config), state, replicated, extra)

    _collectively(world, write_manifest, f"writing {path}")
    for old in shard.parent.glob(f"{path.stem}-step*-rank{rank:05d}-of*.pt"):
        if old != shard:
            old.unlink(missing_ok=True)


def _read_shard(path: Path, manifest: dict[str, Any], rank: int, world_size: int) -> dict[str, Any]:
    """This rank's shard of the manifest at `path`, checked against the manifest entry."""
    info = manifest["extra"].get("class_parallel")
    if info is None:
        raise CheckpointError(f"--resume: {path} was written without --class-parallel; resume it without that flag")
    if info["world_size"] != world_size:
        raise CheckpointError(f"--resume: {path} holds classifier shards of {info['world_size']} ranks but this run "
                              f"has {world_size}; resume with torchrun --nproc_per_node {info['world_size']}")
    entry = info["shards"][rank]
    file = path.parent / entry["file"]
    if not file.is_file():
        raise CheckpointError(f"--resume: shard {file} listed in {path} is missing")
    if file.stat().st_size != entry["bytes"]:
        raise CheckpointError(f"--resume: shard {file} has {file.stat().st_size} bytes but {path} lists "
                              f"{entry['bytes']}: not the shard written with that manifest")
    try:
        shard = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated / corrupt files raise many types
        raise CheckpointError(f"--resume: cannot read shard {file}: {type(exc).__name__}: {exc}") from exc
    expected = {"format": SHARD_FORMAT, "version": SHARD_VERSION, "rank": rank, "world_size": world_size,
                "step": info["step"], "class_slices": entry["class_slices"]}
    found = {key: shard.get(key) for key in expected} if isinstance(shard, dict) else {}
    if found != expected:
        raise CheckpointError(f"--resume: shard {file} does not match {path}: expected {expected}, found {found}")
    return shard


def load_sharded_run(path: Path, model: UDONModel, optimizer: torch.optim.Optimizer, sampler: DomainSampler,
                     loader: TrainLoader, ranks: Ranks) -> Progress:
    """Restore what `save_sharded_run` wrote (same world size) into freshly built objects (collective)."""
    path = Path(path)

    def load() -> Progress:
        manifest = read_checkpoint(path, map_location="cpu")
        shard = _read_shard(path, manifest, ranks.rank, ranks.world_size)
        if manifest["config"] != embedding_config(model.config) or shard["class_slices"] != model.config["class_slices"]:
            raise CheckpointError(f"--resume: {path} was written for a different model or class layout; use the same "
                                  f"options and number of ranks, or another --out")
        model.load_state_dict({**manifest["model"], **shard["classifiers"]})
        index = _optimizer_indices(model, optimizer)
        replicated = manifest["optimizer"]
        state = {**replicated["state"], **{index[name]: s for name, s in shard["optimizer"].items()}}
        optimizer.load_state_dict({"state": state, "param_groups": replicated["param_groups"]})
        sampler.load_state_dict(manifest["extra"]["sampler"])
        loader.load_state_dict(shard["data"])
        torch.set_rng_state(shard["rng"])
        return Progress(**manifest["extra"]["progress"])

    return _collectively(ranks.world_size, load, f"resuming from {path}")


def load_embedding_weights(model: UDONModel, path: Path) -> None:
    """Load everything but the classifiers from a class-parallel manifest into `model` (keeps its slices)."""
    state = read_checkpoint(path, map_location="cpu")["model"]
    names = set(classifier_names(model))
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k not in names}, strict=False)
    if set(missing) != names or unexpected:
        raise CheckpointError(f"{path} does not fit this model: missing {sorted(set(missing) - names)}, "
                              f"unexpected {sorted(unexpected)}")


def consolidate_checkpoint(manifest: str | Path, out: str | Path) -> Path:
    """Write one ordinary checkpoint (no optimizer) with the full classifiers gathered from every shard of
    `manifest`; `load_model(out)` then holds the classifiers too.  Runs in one process."""
    manifest = Path(manifest)
    checkpoint = read_checkpoint(manifest, map_location="cpu")
    info = checkpoint["extra"].get("class_parallel")
    if info is None:
        raise CheckpointError(f"{manifest} is not a class-parallel checkpoint (no extra['class_parallel'])")
    shards = [_read_shard(manifest, checkpoint, rank, info["world_size"]) for rank in range(info["world_size"])]
    state = dict(checkpoint["model"])
    for name in state:
        if name.startswith(("teacher_classifiers.", "student_classifiers.")):
            state[name] = torch.cat([shard["classifiers"][name] for shard in shards])
    config = {k: v for k, v in checkpoint["config"].items() if k != "class_slices"}
    extra = {k: v for k, v in checkpoint["extra"].items() if k != "class_parallel"}
    return write_checkpoint(out, config, state, None, extra)
