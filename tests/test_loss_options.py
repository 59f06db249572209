"""The CE options (reduction, ignore_index, label_smoothing, class_weight; udon_fast/losses/options.py)
against `F.cross_entropy` on the reference's materialised margin logits, forward and all gradients,
on every backend (triton under TRITON_INTERPRET=1), every margin type, each option alone and combined;
udon_loss's KL and SIM with ignored rows; every row ignored; bad values; the class-parallel loss on 2
and 3 gloo ranks with uneven slices against the single-process reference."""

import os

import pytest
import torch
import torch.nn.functional as F
from distributed_helpers import run_ranks
from loss_cases import MARGINS, fused_backends, make_inputs
from test_class_parallel_loss import _case, _inputs, run_cases

import udon_fast
from udon_fast.losses import backends, chunked, reference
from udon_fast.losses.margins import NO_TARGET, resolve

IGNORE = -100
ALL_BACKENDS = [pytest.param("reference"), *fused_backends()]
SCALE = 16.0


def _class_weight(classes, seed=5):
    return torch.rand(classes, generator=torch.Generator().manual_seed(seed)) * 1.5 + 0.1


def _options(name, classes):
    """Named option sets: each option alone, then combined."""
    weight = _class_weight(classes)
    return {
        "sum": dict(reduction="sum"),
        "none": dict(reduction="none"),
        "ignore": dict(ignore_index=IGNORE),
        "ignore-a-class": dict(ignore_index=1),
        "smoothing": dict(label_smoothing=0.15),
        "class-weight": dict(class_weight=weight),
        "all-mean": dict(ignore_index=IGNORE, label_smoothing=0.3, class_weight=weight),
        "all-sum": dict(reduction="sum", ignore_index=IGNORE, label_smoothing=0.3, class_weight=weight),
        "all-none": dict(reduction="none", ignore_index=IGNORE, label_smoothing=1.0, class_weight=weight),
    }[name]


OPTION_SETS = [
    "sum",
    "none",
    "ignore",
    "ignore-a-class",
    "smoothing",
    "class-weight",
    "all-mean",
    "all-sum",
    "all-none",
]


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    """Class tiles of 64 in the CPU fused backends, so C = 201 spans several tiles and ends in a partial one."""
    monkeypatch.setattr(chunked, "TILE_ELEMENTS", 64)
    if backends.status()["native"][0]:
        from udon_fast.losses import native_backend

        previous = native_backend.set_tile_classes(64)
        yield
        native_backend.set_tile_classes(previous)
    else:
        yield


def _labels_with_ignored(labels, ignore_index):
    """Every third row (and row 0 when B = 1 is not the case) labelled ignore_index."""
    labels = labels.clone()
    if ignore_index == IGNORE and labels.numel() > 1:
        labels[::3] = IGNORE
    return labels


def reference_logits(emb, weight, labels, margin_type, margin_options, ignore_index):
    """The (B, C) margin logits of `reference.py` (no margin in ignored rows), float32."""
    margin = resolve(margin_type, **margin_options)
    targets = labels if ignore_index is None else torch.where(labels == ignore_index, NO_TARGET, labels)
    return reference.margin_logits(reference.cosine_logits(emb.float(), weight.float()), targets, margin, SCALE)


def expected_ce(emb, weight, labels, margin_type, margin_options, options):
    """F.cross_entropy with the options on the reference's logits (its ignore_index default when None)."""
    ignore = options.get("ignore_index")
    z = reference_logits(emb, weight, labels, margin_type, margin_options, ignore)
    return F.cross_entropy(
        z,
        labels,
        weight=options.get("class_weight"),
        ignore_index=IGNORE if ignore is None else ignore,
        reduction=options.get("reduction", "mean"),
        label_smoothing=options.get("label_smoothing", 0.0),
    )


def _value_and_grads(value, leaves, probe):
    grads = torch.autograd.grad((value * probe).sum(), leaves)
    return value.detach(), [g.detach() for g in grads]


def _assert_close(got, want, rtol=2e-4, atol=2e-5):
    (value, grads), (ref_value, ref_grads) = got, want
    torch.testing.assert_close(value, ref_value, rtol=rtol, atol=atol, equal_nan=True)
    for i, (a, b) in enumerate(zip(grads, ref_grads)):
        scale = b.abs().max().clamp_min(1e-12)
        torch.testing.assert_close(a / scale, b / scale, rtol=rtol, atol=atol, msg=lambda m: f"gradient {i}: {m}")


