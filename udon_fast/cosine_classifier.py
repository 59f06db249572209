"""`CosineClassifier`: a margin-softmax classification head (ArcFace, CosFace, ...) as an nn.Module.

It owns the raw (C, D) class weight (or one rank's slice of it) and trains it through the fused
losses (`normalized_softmax_ce`), optionally on a Partial-FC sample of the classes
(`losses/partial_fc.py`); at inference it gives scaled cosine logits and the top-k classes.
"""

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .losses import ClassShard, normalized_softmax_ce, validate
from .losses.partial_fc import SampledRows, adamw_rows, check_sample_rate, sample_classes
from .losses.partial_fc_distributed import sample_class_parallel, virtual_class_values
from .losses.reference import cosine_logits
from .model.heads import lecun_uniform_classifier
from .model.sharded_classifier import check_layout, class_slice, layout, slice_sizes

TOPK_TILE = 65536


class CosineClassifier(nn.Module):
    """Cosine-classifier head over `num_classes` classes of `dim`-wide embeddings.

    weight: (C_r, dim) float32 Parameter, LeCun-uniform as the trainer initialises its classifiers
    (`model.heads.lecun_uniform_classifier`); rows are normalised inside the loss, not stored so.
    margin_type, margin, margins, scale: as in `normalized_softmax_ce` (normface, cosface, arcface,
    combined with margins=(m1, m2, m3)).
    sample_rate: Partial FC, in (0, 1].  Below 1, each forward in training mode scores the batch
    against every class of its labels plus a uniform sample of the others (ceil(sample_rate * C)
    classes, at least min(C, B)); the loss is exact on that set.  The sampled rows get the gradient,
    the weight itself none: after `optimizer.step()` call `step_sampled(optimizer)` (AdamW), which
    updates only those rows and their AdamW state (docs/kernels.md, "Partial FC").
    class_shard: a `ClassShard` for class-parallel training over a torch.distributed group: this rank
    holds rows [start, stop) = `class_slice(C, rank, world_size)` of the group (`class_shard.start`
    must be that start); the `layout` buffer records the slice, and loading another slice's
    state_dict raises.  With sample_rate < 1 each rank samples its own slice (every class of the global
    batch's labels it holds plus ceil(sample_rate * C_r) in all, at least min(C_r, B)) and the loss runs
    over the union of the ranks' samples (`losses.partial_fc_distributed.sample_class_parallel`); every
    rank must then pass the same number of rows.
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        *,
        margin_type: str = "normface",
        margin: float = 0.0,
        margins: tuple[float, float, float] | None = None,
        scale: float = 16.0,
        sample_rate: float = 1.0,
        class_shard: ClassShard | None = None,
    ):
        super().__init__()
        for name, value in (("num_classes", num_classes), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"CosineClassifier: {name} must be a positive int, got {value!r}")
        validate.check_head_scalars(margin_type, margin, margins, scale)
        check_sample_rate("sample_rate", sample_rate)
        rank, world = 0, 1
        if class_shard is not None:
            if not isinstance(class_shard, ClassShard) or class_shard.num_classes != num_classes:
                raise ValueError(
                    f"class_shard must be a ClassShard with num_classes={num_classes}, got {class_shard!r}"
                )
            rank, world = dist.get_rank(class_shard.group), dist.get_world_size(class_shard.group)
            if class_shard.start != class_slice(num_classes, rank, world)[0]:
                raise ValueError(
                    f"class_shard.start must be {class_slice(num_classes, rank, world)[0]} on rank "
                    f"{rank} of {world} (torch.chunk's slices), got {class_shard.start}"
                )
        self.num_classes, self.margin_type, self.margin, self.margins = num_classes, margin_type, margin, margins
        self.scale, self.sample_rate, self.class_shard = scale, sample_rate, class_shard
        self.start, self.stop = class_slice(num_classes, rank, world)
        self.counts = slice_sizes(num_classes, world)
        self.weight = lecun_uniform_classifier(num_classes, dim, (self.start, self.stop) if world > 1 else None)
        self.register_buffer("layout", layout(num_classes, rank, world))
        self.sampled: SampledRows | None = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        check_layout(state_dict, prefix, self.layout)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor, **loss_options) -> torch.Tensor:
        """The margin-softmax CE of a batch: emb (B, dim) float (normalised here), labels (B,) int64 global
        class ids -> the loss `normalized_softmax_ce` returns (0-d float32 with its default reduction).
        loss_options: its other keyword arguments (backend, check_inputs, ...), passed through.  In training
        mode with sample_rate < 1, over this step's sample of the classes (kept in `self.sampled`), with
        class_weight (C,) taken at the sampled classes and rows labelled ignore_index left out of the sample."""
        emb = F.normalize(emb, dim=-1)
        options = dict(
            margin_type=self.margin_type,
            margin=self.margin,
            margins=self.margins,
            scale=self.scale,
            class_shard=self.class_shard,
            **loss_options,
        )
        if self.training and self.sample_rate < 1:
            if self.class_shard is None:
                index, sampled_labels = sample_classes(labels, self.num_classes, self.sample_rate)
            else:
                index, sampled_labels, options["class_shard"] = sample_class_parallel(
                    labels, self.num_classes, self.counts, self.sample_rate, self.class_shard.group
                )
            ignore = options.get("ignore_index")
            if ignore is not None:  # ignored rows keep their label (and add no class to the sample)
                sampled_labels = torch.where(labels == ignore, labels, sampled_labels)
            if options.get("class_weight") is not None:
                options["class_weight"] = (
                    options["class_weight"].index_select(0, index)
                    if self.class_shard is None
                    else virtual_class_values(options["class_weight"], index, self.start, options["class_shard"])
                )
            self.sampled = SampledRows.take(self.weight, index)
            return normalized_softmax_ce(emb, self.sampled.rows, sampled_labels, **options)
        return normalized_softmax_ce(emb, self.weight, labels, **options)

    def step_sampled(self, optimizer: torch.optim.AdamW) -> None:
        """After `optimizer.step()`: the AdamW update of the rows the last forward sampled (its own
        options; `losses.partial_fc.adamw_rows`); the other rows and their state stay as they are."""
        if self.sampled is not None:
            adamw_rows(optimizer, self.sampled)
            self.sampled = None

    def _columns(self, classes: torch.Tensor | None) -> torch.Tensor:
        if classes is None:
            return self.weight
        classes = torch.as_tensor(classes, device=self.weight.device)
        if classes.ndim != 1 or classes.dtype != torch.int64:
            raise ValueError(
                f"classes must be a 1-d int64 tensor of class ids, got {tuple(classes.shape)} {classes.dtype}"
            )
        if classes.numel() and not (self.start <= int(classes.min()) and int(classes.max()) < self.stop):
            raise ValueError(f"classes must lie in [{self.start}, {self.stop}), this module's classes")
        return self.weight.index_select(0, classes - self.start)

    def logits(self, emb: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """scale x cosine, no margin: emb (B, dim) float -> (B, C_r) float32 (columns start..stop-1, all
        classes when not sharded), or (B, len(classes)) for classes, (N,) int64 global ids in this slice."""
        return self.scale * cosine_logits(F.normalize(emb.float(), dim=-1), self._columns(classes).float())

    @torch.no_grad()
    def topk(self, emb: torch.Tensor, k: int, tile: int = TOPK_TILE) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best classes of each row, as `logits(emb).topk(k)` gives them, without the (B, C) logits.

        emb (B, dim) float -> (values (B, k) float32 scale x cosine, descending; indices (B, k) int64
        global class ids).  Sharded: the top k of this rank's slice.  Classes are scored `tile` rows of the
        weight at a time and merged into a running top k: peak extra memory B x tile float32 logits plus
        tile x dim normalised weights plus 2 x B x 2k (values, indices), whatever C.
        """
        classes = self.stop - self.start
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= classes:
            raise ValueError(f"k must be an int in [1, {classes}], got {k!r}")
        emb = F.normalize(emb.float(), dim=-1)
        values = emb.new_empty((emb.shape[0], 0))
        indices = torch.empty((emb.shape[0], 0), dtype=torch.int64, device=emb.device)
        for first in range(0, classes, tile):
            scores = self.scale * cosine_logits(emb, self.weight[first : first + tile].float())
            best, where = scores.topk(min(k, scores.shape[1]), dim=1)
            values, order = torch.cat([values, best], dim=1).topk(min(k, values.shape[1] + best.shape[1]), dim=1)
            indices = torch.cat([indices, where + (self.start + first)], dim=1).gather(1, order)
        return values, indices

    def extra_repr(self) -> str:
        margin = f"margins={self.margins}" if self.margins is not None else f"margin={self.margin}"
        return (
            f"classes {self.start}..{self.stop} of {self.num_classes}, dim={self.weight.shape[1]}, "
            f"margin_type={self.margin_type!r}, {margin}, scale={self.scale}, sample_rate={self.sample_rate}"
        )
