"""The cosine-margin softmax CE of one head, as udon_fast computes it and as its peers do, on one signature.

Every implementation computes the same loss: the mean over the batch of

    CE(s * cos(x_b, W_c) with the margin on the target logit, y_b),   cos = normalize(x) . normalize(W_c)

for raw embeddings x (B, D) and raw class weights W (C, D), fp32, and its gradients with respect to x
and W.  x is normalised inside every implementation (pytorch-metric-learning normalises its input
itself; the others get `F.normalize(x)`), so all of them differentiate the same function of the same
leaves.

Implementations (`IMPLEMENTATIONS`; `supports(name, margin_type)` says which margins each computes):
- ours: `native`, `chunked` (`udon_fast.normalized_softmax_ce` with that backend);
- `reference`: the same function with backend="reference", i.e. eager `F.cross_entropy` on the
  materialised (B, C) logits; `reference_compiled`: that function under `torch.compile` (inductor);
- `linear_ce`: `F.linear_cross_entropy(s * normalize(x), normalize(W), y)` (torch >= 2.14), its
  reference path (`options=None`); `linear_ce_chunkN`: its chunked path with
  `LinearCrossEntropyOptions(batch_chunk_size=N)`; `linear_ce_auto`: the chunked path with the default
  options (`chunking_method="auto"`).  normface only: a linear layer has no target margin;
- `pml_cosface`, `pml_arcface`: pytorch-metric-learning's `CosFaceLoss` / `ArcFaceLoss`, mapped
  exactly: ArcFace's margin is given in degrees (`math.degrees(m)`), the scale is passed (pml's
  default is 64), and the module's own (D, C) weight is replaced by a copy of W transposed (its
  default initialisation differs), whose gradient is transposed back.  pml's ArcFace replaces
  cos(theta + m) by cos(theta) - m sin(m) for target angles beyond pi - m; udon_fast does not (see
  udon_fast/losses/margins.py), so the two agree where every target angle is below pi - m, as with
  random inputs in D = 256.

`build(name, problem)` returns a `Run`: `step()` does one forward + backward and returns the loss
(detached), `grads()` the gradients with respect to x (B, D) and W (C, D) of the last step.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import udon_fast

LINEAR_CE_CHUNKS = (16, 64, 256)  # batch rows per chunk tried for F.linear_cross_entropy's chunked path
OURS = ("native", "chunked")


@dataclass
class Problem:
    """One loss call: x (B, D) raw embeddings and weight (C, D) raw class weights, fp32 leaves that
    require grad; labels (B,) int64; the margin as udon_fast names it; scale s."""

    x: torch.Tensor
    weight: torch.Tensor
    labels: torch.Tensor
    margin_type: str
    margin: float
    scale: float


@dataclass
class Run:
    """step(): one forward + backward, returns the loss (0-d, detached); grads(): (d x, d weight) of
    the last step, (B, D) and (C, D)."""

    step: Callable[[], torch.Tensor]
    grads: Callable[[], tuple[torch.Tensor, torch.Tensor]]


def make_problem(
    batch: int, classes: int, dim: int, margin_type: str, margin: float, scale: float = 16.0, seed: int = 0
) -> Problem:
    """Random raw embeddings (norms 0.5 to 2), weights with uneven row norms, labels; seeded."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=gen) * (torch.rand(batch, 1, generator=gen) * 1.5 + 0.5)
    weight = torch.randn(classes, dim, generator=gen) * (torch.rand(classes, 1, generator=gen) * 2 + 0.05)
    labels = torch.randint(0, classes, (batch,), generator=gen)
    return Problem(x.requires_grad_(), weight.requires_grad_(), labels, margin_type, margin, scale)


def linear_ce_options(name: str):
    """`LinearCrossEntropyOptions` of a linear_ce name: None (reference path), the default options
    (`linear_ce_auto`), or batch_chunk_size N (`linear_ce_chunkN`)."""
    if name == "linear_ce":
        return None
    if name == "linear_ce_auto":
        return torch.nn.LinearCrossEntropyOptions()
    return torch.nn.LinearCrossEntropyOptions(batch_chunk_size=int(name.removeprefix("linear_ce_chunk")))


IMPLEMENTATIONS = (
    *OURS,
    "reference",
    "reference_compiled",
    "linear_ce",
    "linear_ce_auto",
    *(f"linear_ce_chunk{n}" for n in LINEAR_CE_CHUNKS),
    "pml_cosface",
    "pml_arcface",
)
PML_MARGINS = {"pml_cosface": "cosface", "pml_arcface": "arcface"}


def supports(name: str, margin_type: str) -> bool:
    """Whether implementation `name` computes the loss with this margin type."""
    if name.startswith("linear_ce"):
        return margin_type == "normface"
    if name in PML_MARGINS:
        return PML_MARGINS[name] == margin_type
    return True


def _leaf_grads(p: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    return p.x.grad, p.weight.grad


def _clear(*tensors: torch.Tensor) -> None:
    for t in tensors:
        t.grad = None


def _ours(p: Problem, backend: str, compiled: bool = False) -> Run:
    def loss(x, weight, labels):
        return udon_fast.normalized_softmax_ce(
            F.normalize(x, dim=1),
            weight,
            labels,
            margin_type=p.margin_type,
            margin=p.margin,
            scale=p.scale,
            backend=backend,
            check_inputs=False,
        )

    fn = torch.compile(loss) if compiled else loss

    def step():
        _clear(p.x, p.weight)
        out = fn(p.x, p.weight, p.labels)
        out.backward()
        return out.detach()

    return Run(step, lambda: _leaf_grads(p))


def _linear_ce(p: Problem, name: str) -> Run:
    options = linear_ce_options(name)

    def step():
        _clear(p.x, p.weight)
        out = F.linear_cross_entropy(
            p.scale * F.normalize(p.x, dim=1), F.normalize(p.weight, dim=1), p.labels, options=options
        )
        out.backward()
        return out.detach()

    return Run(step, lambda: _leaf_grads(p))


def _pml(p: Problem, name: str) -> Run:
    from pytorch_metric_learning import losses

    classes, dim = p.weight.shape
    if name == "pml_arcface":
        module = losses.ArcFaceLoss(classes, dim, margin=math.degrees(p.margin), scale=p.scale)
    else:
        module = losses.CosFaceLoss(classes, dim, margin=p.margin, scale=p.scale)
    with torch.no_grad():
        module.W.copy_(p.weight.t())

    def step():
        _clear(p.x, module.W)
        out = module(p.x, p.labels)
        out.backward()
        return out.detach()

    return Run(step, lambda: (p.x.grad, module.W.grad.t()))


def build(name: str, p: Problem) -> Run:
    """The `Run` of implementation `name` on problem `p` (ValueError for a margin it does not compute)."""
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {name!r}; known: {IMPLEMENTATIONS}")
    if not supports(name, p.margin_type):
        raise ValueError(f"{name} does not compute margin_type={p.margin_type!r}")
    if name in OURS or name == "reference":
        return _ours(p, name)
    if name == "reference_compiled":
        return _ours(p, "reference", compiled=True)
    if name.startswith("linear_ce"):
        return _linear_ce(p, name)
    return _pml(p, name)


def differences(loss: torch.Tensor, grads, ref_loss: torch.Tensor, ref_grads) -> dict:
    """Max differences against the reference: |loss - ref| (absolute) and, per gradient,
    max |g - g_ref| / max |g_ref| (relative to the largest reference entry)."""
    out = {"loss": float((loss - ref_loss).abs())}
    for key, g, ref in zip(("d_x", "d_weight"), grads, ref_grads):
        out[key] = float((g - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
    return out
