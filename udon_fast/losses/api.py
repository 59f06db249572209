"""Public loss API: `udon_loss`, `normalized_softmax_ce`, `UDONLoss`.

All backends compute the same per-row head losses (see `head_op.py`); this module validates the
arguments, dispatches, takes batch means and forms the weighted total (docs/method.md, section 2.6).
"""
from typing import NamedTuple

import torch
from torch import nn

from . import backends, class_parallel, reference, validate
from .class_parallel import ClassShard
from .margins import Margin, resolve, target_terms
from .similarity import similarity_loss


class UDONLossOutput(NamedTuple):
    """The loss terms of one batch: 0-d float32 tensors, differentiable."""

    total: torch.Tensor
    teacher_ce: torch.Tensor
    student_ce: torch.Tensor
    kl: torch.Tensor
    similarity: torch.Tensor


def _head_rows(backend, e_t, w_t, e_s, w_s, labels, margin: Margin, scale, tau_t, tau_s):
    if backend == "reference":
        return reference.head_loss_rows(e_t, w_t, e_s, w_s, labels, margin, scale, tau_t, tau_s)
    z_y, dz_y = target_terms(margin, scale, labels, [(e_t, w_t)] if e_s is None else [(e_t, w_t), (e_s, w_s)])
    op = backends.fused_op(backend)
    ce_t, ce_s, kl, _ = op(e_t.contiguous(), w_t.contiguous(),
                           None if e_s is None else e_s.contiguous(),
                           None if w_s is None else w_s.contiguous(),
                           labels.contiguous(), z_y, dz_y, float(scale), float(tau_t), float(tau_s))
    return ce_t, ce_s, kl


def _sharded_rows(what, shard, check, backend, e_t, w_t, e_s, w_s, labels, margin_args: tuple, scale, tau_t, tau_s):
    """Per-row CE_t, CE_s, KL over all ranks' rows for class-parallel weights (class_parallel.py).

    margin_args: (margin_type, margin, margins), resolved once every rank's `check` has passed."""
    if not isinstance(shard, ClassShard):
        raise TypeError(f"class_shard must be a udon_fast.ClassShard, got {type(shard).__name__}")

    def check_all():
        check()
        if backend == "reference":
            raise ValueError("backend='reference' materialises the logits; class_shard needs a fused backend "
                             "(auto, chunked, native or triton)")
        backends.resolve(backend, e_t.device)

    plan = class_parallel.plan(shard, check_all, e_t, w_t, e_s, what)
    return class_parallel.head_rows(plan, backends.resolve(backend, e_t.device), e_t, w_t, e_s, w_s, labels,
                                    resolve(*margin_args), scale, tau_t, tau_s)


def udon_loss(
    student_emb: torch.Tensor, teacher_emb: torch.Tensor,
    student_weight: torch.Tensor, teacher_weight: torch.Tensor, labels: torch.Tensor,
    *, margin_type: str = "normface", margin: float = 0.0, margins: tuple[float, float, float] | None = None,
    scale: float = 16.0, teacher_temperature: float = 0.1, student_temperature: float = 0.1,
    teacher_ce_weight: float = 1.0, student_ce_weight: float = 1.0, kl_weight: float = 1.0,
    similarity_weight: float = 1.0, backend: str = "auto", n_devices: int = 1,
    class_shard: ClassShard | None = None, check_inputs: bool = True,
) -> UDONLossOutput:
    """The UDON loss of one single-domain batch (docs/method.md, section 2).

    student_emb (B, Ds), teacher_emb (B, Dt): L2-normalised embeddings (fp32, bf16 or fp16).
    student_weight (C, Ds), teacher_weight (C, Dt): raw class weights (rows normalised inside).
    labels (B,) int64 in [0, C).  n_devices scales SIM as the release does per device.
    margin: normface takes none (0); cosface 0 <= margin < 1; arcface 0 <= margin < pi/2.
    margins: (m1, m2, m3) of margin_type="combined", insightface's cos(m1*theta + m2) - m3 (then
    margin stays 0): m1 >= 1, m2 >= 0, m3 >= 0, m1*pi/2 + m2 < pi, cos(m2) - m3 > 0.  `margins.py`
    says why these ranges.
    Returns UDONLossOutput of 0-d float32 tensors; total = weighted sum / sum of weights.
    Raises ValueError/TypeError naming the argument before any kernel runs: among the value checks
    (skipped under torch.compile), NaN/inf inputs and a class-weight row of norm 0, named by its
    argument and class index.

    class_shard: class-parallel classifiers over a torch.distributed group (`ClassShard`, see
    `losses/class_parallel.py`).  Every rank of the group calls with its own rows (B_r may differ) and
    its slice of the weights, rows [start, start + C_r) of the (C, D) matrices, C = num_classes;
    labels are global ids in [0, C).  teacher_ce, student_ce and kl are then means over all ranks'
    rows, the same on every rank and equal to the single-process loss of the concatenated batch with
    the full weights; after `total.backward()` on every rank, each rank's embedding gradients are its
    rows of the single-process ones and its weight gradients the slice's rows.  SIM stays on this
    rank's rows.  Needs a fused backend; runs eagerly (collectives), not under torch.compile.

    check_inputs: True (default) runs the data checks (`validate.check_values`: labels in range, finite
    embeddings, finite class weights without zero rows), which read values on the host: on a GPU each
    is a device-to-host synchronisation, and the weight checks pass over the (C, D) weights again.
    A caller in a training loop passes False and checks its weights once, when it builds or loads
    them (the trainer does).  The shape, dtype, device and argument checks always run.
    """
    weights = {"teacher_ce_weight": teacher_ce_weight, "student_ce_weight": student_ce_weight,
               "kl_weight": kl_weight, "similarity_weight": similarity_weight}

    def check():
        validate.check_head_scalars(margin_type, margin, margins, scale)
        validate.check_positive("teacher_temperature", teacher_temperature)
        validate.check_positive("student_temperature", student_temperature)
        validate.check_loss_weights(weights)
        for emb_name, emb, weight_name, weight in (("teacher_emb", teacher_emb, "teacher_weight", teacher_weight),
                                                   ("student_emb", student_emb, "student_weight", student_weight)):
            validate.check_head(emb_name, emb, weight_name, weight, labels, backend == "reference",
                                allow_no_classes=class_shard is not None)
        validate.check_pair(student_emb, teacher_emb, student_weight, teacher_weight)
        if check_inputs and not torch.compiler.is_compiling():
            validate.check_values({"student_emb": student_emb, "teacher_emb": teacher_emb},
                                  {"student_weight": student_weight, "teacher_weight": teacher_weight},
                                  labels, teacher_weight.shape[0] if class_shard is None else class_shard.num_classes)

    margin_args, params = (margin_type, margin, margins), (scale, teacher_temperature, student_temperature)
    if class_shard is None:
        check()
        name = backends.resolve(backend, teacher_emb.device)
        ce_t, ce_s, kl = _head_rows(name, teacher_emb, teacher_weight, student_emb, student_weight, labels,
                                    resolve(*margin_args), *params)
    else:
        ce_t, ce_s, kl = _sharded_rows("udon_loss", class_shard, check, backend, teacher_emb, teacher_weight,
                                       student_emb, student_weight, labels, margin_args, *params)
    teacher_ce, student_ce, kl = ce_t.mean(), ce_s.mean(), kl.mean()
    sim = similarity_loss(student_emb, teacher_emb, n_devices)
    total = (teacher_ce_weight * teacher_ce + student_ce_weight * student_ce + kl_weight * kl
             + similarity_weight * sim) / sum(weights.values())
    return UDONLossOutput(total, teacher_ce, student_ce, kl, sim)


