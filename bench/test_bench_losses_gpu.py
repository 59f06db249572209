"""GPU bench of the fused head loss: triton vs chunked, forward + backward, UnED and larger sizes.

Run explicitly: `python -m pytest bench/test_bench_losses_gpu.py -q --junitxml=bench.xml`.  Each case
records the median milliseconds of both backends as junit properties; in bf16 it also asserts that
triton beats chunked (fp32 runs the kernels' exact-fp32 dots and is recorded only).
"""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

MET_CLASSES = 224408
GLDV2_CLASSES = 73182


def _inputs(batch, classes, dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    e_s = torch.nn.functional.normalize(torch.randn(batch, 64, device="cuda", generator=gen), dim=1).to(dtype)
    e_t = torch.nn.functional.normalize(torch.randn(batch, 256, device="cuda", generator=gen), dim=1).to(dtype)
    w_s = torch.randn(classes, 64, device="cuda", generator=gen).to(dtype)
    w_t = torch.randn(classes, 256, device="cuda", generator=gen).to(dtype)
    labels = torch.randint(0, classes, (batch,), device="cuda", generator=gen)
    return e_t, w_t, e_s, w_s, labels


def _median_ms(module, inputs, repeats=20):
    """Median time (ms) of one backend's forward + backward on (e_t, w_t, e_s, w_s, labels), normface
    (its target terms computed once, outside the timing)."""
    from udon_fast.losses.margins import resolve, target_terms

    e_t, w_t, e_s, w_s, labels = inputs
    z_y, dz_y = target_terms(resolve("normface"), 16.0, labels, [(e_t, w_t), (e_s, w_s)])
    args = dict(e_t=e_t, w_t=w_t, e_s=e_s, w_s=w_s, labels=labels, z_y=z_y, dz_y=dz_y, scale=16.0, tau_t=0.1, tau_s=0.1)
    rows = torch.full((inputs[0].shape[0],), 1.0 / inputs[0].shape[0], device="cuda")

    def step():
        *_, stats = module.forward(**args)
        module.backward(g_ce_t=rows, g_ce_s=rows, g_kl=rows, stats=stats, **args)

    step()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return sorted(times)[len(times) // 2]


@pytest.mark.parametrize("batch,classes", [(128, MET_CLASSES), (128, GLDV2_CLASSES), (1024, MET_CLASSES)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_bench_triton_vs_chunked(record_property, batch, classes, dtype):
    from udon_fast.losses import chunked, triton_backend

    inputs = _inputs(batch, classes, dtype)
    triton_ms = _median_ms(triton_backend, inputs)
    chunked_ms = _median_ms(chunked, inputs)
    record_property("triton_ms", triton_ms)
    record_property("chunked_ms", chunked_ms)
    if dtype == torch.bfloat16:
        assert triton_ms < chunked_ms, f"triton {triton_ms:.3f} ms vs chunked {chunked_ms:.3f} ms"
