"""The UDON training step (docs/method.md, section 2), its backbone pass under torch.compile."""
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..model import UDONModel
from . import class_parallel, distributed


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
        return dict(margin_type=self.margin_type, margin=self.margin, margins=self.margins, scale=self.scale,
                    teacher_temperature=self.temperature, student_temperature=self.temperature,
                    teacher_ce_weight=self.teacher_ce_weight, student_ce_weight=self.student_ce_weight,
                    kl_weight=self.kl_weight, similarity_weight=self.similarity_weight, backend=self.backend,
                    n_devices=self.n_devices)


class _Objective(nn.Module):
    """The step's forward pass as one module, what DDP wraps: images, labels, domain -> the loss terms."""

    def __init__(self, step: "UDONStep"):
        super().__init__()
        self.model, self.step = step.model, step

    def forward(self, images: torch.Tensor, labels: torch.Tensor, domain: str):
        step, model = self.step, self.model
        with step.autocast:
            features = step._features(images)
            student = model.student_embedding(features)
            teacher = model.teacher_embedding(features, domain)
        return step._loss(student, teacher, labels, domain)


class UDONStep:
    """One optimisation step on a single-domain batch.

    images (B, 3, s, s) float32 on the model's device, labels (B,) int64, domain name ->
    the loss terms (UDONLossOutput of detached 0-d float32 tensors).  The shared backbone pass
    (domain independent) is compiled once; heads and the fused loss (a custom op) run eagerly,
    so switching domains (and class counts) never recompiles.  bf16 autocast on CUDA.

    world_size > 1: the forward pass and the loss run under DDP (`distributed.data_parallel`), which
    averages the gradients over the ranks during the backward pass; class-parallel classifiers
    (`model.sharded`) stay out of it and the replicated gradients are summed (`class_parallel`).
    """

    def __init__(self, model: UDONModel, optimizer: torch.optim.Optimizer, loss: LossOptions, *,
                 compile: bool, grad_clip: float | None, world_size: int):
        self.model, self.optimizer, self.loss = model, optimizer, loss
        self.grad_clip, self.world_size = grad_clip, world_size
        self.features = torch.compile(model.features) if compile else model.features
        self.compiled = compile
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=next(model.parameters()).is_cuda)
        sharded = dict(model.sharded_parameters())
        self.sharded = list(sharded.values())
        self.replicated = [p for n, p in model.named_parameters() if n not in sharded]
        self.similarity_correction = class_parallel.similarity_correction(loss, world_size) if sharded else 0.0
        self.objective = _Objective(self)
        if world_size > 1:
            own = [f"model.classifiers.{name}" for name in model.classifiers.state_dict()] if sharded else []
            self.objective = distributed.data_parallel(self.objective, ignore=own, reduce="sum" if sharded else "mean")

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        try:
            return self.features(images)
        except Exception as exc:  # torch.compile unavailable here (no compiler, unsupported platform)
            if not self.compiled:
                raise
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {exc}); training eagerly", RuntimeWarning)
            self.features, self.compiled = self.model.features, False
            return self.features(images)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, domain: str):
        out = self.objective(images, labels, domain)
        self.optimizer.zero_grad(set_to_none=True)
        self._backward(out)
        if self.grad_clip is not None:
            self._clip_gradients()
        return type(out)(*(t.detach() for t in out))

    def _loss(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, domain: str):
        return self.model.classifiers[domain].loss(student, teacher, labels, **self.loss.kwargs())

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
        grads = [p for p in self.replicated + self.sharded if p.grad is not None]
        if not self.sharded:
            torch.nn.utils.clip_grad_norm_(grads, self.grad_clip)
            return
        replicated = [p.grad for p in self.replicated if p.grad is not None]
        sliced = [p.grad for p in self.sharded if p.grad is not None]
        squares = (torch.nn.utils.get_total_norm(sliced).square() if sliced
                   else torch.zeros((), device=self.sharded[0].device))
        distributed.all_reduce_sum(squares, self.world_size)
        if replicated:
            squares = squares + torch.nn.utils.get_total_norm(replicated).square()
        torch.nn.utils.clip_grads_with_norm_(grads, self.grad_clip, squares.sqrt())

    def apply(self) -> None:
        """The optimizer update, once the step's loss has been checked finite."""
        self.optimizer.step()
