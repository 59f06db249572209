"""Tar shards against individual files, cold: 100,000 small JPEGs (80x80 crops of scikit-image's photos,
quality 85, about 3 KB each) in the UnED layout, and the same images as 256 MB webdataset shards
(`python -m udon_fast.data shard`).  Before every round the page cache is dropped (`sync; echo 3 >
/proc/sys/vm/drop_caches`; where that is refused, `posix_fadvise(POSIX_FADV_DONTNEED)` on every file
of the dataset), so each round reads from the disk.  A round starts from nothing: it loads the
dataset (the UnED reader stats every file; the shard reader reads index.json and the member table)
and then reads:

- read:  the encoded bytes of the first 20,000 samples of epoch 0's seeded order (random access, the
  order training reads in), one thread, no decoding: the storage alone;
- train: `TrainLoader` batches of 256 at 64 px, torchvision decoder, 2 threads, 40 batches;
- eval:  `EvalLoader` over the first 20,480 images in order, DALI decoder (for shards: DALI's
  `fn.readers.webdataset`), batches of 256 at 64 px, after its up-front decode check of every image.

Stored per case: `images_per_s` (after the first batch), `first_batch_s` (load + first batch, cold)
and, for shards, `shards_vs_files` (ratio of images/s, same run).  The cases alternate files, shards
per mode; the machine is shared, so compare within one run.  Run: `pytest bench/test_bench_shards.py`
(`UDON_BENCH_QUICK=1`: 10,000 images, smaller reads).  The JPEGs and shards are written once per run
into a temporary directory (about 1 GB).
"""

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.suite import quick
from udon_fast.data import EvalLoader, TrainLoader, load_domains
from udon_fast.data.builtin import skimage_data_dir
from udon_fast.data.sampling import EpochStream, stream_id
from udon_fast.data.shards import write_shards

IMAGES = 10_000 if quick() else 100_000
CLASSES = 1_000
SIDE = 80
READ = 4_000 if quick() else 20_000
BATCH, TRAIN_BATCHES, IMAGE_SIZE, THREADS = 256, (8 if quick() else 40), 64, 2
EVAL_IMAGES = 16 * 256 if quick() else 80 * 256
ROUNDS = 2
NORM = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png")
RATES: dict[tuple[str, str], float] = {}


def _write_images(root: str, start: int, stop: int) -> list[dict]:
    """JPEGs start..stop-1: random 80x80 crops of the photos; their info-file entries."""
    photos = []
    for name in PHOTOS:
        with Image.open(skimage_data_dir() / name) as image:
            photos.append(np.asarray(image.convert("RGB")))
    rng, entries = np.random.default_rng(start), []
    for i in range(start, stop):
        photo = photos[rng.integers(len(photos))]
        y, x = rng.integers(0, photo.shape[0] - SIDE), rng.integers(0, photo.shape[1] - SIDE)
        rel = f"bench/{i // 1000:03d}/{i}.jpg"
        path = Path(root) / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo[y : y + SIDE, x : x + SIDE]).save(path, "JPEG", quality=85)
        entries.append({"path": rel, "class_id": i % CLASSES})
    return entries


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    """{"files": the UnED root, "shards": its shard root}."""
    base = tmp_path_factory.mktemp("shards_bench")
    files = base / "uned"
    bounds = np.linspace(0, IMAGES, 9, dtype=int)
    with ProcessPoolExecutor(max_workers=THREADS) as pool:
        parts = pool.map(_write_images, [str(files)] * 8, bounds[:-1], bounds[1:])
        entries = [e for part in parts for e in part]
    (files / "info_files" / "bench").mkdir(parents=True)
    (files / "info_files" / "bench" / "train.json").write_text(json.dumps(entries))
    write_shards(load_domains(files), base / "shards", progress=False)
    return {"files": files, "shards": base / "shards"}


def drop_page_cache(root: Path) -> str:
    """Evict `root`'s files from the page cache; returns the method that worked."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3")
        return "drop_caches"
    except OSError:
        for folder, _, names in os.walk(root):
            for name in names:
                fd = os.open(os.path.join(folder, name), os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
        return "posix_fadvise"


def _read(root: Path) -> tuple[float, int]:
    start = time.perf_counter()
    train = load_domains(root)["bench"].train
    order = EpochStream(len(train), 0, stream_id("bench")).shard(0)[0][:READ]
    train.read(int(order[0]))
    first = time.perf_counter()
    for i in order[1:]:
        train.read(int(i))
    return first - start, len(order) - 1


def _train(root: Path) -> tuple[float, int]:
    start = time.perf_counter()
    loader = TrainLoader(
        load_domains(root),
        batch_size=BATCH,
        image_size=IMAGE_SIZE,
        num_threads=THREADS,
        device_id=None,
        decoder="torchvision",
        **NORM,
    )
    try:
        loader.next_batch("bench")
        first = time.perf_counter()
        for _ in range(TRAIN_BATCHES - 1):
            loader.next_batch("bench")
    finally:
        loader.close()
    return first - start, BATCH * (TRAIN_BATCHES - 1)


def _eval(root: Path) -> tuple[float, int]:
    start = time.perf_counter()
    split = load_domains(root)["bench"].train.part(0, EVAL_IMAGES)
    batches = iter(
        EvalLoader(
            split, batch_size=BATCH, image_size=IMAGE_SIZE, num_threads=THREADS, device_id=None, decoder="dali", **NORM
        )
    )
    next(batches)
    first = time.perf_counter()
    count = sum(len(images) for images, _ in batches)
    return first - start, count


MODES = {"read": _read, "train": _train, "eval": _eval}


@pytest.mark.parametrize("mode,storage", [(m, s) for m in MODES for s in ("files", "shards")])
def test_bench_shards_vs_files(benchmark, roots, mode, storage):
    benchmark.group = f"shards-{mode}"
    measured = {"first": [], "rate": []}

    def cold():
        benchmark.extra_info["cache_drop"] = drop_page_cache(roots[storage])

    def run():
        start = time.perf_counter()
        first_batch_s, images = MODES[mode](roots[storage])
        measured["first"].append(first_batch_s)
        measured["rate"].append(images / (time.perf_counter() - start - first_batch_s))

    benchmark.pedantic(run, setup=cold, rounds=ROUNDS, iterations=1)
    rate = RATES[mode, storage] = float(np.mean(measured["rate"]))
    benchmark.extra_info.update(
        images_per_s=round(rate, 1), first_batch_s=round(float(np.mean(measured["first"])), 3), images=IMAGES
    )
    if storage == "shards" and (mode, "files") in RATES:
        benchmark.extra_info["shards_vs_files"] = round(rate / RATES[mode, "files"], 2)
