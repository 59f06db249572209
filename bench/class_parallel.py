"""Replicated data parallel vs class-parallel training steps on 2 gloo ranks: peak memory per rank and time
per step against the number of classes C (Ds = 64, Dt = 256, fp32 weights, gradients and AdamW states).

Each measurement is a fresh 2-process gloo job (`measure`), one CPU thread per rank.  Every rank builds a
`UDONModel` with one domain of C classes and a 1-block vit_tiny at 32 px (the backbone is a few MiB; the
heads are what grows with C), the trainer's fused AdamW (`build_optimizer`) and the trainer's step:
`UDONStep` with replicated classifiers (DDP averages the gradients) or with class-parallel ones
(`--class-parallel`: C / 2 classes per rank, `classifier_shard`), then runs a warm-up step (AdamW states exist after it) and
`steps` timed steps (`step(...)` + `apply(terms)`, a barrier before each), on its own random batch of `batch`
images with labels in [0, C).  Per rank: peak resident memory of the process (VmHWM), the resident memory
before the model was built (imports, gloo), and the median step time.

`python -m bench.class_parallel --mode class_parallel --classes 3000000` runs one job and prints its JSON.
Before starting, a job's memory is predicted from `BYTES_PER_CLASS` and refused (`MemoryError`) when it
exceeds `MEMORY_FRACTION` of MemAvailable: the machine is shared, and a replicated run that cannot fit is
never tried (its need follows from the per-class bytes measured at smaller C, see test_bench_class_parallel).
"""

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.suite import status_kib

MODES = ("replicated", "class_parallel")
DOMAIN = "classes"
RANKS = 2
D_S, D_T = 64, 256
# For the refusal check only, measured here (bench/test_bench_class_parallel.py) and rounded up: bytes per
# class held by a rank (fp32 weights, gradients and two AdamW moments, (Ds + Dt) * 4 B each = 5,120 B;
# replicated adds its flat 1,280 B all-reduce buffer: 6,394 B measured, class-parallel 5,070 B), the
# private memory of a rank besides (torch, timm, gloo, the backbone: ~630 MiB) and the shared library pages
# both ranks map once (~450 MiB).
BYTES_PER_CLASS = {"replicated": 6_600, "class_parallel": 5_300}
RANK_BYTES = 700 << 20
SHARED_BYTES = 512 << 20
MEMORY_FRACTION = 0.95


def meminfo_bytes(field: str) -> int:
    """A field of /proc/meminfo (e.g. MemAvailable, MemTotal) in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/meminfo")


def predicted_bytes(mode: str, classes: int) -> int:
    """Upper estimate of the whole job's memory (all ranks) for the refusal check."""
    held = classes if mode == "replicated" else -(-classes // RANKS)
    return RANKS * (RANK_BYTES + BYTES_PER_CLASS[mode] * held) + SHARED_BYTES


def _worker(rank: int, port: int, mode: str, classes: int, batch: int, steps: int, out_dir: str) -> None:
    from udon_fast.model import UDONModel
    from udon_fast.trainer.optimizer import build_optimizer
    from udon_fast.trainer.step import LossOptions, UDONStep

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=RANKS,
        timeout=datetime.timedelta(minutes=30),
    )
    base = status_kib("VmRSS") * 1024
    torch.manual_seed(0)
    sharded = mode == "class_parallel"
    model = UDONModel(
        "vit_tiny_patch16_224",
        {DOMAIN: classes},
        teacher_dim=D_T,
        student_dim=D_S,
        image_size=32,
        backbone_kwargs={"depth": 1},
        classifier_shard=(rank, RANKS) if sharded else (0, 1),
    )
    optimizer = build_optimizer(model, lr=1e-3, backbone_lr_mult=1e-2, weight_decay=1e-6)
    options = LossOptions(
        margin_type="arcface",
        margin=0.2,
        scale=16.0,
        temperature=0.1,
        kl_weight=1.0,
        similarity_weight=1.0,
        backend="auto",
        n_devices=RANKS,
    )
    step = UDONStep(model, optimizer, options, compile=False, grad_clip=None, world_size=RANKS)
    gen = torch.Generator().manual_seed(rank)
    images = torch.randn(batch, 3, 32, 32, generator=gen)
    labels = torch.randint(0, classes, (batch,), generator=gen)
    seconds = []
    for i in range(steps + 1):
        dist.barrier()
        start = time.perf_counter()
        step.apply(torch.stack(list(step(images, labels, DOMAIN))))
        if i:
            seconds.append(time.perf_counter() - start)
    dist.barrier()
    result = {
        "rank": rank,
        "classes_held": model.teacher_classifier(DOMAIN).shape[0],
        "base_rss": base,
        "peak_rss": status_kib("VmHWM") * 1024,
        "step_s": statistics.median(seconds),
    }
    dist.destroy_process_group()
    (Path(out_dir) / f"{rank}.json").write_text(json.dumps(result))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(mode: str, classes: int, batch: int = 32, steps: int = 3) -> dict:
    """One 2-rank job: {"mode", "classes", "batch_per_rank", "ranks": [per-rank dicts]} (bytes, seconds).

    Raises MemoryError, before starting anything, when `predicted_bytes` exceeds MEMORY_FRACTION of
    MemAvailable."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    need, free = predicted_bytes(mode, classes), meminfo_bytes("MemAvailable")
    if need > MEMORY_FRACTION * free:
        raise MemoryError(
            f"{mode} at C = {classes:,} needs about {need / 2**30:.1f} GiB over {RANKS} ranks; "
            f"{free / 2**30:.1f} GiB are available here: not started"
        )
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(_free_port(), mode, classes, batch, steps, out_dir), nprocs=RANKS, join=True)
        ranks = [json.loads((Path(out_dir) / f"{rank}.json").read_text()) for rank in range(RANKS)]
    return {"mode": mode, "classes": classes, "batch_per_rank": batch, "ranks": ranks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.class_parallel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--classes", type=int, required=True)
    parser.add_argument("--batch", type=int, default=32, help="images per rank")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(measure(args.mode, args.classes, args.batch, args.steps)))
    except MemoryError as exc:
        print(f"bench.class_parallel: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
