"""What the trainer and evaluator call: per-domain train batches and in-order eval batches.

`TrainLoader` keeps one pipeline per domain (DALI or torchvision, `decoders.py`), each primed
`prefetch_depth` batches ahead, so `next_batch(domain)` for any domain at any step returns a
prefetched batch.  Its `state_dict()` holds each domain's position (epoch, offset) after the last
batch handed out; loading it rebuilds the pipelines there, so a resumed run sees exactly the
batches of an uninterrupted one, with either decoder.  A file that still fails inside the decoder
is found by decoding the in-flight files with PIL, skipped, and the domain's pipeline is rebuilt
at the last handed-out position.
"""

import math
from collections.abc import Iterator, Mapping, Sequence

import torch

from ..errors import InputError
from .decoders import eval_pipeline, resolve_decoder, train_pipeline
from .domain import Domain, Split
from .sampling import START, EpochStream, Position, stream_id
from .sources import EvalSource, TrainSource
from .verify import check_decodable


def resolve_device_id(device_id: int | None | str) -> int | None:
    """ "auto" -> the current CUDA device when one is available, else None (CPU-only pipelines)."""
    if device_id == "auto":
        return torch.cuda.current_device() if torch.cuda.is_available() else None
    return device_id


class DomainTrainIterator:
    """Endless training batches of one domain: (images (B,3,s,s) float32, labels (B,) int64)."""

    def __init__(
        self,
        domain: Domain,
        *,
        batch_size: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int,
        rank: int,
        world_size: int,
        num_threads: int,
        device_id: int | None,
        prefetch_depth: int,
        decoder: str,
        position: Position = START,
    ):
        self.domain, self.decoder = domain, decoder
        self._stream_args = (seed, stream_id(domain.name), rank, world_size)
        EpochStream(len(domain.train), *self._stream_args)  # argument checks before any thread starts
        self.options = dict(
            batch_size=batch_size,
            image_size=image_size,
            mean=mean,
            std=std,
            num_threads=num_threads,
            device_id=device_id,
            prefetch_depth=prefetch_depth,
            seed=seed,
        )
        self.skipped: dict[str, str] = {}
        self.position = position
        self._start()

    def _start(self) -> None:
        stream = EpochStream(len(self.domain.train), *self._stream_args)
        self.source = TrainSource(
            self.domain.name,
            self.domain.train,
            stream,
            self.options["batch_size"],
            self.position,
            self.skipped,
            read_ahead=self.options["prefetch_depth"],
        )
        self.pipe = train_pipeline(self.decoder, self.source, **self.options)
        for _ in range(self.options["prefetch_depth"]):
            self.pipe.schedule_run()

    def _recover(self, error: RuntimeError) -> None:
        """Find the in-flight files PIL cannot decode, skip them and restart at `self.position`."""
        train = self.domain.train
        suspects = [i for _, indices in self.source.in_flight for i in indices]
        bad = {train.paths[i]: reason for i in suspects if (reason := train.check(i)) is not None}
        if not bad:
            raise error
        self.close()
        for path, reason in bad.items():
            self.source.skip(path, reason)
        self._start()

    def close(self) -> None:
        """Stop the file reader and the pipeline."""
        self.source.close()
        self.pipe.close()

    def __del__(self):
        if getattr(self, "source", None) is not None:
            self.source.close()

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch: images (B,3,s,s) float32 (CUDA when decoding on a GPU), labels (B,) int64 (CPU)."""
        while True:
            try:
                images, labels = self.pipe.outputs()
                break
            except RuntimeError as error:
                self._recover(error)
        labels = labels.reshape(-1)
        self.position, _ = self.source.in_flight.popleft()
        try:
            self.pipe.schedule_run()
        except RuntimeError as error:
            self._recover(error)
        return images, labels


class TrainLoader:
    """Endless, prefetching, seeded, sharded, resumable training batches for each domain.

    domains: {name: Domain}; mean/std: the backbone's normalisation, 3 values in 0..1 units.
    image_size: crop side s; batches are (images (B,3,s,s) float32, labels (B,) int64); multi-label
        train entries train on their first label.
    rank/world_size: this process's shard (torchrun): rank r takes rows r, r + W, ... of each global batch
        of the domain's seeded stream (`sampling.py`), so the global batches do not depend on W.
    device_id: "auto" (current CUDA device if any, else CPU), an int, or None (CPU only); on a GPU
        images come back as CUDA tensors, labels stay on the CPU.
    decoder: "dali" (default; falls back to "torchvision", with one log line, where DALI does not
        import) or "torchvision"; `self.decoder` is the one in use.  Both give the same batches
        up to resampling rounding (`augment.py`).
    """

    def __init__(
        self,
        domains: Mapping[str, Domain],
        *,
        batch_size: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_threads: int = 2,
        device_id: int | None | str = "auto",
        prefetch_depth: int = 2,
        decoder: str = "dali",
    ):
        if batch_size < 1 or image_size < 1:
            raise ValueError(f"batch_size and image_size must be positive, got {batch_size} and {image_size}")
        self.decoder = resolve_decoder(decoder)
        self.domains = dict(domains)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self._options = dict(
            batch_size=batch_size,
            image_size=image_size,
            mean=tuple(mean),
            std=tuple(std),
            seed=seed,
            rank=rank,
            world_size=world_size,
            num_threads=num_threads,
            device_id=resolve_device_id(device_id),
            prefetch_depth=prefetch_depth,
            decoder=self.decoder,
        )
        self._iterators = {name: DomainTrainIterator(d, **self._options) for name, d in self.domains.items()}

    def next_batch(self, domain: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch of `domain`: images (B,3,s,s) float32, labels (B,) int64 (0..C_d-1)."""
        if domain not in self._iterators:
            raise KeyError(f"unknown domain {domain!r}; loaded: {sorted(self._iterators)}")
        return self._iterators[domain].next()

    @property
    def skipped(self) -> dict[str, dict[str, str]]:
        """{domain: {path: reason}} of corrupt files skipped so far."""
        return {name: dict(it.skipped) for name, it in self._iterators.items()}

    def state_dict(self) -> dict:
        """Positions after the last batch handed out.

        {"seed", "world_size", "rank", "domains": {name: {"epoch": int, "position": int}}}; `position`
        counts samples of the global stream into `epoch` (the start of the next global batch): the same
        on every rank unless a rank skipped a corrupt file, and valid for any rank count.
        """
        return {
            "seed": self.seed,
            "world_size": self.world_size,
            "rank": self.rank,
            "domains": {
                name: {"epoch": it.position.epoch, "position": it.position.offset}
                for name, it in self._iterators.items()
            },
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restart every domain listed in `state` at its stored position (same seed required; any rank count)."""
        if state.get("seed") != self.seed:
            raise InputError(f"data state has seed={state.get('seed')!r} but this loader uses {self.seed!r}")
        unknown = sorted(set(state["domains"]) - set(self._iterators))
        if unknown:
            raise InputError(f"data state lists unknown domain(s) {unknown}; loaded: {sorted(self._iterators)}")
        for name, pos in state["domains"].items():
            position = Position(int(pos["epoch"]), int(pos["position"]))
            self._iterators[name].close()
            self._iterators[name] = DomainTrainIterator(self.domains[name], **self._options, position=position)

    def close(self) -> None:
        """Stop every domain's reader thread and pipeline (the loader is unusable afterwards)."""
        for iterator in self._iterators.values():
            iterator.close()


class EvalLoader:
    """Every image of a split exactly once, in order, the last batch partial (no padding).

    Yields (images (b,3,s,s) float32, labels int64 (b,) or (b,L) padded with -1), b <= batch_size.
    decoder: as for `TrainLoader`.
    Every image is checked (`verify.check_decodable`, cached) before the decoder sees any: a damaged
    file raises `CorruptImagesError` naming all bad files of the split instead of crashing DALI.
    """

    def __init__(
        self,
        split: Split,
        *,
        batch_size: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        num_threads: int = 2,
        device_id: int | None | str = "auto",
        prefetch_depth: int = 2,
        decoder: str = "dali",
    ):
        self.split, self.batch_size = split, batch_size
        self.decoder = resolve_decoder(decoder)
        self._options = dict(
            batch_size=batch_size,
            image_size=image_size,
            mean=tuple(mean),
            std=tuple(std),
            num_threads=num_threads,
            device_id=resolve_device_id(device_id),
            prefetch_depth=prefetch_depth,
        )

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = len(self)
        if batches == 0:
            return
        check_decodable(
            [self.split],
            f"in split {self.split.name!r}" if self.split.name else "",
            workers=self._options["num_threads"],
        )
        pipe = eval_pipeline(self.decoder, EvalSource(self.split, self.batch_size), **self._options)
        try:
            scheduled = min(batches, self._options["prefetch_depth"])
            for _ in range(scheduled):
                pipe.schedule_run()
            labels = torch.from_numpy(self.split.labels)
            for b in range(batches):
                (images,) = pipe.outputs()
                if scheduled < batches:
                    pipe.schedule_run()
                    scheduled += 1
                chunk = labels[b * self.batch_size : (b + 1) * self.batch_size]
                yield images[: len(chunk)], chunk  # a reader of tar shards pads the last batch
        finally:
            pipe.close()
