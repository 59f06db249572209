"""The checks every image passes before a decoder sees it: the JPEG's real end-of-image marker (data
after it is allowed, as in phone "motion photos") and the pixel limit, on the train, eval and embed
paths with both decoders (DALI's CPU decoder and torchvision)."""

import io
import struct
import zlib

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from udon_fast.commands.embed import main as embed_main
from udon_fast.data import CorruptImageError, EvalLoader, Split, TrainLoader, load_domains
from udon_fast.data.decoders import DECODERS
from udon_fast.data.image_bytes import DEFAULT_MAX_PIXELS, decode_check, looks_complete, max_pixels, set_max_pixels
from udon_fast.data.synthetic import colour_of, write_image, write_tiny_uned
from udon_fast.model import UDONModel, save_checkpoint

IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
# What follows the JPEG in a motion photo: an MP4 box header, then video bytes (which may hold FFD9).
VIDEO = b"\x00\x00\x00\x18ftypmp42" + np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()


@pytest.fixture(params=DECODERS)
def decoder(request) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _default_limit():
    yield
    set_max_pixels(DEFAULT_MAX_PIXELS)


def _jpeg(image: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", **{"quality": 90, **options})
    return buffer.getvalue()


def _photo(side: int = 96, **options) -> bytes:
    return _jpeg(np.asarray(Image.fromarray(skimage.data.astronaut()).resize((side, side))), **options)


def _with_thumbnail(side: int = 96) -> bytes:
    """A JPEG whose EXIF block (APP1) holds a thumbnail JPEG, with its own end-of-image marker."""
    exif = Image.Exif()
    exif[0x010E] = "thumbnail below"
    image = Image.open(io.BytesIO(_photo(side)))
    thumb = _photo(16)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, exif=exif.tobytes() + thumb)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A 1-bit PNG of width x height whose rows are all zero: tiny file, huge image."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = zlib.compress(bytes((width + 7) // 8 + 1) * height, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", rows)
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "options",
    [{}, {"progressive": True}, {"restart_marker_blocks": 1}],
    ids=["baseline", "progressive", "restart-markers"],
)
def test_data_after_the_end_of_image_is_accepted(options):
    jpeg = _photo(**options)
    assert looks_complete(jpeg) is None
    assert looks_complete(jpeg + VIDEO) is None  # the old check looked for EOI in the last 64 bytes only
    assert looks_complete(jpeg + b"\xff\xd9" * 3 + VIDEO) is None


