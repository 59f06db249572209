"""The declared interface of a decoder (`decoders.py`): the module's two pipeline factories and the
pipelines they return.  `dali_pipelines` and `torchvision_pipelines` implement it.

A pipeline decodes and augments the batches of its source in the background: `schedule_run()`
takes the next batch from the source and starts it; `outputs()` returns the oldest started batch as
torch tensors, images first (train: images (B, 3, S, S) f32, labels (B, 1) int64; eval: images
(b, 3, S, S) f32,), and raises RuntimeError when a file fails to decode; `close()` releases its
threads and files (the pipeline is unusable afterwards).
"""

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class DecoderPipeline(Protocol):
    def schedule_run(self) -> None: ...

    def outputs(self) -> tuple[torch.Tensor, ...]: ...

    def close(self) -> None: ...


class TrainPipelineFactory(Protocol):
    """train_pipeline(source, ...): a pipeline over `sources.TrainSource`-style batches."""

    def __call__(
        self,
        source: Callable,
        *,
        batch_size: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        num_threads: int,
        device_id: int | None,
        prefetch_depth: int = 2,
        seed: int = 0,
    ) -> DecoderPipeline: ...


class EvalPipelineFactory(Protocol):
    """eval_pipeline(source, ...): a pipeline over the batches of a `sources.EvalSource` (a callable
    whose `split` says whether the files lie in tar shards)."""

    def __call__(
        self,
        source: Callable,
        *,
        batch_size: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        num_threads: int,
        device_id: int | None,
        prefetch_depth: int = 2,
    ) -> DecoderPipeline: ...


@runtime_checkable
class Decoder(Protocol):
    """A decoder module, as `decoders.py` finds it by name."""

    train_pipeline: TrainPipelineFactory
    eval_pipeline: EvalPipelineFactory
