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
"""
import copy
from dataclasses import dataclass

import torch
from torch.func import functional_call

from ..losses import udon_loss
from ..losses.validate import check_class_weights
from ..model import UDONModel
from ..model.udon import head_embedding
from .distributed import average_gradients


class CompileError(RuntimeError):
    """torch.compile could not compile the step (one line; `--compile off` trains without it)."""


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

    def kwargs(self) -> dict:
        return dict(margin_type=self.margin_type, margin=self.margin, scale=self.scale,
                    teacher_temperature=self.temperature, student_temperature=self.temperature,
                    kl_weight=self.kl_weight, similarity_weight=self.similarity_weight, backend=self.backend,
                    n_devices=self.n_devices, check_inputs=False)


def check_classifiers(model: UDONModel) -> None:
    """The data checks the step leaves out (`udon_loss(check_inputs=False)`), done once on the weights the
    run builds or loads: every classifier row finite with a non-zero norm.  ValueError naming the domain."""
    for kind, classifiers in (("teacher", model.teacher_classifiers), ("student", model.student_classifiers)):
        for domain, weight in classifiers.items():
            check_class_weights(f"the {kind} classifier of domain {domain!r}", weight.detach())


def compile_failure(exc: BaseException) -> CompileError:
    """The one-line error for a torch.compile failure: the failing backend's own error when there is one,
    else the first line of dynamo's message."""
    cause = getattr(exc, "inner_exception", None) or exc
    first = (str(cause).strip().splitlines() or [""])[0][:300]
    return CompileError(f"torch.compile failed ({type(cause).__name__}: {first}); train without it with --compile off")


class UDONStep:
    """One optimisation step on a single-domain batch.

    `step(images, labels, domain)`: images (B, 3, s, s) float32 on the model's device, labels (B,) int64
    -> the loss terms (UDONLossOutput of detached 0-d float32 tensors), gradients computed (averaged over
    the data-parallel ranks, clipped).  `step.apply(terms)` then updates the weights, unless `terms` (the
    (5,) stacked loss terms, the same on every rank) or an earlier step's are not finite.  Neither call
    reads a value on the host.  bf16 autocast on CUDA.
    """

    def __init__(self, model: UDONModel, optimizer: torch.optim.Optimizer, loss: LossOptions, *,
                 compile: bool, grad_clip: float | None, world_size: int):
        self.model, self.optimizer, self.loss = model, optimizer, loss
        self.grad_clip, self.world_size = grad_clip, world_size
        self.compiled = compile
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=next(model.parameters()).is_cuda)
        # Every domain's teacher projection has the structure of the first one (same widths); a weightless
        # copy of it runs each domain's parameters (an alias of one domain's own would be a guard).
        self.projection = copy.deepcopy(next(iter(model.teacher_projections.values()))).to("meta")
        self.teacher_params = {d: dict(p.named_parameters()) for d, p in model.teacher_projections.items()}
        if compile:
            for weight in (*model.teacher_classifiers.values(), *model.student_classifiers.values()):
                torch._dynamo.maybe_mark_dynamic(weight, 0)
        self.forward_loss = self._compiled(self._forward_loss)
        self.skipped = torch.zeros((), dtype=torch.float32, device=next(model.parameters()).device)
        optimizer.found_inf = self.skipped  # read by the fused AdamW: 1 skips the update

    def _compiled(self, function):
        """`function` under torch.compile (fullgraph) when compiling.  Dynamo treats parameter shapes as
        static unless told otherwise; the classifiers' class dimension is marked dynamic, so the call
        lets it be (only where marked: the backbone's shapes stay static)."""
        if not self.compiled:
            return function
        compiled = torch.compile(function, fullgraph=True)

        def call(*args):
            with torch._dynamo.config.patch(force_parameter_static_shapes=False):
                return compiled(*args)

        return call

    def _embeddings(self, images: torch.Tensor, teacher_params: dict[str, torch.Tensor]):
        """(student (B, Ds), teacher (B, Dt)) float32 unit-norm: one backbone pass, the domain's teacher
        projection given by its parameters."""
        with self.autocast:
            features = self.model.features(images)
            student = self.model.student_embedding(features)
            teacher = head_embedding(lambda x: functional_call(self.projection, teacher_params, (x,)), features)
        return student, teacher

    def _forward_loss(self, images, labels, teacher_params, student_weight, teacher_weight):
        student, teacher = self._embeddings(images, teacher_params)
        return udon_loss(student, teacher, student_weight, teacher_weight, labels, **self.loss.kwargs())

    def _forward(self, images: torch.Tensor, labels: torch.Tensor, domain: str):
        model = self.model
        return self.forward_loss(images, labels, self.teacher_params[domain], model.student_classifier(domain),
                                 model.teacher_classifier(domain))

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, domain: str):
        try:
            out = self._forward(images, labels, domain)
            self.optimizer.zero_grad(set_to_none=True)
            self._backward(out)
        except torch._dynamo.exc.TorchDynamoException as exc:
            raise compile_failure(exc) from None
        if self.grad_clip is not None:
            self._clip_gradients()
        return type(out)(*(t.detach() for t in out))

    def _backward(self, out) -> None:
        """Gradients of the step, averaged over the data-parallel ranks."""
        out.total.backward()
        average_gradients(self.model.parameters(), self.world_size)

    def _clip_gradients(self) -> None:
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.grad is not None], self.grad_clip)

    def apply(self, terms: torch.Tensor) -> None:
        """The optimizer update of the step whose loss terms are `terms` ((5,), the same on every rank),
        skipped on the device when they, or those of any earlier step, are not all finite."""
        torch.maximum(torch.isfinite(terms).all().logical_not().float(), self.skipped, out=self.skipped)
        self.optimizer.step()
