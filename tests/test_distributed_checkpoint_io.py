"""A full disk while a 2-rank run writes its DCP checkpoint: one line on every rank naming the folder and the
cause, and the previous checkpoint (manifest and folder) intact and readable.  The disk is a real 48 MiB
tmpfs (CI runs as root); where mounting is not permitted the test skips and says why."""

import subprocess
from pathlib import Path

import torch
from distributed_helpers import run_ranks
from test_checkpoint_io import _mount_tmpfs

TINY = dict(backbone_name="vit_tiny_patch16_224", image_size=32, backbone_kwargs={"depth": 1})


class _Positions:
    """The one part of a TrainLoader a checkpoint reads: its data state."""

    def state_dict(self) -> dict:
        return {"seed": 0, "world_size": 2, "rank": 0, "domains": {"a": {"epoch": 0, "position": 0}}}


def _save_twice(rank, world, checkpoints, filler):
    from udon_fast.distributed import Ranks
    from udon_fast.files.outputs import OutputError
    from udon_fast.model import UDONModel
    from udon_fast.sampler import DomainSampler
    from udon_fast.trainer.distributed_checkpoint import save_distributed_run
    from udon_fast.trainer.optimizer import build_optimizer
    from udon_fast.trainer.state import Progress

    torch.manual_seed(0)
    model = UDONModel(domains={"a": 5000}, classifier_shard=(rank, world), **TINY)
    optimizer = build_optimizer(model, 1e-3, 1e-2, 0.0)
    sampler = DomainSampler({"a": 10}, 4)
    ranks = Ranks(rank, world, torch.device("cpu"))
    path = Path(checkpoints) / "last.pt"
    save_distributed_run(path, model, optimizer, sampler, _Positions(), Progress(step=1), ranks, 4)
    torch.distributed.barrier()
    if rank == 0:
        _fill(Path(filler))
    torch.distributed.barrier()
    try:
        save_distributed_run(path, model, optimizer, sampler, _Positions(), Progress(step=2), ranks, 4)
        return "no error"
    except OutputError as exc:
        return str(exc)


def _fill(filler: Path) -> None:
    with filler.open("ab") as f:
        chunk = b"\0" * (1 << 20)
        while True:
            try:
                f.write(chunk)
                f.flush()
            except OSError:
                return


def test_a_full_disk_during_a_distributed_save_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
    from udon_fast.model import load_model

    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "size=48m")
    try:
        checkpoints = disk / "checkpoints"
        errors = run_ranks(_save_twice, 2, str(checkpoints), str(disk / "filler"))
        for error in errors:
            assert "\n" not in error and "last-step000000002" in error, error
            assert "No space left on device" in error, error
        model, manifest = load_model(checkpoints / "last.pt")
        assert manifest["extra"]["distributed_checkpoint"]["step"] == 1
        assert model.teacher_classifier("a").shape == (5000, 256)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
