"""Loss input validation: class-weight rows without a direction and margins outside their range."""

import math
import re

import pytest
import torch
from loss_cases import make_inputs
from torch.profiler import ProfilerActivity, profile

import udon_fast
from udon_fast.commands.train import parse_args
from udon_fast.losses.validate import check_class_weights

BACKENDS = ["reference", "chunked", "native"]


def _inputs():
    return [t.detach() if t.dtype.is_floating_point else t for t in make_inputs(6, 9, 8, 12)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("argument", ["student_weight", "teacher_weight"])
@pytest.mark.parametrize("fill", [0.0, 1e-30])  # all zeros, or squares that underflow float32: the loss was NaN
def test_zero_norm_class_row_is_named(backend, argument, fill):
    e_s, e_t, w_s, w_t, labels = _inputs()
    weights = {"student_weight": w_s.clone(), "teacher_weight": w_t.clone()}
    weights[argument][7] = fill
    with pytest.raises(ValueError, match=rf"^{argument} row 7 \(class 7\) has norm 0"):
        udon_fast.udon_loss(e_s, e_t, weights["student_weight"], weights["teacher_weight"], labels, backend=backend)
    single = w_t.clone()
    single[7] = fill
    with pytest.raises(ValueError, match=r"^weight row 7 \(class 7\) has norm 0"):
        udon_fast.normalized_softmax_ce(e_t, single, labels, backend=backend)


def test_first_zero_row_is_named_and_tiny_but_normalisable_rows_pass():
    e_s, e_t, w_s, w_t, labels = _inputs()
    w = w_t.clone()
    w[[2, 5]] = 0.0
    with pytest.raises(ValueError, match=r"teacher_weight row 2 \(class 2\)"):
        udon_fast.udon_loss(e_s, e_t, w_s, w, labels)
    w = w_t.clone()
    w[4] = 1e-18  # squares 1e-36: a float32 norm exists, the loss is finite
    assert torch.isfinite(udon_fast.udon_loss(e_s, e_t, w_s, w, labels, backend="reference").total)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("argument", ["student_emb", "teacher_emb", "student_weight", "teacher_weight"])
def test_finite_but_huge_rows_are_named_not_a_nan_loss(backend, argument):
    inputs = dict(zip(["student_emb", "teacher_emb", "student_weight", "teacher_weight", "labels"], _inputs()))
    original = inputs[argument]
    inputs[argument] = original.clone()
    inputs[argument][3] *= 1e20  # finite, but the loss's float32 terms overflow: the total was NaN
    message = (
        "row 3 (class 3) is too large to normalise in float32"
        if argument.endswith("weight")
        else "row 3 has norm 1e+20, too large for the loss in float32"
    )
    with pytest.raises(ValueError, match=rf"^{argument} {re.escape(message)}"):
        udon_fast.udon_loss(*inputs.values(), backend=backend)
    head = argument.split("_")[0]
    with pytest.raises(ValueError, match=rf"^(emb|weight) {re.escape(message)}"):
        udon_fast.normalized_softmax_ce(
            inputs[f"{head}_emb"], inputs[f"{head}_weight"], inputs["labels"], backend=backend
        )
    inputs[argument] = original.clone()
    inputs[argument][3] *= 1e3 if argument.endswith("emb") else 1e18  # large, but the loss stays finite
    assert torch.isfinite(udon_fast.udon_loss(*inputs.values(), backend=backend).total)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_rows_with_large_or_small_norms_are_not_rejected(dtype):
    weight = torch.randn(20, 64).to(dtype)
    weight[3] = 3000.0  # norm 24000 fits; fp16 rows beyond 65504 must not read as inf either
    weight[4] = 16000.0
    weight[5] = 2e-4  # squares underflow fp16 but not float32
    check_class_weights("weight", weight)
    weight[6] = 0
    with pytest.raises(ValueError, match=r"weight row 6 \(class 6\) has norm 0"):
        check_class_weights("weight", weight)
    weight[6, 0] = float("nan")
    with pytest.raises(ValueError, match="weight contains NaN or inf values"):
        check_class_weights("weight", weight)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_weight_check_allocates_no_class_by_dim_temporary(dtype):
    weight = torch.randn(4096, 256).to(dtype)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        check_class_weights("weight", weight)
    largest = max(e.cpu_memory_usage for e in prof.events())
    assert 0 < largest <= 4096 * 4  # the (C,) row norms, nothing of size C x D


@pytest.mark.parametrize(
    "margin_type,margin,valid",
    [
        ("normface", 0.0, True),
        ("normface", 0.3, False),
        ("normface", -0.1, False),
        ("cosface", 0.0, True),
        ("cosface", 0.99, True),
        ("cosface", 1.0, False),
        ("cosface", -1.0, False),
        ("arcface", 0.0, True),
        ("arcface", 1.5, True),
        ("arcface", math.pi / 2, False),
        ("arcface", 4.0, False),
        ("arcface", -0.2, False),
    ],
)
def test_margin_ranges(margin_type, margin, valid):
    e_s, e_t, w_s, w_t, labels = _inputs()
    calls = [
        lambda: udon_fast.udon_loss(e_s, e_t, w_s, w_t, labels, margin_type=margin_type, margin=margin),
        lambda: udon_fast.normalized_softmax_ce(e_t, w_t, labels, margin_type=margin_type, margin=margin),
        lambda: udon_fast.UDONLoss(margin_type=margin_type, margin=margin),
        lambda: parse_args(["--margin-type", margin_type, "--margin", str(margin)]),
    ]
    expected = {
        "normface": "margin = 0 (it has no margin)",
        "cosface": "0 <= margin < 1",
        "arcface": "0 <= margin < 1.5708",
    }[margin_type]
    for call in calls:
        if valid:
            call()
        else:
            with pytest.raises(
                ValueError,
                match=rf"margin {margin!r} is outside the valid range for "
                rf"(--margin-type )?{margin_type}: {re.escape(expected)}",
            ):
                call()
