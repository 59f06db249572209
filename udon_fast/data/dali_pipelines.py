"""The DALI graphs: one train and one eval pipeline per (domain, split), fed by `external_source`.

Train: decode -> resize to S x S, S = round(image_size * 256 / 224) (aspect not kept) -> crop
image_size at the sample's drawn position -> flip when drawn -> normalise -> CHW float32.
Eval: decode -> resize the shorter side to image_size -> centre crop image_size -> normalise.
Crop positions and flips come from the source (see `sampling.py`), not from DALI's RNG, so batches
are reproducible and resumable.  With a `device_id` images decode with `device="mixed"` and the
rest runs on that GPU; with `device_id=None` only CPU operators are used.
"""
from typing import Callable, Sequence

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.backend import TensorGPU
from nvidia.dali.pipeline import Pipeline


def train_resize(image_size: int) -> int:
    """Side of the square train resize for a crop of `image_size` (256 for 224)."""
    return round(image_size * 256 / 224)


def check_norm(mean: Sequence[float], std: Sequence[float]) -> None:
    """Reject mean/std that are not 3 values in 0..1 units (std > 0)."""
    for name, values in (("mean", mean), ("std", std)):
        if len(values) != 3 or not all(0.0 <= v <= 1.0 for v in values):
            raise ValueError(f"{name} must be 3 values in 0..1 units (e.g. ImageNet mean (0.485, 0.456, 0.406)), "
                             f"got {tuple(values)}")
    if min(std) <= 0:
        raise ValueError(f"std must be positive, got {tuple(std)}")


def _normalise(images, image_size: int, mean, std, **crop):
    return fn.crop_mirror_normalize(images, crop=(image_size, image_size), dtype=types.FLOAT, output_layout="CHW",
                                    mean=[255.0 * m for m in mean], std=[255.0 * s for s in std], **crop)


def _decode(encoded, device_id: int | None):
    return fn.decoders.image(encoded, device="cpu" if device_id is None else "mixed", output_type=types.RGB)


def train_pipeline(source: Callable, *, batch_size: int, image_size: int, mean: Sequence[float],
                   std: Sequence[float], num_threads: int, device_id: int | None, prefetch_depth: int = 2,
                   seed: int = 0) -> Pipeline:
    """A built train pipeline; `source()` returns a batch (encoded uint8 arrays, labels int64 (1,),
    crop_x float32 (), crop_y float32 (), flip int32 ()); outputs (images (B,3,s,s) float32, labels)."""
    check_norm(mean, std)
    side = train_resize(image_size)

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                  prefetch_queue_depth=prefetch_depth, exec_dynamic=True)
    def graph():
        encoded, labels, crop_x, crop_y, flip = fn.external_source(source=source, num_outputs=5, batch=True)
        images = fn.resize(_decode(encoded, device_id), resize_x=side, resize_y=side)
        return _normalise(images, image_size, mean, std, crop_pos_x=crop_x, crop_pos_y=crop_y, mirror=flip), labels

    pipe = graph()
    pipe.build()
    return pipe


def eval_pipeline(source: Callable, *, batch_size: int, image_size: int, mean: Sequence[float],
                  std: Sequence[float], num_threads: int, device_id: int | None, prefetch_depth: int = 2) -> Pipeline:
    """A built eval pipeline; `source()` returns a batch of encoded uint8 arrays (at most batch_size);
    output images (b,3,s,s) float32."""
    check_norm(mean, std)

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  prefetch_queue_depth=prefetch_depth, exec_dynamic=True)
    def graph():
        encoded = fn.external_source(source=source, batch=True)
        images = fn.resize(_decode(encoded, device_id), resize_shorter=image_size)
        return _normalise(images, image_size, mean, std)

    pipe = graph()
    pipe.build()
    return pipe


def to_torch(batch) -> torch.Tensor:
    """Copy a dense DALI TensorList (CPU or GPU) out of DALI's reused buffers into a torch tensor."""
    tensor = batch.as_tensor()
    if isinstance(tensor, TensorGPU):
        from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

        device = torch.device("cuda", tensor.device_id())
        out = torch.empty(tensor.shape(), dtype=to_torch_type[tensor.dtype], device=device)
        return feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream(out.device))
    return torch.from_numpy(np.array(tensor))
