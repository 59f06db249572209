"""Seeded, sharded, resumable order of training samples for one domain.

Epoch e of a split of N samples is the permutation `default_rng([seed, stream, e]).permutation(N)`
(the same on every rank); rank r takes every `world_size`-th element from r, so the ranks
partition each epoch.  Each sample also gets its augmentation draw (crop position in 0..1 along
x and y, horizontal flip) from `default_rng([seed, stream, e, 1])`, so a run resumed from a
`Position` sees exactly the batches of an uninterrupted run.
"""
import zlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Position:
    """Where a stream stands: `offset` samples into this rank's share of epoch `epoch`."""

    epoch: int = 0
    offset: int = 0


@dataclass(frozen=True)
class Draw:
    """One sample of the stream: split index, crop position (x, y in 0..1), flip (0/1)."""

    index: int
    crop_x: float
    crop_y: float
    flip: int


def stream_id(name: str) -> int:
    """A stable id for a domain name (independent of which other domains are loaded)."""
    return zlib.crc32(name.encode("utf-8"))


class EpochStream:
    """Endless per-rank sequence of `Draw`s over a split of `n` samples."""

    def __init__(self, n: int, seed: int, stream: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if n < world_size:
            raise ValueError(f"a split of {n} samples cannot be sharded over world_size={world_size} ranks")
        self.n, self.seed, self.stream, self.rank, self.world_size = n, seed, stream, rank, world_size
        self._epoch, self._cache = None, None

    def shard(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """This rank's (indices int64, crop_x float32, crop_y float32, flip int32) for `epoch`."""
        if self._epoch != epoch:
            order = np.random.default_rng([self.seed, self.stream, epoch]).permutation(self.n)
            aug = np.random.default_rng([self.seed, self.stream, epoch, 1])
            crop = aug.random((self.n, 2), dtype=np.float32)
            flip = aug.integers(0, 2, self.n, dtype=np.int32)
            mine = slice(self.rank, None, self.world_size)
            self._cache = (order[mine], crop[mine, 0], crop[mine, 1], flip[mine])
            self._epoch = epoch
        return self._cache

    def draw(self, position: Position) -> tuple[Draw, Position]:
        """The sample at `position` and the position after it."""
        indices, crop_x, crop_y, flip = self.shard(position.epoch)
        i = position.offset
        sample = Draw(int(indices[i]), float(crop_x[i]), float(crop_y[i]), int(flip[i]))
        following = Position(position.epoch, i + 1) if i + 1 < len(indices) else Position(position.epoch + 1, 0)
        return sample, following

    def shard_size(self) -> int:
        """Samples per epoch on this rank."""
        return len(range(self.rank, self.n, self.world_size))
