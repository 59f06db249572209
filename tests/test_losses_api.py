"""Public loss API: argument errors, the module wrapper, the gradient routing of docs/method.md, torch.compile."""

import pytest
import torch
from loss_cases import assert_results_close, make_inputs, run, run_loss

import udon_fast


def _args(batch=4, classes=10):
    e_s, e_t, w_s, w_t, labels = make_inputs(batch, classes, 8, 12)
    return [e_s, e_t, w_s, w_t, labels]


@pytest.mark.parametrize(
    "index,bad,match",
    [
        (0, torch.zeros(4, 9), "student_emb has dimension 9"),
        (1, torch.zeros(5, 12), "labels has 4 entries but teacher_emb has 5 rows"),
        (3, torch.zeros(11, 12), "student_weight has 10 classes but teacher_weight has 11"),
        (4, torch.tensor([0, 1, 2, 10]), r"labels must lie in \[0, 10\)"),
        (4, torch.tensor([0, 1, -1, 3]), r"labels must lie in \[0, 10\)"),
        (4, torch.tensor([0, 1, 2]), "labels has 3 entries"),
        (0, torch.zeros(4, 8, 1), "student_emb must be 2-D"),
    ],
)
def test_bad_shapes_and_labels_raise_value_error(index, bad, match):
    args = _args()
    args[index] = bad
    with pytest.raises(ValueError, match=match):
        udon_fast.udon_loss(*args, backend="chunked")


@pytest.mark.parametrize(
    "index,bad,match",
    [
        (4, torch.tensor([0, 1, 2, 3], dtype=torch.int32), "labels must have dtype"),
        (2, torch.zeros(10, 8, dtype=torch.float64), "student_weight must have dtype"),
        (1, [[0.0] * 12] * 4, "teacher_emb must be a torch.Tensor"),
    ],
)
def test_bad_types_raise_type_error(index, bad, match):
    args = _args()
    args[index] = bad
    with pytest.raises(TypeError, match=match):
        udon_fast.udon_loss(*args, backend="chunked")


@pytest.mark.parametrize("name", ["student_emb", "teacher_weight"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_inputs_are_named(name, value):
    args = _args()
    position = ["student_emb", "teacher_emb", "student_weight", "teacher_weight"].index(name)
    bad = args[position].detach().clone()
    bad[0, 0] = value
    args[position] = bad
    with pytest.raises(ValueError, match=f"{name} contains NaN or inf"):
        udon_fast.udon_loss(*args)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"margin_type": "sphereface"}, "margin_type must be one of"),
        ({"scale": 0.0}, "scale must be a finite number > 0"),
        ({"scale": -3.0}, "scale must be a finite number > 0"),
        ({"teacher_temperature": 0.0}, "teacher_temperature must be"),
        ({"student_temperature": -0.1}, "student_temperature must be"),
        ({"margin": float("nan")}, "margin must be a finite number"),
        ({"kl_weight": -1.0}, "kl_weight must be a finite number >= 0"),
        ({"teacher_ce_weight": 0, "student_ce_weight": 0, "kl_weight": 0, "similarity_weight": 0}, "must not all be 0"),
        ({"backend": "cuda"}, "backend must be one of"),
    ],
)
def test_bad_options_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        udon_fast.udon_loss(*_args(), **kwargs)


def test_single_head_errors_name_arguments():
    emb, _, weight, _, labels = _args()
    with pytest.raises(ValueError, match="emb has dimension 8 but weight has 5"):
        udon_fast.normalized_softmax_ce(emb, weight[:, :5], labels)
    with pytest.raises(ValueError, match="scale must be"):
        udon_fast.normalized_softmax_ce(emb, weight, labels, scale=0)


