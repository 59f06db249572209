"""Data parallelism is the same training: 2 ranks (gloo, CPU) with B/2 each against 1 rank with B.

The trainer's own loop (`loop.Run.train`, default backbone EfficientNet-Lite0 with its packaged
weights and frozen BatchNorm statistics, dynamic sampler, AdamW) runs 4 steps both ways from the
same seed; `start()`/`finish()` (evaluation) are skipped.  Rank r takes every world_size-th sample
of each epoch's permutation, so the two ranks' batches interleave to the 1-rank batch, also across
an epoch boundary (the train splits hold 14 and 18 images: even, so the ranks' shards are equal).

The similarity term is per rank by design (B/2 x B/2 blocks, scaled by n_devices), so it is
weighted 0 here and its reported value is checked against the per-rank formula on the 1-rank
run's embeddings; the other terms are per-row means, and their rank mean is the 1-rank value.
Tolerances (measured differences are ~10x smaller): losses 1e-4 relative, first-step gradients
1e-4 of each tensor's largest entry (fp32: two half-batch sums and one all-reduce against one
sum); embeddings 5e-5 absolute; the similarity value 2e-3 relative (a sum of squared differences
of Gram matrices, ~1e-3 in size: it amplifies the embeddings' differences); parameters after 4
AdamW steps within 5% of each tensor's change (AdamW normalises each element's step, so elements
with a near-zero gradient turn rounding differences into a sizeable part of their step);
BatchNorm running statistics identical.
"""

import json
import os

import pytest
import torch
import torch.multiprocessing as mp
from distributed_helpers import free_port

from udon_fast import distributed
from udon_fast.commands.train import parse_args
from udon_fast.data.synthetic import write_tiny_uned
from udon_fast.losses.similarity import similarity_loss
from udon_fast.trainer import step as step_module
from udon_fast.trainer.loop import Run
from udon_fast.trainer.state import Progress

GLOBAL_BATCH = 8
STEPS = 4


