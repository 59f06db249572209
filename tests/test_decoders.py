"""The two decoders (DALI, torchvision) give the same batches on the CPU: identical labels and sample
order, pixels equal up to resampling rounding, on photo-like images of several sizes and formats;
a resume crosses decoders; without DALI the loaders fall back to torchvision with one log line."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from udon_fast.data import EvalLoader, Split, TrainLoader, load_folder_domain
from udon_fast.data.decoders import resolve_decoder
from udon_fast.data.synthetic import photo_like, write_tiny_uned

IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
# Both resample with an antialiased linear (triangle) filter but round differently (DALI: float
# weights, torch: 16-bit fixed point on uint8) and clip the filter at image borders differently:
# measured on these images a mean |difference| of 0.12-0.2 levels (of 255) per image and single
# pixels up to 11 levels at sharp edges under strong downscaling.  A crop one pixel off, a missed
# flip or a different resize definition moves the per-image mean by well over 1 level.
MEAN_LEVELS, MAX_LEVELS = 0.5, 16
EXIF_ROTATE_90 = 6


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A two-class folder domain of photo-like images: JPEG (large, small, grey, EXIF-rotated), PNG
    (RGB, RGBA), BMP."""
    root, rng = tmp_path_factory.mktemp("photos"), np.random.default_rng(0)
    specs = [
        ((120, 160), "jpg"),
        ((36, 48), "jpg"),
        ((70, 50), "png"),
        ((60, 80), "bmp"),
        ((64, 64), "grey"),
        ((80, 60), "exif"),
        ((50, 50), "rgba"),
        ((33, 97), "jpg"),
    ]
    for i, (size, kind) in enumerate(specs):
        folder = root / f"c{i % 2}"
        folder.mkdir(exist_ok=True)
        image = Image.fromarray(photo_like(rng, size))
        if kind == "grey":
            image.convert("L").save(folder / f"{i}.jpg", quality=90)
        elif kind == "exif":
            exif = Image.Exif()
            exif[0x0112] = EXIF_ROTATE_90
            image.save(folder / f"{i}.jpg", quality=90, exif=exif)
        elif kind == "rgba":
            image.putalpha(128)
            image.save(folder / f"{i}.png")
        else:
            image.save(folder / f"{i}.{kind}", **({"quality": 90} if kind == "jpg" else {}))
    return root


def assert_close_pixels(a: torch.Tensor, b: torch.Tensor) -> None:
    levels = (a - b).abs() * 255
    per_image = levels.flatten(1).mean(dim=1)
    assert per_image.max() < MEAN_LEVELS, per_image.tolist()
    assert levels.max() <= MAX_LEVELS


def train_batches(domain, decoder, count, state=None):
    loader = TrainLoader(
        {"p": domain}, batch_size=5, image_size=32, num_threads=2, device_id=None, seed=3, decoder=decoder, **IDENTITY
    )
    if state is not None:
        loader.load_state_dict(state)
    batches = [loader.next_batch("p") for _ in range(count)]
    return batches, loader.state_dict()


def test_train_batches_agree_across_decoders(photos):
    domain = load_folder_domain(photos)
    dali, _ = train_batches(domain, "dali", 4)
    torchvision, _ = train_batches(domain, "torchvision", 4)
    for (x, y), (x2, y2) in zip(dali, torchvision):
        assert torch.equal(y, y2)
        assert x.shape == x2.shape == (5, 3, 32, 32) and x2.dtype == torch.float32
        assert_close_pixels(x, x2)


def test_a_resume_crosses_decoders(photos):
    domain = load_folder_domain(photos)
    uninterrupted, _ = train_batches(domain, "dali", 3)
    _, state = train_batches(domain, "dali", 1)
    resumed, _ = train_batches(domain, "torchvision", 2, state)
    for (x, y), (x2, y2) in zip(uninterrupted[1:], resumed):
        assert torch.equal(y, y2)
        assert_close_pixels(x, x2)


