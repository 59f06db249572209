"""The DALI decoder: one train and one eval pipeline per (domain, split), fed by `external_source`.

They implement `augment.py`'s definitions.  Train: decode, resample the crop's source window
(from the drawn crop position) straight to image_size x image_size (`fn.resize` with a relative
region of interest: the same pixels as resizing the whole image to S x S and cropping, without
computing the other 23% of the S x S image), flip when drawn and normalise
(`fn.crop_mirror_normalize`, CHW float32).  Eval: decode, resize the shorter side, centre crop,
normalise.  Crop positions and flips come from the source (`sampling.py`), not from
DALI's RNG, so batches are reproducible and resumable.  With `device_id=None` only CPU operators
are used.

A split stored in tar shards (`shards.py`) is evaluated with DALI's own `fn.readers.webdataset`
(sequential reads of whole shards, in split order, through each shard's DALI index).  Training keeps
the Python source: the sampler picks every sample (a seeded global order, the same on any number
of ranks, resumable to the sample) and skips damaged ones, which DALI's reader, with its own
shuffle buffer and per-rank contiguous ranges, cannot do; the source reads each member by offset.  This module imports DALI: only `decoders.py` imports it, when the DALI decoder is used.
"""

import tempfile
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..extras import needs_extra

with needs_extra("train"):
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali import math as dmath
    from nvidia.dali.backend import TensorGPU
    from nvidia.dali.pipeline import Pipeline

from .augment import check_norm, train_resize
from .shards import IMAGE_EXTS

if TYPE_CHECKING:
    from .sources import EvalSource


def _normalise(images, mean, std, **options):
    return fn.crop_mirror_normalize(
        images,
        dtype=types.FLOAT,
        output_layout="CHW",
        mean=[255.0 * m for m in mean],
        std=[255.0 * s for s in std],
        **options,
    )


def _decode_device(device_id: int | None) -> str:
    return "cpu" if device_id is None else "mixed"


def _train_crops(encoded, crop_x, crop_y, image_size: int, device_id: int | None):
    """RGB uint8 (image_size, image_size, 3) crops: each crop's source window, resampled (`augment.py`)."""
    side = train_resize(image_size)
    x0 = dmath.floor(crop_x * float(side - image_size) + 0.5) / side  # crop origin in the S x S image,
    y0 = dmath.floor(crop_y * float(side - image_size) + 0.5) / side  # relative to the source's extent
    images = fn.decoders.image(encoded, device=_decode_device(device_id), output_type=types.RGB)
    return fn.resize(
        images,
        size=(image_size, image_size),
        roi_relative=True,
        roi_start=fn.stack(y0, x0),
        roi_end=fn.stack(y0 + image_size / side, x0 + image_size / side),
    )


def train_pipeline(
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
) -> "DaliPipeline":
    """A built train pipeline; `source()` returns a batch (encoded uint8 arrays, labels int64 (1,),
    crop_x float32 (), crop_y float32 (), flip int32 ()); outputs (images (B,3,s,s) float32, labels (B,1))."""
    check_norm(mean, std)

    @pipeline_def(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed,
        prefetch_queue_depth=prefetch_depth,
        exec_dynamic=True,
    )
    def graph():
        encoded, labels, crop_x, crop_y, flip = fn.external_source(source=source, num_outputs=5, batch=True)
        crops = _train_crops(encoded, crop_x, crop_y, image_size, device_id)
        return _normalise(crops, mean, std, mirror=flip), labels

    return DaliPipeline(graph())


def _shard_reader(members, folder: str):
    """`fn.readers.webdataset` over exactly the samples of `members` (`shards.ShardMembers`), in order;
    the last batch is padded by repeating the last sample."""
    paths, index_paths = members.dali_input(folder)
    return fn.readers.webdataset(
        paths=paths,
        index_paths=index_paths,
        ext=[";".join(IMAGE_EXTS)],
        missing_component_behavior="error",
        pad_last_batch=True,
        random_shuffle=False,
        name="shards",
    )


def eval_pipeline(
    source: "EvalSource",
    *,
    batch_size: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    num_threads: int,
    device_id: int | None,
    prefetch_depth: int = 2,
) -> "DaliPipeline":
    """A built eval pipeline; `source()` returns a batch of encoded uint8 arrays (at most batch_size);
    output images (b,3,s,s) float32.  When `source.split` lies in tar shards, DALI's webdataset reader
    reads it instead (full batches: the last one ends with copies of the last image)."""
    check_norm(mean, std)
    members = source.split.members
    folder = tempfile.TemporaryDirectory(prefix="udon-wds-") if members is not None else None

    @pipeline_def(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        prefetch_queue_depth=prefetch_depth,
        exec_dynamic=True,
    )
    def graph():
        if members is None:
            encoded = fn.external_source(source=source, batch=True)
        else:
            encoded = _shard_reader(members, folder.name)
        images = fn.decoders.image(encoded, device=_decode_device(device_id), output_type=types.RGB)
        images = fn.resize(images, resize_shorter=image_size, subpixel_scale=False)
        return _normalise(images, mean, std, crop=(image_size, image_size))

    return DaliPipeline(graph(), folder)


class DaliPipeline:
    """A built DALI pipeline behind the decoders' interface (`pipeline.DecoderPipeline`): `schedule_run()`
    starts the next batch, `outputs()` returns the oldest started one as torch tensors (a decode failure
    raises RuntimeError).  `folder`: a temporary folder the pipeline reads from (index files), removed
    by `close()`."""

    def __init__(self, pipe: Pipeline, folder: tempfile.TemporaryDirectory | None = None):
        self._folder = folder
        try:
            pipe.build()
        except BaseException:
            self.close()
            raise
        self.pipe = pipe

    def schedule_run(self) -> None:
        self.pipe.schedule_run()

    def outputs(self) -> tuple[torch.Tensor, ...]:
        return tuple(to_torch(batch) for batch in self.pipe.outputs())

    def close(self) -> None:
        self.pipe = None
        if self._folder is not None:
            self._folder.cleanup()


def to_torch(batch) -> torch.Tensor:
    """Copy a dense DALI TensorList (CPU or GPU) out of DALI's reused buffers into a torch tensor."""
    tensor = batch.as_tensor()
    if isinstance(tensor, TensorGPU):
        with needs_extra("train"):
            from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

        device = torch.device("cuda", tensor.device_id())
        out = torch.empty(tensor.shape(), dtype=to_torch_type[tensor.dtype], device=device)
        return feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream(out.device))
    return torch.from_numpy(np.array(tensor))
