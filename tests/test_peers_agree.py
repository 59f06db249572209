"""Every implementation of bench/peers.py (ours and the peers) against udon_fast's reference on small shapes:
the loss and both gradients in fp32, for every margin the implementation computes.  It catches a peer
configured wrongly in the benchmark (pml's ArcFace margin in degrees, its scale and its (D, C) weight)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import peers  # noqa: E402
from udon_fast.losses import backends  # noqa: E402

pytest.importorskip("pytorch_metric_learning", reason="pytorch-metric-learning is the [test] extra's peer")

MARGINS = {"normface": 0.0, "cosface": 0.35, "arcface": 0.5}
CASES = [
    (name, margin_type)
    for name in peers.IMPLEMENTATIONS
    for margin_type in MARGINS
    if peers.supports(name, margin_type)
    and name != "reference"
    and not (name == "reference_compiled" and margin_type != "normface")
]  # one inductor compile


def _results(name, problem):
    run = peers.build(name, problem)
    loss = run.step()
    return loss, [g.detach().clone() for g in run.grads()]


@pytest.mark.parametrize("batch,classes,dim", [(1, 7, 33), (37, 1001, 256)])
@pytest.mark.parametrize("name,margin_type", CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_peer_matches_reference(name, margin_type, batch, classes, dim):
    if name == "native" and not backends.status()["native"][0]:
        pytest.skip("native library not built")
    problem = peers.make_problem(batch, classes, dim, margin_type, MARGINS[margin_type])
    ref_loss, ref_grads = _results("reference", problem)
    loss, grads = _results(name, problem)
    diff = peers.differences(loss, grads, ref_loss, ref_grads)
    assert diff["loss"] <= 1e-5 * max(1.0, float(ref_loss.abs())), diff
    assert diff["d_x"] <= 2e-4 and diff["d_weight"] <= 2e-4, diff


def test_a_wrong_peer_configuration_is_caught():
    """pml's ArcFace given the margin in radians (its argument is in degrees) disagrees."""
    from pytorch_metric_learning import losses

    problem = peers.make_problem(16, 50, 32, "arcface", 0.5)
    ref_loss, _ = _results("reference", problem)
    wrong = losses.ArcFaceLoss(50, 32, margin=0.5, scale=problem.scale)
    with torch.no_grad():
        wrong.W.copy_(problem.weight.t())
    assert float((wrong(problem.x, problem.labels).detach() - ref_loss).abs()) > 1e-2
