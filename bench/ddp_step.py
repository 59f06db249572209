"""The trainer's data-parallel step on 2 gloo ranks: DDP against the hand-rolled all-reduce it replaced.

One 2-process gloo job, one CPU thread per rank.  Every rank builds two identical UDON models (default
backbone EfficientNet-Lite0 from its packaged weights, two domains, image side 64) and times, interleaved
step by step so that the machine's load hits both alike:
- "ddp": `UDONStep` with world_size 2 (DistributedDataParallel: bucketed all-reduces that overlap the
  backward pass, unused parameters found every step);
- "hand_rolled": the step udon_fast used before DDP: the whole backward pass, then every gradient
  concatenated into one flat buffer, one all-reduce, divided by the world size and copied back
  (`HandRolledStep`, kept here only as the baseline).
Each timed step is `step(...)` + `apply(terms)` after a barrier, on the rank's own random batch; the first
step of each variant is a warm-up.  `python -m bench.ddp_step` prints the JSON of one job.
"""

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

RANKS = 2
DOMAINS = {"a": 500, "b": 300}
VARIANTS = ("ddp", "hand_rolled")


def _worker(rank: int, port: int, batch: int, steps: int, out_dir: str) -> None:
    from udon_fast.model import UDONModel
    from udon_fast.model.packaged import packaged_weights
    from udon_fast.trainer.optimizer import build_optimizer, set_backbone_frozen
    from udon_fast.trainer.step import LossOptions, UDONStep

    class HandRolledStep(UDONStep):
        """UDONStep on one rank (no DDP), gradients averaged after the backward pass as one flat all-reduce."""

        def _backward(self, out) -> None:
            out.total.backward()
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= RANKS
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=RANKS,
        timeout=datetime.timedelta(minutes=10),
    )
    options = LossOptions(
        margin_type="normface",
        margin=0.0,
        scale=16.0,
        temperature=0.1,
        kl_weight=1.0,
        similarity_weight=1.0,
        backend="auto",
        n_devices=RANKS,
    )
    steps_of = {}
    for variant in VARIANTS:
        torch.manual_seed(0)
        model = UDONModel(
            "tf_efficientnet_lite0", DOMAINS, pretrained=packaged_weights("tf_efficientnet_lite0"), image_size=64
        )
        optimizer = build_optimizer(model, lr=1e-3, backbone_lr_mult=1e-2, weight_decay=1e-6)
        set_backbone_frozen(model, optimizer, frozen=False)
        step_type, world = (UDONStep, RANKS) if variant == "ddp" else (HandRolledStep, 1)
        steps_of[variant] = step_type(model, optimizer, options, compile=False, grad_clip=None, world_size=world)
    gen = torch.Generator().manual_seed(rank)
    seconds = {variant: [] for variant in VARIANTS}
    for i in range(steps + 1):
        domain = "ab"[i % 2]
        images = torch.randn(batch, 3, 64, 64, generator=gen)
        labels = torch.randint(0, DOMAINS[domain], (batch,), generator=gen)
        for variant in VARIANTS if i % 2 else VARIANTS[::-1]:
            dist.barrier()
            start = time.perf_counter()
            out = steps_of[variant](images, labels, domain)
            steps_of[variant].apply(torch.stack(list(out)))
            if i:
                seconds[variant].append(time.perf_counter() - start)
    dist.barrier()
    dist.destroy_process_group()
    result = {variant: statistics.median(s) for variant, s in seconds.items()}
    (Path(out_dir) / f"{rank}.json").write_text(json.dumps(result))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(batch: int = 16, steps: int = 30) -> dict:
    """{"ddp_s", "hand_rolled_s" (median seconds per step, the slower rank), "ratio" (ddp / hand_rolled),
    "batch_per_rank", "steps"}."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(_free_port(), batch, steps, out_dir), nprocs=RANKS, join=True)
        ranks = [json.loads((Path(out_dir) / f"{rank}.json").read_text()) for rank in range(RANKS)]
    slowest = {variant: max(r[variant] for r in ranks) for variant in VARIANTS}
    return {
        "ddp_s": round(slowest["ddp"], 4),
        "hand_rolled_s": round(slowest["hand_rolled"], 4),
        "ratio": round(slowest["ddp"] / slowest["hand_rolled"], 3),
        "batch_per_rank": batch,
        "steps": steps,
    }


if __name__ == "__main__":
    print(json.dumps(measure()))
    sys.exit(0)
