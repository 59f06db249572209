"""Class-parallel vs replicated data-parallel training steps on 2 gloo ranks (bench/class_parallel.py).

Run: `pytest bench/test_bench_class_parallel.py -p no:cacheprovider` (C in {100k, 400k} both ways, C in
{1M, 3M} class-parallel only; about half an hour on 2 shared cores); `UDON_BENCH_QUICK=1`: C = 20k only.

Each case is one fresh 2-process job; pytest-benchmark's time is the whole job (process start, model
build, warm-up and timed steps), so read `step_s` for the time per step.  extra_info:
- step_s: median seconds per training step (forward, backward, gradient all-reduce, AdamW), the slower rank;
- peak_rss_mib_per_rank: peak resident memory of a rank process (the larger of the two);
- heads_mib_per_rank: that peak above the rank's memory before the model was built (imports, gloo);
- classes_per_rank: classifier rows a rank holds (C replicated, C / 2 class-parallel).
`test_replicated_would_not_fit` fits heads memory = a + b * C to the replicated cases (b: bytes per class:
fp32 weights, gradients and AdamW moments, 5,120 B, plus the flat gradient all-reduce buffer) and states
the replicated need at C = 3M against this machine's memory; that run is never started.  A case whose
predicted memory exceeds 85% of MemAvailable is skipped with the reason (the machine is shared).
"""

import functools

import pytest

from bench import class_parallel
from bench.suite import quick

QUICK = quick()
BOTH = [20_000] if QUICK else [100_000, 400_000]
SHARDED_ONLY = [] if QUICK else [1_000_000, 3_000_000]
CASES = [(mode, c) for c in BOTH for mode in class_parallel.MODES] + [("class_parallel", c) for c in SHARDED_ONLY]
LARGE = 3_000_000


@functools.cache
def measured(mode: str, classes: int) -> dict:
    try:
        return class_parallel.measure(mode, classes)
    except MemoryError as exc:
        pytest.skip(str(exc))


def figures(result: dict) -> dict:
    ranks = result["ranks"]
    return {
        "step_s": round(max(r["step_s"] for r in ranks), 3),
        "peak_rss_mib_per_rank": round(max(r["peak_rss"] for r in ranks) / 2**20),
        "heads_mib_per_rank": round(max(r["peak_rss"] - r["base_rss"] for r in ranks) / 2**20),
        "classes_per_rank": max(r["classes_held"] for r in ranks),
    }


@pytest.mark.parametrize("mode,classes", CASES, ids=[f"{m}-C{c}" for m, c in CASES])
def test_bench_class_parallel_step(benchmark, mode, classes):
    result = {}
    benchmark.pedantic(lambda: result.update(measured(mode, classes)), rounds=1, iterations=1)
    benchmark.extra_info.update(
        mode=mode,
        classes=classes,
        ranks=class_parallel.RANKS,
        batch_per_rank=result["batch_per_rank"],
        **figures(result),
    )


@pytest.mark.skipif(QUICK, reason="needs two replicated sizes")
def test_replicated_would_not_fit(benchmark):
    """Heads bytes per class from the replicated cases, and the replicated need at C = 3M (not run)."""
    small, large = (measured("replicated", c) for c in BOTH)
    heads = [max(r["peak_rss"] - r["base_rss"] for r in m["ranks"]) for m in (small, large)]
    base = max(r["base_rss"] for r in large["ranks"])
    per_class = (heads[1] - heads[0]) / (BOTH[1] - BOTH[0])
    fixed = heads[0] - per_class * BOTH[0]
    need = class_parallel.RANKS * (base + fixed + per_class * LARGE)
    total = class_parallel.meminfo_bytes("MemTotal")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update(
        replicated_bytes_per_class=round(per_class),
        classes=LARGE,
        replicated_need_gib_per_rank=round(need / class_parallel.RANKS / 2**30, 1),
        replicated_need_gib_two_ranks=round(need / 2**30, 1),
        machine_gib=round(total / 2**30, 1),
    )
    assert need > total, "at C = 3M the replicated job would fit here: pick a larger C"
