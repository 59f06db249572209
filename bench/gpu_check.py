"""The GPU check, one part per process (bench/gpu_check.sh runs each under its own timeout).

    python -m bench.gpu_check {tests,losses,train} --out DIR [--dry-run]   -> DIR/part_<part>.json
    python -m bench.gpu_check report --out DIR                         -> DIR/gpu_report.json + table

Parts (each writes its JSON after every case, so a timed-out part still leaves its results):
- tests: the environment (versions, device, which loss backends are usable, whether importing
  udon_fast and the trainer step pulled in DALI or faiss), then pytest of tests/test_losses_gpu.py
  (triton vs reference, fp32 and bf16/fp16), `-m "not slow"`, and of the GPU decoders (DALI mixed,
  torchvision nvJPEG) on a JPEG followed by other bytes (tests/test_image_checks.py).
- losses: udon_loss forward + backward, Ds = 64, Dt = 256, bf16: triton vs reference (eager) vs
  reference under torch.compile, B in {128, 1024, 4096} x C in {73182, 224408, 1000000}.  Time:
  median ms (triton.testing.do_bench); peak: torch.cuda.max_memory_allocated above the inputs (MiB).
  A reference case is skipped (with the reason) when its projected peak (bytes per logit, the most
  measured on the reference cases run so far, times B * C) exceeds REFERENCE_MEMORY_FRACTION of
  free memory, or its projected time (ms per logit, likewise) exceeds REFERENCE_MAX_MS.
  Achieved TFLOP/s = 8 * B * C * (Ds + Dt) / time (GEMM FLOPs per (b, c) and head: fwd 2D,
  recompute 2D, dE 2D, dW 2D; the Triton backward recomputes once more, which is not counted; see
  docs/kernels.md, "Work per (b, c)"); GB/s = the unavoidable HBM traffic 3 * C * (Ds + Dt) *
  element bytes (read W forward, read W backward, write dW) / time; both also as fractions of the
  H200 datasheet peaks (LIMITS).  Triton cases run first for every shape, then reference, then
  compiled.
- train: a ViT-B/16, 224 px, B = 128 UDONStep + apply(terms) on one domain of C = 224,408 classes:
  eager + reference loss vs compiled backbone + fused loss (backend "auto"); images/s and peak MiB.
- sync: the trainer's own loop (`Run.train`) on a generated two-domain dataset, the default backbone
  (EfficientNet-Lite0, packaged weights) at 64 px, B = 32, compiled, 13 steps with a log point every 5
  steps and a dynamic-sampler update every 6: every step runs under
  torch.cuda.set_sync_debug_mode("error"), which turns any device-to-host synchronisation into an
  error; the log points, the sampler's window reads, the checkpoint and the data loader run with it
  off.  Records the steps done, the log points and the first error.
- peers: udon_fast's Triton backend against Liger-Kernel, cut-cross-entropy and F.linear_cross_entropy on
  one head's normface CE (bench/gpu_peers.py); a peer that does not import is skipped with the reason.
- report: merges the parts and the exit statuses gpu_check.sh recorded (DIR/status_<part>) into
  gpu_report.json and prints a table.

--dry-run: the same code on CPU with tiny shapes (the sync part: the loop of a vit_tiny at 32 px, eager,
without the debug mode, which needs CUDA) (B = 4, C = 100, fp32: the Triton interpreter
computes bf16 dots wrongly), TRITON_INTERPRET=1 (set by gpu_check.sh), perf_counter timing, peak RSS
instead of CUDA memory, a 1-block vit_tiny at 32 px, and torch.compile with backend="eager" (dynamo
traces the graphs, no inductor code generation) so that it fits a CI test.
"""

import argparse
import contextlib
import datetime
import functools
import importlib
import importlib.util
import io
import json
import os
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

PARTS = ("tests", "losses", "train", "sync", "peers")
LIMITS = {"bf16_tflops": 989.0, "hbm_gbs": 4800.0}  # H200 SXM datasheet: dense bf16, HBM3e (docs/kernels.md)
D_S, D_T = 64, 256
REFERENCE_MEMORY_FRACTION = 0.7
REFERENCE_MAX_MS = 2000.0


