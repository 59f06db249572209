"""CPU benchmark of Partial FC: the native loss's forward + backward against the sample rate r.

Run: `pytest bench/test_bench_partial_fc.py -p no:cacheprovider -s` (B = 256, C = 1,000,000, D = 64,
arcface; r in {1, 0.5, 0.1, 0.01}); `UDON_BENCH_QUICK=1` shrinks C to 20,000.

One step of rate r < 1 is what `CosineClassifier.forward` + backward does: sample the classes
(`sample_classes`: on the device, a topk over C random scores), copy the K sampled rows
(`SampledRows.take`), and the native `normalized_softmax_ce` forward + backward on them; r = 1 is the
plain loss on the whole weight.  The rates are timed round-robin in one process (best of the rounds),
so the ratios are comparable on a noisy machine; `benchmark.extra_info` holds the times, the speedups
over r = 1, and the optimizer step with its state already created: `adamw_rows` on the K rows (native
kernel, udon_fast/optim/row_adamw.py), against the fused `torch.optim.AdamW` over the whole weight at
r = 1 and, at r = 0.1 and 0.01, against the per-row step it replaced (`_per_row_step`: torch's fused
AdamW kernel called on each row as its own tensor; one timing each, after the round-robin).

Peak memory: per rate in a fresh subprocess (bench.suite.peak_rss_extra_bytes): peak RSS of one step
above the resident inputs (weight, embeddings), the step's gradients and sampled copy included.
"""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # also when run as a script (the memory subprocess)

import udon_fast  # noqa: E402
from bench.suite import peak_rss_extra_bytes  # noqa: E402
from udon_fast.losses.partial_fc import SampledRows, adamw_rows, row_state, sample_classes  # noqa: E402

QUICK = os.environ.get("UDON_BENCH_QUICK") == "1"
BATCH, CLASSES, DIM = 256, 20_000 if QUICK else 1_000_000, 64
RATES = (1.0, 0.5, 0.1, 0.01)
ROUNDS = 2 if QUICK else 3
OPTIONS = dict(margin_type="arcface", margin=0.5, scale=64.0, backend="native", check_inputs=False)


def _inputs():
    gen = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(BATCH, DIM, generator=gen), dim=1).requires_grad_()
    weight = torch.nn.Parameter(torch.randn(CLASSES, DIM, generator=gen))
    return emb, weight, torch.randint(0, CLASSES, (BATCH,), generator=gen)


def _step(rate, emb, weight, labels):
    """Forward + backward of one step at `rate`; returns the sampled rows (None at rate 1)."""
    if rate == 1:
        udon_fast.normalized_softmax_ce(emb, weight, labels, **OPTIONS).backward()
        return None
    index, sampled_labels = sample_classes(labels, CLASSES, rate)
    sampled = SampledRows.take(weight, index)
    udon_fast.normalized_softmax_ce(emb, sampled.rows, sampled_labels, **OPTIONS).backward()
    return sampled


def _optimizer_seconds(rate, weight, sampled, step=adamw_rows):
    """One optimizer step of the weight (whole at rate 1, else `step` on the sampled rows), timed after an
    untimed one that creates the state."""
    optimizer = torch.optim.AdamW([weight], lr=1e-3, fused=True)
    optimizer.found_inf = torch.zeros(())  # as the trainer sets it
    run = optimizer.step if sampled is None else (lambda: step(optimizer, sampled))
    run()
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _per_row_step(optimizer, sampled):
    """The per-row AdamW step adamw_rows replaced, for comparison: torch's fused AdamW kernel on the K rows
    as K tensors of one call, with the K step counts as K tensors."""
    group, state = optimizer.param_groups[0], row_state(optimizer, sampled.parameter)
    index = sampled.index
    with torch.no_grad():
        rows = sampled.parameter.index_select(0, index)
        exp_avg, exp_avg_sq = state["exp_avg"].index_select(0, index), state["exp_avg_sq"].index_select(0, index)
        steps = state["step"].index_select(0, index).add_(1)
        tensors = [list(t.unbind(0)) for t in (rows, sampled.rows.grad, exp_avg, exp_avg_sq)]
        torch._fused_adamw_(
            *tensors,
            [],
            list(steps.unbind(0)),
            lr=group["lr"],
            beta1=group["betas"][0],
            beta2=group["betas"][1],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
            amsgrad=False,
            grad_scale=None,
            found_inf=optimizer.found_inf,
        )
        steps.sub_(optimizer.found_inf)
        sampled.parameter.index_copy_(0, index, rows)
        state["exp_avg"].index_copy_(0, index, exp_avg)
        state["exp_avg_sq"].index_copy_(0, index, exp_avg_sq)
        state["step"].index_copy_(0, index, steps)


def _round_robin(inputs, times, optimizer_times):
    for rate in RATES:
        start = time.perf_counter()
        sampled = _step(rate, *inputs)
        times[rate] = min(times.get(rate, math.inf), time.perf_counter() - start)
        optimizer_times[rate] = min(optimizer_times.get(rate, math.inf), _optimizer_seconds(rate, inputs[1], sampled))
        inputs[0].grad = inputs[1].grad = None


def peak_extra_bytes(rate):
    result = subprocess.run([sys.executable, __file__, str(rate)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_extra_bytes"]


def test_native_speed_against_sample_rate(benchmark):
    inputs = _inputs()
    times, optimizer_times = {}, {}
    _round_robin(inputs, {}, {})  # warm-up
    benchmark.pedantic(_round_robin, args=(inputs, times, optimizer_times), rounds=ROUNDS, iterations=1)
    info = benchmark.extra_info
    info["shape"] = f"B={BATCH} C={CLASSES} D={DIM}"
    for rate in RATES:
        info[f"time_r{rate}_s"] = round(times[rate], 4)
        info[f"speedup_r{rate}"] = round(times[1.0] / times[rate], 2)
        info[f"optimizer_r{rate}_s"] = round(optimizer_times[rate], 4)
        info[f"optimizer_r{rate}_over_dense"] = round(optimizer_times[rate] / optimizer_times[1.0], 3)
        extra = peak_extra_bytes(rate)
        if extra is not None:
            info[f"peak_extra_mib_r{rate}"] = round(extra / 2**20, 1)
    for rate in (0.1, 0.01):
        sampled = _step(rate, *inputs)
        info[f"per_row_optimizer_r{rate}_s"] = round(_optimizer_seconds(rate, inputs[1], sampled, _per_row_step), 4)
        info[f"speedup_optimizer_r{rate}_over_per_row"] = round(
            info[f"per_row_optimizer_r{rate}_s"] / optimizer_times[rate], 1
        )
        inputs[0].grad = inputs[1].grad = None
    print(json.dumps(info, indent=1))
    assert all(times[rate] > 0 for rate in RATES)


if __name__ == "__main__":
    rate = float(sys.argv[1])
    emb, weight, labels = _inputs()
    _step(rate, emb, weight, labels)
    emb.grad = weight.grad = None
    print(json.dumps({"peak_extra_bytes": peak_rss_extra_bytes(lambda: _step(rate, emb, weight, labels))}))
