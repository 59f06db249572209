"""Run a function on N local gloo ranks (spawned processes, a free port each time) and collect what each returns."""

import datetime
import os
import pickle
import socket
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, process_group, fn, args, out_dir):
    torch.set_num_threads(1)
    if not process_group:
        os.environ.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1",
            OMP_NUM_THREADS="1",
        )
        result = fn(rank, world, *args)
    else:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=120),
        )
        try:
            result = fn(rank, world, *args)
            dist.barrier()
        finally:
            dist.destroy_process_group()
    (Path(out_dir) / f"{rank}.pkl").write_bytes(pickle.dumps(result))


def run_ranks(fn, world: int, *args, process_group: bool = True) -> list:
    """fn(rank, world, *args) on `world` gloo ranks (one CPU thread each); the list of their return values.

    process_group=True: the ranks are joined in a gloo group around fn.  False: they only get the
    environment torchrun gives (RANK, WORLD_SIZE, ...) but MASTER_PORT, which fn sets (`use_port`) before
    each library call that joins and leaves a group itself (`train`, `evaluate.main`).
    fn must be importable (a module-level function) and return something picklable.  A rank that
    raises fails the call (the others are stopped) with its traceback.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_entry, args=(world, free_port(), process_group, fn, args, out_dir), nprocs=world, join=True)
        return [pickle.loads((Path(out_dir) / f"{rank}.pkl").read_bytes()) for rank in range(world)]


def use_port(port: int) -> None:
    """The rendezvous port of the next process group this process joins through the environment."""
    os.environ["MASTER_PORT"] = str(port)