def test_total_is_weighted_mean_of_terms():
    args = _args()
    weights = {"teacher_ce_weight": 2.0, "student_ce_weight": 0.5, "kl_weight": 1.5, "similarity_weight": 0.0}
    out = udon_fast.udon_loss(*args, backend="reference", **weights)
    expected = (2.0 * out.teacher_ce + 0.5 * out.student_ce + 1.5 * out.kl) / 4.0
    torch.testing.assert_close(out.total, expected)


def test_similarity_matches_spec_formula():
    e_s, e_t, w_s, w_t, labels = _args(batch=6)
    out = udon_fast.udon_loss(e_s, e_t, w_s, w_t, labels, backend="reference")
    s_s, s_t = e_s @ e_s.T, e_t @ e_t.T
    torch.testing.assert_close(out.similarity, ((s_s - s_t) ** 2).sum() / 4 / 6)


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_gradient_routing_follows_spec(backend):
    """CE_t reaches only the teacher side; CE_s and KL only the student side; SIM only e_s."""
    inputs = make_inputs(5, 17, 8, 12)
    e_s, e_t, w_s, w_t, labels = inputs
    expected = {
        "teacher_ce": [False, True, False, True],
        "student_ce": [True, False, True, False],
        "kl": [True, False, True, False],
        "similarity": [True, False, False, False],
    }
    for term, reached in expected.items():
        out = udon_fast.udon_loss(e_s, e_t, w_s, w_t, labels, backend=backend)
        getattr(out, term).backward()
        touched = [t.grad is not None and bool(t.grad.abs().sum() > 0) for t in (e_s, e_t, w_s, w_t)]
        assert touched == reached, term
        for t in (e_s, e_t, w_s, w_t):
            t.grad = None


def test_single_head_matches_teacher_ce():
    e_s, e_t, w_s, w_t, labels = _args()
    for margin_type, margin in (("normface", 0.0), ("cosface", 0.3), ("arcface", 0.3)):
        full = udon_fast.udon_loss(
            e_s, e_t, w_s, w_t, labels, margin_type=margin_type, margin=margin, backend="reference"
        )
        for backend in ("reference", "chunked"):
            single = udon_fast.normalized_softmax_ce(
                e_t, w_t, labels, margin_type=margin_type, margin=margin, backend=backend
            )
            torch.testing.assert_close(single, full.teacher_ce)


def test_module_wrapper_matches_function_and_rejects_unknown_options():
    args = _args()
    module = udon_fast.UDONLoss(margin_type="cosface", margin=0.2, backend="chunked")
    expected = udon_fast.udon_loss(*args, margin_type="cosface", margin=0.2, backend="chunked")
    torch.testing.assert_close(torch.stack(list(module(*args))), torch.stack(list(expected)))
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        udon_fast.UDONLoss(temperature=0.1)
    with pytest.raises(ValueError, match="margin_type"):
        udon_fast.UDONLoss(margin_type="arc")


def test_bf16_inputs_track_fp32():
    inputs = make_inputs(16, 300, 64, 256)
    out32, _ = run("chunked", inputs)
    low = [t.detach().to(torch.bfloat16).requires_grad_() for t in inputs[:4]] + [inputs[4]]
    out16, grads16 = run("chunked", low)
    torch.testing.assert_close(torch.stack(out16), torch.stack(out32), rtol=2e-2, atol=2e-2)
    assert all(g.dtype == torch.bfloat16 for g in grads16)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_torch_compile_has_no_graph_breaks_and_matches_eager(backend):
    torch._dynamo.reset()
    inputs = make_inputs(8, 50, 16, 32)

    def step(e_s, e_t, w_s, w_t, labels):
        return udon_fast.udon_loss(e_s, e_t, w_s, w_t, labels, margin_type="arcface", margin=0.2, backend=backend)

    explanation = torch._dynamo.explain(step)(*inputs)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(step, fullgraph=True)
    eager = run_loss(step, inputs)
    got = run_loss(compiled, inputs)
    assert all(bool(g.abs().sum() > 0) for g in eager[1])
    assert_results_close(got, eager, rtol=1e-5, atol=1e-6)
