"""The GPU check's `peers` part (bench/gpu_check.py): udon_fast's Triton backend against the fused linear
cross-entropy kernels of Liger-Kernel and cut-cross-entropy, and torch's F.linear_cross_entropy.

The loss is bench/peers.py's normface CE of one head: mean CE(s * normalize(x) . normalize(W_c), y),
bf16 inputs, forward + backward, D = 256.  Liger (`LigerFusedLinearCrossEntropyLoss`), cut-cross-entropy
(`linear_cross_entropy(e, c, targets, filter_eps=None)`: its default filter skips small gradient entries,
None keeps the gradient exact) and F.linear_cross_entropy take s * normalize(x) and normalize(W).
Neither Liger nor cut-cross-entropy is a dependency: the GPU machine has no internet, so they import
only when installed beside the repository (`pip install --no-deps --target .gpu_peers liger-kernel
cut-cross-entropy`, about 9 MiB, then carried with the run; gpu_check.sh puts .gpu_peers on
PYTHONPATH).  A peer that does not import is recorded as skipped with the reason.

Per case: median ms (triton.testing.do_bench), peak MiB above the inputs, and the max differences
against udon_fast's Triton result of the same shape (loss absolute; gradients relative to the largest
Triton entry).  The dry run (CPU) runs the implementations that work without CUDA at a tiny shape.
"""

import importlib

SHAPES = [(256, 224408), (4096, 224408), (4096, 1_000_000)]
DRY_SHAPES = [(4, 100)]
DIM, SCALE = 256, 16.0


def _implementations():
    """name -> (module to import or None, f(x, w, labels) -> loss)."""
    import torch
    import torch.nn.functional as F

    import udon_fast

    def ours(x, w, labels):
        return udon_fast.normalized_softmax_ce(
            F.normalize(x, dim=1), w, labels, scale=SCALE, backend="auto", check_inputs=False
        )

    def linear(fn):
        return lambda x, w, labels: fn(SCALE * F.normalize(x, dim=1), F.normalize(w, dim=1), labels)

    def liger(e, c, labels):
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        return LigerFusedLinearCrossEntropyLoss()(c, e, labels)

    def cce(e, c, labels):
        from cut_cross_entropy import linear_cross_entropy

        return linear_cross_entropy(e, c, labels, filter_eps=None)

    options = torch.nn.LinearCrossEntropyOptions()
    return {
        "udon_fast": (None, ours),
        "linear_ce": (None, linear(F.linear_cross_entropy)),
        "linear_ce_chunked": (None, linear(lambda e, c, y: F.linear_cross_entropy(e, c, y, options=options))),
        "liger_kernel": ("liger_kernel", linear(liger)),
        "cut_cross_entropy": ("cut_cross_entropy", linear(cce)),
    }


def _import_error(module: str | None, cuda: bool) -> str | None:
    if module is None:
        return None
    if not cuda:
        return f"{module} runs Triton kernels on CUDA only (dry run)"
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure is the reason to skip
        return f"{module} not importable: {type(exc).__name__}: {exc}"[:300]
    return None


def run(part, dry_run: bool, cuda: bool, timed_ms, peak_mib) -> None:
    """Fill `part` (gpu_check.Part) with one case per (implementation, shape)."""
    import torch

    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    part.doc.update(dtype=str(dtype).removeprefix("torch."), dim=DIM, scale=SCALE, margin_type="normface")
    impls = _implementations()
    skips = {name: _import_error(module, cuda) for name, (module, _) in impls.items()}
    for batch, classes in DRY_SHAPES if dry_run else SHAPES:
        gen = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(batch, DIM, device=device, generator=gen).to(dtype).requires_grad_()
        w = torch.randn(classes, DIM, device=device, generator=gen).to(dtype).requires_grad_()
        labels = torch.randint(0, classes, (batch,), device=device, generator=gen)
        ours = None
        for name, (_, fn) in impls.items():
            case = {"impl": name, "batch": batch, "classes": classes}
            if skips[name]:
                part.add_case({**case, "skipped": skips[name]})
                continue

            def step():
                x.grad = w.grad = None
                loss = fn(x, w, labels)
                loss.backward()
                return loss.detach().float()

            try:
                case["peak_mib"] = peak_mib(step, cuda)
                case["ms"] = round(timed_ms(step, cuda), 4)
                result = (step(), x.grad.float(), w.grad.float())
                if ours is None:
                    ours = result
                else:
                    case["diff_vs_udon_fast"] = {
                        "loss": float((result[0] - ours[0]).abs()),
                        **{
                            key: float((g - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
                            for key, g, ref in zip(("d_x", "d_weight"), result[1:], ours[1:])
                        },
                    }
                case["peak_mib"] = None if case["peak_mib"] is None else round(case["peak_mib"], 1)
            except Exception as exc:  # noqa: BLE001 - recorded, the next case runs
                case["error"] = f"{type(exc).__name__}: {exc}"[:500]
                part.add_error(f"{name} B={batch} C={classes}", exc)
            finally:
                if cuda:
                    torch.cuda.empty_cache()
            part.add_case(case)


def table_lines(doc: dict) -> list[str]:
    """The report table's lines for this part."""
    lines = [
        f"peers (normface CE, one head, {doc.get('dtype')}, D={doc.get('dim')}; diffs vs udon_fast)",
        f"{'impl':<19}{'B':>6}{'C':>9}{'ms':>10}{'peak MiB':>10}{'d loss':>10}{'d x':>10}{'d W':>10}",
    ]
    for c in doc["cases"]:
        head = f"{c['impl']:<19}{c['batch']:>6}{c['classes']:>9}"
        if "ms" in c:
            peak = "-" if c.get("peak_mib") is None else f"{c['peak_mib']:.0f}"
            d = c.get("diff_vs_udon_fast", {})
            lines.append(
                f"{head}{c['ms']:>10.3f}{peak:>10}"
                + "".join(f"{d[k]:>10.1e}" if k in d else f"{'-':>10}" for k in ("loss", "d_x", "d_weight"))
            )
        else:
            lines.append(f"{head}  {c.get('skipped') or c.get('error')}")
    return lines