class Part:
    """A part's JSON document, rewritten at DIR/part_<name>.json after every change (atomically, so a
    part killed by its timeout leaves the last complete document)."""

    def __init__(self, out: Path, name: str, dry_run: bool):
        self.path = out / f"part_{name}.json"
        self.doc = {"part": name, "dry_run": dry_run, "cases": [], "errors": []}
        self.save()

    def save(self) -> None:
        partial = self.path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.doc, indent=2))
        os.replace(partial, self.path)

    def add_case(self, case: dict) -> None:
        self.doc["cases"].append(case)
        self.save()

    def add_error(self, where: str, exc: BaseException) -> None:
        self.doc["errors"].append(
            {"where": where, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=8)}
        )
        self.save()


# ---- measurement -------------------------------------------------------------------------------


def timed_ms(fn, cuda: bool) -> float:
    """Milliseconds of a warm fn(): the median of triton.testing.do_bench on CUDA, else one
    perf_counter call (the dry run; the caller has warmed fn up)."""
    if cuda:
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def use_cuda(dry_run: bool) -> bool:
    """CUDA for the real check, CPU for the dry run; the real check without a device is an error."""
    import torch

    if dry_run:
        return False
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device: run bench/gpu_check.sh --dry-run on CPU")
    return True


def peak_mib(fn, cuda: bool) -> float | None:
    """Peak memory of one fn() above the memory allocated before it (MiB): CUDA allocator, else RSS."""
    import torch

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from bench.suite import peak_rss_extra_bytes

    peak = peak_rss_extra_bytes(fn)
    return None if peak is None else peak / 2**20


# ---- parts -------------------------------------------------------------------------------------


