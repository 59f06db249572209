"""udon_fast.CosineClassifier: the trainer's initialisation, the loss of normalized_softmax_ce (all margins,
Partial FC, options passed through), logits and a tiled top-k equal to logits' own, the state_dict with its
slice, and the README's "replace your ArcFace head" example as written."""

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from distributed_helpers import run_ranks
from loss_cases import MARGINS, fused_backends

import udon_fast
from udon_fast.model.heads import lecun_uniform_classifier


def test_initialised_as_the_trainer_initialises_classifiers():
    torch.manual_seed(3)
    head = udon_fast.CosineClassifier(101, 24)
    torch.manual_seed(3)
    assert torch.equal(head.weight, lecun_uniform_classifier(101, 24))
    assert head.weight.dtype == torch.float32 and head.weight.requires_grad


@pytest.mark.parametrize("backend", ["reference", *fused_backends()])
@pytest.mark.parametrize("margin_type,options", MARGINS)
def test_forward_is_normalized_softmax_ce_of_the_normalised_embeddings(backend, margin_type, options):
    head = udon_fast.CosineClassifier(37, 9, margin_type=margin_type, scale=30.0, **options)
    emb = torch.randn(6, 9, requires_grad=True)
    labels = torch.randint(0, 37, (6,))
    loss = head(emb, labels, backend=backend)
    loss.backward()
    got = emb.grad.clone(), head.weight.grad.clone()
    emb.grad = head.weight.grad = None
    want = udon_fast.normalized_softmax_ce(
        F.normalize(emb, dim=-1),
        head.weight,
        labels,
        margin_type=margin_type,
        scale=30.0,
        backend="reference",
        **options,
    )
    want.backward()
    torch.testing.assert_close(loss, want, rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(got[0], emb.grad, rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(got[1], head.weight.grad, rtol=2e-4, atol=2e-5)


def test_partial_fc_trains_the_sampled_rows_only():
    head = udon_fast.CosineClassifier(500, 16, margin_type="arcface", margin=0.5, scale=32.0, sample_rate=0.05)
    optimizer = torch.optim.AdamW(head.parameters(), lr=0.01, weight_decay=0.1, fused=True)
    before = head.weight.detach().clone()
    labels, emb = torch.tensor([7, 7, 300, 499]), torch.randn(4, 16)
    loss = head(emb, labels)
    loss.backward()
    assert head.weight.grad is None and head.sampled.rows.grad.shape == (25, 16)
    index = head.sampled.index
    want = udon_fast.normalized_softmax_ce(
        F.normalize(emb, dim=-1),
        before[index],
        torch.searchsorted(index, labels),
        margin_type="arcface",
        margin=0.5,
        scale=32.0,
        backend="reference",
    )
    torch.testing.assert_close(loss, want)
    optimizer.step()
    head.step_sampled(optimizer)
    changed = (head.weight != before).any(dim=1)
    assert torch.equal(changed.nonzero()[:, 0], index) and changed[[7, 300, 499]].all()


def test_partial_fc_passes_the_options_on_the_sampled_classes():
    """ignore_index rows stay ignored, class_weight is taken at the sampled classes, label_smoothing and
    reduction apply over the sample: F.cross_entropy on the sampled rows' margin logits."""
    head = udon_fast.CosineClassifier(200, 8, margin_type="cosface", margin=0.3, scale=20.0, sample_rate=0.1)
    emb, labels = torch.randn(5, 8), torch.tensor([4, -100, 150, 4, 199])
    class_weight = torch.rand(200) + 0.5
    loss = head(emb, labels, ignore_index=-100, class_weight=class_weight, label_smoothing=0.1, reduction="none")
    index = head.sampled.index
    assert index.shape == (20,) and torch.isin(torch.tensor([4, 150, 199]), index).all()
    logits = 20.0 * F.normalize(emb, dim=-1) @ F.normalize(head.weight.detach()[index], dim=-1).T
    target = torch.searchsorted(index, labels.clamp_min(0))
    logits[torch.arange(5), target] -= 20.0 * 0.3
    want = F.cross_entropy(
        logits,
        torch.where(labels == -100, -100, target),
        weight=class_weight[index],
        ignore_index=-100,
        label_smoothing=0.1,
        reduction="none",
    )
    torch.testing.assert_close(loss, want, rtol=2e-4, atol=2e-5)


def test_partial_fc_off_in_eval_mode_and_at_rate_1():
    head = udon_fast.CosineClassifier(50, 8, sample_rate=0.1).eval()
    emb, labels = torch.randn(3, 8), torch.tensor([1, 2, 3])
    assert torch.equal(
        head(emb, labels), udon_fast.normalized_softmax_ce(F.normalize(emb, dim=-1), head.weight, labels)
    )
    assert head.sampled is None


def test_logits_and_topk():
    head = udon_fast.CosineClassifier(1003, 12, scale=10.0)
    emb = torch.randn(5, 12) * 3
    logits = head.logits(emb)
    assert logits.shape == (5, 1003)
    torch.testing.assert_close(logits, 10.0 * F.normalize(emb, dim=-1) @ F.normalize(head.weight, dim=-1).T)
    classes = torch.tensor([1002, 0, 17])
    torch.testing.assert_close(head.logits(emb, classes), logits[:, classes])
    for k, tile in [(1, 100), (7, 97), (7, 1003), (40, 3), (1003, 256)]:
        values, indices = head.topk(emb, k, tile=tile)
        want_values, want_indices = logits.topk(k)
        assert torch.equal(indices, want_indices), (k, tile)
        torch.testing.assert_close(values, want_values)
    with pytest.raises(ValueError, match="k must be an int in \\[1, 1003\\]"):
        head.topk(emb, 0)
    with pytest.raises(ValueError, match="classes must lie in \\[0, 1003\\)"):
        head.logits(emb, torch.tensor([1003]))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="sample_rate must be in \\(0, 1\\]"):
        udon_fast.CosineClassifier(10, 4, sample_rate=0.0)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        udon_fast.CosineClassifier(0, 4)
    with pytest.raises(ValueError, match="margin"):
        udon_fast.CosineClassifier(10, 4, margin_type="arcface", margin=2.0)


def test_state_dict_round_trips():
    head = udon_fast.CosineClassifier(20, 4, margin_type="combined", margins=(1.0, 0.3, 0.2))
    other = udon_fast.CosineClassifier(20, 4, margin_type="combined", margins=(1.0, 0.3, 0.2))
    other.load_state_dict(head.state_dict())
    assert torch.equal(other.weight, head.weight)
    assert torch.equal(head.state_dict()["layout"], torch.tensor([20, 0, 1, 0, 20]))


def _sharded(rank, world):
    """Each rank: its slice's rows, its state_dict loaded into a fresh module of the same slice, and the
    error of loading the other rank's state (same shapes: C = 8 over 2 ranks)."""
    torch.manual_seed(0)
    shard = udon_fast.ClassShard(rank * 4, 8)
    head = udon_fast.CosineClassifier(8, 3, class_shard=shard)
    emb, labels = torch.randn(2, 3), torch.tensor([rank, 7 - rank])
    loss = head(emb, labels)
    states = [None, None]
    torch.distributed.all_gather_object(states, head.state_dict())
    fresh = udon_fast.CosineClassifier(8, 3, class_shard=shard)
    fresh.load_state_dict(states[rank])
    try:
        fresh.load_state_dict(states[1 - rank])
        error = None
    except ValueError as exc:
        error = str(exc)
    return head.weight.detach(), torch.equal(fresh.weight, head.weight), error, float(loss), head.topk(emb, 2)[1]


def test_sharded_slices_state_and_loss():
    results = run_ranks(_sharded, 2)
    torch.manual_seed(0)
    whole = lecun_uniform_classifier(8, 3)
    assert torch.equal(torch.cat([r[0] for r in results]), whole)
    assert all(r[1] for r in results)
    assert "do not match this module's slice" in results[0][2] and "do not match" in results[1][2]
    assert results[0][3] == pytest.approx(results[1][3])  # the loss over both ranks' rows, on each rank
    assert ((results[1][4] >= 4) & (results[1][4] < 8)).all() and (results[0][4] < 4).all()  # global ids


def test_readme_example_runs_as_written():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"### Replace your ArcFace head\n.*?```python\n(.*?)```", text, re.S)
    assert block, "README: the 'Replace your ArcFace head' example"
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)
    assert torch.isfinite(namespace["loss"])
