"""Bad inputs end in one line naming the file or option, before work is lost; never a crash.

Damaged JPEGs are real photos (scikit-image's astronaut) broken two ways: junk bytes between two
header segments (PIL skips them, DALI's JPEG parser fails on them and crashed the process at eval
batch size 128) and random bytes over the middle of the entropy-coded data (PIL refuses them).
Commands run in forked processes (`cli` fixture), so a crash shows as an exit code.
"""

import io
import json
import os
import shutil

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from udon_fast.commands import train as train_cli
from udon_fast.commands.data import main as data_main
from udon_fast.commands.embed import main as embed_main
from udon_fast.commands.evaluate import main as evaluate_main
from udon_fast.commands.search import main as search_main
from udon_fast.data import CorruptImageError, InfoFileError, load_domains
from udon_fast.data import verify as verify_module
from udon_fast.data.image_bytes import decode_check, jpeg_header_problem
from udon_fast.data.synthetic import write_tiny_uned
from udon_fast.model import UDONModel, save_checkpoint

TRAIN = [
    "--backbone",
    "vit_tiny_patch16_224",
    "--pretrained",
    "none",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--no-compile",
    "--no-progress",
    "--data-threads",
    "1",
    "--steps",
    "2",
]


def _photo_jpeg(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).resize((side, side)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def junk_in_header() -> bytes:
    """Two junk bytes before the first quantisation table (after APP0): SOI/EOI intact, PIL decodes it."""
    data = _photo_jpeg(96)
    assert data[20:22] == b"\xff\xdb"
    return data[:20] + b"\x00\x17" + data[20:]


def garbage_in_middle() -> bytes:
    """400 random bytes over the middle of the scan data: SOI/EOI intact, the decoder fails."""
    data = bytearray(_photo_jpeg(256))
    middle = len(data) // 2
    data[middle : middle + 400] = np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8).tobytes()
    return bytes(data)


