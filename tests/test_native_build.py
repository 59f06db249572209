"""The native library is built, loads, registers its ops and is what backend="auto" picks on CPU."""

import pytest
import torch

from udon_fast import native_library
from udon_fast.losses import backends


def test_library_is_built_and_loads():
    path = native_library.library_path()
    assert path is not None, "udon_fast/_native*.so missing: reinstall with `pip install --no-build-isolation -e .`"
    assert native_library.load() == path


def test_ops_are_registered():
    native_library.load()
    ops = torch.ops.udon_fast_native
    for name in ("build_info", "head_forward", "head_backward", "set_tile_classes", "head_kernel_info"):
        assert hasattr(ops, name), name
    assert "torch" in ops.build_info()
    assert "head loss epilogue" in ops.head_kernel_info()
    assert torch._C._dispatch_has_kernel_for_dispatch_key("udon_fast_native::head_forward", "CPU")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("udon_fast_native::head_backward", "CPU")


def test_native_backend_is_available_and_auto_on_cpu():
    ok, reason = backends.status()["native"]
    assert ok, reason
    assert backends.auto_backend("cpu") == "native"


def test_missing_library_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(native_library, "library_path", lambda: None)
    with pytest.raises(RuntimeError, match="native library is not built"):
        native_library.load.__wrapped__()


def test_op_rejects_bad_arguments():
    native_library.load()
    e, w = torch.randn(3, 8), torch.randn(5, 8)
    z_y = torch.zeros(3, 1)
    with pytest.raises(RuntimeError, match="label"):
        torch.ops.udon_fast_native.head_forward(e, w, None, None, torch.tensor([0, 1, 5]), z_y, z_y, 16.0, 0.1, 0.1)
    with pytest.raises(RuntimeError, match="disagree"):
        torch.ops.udon_fast_native.head_forward(
            e, w[:, :4], None, None, torch.tensor([0, 1, 2]), z_y, z_y, 16.0, 0.1, 0.1
        )
    with pytest.raises(RuntimeError, match=r"z_y and dz_y must be \(B, 1\) float32"):
        torch.ops.udon_fast_native.head_forward(
            e, w, None, None, torch.tensor([0, 1, 2]), z_y[:, 0], z_y, 16.0, 0.1, 0.1
        )
