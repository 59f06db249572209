"""CPU benchmark of the CE options layer (udon_fast/losses/options.py) on the native backend:
`normalized_softmax_ce` forward + backward with the defaults against label_smoothing + class_weight
(the two options that add work: one pass over the (C, D) weights for the smoothing sum, and its
gradient), at B = 256, C = 224,408 (met), D = 256, fp32.

Run: `pytest bench/test_bench_loss_options.py -p no:cacheprovider`; `UDON_BENCH_QUICK=1` shrinks the
shape to a smoke run.  pytest-benchmark times a pair of steps, one default then one with the options,
each also timed on its own: the variants interleave so that both see the same load on a shared
machine, and `benchmark.extra_info` stores both medians and their ratio.
"""

import os
import statistics
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from loss_cases import make_inputs  # noqa: E402

import udon_fast  # noqa: E402
from udon_fast.losses import backends  # noqa: E402

QUICK = os.environ.get("UDON_BENCH_QUICK") == "1"
BATCH, CLASSES, DIM = (64, 4096, 256) if QUICK else (256, 224408, 256)
ROUNDS = 2 if QUICK else 5


def _step(inputs, options):
    emb, weight, labels = inputs
    udon_fast.normalized_softmax_ce(emb, weight, labels, backend="native", check_inputs=False, **options).backward()
    emb.grad = weight.grad = None


@pytest.mark.skipif(not backends.status()["native"][0], reason="native library not built")
def test_options_layer_cost_native(benchmark):
    _, emb, _, weight, labels = make_inputs(BATCH, CLASSES, DIM, DIM)
    inputs = (emb, weight, labels)
    options = dict(label_smoothing=0.1, class_weight=torch.rand(CLASSES) + 0.5)
    times = {"default": [], "options": []}

    def pair():
        """One default step, then one option step, each timed: the two variants interleaved."""
        for name, kwargs in (("default", {}), ("options", options)):
            start = time.perf_counter()
            _step(inputs, kwargs)
            times[name].append(time.perf_counter() - start)

    pair()  # warm-up
    for measured in times.values():
        measured.clear()
    benchmark.pedantic(pair, rounds=ROUNDS, iterations=1)
    default_times, option_times = times["default"], times["options"]
    info = benchmark.extra_info
    info["shape"] = f"B={BATCH} C={CLASSES} D={DIM} fp32"
    info["median_default_s"] = round(statistics.median(default_times), 4)
    info["median_smoothing_class_weight_s"] = round(statistics.median(option_times), 4)
    info["ratio_options_over_default"] = round(statistics.median(option_times) / statistics.median(default_times), 3)
    print(
        f"\noptions layer, native, {info['shape']}: default {info['median_default_s']} s, "
        f"label_smoothing + class_weight {info['median_smoothing_class_weight_s']} s, "
        f"ratio {info['ratio_options_over_default']}"
    )
