"""udon_fast's CPU backends against their peers, side by side in one run: the cosine-margin softmax CE of
one head (bench/peers.py), fp32, forward + backward, B = 256, D = 256, C in {28,000, 224,408, 1,000,000}.

Run: `pytest bench/test_bench_peers.py -p no:cacheprovider -s` (one test and one printed table per
(C, margin), selectable with -k, e.g. `-k "C224408 and normface"`; an hour or more on 2 shared cores,
most of it in the peers at C = 1,000,000); `UDON_BENCH_QUICK=1` shrinks C to 4,096 for
a smoke run.  Needs pytorch-metric-learning (`pip install -e ".[bench]"`).

Rows per margin (an implementation runs on the margins it computes, see peers.supports):
normface: native, chunked, reference (eager F.cross_entropy on the logits), reference_compiled
(torch.compile, inductor), F.linear_cross_entropy's reference path and its chunked path with
batch_chunk_size 16, 64 and 256 (and, at the smallest C only, its default options, which choose 4 or 1
rows per chunk at these shapes and take tens of seconds at C = 224,408); at C = 1,000,000 only chunk
size 256, the fastest at the smaller C, and not our chunked backend (run time); cosface: native, chunked,
reference, reference_compiled, pml CosFaceLoss; arcface: the same with pml ArcFaceLoss.

Each case runs in a fresh subprocess: build the inputs, one warm-up step (compilation, thread pools,
lazy initialisation), one step under the peak-RSS mark, then 4 more steps (1 beyond C = 28,000); time = the fastest of
the timed steps, in wall-clock seconds (perf_counter) and in process CPU seconds (all threads; the
machine is shared, and time slicing slows OpenMP's synchronised threads more than it slows the work
they do, so CPU time is the steadier measure of the work).  Peak extra memory = VmHWM during that step - VmRSS before it
(`bench.suite.peak_rss_extra_bytes`: free heap returned to the OS first, the peak mark reset through
/proc/self/clear_refs): what the step needs beyond its inputs, its parameters and their gradients
(those of the previous step are dropped at the start of the step and reallocated by it, so they are
in the "before" figure).  RSS rather than tracemalloc, which does not see torch's allocations; torch's
CPU allocator returns large blocks to the OS, so RSS follows live tensors.  The reference case of each
(C, margin) runs first and leaves its loss and gradients in a temporary folder; every other case
compares with them (max |loss difference|, max gradient difference relative to the largest reference
entry) and the test asserts fp32 agreement.

pytest-benchmark itself times the native step in the test's process; `extra_info` holds every case,
and the ratios of each implementation's time over native's and of the fastest peer over native
(peers: everything that is not udon_fast's native or chunked backend).
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # also when run as a script (the per-case subprocess)

from bench import peers  # noqa: E402
from bench.suite import peak_rss_extra_bytes, quick  # noqa: E402

BATCH, DIM = 256, 256
CLASSES = [4096] if quick() else [28_000, 224_408, 1_000_000]
MARGINS = {"normface": 0.0, "cosface": 0.35, "arcface": 0.5}
# At C >= LARGE only the fastest chunk size of the smaller C runs, and not our chunked backend (run time).
LARGE, SKIPPED_AT_LARGE = 1_000_000, ("chunked", "linear_ce_chunk16", "linear_ce_chunk64")
SMALL, ROUNDS = 28_000, 4  # timed steps after the measured one: ROUNDS up to C = SMALL, then 1
TOLERANCE = {"loss": 1e-4, "d_x": 2e-4, "d_weight": 2e-4}  # loss: relative to the reference loss


def case_names(margin_type: str, classes: int) -> list[str]:
    """The implementations run at (margin, C), the reference first."""
    skip = {"reference"}
    if classes != CLASSES[0]:
        skip.add("linear_ce_auto")
    if classes >= LARGE:
        skip.update(SKIPPED_AT_LARGE)
    return ["reference", *(n for n in peers.IMPLEMENTATIONS if peers.supports(n, margin_type) and n not in skip)]


def measure(name: str, margin_type: str, classes: int, ref_dir: Path) -> dict:
    """In this process: time, peak extra memory and differences of one case (see the module doc)."""
    problem = peers.make_problem(BATCH, classes, DIM, margin_type, MARGINS[margin_type])
    run = peers.build(name, problem)
    run.step()
    times, cpu, losses = [], [], []

    def timed_step():
        start, start_cpu = time.perf_counter(), time.process_time()
        losses.append(run.step())
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)

    peak = peak_rss_extra_bytes(timed_step)
    for _ in range(ROUNDS if classes <= SMALL else 1):
        timed_step()
    result = {
        "name": name,
        "seconds": min(times),
        "cpu_seconds": min(cpu),
        "peak_extra_mib": None if peak is None else peak / 2**20,
    }
    grads = [g.detach() for g in run.grads()]
    ref_path = ref_dir / f"{margin_type}_{classes}.pt"
    if name == "reference":
        torch.save({"loss": losses[-1], "grads": grads}, ref_path)
    else:
        ref = torch.load(ref_path, mmap=True)
        result["diff"] = peers.differences(losses[-1], grads, ref["loss"], ref["grads"])
        result["diff"]["loss"] /= max(1.0, float(ref["loss"].abs()))
    return result


def run_case(name: str, margin_type: str, classes: int, ref_dir: Path) -> dict:
    """`measure` in a fresh subprocess."""
    result = subprocess.run(
        [sys.executable, __file__, name, margin_type, str(classes), str(ref_dir)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"{name} {margin_type} C={classes} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(classes: int, margin_type: str, cases: dict) -> str:
    """Text table of one (C, margin): every case with time, ratio over native, peak, differences."""
    lines = [
        f"B={BATCH} C={classes} D={DIM} {margin_type} fp32 forward+backward",
        f"{'implementation':<20}{'time s':>9}{'/native':>9}{'CPU s':>9}{'/native':>9}{'peak MiB':>10}"
        f"{'d loss':>10}{'d x':>10}{'d W':>10}",
    ]
    native, native_cpu = cases["native"]["seconds"], cases["native"]["cpu_seconds"]
    for name, r in cases.items():
        d = r.get("diff", {})
        peak = "-" if r["peak_extra_mib"] is None else f"{r['peak_extra_mib']:.1f}"
        lines.append(
            f"{name:<20}{r['seconds']:>9.3f}{r['seconds'] / native:>9.2f}"
            f"{r['cpu_seconds']:>9.3f}{r['cpu_seconds'] / native_cpu:>9.2f}{peak:>10}"
            + "".join(f"{d[k]:>10.1e}" if k in d else f"{'(ref)':>10}" for k in TOLERANCE)
        )
    return "\n".join(lines)


def fastest_peer(cases: dict, key: str) -> str:
    """The fastest implementation that is not ours by `key` ("seconds" or "cpu_seconds")."""
    return min((n for n in cases if n not in peers.OURS), key=lambda n: cases[n][key])


CASES = [(c, m) for c in CLASSES for m in MARGINS]


@pytest.mark.parametrize("classes,margin_type", CASES, ids=[f"C{c}-{m}" for c, m in CASES])
def test_peers(benchmark, tmp_path, classes, margin_type):
    pytest.importorskip("pytorch_metric_learning", reason='pip install -e ".[bench]"')
    problem = peers.make_problem(BATCH, classes, DIM, margin_type, MARGINS[margin_type])
    native = peers.build("native", problem)
    native.step()
    benchmark.pedantic(native.step, rounds=2, iterations=1, warmup_rounds=0)
    del problem, native
    cases = {n: run_case(n, margin_type, classes, tmp_path) for n in case_names(margin_type, classes)}
    print("\n" + table(classes, margin_type, cases))
    info = benchmark.extra_info
    info["cases"] = cases
    for key, label in (("seconds", "wall"), ("cpu_seconds", "cpu")):
        peer = fastest_peer(cases, key)
        ratio = cases[peer][key] / cases["native"][key]
        info[f"{label}_fastest_peer"] = peer
        info[f"{label}_native_speedup_vs_fastest_peer"] = round(ratio, 2)
        print(f"{label} time: native {ratio:.2f}x as fast as the fastest peer ({peer})")
    for name, r in cases.items():
        for key, bound in TOLERANCE.items():
            assert r.get("diff", {}).get(key, 0.0) <= bound, (name, r["diff"])


if __name__ == "__main__":
    name, margin_type, classes, ref_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    print(json.dumps(measure(name, margin_type, classes, ref_dir)))