SHAPES = [(1, 5, 7), (9, 201, 13)]  # (B, C, D): B = 1; C = 201 over tiles of 64 with odd D


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("margin_type,margin_options", MARGINS)
@pytest.mark.parametrize("option_set", OPTION_SETS)
@pytest.mark.parametrize("batch,classes,dim", SHAPES)
def test_normalized_softmax_ce_matches_f_cross_entropy(
    backend, margin_type, margin_options, option_set, batch, classes, dim
):
    if backend == "triton" and (batch, margin_type) != (9, "combined") and option_set not in ("all-none", "all-sum"):
        pytest.skip("the Triton interpreter is slow: its cases are the combined margin and the combined options")
    _, emb, _, weight, labels = make_inputs(batch, classes, dim, dim, seed=batch + classes)
    options = _options(option_set, classes)
    labels = _labels_with_ignored(labels, options.get("ignore_index"))
    probe = (
        torch.randn(batch, generator=torch.Generator().manual_seed(3))
        if options.get("reduction") == "none"
        else torch.tensor(0.7)
    )
    got = _value_and_grads(
        udon_fast.normalized_softmax_ce(
            emb, weight, labels, margin_type=margin_type, scale=SCALE, backend=backend, **margin_options, **options
        ),
        (emb, weight),
        probe,
    )
    want = _value_and_grads(
        expected_ce(emb, weight, labels, margin_type, margin_options, options), (emb, weight), probe
    )
    _assert_close(got, want)


def expected_udon(inputs, margin_type, margin_options, options, weights):
    """UDONLossOutput-like list from F.cross_entropy, reference.kl_rows and the kept-pair SIM."""
    e_s, e_t, w_s, w_t, labels = inputs
    reduction, ignore = options.get("reduction", "mean"), options.get("ignore_index")
    keep = torch.ones_like(labels, dtype=torch.bool) if ignore is None else labels != ignore
    ce_t = expected_ce(e_t, w_t, labels, margin_type, margin_options, options)
    ce_s = expected_ce(e_s, w_s, labels, margin_type, margin_options, options)
    kl = torch.where(
        keep, reference.kl_rows(reference.cosine_logits(e_t, w_t), reference.cosine_logits(e_s, w_s), 0.1, 0.07), 0.0
    )
    squares = (e_s @ e_s.t() - (e_t @ e_t.t()).detach()).square() * (keep[:, None] & keep[None, :])
    sim = squares.sum(dim=1) / 4.0
    if reduction == "sum":
        kl, sim = kl.sum(), sim.sum()
    elif reduction == "mean":
        kl, sim = kl.sum() / keep.sum(), sim.sum() / keep.sum().clamp_min(1)
    terms = [ce_t, ce_s, kl, sim]
    total = sum(w * t for w, t in zip(weights, terms)) / sum(weights)
    return [total, *terms]


UDON_WEIGHTS = (1.0, 0.6, 1.3, 0.8)


def _udon_results(outputs, leaves, batch, reduction):
    shape = (5, batch) if reduction == "none" else (5,)
    probe = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    stacked = torch.stack(list(outputs))
    grads = torch.autograd.grad((stacked * probe).sum(), leaves)
    return stacked.detach(), [g.detach() for g in grads]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("margin_type,margin_options", MARGINS)
