"""Public loss API: `udon_loss`, `normalized_softmax_ce`, `UDONLoss`.

All backends compute the same per-row head losses (see `head_op.py`); this module validates the
arguments, dispatches, applies the CE options (`options.py`: reduction, ignore_index, label_smoothing,
class_weight), reduces the rows and forms the weighted total (docs/method.md, section 2.6).
"""

from typing import NamedTuple

import torch
from torch import nn

from . import backends, class_parallel, options, reference, validate
from .class_parallel import ClassShard
from .margins import NO_TARGET, Margin, resolve, target_terms
from .similarity import similarity_loss


class UDONLossOutput(NamedTuple):
    """The loss terms of one batch: 0-d float32 tensors, differentiable."""

    total: torch.Tensor
    teacher_ce: torch.Tensor
    student_ce: torch.Tensor
    kl: torch.Tensor
    similarity: torch.Tensor


def _head_rows(backend, *, e_t, w_t, e_s, w_s, labels, margin: Margin, scale, tau_t, tau_s):
    if backend == "reference":
        return reference.head_loss_rows(
            e_t=e_t, w_t=w_t, e_s=e_s, w_s=w_s, labels=labels, margin=margin, scale=scale, tau_t=tau_t, tau_s=tau_s
        )
    z_y, dz_y = target_terms(margin, scale, labels, [(e_t, w_t)] if e_s is None else [(e_t, w_t), (e_s, w_s)])
    op = backends.fused_op(backend)
    ce_t, ce_s, kl, _ = op(
        e_t=e_t.contiguous(),
        w_t=w_t.contiguous(),
        e_s=None if e_s is None else e_s.contiguous(),
        w_s=None if w_s is None else w_s.contiguous(),
        labels=labels.contiguous(),
        z_y=z_y,
        dz_y=dz_y,
        scale=float(scale),
        tau_t=float(tau_t),
        tau_s=float(tau_s),
    )
    return ce_t, ce_s, kl


def _option_rows(
    what,
    shard,
    check,
    backend,
    *,
    e_t,
    w_t,
    e_s,
    w_s,
    labels,
    margin_args: tuple,
    scale,
    tau_t,
    tau_s,
    opts: options.CEOptions,
):
    """Per-row CE_t and CE_s with the CE options applied, KL, each (B,) f32 (0 in ignored rows, ce_s = kl
    = 0 for a single head), the CE mean's denominator and the (B,) mask of kept rows (None: all kept).

    shard None: one process, `check` then the backend on all classes.  A `ClassShard`: the class-parallel
    loss (class_parallel.py) over all ranks' rows, margin_args (margin_type, margin, margins) resolved once
    every rank's `check` has passed; the smoothing sums add the slices' parts over the ranks."""
    if shard is None:
        check()
        backend_labels, keep = options.split_ignored(labels, opts.ignore_index)
        margin = resolve(*margin_args)
        ce_t, ce_s, kl = _head_rows(
            backends.resolve(backend, e_t.device),
            e_t=e_t,
            w_t=w_t,
            e_s=e_s,
            w_s=w_s,
            labels=backend_labels,
            margin=margin,
            scale=scale,
            tau_t=tau_t,
            tau_s=tau_s,
        )
        heads, slice_options = [(e_t, w_t), (e_s, w_s)], {}
        num_classes = w_t.shape[0]
    else:
        if not isinstance(shard, ClassShard):
            raise TypeError(f"class_shard must be a udon_fast.ClassShard, got {type(shard).__name__}")

        def check_all():
            check()
            if backend == "reference":
                raise ValueError(
                    "backend='reference' materialises the logits; class_shard needs a fused backend "
                    "(auto, chunked, native or triton)"
                )
            backends.resolve(backend, e_t.device)

        plan = class_parallel.plan(shard, check_all, e_t=e_t, w_t=w_t, e_s=e_s, what=what)
        margin = resolve(*margin_args)
        backend_labels, keep = options.split_ignored(labels, opts.ignore_index)
        all_e_t, all_e_s, backend_labels = class_parallel.gather(plan, e_t=e_t, e_s=e_s, labels=backend_labels)
        keep = None if keep is None else backend_labels != NO_TARGET
        local = class_parallel.slice_labels(plan, backend_labels)
        ce_t, ce_s, kl = class_parallel.gathered_head_rows(
            plan,
            backends.resolve(backend, e_t.device),
            all_e_t=all_e_t,
            w_t=w_t,
            all_e_s=all_e_s,
            w_s=w_s,
            local=local,
            margin=margin,
            scale=scale,
            tau_t=tau_t,
            tau_s=tau_s,
        )
        heads = [(all_e_t, w_t), (all_e_s, w_s)]
        slice_options = dict(
            local_labels=local,
            first_class=plan.slices[plan.rank][0],
            combine=lambda partial: class_parallel.sum_over_ranks(plan, partial),
        )
        num_classes = shard.num_classes
    ce, denominator = options.ce_rows(
        opts,
        ce=[ce_t] if e_s is None else [ce_t, ce_s],
        heads=heads,
        labels=backend_labels,
        keep=keep,
        margin=margin,
        scale=scale,
        num_classes=num_classes,
        **slice_options,
    )
    kl = kl if keep is None else torch.where(keep, kl, 0.0)
    return ce[0], (ce_s if e_s is None else ce[1]), kl, denominator, keep