def _one_error_line(output: str, command: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert "Traceback" not in output and len([line for line in lines if "error" in line]) == 1, output[-3000:]
    (line,) = [found for found in lines if found.startswith(f"udon_fast.{command}: error: ")]
    return line


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """A UnED root whose shops test split (150 images, more than one eval batch of 128) holds the junk-header
    JPEG and whose birds val split holds the garbage one; a checkpoint of a small model for its domains."""
    root = tmp_path_factory.mktemp("damaged")
    write_tiny_uned(
        root, {"shops": {"train": 4, "test": 75, "index": 4}, "birds": {"train": 5, "val": 4, "test": 4}}, per_class=2
    )
    header = root / "images" / "shops" / "test" / "c30_0.jpg"
    middle = root / "images" / "birds" / "val" / "c1_0.jpg"
    header.write_bytes(junk_in_header())
    middle.write_bytes(garbage_in_middle())
    domains = load_domains(root)
    torch.manual_seed(0)
    model = UDONModel(
        "vit_tiny_patch16_224",
        {n: d.num_classes for n, d in domains.items()},
        image_size=32,
        backbone_kwargs={"depth": 1},
    )
    checkpoint = save_checkpoint(root / "model.pt", model)
    return root, checkpoint, str(header), str(middle)


def test_both_damages_are_found_by_the_checks(tmp_path):
    header, middle = tmp_path / "header.jpg", tmp_path / "middle.jpg"
    header.write_bytes(junk_in_header())
    middle.write_bytes(garbage_in_middle())
    with Image.open(header) as image:
        image.load()  # PIL alone lets it through to DALI
    assert jpeg_header_problem(junk_in_header()) == "broken JPEG header (no marker at byte 20)"
    assert decode_check(str(header)) == "broken JPEG header (no marker at byte 20)"
    assert jpeg_header_problem(garbage_in_middle()) is None and decode_check(str(middle)) is not None
    with pytest.raises(OSError), Image.open(middle) as image:
        image.load()  # PIL refuses it too
    assert jpeg_header_problem(_photo_jpeg(96)) is None


def test_evaluate_names_the_damaged_file_instead_of_crashing(cli, damaged, tmp_path):
    root, checkpoint, header, _ = damaged
    argv = ["--checkpoint", checkpoint, "--data-root", root, "--out", tmp_path / "eval", "--data-threads", "1"]
    run = cli("evaluate", argv, tmp_path / "evaluate.log")
    assert run.code == 2, run.output[-3000:]
    line = _one_error_line(run.output, "evaluate")
    assert f"{header} (broken JPEG header (no marker at byte 20))" in line and "1 image file(s)" in line


def test_train_names_every_damaged_eval_image_before_any_step(cli, damaged, tmp_path):
    root, _, header, middle = damaged
    out = tmp_path / "run"
    run = cli("train", ["--data-root", root, "--out", out, *TRAIN], tmp_path / "train.log")
    assert run.code == 2, run.output[-3000:]
    line = _one_error_line(run.output, "train")
    assert "2 image file(s) in the test/val splits cannot be decoded" in line and header in line and middle in line
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints" / "last.pt").exists()


def test_embed_names_all_damaged_images_and_search_the_damaged_query(cli, damaged, tmp_path):
    _, checkpoint, header, middle = damaged
    folder = tmp_path / "images"
    folder.mkdir()
    for name, source in (("a.jpg", header), ("b.jpg", middle)):
        shutil.copy(source, folder / name)
    for k in range(3):
        Image.fromarray(np.full((40, 40, 3), 60 * k, np.uint8)).save(folder / f"good{k}.jpg")
    argv = ["--checkpoint", checkpoint, "--images", folder, "--out", tmp_path / "e.npy"]
    run = cli("embed", [*argv, "--batch-size", "1"], tmp_path / "embed.log")
    assert run.code == 2, run.output[-3000:]
    line = _one_error_line(run.output, "embed")
    assert "2 image file(s)" in line and str(folder / "a.jpg") in line and str(folder / "b.jpg") in line
    (folder / "a.jpg").unlink()
    (folder / "b.jpg").unlink()
    assert cli("embed", argv, tmp_path / "embed2.log").code == 0
    run = cli("search", ["--embeddings", tmp_path / "e.npy", "--query", header], tmp_path / "search.log")
    assert run.code == 2 and header in _one_error_line(run.output, "search")


def test_verdicts_are_cached_per_path_size_and_mtime(tmp_path, monkeypatch):
    paths = []
    for k in range(3):
        path = tmp_path / f"{k}.jpg"
        Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)).save(path)
        paths.append(str(path))
    decoded = []
    monkeypatch.setattr(verify_module, "decode_check", lambda p: decoded.append(p) or decode_check(p))
    assert verify_module.find_undecodable(paths, workers=2) == {}
    assert verify_module.find_undecodable(paths, workers=2) == {}
    assert sorted(decoded) == sorted(paths)
    os.utime(paths[0], ns=(1, 1))  # same size, other mtime: checked again
    assert verify_module.find_undecodable(paths, workers=2) == {} and decoded[3:] == [paths[0]]
    (tmp_path / "1.jpg").write_bytes(junk_in_header())
    with pytest.raises(CorruptImageError, match=r"1 image file\(s\) cannot be decoded: .*1\.jpg \(broken JPEG"):
        verify_module.check_decodable(paths)
    assert decoded[4:] == [paths[1]]