@pytest.mark.parametrize("option_set", OPTION_SETS)
def test_udon_loss_matches_f_cross_entropy(backend, margin_type, margin_options, option_set):
    if backend == "triton" and (margin_type != "combined" or option_set not in ("all-none", "all-mean")):
        pytest.skip("the Triton interpreter is slow: its cases are the combined margin and the combined options")
    batch, classes = 10, 201
    inputs = make_inputs(batch, classes, 13, 24, seed=11)
    options = _options(option_set, classes)
    labels = _labels_with_ignored(inputs[4], options.get("ignore_index"))
    inputs = (*inputs[:4], labels)
    kwargs = dict(
        margin_type=margin_type,
        **margin_options,
        scale=SCALE,
        teacher_temperature=0.1,
        student_temperature=0.07,
        **dict(zip(("teacher_ce_weight", "student_ce_weight", "kl_weight", "similarity_weight"), UDON_WEIGHTS)),
    )
    reduction = options.get("reduction", "mean")
    got = _udon_results(
        udon_fast.udon_loss(*inputs, backend=backend, **kwargs, **options), inputs[:4], batch, reduction
    )
    want = _udon_results(
        expected_udon(inputs, margin_type, margin_options, options, UDON_WEIGHTS), inputs[:4], batch, reduction
    )
    _assert_close(got, want)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_every_row_ignored_is_f_cross_entropy(backend, reduction):
    """Mean of no rows: nan, as F.cross_entropy; sum 0; zero gradients in every case."""
    _, emb, _, weight, labels = make_inputs(4, 201, 13, 13)
    labels = torch.full_like(labels, IGNORE)
    options = dict(reduction=reduction, ignore_index=IGNORE, label_smoothing=0.2, class_weight=_class_weight(201))
    probe = torch.ones(4) if reduction == "none" else torch.tensor(1.0)
    got = _value_and_grads(
        udon_fast.normalized_softmax_ce(emb, weight, labels, backend=backend, **options), (emb, weight), probe
    )
    want = _value_and_grads(expected_ce(emb, weight, labels, "normface", {}, options), (emb, weight), probe)
    _assert_close(got, want)
    assert all(bool((g == 0).all()) for g in got[1])
    assert torch.isnan(got[0]).all() if reduction == "mean" else bool((got[0] == 0).all())
    out = udon_fast.udon_loss(
        *make_inputs(4, 201, 13, 13)[:4], labels, backend=backend, reduction=reduction, ignore_index=IGNORE
    )
    for term in out[1:4]:
        assert torch.isnan(term).all() if reduction == "mean" else bool((term == 0).all())
    assert bool((out.similarity == 0).all())  # no pair of kept rows: nothing to distil


def test_defaults_are_the_plain_means():
    """The defaults give exactly the numbers of the per-row means (no option applied)."""
    inputs = make_inputs(6, 201, 13, 24)
    out = udon_fast.udon_loss(*inputs, backend="native" if backends.status()["native"][0] else "chunked")
    e_s, e_t, w_s, w_t, labels = inputs
    rows = reference.head_loss_rows(
        e_t=e_t, w_t=w_t, e_s=e_s, w_s=w_s, labels=labels, margin=resolve("normface"), scale=16.0, tau_t=0.1, tau_s=0.1
    )
    for term, row in zip(out[1:4], rows):
        torch.testing.assert_close(term, row.mean(), rtol=2e-5, atol=2e-6)
    none = udon_fast.udon_loss(*inputs, reduction="none")
    for term, mean in zip(none, out):
        torch.testing.assert_close(term.mean(), mean, rtol=2e-6, atol=1e-6)


