"""`udon_fast.load_embedder` and `python -m udon_fast.export`: the default EfficientNet-Lite0 (packaged
ImageNet weights, BatchNorm) and a ViT, ONNX through onnxruntime and TorchScript through torch.jit.load.
(EfficientNet-Lite0 to ONNX runs in tests/test_end_to_end.py, on a trained checkpoint and real photos.)"""

import json
import warnings

import onnx
import onnxruntime
import pytest
import torch

import udon_fast
from udon_fast.commands import export
from udon_fast.model import CheckpointError, UDONModel, load_model, save_checkpoint
from udon_fast.model.checkpoint import read_checkpoint
from udon_fast.model.packaged import packaged_weights

SIZE = 32


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    lite0 = UDONModel(
        "tf_efficientnet_lite0",
        {"cars": 5, "birds": 3},
        image_size=SIZE,
        pretrained=packaged_weights("tf_efficientnet_lite0"),
    )
    vit = UDONModel("vit_tiny_patch16_224", {"cars": 5}, image_size=SIZE, backbone_kwargs={"depth": 2})
    for model in (lite0, vit):  # trained-looking weights: BatchNorm statistics and projections off their init
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                if name.endswith(("running_mean", "student_projection.0.bias")):
                    tensor.add_(0.1 * torch.randn_like(tensor))
    return {
        "lite0": (lite0.eval(), save_checkpoint(root / "lite0.pt", lite0)),
        "vit": (vit.eval(), save_checkpoint(root / "vit.pt", vit)),
    }


@pytest.mark.parametrize("name", ["lite0", "vit"])
def test_load_embedder_is_the_student_embedding(checkpoints, name):
    model, path = checkpoints[name]
    embedder = udon_fast.load_embedder(path)
    assert not embedder.training
    assert embedder.preprocessing.image_size == SIZE and embedder.dim == 64
    assert embedder.preprocessing.mean == model.mean and embedder.preprocessing.std == model.std
    x = _images(3, 1)
    with torch.no_grad():
        out = embedder(x)
        torch.testing.assert_close(out, model.embed(x), rtol=0, atol=1e-6)
    assert out.dtype == torch.float32 and torch.allclose(out.norm(dim=1), torch.ones(3))


def test_load_embedder_needs_no_classifier_or_teacher(checkpoints, tmp_path):
    """A checkpoint holding only slices of the classifiers (class-parallel) or none at all still embeds."""
    model, path = checkpoints["lite0"]
    saved = read_checkpoint(path)
    saved["model"] = {
        k: v[:1] if "classifiers" in k else v
        for k, v in saved["model"].items()
        if not k.startswith("teacher_projections.")
    }
    sliced = tmp_path / "sliced.pt"
    torch.save(saved, sliced)
    with pytest.raises(CheckpointError):
        load_model(sliced)
    x = _images(2, 2)
    with torch.no_grad():
        torch.testing.assert_close(udon_fast.load_embedder(sliced)(x), model.embed(x), rtol=0, atol=1e-6)


def test_load_embedder_names_a_checkpoint_without_the_student(checkpoints, tmp_path):
    saved = read_checkpoint(checkpoints["vit"][1])
    del saved["model"]["student_projection.0.weight"]
    broken = tmp_path / "broken.pt"
    torch.save(saved, broken)
    with pytest.raises(CheckpointError, match=r"broken\.pt.*missing \['projection\.0\.weight'\]"):
        udon_fast.load_embedder(broken)


def _exported_output(path, fmt, images):
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["images"]
        return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path))
    with torch.no_grad():
        return module(images)


def _stored_preprocessing(path, fmt) -> dict:
    if fmt == "onnx":
        return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["udon_fast.preprocessing"])
    extra = {"preprocessing.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(path), _extra_files=extra)
    return json.loads(extra["preprocessing.json"])


@pytest.mark.parametrize("name, fmt", [("lite0", "torchscript"), ("vit", "onnx"), ("vit", "torchscript")])
def test_export_matches_load_embedder(checkpoints, tmp_path, capsys, name, fmt):
    _, checkpoint = checkpoints[name]
    out = tmp_path / f"embedder.{fmt}"
    assert export.main(["--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out)]) == 0
    assert "max |difference| to PyTorch" in capsys.readouterr().out
    embedder = udon_fast.load_embedder(checkpoint)
    for n, seed in ((1, 3), (5, 4)):  # dynamic batch: neither size is the traced one
        x = _images(n, seed)
        with torch.no_grad():
            expected = embedder(x)
        got = _exported_output(out, fmt, x)
        assert got.shape == (n, 64)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    stored = _stored_preprocessing(out, fmt)
    assert stored["image_size"] == SIZE and stored["mean"] == list(embedder.preprocessing.mean)


def test_export_errors_are_one_line(checkpoints, tmp_path, capsys):
    assert (
        export.main(["--checkpoint", str(tmp_path / "none.pt"), "--format", "onnx", "--out", str(tmp_path / "x.onnx")])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("udon_fast.export: error:") and "none.pt" in err and err.count("\n") == 1
    assert not (tmp_path / "x.onnx").exists()
