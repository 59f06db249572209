"""`import udon_fast` is light: no Triton, no native library, no custom ops, no optional package; the
backends are decided on first use, also when that first use is inside a torch.compile trace."""

import subprocess
import sys

import torch

from udon_fast.losses import backends

LIGHT = """
import sys, torch
with_torch = set(sys.modules)  # what torch itself imports is not udon_fast's doing
import udon_fast
heavy = ["triton", "torch._dynamo", "faiss", "timm", "torchvision", "nvidia.dali", "PIL", "matplotlib", "skimage",
         "yaml", "tqdm", "jinja2", "onnx", "onnxruntime", "fastapi", "uvicorn", "tensorboard"]
loaded = [name for name in heavy if name in sys.modules and name not in with_torch]
assert not loaded, f"import udon_fast loaded {loaded}"
native = sys.modules.get("udon_fast.native_library")
assert native is None or native.load.cache_info().currsize == 0, "the native library was loaded"
assert not hasattr(torch.ops.udon_fast_native, "build_info"), "the native library was loaded"
registered = [op for op in ("chunked", "native", "triton") if hasattr(torch.ops.udon_fast, f"head_loss_{op}")]
assert not registered, f"import udon_fast registered ops {registered}"
print("light")
"""

# The first use of the losses is inside a fullgraph trace: the backend check, the native library load and
# the op registration must run eagerly there, and the traced step must be one graph with the op in it.
FIRST_USE_COMPILED = """
import torch, torch.nn.functional as F
import udon_fast
from udon_fast.losses import backends

def loss(e_s, e_t, w_s, w_t, labels):
    return udon_fast.udon_loss(e_s, e_t, w_s, w_t, labels, margin_type="arcface", margin=0.2).total

g = torch.Generator().manual_seed(0)
args = [F.normalize(torch.randn(5, 7, generator=g), dim=1), F.normalize(torch.randn(5, 9, generator=g), dim=1),
        torch.randn(13, 7, generator=g), torch.randn(13, 9, generator=g), torch.randint(0, 13, (5,), generator=g)]
explanation = torch._dynamo.explain(loss)(*args)
assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
assert backends.auto_backend("cpu") == ("native" if backends.backend_status("native")[0] else "chunked")
leaves = [a.clone().requires_grad_() for a in args[:4]]
total = torch.compile(loss, fullgraph=True, backend="aot_eager")(*leaves, args[4])
total.backward()
eager = [a.clone().requires_grad_() for a in args[:4]]
expected = udon_fast.udon_loss(*eager, args[4], margin_type="arcface", margin=0.2, backend="reference").total
expected.backward()
torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-5)
for got, want in zip(leaves, eager):
    torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-5)
print("compiled")
"""


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_import_loads_no_triton_native_library_ops_or_extras():
    assert "light" in _run(LIGHT)


def test_first_use_inside_a_compiled_function_is_one_graph_and_matches_the_reference():
    assert "compiled" in _run(FIRST_USE_COMPILED)


def test_the_compile_mark_is_what_torch_compiler_sets():
    """backends marks its lazy checks as `torch.compiler.assume_constant_result` would, without importing
    torch._dynamo; if torch changes how that decorator marks a function, this fails."""

    def plain():
        return 0

    def ours():
        return 0

    torch.compiler.assume_constant_result(plain)
    backends._constant_under_compile(ours)
    assert vars(plain) == vars(ours) == {"_dynamo_marked_constant": True}
    for function in (backends.backend_status, backends.auto_backend, backends._register):
        assert vars(function) == vars(plain), function.__name__


def test_status_and_auto_agree_after_lazy_checks():
    table = backends.status()
    assert set(table) == {"reference", "chunked", "triton", "native"}
    assert table["reference"][0] and table["chunked"][0]
    expected_cpu = "native" if table["native"][0] else "chunked"
    assert backends.auto_backend("cpu") == expected_cpu
    assert backends.resolve("auto", torch.device("cpu")) == expected_cpu