def test_udon_loss_module_carries_the_options():
    inputs = make_inputs(5, 30, 13, 24)
    weight = _class_weight(30)
    options = dict(reduction="sum", ignore_index=2, label_smoothing=0.1, class_weight=weight)
    module = udon_fast.UDONLoss(backend="chunked", **options)
    assert module.class_weight is weight and "label_smoothing=0.1" in repr(module)
    torch.testing.assert_close(
        torch.stack(list(module(*inputs))),
        torch.stack(list(udon_fast.udon_loss(*inputs, backend="chunked", **options))),
    )
    with pytest.raises(ValueError, match="^reduction must be one of"):
        udon_fast.UDONLoss(reduction="avg")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(reduction="avg"), r"^reduction must be one of \('mean', 'sum', 'none'\), got 'avg'$"),
        (dict(ignore_index=1.5), r"^ignore_index must be an int or None, got 1.5$"),
        (dict(ignore_index=True), r"^ignore_index must be an int or None, got True$"),
        (dict(label_smoothing=1.5), r"^label_smoothing must be a number in \[0, 1\], got 1.5$"),
        (dict(label_smoothing=float("nan")), r"^label_smoothing must be a number in \[0, 1\], got nan$"),
        (
            dict(class_weight=torch.ones(4)),
            r"^class_weight must be a floating \(C,\) = \(5,\) tensor, got torch.float32 "
            r"of shape \(4,\)$",
        ),
        (
            dict(class_weight=torch.ones(5, dtype=torch.int64)),
            r"^class_weight must be a floating \(C,\) = \(5,\) tensor",
        ),
        (
            dict(class_weight=torch.tensor([1.0, 2.0, float("inf"), 1.0, 1.0])),
            r"^class_weight contains NaN or inf values$",
        ),
        (dict(ignore_index=-100, labels=[0, -100, -7]), r"^labels must lie in \[0, 5\), got values in \[-7, 0\]$"),
        (
            dict(labels=[0, -100, 3]),
            r"^labels must lie in \[0, 5\), got values in \[-100, 3\] \(rows to skip need "
            r"ignore_index\)$",
        ),
    ],
)
def test_bad_options_raise_one_line_naming_the_argument(kwargs, message):
    _, emb, _, weight, labels = make_inputs(3, 5, 7, 7)
    labels = torch.tensor(kwargs.pop("labels", labels.tolist()))
    for call in (
        lambda: udon_fast.normalized_softmax_ce(emb, weight, labels, backend="chunked", **kwargs),
        lambda: udon_fast.udon_loss(emb, emb, weight, weight, labels, backend="chunked", **kwargs),
    ):
        with pytest.raises((ValueError, TypeError), match=message):
            call()


# ---- class-parallel: 2 and 3 gloo ranks, uneven row counts and class slices ----------------------------

NATIVE = "native" if backends.status()["native"][0] else "chunked"
SHARD_OPTIONS = {
    "all-mean": dict(ignore_index=IGNORE, label_smoothing=0.3, class_weight=True),
    "all-sum": dict(reduction="sum", ignore_index=IGNORE, label_smoothing=0.2, class_weight=True),
    "smoothing": dict(label_smoothing=0.25),
    "class-weight-none": dict(reduction="none", class_weight=True),
}
SHARD_CASES = {
    2: [
        dict(_case("2-combined", (5, 3), (20, 17), "combined", NATIVE), options="all-mean"),
        dict(_case("2-arcface-chunked", (4, 4), (9, 28), "arcface", "chunked"), options="all-sum"),
        dict(_case("2-empty-slice", (1, 6), (37, 0), "cosface", NATIVE), options="smoothing"),
        dict(
            _case("2-single-head-none", (3, 5), (11, 26), "arcface", NATIVE, single_head=True),
            options="class-weight-none",
        ),
        dict(_case("2-single-head-all", (3, 5), (11, 26), "combined", "chunked", single_head=True), options="all-sum"),
    ]
    + (
        [dict(_case("2-triton", (5, 3), (20, 17), "combined", "triton"), options="all-mean")]
        if os.environ.get("TRITON_INTERPRET") == "1" and backends.status()["triton"][0]
        else []
    ),
    3: [dict(_case(f"3-{m}", (4, 1, 6), (10, 25, 15), m, NATIVE), options="all-mean") for m, _ in MARGINS]
    + [dict(_case("3-rank1-all-ignored", (4, 2, 3), (10, 25, 15), "normface", "chunked"), options="all-sum")],
}


def _shard_options(case, classes):
    options = dict(SHARD_OPTIONS[case["options"]])
    if options.pop("class_weight", False):
        options["class_weight"] = _class_weight(classes)
    return options


def _shard_loss(case, e_s, e_t, w_s, w_t, labels, **kwargs):
    margin = dict(MARGINS)[case["margin_type"]]
    if case["single_head"]:
        return udon_fast.normalized_softmax_ce(e_t, w_t, labels, margin_type=case["margin_type"], **margin, **kwargs)
    out = udon_fast.udon_loss(
        e_s, e_t, w_s, w_t, labels, margin_type=case["margin_type"], similarity_weight=0.0, **margin, **kwargs
    )
    return torch.stack([out.total, out.teacher_ce, out.student_ce, out.kl])


