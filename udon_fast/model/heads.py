"""UDON heads: projections (Linear or MLP) and LeCun-uniform cosine-classifier weights."""

import math
from collections.abc import Sequence

import torch
import torch.nn as nn


def _dims(dims: int | Sequence[int], what: str) -> list[int]:
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        raise ValueError(f"{what} must be a positive int or a non-empty list of positive ints, got {dims!r}")
    return dims


def projection(in_dim: int, dims: int | Sequence[int], what: str = "projection dims") -> nn.Sequential:
    """Linear(in_dim -> dims) with bias, or for a list [h1, ..., out] an MLP
    Linear, LayerNorm, GELU, ..., Linear(-> out) (no activation after the last).

    (B, in_dim) -> (B, out).  Output dim = `dims` or `dims[-1]`.  Layers use PyTorch's default init.
    """
    dims = _dims(dims, what)
    layers: list[nn.Module] = []
    width = in_dim
    for hidden in dims[:-1]:
        layers += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.GELU()]
        width = hidden
    layers.append(nn.Linear(width, dims[-1]))
    return nn.Sequential(*layers)


def output_dim(dims: int | Sequence[int]) -> int:
    """The embedding width a `projection(_, dims)` produces."""
    return dims if isinstance(dims, int) else int(list(dims)[-1])


ROWS_PER_DRAW = 1 << 14


def lecun_uniform_classifier(num_classes: int, dim: int, rows: tuple[int, int] | None = None) -> nn.Parameter:
    """A raw (num_classes, dim) float32 cosine-classifier weight, no bias.

    LeCun uniform: U(-sqrt(3 / fan_in), sqrt(3 / fan_in)) with fan_in = dim (the embedding width).
    Rows are not normalised here; the loss normalises them.

    rows=(start, stop): only rows [start, stop) of that matrix, (stop - start, dim), for class-parallel
    training.  All num_classes rows are still drawn, ROWS_PER_DRAW at a time, from the global CPU
    generator (whose uniform_ draws element after element), so the slices of every rank are exactly the
    rows of the unsharded initialisation and the generator ends in the same state; memory
    O((stop - start + ROWS_PER_DRAW) * dim).
    """
    bound = math.sqrt(3.0 / dim)
    if rows is None:
        return nn.Parameter(torch.empty(num_classes, dim).uniform_(-bound, bound))
    start, stop = rows
    out = torch.empty(stop - start, dim)
    for first in range(0, num_classes, ROWS_PER_DRAW):
        last = min(first + ROWS_PER_DRAW, num_classes)
        block = torch.empty(last - first, dim).uniform_(-bound, bound)
        low, high = max(first, start), min(last, stop)
        if low < high:
            out[low - start : high - start] = block[low - first : high - first]
    return nn.Parameter(out)
