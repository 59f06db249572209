"""The torchvision decoder: `augment.py`'s definitions with `torchvision.io` decoding and torch ops.

Decoding: on the CPU each file decodes with `torchvision.io.decode_image` (JPEG, PNG, GIF, WebP;
EXIF orientation applied; BMP and TIFF, which torchvision.io does not read, through PIL) in a pool of
`num_threads` threads (torch releases the GIL while it decodes and resizes), and the resize, crop,
flip and normalisation of that sample run in the same thread.  On a CUDA device a batch's JPEGs
decode in one batched `torchvision.io.decode_jpeg(..., device="cuda")` call (nvJPEG); other formats
and EXIF-rotated JPEGs decode on the CPU; the rest runs on that GPU in one worker thread.
Resizing is `F.interpolate(mode="bilinear", antialias=True)`: uint8 in, uint8 out on the CPU (its
vectorised path); float rounded to whole values on the GPU.

`TorchvisionPipeline` implements `pipeline.DecoderPipeline`, as `dali_pipelines.DaliPipeline` does:
`schedule_run()` takes the next batch from the source (in the caller's thread, like DALI's
`external_source`) and starts decoding it in the background; `outputs()` returns the oldest started
batch as torch tensors, images first, and raises RuntimeError when a file fails to decode.
"""

import io
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from ..extras import needs_extra

with needs_extra("train"):
    from PIL import Image, ImageOps
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg
    from torchvision.transforms.v2.functional import to_dtype

from .augment import centre_origin, check_norm, crop_origin, eval_resize, train_resize

_JPEG = b"\xff\xd8"
_PIL_ONLY = (b"BM", b"II", b"MM")  # BMP, TIFF: not read by torchvision.io
_EXIF_ORIENTATION = 0x0112

# (image uint8 (3, h, w) on the pipeline's device, its index in the batch) -> None: writes one output sample
Fill = Callable[[torch.Tensor, int], None]


def decode(data: np.ndarray) -> torch.Tensor:
    """RGB uint8 (3, h, w) CPU tensor of one encoded image (uint8 (n,)), EXIF orientation applied."""
    if bytes(data[:2]) in _PIL_ONLY:
        with Image.open(io.BytesIO(data.tobytes())) as image:
            rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()
    image = decode_image(torch.from_numpy(data), mode=ImageReadMode.RGB, apply_exif_orientation=True)
    return image if image.dtype == torch.uint8 else to_dtype(image, torch.uint8, scale=True)


def _exif_rotated(data: np.ndarray) -> bool:
    """True when a JPEG carries an EXIF orientation other than 1 (read from its header by PIL)."""
    with Image.open(io.BytesIO(data.tobytes())) as image:
        return image.getexif().get(_EXIF_ORIENTATION, 1) != 1


