"""The UDON training step (docs/method.md, section 2): one compiled forward, no host synchronisation.

The compiled region is the whole forward: backbone, student and teacher heads and the fused loss (a
custom op with a fake implementation, so dynamo traces it without a graph break; `fullgraph=True`
makes any break an error).  The domain enters it only through tensors: the domain's teacher-projection
parameters (applied with `torch.func.functional_call` to one projection of the same structure) and its
two classifiers, whose class dimension is marked dynamic.  So every domain runs the same graph: no
recompilation on a domain switch (docs/method.md, "Training at full speed", has the measurement).

A non-finite step is skipped on the device: `apply` turns the step's loss terms into the fused
AdamW's `found_inf` flag, which makes the optimizer leave weights, moments and step counts untouched.
The flag is sticky: after a first bad step no later step is applied either, so the weights stay those
of the last good step until the loop reads the terms at its next log point and stops.

sample_rate < 1 (Partial FC, `losses/partial_fc.py`): before the compiled forward, the step samples the
domain's classes on the device and gives the loss leaf copies of the sampled rows of both classifiers
(the same classes for the teacher and the student) with the labels renumbered into them; `apply` then
steps those rows with `adamw_rows` after the optimizer's own step, which skips the classifiers (no grad).
With more than one rank (`losses/partial_fc_distributed.py`): class-parallel slices are sampled per rank
and the sharded loss runs over the union of the ranks' samples (each rank steps its own sampled rows);
replicated classifiers are sampled alike on every rank and the sampled rows' gradients, which DDP does
not see, are averaged over the ranks before clipping, so the replicas stay identical.
"""

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.func import functional_call

from .. import distributed
from ..errors import CompileError
from ..losses import udon_loss
from ..losses.partial_fc import SampledRows, adamw_rows, sample_classes
from ..losses.partial_fc_distributed import average_row_gradients, sample_class_parallel, sample_replicated
from ..losses.validate import check_class_weights
from ..model import UDONModel
from ..model.sharded_classifier import slice_sizes
from ..model.udon import head_embedding
from . import class_parallel
from .data_parallel import data_parallel


@dataclass(frozen=True)
class LossOptions:
    """Keyword arguments of `udon_loss` for every step."""

    margin_type: str
    margin: float
    scale: float
    temperature: float
    kl_weight: float
    similarity_weight: float
    backend: str
    n_devices: int
    margins: tuple[float, ...] | None = None
    teacher_ce_weight: float = 1.0
    student_ce_weight: float = 1.0

    @property
    def total_weight(self) -> float:
        """The sum of the four loss weights (`udon_loss` divides the weighted sum by it)."""
        return self.teacher_ce_weight + self.student_ce_weight + self.kl_weight + self.similarity_weight

    def kwargs(self) -> dict:
        return dict(
            margin_type=self.margin_type,
            margin=self.margin,
            margins=self.margins,
            scale=self.scale,
            teacher_temperature=self.temperature,
            student_temperature=self.temperature,
            teacher_ce_weight=self.teacher_ce_weight,
            student_ce_weight=self.student_ce_weight,
            kl_weight=self.kl_weight,
            similarity_weight=self.similarity_weight,
            backend=self.backend,
            n_devices=self.n_devices,
            check_inputs=False,
        )


def check_classifiers(model: UDONModel) -> None:
    """The data checks the step leaves out (`udon_loss(check_inputs=False)`), done once on the weights the
    run builds or loads: every classifier row finite with a non-zero norm.  ValueError naming the domain."""
    for domain, classifier in model.classifiers.items():
        for kind in ("teacher", "student"):
            check_class_weights(f"the {kind} classifier of domain {domain!r}", getattr(classifier, kind).detach())


def compile_failure(exc: BaseException) -> CompileError:
    """The one-line error for a torch.compile failure: the failing backend's own error when there is one,
    else the first line of dynamo's message."""
    cause = getattr(exc, "inner_exception", None) or exc
    first = (str(cause).strip().splitlines() or [""])[0][:300]
    return CompileError(f"torch.compile failed ({type(cause).__name__}: {first}); train without it with --compile off")


class _Objective(nn.Module):
    """The step's forward pass as one module, what DDP wraps: images, labels, domain -> the loss terms."""

    def __init__(self, step: "UDONStep"):
        super().__init__()
        self.model, self.step = step.model, step

    def forward(self, images: torch.Tensor, labels: torch.Tensor, domain: str):
        return self.step._forward(images, labels, domain)


