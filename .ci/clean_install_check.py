"""Run by .ci/run inside a fresh venv holding only `udon_fast` and its core dependencies: the package
imports without any extra, `udon_loss` runs on CPU with the native backend and matches the reference,
the kNN metrics run on faiss-cpu, and a train-only module names its extra."""

import sys

import torch
import torch.nn.functional as F

import udon_fast
from udon_fast.extras import MissingExtraError
from udon_fast.losses import backends

assert "site-packages" in udon_fast.__file__, f"udon_fast imported from {udon_fast.__file__}, not the installed wheel"
ok, reason = backends.backend_status("native")
assert ok and backends.auto_backend("cpu") == "native", f"native backend unavailable: {reason}"

g = torch.Generator().manual_seed(0)
student, teacher = (
    F.normalize(torch.randn(6, 8, generator=g), dim=1),
    F.normalize(torch.randn(6, 16, generator=g), dim=1),
)
inputs = [student, teacher, torch.randn(11, 8, generator=g), torch.randn(11, 16, generator=g)]
labels = torch.randint(0, 11, (6,), generator=g)
leaves = [t.clone().requires_grad_() for t in inputs]
out = udon_fast.udon_loss(*leaves, labels, margin_type="arcface", margin=0.2)
out.total.backward()
ref_leaves = [t.clone().requires_grad_() for t in inputs]
ref = udon_fast.udon_loss(*ref_leaves, labels, margin_type="arcface", margin=0.2, backend="reference")
ref.total.backward()
torch.testing.assert_close(out.total, ref.total, rtol=1e-5, atol=1e-5)
for got, want in zip(leaves, ref_leaves):
    torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-5)

embeddings = F.normalize(torch.randn(40, 8, generator=g), dim=1)
classes = torch.arange(40) % 5
metrics = udon_fast.knn_metrics(embeddings, classes, embeddings, classes, k=3, query_is_index=True)
assert metrics["num_queries"] == 40, metrics

try:
    import udon_fast.model  # noqa: F401
except MissingExtraError as exc:
    assert "[train]" in str(exc), exc
else:
    raise AssertionError("udon_fast.model imported without the [train] extra")
print(
    f"clean install: udon_fast {udon_fast.__version__}, torch {torch.__version__}, {reason}; "
    f"udon_loss {out.total.item():.6f} = reference; knn_metrics P@1 {metrics['p_at_1']:.3f}",
    file=sys.stderr,
)