def udon_loss(
    student_emb: torch.Tensor,
    teacher_emb: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin_type: str = "normface",
    margin: float = 0.0,
    margins: tuple[float, float, float] | None = None,
    scale: float = 16.0,
    teacher_temperature: float = 0.1,
    student_temperature: float = 0.1,
    teacher_ce_weight: float = 1.0,
    student_ce_weight: float = 1.0,
    kl_weight: float = 1.0,
    similarity_weight: float = 1.0,
    backend: str = "auto",
    n_devices: int = 1,
    class_shard: ClassShard | None = None,
    check_inputs: bool = True,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    class_weight: torch.Tensor | None = None,
) -> UDONLossOutput:
    """The UDON loss of one single-domain batch (docs/method.md, section 2).

    student_emb (B, Ds), teacher_emb (B, Dt): L2-normalised embeddings (fp32, bf16 or fp16).
    student_weight (C, Ds), teacher_weight (C, Dt): raw class weights (rows normalised inside).
    labels (B,) int64 in [0, C).  n_devices scales SIM as the release does per device.
    margin: normface takes none (0); cosface 0 <= margin < 1; arcface 0 <= margin < pi/2.
    margins: (m1, m2, m3) of margin_type="combined", insightface's cos(m1*theta + m2) - m3 (then
    margin stays 0): m1 >= 1, m2 >= 0, m3 >= 0, m1*pi/2 + m2 < pi, cos(m2) - m3 > 0.  `margins.py`
    says why these ranges.
    Returns UDONLossOutput of 0-d float32 tensors (reduction="none": (B,) rows); total = weighted sum /
    sum of weights.
    Raises ValueError/TypeError naming the argument before any kernel runs: among the value checks
    (skipped under torch.compile), NaN/inf inputs and a class-weight row of norm 0, named by its
    argument and class index.

    CE options, with F.cross_entropy's meaning on both CE terms (`losses/options.py`, docs/kernels.md
    "Options"): label_smoothing in [0, 1]; class_weight (C,) float, F.cross_entropy's `weight` (the
    CE terms only); ignore_index: rows whose label equals it count for nothing (None, the default:
    no row is ignored; -100 is F.cross_entropy's default).  KL and SIM leave out ignored rows: KL is
    per row; SIM is over the pairs (i, j) of kept rows, and its row i is
    (n_devices / 4) sum_j (S_s - S_t)_ij^2 over kept j.  reduction: "none" returns every term as (B,)
    rows (0 in ignored rows; total the weighted rows); "sum" their sums; "mean" (default) the CE sums
    over the sum of the kept rows' w_y (F.cross_entropy's mean), the KL and SIM sums over the number
    of kept rows (all rows ignored: CE and KL nan, as F.cross_entropy; SIM 0, it has no pair).  The
    defaults give the loss of docs/method.md unchanged.

    class_shard: class-parallel classifiers over a torch.distributed group (`ClassShard`, see
    `losses/class_parallel.py`).  Every rank of the group calls with its own rows (B_r may differ) and
    its slice of the weights, rows [start, start + C_r) of the (C, D) matrices, C = num_classes;
    labels are global ids in [0, C).  teacher_ce, student_ce and kl are then means over all ranks'
    rows, the same on every rank and equal to the single-process loss of the concatenated batch with
    the full weights; after `total.backward()` on every rank, each rank's embedding gradients are its
    rows of the single-process ones and its weight gradients the slice's rows.  SIM stays on this
    rank's rows.  Needs a fused backend; runs eagerly (collectives), not under torch.compile.
    class_weight is then the full (C,) vector on every rank; reduction="none" is refused (the CE
    and KL rows are all ranks' rows, SIM this rank's: use "sum" or "mean").

    check_inputs: True (default) runs the data checks (`validate.check_values`: labels in range, finite
    embeddings, finite class weights without zero rows, finite class_weight), which read values on the
    host: on a GPU each is a device-to-host synchronisation, and the weight checks pass over the (C, D)
    weights again.  A caller in a training loop passes False and checks its weights once, when it
    builds or loads them (the trainer does).  The shape, dtype, device and argument checks always run.
    """
    weights = {
        "teacher_ce_weight": teacher_ce_weight,
        "student_ce_weight": student_ce_weight,
        "kl_weight": kl_weight,
        "similarity_weight": similarity_weight,
    }
    opts = options.CEOptions(reduction, ignore_index, label_smoothing, class_weight)

    def check():
        validate.check_head_scalars(margin_type, margin, margins, scale)
        validate.check_positive("teacher_temperature", teacher_temperature)
        validate.check_positive("student_temperature", student_temperature)
        validate.check_loss_weights(weights)
        for emb_name, emb, weight_name, weight in (
            ("teacher_emb", teacher_emb, "teacher_weight", teacher_weight),
            ("student_emb", student_emb, "student_weight", student_weight),
        ):
            validate.check_head(
                emb_name=emb_name,
                emb=emb,
                weight_name=weight_name,
                weight=weight,
                labels=labels,
                allow_float64=backend == "reference",
                allow_no_classes=class_shard is not None,
            )
        validate.check_pair(
            student_emb=student_emb,
            teacher_emb=teacher_emb,
            student_weight=student_weight,
            teacher_weight=teacher_weight,
        )
        num_classes = teacher_weight.shape[0] if class_shard is None else class_shard.num_classes
        options.check(opts, num_classes, teacher_emb.device)
        if class_shard is not None and reduction == "none":
            raise ValueError(
                "reduction='none' is not available with class_shard in udon_loss (CE and KL rows "
                "span all ranks, SIM this rank's): use 'sum' or 'mean'"
            )
        if check_inputs and not torch.compiler.is_compiling():
            validate.check_values(
                {"student_emb": student_emb, "teacher_emb": teacher_emb},
                {"student_weight": student_weight, "teacher_weight": teacher_weight},
                labels,
                num_classes,
                ignore_index,
            )
            options.check_values(opts)

    ce_t, ce_s, kl, denominator, keep = _option_rows(
        "udon_loss",
        class_shard,
        check,
        backend,
        e_t=teacher_emb,
        w_t=teacher_weight,
        e_s=student_emb,
        w_s=student_weight,
        labels=labels,
        margin_args=(margin_type, margin, margins),
        scale=scale,
        tau_t=teacher_temperature,
        tau_s=student_temperature,
        opts=opts,
    )
    teacher_ce, student_ce = (options.reduce(rows, denominator, reduction) for rows in (ce_t, ce_s))
    kl = options.reduce(kl, None if keep is None else keep.sum(), reduction)
    local_keep = None if ignore_index is None else labels != ignore_index
    sim = similarity_loss(student_emb, teacher_emb, n_devices, keep=local_keep, reduction=reduction)
    total = (
        teacher_ce_weight * teacher_ce + student_ce_weight * student_ce + kl_weight * kl + similarity_weight * sim
    ) / sum(weights.values())
    return UDONLossOutput(total, teacher_ce, student_ce, kl, sim)