class UDONStep:
    """One optimisation step on a single-domain batch.

    `step(images, labels, domain)`: images (B, 3, s, s) float32 on the model's device, labels (B,) int64
    -> the loss terms (UDONLossOutput of detached 0-d float32 tensors), gradients computed (averaged over
    the data-parallel ranks, clipped).  `step.apply(terms)` then updates the weights, unless `terms` (the
    (5,) stacked loss terms, the same on every rank) or an earlier step's are not finite.  Neither call
    reads a value on the host.  bf16 autocast on CUDA.

    world_size > 1: the forward pass and the loss run under DDP (`data_parallel.data_parallel`), which
    averages the gradients over the ranks during the backward pass; class-parallel classifiers
    (`model.sharded`) stay out of it and the replicated gradients are summed (`class_parallel`).  Their
    loss runs collectives, so it stays outside the compiled region (the embeddings are compiled).
    """

    def __init__(
        self,
        model: UDONModel,
        optimizer: torch.optim.Optimizer,
        loss: LossOptions,
        *,
        compile: bool,
        grad_clip: float | None,
        world_size: int,
        sample_rate: float = 1.0,
    ):
        self.model, self.optimizer, self.loss = model, optimizer, loss
        self.sample_rate, self.sampled = sample_rate, []
        self.grad_clip, self.world_size = grad_clip, world_size
        self.compiled = compile
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=next(model.parameters()).is_cuda)
        # Every domain's teacher projection has the structure of the first one (same widths); a weightless
        # copy of it runs each domain's parameters (an alias of one domain's own would be a guard).
        self.projection = copy.deepcopy(next(iter(model.teacher_projections.values()))).to("meta")
        self.teacher_params = {d: dict(p.named_parameters()) for d, p in model.teacher_projections.items()}
        if compile:
            for classifier in model.classifiers.values():
                torch._dynamo.maybe_mark_dynamic(classifier.teacher, 0)
                torch._dynamo.maybe_mark_dynamic(classifier.student, 0)
        sharded = dict(model.sharded_parameters())
        self.sharded = list(sharded.values())
        self.replicated = [p for n, p in model.named_parameters() if n not in sharded]
        self.similarity_correction = class_parallel.similarity_correction(loss, world_size) if sharded else 0.0
        if sharded:
            self.embeddings = self._compiled(self._embeddings)
        else:
            self.forward_loss = self._compiled(self._forward_loss)
        self.objective = _Objective(self)
        if world_size > 1:
            own = [f"model.classifiers.{name}" for name in model.classifiers.state_dict()] if sharded else []
            self.objective = data_parallel(self.objective, ignore=own, reduce="sum" if sharded else "mean")
        self.skipped = torch.zeros((), dtype=torch.float32, device=next(model.parameters()).device)
        optimizer.found_inf = self.skipped  # read by the fused AdamW: 1 skips the update

    def _compiled(self, function):
        """`function` under torch.compile (fullgraph) when compiling.  Dynamo treats parameter shapes as
        static unless told otherwise; the classifiers' class dimension is marked dynamic, so the call
        lets it be (only where marked: the backbone's shapes stay static)."""
        if not self.compiled:
            return function
        compiled = torch.compile(function, fullgraph=True)

        def call(*args, **kwargs):
            with torch._dynamo.config.patch(force_parameter_static_shapes=False):
                return compiled(*args, **kwargs)

        return call

    def _embeddings(self, images: torch.Tensor, teacher_params: dict[str, torch.Tensor]):
        """(student (B, Ds), teacher (B, Dt)) float32 unit-norm: one backbone pass, the domain's teacher
        projection given by its parameters."""
        with self.autocast:
            features = self.model.features(images)
            student = self.model.student_embedding(features)
            teacher = head_embedding(lambda x: functional_call(self.projection, teacher_params, (x,)), features)
        return student, teacher

    def _forward_loss(self, images, labels, teacher_params, *, student_weight, teacher_weight):
        student, teacher = self._embeddings(images, teacher_params)
        return udon_loss(student, teacher, student_weight, teacher_weight, labels, **self.loss.kwargs())

    def _forward(self, images: torch.Tensor, labels: torch.Tensor, domain: str):
        """The loss terms of the batch (not detached): the whole forward compiled, or, for class-parallel
        classifiers, the compiled embeddings and the sharded loss (`DomainClassifier.loss`)."""
        classifier = self.model.classifiers[domain]
        if self.sample_rate < 1:
            return self._forward_sampled(images, labels, domain)
        if classifier.sharded:
            student, teacher = self.embeddings(images, self.teacher_params[domain])
            return classifier.loss(student_emb=student, teacher_emb=teacher, labels=labels, **self.loss.kwargs())
        return self.forward_loss(
            images,
            labels,
            self.teacher_params[domain],
            student_weight=classifier.student,
            teacher_weight=classifier.teacher,
        )

    def _sample(self, labels: torch.Tensor, classifier):
        """This step's classes of the domain: index (K,) int64 rows of the classifier (or of this rank's
        slice), the labels renumbered into the sample, and the virtual ClassShard of a sliced classifier
        (None otherwise)."""
        if classifier.sharded:
            counts = slice_sizes(classifier.num_classes, classifier.world_size)
            return sample_class_parallel(labels, classifier.num_classes, counts, self.sample_rate)
        if self.world_size > 1:
            return *sample_replicated(labels, classifier.num_classes, self.sample_rate), None
        return *sample_classes(labels, classifier.num_classes, self.sample_rate), None

    def _forward_sampled(self, images: torch.Tensor, labels: torch.Tensor, domain: str):
        """`_forward` on a Partial-FC sample of the domain's classes (the same for teacher and student)."""
        classifier = self.model.classifiers[domain]
        index, labels, shard = self._sample(labels, classifier)
        self.sampled = [SampledRows.take(classifier.student, index), SampledRows.take(classifier.teacher, index)]
        student, teacher = (s.rows for s in self.sampled)
        if shard is not None:
            student_emb, teacher_emb = self.embeddings(images, self.teacher_params[domain])
            return udon_loss(
                student_emb, teacher_emb, student, teacher, labels, class_shard=shard, **self.loss.kwargs()
            )
        if self.compiled:
            torch._dynamo.maybe_mark_dynamic(student, 0)
            torch._dynamo.maybe_mark_dynamic(teacher, 0)
        return self.forward_loss(
            images, labels, self.teacher_params[domain], student_weight=student, teacher_weight=teacher
        )

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, domain: str):
        try:
            out = self.objective(images, labels, domain)
            self.optimizer.zero_grad(set_to_none=True)
            self._backward(out)
            if self.sampled and self.world_size > 1 and not self.sharded:
                average_row_gradients([s.rows for s in self.sampled])
        except torch._dynamo.exc.TorchDynamoException as exc:
            raise compile_failure(exc) from None
        if self.grad_clip is not None:
            self._clip_gradients()
        return type(out)(*(t.detach() for t in out))

    def _backward(self, out) -> None:
        """Gradients of the step; DDP reduces the replicated ones over the ranks while this runs (a
        class-parallel run backpropagates its corrected objective, `class_parallel.similarity_correction`)."""
        if self.similarity_correction:
            (out.total - self.similarity_correction * out.similarity).backward()
        else:
            out.total.backward()

    def _clip_gradients(self) -> None:
        """Clip to the global gradient norm: with class-parallel slices, the replicated gradients once plus
        the squared norms of every rank's slices (all-reduced)."""
        grads = [p for p in self.replicated + self.sharded if p.grad is not None] + [s.rows for s in self.sampled]
        if not self.sharded:
            torch.nn.utils.clip_grad_norm_(grads, self.grad_clip)
            return
        replicated = [p.grad for p in self.replicated if p.grad is not None]
        sliced = [p.grad for p in self.sharded if p.grad is not None] + [
            s.rows.grad for s in self.sampled if s.rows.grad is not None
        ]
        squares = (
            torch.nn.utils.get_total_norm(sliced).square() if sliced else torch.zeros((), device=self.sharded[0].device)
        )
        distributed.all_reduce_sum(squares, self.world_size)
        if replicated:
            squares = squares + torch.nn.utils.get_total_norm(replicated).square()
        torch.nn.utils.clip_grads_with_norm_(grads, self.grad_clip, squares.sqrt())

    def apply(self, terms: torch.Tensor) -> None:
        """The optimizer update of the step whose loss terms are `terms` ((5,), the same on every rank),
        skipped on the device when they, or those of any earlier step, are not all finite."""
        torch.maximum(torch.isfinite(terms).all().logical_not().float(), self.skipped, out=self.skipped)
        self.optimizer.step()
        for sampled in self.sampled:
            adamw_rows(self.optimizer, sampled)
        self.sampled = []
