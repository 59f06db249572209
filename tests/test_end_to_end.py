"""The README's end-to-end path on a tiny folder dataset of real photos, with the default backbone
(EfficientNet-Lite0, packaged ImageNet weights) at 32 px: folders -> train -> baseline comparison
-> index -> search -> export.  Every step is the CLI's `main` with the README's arguments."""

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image

import udon_fast
from udon_fast.commands import embed, evaluate, export, index, search, train
from udon_fast.data import EvalLoader, Split

PHOTOS = [
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
]
FAST = [
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--epochs",
    "1",
    "--frozen-epochs",
    "0",
    "--eval-batch-size",
    "16",
    "--no-compile",
    "--no-progress",
    "--data-threads",
    "1",
    "--update-every",
    "2",
]


def write_photo_folders(root: Path, per_class: int = 4) -> Path:
    """root/<photo>/<k>.jpg: `per_class` random 60% crops (48 px) of each scikit-image photo: one class each."""
    import skimage.data

    rng = np.random.default_rng(0)
    for name in PHOTOS:
        photo = getattr(skimage.data, name)()
        h, w = photo.shape[:2]
        ch, cw = int(0.6 * h), int(0.6 * w)
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            y, x = rng.integers(0, h - ch), rng.integers(0, w - cw)
            crop = Image.fromarray(photo[y : y + ch, x : x + cw]).resize((48, 48), Image.BILINEAR)
            crop.save(root / name / f"{k}.jpg", quality=90)
    return root


def approx(results: dict) -> dict:
    return {
        e: {i: {d: pytest.approx(m, abs=1e-6) for d, m in leaf.items()} for i, leaf in by_index.items()}
        for e, by_index in results.items()
    }


def test_folders_train_baseline_index_search_export(tmp_path, monkeypatch, capsys):
    photos = write_photo_folders(tmp_path / "photos")
    run = tmp_path / "run"
    monkeypatch.setattr(
        "udon_fast.data.builtin.ensure_builtin",
        lambda: pytest.fail("--folder alone must not load the built-in dataset"),
    )

    # 1. train on the folder (default backbone, packaged weights); split seed 5, recorded
    assert train.main(["--folder", f"photos={photos}", "--out", str(run), "--split-seed", "5", *FAST]) == 0
    config = json.loads((run / "config.json").read_text())
    split = config["folder_splits"]["photos"]
    assert split["seed"] == 5 and len(split["test"]) == 2 and len(split["val"]) == 2 and len(split["train"]) == 4
    results = json.loads((run / "results.json").read_text())
    assert set(results) == {"baseline", "initial", "final", "validation"} and set(results["baseline"]) == {"student"}
    assert "| domain | baseline P@1 | initial P@1 | final P@1 |" in (run / "results.md").read_text()
    best = run / "checkpoints" / "best.pt"
    capsys.readouterr()

    # 2. evaluate the checkpoint: the recorded split is reused (the default --split-seed 0 would differ)
    assert (
        evaluate.main(["--checkpoint", str(best), "--folder", f"photos={photos}", "--out", str(tmp_path / "ev")]) == 0
    )
    assert json.loads((tmp_path / "ev" / "results.json").read_text()) == approx(results["final"])

    # 3. the off-the-shelf baseline, standalone, equals the trainer's
    assert (
        evaluate.main(
            [
                "--backbone",
                "tf_efficientnet_lite0",
                "--pretrained",
                "packaged",
                "--image-size",
                "32",
                "--folder",
                f"photos={photos}",
                "--split-seed",
                "5",
                "--out",
                str(tmp_path / "base"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "base" / "results.json").read_text()) == approx(results["baseline"])

    # 4. index the gallery, search it with a folder of queries
    gallery = tmp_path / "gallery.npy"
    assert embed.main(["--checkpoint", str(best), "--images", str(photos), "--out", str(gallery)]) == 0
    assert (
        index.main(["build", "--embeddings", str(gallery), "--out", str(tmp_path / "gallery.faiss"), "--kind", "hnsw"])
        == 0
    )
    capsys.readouterr()
    queries = photos / "coffee"
    assert (
        search.main(
            [
                "--index",
                str(tmp_path / "gallery.faiss"),
                "--query",
                str(queries),
                "--checkpoint",
                str(best),
                "--top",
                "3",
                "--json",
                str(tmp_path / "hits.json"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out.splitlines()
    hits = json.loads((tmp_path / "hits.json").read_text())["results"]
    assert [h["query"] for h in hits] == sorted(str(p) for p in queries.iterdir())
    for hit in hits:  # every query is in the gallery: it finds itself first
        assert len(hit["neighbours"]) == 3 and hit["neighbours"][0]["path"] == hit["query"]
        assert hit["neighbours"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert printed[0] == f"query: {hits[0]['query']}" and printed[1].split()[-1] == hits[0]["query"]

    # 5. export to ONNX; onnxruntime on real preprocessed photos equals load_embedder to 1e-4
    model_file = tmp_path / "embedder.onnx"
    assert export.main(["--checkpoint", str(best), "--format", "onnx", "--out", str(model_file)]) == 0
    embedder = udon_fast.load_embedder(best)
    images = sorted(str(p) for p in photos.rglob("*.jpg"))
    loader = EvalLoader(
        Split(images, np.zeros(len(images), np.int64)),
        batch_size=len(images),
        image_size=32,
        mean=embedder.preprocessing.mean,
        std=embedder.preprocessing.std,
        num_threads=1,
    )
    batch = next(iter(loader))[0]
    with torch.no_grad():
        expected = embedder(batch)
    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": batch.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(got, np.load(gallery), rtol=0, atol=1e-4)  # the gallery's rows, same order