def normalized_softmax_ce(
    emb: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin_type: str = "normface",
    margin: float = 0.0,
    margins: tuple[float, float, float] | None = None,
    scale: float = 16.0,
    backend: str = "auto",
    class_shard: ClassShard | None = None,
    check_inputs: bool = True,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    class_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cosine-classifier softmax CE of one head: emb (B, D) unit-norm, weight (C, D) raw (no row of
    norm 0), labels (B,) int64 -> 0-d float32 tensor ((B,) f32 for reduction="none").  Margins as in
    `udon_loss` (normface: 0; cosface [0, 1); arcface [0, pi/2); combined: margins=(m1, m2, m3)).

    reduction, ignore_index, label_smoothing, class_weight (F.cross_entropy's `weight`, (C,)): as
    F.cross_entropy on the margin logits (see `udon_loss` and `losses/options.py`).
    class_shard: as in `udon_loss`: weight is this rank's slice, labels global, class_weight the full
    (C,) vector, the rows are all ranks' rows (the same on every rank, also for reduction="none").
    check_inputs: as in `udon_loss` (False skips the data checks, for callers in a loop).
    """
    opts = options.CEOptions(reduction, ignore_index, label_smoothing, class_weight)

    def check():
        validate.check_head_scalars(margin_type, margin, margins, scale)
        validate.check_head(
            emb_name="emb",
            emb=emb,
            weight_name="weight",
            weight=weight,
            labels=labels,
            allow_float64=backend == "reference",
            allow_no_classes=class_shard is not None,
        )
        num_classes = weight.shape[0] if class_shard is None else class_shard.num_classes
        options.check(opts, num_classes, emb.device)
        if check_inputs and not torch.compiler.is_compiling():
            validate.check_values({"emb": emb}, {"weight": weight}, labels, num_classes, ignore_index)
            options.check_values(opts)

    ce, _, _, denominator, _ = _option_rows(
        "normalized_softmax_ce",
        class_shard,
        check,
        backend,
        e_t=emb,
        w_t=weight,
        e_s=None,
        w_s=None,
        labels=labels,
        margin_args=(margin_type, margin, margins),
        scale=scale,
        tau_t=1.0,
        tau_s=1.0,
        opts=opts,
    )
    return options.reduce(ce, denominator, reduction)


class UDONLoss(nn.Module):
    """`udon_loss` as a module: its options fixed at construction (validated there), the tensors per call.

    Every argument is keyword-only, with `udon_loss`'s name, default and meaning:
    margin_type, margin, margins, scale: the CE heads' margin and logit scale;
    teacher_temperature, student_temperature: the KL temperatures;
    teacher_ce_weight, student_ce_weight, kl_weight, similarity_weight: the weights of the four terms;
    backend: "auto", "reference", "chunked", "triton" or "native"; n_devices: SIM's device count;
    class_shard: a `ClassShard` for class-parallel classifiers, or None; check_inputs: run the data checks;
    reduction, ignore_index, label_smoothing, class_weight (a (C,) tensor, kept as a non-persistent
    buffer so that `.to(device)` moves it): the CE options.
    """

    def __init__(
        self,
        *,
        margin_type: str = "normface",
        margin: float = 0.0,
        margins: tuple[float, float, float] | None = None,
        scale: float = 16.0,
        teacher_temperature: float = 0.1,
        student_temperature: float = 0.1,
        teacher_ce_weight: float = 1.0,
        student_ce_weight: float = 1.0,
        kl_weight: float = 1.0,
        similarity_weight: float = 1.0,
        backend: str = "auto",
        n_devices: int = 1,
        class_shard: ClassShard | None = None,
        check_inputs: bool = True,
        reduction: str = "mean",
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
        class_weight: torch.Tensor | None = None,
    ):
        super().__init__()
        self.options = dict(
            margin_type=margin_type,
            margin=margin,
            margins=margins,
            scale=scale,
            teacher_temperature=teacher_temperature,
            student_temperature=student_temperature,
            teacher_ce_weight=teacher_ce_weight,
            student_ce_weight=student_ce_weight,
            kl_weight=kl_weight,
            similarity_weight=similarity_weight,
            backend=backend,
            n_devices=n_devices,
            class_shard=class_shard,
            check_inputs=check_inputs,
            reduction=reduction,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
        )
        validate.check_head_scalars(margin_type, margin, margins, scale)
        options.check_scalars(reduction, ignore_index, label_smoothing)
        # A buffer, so that .to(device) moves it; passed to udon_loss in forward.
        self.register_buffer("class_weight", class_weight, persistent=False)
        if backend not in backends.BACKENDS:
            raise ValueError(f"backend must be one of {backends.BACKENDS}, got {backend!r}")

    def forward(self, student_emb, teacher_emb, student_weight, teacher_weight, labels) -> UDONLossOutput:
        return udon_loss(
            student_emb,
            teacher_emb,
            student_weight,
            teacher_weight,
            labels,
            class_weight=self.class_weight,
            **self.options,
        )

    def extra_repr(self) -> str:
        shown = {**self.options, "class_weight": None if self.class_weight is None else tuple(self.class_weight.shape)}
        return ", ".join(f"{k}={v!r}" for k, v in shown.items())
