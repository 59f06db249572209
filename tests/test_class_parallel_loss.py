"""The class-parallel loss (`udon_loss(..., class_shard=ClassShard(...))`) on 2 and 3 gloo ranks against the
single-process reference of the concatenated batch with the full weights: the loss terms and all four
gradients to 1e-5 in fp32, for every margin type (loss_cases.MARGINS), uneven row counts and class slices, a rank whose
slice holds none of the batch's labels, an empty slice, the single-head CE, every fused CPU backend;
plus the errors every rank raises together.  One process group of 3 ranks for the module; the 2-rank
cases run on a subgroup (ClassShard.group)."""

import os

import pytest
import torch
import torch.distributed as dist
from distributed_helpers import run_ranks
from loss_cases import MARGINS as MARGIN_CASES

import udon_fast
from udon_fast.losses import backends
from udon_fast.losses.similarity import similarity_loss

D_S, D_T = 13, 24
TOL = 1e-5
NATIVE = "native" if backends.status()["native"][0] else "chunked"
MARGINS = dict(MARGIN_CASES)  # margin_type -> its keyword arguments


def _case(name, rows, counts, margin_type, backend, labels="random", single_head=False):
    return dict(
        name=name,
        rows=rows,
        counts=counts,
        margin_type=margin_type,
        backend=backend,
        labels=labels,
        single_head=single_head,
    )


CASES = {
    2: [_case(f"2-{m}", (5, 3), (20, 17), m, NATIVE) for m in MARGINS]
    + [
        _case("2-chunked-rank1-owns-no-label", (4, 4), (9, 28), "arcface", "chunked", labels="first_slice"),
        _case("2-empty-slice-one-row", (1, 6), (37, 0), "cosface", NATIVE),
        _case("2-single-head", (3, 5), (11, 26), "arcface", NATIVE, single_head=True),
        _case("2-single-head-chunked", (3, 5), (11, 26), "cosface", "chunked", single_head=True),
        _case("2-combined-empty-slice-chunked", (1, 6), (37, 0), "combined", "chunked"),
        _case("2-combined-single-head", (3, 5), (11, 26), "combined", NATIVE, single_head=True),
    ]
    + (
        [
            _case("2-triton", (5, 3), (20, 17), "arcface", "triton"),
            _case("2-triton-combined", (5, 3), (20, 17), "combined", "triton"),
        ]
        if os.environ.get("TRITON_INTERPRET") == "1" and backends.status()["triton"][0]
        else []
    ),
    3: [_case(f"3-{m}", (4, 1, 6), (10, 25, 15), m, NATIVE) for m in MARGINS]
    + [_case("3-chunked-only-rank0-owns-labels", (2, 2, 2), (30, 10, 10), "normface", "chunked", labels="first_slice")],
}


def _inputs(case, seed):
    """Full-batch inputs (the same on every rank): e_s, e_t unit-norm, raw weights, global labels."""
    gen = torch.Generator().manual_seed(seed)
    batch, classes = sum(case["rows"]), sum(case["counts"])
    e_s = torch.nn.functional.normalize(torch.randn(batch, D_S, generator=gen), dim=1)
    e_t = torch.nn.functional.normalize(torch.randn(batch, D_T, generator=gen), dim=1)
    row_scale = torch.rand(classes, 1, generator=gen) * 2 + 0.05
    w_s = torch.randn(classes, D_S, generator=gen) * row_scale
    w_t = torch.randn(classes, D_T, generator=gen) * row_scale
    high = case["counts"][0] if case["labels"] == "first_slice" else classes
    labels = torch.randint(0, high, (batch,), generator=gen)
    return e_s, e_t, w_s, w_t, labels


def _loss(case, e_s, e_t, w_s, w_t, labels, **kwargs):
    options = dict(margin_type=case["margin_type"], **MARGINS[case["margin_type"]], **kwargs)
    if case["single_head"]:
        ce = udon_fast.normalized_softmax_ce(e_t, w_t, labels, **options)
        return {"total": ce}, ce
    out = udon_fast.udon_loss(e_s, e_t, w_s, w_t, labels, similarity_weight=0.0, **options)
    return out._asdict(), out.total


def _errors(got, want):
    """max |got - want| of the values; max |got - want| / max |want| of the gradients."""
    values = {k: abs(float(got[0][k]) - float(want[0][k])) for k in got[0] if k != "similarity"}
    grads = {}
    for (name, g), w in zip(got[1].items(), want[1].values()):
        assert g.shape == w.shape, (name, g.shape, w.shape)
        grads[name] = float((g - w).abs().max() / w.abs().max().clamp_min(1e-12)) if w.numel() else 0.0
    return values, grads