def _config(data_root, out, world_size):
    return parse_args(
        [
            "--data-root",
            str(data_root),
            "--out",
            str(out),
            "--steps",
            str(STEPS),
            "--batch-size",
            str(GLOBAL_BATCH // world_size),
            "--image-size",
            "32",
            "--frozen-epochs",
            "0",
            "--no-similarity",
            "--no-compile",
            "--no-progress",
            "--data-threads",
            "1",
        ]
    )


def _run_steps(config) -> dict:
    """`Run.train` for config.steps steps; returns this rank's batches, loss-input embeddings, the
    first step's (all-reduced) gradients, the initial and final model states and (rank 0) the
    metrics records."""
    run = Run(config)
    seen = {
        "batches": [],
        "embeddings": [],
        "grads": {},
        "initial": {k: v.clone() for k, v in run.model.state_dict().items()},
    }
    next_batch, apply, loss = run.loader.next_batch, run.step_fn.apply, step_module.udon_loss

    def recording_next_batch(domain):
        images, labels = next_batch(domain)
        seen["batches"].append((domain, images.clone(), labels.clone()))
        return images, labels

    def recording_apply(terms):
        if not seen["grads"]:
            seen["grads"] = {n: p.grad.clone() for n, p in run.model.named_parameters() if p.grad is not None}
        apply(terms)

    def recording_loss(student, teacher, *args, **kwargs):
        seen["embeddings"].append((student.detach().clone(), teacher.detach().clone()))
        return loss(student, teacher, *args, **kwargs)

    run.loader.next_batch, run.step_fn.apply = recording_next_batch, recording_apply
    step_module.udon_loss = recording_loss
    try:
        if run.ranks.is_main:
            run.out.mkdir(parents=True)
        distributed.barrier(run.ranks.world_size)
        run.train(Progress())
    finally:
        step_module.udon_loss = loss
        run.loader.close()
    seen["state"] = {k: v.clone() for k, v in run.model.state_dict().items()}
    seen["metrics"] = (
        [json.loads(line) for line in (run.out / "metrics.jsonl").read_text().splitlines()] if run.ranks.is_main else []
    )
    return seen


def _rank_main(rank, port, data_root, out, results):
    """One torchrun-like rank: the environment torchrun sets, then `_run_steps`."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
    )
    torch.set_num_threads(1)
    try:
        torch.save(_run_steps(_config(data_root, out, 2)), results / f"rank{rank}.pt")
    finally:
        distributed.teardown()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    data_root = tmp_path_factory.mktemp("uned")
    write_tiny_uned(data_root, {"shops": {"train": 7, "test": 3}, "birds": {"train": 9, "test": 3}}, per_class=2)
    results = tmp_path_factory.mktemp("results")
    mp.spawn(_rank_main, args=(free_port(), data_root, results / "two", results), nprocs=2, join=True)
    two = [torch.load(results / f"rank{r}.pt", weights_only=False) for r in range(2)]
    one = _run_steps(_config(data_root, results / "one", 1))
    return one, two


def test_ranks_split_each_global_batch(runs):
    one, (rank0, rank1) = runs
    assert len(one["batches"]) == len(rank0["batches"]) == len(rank1["batches"]) == STEPS
    for (domain, images, labels), (d0, i0, l0), (d1, i1, l1) in zip(one["batches"], rank0["batches"], rank1["batches"]):
        assert domain == d0 == d1
        assert len(labels) == GLOBAL_BATCH and len(l0) == len(l1) == GLOBAL_BATCH // 2
        assert torch.equal(labels[0::2], l0) and torch.equal(labels[1::2], l1)
        assert torch.equal(images[0::2], i0) and torch.equal(images[1::2], i1)
    assert len({d for d, _, _ in one["batches"]}) == 2, "both domains must be trained"


def test_losses_and_embeddings_match_and_similarity_is_per_rank(runs):
    one, (rank0, rank1) = runs
    assert [r["domain"] for r in one["metrics"]] == [r["domain"] for r in rank0["metrics"]]
    for step, (single, double) in enumerate(zip(one["metrics"], rank0["metrics"])):
        for term in ("total", "teacher_ce", "student_ce", "kl"):
            assert double[term] == pytest.approx(single[term], rel=1e-4), (step, term)
        student, teacher = one["embeddings"][step]
        for r, rank in enumerate((rank0, rank1)):
            for got, want in zip(rank["embeddings"][step], (student[r::2], teacher[r::2])):
                torch.testing.assert_close(got, want, rtol=0, atol=5e-5, msg=lambda m: f"step {step} rank {r}: {m}")
        per_rank = [similarity_loss(student[r::2], teacher[r::2], n_devices=2) for r in range(2)]
        assert double["similarity"] == pytest.approx(float(sum(per_rank)) / 2, rel=2e-3), step


def test_gradients_and_parameters_match(runs):
    one, (rank0, rank1) = runs
    assert one["grads"].keys() == rank0["grads"].keys()
    assert any(name.startswith("backbone.") for name in one["grads"]), "the backbone must train"
    for name, grad in one["grads"].items():
        assert torch.equal(rank0["grads"][name], rank1["grads"][name]), f"ranks disagree on {name}"
        scale = grad.abs().max().clamp_min(1e-20)
        torch.testing.assert_close(
            rank0["grads"][name] / scale, grad / scale, rtol=1e-4, atol=1e-4, msg=lambda m: f"gradient of {name}: {m}"
        )
    assert all(torch.equal(one["initial"][k], v) for k, v in rank0["initial"].items()), "same initial model"
    initial = one["initial"]
    for name, value in one["state"].items():
        other = rank0["state"][name]
        if not value.is_floating_point() or "running_" in name:
            assert torch.equal(other, value), name
            continue
        change = (value - initial[name]).norm()
        assert (other - value).norm() <= 0.05 * change + 1e-12, (
            f"{name}: 2-rank and 1-rank parameters differ by {(other - value).norm():.3g}, change {change:.3g}"
        )