def normalized_softmax_ce(
    emb: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
    *, margin_type: str = "normface", margin: float = 0.0, margins: tuple[float, float, float] | None = None,
    scale: float = 16.0, backend: str = "auto", class_shard: ClassShard | None = None, check_inputs: bool = True,
) -> torch.Tensor:
    """Mean cosine-classifier softmax CE of one head: emb (B, D) unit-norm, weight (C, D) raw (no row of
    norm 0), labels (B,) int64 -> 0-d float32 tensor.  Margins as in `udon_loss` (normface: 0;
    cosface [0, 1); arcface [0, pi/2); combined: margins=(m1, m2, m3)).

    class_shard: as in `udon_loss`: weight is this rank's slice, labels global, the mean runs over all
    ranks' rows (the same value on every rank).
    check_inputs: as in `udon_loss` (False skips the data checks, for callers in a loop).
    """

    def check():
        validate.check_head_scalars(margin_type, margin, margins, scale)
        validate.check_head("emb", emb, "weight", weight, labels, backend == "reference",
                            allow_no_classes=class_shard is not None)
        if check_inputs and not torch.compiler.is_compiling():
            validate.check_values({"emb": emb}, {"weight": weight}, labels,
                                  weight.shape[0] if class_shard is None else class_shard.num_classes)

    if class_shard is None:
        check()
        name = backends.resolve(backend, emb.device)
        ce, _, _ = _head_rows(name, emb, weight, None, None, labels, resolve(margin_type, margin, margins), scale,
                              1.0, 1.0)
    else:
        ce, _, _ = _sharded_rows("normalized_softmax_ce", class_shard, check, backend, emb, weight, None, None, labels,
                                 (margin_type, margin, margins), scale, 1.0, 1.0)
    return ce.mean()


class UDONLoss(nn.Module):
    """`udon_loss` as a module: keyword arguments fixed at construction, validated there."""

    def __init__(self, **kwargs):
        super().__init__()
        allowed = set(udon_loss.__kwdefaults__)
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise TypeError(f"UDONLoss got unknown arguments {unknown}; valid ones: {sorted(allowed)}")
        self.options = {**udon_loss.__kwdefaults__, **kwargs}
        validate.check_head_scalars(self.options["margin_type"], self.options["margin"], self.options["margins"],
                                    self.options["scale"])
        if self.options["backend"] not in backends.BACKENDS:
            raise ValueError(f"backend must be one of {backends.BACKENDS}, got {self.options['backend']!r}")

    def forward(self, student_emb, teacher_emb, student_weight, teacher_weight, labels) -> UDONLossOutput:
        return udon_loss(student_emb, teacher_emb, student_weight, teacher_weight, labels, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())
