"""Train-batch images/s of the loaders' two decoders (DALI, torchvision) vs the torch DataLoader + PIL
baseline, CPU only, 2 threads (DataLoader: 2 worker processes), 224 px crops, batches of 64, on:
- photo640 / photo1024: photo-like JPEGs (crops of scikit-image's photos with noise, quality 90) of
  640x480 and 1024x768, the sizes users train on;
- builtin: the built-in dataset's 64-120 px thumbnails (all four domains' train images).
All are generated into a temporary directory (the built-in dataset too: never the user's cache).
Run: `pytest bench/test_bench_data.py` (`UDON_BENCH_QUICK=1`: fewer images, batches and rounds).

Each DALI / torchvision case stores `<decoder>_vs_pil` (ratio of images/s, measured in the same run)
and every case `cpu_ms_per_image` (CPU time of the process and its live children per image: the
cost, which unlike images/s does not depend on how many threads get scheduled on a busy machine).
"""

import itertools

import numpy as np
import pytest

from bench.suite import cpu_seconds_with_children, quick
from udon_fast.data import Domain, Split, TrainLoader, ensure_builtin, load_domains, load_folder_domain
from udon_fast.data.pil_baseline import pil_train_loader
from udon_fast.data.synthetic import write_photos

THREADS = 2
BATCH = 64
BATCHES_PER_ROUND = 3 if quick() else 8
ROUNDS = 2 if quick() else 3
IMAGE_SIZE = 224
PHOTOS = (2 if quick() else 4) * BATCH  # the PIL DataLoader drops the last partial batch of an epoch
NORM = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
DATASETS = {"photo640": (480, 640), "photo1024": (768, 1024), "builtin": None}
PIPELINES = ("pil", "dali", "torchvision")
RATES: dict[tuple[str, str], float] = {}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Domain]:
    """{name: one domain of all its train images}, written under a temporary directory."""
    out = {}
    for name, size in DATASETS.items():
        root = tmp_path_factory.mktemp(name)
        if size is None:
            domains = load_domains(ensure_builtin(cache_dir=root))
            paths = [p for d in domains.values() for p in d.train.paths]
            labels = np.concatenate([d.train.first_labels() for d in domains.values()])
            split = Split(paths, labels, name="train")
            out[name] = Domain("all", split, {"train": split}, int(labels.max()) + 1, {})
        else:
            out[name] = load_folder_domain(write_photos(root, PHOTOS, size, quality=90))
    return out


def batches(pipeline: str, domain: Domain):
    """Endless train batches of `pipeline`; closing the generator stops its threads or workers."""
    if pipeline == "pil":
        loader = pil_train_loader(domain.train, batch_size=BATCH, image_size=IMAGE_SIZE, num_workers=THREADS, **NORM)
        assert len(loader) > 0, f"{len(domain.train)} images make no batch of {BATCH}"
        yield from itertools.chain.from_iterable(itertools.repeat(loader))
        return
    loader = TrainLoader(
        {"all": domain},
        batch_size=BATCH,
        image_size=IMAGE_SIZE,
        num_threads=THREADS,
        device_id=None,
        decoder=pipeline,
        **NORM,
    )
    try:
        while True:
            yield loader.next_batch("all")
    finally:
        loader.close()


@pytest.mark.parametrize("dataset,pipeline", [(d, p) for d in DATASETS for p in PIPELINES])
def test_bench_train_pipeline(benchmark, datasets, dataset, pipeline):
    benchmark.group = f"data-{dataset}"
    stream = batches(pipeline, datasets[dataset])
    for _ in range(2):  # start workers / fill the prefetch queue
        next(stream)
    cpu = {"seconds": 0.0, "images": 0}

    def run():
        start = cpu_seconds_with_children()
        for _ in range(BATCHES_PER_ROUND):
            images, _ = next(stream)
        cpu["seconds"] += cpu_seconds_with_children() - start
        cpu["images"] += BATCH * BATCHES_PER_ROUND
        assert images.shape == (BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)

    try:
        benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    finally:
        stream.close()
    rate = RATES[dataset, pipeline] = BATCH * BATCHES_PER_ROUND / benchmark.stats.stats.mean
    benchmark.extra_info.update(
        images_per_s=round(rate, 1),
        cpu_ms_per_image=round(1e3 * cpu["seconds"] / cpu["images"], 2),
        threads=THREADS,
        image_size=IMAGE_SIZE,
    )
    if pipeline != "pil" and (dataset, "pil") in RATES:
        benchmark.extra_info[f"{pipeline}_vs_pil"] = round(rate / RATES[dataset, "pil"], 2)
