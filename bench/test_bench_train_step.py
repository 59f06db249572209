"""One whole training step on CPU: our trainer step (backbone under torch.compile, fused loss,
backend "auto" = native, else chunked) vs an eager trainer step with the `reference` loss.

Run: `pytest bench/test_bench_train_step.py` (vit_tiny at 64 px, B = 64, C = 73,182 (gldv2));
`UDON_BENCH_QUICK=1` shrinks it to a 2-block vit_tiny, B = 32, C = 20,000.

Both steps are `UDONStep(...)` followed by `.apply(terms)` (AdamW from `build_optimizer`) on the same
random batch, each on its own copy of one randomly initialised `UDONModel`.  pytest-benchmark times
the compiled fused step; the eager reference step is timed in the same test (best of the rounds).

Figures in `benchmark.extra_info`:
- images_per_s_fused, images_per_s_reference: batch size / step seconds (best round).
- speedup_vs_reference: images_per_s_fused / images_per_s_reference.
- peak_mib_fused, peak_mib_reference: peak resident memory of one step above the memory before it
  (MiB; `suite.peak_rss_extra_bytes`), absent where the peak mark cannot be reset.
- compiled: whether torch.compile took (UDONStep falls back to eager with a warning).
"""

import copy
import time

import pytest
import torch

from bench.suite import peak_rss_extra_bytes, quick
from udon_fast.model import UDONModel
from udon_fast.trainer.optimizer import build_optimizer
from udon_fast.trainer.step import LossOptions, UDONStep

QUICK = quick()
BACKBONE = "vit_tiny_patch16_224"
BACKBONE_KWARGS = {"depth": 2} if QUICK else {}
IMAGE_SIZE = 64
BATCH = 32 if QUICK else 64
CLASSES = 20_000 if QUICK else 73_182
ROUNDS = 2 if QUICK else 3
DOMAIN = "gldv2"


def loss_options(backend: str) -> LossOptions:
    return LossOptions(
        margin_type="arcface",
        margin=0.2,
        scale=16.0,
        temperature=0.1,
        kl_weight=1.0,
        similarity_weight=1.0,
        backend=backend,
        n_devices=1,
    )


def make_step(model: UDONModel, compile: bool, backend: str) -> UDONStep:
    optimizer = build_optimizer(model, lr=1e-3, backbone_lr_mult=0.01, weight_decay=1e-4)
    return UDONStep(model, optimizer, loss_options(backend), compile=compile, grad_clip=None, world_size=1)


def run_step(step: UDONStep, images: torch.Tensor, labels: torch.Tensor) -> None:
    out = step(images, labels, DOMAIN)
    assert torch.isfinite(out.total)
    step.apply(torch.stack(list(out)))


def best_seconds(step: UDONStep, images: torch.Tensor, labels: torch.Tensor, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        run_step(step, images, labels)
        best = min(best, time.perf_counter() - start)
    return best


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
    labels = torch.randint(0, CLASSES, (BATCH,), generator=gen)
    return images, labels


def test_bench_train_step_compiled_fused_vs_eager_reference(benchmark, batch):
    torch.manual_seed(0)
    model = UDONModel(BACKBONE, {DOMAIN: CLASSES}, image_size=IMAGE_SIZE, backbone_kwargs=BACKBONE_KWARGS)
    fused = make_step(model, compile=True, backend="auto")
    reference = make_step(copy.deepcopy(model), compile=False, backend="reference")
    images, labels = batch
    for step in (fused, reference):  # compile, lazy initialisation, optimizer state
        run_step(step, images, labels)

    benchmark.pedantic(run_step, args=(fused, images, labels), rounds=ROUNDS, iterations=1)
    seconds = {"fused": benchmark.stats.stats.min, "reference": best_seconds(reference, images, labels, ROUNDS)}
    info = benchmark.extra_info
    info.update(
        backbone=BACKBONE,
        depth=BACKBONE_KWARGS.get("depth", 12),
        image_size=IMAGE_SIZE,
        batch=BATCH,
        classes=CLASSES,
        compiled=fused.compiled,
        threads=torch.get_num_threads(),
    )
    for name, step in (("fused", fused), ("reference", reference)):
        info[f"images_per_s_{name}"] = round(BATCH / seconds[name], 1)
        peak = peak_rss_extra_bytes(lambda: run_step(step, images, labels))
        if peak is not None:
            info[f"peak_mib_{name}"] = round(peak / 2**20, 1)
    info["speedup_vs_reference"] = round(seconds["reference"] / seconds["fused"], 2)