def test_eval_batches_agree_across_decoders(photos):
    split = load_folder_domain(photos).train
    dali, torchvision = (
        list(EvalLoader(split, batch_size=3, image_size=40, num_threads=2, device_id=None, decoder=decoder, **IDENTITY))
        for decoder in ("dali", "torchvision")
    )
    assert [len(x) for x, _ in torchvision] == [3, 3, 2]
    for (x, y), (x2, y2) in zip(dali, torchvision):
        assert torch.equal(y, y2)
        assert_close_pixels(x, x2)


def test_exif_orientation_is_applied(photos):
    rotated = next(p for p in sorted(photos.rglob("*.jpg")) if Image.open(p).getexif().get(0x0112) == EXIF_ROTATE_90)
    ((x, _),) = EvalLoader(
        Split([str(rotated)], np.zeros(1, dtype=np.int64)),
        batch_size=1,
        image_size=60,
        num_threads=1,
        device_id=None,
        decoder="torchvision",
        **IDENTITY,
    )
    upright = np.asarray(Image.open(rotated).convert("RGB").transpose(Image.Transpose.ROTATE_270))
    assert upright.shape[:2] == (60, 80)  # (80, 60) stored, rotated 90 degrees by its EXIF tag
    expected = torch.from_numpy(upright[:, 10:70].copy()).permute(2, 0, 1) / 255
    assert (x[0] - expected).abs().mean() * 255 < 1.0


def test_unknown_decoder_is_refused():
    with pytest.raises(ValueError, match="decoder must be one of dali, torchvision; got 'pil'"):
        resolve_decoder("pil")


@pytest.mark.timeout(300)
def test_without_dali_training_and_evaluation_fall_back_with_one_line(tmp_path):
    """A run with DALI made unimportable (None in sys.modules): train + evaluate work, one log line."""
    root = write_tiny_uned(tmp_path / "data", {"a": {"train": 4, "val": 2, "test": 2}}, per_class=3)
    argv = [
        "--data-root",
        str(root),
        "--out",
        str(tmp_path / "run"),
        "--backbone",
        "vit_tiny_patch16_224",
        "--pretrained",
        "none",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--steps",
        "2",
        "--no-compile",
        "--no-progress",
        "--data-threads",
        "1",
    ]
    script = (
        "import sys\n"
        "sys.modules['nvidia.dali'] = None\n"
        "import udon_fast, udon_fast.data\n"
        "from udon_fast.commands import train\n"
        f"status = train.main({argv!r})\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('nvidia.dali') and sys.modules[m] is not None)\n"
        "print('status', status, 'dali modules', loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "status 0 dali modules []" in result.stdout
    notices = [line for line in result.stderr.splitlines() if "NVIDIA DALI is not importable" in line]
    assert len(notices) == 1 and "decoding images with torchvision instead" in notices[0], result.stderr[-2000:]
    assert (tmp_path / "run" / "results.json").is_file()


@pytest.mark.gpu
def test_torchvision_on_cuda_matches_the_cpu(photos):
    """nvJPEG (batched decode_jpeg on CUDA) + GPU resize vs the CPU path; and DALI's mixed decoder."""
    domain = load_folder_domain(photos)
    batches = {}
    for decoder, device_id in (("torchvision", None), ("torchvision", 0), ("dali", 0)):
        loader = TrainLoader(
            {"p": domain},
            batch_size=5,
            image_size=32,
            num_threads=2,
            device_id=device_id,
            seed=3,
            decoder=decoder,
            **IDENTITY,
        )
        batches[decoder, device_id] = [loader.next_batch("p") for _ in range(2)]
    for key in (("torchvision", 0), ("dali", 0)):
        for (x, y), (x2, y2) in zip(batches["torchvision", None], batches[key]):
            assert x2.is_cuda and torch.equal(y, y2)
            levels = (x - x2.cpu()).abs() * 255
            assert levels.flatten(1).mean(dim=1).max() < 2.0  # nvJPEG's IDCT/upsampling differ from libjpeg-turbo