def _shard_compare(rank, case, seed, group):
    """max |sharded - single-process reference| of the values, and of the gradients relative to their max."""
    e_s, e_t, w_s, w_t, labels = _inputs(case, seed)
    if case["options"] != "class-weight-none" and "ignore_index" in SHARD_OPTIONS[case["options"]]:
        labels[1::3] = IGNORE
        if case["name"] == "3-rank1-all-ignored":
            labels[4:6] = IGNORE
    options = _shard_options(case, sum(case["counts"]))
    probe = torch.randn(len(labels), generator=torch.Generator().manual_seed(9))
    leaves = [t.clone().requires_grad_() for t in (e_s, e_t, w_s, w_t)]
    ref = _shard_loss(case, *leaves, labels, backend="reference", **options)
    (ref * (probe if ref.dim() == 1 and case["single_head"] else 1.0)).sum().backward()
    lo, hi = sum(case["rows"][:rank]), sum(case["rows"][: rank + 1])
    start, stop = sum(case["counts"][:rank]), sum(case["counts"][: rank + 1])
    mine = [t[lo:hi].clone().requires_grad_() for t in (e_s, e_t)] + [
        t[start:stop].clone().requires_grad_() for t in (w_s, w_t)
    ]
    shard = udon_fast.ClassShard(start, sum(case["counts"]), group)
    value = _shard_loss(case, *mine, labels[lo:hi], backend=case["backend"], class_shard=shard, **options)
    (value * (probe if value.dim() == 1 and case["single_head"] else 1.0)).sum().backward()
    errors = {"value": float((value.detach() - ref.detach()).abs().max())}
    names = (1, 3) if case["single_head"] else (0, 1, 2, 3)
    for i in names:
        want = leaves[i].grad[lo:hi] if i < 2 else leaves[i].grad[start:stop]
        got = mine[i].grad
        errors[i] = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12)) if want.numel() else 0.0
    return errors


def _shard_worker(rank, world, cases):
    import torch.distributed as dist

    pair = dist.new_group([0, 1])
    results = run_cases(rank, cases, _shard_compare, pair)
    if rank < 2:
        shard = udon_fast.ClassShard(0 if rank == 0 else 20, 37, pair)
        e_s, e_t, w_s, w_t, labels = _inputs(_case("x", (3, 3), (20, 17), "normface", "chunked"), 0)
        rows, cls = slice(3 * rank, 3 * rank + 3), slice(0, 20) if rank == 0 else slice(20, 37)
        try:
            udon_fast.udon_loss(
                e_s[rows],
                e_t[rows],
                w_s[cls],
                w_t[cls],
                labels[rows],
                backend="chunked",
                class_shard=shard,
                reduction="none",
            )
            results["none-refused"] = "no error"
        except ValueError as exc:
            results["none-refused"] = str(exc)
    return results


@pytest.fixture(scope="module")
def shard_results():
    return run_ranks(_shard_worker, 3, SHARD_CASES)


@pytest.mark.parametrize("world,case", [(w, c["name"]) for w, cases in SHARD_CASES.items() for c in cases])
def test_class_parallel_options_match_single_process_reference(shard_results, world, case):
    for rank, by_case in enumerate(shard_results[:world]):
        errors = by_case[case]
        assert max(errors.values()) <= 2e-5, (rank, errors)


def test_class_parallel_udon_loss_refuses_reduction_none(shard_results):
    for rank in (0, 1):
        assert shard_results[rank]["none-refused"].startswith("reduction='none' is not available with class_shard")


def test_options_trace_under_torch_compile_without_graph_breaks():
    """fullgraph=True: the options layer (masks, smoothing sums, the direction vector's autograd
    function) traces with the fused op; values and gradients as eager."""
    inputs = make_inputs(6, 50, 13, 24)
    labels = inputs[4].clone()
    labels[1] = IGNORE
    options = dict(
        margin_type="arcface",
        margin=0.3,
        ignore_index=IGNORE,
        label_smoothing=0.2,
        class_weight=_class_weight(50),
        backend="chunked",
    )

    def loss(e_s, e_t, w_s, w_t):
        return udon_fast.udon_loss(e_s, e_t, w_s, w_t, labels, **options).total

    eager = _value_and_grads(loss(*inputs[:4]), inputs[:4], torch.tensor(1.0))
    compiled = _value_and_grads(torch.compile(loss, fullgraph=True)(*inputs[:4]), inputs[:4], torch.tensor(1.0))
    _assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
