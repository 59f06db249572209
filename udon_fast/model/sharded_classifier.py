"""`DomainClassifier`: one domain's teacher and student cosine classifiers, whole or one rank's slice of them.

In the style of a model-parallel FC layer: built with (num_classes, rank, world_size), the module computes
its own contiguous slice of the classes (`class_slice`), owns those rows of both weights and the
`ClassShard` the class-parallel loss needs, keeps its layout in its `state_dict` (the int64 buffer `layout`:
num_classes, rank, world_size, start, stop; loading another slice's state raises), and
exposes `loss(...)` (the UDON loss of a batch of its domain) and `logits(...)`.  world_size 1 is the
ordinary, unsharded classifier.

The slices follow `torch.chunk` (and DTensor `Shard(0)`): ceil(C / W) rows per rank, the last ranks
fewer or none, so a checkpoint can store the slices as one DTensor per weight (torch.distributed.checkpoint)
and load them into any other number of ranks.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..losses import ClassShard, udon_loss
from .heads import lecun_uniform_classifier

HEADS = ("teacher", "student")


def class_slice(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """(start, stop): rank's rows of C classes over W ranks, ceil(C / W) per rank (torch.chunk's layout)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    rows = -(-num_classes // world_size)
    return min(num_classes, rank * rows), min(num_classes, (rank + 1) * rows)


def slice_sizes(num_classes: int, world_size: int) -> tuple[int, ...]:
    """C_r of every rank's slice, in rank order (`class_slice`)."""
    return tuple(stop - start for start, stop in (class_slice(num_classes, r, world_size) for r in range(world_size)))


LAYOUT = ("num_classes", "rank", "world_size", "start", "stop")


def layout(num_classes: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """The shard metadata of rank's slice: (5,) int64, the values named by `LAYOUT`."""
    return torch.tensor([num_classes, rank, world_size, *class_slice(num_classes, rank, world_size)])


def check_layout(state_dict: dict, prefix: str, mine: torch.Tensor) -> None:
    """Refuse to load the rows of another slice into the module whose `layout` buffer is `mine` (same shapes
    but other classes would load silently): ValueError naming both slices."""
    found = state_dict.get(prefix + "layout")
    if (
        isinstance(found, torch.Tensor)
        and found.shape == mine.shape
        and not torch.equal(found[[0, 3, 4]].cpu(), mine[[0, 3, 4]].cpu())
    ):
        ours, theirs = (dict(zip(LAYOUT, t.tolist())) for t in (mine, found))
        raise ValueError(f"{prefix or 'classifier '}rows {theirs} do not match this module's slice {ours}")


class DomainClassifier(nn.Module):
    """Teacher (C_r, Dt) and student (C_r, Ds) raw float32 cosine-classifier weights (`teacher`, `student`) of
    one domain's C classes: rows [start, stop) = `class_slice(C, rank, world_size)`.

    The parameters are created empty; `reset_parameters(head)` draws them LeCun-uniform so that every
    rank's rows are exactly the rows of the unsharded initialisation (`heads.lecun_uniform_classifier`).
    """

    def __init__(self, num_classes: int, teacher_dim: int, student_dim: int, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.num_classes, self.rank, self.world_size = num_classes, rank, world_size
        self.start, self.stop = class_slice(num_classes, rank, world_size)
        self.teacher = nn.Parameter(torch.empty(self.stop - self.start, teacher_dim))
        self.student = nn.Parameter(torch.empty(self.stop - self.start, student_dim))
        self.register_buffer("layout", layout(num_classes, rank, world_size))

    @property
    def sharded(self) -> bool:
        return self.world_size > 1

    @property
    def shard(self) -> ClassShard | None:
        """The class-parallel loss's view of this slice (default process group); None when not sharded."""
        return ClassShard(self.start, self.num_classes) if self.sharded else None

    def reset_parameters(self, head: str) -> None:
        """Draw `head`'s ("teacher" or "student") rows from the global CPU generator (all C rows are drawn)."""
        weight = getattr(self, head)
        rows = (self.start, self.stop) if self.sharded else None
        with torch.no_grad():
            weight.copy_(lecun_uniform_classifier(self.num_classes, weight.shape[1], rows))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        check_layout(state_dict, prefix, self.layout)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def loss(self, *, student_emb: torch.Tensor, teacher_emb: torch.Tensor, labels: torch.Tensor, **loss_options):
        """`udon_loss` of a batch of this domain: embeddings (B, Ds) and (B, Dt), labels (B,) int64 global class
        ids; sharded, over all ranks' rows (every rank of the default group calls it).  `loss_options`: the
        other keyword arguments of `udon_loss`.  Returns UDONLossOutput of 0-d float32 tensors."""
        return udon_loss(
            student_emb, teacher_emb, self.student, self.teacher, labels, class_shard=self.shard, **loss_options
        )

    def logits(self, embedding: torch.Tensor, head: str = "student", scale: float = 1.0) -> torch.Tensor:
        """scale x cosine of `embedding` (B, D) with `head`'s rows: (B, C_r) float32, columns start..stop-1."""
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        weight = F.normalize(getattr(self, head).float(), dim=-1)
        return scale * F.normalize(embedding.float(), dim=-1) @ weight.T

    def extra_repr(self) -> str:
        return (
            f"classes {self.start}..{self.stop} of {self.num_classes} (rank {self.rank} of {self.world_size}), "
            f"teacher_dim={self.teacher.shape[1]}, student_dim={self.student.shape[1]}"
        )
