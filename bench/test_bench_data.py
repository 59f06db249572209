"""Images/s of the DALI CPU train pipeline vs the PIL DataLoader baseline, same CPU threads, 224 px,
on the built-in dataset (all domains' train images).  Run: `pytest bench/test_bench_data.py`
(`UDON_BENCH_QUICK=1`: 4 batches a round, 2 rounds).
The DALI case stores `dali_vs_pil` (ratio of images/s) in its `extra_info`; target >= 1.5."""
import itertools

import numpy as np
import pytest

from bench.suite import quick
from udon_fast.data import Domain, Split, TrainLoader, ensure_builtin, load_domains
from udon_fast.data.pil_baseline import pil_train_loader

THREADS = 2
BATCH = 64
BATCHES_PER_ROUND = 4 if quick() else 16
ROUNDS = 2 if quick() else 3
IMAGE_SIZE = 224
NORM = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
RATES: dict[str, float] = {}


@pytest.fixture(scope="module")
def all_train() -> Domain:
    domains = load_domains(ensure_builtin())
    paths = [p for d in domains.values() for p in d.train.paths]
    labels = np.concatenate([d.train.first_labels() for d in domains.values()])
    split = Split(paths, labels, name="train")
    return Domain("all", split, {"train": split}, int(labels.max()) + 1, {})


def dali_batches(domain: Domain):
    loader = TrainLoader({"all": domain}, batch_size=BATCH, image_size=IMAGE_SIZE, num_threads=THREADS,
                         device_id=None, **NORM)
    while True:
        yield loader.next_batch("all")


def pil_batches(domain: Domain):
    loader = pil_train_loader(domain.train, batch_size=BATCH, image_size=IMAGE_SIZE, num_workers=THREADS, **NORM)
    yield from itertools.chain.from_iterable(itertools.repeat(loader))


@pytest.mark.parametrize("pipeline", ["pil", "dali"])
def test_bench_train_pipeline(benchmark, all_train, pipeline):
    batches = (pil_batches if pipeline == "pil" else dali_batches)(all_train)
    for _ in range(2):  # start workers / fill the prefetch queue
        next(batches)

    def run():
        for _ in range(BATCHES_PER_ROUND):
            images, _ = next(batches)
        assert images.shape == (BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    RATES[pipeline] = BATCH * BATCHES_PER_ROUND / benchmark.stats.stats.mean
    benchmark.extra_info.update(images_per_s=round(RATES[pipeline], 1), threads=THREADS, image_size=IMAGE_SIZE)
    if pipeline == "dali" and "pil" in RATES:
        ratio = RATES["dali"] / RATES["pil"]
        benchmark.extra_info["dali_vs_pil"] = round(ratio, 2)
        assert ratio >= 1.5, f"DALI {RATES['dali']:.0f} img/s is only {ratio:.2f}x PIL's {RATES['pil']:.0f} img/s"