def _compare(rank, case, seed, group):
    full = _inputs(case, seed)
    leaves = [t.clone().requires_grad_() for t in full[:4]]
    ref_values, ref_total = _loss(case, *leaves, full[4], backend="reference")
    ref_total.backward()
    lo, hi = sum(case["rows"][:rank]), sum(case["rows"][: rank + 1])
    start, stop = sum(case["counts"][:rank]), sum(case["counts"][: rank + 1])
    e_s, e_t = (t[lo:hi].clone().requires_grad_() for t in full[:2])
    w_s, w_t = (t[start:stop].clone().requires_grad_() for t in full[2:4])
    shard = udon_fast.ClassShard(start, sum(case["counts"]), group)
    values, total = _loss(case, e_s, e_t, w_s, w_t, full[4][lo:hi], backend=case["backend"], class_shard=shard)
    total.backward()
    names = ("e_t", "w_t") if case["single_head"] else ("e_s", "e_t", "w_s", "w_t")
    mine = {"e_s": e_s, "e_t": e_t, "w_s": w_s, "w_t": w_t}
    ref = {"e_s": leaves[0].grad, "e_t": leaves[1].grad, "w_s": leaves[2].grad, "w_t": leaves[3].grad}
    ref = {k: (v[lo:hi] if k.startswith("e") else v[start:stop]) for k, v in ref.items() if k in names}
    got = ({k: v.detach() for k, v in values.items()}, {k: mine[k].grad for k in names})
    return _errors(got, ({k: v.detach() for k, v in ref_values.items()}, ref))


def _raised(fn) -> str:
    try:
        fn()
    except (ValueError, TypeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def _error_cases(rank, group):
    """The messages every rank raises for inputs bad on one rank, slices that do not tile, a bad shard."""
    case = _case("errors", (3, 3), (20, 17), "normface", "chunked")
    e_s, e_t, w_s, w_t, labels = _inputs(case, 0)
    start, stop = (0, 20) if rank == 0 else (20, 37)
    mine = (e_s[3 * rank : 3 * rank + 3], e_t[3 * rank : 3 * rank + 3], w_s[start:stop], w_t[start:stop])
    bad_labels = labels[3 * rank : 3 * rank + 3].clone()
    if rank == 1:
        bad_labels[0] = 37
    out = {
        "bad_label": _raised(
            lambda: udon_fast.udon_loss(
                *mine, bad_labels, backend="chunked", class_shard=udon_fast.ClassShard(start, 37, group)
            )
        )
    }
    overlap = (0, 20) if rank == 0 else (10, 37)
    out["overlap"] = _raised(
        lambda: udon_fast.udon_loss(
            *mine[:2],
            w_s[overlap[0] : overlap[1]],
            w_t[overlap[0] : overlap[1]],
            labels[3 * rank : 3 * rank + 3],
            backend="chunked",
            class_shard=udon_fast.ClassShard(overlap[0], 37, group),
        )
    )
    out["reference"] = _raised(
        lambda: udon_fast.udon_loss(
            *mine,
            labels[3 * rank : 3 * rank + 3],
            backend="reference",
            class_shard=udon_fast.ClassShard(start, 37, group),
        )
    )
    out["shard"] = _raised(lambda: udon_fast.ClassShard(38, 37))
    local = udon_fast.udon_loss(
        *mine, labels[3 * rank : 3 * rank + 3], backend="chunked", class_shard=udon_fast.ClassShard(start, 37, group)
    )
    out["similarity"] = abs(float(local.similarity - similarity_loss(mine[0], mine[1])))
    return out


def run_cases(rank, cases, compare, pair):
    """{case name: compare(rank, case, seed, group)} over cases[2] + cases[3] on the ranks each case
    spans: the 2-rank cases on the subgroup `pair` of ranks 0 and 1, the 3-rank ones on the default group."""
    results = {}
    for seed, case in enumerate(cases[2] + cases[3]):
        size = len(case["rows"])
        if rank < size:
            results[case["name"]] = compare(rank, case, seed, pair if size == 2 else None)
    return results


def _worker(rank, world, cases):
    """Three ranks; the 2-rank cases run on the subgroup of ranks 0 and 1 (ClassShard.group)."""
    pair = dist.new_group([0, 1])
    results = run_cases(rank, cases, _compare, pair)
    if rank < 2:
        results["errors"] = _error_cases(rank, pair)
    return results


@pytest.fixture(scope="module")
def results():
    return run_ranks(_worker, 3, CASES)


@pytest.mark.parametrize("world,case", [(w, c["name"]) for w, cases in CASES.items() for c in cases])
def test_matches_single_process_reference(results, world, case):
    for rank, by_case in enumerate(results[:world]):
        values, grads = by_case[case]
        assert max(values.values()) <= TOL, (rank, values)
        assert max(grads.values()) <= TOL, (rank, grads)


def test_errors_are_raised_on_every_rank(results):
    first, second = (r["errors"] for r in results[:2])
    assert "labels must lie in [0, 37)" in second["bad_label"]
    assert "rank(s) [1] of the class-parallel group rejected their inputs" in first["bad_label"]
    for rank in (first, second):
        assert "class slices [(0, 20), (10, 37)] must tile [0, 37)" in rank["overlap"]
        assert "class_shard needs a fused backend" in rank["reference"]
        assert "ClassShard.start must lie in [0, 37]" in rank["shard"]
        assert rank["similarity"] == 0.0


def test_needs_a_process_group():
    e_s, e_t, w_s, w_t, labels = _inputs(_case("x", (3,), (5,), "normface", "chunked"), 0)
    with pytest.raises(ValueError, match="class_shard needs an initialised torch.distributed process group"):
        udon_fast.udon_loss(e_s, e_t, w_s, w_t, labels, class_shard=udon_fast.ClassShard(0, 5))
