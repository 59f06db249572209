"""Seeded, sharded, resumable order of training samples for one domain, defined on the global batch.

Epoch e of a split of N samples is the permutation `default_rng([seed, stream, e]).permutation(N)`; the
epochs laid end to end are the domain's global stream of samples, the same for any number of ranks.  Each
global batch of G = b x W samples is the next G samples of that stream, and rank r of W takes the samples
r, r + W, r + 2W, ... of it (b per rank).  A `Position` counts samples of the global stream (the start of
the next global batch), so it is the same on every rank and means the same on any rank count: a run saved
on N ranks and resumed on M ranks with the same global batch sees the same global batches (the batch
rows in another order).  Each sample also gets its augmentation draw (crop position in 0..1 along x and
y, horizontal flip) from `default_rng([seed, stream, e, 1])`, by its place in the epoch, so a resumed run
sees exactly the batches of an uninterrupted one.
"""

import zlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Position:
    """Where the global stream stands: `offset` samples into epoch `epoch` (the same on every rank)."""

    epoch: int = 0
    offset: int = 0


START = Position()  # the start of the stream


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
    """This rank's endless sequence of `Draw`s over a split of `n` samples (every `world_size`-th sample
    of the global stream, from `rank`)."""

    def __init__(self, n: int, seed: int, stream: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if n < 1:
            raise ValueError("a split of 0 samples has no training stream")
        self.n, self.seed, self.stream, self.rank, self.world_size = n, seed, stream, rank, world_size
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}

    def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Epoch `epoch` of the global stream: (indices int64, crop_x float32, crop_y float32, flip int32),
        (n,) each."""
        if epoch not in self._epochs:
            order = np.random.default_rng([self.seed, self.stream, epoch]).permutation(self.n)
            aug = np.random.default_rng([self.seed, self.stream, epoch, 1])
            crop = aug.random((self.n, 2), dtype=np.float32)
            flip = aug.integers(0, 2, self.n, dtype=np.int32)
            self._epochs = {e: v for e, v in self._epochs.items() if e == epoch - 1}  # a batch spans <= 2 epochs
            self._epochs[epoch] = (order, crop[:, 0], crop[:, 1], flip)
        return self._epochs[epoch]

    def draw(self, position: Position) -> tuple[Draw, Position]:
        """This rank's sample of the `world_size` samples from `position` and the position `world_size`
        samples further (where the rank's following sample starts)."""
        epoch, i = divmod(position.epoch * self.n + position.offset + self.rank, self.n)
        indices, crop_x, crop_y, flip = self.epoch(epoch)
        sample = Draw(int(indices[i]), float(crop_x[i]), float(crop_y[i]), int(flip[i]))
        following = divmod(position.epoch * self.n + position.offset + self.world_size, self.n)
        return sample, Position(*following)

    def shard_size(self) -> int:
        """Samples per epoch on this rank, rounded up: ceil(n / world_size)."""
        return -(-self.n // self.world_size)
