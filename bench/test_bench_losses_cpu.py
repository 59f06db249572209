"""CPU benchmark of the UDON head loss: native vs chunked vs reference (eager and compiled), forward + backward.

Run: `pytest bench/test_bench_losses_cpu.py -p no:cacheprovider` (full: B in {128, 256, 1024}, C in
{10000, 73182 (gldv2), 224408 (met)}, Ds = 64, Dt = 256; slow, chunked/reference take seconds a step);
`UDON_BENCH_QUICK=1` shrinks shapes and rounds to a one-minute smoke run.

Time: pytest-benchmark times the native step; chunked and reference are timed in the same test
with the same step function (best of the rounds), and `benchmark.extra_info` stores all three
times, the speedups of native over them and chunked's over reference (the B = 256, C = met row is
the chunked-vs-reference check).

Peak memory: measured per backend in a fresh subprocess (so one backend's freed blocks and the
allocator state of another cannot mask it).  After a warm-up step (libraries, thread pools and
lazy initialisation loaded), the process resets its peak-RSS mark (`/proc/self/clear_refs` <- 5,
Linux >= 4.0), runs one forward + backward, and reports VmHWM - VmRSS(before) - bytes of the four
parameter gradients: the extra memory of the loss beyond its inputs and their gradients.  The
measuring process turns off udon_loss's data-dependent value checks (`validate.check_values`, the
same for every backend; its `torch.isfinite` of the weights alone peaks at ~383 MiB at B = 256,
C = met), so the figure is the backend's own.  Resolution is a few MiB: small gradients may reuse
freed heap pages (hence the clamp at 0).
torch's CPU allocator returns large blocks to the OS, so RSS tracks live tensors; tracemalloc would
not see torch's allocations at all.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # also when run as a script (the memory subprocess)

from loss_cases import make_inputs  # noqa: E402

import udon_fast  # noqa: E402
from bench.suite import peak_rss_extra_bytes  # noqa: E402

QUICK = os.environ.get("UDON_BENCH_QUICK") == "1"
D_S, D_T = 64, 256
# Shapes: B in {128, 1024} x C in {10k, 73,182 (gldv2), 224,408 (met)}, plus B = 256 at
# gldv2/met sizes (the chunked-vs-reference memory target is stated at B = 256, met).
SHAPES = (
    [(64, 4096)]
    if QUICK
    else [
        (128, 10000),
        (128, 73182),
        (128, 224408),
        (256, 73182),
        (256, 224408),
        (1024, 10000),
        (1024, 73182),
        (1024, 224408),
    ]
)
ROUNDS = 2 if QUICK else 3


def _reference_loss(*inputs):
    return udon_fast.udon_loss(*inputs, backend="reference").total


_COMPILED_REFERENCE = torch.compile(_reference_loss)


def _step(backend, inputs):
    """One forward + backward of udon_loss ("reference_compiled": the reference under torch.compile);
    gradients cleared afterwards."""
    if backend == "reference_compiled":
        _COMPILED_REFERENCE(*inputs).backward()
    else:
        udon_fast.udon_loss(*inputs, backend=backend).total.backward()
    for t in inputs[:4]:
        t.grad = None


def _best_time(backend, inputs, rounds):
    _step(backend, inputs)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        _step(backend, inputs)
        best = min(best, time.perf_counter() - start)
    return best


def _measure_peak_extra(backend, batch, classes):
    """In this process: bytes of peak RSS beyond inputs and their gradients during one step."""
    from udon_fast.losses import validate

    validate.check_values = lambda *args, **kwargs: None
    inputs = make_inputs(batch, classes, D_S, D_T)
    _step(backend, inputs)
    grad_bytes = sum(t.numel() * t.element_size() for t in inputs[:4])
    extra = peak_rss_extra_bytes(lambda: _step(backend, inputs))
    return None if extra is None else max(0, extra - grad_bytes)


def peak_extra_bytes(backend, batch, classes):
    """Peak extra memory of one step of `backend`, measured in a fresh subprocess (see module doc)."""
    result = subprocess.run(
        [sys.executable, __file__, backend, str(batch), str(classes)], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_extra_bytes"]


@pytest.mark.parametrize("batch,classes", SHAPES, ids=[f"B{b}-C{c}" for b, c in SHAPES])
def test_native_vs_chunked_vs_reference(benchmark, batch, classes):
    inputs = make_inputs(batch, classes, D_S, D_T)
    _step("native", inputs)
    benchmark.pedantic(_step, args=("native", inputs), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    native = benchmark.stats.stats.min
    times = {"native": native}
    for backend in ("chunked", "reference", "reference_compiled"):
        times[backend] = _best_time(backend, inputs, ROUNDS)
    info = benchmark.extra_info
    for backend, seconds in times.items():
        info[f"time_{backend}_s"] = round(seconds, 4)
    info["speedup_vs_chunked"] = round(times["chunked"] / native, 2)
    info["speedup_vs_reference"] = round(times["reference"] / native, 2)
    info["speedup_vs_reference_compiled"] = round(times["reference_compiled"] / native, 2)
    info["chunked_speedup_vs_reference"] = round(times["reference"] / times["chunked"], 2)
    peak = {backend: peak_extra_bytes(backend, batch, classes) for backend in ("native", "chunked", "reference")}
    if None not in peak.values():  # None: this kernel cannot reset the peak-RSS mark
        for backend, extra in peak.items():
            info[f"peak_extra_mib_{backend}"] = round(extra / 2**20, 1)
        info["memory_ratio_reference_over_chunked"] = round(peak["reference"] / max(peak["chunked"], 1), 1)
    if not QUICK:  # the quick shape is a smoke run dominated by per-call overheads
        backends = ("chunked", "reference")
        assert native < min(times[b] for b in backends), f"native is not the fastest CPU backend: {times}"


if __name__ == "__main__":
    name, b, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps({"peak_extra_bytes": _measure_peak_extra(name, b, c)}))
