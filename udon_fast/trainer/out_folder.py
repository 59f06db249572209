"""A run's claim on its --out: the checks before any work, and the folder lock held for the whole run.

Rank 0 does the checks and holds the lock (`files.run_lock`); the other ranks of a torchrun job receive its
verdict in one broadcast, so a refused folder stops every rank at once and no rank waits in a
collective that rank 0 never reaches.
"""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch.distributed as dist

from ..config import TrainConfig
from ..distributed import Ranks
from ..errors import InputError
from ..files.outputs import check_writable_folder
from ..files.run_lock import FolderLock, lock_folder


def check_resume_options(out: Path, config: TrainConfig, world_size: int = 1) -> None:
    """With --resume on `world_size` ranks: refuse options that differ from the run's config.json
    (`TrainConfig.differences`), in one line listing each changed option with both values."""
    saved_file = out / "config.json"
    if not config.resume or not saved_file.is_file():
        return
    try:
        saved = json.loads(saved_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"--resume: cannot read the run's options from {saved_file}: {exc}") from None
    if not isinstance(saved, dict):
        raise InputError(f"--resume: {saved_file} does not hold a run's options (a JSON object)")
    changed = config.differences(saved, world_size)
    if not changed:
        return
    length = [c for c in changed if c.startswith(("--steps ", "--epochs "))]
    hint = (
        " A run's length is fixed when it starts (the domain sampler schedules all of its steps), so --resume "
        "cannot extend it: start a new run in another --out to train longer."
        if length
        else ""
    )
    raise InputError(
        f"--resume: the options differ from the run in {out} ({saved_file.name}): {', '.join(changed)}. "
        f"Resume with the run's own options or start a new run in another --out.{hint}"
    )


def _claim(config: TrainConfig, world_size: int) -> FolderLock:
    out = Path(config.out)
    if config.resume and not out.is_dir():
        raise FileNotFoundError(
            f"--resume: --out {out} does not exist, so there is no run to continue "
            f"(drop --resume to start a new run there)"
        )
    for folder in (out, out / "checkpoints"):
        check_writable_folder(folder, "--out")
    lock = lock_folder(out, "--out")
    try:
        if not config.resume and ((out / "config.json").exists() or (out / "checkpoints" / "last.pt").exists()):
            raise FileExistsError(
                f"--out {out} already holds a run; pass --resume to continue it or choose another --out"
            )
        check_resume_options(out, config, world_size)
    except BaseException:
        lock.release()
        raise
    return lock


@contextmanager
def claimed_out(config: TrainConfig, ranks: Ranks) -> Iterator[None]:
    """Check --out and hold its lock for the block (rank 0); on every rank, raise rank 0's refusal:
    --resume of a folder that does not exist, a folder that cannot be written, a folder in use by another
    process (`files.run_lock.FolderInUse`), a run there without --resume, --resume with changed options."""
    lock, error = None, None
    if ranks.is_main:
        try:
            lock = _claim(config, ranks.world_size)
        except (OSError, InputError) as exc:  # the refusals above; anything else is a bug
            error = exc
    if ranks.world_size > 1:
        verdict = [None if error is None else str(error)]
        dist.broadcast_object_list(verdict, src=0)
        if error is None and verdict[0] is not None:
            raise InputError(verdict[0])
    if error is not None:
        raise error
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
