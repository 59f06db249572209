"""Train/eval loaders, with each decoder (DALI and torchvision, on the CPU), on tiny solid-colour
datasets: shapes, order, determinism, sharding, resume and corrupt files.  Images are normalised
with mean 0 / std 1 where the colour (which encodes the image index, see `synthetic.colour_of`) is
read back."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from udon_fast.data import CorruptImageError, EvalLoader, Split, TrainLoader, load_domains, load_folder_domain
from udon_fast.data.decoders import DECODERS
from udon_fast.data.pil_baseline import pil_train_loader
from udon_fast.data.synthetic import colour_of, write_tiny_uned

IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def indices_of(images: torch.Tensor) -> list[int]:
    """Recover each image's index from its (normalised with IDENTITY) solid colour."""
    rgb = (images.mean(dim=(2, 3)) * 255 / 16).round().long().tolist()
    return [r + 16 * g + 256 * b for r, g, b in rgb]


@pytest.fixture(params=DECODERS)
def decoder(request) -> str:
    return request.param


@pytest.fixture
def unique(tmp_path):
    """Domain "u": 20 train images, one per class (label == index), and domain "v": 9 images."""
    return load_domains(write_tiny_uned(tmp_path, {"u": {"train": 20, "val": 5}, "v": {"train": 9}}, per_class=1))


def loader(domains, decoder="dali", **kw):
    options = dict(batch_size=5, image_size=32, num_threads=1, device_id=None, seed=0, **IDENTITY)
    return TrainLoader(domains, decoder=decoder, **{**options, **kw})


def evaluator(split, decoder, **kw):
    options = dict(batch_size=2, image_size=32, num_threads=1, device_id=None, **IDENTITY)
    return EvalLoader(split, decoder=decoder, **{**options, **kw})


def test_train_batches_shapes_dtypes_ranges(tmp_path, decoder):
    rng = np.random.default_rng(0)
    for i in range(6):
        path = tmp_path / "f" / f"c{i % 2}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(path)
    domains = {"f": load_folder_domain(tmp_path / "f")}
    images, labels = loader(domains, decoder, batch_size=4, image_size=24, **IMAGENET).next_batch("f")
    assert images.shape == (4, 3, 24, 24) and images.dtype == torch.float32
    assert labels.shape == (4,) and labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1}
    mean, std = torch.tensor(IMAGENET["mean"])[:, None, None], torch.tensor(IMAGENET["std"])[:, None, None]
    pixels = images * std + mean
    assert pixels.min() >= -1e-4 and pixels.max() <= 1 + 1e-4
    assert abs(pixels.mean() - 0.5) < 0.05 and pixels.std() > 0.02  # uniform noise, smoothed by the resize


def test_an_epoch_visits_every_sample_once_with_matching_labels(unique, decoder):
    train = loader(unique, decoder)
    seen = []
    for _ in range(4):
        images, labels = train.next_batch("u")
        assert indices_of(images) == labels.tolist()
        seen += labels.tolist()
    assert sorted(seen) == list(range(20)) and seen != list(range(20))
    assert train.state_dict()["domains"]["u"] == {"epoch": 1, "position": 0}


def test_seeded_and_deterministic(unique, decoder):
    def batches(seed):
        train = loader(unique, decoder, seed=seed)
        return [train.next_batch("u") for _ in range(3)]

    first, again, other = batches(0), batches(0), batches(1)
    for (x, y), (x2, y2) in zip(first, again):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert [y.tolist() for _, y in first] != [y.tolist() for _, y in other]


def test_flip_and_crop_vary_per_sample(tmp_path, decoder):
    gradient = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (64, 1, 3))
    path = tmp_path / "g" / "c0" / "0.jpg"
    path.parent.mkdir(parents=True)
    Image.fromarray(gradient).save(path, quality=98)
    domains = {"g": load_folder_domain(tmp_path / "g")}
    images, _ = loader(domains, decoder, batch_size=16).next_batch("g")
    slope = images[:, 0, :, -4:].mean(dim=(1, 2)) - images[:, 0, :, :4].mean(dim=(1, 2))
    assert (slope > 0.2).any() and (slope < -0.2).any()  # some flipped, some not
    assert len({round(float(x), 3) for x in images[:, 0, 0, 0]}) > 4  # crop positions vary


def test_two_ranks_partition_each_epoch(unique, decoder):
    shares = []
    for rank in range(2):
        train = loader(unique, decoder, rank=rank, world_size=2)
        shares.append([i for _ in range(2) for i in train.next_batch("u")[1].tolist()])
    assert set(shares[0]).isdisjoint(shares[1]) and sorted(shares[0] + shares[1]) == list(range(20))
    with pytest.raises(ValueError, match="rank must be in"):
        loader(unique, decoder, rank=2, world_size=2)


