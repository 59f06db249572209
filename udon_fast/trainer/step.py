"""The UDON training step (docs/method.md, section 2), its backbone pass under torch.compile."""
import warnings
from dataclasses import dataclass

import torch

from ..losses import udon_loss
from ..model import UDONModel
from .distributed import average_gradients


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

    def kwargs(self) -> dict:
        return dict(margin_type=self.margin_type, margin=self.margin, margins=self.margins, scale=self.scale,
                    teacher_temperature=self.temperature, student_temperature=self.temperature,
                    kl_weight=self.kl_weight, similarity_weight=self.similarity_weight, backend=self.backend,
                    n_devices=self.n_devices)


class UDONStep:
    """One optimisation step on a single-domain batch.

    images (B, 3, s, s) float32 on the model's device, labels (B,) int64, domain name ->
    the loss terms (UDONLossOutput of detached 0-d float32 tensors).  The shared backbone pass
    (domain independent) is compiled once; heads and the fused loss (a custom op) run eagerly,
    so switching domains (and class counts) never recompiles.  bf16 autocast on CUDA.
    """

    def __init__(self, model: UDONModel, optimizer: torch.optim.Optimizer, loss: LossOptions, *,
                 compile: bool, grad_clip: float | None, world_size: int):
        self.model, self.optimizer, self.loss = model, optimizer, loss
        self.grad_clip, self.world_size = grad_clip, world_size
        self.features = torch.compile(model.features) if compile else model.features
        self.compiled = compile
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=next(model.parameters()).is_cuda)

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
        model = self.model
        with self.autocast:
            features = self._features(images)
            student = model.student_embedding(features)
            teacher = model.teacher_embedding(features, domain)
        out = self._loss(student, teacher, labels, domain)
        self.optimizer.zero_grad(set_to_none=True)
        self._backward(out)
        if self.grad_clip is not None:
            self._clip_gradients()
        return type(out)(*(t.detach() for t in out))

    def _loss(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, domain: str):
        model = self.model
        return udon_loss(student, teacher, model.student_classifier(domain), model.teacher_classifier(domain),
                         labels, **self.loss.kwargs())

    def _backward(self, out) -> None:
        """Gradients of the step, averaged over the data-parallel ranks."""
        out.total.backward()
        average_gradients(self.model.parameters(), self.world_size)

    def _clip_gradients(self) -> None:
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.grad is not None], self.grad_clip)

    def apply(self) -> None:
        """The optimizer update, once the step's loss has been checked finite."""
        self.optimizer.step()