def environment() -> dict:
    import torch

    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
    }
    if info["cuda"]:
        info["device"] = torch.cuda.get_device_name()
        info["device_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    for name in ("triton", "timm"):
        try:
            info[name] = importlib.import_module(name).__version__
        except ImportError as exc:
            info[name] = f"missing ({exc})"
    import udon_fast
    from udon_fast.losses import backends

    importlib.import_module("udon_fast.trainer.step")
    info["udon_fast"] = str(Path(udon_fast.__file__).parent)
    info["backends"] = {k: {"usable": ok, "reason": why} for k, (ok, why) in backends.status().items()}
    info["auto_backend"] = backends.auto_backend("cuda" if info["cuda"] else "cpu")
    info["imported_dali"] = any(m.startswith("nvidia.dali") for m in sys.modules)
    info["imported_faiss"] = "faiss" in sys.modules
    return info


def part_tests(part: Part, dry_run: bool) -> None:
    """Environment facts, then the GPU loss tests in this process (one torch import, not two)."""
    import pytest

    try:
        part.doc["env"] = environment()
        part.save()
    except Exception as exc:  # noqa: BLE001 - recorded; the tests still run and show the failure
        part.add_error("environment", exc)
    junit = part.path.with_name("tests_junit.xml")
    args = [
        "tests/test_losses_gpu.py",
        "tests/test_image_checks.py::test_motion_photo_decodes_on_the_gpu",
        "-m",
        "not slow",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
    ]
    output = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        status = int(pytest.main(args))
    summary = {
        "command": "pytest " + " ".join(args),
        "exit": status,
        "seconds": round(time.perf_counter() - start, 1),
        "output_tail": output.getvalue()[-3000:],
    }
    if junit.exists():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        summary.update(counts)
        summary["failed_cases"] = [
            f"{c.get('classname')}::{c.get('name')}"
            for c in suite.iter("testcase")
            if c.find("failure") is not None or c.find("error") is not None
        ]
    part.add_case(summary)


def loss_inputs(batch: int, classes: int, dtype, device):
    import torch

    gen = torch.Generator(device=device).manual_seed(0)
    e_s = torch.nn.functional.normalize(torch.randn(batch, D_S, device=device, generator=gen), dim=1)
    e_t = torch.nn.functional.normalize(torch.randn(batch, D_T, device=device, generator=gen), dim=1)
    w_s = torch.randn(classes, D_S, device=device, generator=gen)
    w_t = torch.randn(classes, D_T, device=device, generator=gen)
    labels = torch.randint(0, classes, (batch,), device=device, generator=gen)
    return (*(t.to(dtype).requires_grad_() for t in (e_s, e_t, w_s, w_t)), labels)


def loss_step(loss_fn, inputs) -> None:
    """Forward + backward of one loss; gradients dropped."""
    loss_fn(*inputs).backward()
    for t in inputs[:4]:
        t.grad = None


def loss_functions(dry_run: bool) -> dict:
    """impl name -> f(e_s, e_t, w_s, w_t, labels) -> total loss (0-d)."""
    import torch

    import udon_fast

    def total(backend, *inputs):
        return udon_fast.udon_loss(*inputs, margin_type="arcface", margin=0.2, scale=16.0, backend=backend).total

    compile_backend = "eager" if dry_run else "inductor"
    return {
        "triton": functools.partial(total, "triton"),
        "reference": functools.partial(total, "reference"),
        "reference_compiled": torch.compile(functools.partial(total, "reference"), backend=compile_backend),
    }


def throughput(batch: int, classes: int, element_bytes: int, ms: float) -> dict:
    flops = 8 * batch * classes * (D_S + D_T)
    hbm_bytes = 3 * classes * (D_S + D_T) * element_bytes
    tflops, gbs = flops / (ms * 1e-3) / 1e12, hbm_bytes / (ms * 1e-3) / 1e9
    return {
        "tflops": round(tflops, 2),
        "gbs": round(gbs, 1),
        "tflops_fraction": round(tflops / LIMITS["bf16_tflops"], 4),
        "gbs_fraction": round(gbs / LIMITS["hbm_gbs"], 4),
    }


def reference_skip(per_logit: dict, logits: int) -> str | None:
    """Why a reference case of `logits` = B * C logits should not run (projected from `per_logit`), or None."""
    import torch

    free = torch.cuda.mem_get_info()[0]
    projected_bytes, projected_ms = per_logit["bytes"] * logits, per_logit["ms"] * logits
    if projected_bytes > REFERENCE_MEMORY_FRACTION * free:
        return (
            f"projected peak {projected_bytes / 2**30:.1f} GiB > {REFERENCE_MEMORY_FRACTION} x free "
            f"{free / 2**30:.1f} GiB"
        )
    if projected_ms > REFERENCE_MAX_MS:
        return f"projected {projected_ms:.0f} ms a call > {REFERENCE_MAX_MS:.0f} ms"
    return None


def part_losses(part: Part, dry_run: bool) -> None:
    import torch

    cuda = use_cuda(dry_run)
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    shapes = [(4, 100)] if dry_run else [(b, c) for b in (128, 1024, 4096) for c in (73182, 224408, 1_000_000)]
    part.doc.update(dtype=str(dtype).removeprefix("torch."), d_s=D_S, d_t=D_T, limits=LIMITS)
    functions = loss_functions(dry_run)
    per_logit = {"bytes": 0.0, "ms": 0.0}  # the most seen on reference cases, for the skip rule
    for impl, fn in functions.items():
        for batch, classes in shapes:
            case = {"impl": impl, "batch": batch, "classes": classes}
            skip = impl != "triton" and cuda and reference_skip(per_logit, batch * classes)
            if skip:
                case["skipped"] = skip
                part.add_case(case)
                continue
            try:
                inputs = loss_inputs(batch, classes, dtype, device)
                step = functools.partial(loss_step, fn, inputs)
                case["peak_mib"] = peak_mib(step, cuda)  # also the warm-up (compilation)
                case["ms"] = round(timed_ms(step, cuda), 4)
                case.update(throughput(batch, classes, inputs[0].element_size(), case["ms"]))
                if cuda and impl != "triton":
                    per_logit["bytes"] = max(per_logit["bytes"], case["peak_mib"] * 2**20 / (batch * classes))
                    per_logit["ms"] = max(per_logit["ms"], case["ms"] / (batch * classes))
                case["peak_mib"] = None if case["peak_mib"] is None else round(case["peak_mib"], 1)
            except Exception as exc:  # noqa: BLE001 - recorded, the next case runs
                case["error"] = f"{type(exc).__name__}: {exc}"[:500]
                part.add_error(f"{impl} B={batch} C={classes}", exc)
            finally:
                inputs = step = None
                if cuda:
                    torch.cuda.empty_cache()
            part.add_case(case)


def part_train(part: Part, dry_run: bool) -> None:
    import torch

    from udon_fast.model import UDONModel

    optimizer_mod = importlib.import_module("udon_fast.trainer.optimizer")
    step_mod = importlib.import_module("udon_fast.trainer.step")
    cuda = use_cuda(dry_run)
    device = "cuda" if cuda else "cpu"
    if dry_run:
        backbone, kwargs, size, batch, classes, warmup, steps = "vit_tiny_patch16_224", {"depth": 1}, 32, 4, 100, 1, 1
    else:
        backbone, kwargs, size, batch, classes, warmup, steps = "vit_base_patch16_224", {}, 224, 128, 224408, 3, 10
    part.doc.update(
        backbone=backbone,
        backbone_kwargs=kwargs,
        image_size=size,
        batch=batch,
        classes=classes,
        warmup_steps=warmup,
        timed_steps=steps,
    )
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.randn(batch, 3, size, size, device=device, generator=gen)
    labels = torch.randint(0, classes, (batch,), device=device, generator=gen)
    rates = {}
    for mode, use_compile, backend in (("eager_reference", False, "reference"), ("compiled_fused", True, "auto")):
        case = {"mode": mode, "compile": use_compile, "backend": backend}
        try:
            torch.manual_seed(0)
            model = UDONModel(backbone, {"met": classes}, image_size=size, backbone_kwargs=kwargs).to(device)
            optimizer = optimizer_mod.build_optimizer(model, lr=1e-3, backbone_lr_mult=0.01, weight_decay=1e-4)
            options = step_mod.LossOptions(
                margin_type="arcface",
                margin=0.2,
                scale=16.0,
                temperature=0.1,
                kl_weight=1.0,
                similarity_weight=1.0,
                backend=backend,
                n_devices=1,
            )
            step = step_mod.UDONStep(model, optimizer, options, compile=use_compile, grad_clip=None, world_size=1)
            if use_compile and dry_run:  # dynamo without inductor code generation: fits CI time
                step.forward_loss = torch.compile(step._forward_loss, backend="eager", fullgraph=True)

            def one_step():
                step.apply(torch.stack(list(step(images, labels, "met"))))

            start = time.perf_counter()
            for _ in range(warmup):
                one_step()
            sync(cuda)
            case["warmup_s"] = round(time.perf_counter() - start, 2)
            start = time.perf_counter()
            for _ in range(steps):
                one_step()
            sync(cuda)
            seconds = (time.perf_counter() - start) / steps
            case.update(step_ms=round(seconds * 1e3, 2), images_per_s=round(batch / seconds, 1), compiled=step.compiled)
            peak = peak_mib(one_step, cuda)
            case["peak_mib"] = None if peak is None else round(peak, 1)
            rates[mode] = batch / seconds
        except Exception as exc:  # noqa: BLE001 - recorded, the next mode runs
            case["error"] = f"{type(exc).__name__}: {exc}"[:500]
            part.add_error(mode, exc)
        finally:
            model = optimizer = step = None
            if cuda:
                torch.cuda.empty_cache()
        part.add_case(case)
    if len(rates) == 2:
        speedup = rates["compiled_fused"] / rates["eager_reference"]
        part.doc["speedup_compiled_fused_vs_eager_reference"] = round(speedup, 2)
        part.save()


def part_sync(part: Part, dry_run: bool) -> None:
    import tempfile

    import torch

    from udon_fast.commands.train import parse_args
    from udon_fast.data.synthetic import write_tiny_uned
    from udon_fast.trainer.loop import Run
    from udon_fast.trainer.state import Progress

    cuda = use_cuda(dry_run)
    model_args = (
        [
            "--backbone",
            "vit_tiny_patch16_224",
            "--pretrained",
            "none",
            "--image-size",
            "32",
            "--batch-size",
            "8",
            "--no-compile",
        ]
        if dry_run
        else [
            "--backbone",
            "tf_efficientnet_lite0",
            "--pretrained",
            "packaged",
            "--image-size",
            "64",
            "--batch-size",
            "32",
            "--compile",
            "on",
        ]
    )
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_tiny_uned(
            root / "data", {"shops": {"train": 20, "test": 3}, "birds": {"train": 24, "test": 3}}, per_class=4
        )
        argv = [
            "--data-root",
            str(root / "data"),
            "--out",
            str(root / "run"),
            *model_args,
            "--steps",
            "13",
            "--log-every",
            "5",
            "--update-every",
            "6",
            "--checkpoint-every",
            "1000",
            "--frozen-epochs",
            "0",
            "--no-progress",
            "--data-threads",
            "2",
            "--no-baseline",
        ]
        part.doc.update(argv=argv[4:], sync_debug_mode="error" if cuda else None)
        run = Run(parse_args(argv))
        counts = {"steps": 0, "log_points": 0}

        def debug_mode(mode):
            if cuda:
                torch.cuda.set_sync_debug_mode(mode)

        def allowed(function, count=None):  # runs with the debug mode off
            def call(*args, **kwargs):
                if count:
                    counts[count] += 1
                debug_mode(0)
                try:
                    return function(*args, **kwargs)
                finally:
                    debug_mode("error")

            return call

        run.loader.next_batch = allowed(run.loader.next_batch, "steps")  # one batch a step
        run._log_point = allowed(run._log_point, "log_points")
        run._check_finite = allowed(run._check_finite)
        run.sampler._update = allowed(run.sampler._update)
        run.checkpoint = allowed(run.checkpoint)
        run.out.mkdir(parents=True, exist_ok=True)
        (run.out / "metrics.jsonl").write_text("")
        start = time.perf_counter()
        try:
            debug_mode("error")
            run.train(Progress())
            case = {"ok": True}
        except Exception as exc:  # noqa: BLE001 - the first synchronising call, recorded
            case = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
            part.add_error("sync", exc)
        finally:
            debug_mode(0)
            run.loader.close()
        case.update(counts, seconds=round(time.perf_counter() - start, 1))
        part.add_case(case)


def part_peers(part: Part, dry_run: bool) -> None:
    from bench import gpu_peers

    gpu_peers.run(part, dry_run, use_cuda(dry_run), timed_ms, peak_mib)


def sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


# ---- report ------------------------------------------------------------------------------------


def read_parts(out: Path) -> dict:
    """Each part's JSON, with the exit status gpu_check.sh recorded and an error when it is missing."""
    parts = {}
    for name in PARTS:
        path, status = out / f"part_{name}.json", out / f"status_{name}"
        doc = json.loads(path.read_text()) if path.exists() else {"part": name, "cases": [], "errors": []}
        if status.exists():
            doc["exit"] = int(status.read_text().split()[0])
            if doc["exit"] in (124, 137):
                doc["errors"].append({"where": name, "error": f"timed out ({status.read_text().strip()})"})
            elif doc["exit"] != 0 and not doc["errors"]:
                doc["errors"].append({"where": name, "error": f"exit status {doc['exit']}"})
        if not path.exists():
            doc["errors"].append({"where": name, "error": "the part wrote no results"})
        parts[name] = doc
    return parts


def table(parts: dict) -> str:
    lines = []
    env = parts["tests"].get("env", {})
    lines.append(
        f"device: {env.get('device', 'CPU (dry run)' if parts['tests'].get('dry_run') else 'unknown')}; "
        f"torch {env.get('torch')}; triton {env.get('triton')}; auto backend {env.get('auto_backend')}"
    )
    for case in parts["tests"]["cases"]:
        lines.append(
            f"tests: exit {case['exit']}, passed {case.get('passed')}, failed {case.get('failures')}, "
            f"errors {case.get('errors')}, skipped {case.get('skipped')} ({case['seconds']} s)"
        )
    losses = parts["losses"]
    lines += [
        "",
        f"losses ({losses.get('dtype')}, Ds={D_S}, Dt={D_T}; fraction of {LIMITS['bf16_tflops']:g} TFLOP/s "
        f"and {LIMITS['hbm_gbs']:g} GB/s)",
        f"{'impl':<19}{'B':>6}{'C':>9}{'ms':>10}{'peak MiB':>10}{'TFLOP/s':>9}{'%':>7}{'GB/s':>8}{'%':>7}",
    ]
    for c in losses["cases"]:
        head = f"{c['impl']:<19}{c['batch']:>6}{c['classes']:>9}"
        if "ms" in c:
            peak = "-" if c.get("peak_mib") is None else f"{c['peak_mib']:.0f}"
            lines.append(
                f"{head}{c['ms']:>10.3f}{peak:>10}{c['tflops']:>9.1f}{100 * c['tflops_fraction']:>7.1f}"
                f"{c['gbs']:>8.0f}{100 * c['gbs_fraction']:>7.1f}"
            )
        else:
            lines.append(f"{head}  {c.get('skipped') or c.get('error')}")
    train = parts["train"]
    lines += [
        "",
        f"train step ({train.get('backbone')}, {train.get('image_size')} px, B={train.get('batch')}, "
        f"C={train.get('classes')})",
    ]
    for c in train["cases"]:
        lines.append(
            f"{c['mode']:<17} "
            + (
                f"{c['images_per_s']:>8.1f} images/s  {c['step_ms']:>9.1f} ms  peak "
                f"{c.get('peak_mib')} MiB  compiled={c['compiled']}"
                if "images_per_s" in c
                else str(c.get("error"))
            )
        )
    speedup = train.get("speedup_compiled_fused_vs_eager_reference")
    if speedup is not None:
        lines.append(f"speedup compiled+fused vs eager+reference: {speedup}x")
    sync_part = parts["sync"]
    for c in sync_part["cases"]:
        lines.append(
            f"sync check (debug mode {sync_part.get('sync_debug_mode')}): {c['steps']} steps, "
            f"{c['log_points']} log points, " + ("no sync between log points" if c["ok"] else c["error"])
        )
    from bench import gpu_peers

    lines += ["", *gpu_peers.table_lines(parts["peers"])]
    errors = [f"{name}: {e['where']}: {e['error']}" for name, doc in parts.items() for e in doc["errors"]]
    lines += ["", "errors:" if errors else "errors: none", *errors]
    return "\n".join(lines)


def report(out: Path) -> bool:
    """Write gpu_report.json, print the table; True when no part recorded an error."""
    parts = read_parts(out)
    doc = {
        "dry_run": parts["tests"].get("dry_run"),
        "limits": LIMITS,
        "parts": parts,
        "ok": all(not doc["errors"] for doc in parts.values()),
    }
    (out / "gpu_report.json").write_text(json.dumps(doc, indent=2))
    print(table(parts))
    return doc["ok"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=(*PARTS, "report"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU (see the module docstring)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part == "report":
        return 0 if report(args.out) else 1
    part = Part(args.out, args.part, args.dry_run)
    start = time.perf_counter()
    try:
        globals()[f"part_{args.part}"](part, args.dry_run)
    except Exception as exc:  # noqa: BLE001 - recorded in the part's JSON
        part.add_error(args.part, exc)
        return 1
    finally:
        part.doc["seconds"] = round(time.perf_counter() - start, 1)
        part.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