def test_global_batches_do_not_depend_on_the_rank_count(unique, decoder):
    """Global batch 6 over 20 samples on 1, 2 and 3 ranks (crossing epoch boundaries): rank r's rows are rows
    r, r + W, ... of the same global batches; a position saved on 2 ranks resumes on 3 at the same batch."""

    def global_batches(world, steps, state=None):
        ranks = [loader(unique, decoder, batch_size=6 // world, rank=r, world_size=world) for r in range(world)]
        if state is not None:
            for train in ranks:
                train.load_state_dict(state)
        batches = []
        for _ in range(steps):
            rows = [train.next_batch("u")[1] for train in ranks]
            batches.append(torch.stack(rows, dim=1).reshape(-1).tolist())
        return batches, ranks[0].state_dict()

    single, _ = global_batches(1, 8)
    assert global_batches(2, 8)[0] == single == global_batches(3, 8)[0]
    _, saved = global_batches(2, 3)
    assert global_batches(3, 5, saved)[0] == single[3:]


def test_resume_sees_the_same_batches(unique, decoder):
    steps = ["u", "v", "u", "u", "v", "v", "u", "v", "u", "u", "v", "u"]
    reference = loader(unique, decoder, batch_size=6)
    expected = [reference.next_batch(d) for d in steps]
    first = loader(unique, decoder, batch_size=6)
    for d in steps[:5]:
        first.next_batch(d)
    state = first.state_dict()
    resumed = loader(unique, decoder, batch_size=6)
    resumed.load_state_dict(state)
    for d, (x, y) in zip(steps[5:], expected[5:]):
        x2, y2 = resumed.next_batch(d)
        assert torch.equal(x, x2) and torch.equal(y, y2)
    with pytest.raises(ValueError, match="seed"):
        loader(unique, decoder, batch_size=6).load_state_dict({**state, "seed": 1})


def test_batches_are_copies_not_dali_buffers(unique, decoder):
    train = loader(unique, decoder)
    x, y = train.next_batch("u")
    kept = x.clone()
    for _ in range(5):
        train.next_batch("u")
    assert torch.equal(x, kept)


def test_corrupt_images_are_skipped_and_logged(tmp_path, caplog, decoder):
    root = write_tiny_uned(tmp_path, {"c": {"train": 12}}, per_class=1)
    folder = root / "images" / "c" / "train"
    truncated, garbage, mangled = folder / "c1_0.jpg", folder / "c4_0.jpg", folder / "c7_0.jpg"
    truncated.write_bytes(truncated.read_bytes()[:150])
    garbage.write_bytes(b"definitely not an image" * 10)
    data = bytearray(mangled.read_bytes())
    data[4:200] = bytes(196)  # header tables destroyed, SOI/EOI intact: only the decoder notices
    mangled.write_bytes(bytes(data))
    domains = load_domains(root)
    with caplog.at_level(logging.WARNING, logger="udon_fast.data"):
        train = loader(domains, decoder, batch_size=4)
        labels = [i for _ in range(7) for i in train.next_batch("c")[1].tolist()]
    assert not {1, 4, 7} & set(labels) and set(labels) == set(range(12)) - {1, 4, 7}
    assert sorted(train.skipped["c"]) == sorted(map(str, (truncated, garbage, mangled)))
    assert str(mangled) in caplog.text and str(truncated) in caplog.text


def test_eval_in_order_with_partial_last_batch(unique, decoder):
    split = unique["u"].splits["train"]
    batches = list(evaluator(split, decoder, batch_size=8))
    assert [len(x) for x, _ in batches] == [8, 8, 4]
    assert [i for x, _ in batches for i in indices_of(x)] == list(range(20))
    assert torch.cat([y for _, y in batches]).tolist() == split.labels.tolist()


def test_eval_resizes_shorter_side_and_centre_crops(tmp_path, decoder):
    image = np.zeros((40, 80, 3), dtype=np.uint8)
    image[:, :40, 0] = 255  # left half red, right half blue
    image[:, 40:, 2] = 255
    Image.fromarray(image).save(tmp_path / "x.jpg", quality=98)
    split = Split([str(tmp_path / "x.jpg")], np.zeros(1, dtype=np.int64))
    ((x, _),) = evaluator(split, decoder)
    assert x.shape == (1, 3, 32, 32)
    assert x[0, 0, :, :14].mean() > 0.9 and x[0, 2, :, :14].mean() < 0.1
    assert x[0, 2, :, 18:].mean() > 0.9 and x[0, 0, :, 18:].mean() < 0.1


def test_eval_refuses_corrupt_file(unique, decoder):
    split = unique["u"].splits["val"]
    with open(split.paths[3], "r+b") as f:
        f.truncate(100)
    with pytest.raises(CorruptImageError, match="c3_0.jpg"):
        list(evaluator(split, decoder))


def test_argument_errors(unique):
    with pytest.raises(ValueError, match="mean must be 3 values in 0..1"):
        loader(unique, mean=(123.7, 116.3, 103.5))
    with pytest.raises(KeyError, match="unknown domain"):
        loader(unique).next_batch("nope")


def test_pil_baseline_matches_dali_conventions(unique):
    images, labels = next(
        iter(pil_train_loader(unique["u"].train, batch_size=5, image_size=32, num_workers=0, **IDENTITY))
    )
    assert images.shape == (5, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert indices_of(images) == labels.tolist()
    assert colour_of(3) == (48, 0, 0)
