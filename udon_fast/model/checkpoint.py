"""Checkpoints shared by the trainer and the evaluator: one file rebuilds the model.

Layout (a dict saved with `torch.save`, read back with `weights_only=True`):
`{"format": "udon_fast.checkpoint", "version": 1, "config": UDONModel.config,
"model": state_dict, "optimizer": state_dict or None, "extra": dict}`.
`extra` must hold only what `torch.load(weights_only=True)` accepts (tensors, numbers, strings,
lists, tuples, dicts), e.g. step, epoch, metrics, `DomainSampler.state_dict()`.

Checksums: `torch.save` writes a zip archive in which every record (the pickle, each tensor's bytes)
carries the CRC-32 of its content; `torch.load` does not check them, `read_checkpoint` does (with
`zipfile`, before loading), so a flipped or overwritten byte anywhere in a record's content is
refused with one line naming the file and the record.
"""

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..files.outputs import atomic_write
from ..kill_points import kill_point
from . import distributed_checkpoint
from .udon import UDONModel

FORMAT = "udon_fast.checkpoint"
VERSION = 1
ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


def save_checkpoint(
    path: str | Path,
    model: UDONModel,
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (`files.outputs.atomic_write`: temp file, fsync, `os.replace`).

    A crash, a kill or a full disk leaves either the previous file or the new one at `path`, never a
    partial file; a failed write raises `OutputError` naming `path` and the cause.  Returns the path.
    """
    return write_checkpoint(
        path, model.config, model.state_dict(), optimizer.state_dict() if optimizer is not None else None, extra
    )


def write_checkpoint(
    path: str | Path,
    config: dict[str, Any],
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """`save_checkpoint` from the parts: a model config (`UDONModel.config`), its state dict, an optimizer
    state dict or None and `extra`."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": config,
        "model": model_state,
        "optimizer": optimizer_state,
        "extra": dict(extra or {}),
    }
    return atomic_save(path, payload)


def atomic_save(path: str | Path, payload: Any) -> Path:
    """`torch.save(payload)` to `path` atomically (`files.outputs.atomic_write`); `OutputError` on failure."""
    path = Path(path)
    with atomic_write(path, "checkpoint") as f:
        torch.save(payload, f)
        kill_point("checkpoint_write")
    return path


def verify_checksums(path: Path) -> None:
    """Check every record of the zip archive `path` against its stored CRC-32; `CheckpointError` naming
    the file and the first damaged record otherwise."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path}: it is truncated or damaged ({exc}); use another checkpoint or rerun"
        ) from None
    if damaged is not None:
        raise CheckpointError(
            f"checkpoint {path} is damaged: record {damaged!r} does not match its CRC-32 checksum "
            f"(flipped or overwritten bytes); use another checkpoint or rerun"
        )


def read_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", model_state: bool = True
) -> dict[str, Any]:
    """The checkpoint dict at `path`, its checksums verified (`verify_checksums`) and checked for the
    udon_fast layout (no model is built).

    The manifest of a multi-rank run's checkpoint (`distributed_checkpoint`) comes back with the whole
    model's state dict under "model", read from its DCP folder (model_state=False: as stored, empty)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != ZIP_MAGIC:
        raise CheckpointError(
            f"{path} is not a udon_fast checkpoint (not a file written by torch.save; "
            f"checkpoints are the .pt files in a run's checkpoints/ folder)"
        )
    verify_checksums(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # objects a safe load refuses: not ours (torch's advice does not apply)
        raise CheckpointError(
            f"{path} is not a udon_fast checkpoint (it holds objects other than tensors, "
            f"numbers, strings and containers)"
        ) from exc
    except Exception as exc:  # truncated / corrupt files raise many types
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a udon_fast checkpoint (no format tag {FORMAT!r})")
    if checkpoint.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {path} has version {checkpoint.get('version')!r}; this udon_fast reads {VERSION}"
        )
    missing = [k for k in ("config", "model") if not isinstance(checkpoint.get(k), dict)]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}")
    if model_state and distributed_checkpoint.DISTRIBUTED in checkpoint.get("extra", {}):
        checkpoint["model"] = distributed_checkpoint.read_model_state(path, checkpoint, map_location)
    return checkpoint


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[UDONModel, dict[str, Any]]:
    """Rebuild the model from the checkpoint alone and load its weights strictly.

    Returns (model on `map_location`, in eval mode; the checkpoint dict with "config", "model",
    "optimizer", "extra").  Errors name the file.
    """
    path = Path(path)
    checkpoint = read_checkpoint(path, map_location)
    try:
        model = UDONModel.from_config(checkpoint["config"])
        model.load_state_dict(checkpoint["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not rebuild a UDONModel: {type(exc).__name__}: {exc}") from exc
    return model.to(map_location).eval(), checkpoint
