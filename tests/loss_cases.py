"""Random UDON head-loss inputs and the comparison of a backend against `reference`."""
import torch

import udon_fast

MARGINS = [("normface", 0.0), ("cosface", 0.35), ("arcface", 0.5)]
EXTREME = dict(scale=64.0, teacher_temperature=0.02, student_temperature=0.02)


def make_inputs(batch, classes, d_s, d_t, *, seed=0, dtype=torch.float32, device="cpu"):
    """Unit-norm embeddings, raw weights with uneven row norms, int64 labels; all requiring grad."""
    gen = torch.Generator().manual_seed(seed)
    e_s = torch.nn.functional.normalize(torch.randn(batch, d_s, generator=gen), dim=1)
    e_t = torch.nn.functional.normalize(torch.randn(batch, d_t, generator=gen), dim=1)
    row_scale = torch.rand(classes, 1, generator=gen) * 2 + 0.05
    w_s = torch.randn(classes, d_s, generator=gen) * row_scale
    w_t = torch.randn(classes, d_t, generator=gen) * row_scale
    labels = torch.randint(0, classes, (batch,), generator=gen)
    tensors = [t.to(device=device, dtype=dtype).requires_grad_() for t in (e_s, e_t, w_s, w_t)]
    return (*tensors, labels.to(device))


def run(backend, inputs, **kwargs):
    """Forward + backward of `udon_loss` with random output weights; returns (outputs, grads)."""
    e_s, e_t, w_s, w_t, labels = inputs
    out = udon_fast.udon_loss(e_s, e_t, w_s, w_t, labels, backend=backend, **kwargs)
    probe = torch.tensor([1.0, 0.7, -0.4, 1.3, 0.9])
    (torch.stack(list(out)) * probe.to(out.total.device)).sum().backward()
    grads = [t.grad.detach().clone() for t in (e_s, e_t, w_s, w_t)]
    for t in (e_s, e_t, w_s, w_t):
        t.grad = None
    return [o.detach() for o in out], grads


def assert_results_close(got, want, rtol, atol):
    """(outputs, grads) pairs from `run`: outputs elementwise, gradients relative to the largest
    reference entry (a gradient's scale varies over orders of magnitude with B, C and the scale)."""
    (out, grads), (ref_out, ref_grads) = got, want
    names = ["total", "teacher_ce", "student_ce", "kl", "similarity"]
    for name, a, b in zip(names, out, ref_out):
        torch.testing.assert_close(a.float().cpu(), b.float().cpu(), rtol=rtol, atol=atol,
                                   msg=lambda m: f"{name}: {m}")
    for name, a, b in zip(["d student_emb", "d teacher_emb", "d student_weight", "d teacher_weight"], grads, ref_grads):
        scale = b.abs().max().clamp_min(1e-12)
        torch.testing.assert_close((a.float() / scale).cpu(), (b.float() / scale).cpu(), rtol=rtol, atol=atol,
                                   msg=lambda m: f"{name}: {m}")


def assert_matches_reference(backend, batch, classes, d_s, d_t, *, rtol=2e-4, atol=2e-5, **kwargs):
    inputs = make_inputs(batch, classes, d_s, d_t)
    assert_results_close(run(backend, inputs, **kwargs), run("reference", inputs, **kwargs), rtol, atol)
