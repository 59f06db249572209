"""Measures the experiment of bench/fused_grad_experiment.cpp: the native head loss with its gradients
computed inside the forward pass (6 GEMM passes per (b, c) instead of 8), against the native forward
then backward, for the trainer's case (upstream row gradients known before the forward).

    python bench/fused_grad_experiment.py [--rounds 5] [--classes 224408]

Builds the experiment (torch.utils.cpp_extension, ninja, a C++ compiler with OpenMP; the same flags as
CMakeLists.txt's native build) into a temporary folder, so that baseline and experiment come from one
compilation of kernels/native/head_loss.cpp.  Then:
1. exactness: the experiment against the baseline on awkward shapes (B = 1, 7; C = 1, 1001, 3001;
   Ds, Dt = 48, 96), every margin type: the maximum absolute difference of every output;
2. speed at B = 256, C = 224,408, Ds = 64, Dt = 256, fp32, arcface 0.2, the trainer's upstream
   gradients: baseline and experiment alternated ABBA for --rounds rounds in this process; prints the
   best and median wall-clock and process CPU seconds (all threads) and the ratios baseline / experiment.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from loss_cases import MARGINS, make_inputs  # noqa: E402

from udon_fast.losses.margins import resolve, target_terms  # noqa: E402

FLAGS = ["-O3", "-march=x86-64-v2", "-ffp-contract=off", "-fopenmp"]


def build(folder: str):
    cpp_extension.load(
        name="udon_fused_grad_experiment",
        sources=[str(ROOT / "bench" / "fused_grad_experiment.cpp")],
        extra_include_paths=[str(ROOT / "kernels" / "native")],
        extra_cflags=FLAGS,
        extra_ldflags=["-fopenmp"],
        build_directory=folder,
        is_python_module=False,
        verbose=False,
    )
    return torch.ops.udon_fast_fused_experiment


def arguments(batch, classes, d_s, d_t, margin_type="arcface", options=None, scale=16.0, tau=0.1):
    """The op arguments of udon_loss's call for the trainer's weights (CE_t, CE_s, KL, SIM all 1): the
    upstream gradient of each per-row term is 1 / (4 B)."""
    e_s, e_t, w_s, w_t, labels = (
        t.detach() if t.dtype.is_floating_point else t for t in make_inputs(batch, classes, d_s, d_t)
    )
    margin = resolve(margin_type, **(options if options is not None else {"margin": 0.2}))
    z_y, dz_y = target_terms(margin, scale, labels, [(e_t, w_t), (e_s, w_s)])
    g = torch.full((batch,), 1.0 / (4 * batch))
    return (g, g.clone(), g.clone()), (e_t, w_t, e_s, w_s, labels, z_y, dz_y, scale, tau, tau)


def baseline(ops, grads, args):
    ce_t, ce_s, kl, stats = ops.head_forward(*args)
    return [ce_t, ce_s, kl, stats, *ops.head_backward(*grads, *args[:5], stats, *args[5:])]


def experiment(ops, grads, args):
    return list(ops.head_forward_backward(*grads, *args))


def exactness(ops) -> float:
    worst = 0.0
    for margin_type, options in MARGINS:
        for batch, classes in ((1, 1), (7, 1001), (7, 3001), (1, 3001)):
            grads, args = arguments(batch, classes, 48, 96, margin_type, options)
            for a, b in zip(baseline(ops, grads, args), experiment(ops, grads, args)):
                worst = max(worst, float((a - b).abs().max()))
    return worst


def timings(ops, classes: int, rounds: int) -> dict:
    grads, args = arguments(256, classes, 64, 256)
    functions = {"baseline": baseline, "experiment": experiment}
    for fn in functions.values():
        fn(ops, grads, args)
    seen = {name: {"wall": [], "cpu": []} for name in functions}
    for r in range(rounds):
        for name in ("baseline", "experiment") if r % 2 == 0 else ("experiment", "baseline"):
            wall, cpu = time.perf_counter(), time.process_time()
            functions[name](ops, grads, args)
            seen[name]["wall"].append(time.perf_counter() - wall)
            seen[name]["cpu"].append(time.process_time() - cpu)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--classes", type=int, default=224408)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        ops = build(folder)
        print(f"exactness: max |experiment - baseline| over all outputs, shapes and margins: {exactness(ops):.3g}")
        seen = timings(ops, args.classes, args.rounds)
    print(f"B=256 C={args.classes} Ds=64 Dt=256 fp32, {args.rounds} rounds ABBA, {torch.get_num_threads()} threads")
    for kind in ("wall", "cpu"):
        base, exp = seen["baseline"][kind], seen["experiment"][kind]
        print(
            f"{kind:>4}: baseline best {min(base):.3f} s median {statistics.median(base):.3f} s; experiment best "
            f"{min(exp):.3f} s median {statistics.median(exp):.3f} s; baseline / experiment: best "
            f"{min(base) / min(exp):.2f}, median {statistics.median(base) / statistics.median(exp):.2f}"
        )


if __name__ == "__main__":
    main()