def decode_cuda(encoded: Sequence[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """RGB uint8 (3, h, w) tensors on `device`: plain JPEGs through one batched nvJPEG call, the rest
    (other formats, EXIF-rotated JPEGs, and every JPEG of a batch nvJPEG refuses, e.g. for a CMYK
    file) decoded on the CPU and copied over."""
    images: list[torch.Tensor | None] = [None] * len(encoded)
    on_gpu = [i for i, data in enumerate(encoded) if bytes(data[:2]) == _JPEG and not _exif_rotated(data)]
    if on_gpu:
        try:
            decoded = decode_jpeg([torch.from_numpy(encoded[i]) for i in on_gpu], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # a broken file then fails again, on the CPU, and is found by the loader
            decoded = [None] * len(on_gpu)
        for i, image in zip(on_gpu, decoded):
            images[i] = image
    for i, data in enumerate(encoded):
        if images[i] is None:
            images[i] = decode(data).to(device)
    return images


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased linear resize of (3, h, w) uint8 to (3, *size): uint8 on the CPU, whole-valued
    float on a GPU (rounded and clamped like the CPU's uint8 output)."""
    if tuple(image.shape[1:]) == tuple(size):
        return image
    if image.is_cuda:
        out = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)
        return out[0].round_().clamp_(0, 255)
    return F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]


class TorchvisionPipeline:
    """Decode and augment batches of `source()` in the background (see the module docstring).

    prepare(batch) -> (encoded images, fill, outputs): `fill(image, i)` writes sample i into the
    `outputs` tensors, which `outputs()` returns once every sample of the batch is filled.
    """

    def __init__(self, source: Callable, prepare: Callable, *, num_threads: int, device: torch.device):
        self.source, self.prepare, self.device = source, prepare, device
        self._pool = ThreadPoolExecutor(1 if device.type == "cuda" else num_threads, thread_name_prefix="udon-decode")
        self._started: deque[tuple[list[Future], tuple[torch.Tensor, ...]]] = deque()

    def schedule_run(self) -> None:
        encoded, fill, outputs = self.prepare(self.source())
        if self.device.type == "cuda":
            futures = [self._pool.submit(self._run_cuda, encoded, fill)]
        else:
            futures = [self._pool.submit(lambda i=i: fill(decode(encoded[i]), i)) for i in range(len(encoded))]
        self._started.append((futures, outputs))

    def _run_cuda(self, encoded: Sequence[np.ndarray], fill: Fill) -> None:
        with torch.cuda.device(self.device):
            for i, image in enumerate(decode_cuda(encoded, self.device)):
                fill(image, i)
            torch.cuda.current_stream().synchronize()

    def outputs(self) -> tuple[torch.Tensor, ...]:
        futures, outputs = self._started.popleft()
        for future in futures:
            error = future.exception()
            if error is not None:
                raise RuntimeError(f"torchvision decoder: {type(error).__name__}: {error}") from error
        return outputs

    def close(self) -> None:
        """Stop the worker threads (batches still in progress are dropped)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._started.clear()


def _normaliser(mean: Sequence[float], std: Sequence[float], device: torch.device):
    """normalise(crop (3, s, s) uint8 or whole-valued float, flip, out (3, s, s) float32): writes
    (crop mirrored when `flip` - 255 mean) / (255 std) into `out`.  On the CPU this runs in numpy
    (single-threaded per sample, GIL released): torch would fan each small op out to its OpenMP
    team from every worker thread, which stalls when the cores are busy (measured 10x slower)."""
    check_norm(mean, std)
    mean255 = np.array([255.0 * m for m in mean], dtype=np.float32).reshape(3, 1, 1)
    std255 = np.array([255.0 * s for s in std], dtype=np.float32).reshape(3, 1, 1)
    if device.type == "cuda":
        mean_t, std_t = torch.from_numpy(mean255).to(device), torch.from_numpy(std255).to(device)

        def normalise_cuda(crop: torch.Tensor, flip: int, out: torch.Tensor) -> None:
            torch.sub(crop.flip(-1) if flip else crop, mean_t, out=out)
            out.div_(std_t)

        return normalise_cuda

    def normalise_cpu(crop: torch.Tensor, flip: int, out: torch.Tensor) -> None:
        pixels, result = crop.numpy(), out.numpy()
        np.subtract(pixels[:, :, ::-1] if flip else pixels, mean255, out=result, dtype=np.float32)
        np.divide(result, std255, out=result)

    return normalise_cpu


def _device(device_id: int | None) -> torch.device:
    return torch.device("cpu") if device_id is None else torch.device("cuda", device_id)


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
) -> TorchvisionPipeline:
    """Train batches of `source()` (encoded uint8 arrays, labels int64 (B, 1), crop_x float32 (B,),
    crop_y float32 (B,), flip int32 (B,)): outputs (images (B,3,s,s) float32, labels int64 (B, 1)).
    The signature is `dali_pipelines.train_pipeline`'s: `batch_size` comes from the source here, the
    loader's prefetching replaces `prefetch_depth`, and no random numbers are drawn (`seed`)."""
    device = _device(device_id)
    normalise = _normaliser(mean, std, device)
    side = train_resize(image_size)

    def prepare(batch):
        encoded, labels, crop_x, crop_y, flip = batch
        x0, y0 = crop_origin(crop_x, side, image_size), crop_origin(crop_y, side, image_size)
        images = torch.empty(len(encoded), 3, image_size, image_size, device=device)

        def fill(image: torch.Tensor, i: int) -> None:
            crop = resize(image, (side, side))[:, y0[i] : y0[i] + image_size, x0[i] : x0[i] + image_size]
            normalise(crop, flip[i], images[i])

        return encoded, fill, (images, torch.from_numpy(np.asarray(labels)))

    return TorchvisionPipeline(source, prepare, num_threads=num_threads, device=device)


def eval_pipeline(
    source: Callable,
    *,
    batch_size: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    num_threads: int,
    device_id: int | None,
    prefetch_depth: int = 2,
) -> TorchvisionPipeline:
    """Eval batches of `source()` (a list of encoded uint8 arrays): outputs (images (b,3,s,s) float32,).
    The signature is `dali_pipelines.eval_pipeline`'s (`batch_size`, `prefetch_depth` unused here)."""
    device = _device(device_id)
    normalise = _normaliser(mean, std, device)

    def prepare(encoded):
        images = torch.empty(len(encoded), 3, image_size, image_size, device=device)

        def fill(image: torch.Tensor, i: int) -> None:
            h, w = eval_resize(image.shape[1], image.shape[2], image_size)
            y0, x0 = centre_origin(h, image_size), centre_origin(w, image_size)
            normalise(resize(image, (h, w))[:, y0 : y0 + image_size, x0 : x0 + image_size], 0, images[i])

        return encoded, fill, (images,)

    return TorchvisionPipeline(source, prepare, num_threads=num_threads, device=device)
