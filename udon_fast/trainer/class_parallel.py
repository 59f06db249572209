"""Class-parallel training (`--class-parallel`): every domain's classifiers sharded over the torchrun ranks.

Layout: rank r of W holds rows [C r // W, C (r + 1) // W) of each domain's teacher and student classifiers
(`class_slices`: contiguous, uneven when W does not divide C, empty when C < W) and their AdamW moments; the
backbone and the projections are replicated.  Each step calls `udon_loss(..., class_shard=...)`: CE_t, CE_s and
KL are means over the global batch (all ranks' rows), the same on every rank; SIM stays on the rank's rows.

Gradients: exactly those of the data-parallel trainer (equal per-rank batches b, W ranks).  Data parallel
descends (1/W) sum_r L_r, L_r = (w_t CE_t^r + w_s CE_s^r + w_kl KL^r + w_sim SIM^r) / S with per-rank means and
S = w_t + w_s + w_kl + w_sim; the mean of per-rank means is the global mean, so that objective is
    (w_t CE_t + w_s CE_s + w_kl KL) / S  +  (w_sim / S) (1/W) sum_r SIM^r      (CE, KL over the global batch).
Rank r backpropagates J_r = total_r - (1 - 1/W) (w_sim / S) SIM^r = (global terms) / S + (w_sim / S) (1/W) SIM^r:
- a classifier slice gets the complete gradient of the global terms (the fused loss sums over all global
  rows): the rows of the data-parallel gradient.  Never reduced.
- backbone and projections get the global terms' gradient through this rank's rows only (the embedding
  all-gather's backward reduce-scatters dE to the rows' owners) plus (w_sim / S)(1/W) dSIM^r: their SUM over
  ranks (`sum_gradients`) is the data-parallel average.
The logged terms (each averaged over ranks by the loop) are the data-parallel ones.  Gradient clipping uses
the global norm: the replicated gradients once plus the all-reduced squared norms of the slices.

Checkpoints of such a run: `sharded_checkpoint`.
"""
from collections.abc import Mapping

import torch
import torch.distributed as dist

from ..losses import ClassShard, udon_loss
from ..model import UDONModel
from .distributed import sum_gradients
from .step import UDONStep


def class_slices(domains: Mapping[str, int], rank: int, world_size: int) -> dict[str, tuple[int, int]]:
    """{domain: (start, stop)}: rank's contiguous share of each domain's C classes, C r // W .. C (r + 1) // W."""
    return {name: (classes * rank // world_size, classes * (rank + 1) // world_size) for name, classes in domains.items()}


def classifier_names(model: UDONModel) -> list[str]:
    """State-dict names of the (sharded) classifier parameters."""
    return [f"{kind}.{domain}" for kind in ("teacher_classifiers", "student_classifiers") for domain in model.domains]


class ClassParallelStep(UDONStep):
    """`UDONStep` with class-parallel classifiers: the loss over the global batch, the SIM correction in
    the backward objective, replicated gradients summed over ranks, the global-norm clip (module docstring)."""

    def __init__(self, model: UDONModel, optimizer: torch.optim.Optimizer, loss, *, compile: bool,
                 grad_clip: float | None, world_size: int):
        super().__init__(model, optimizer, loss, compile=compile, grad_clip=grad_clip, world_size=world_size)
        if model.class_slices is None:
            raise ValueError("ClassParallelStep needs a model built with class_slices")
        self.shards = {d: ClassShard(model.class_slices[d][0], classes) for d, classes in model.domains.items()}
        sharded = {id(p) for p in (*model.teacher_classifiers.values(), *model.student_classifiers.values())}
        self.sharded = [p for p in model.parameters() if id(p) in sharded]
        self.replicated = [p for p in model.parameters() if id(p) not in sharded]
        total_weight = 2.0 + loss.kl_weight + loss.similarity_weight  # udon_loss's two CE weights are 1
        self.similarity_correction = (1.0 - 1.0 / world_size) * loss.similarity_weight / total_weight

        self.embeddings = self._compiled(self._embeddings)  # the sharded loss runs collectives: eagerly

    def _forward(self, images, labels, domain):
        model = self.model
        student, teacher = self.embeddings(images, self.teacher_params[domain])
        return udon_loss(student, teacher, model.student_classifier(domain), model.teacher_classifier(domain),
                         labels, class_shard=self.shards[domain], **self.loss.kwargs())

    def _backward(self, out) -> None:
        (out.total - self.similarity_correction * out.similarity).backward()
        sum_gradients(self.replicated, self.world_size)

    def _clip_gradients(self) -> None:
        replicated = [p.grad for p in self.replicated if p.grad is not None]
        sharded = [p.grad for p in self.sharded if p.grad is not None]
        shard_squares = (torch.nn.utils.get_total_norm(sharded).square() if sharded
                         else torch.zeros((), device=self.sharded[0].device))
        dist.all_reduce(shard_squares)
        replicated_squares = torch.nn.utils.get_total_norm(replicated).square() if replicated else 0.0
        total = torch.sqrt(shard_squares + replicated_squares)
        torch.nn.utils.clip_grads_with_norm_([p for p in self.replicated + self.sharded if p.grad is not None],
                                             self.grad_clip, total)