def test_empty_eval_split_is_refused_when_loading(tmp_path, capsys):
    root = write_tiny_uned(tmp_path, {"a": {"train": 3, "val": 2, "test": 3}})
    val = root / "info_files" / "a" / "val.json"
    val.write_text("[]")
    with pytest.raises(InfoFileError, match=f"{val}: the val split is empty"):
        load_domains(root)
    assert train_cli.main(["--data-root", str(root), "--out", str(tmp_path / "run"), *TRAIN]) == 2
    assert f"{val}: the val split is empty" in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    "splits,problem",
    [
        ({"train": 3, "test": 2}, "test.json: 4 image(s); a per-domain kNN index with k = 5 needs at least 6"),
        (
            {"train": 3, "test": 4, "index": 2},
            "index.json: 4 image(s); a per-domain kNN index with k = 5 needs at least 5",
        ),
        ({"train": 3, "val": 4}, "domain 'a' has no test split"),
    ],
)
def test_split_that_cannot_be_evaluated_is_named_before_training(tmp_path, capsys, splits, problem):
    root = write_tiny_uned(tmp_path, {"a": splits, "b": {"train": 2, "test": 3}})
    assert train_cli.main(["--data-root", str(root), "--out", str(tmp_path / "run"), *TRAIN]) == 2
    err = capsys.readouterr().err
    assert err.startswith("udon_fast.train: error: cannot evaluate the test split: ") and problem in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_verify_lists_every_missing_and_undecodable_file(tmp_path, capsys):
    root = write_tiny_uned(tmp_path, {"a": {"train": 20, "test": 6}, "b": {"train": 15, "val": 4}}, per_class=2)
    images = root / "images"
    missing = [images / "a" / "train" / f"c{c}_0.jpg" for c in range(7)]
    for path in missing:
        path.unlink()
    broken = sorted(
        [images / "a" / "train" / f"c{c}_1.jpg" for c in range(20)]
        + [images / "b" / "train" / f"c{c}_0.jpg" for c in range(15)]
    )
    for path in broken:
        path.write_bytes(path.read_bytes()[:60])
    (images / "b" / "val" / "c2_1.jpg").write_bytes(junk_in_header())
    assert data_main(["verify", "--data-root", str(root), "--data-threads", "2"]) == 1
    captured = capsys.readouterr()
    assert "udon_fast.data: error: 7 image file(s) listed are missing" in captured.err
    lines = captured.out.splitlines()
    assert sorted(line.split()[1] for line in lines if line.startswith("MISSING ")) == sorted(map(str, missing))
    bad = sorted(line.split()[1].rstrip(":") for line in lines if line.startswith("BAD "))
    assert bad == sorted(map(str, broken + [images / "b" / "val" / "c2_1.jpg"]))
    assert "90 images listed, 43 bad file(s): 7 missing, 36 undecodable" in captured.out

    report = tmp_path / "report.json"
    assert data_main(["verify", "--data-root", str(root), "--json", "--report", str(report)]) == 1
    assert f"report written to {report}" in capsys.readouterr().out
    doc = json.loads(report.read_text())
    assert len(doc["missing"]) == 7 and len(doc["undecodable"]) == 36 and doc["exit_code"] == 1
    assert {e["path"]: e["listed_in"] for e in doc["undecodable"]}[str(images / "b" / "val" / "c2_1.jpg")] == ["b/val"]

    for path in missing:
        shutil.copy(images / "a" / "test" / "c0_0.jpg", path)
    assert data_main(["verify", "--data-root", str(root), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert not doc["missing"] and len(doc["undecodable"]) == 36 and not any(e["warning"] for e in doc["undecodable"])
    assert data_main(["verify", "--data-root", str(root), "--on-bad", "warn"]) == 1  # an eval image still fails
    out = capsys.readouterr().out
    assert out.count("\nWARN ") == 35 and out.count("\nBAD ") == 1 and "skipped by training" in out
    (images / "b" / "val" / "c2_1.jpg").write_bytes((images / "b" / "val" / "c2_0.jpg").read_bytes())
    assert data_main(["verify", "--data-root", str(root), "--on-bad", "warn"]) == 0
    assert data_main(["verify", "--data-root", str(root), "--on-bad", "fail"]) == 1
    capsys.readouterr()


@pytest.mark.parametrize(
    "main,argv,message",
    [
        (
            evaluate_main,
            ["--checkpoint", "x.pt", "--out", "o", "--batch-size", "0"],
            "--batch-size must be >= 1, got 0",
        ),
        (
            evaluate_main,
            ["--checkpoint", "x.pt", "--out", "o", "--data-threads", "-2"],
            "--data-threads must be >= 1, got -2",
        ),
        (
            embed_main,
            ["--checkpoint", "x.pt", "--images", "i", "--out", "o.npy", "--batch-size", "0"],
            "--batch-size must be >= 1, got 0",
        ),
        (
            embed_main,
            ["--checkpoint", "x.pt", "--images", "i", "--out", "o.npy", "--data-threads", "0"],
            "--data-threads must be >= 1, got 0",
        ),
        (search_main, ["--embeddings", "e.npy", "--query", "q.jpg", "--top", "0"], "--top must be >= 1, got 0"),
        (data_main, ["verify", "--data-root", "r", "--data-threads", "0"], "--data-threads must be >= 1, got 0"),
        (train_cli.main, ["--eval-batch-size", "0"], "--eval-batch-size must be >= 1, got 0"),
        (train_cli.main, ["--data-threads", "0"], "--data-threads must be >= 1, got 0"),
    ],
)
def test_non_positive_sizes_and_threads_get_one_line(main, argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_malformed_inputs_of_search_and_evaluate_are_named(tmp_path, damaged, capsys):
    _, checkpoint, _, _ = damaged
    not_a_checkpoint = tmp_path / "results.json"
    not_a_checkpoint.write_text('{"final": {}}')
    assert evaluate_main(["--checkpoint", str(not_a_checkpoint), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"udon_fast.evaluate: error: {not_a_checkpoint} is not a udon_fast checkpoint (not a file written "
        f"by torch.save; checkpoints are the .pt files in a run's checkpoints/ folder)\n"
    )
    embeddings, meta = tmp_path / "e.npy", tmp_path / "e.meta.json"
    np.save(embeddings, np.eye(3, dtype=np.float32))
    meta.write_text('{"checkpoint": "m.pt", "paths": ["a.jpg", "b.jpg", "c.jpg"')
    query = tmp_path / "q.jpg"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(query)
    cases = [
        (lambda: None, f"{meta}: malformed JSON"),
        (
            lambda: meta.write_text('{"checkpoint": 3, "paths": ["a.jpg", "b.jpg", "c.jpg"]}'),
            f'{meta}: expected {{"paths": [image paths]',
        ),
        (lambda: embeddings.write_text("a,b,c\n1,2,3\n"), f"--embeddings {embeddings} is not a .npy array"),
    ]
    for damage, message in cases:
        damage()
        assert search_main(["--embeddings", str(embeddings), "--query", str(query)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"udon_fast.search: error: {message}") and err.count("\n") == 1, err


@pytest.mark.parametrize(
    "backbone,size,message",
    [
        (
            "tf_efficientnet_lite0",
            7,
            "image size 7 is too small for backbone 'tf_efficientnet_lite0': its total stride "
            "is 32, so use at least 32",
        ),
        ("tf_efficientnet_lite0", 1, "image size 1 is too small for backbone 'tf_efficientnet_lite0'"),
        (
            "vit_tiny_patch16_224",
            40,
            "image size 40 does not suit backbone 'vit_tiny_patch16_224': it cuts images into "
            "16 px patches, so use a multiple of 16 (e.g. 32 or 48)",
        ),
        ("vit_tiny_patch16_224", 8, "image size 8 does not suit backbone 'vit_tiny_patch16_224'"),
    ],
)
def test_image_sizes_the_backbone_cannot_use_are_refused(backbone, size, message, tmp_path, capsys):
    root = write_tiny_uned(tmp_path, {"a": {"train": 3, "test": 3}})
    argv = [
        "--data-root",
        str(root),
        "--out",
        str(tmp_path / "run"),
        *TRAIN,
        "--backbone",
        backbone,
        "--image-size",
        str(size),
    ]
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"udon_fast.train: error: {message}") and err.count("\n") == 1


def test_resume_needs_an_existing_out(tmp_path, capsys):
    missing = tmp_path / "never_ran"
    assert train_cli.main(["--out", str(missing), "--resume", *TRAIN]) == 2
    assert capsys.readouterr().err == (
        f"udon_fast.train: error: --resume: --out {missing} does not exist, so there "
        f"is no run to continue (drop --resume to start a new run there)\n"
    )
    assert not missing.exists()