def test_truncated_and_damaged_jpegs_stay_refused():
    jpeg = _photo(progressive=True)
    for cut in (len(jpeg) - 2, len(jpeg) - 1, len(jpeg) // 2, 200):
        assert looks_complete(jpeg[:cut]) is not None, cut
        assert looks_complete(jpeg[:cut] + VIDEO) is not None, cut  # video after a cut-off JPEG
    # cut right after the thumbnail's end marker: an end marker inside a header segment does not count
    thumbnailed = _with_thumbnail()
    thumb_end = thumbnailed.index(b"\xff\xd9") + 2
    assert thumb_end < 2000 and looks_complete(thumbnailed) is None
    assert looks_complete(thumbnailed[:thumb_end]) is not None
    # stuffed bytes: FF00 then D9 is data, not an end marker
    scan = thumbnailed.rindex(b"\xff\xda")
    assert looks_complete(thumbnailed[: scan + 40] + b"\xff\x00\xd9") is not None


def test_motion_photo_decodes_on_every_path(tmp_path, decoder):
    """Train, eval and embed accept a JPEG followed by video bytes, and both decoders decode it like
    the plain JPEG."""
    root = write_tiny_uned(tmp_path / "data", {"m": {"train": 4, "test": 4}}, per_class=1)
    plain = _jpeg(np.full((40, 48, 3), colour_of(2), np.uint8), quality=95)
    motion = root / "images" / "m" / "train" / "c2_0.jpg"
    motion.write_bytes(plain + VIDEO)
    domains = load_domains(root)
    assert decode_check(str(motion)) is None
    train = TrainLoader(
        domains, batch_size=4, image_size=32, num_threads=1, device_id=None, decoder=decoder, **IDENTITY
    )
    labels = [int(y) for _ in range(2) for y in train.next_batch("m")[1]]
    train.close()
    assert sorted(labels) == [0, 0, 1, 1, 2, 2, 3, 3] and not train.skipped["m"]
    (tmp_path / "plain.jpg").write_bytes(plain)
    split = Split([str(tmp_path / "plain.jpg"), str(motion)], np.zeros(2, np.int64))
    ((images, _),) = EvalLoader(
        split, batch_size=2, image_size=32, num_threads=1, device_id=None, decoder=decoder, **IDENTITY
    )
    assert np.array_equal(images[0].numpy(), images[1].numpy())

    model = UDONModel("vit_tiny_patch16_224", {"m": 4}, image_size=32, backbone_kwargs={"depth": 1})
    checkpoint = save_checkpoint(tmp_path / "model.pt", model)
    folder = tmp_path / "gallery"
    folder.mkdir()
    (folder / "motion.jpg").write_bytes(motion.read_bytes())
    (folder / "plain.jpg").write_bytes(plain)
    out = tmp_path / "e.npy"
    assert (
        embed_main(
            [
                "--checkpoint",
                str(checkpoint),
                "--images",
                str(folder),
                "--out",
                str(out),
                "--decoder",
                decoder,
                "--data-threads",
                "1",
            ]
        )
        == 0
    )
    embeddings = np.load(out)
    np.testing.assert_allclose(embeddings[0], embeddings[1], atol=1e-6)


@pytest.mark.gpu
def test_motion_photo_decodes_on_the_gpu(tmp_path, decoder):
    """DALI's mixed decoder (nvJPEG, the hardware decoder) and torchvision's batched nvJPEG decode
    read the JPEG and ignore the bytes after it."""
    plain = _photo(64)
    (tmp_path / "plain.jpg").write_bytes(plain)
    (tmp_path / "motion.jpg").write_bytes(plain + VIDEO)
    split = Split([str(tmp_path / "plain.jpg"), str(tmp_path / "motion.jpg")], np.zeros(2, np.int64))
    ((images, _),) = EvalLoader(
        split, batch_size=2, image_size=32, num_threads=1, device_id=0, decoder=decoder, **IDENTITY
    )
    assert images.is_cuda and torch.equal(images[0], images[1])


def test_pixel_limit_reads_the_header_of_every_format():
    bomb = _png_header_only(20000, 20000)
    assert len(bomb) < 100_000 and max_pixels() == DEFAULT_MAX_PIXELS
    assert looks_complete(bomb).startswith(
        "too many pixels (20000 x 20000 = 400,000,000, over the limit of 178,956,970"
    )
    small = np.full((30, 50, 3), 90, np.uint8)
    encoded = {"jpeg": _jpeg(small)}
    for kind in ("PNG", "BMP", "TIFF", "WEBP"):
        buffer = io.BytesIO()
        Image.fromarray(small).save(buffer, kind)
        encoded[kind] = buffer.getvalue()
    for kind, data in encoded.items():
        set_max_pixels(1500)
        assert looks_complete(data) is None, kind
        set_max_pixels(1499)
        assert looks_complete(data) == (
            "too many pixels (50 x 30 = 1,500, over the limit of 1,499; a decompression bomb? see --max-pixels)"
        ), kind
    with pytest.raises(ValueError, match="--max-pixels must be an integer >= 1, got 0"):
        set_max_pixels(0)


def test_pixel_limit_applies_to_train_eval_and_embed(tmp_path, decoder, caplog):
    root = write_tiny_uned(tmp_path / "data", {"p": {"train": 4, "test": 4}}, per_class=1)
    big = root / "images" / "p" / "train" / "c1_0.jpg"
    write_image(big, colour_of(1), (60, 60))  # 3,600 pixels; the others have 40 x 48 = 1,920
    set_max_pixels(3000)
    train = TrainLoader(
        load_domains(root), batch_size=3, image_size=32, num_threads=1, device_id=None, decoder=decoder, **IDENTITY
    )
    labels = {int(y) for _ in range(3) for y in train.next_batch("p")[1]}
    train.close()
    assert labels == {0, 2, 3} and list(train.skipped["p"]) == [str(big)]
    assert "too many pixels (60 x 60 = 3,600, over the limit of 3,000" in train.skipped["p"][str(big)]
    assert str(big) in caplog.text
    split = Split([str(big)], np.zeros(1, np.int64), name="test")
    with pytest.raises(CorruptImageError, match=f"{big} \\(too many pixels \\(60 x 60"):
        list(EvalLoader(split, batch_size=2, image_size=32, num_threads=1, device_id=None, decoder=decoder, **IDENTITY))
    set_max_pixels(3600)
    assert (
        len(
            list(
                EvalLoader(
                    split, batch_size=2, image_size=32, num_threads=1, device_id=None, decoder=decoder, **IDENTITY
                )
            )
        )
        == 1
    )


def test_max_pixels_flag_of_train_and_embed(tmp_path, cli):
    root = write_tiny_uned(tmp_path / "data", {"p": {"train": 4, "test": 6}}, per_class=1)
    big = root / "images" / "p" / "test" / "c2_0.jpg"
    write_image(big, colour_of(2), (60, 60))
    train = [
        "--data-root",
        root,
        "--out",
        tmp_path / "run",
        "--backbone",
        "vit_tiny_patch16_224",
        "--pretrained",
        "none",
        "--image-size",
        "32",
        "--batch-size",
        "2",
        "--no-compile",
        "--no-progress",
        "--steps",
        "1",
        "--data-threads",
        "1",
        "--no-baseline",
    ]
    run = cli("train", [*train, "--max-pixels", "3000"], tmp_path / "train.log")
    assert run.code == 2 and "Traceback" not in run.output, run.output[-3000:]
    assert f"{big} (too many pixels (60 x 60 = 3,600, over the limit of 3,000" in run.output
    model = UDONModel("vit_tiny_patch16_224", {"p": 4}, image_size=32, backbone_kwargs={"depth": 1})
    checkpoint = save_checkpoint(tmp_path / "model.pt", model)
    embed = [
        "--checkpoint",
        checkpoint,
        "--images",
        root / "images" / "p" / "test",
        "--out",
        tmp_path / "e.npy",
        "--data-threads",
        "1",
    ]
    run = cli("embed", [*embed, "--max-pixels", "3000"], tmp_path / "embed.log")
    assert run.code == 2 and f"{big} (too many pixels" in run.output and "Traceback" not in run.output
    assert cli("embed", [*embed, "--max-pixels", "3600"], tmp_path / "embed2.log").code == 0
