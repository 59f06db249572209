"""The one margin implementation (`udon_fast/losses/margins.py`) and the combined margin.

- Every registered margin type is in `loss_cases.MARGINS`, so the backend suites (matrix, edges,
  row gradients, NO_TARGET rows, low precision, Triton, class-parallel) run it; its f' is autograd's
  derivative of its f, in float64, over the whole range of cosines.
- combined follows insightface's formula cos(m1 theta + m2) - m3 (float64 math, row by row), and
  reduces to arcface (1, m, 0) and cosface (1, 0, m).
- theta near 0 and near pi, the clamp, and the non-monotone tail below cos((pi - m2) / m1), where we
  apply the formula as written (no easy margin, no threshold fallback): every fused backend against
  the reference there, rows and all gradients, fp32; B = 1; torch.compile(fullgraph=True).
- One-line errors naming the argument (`margins`, `margin`, `--margins`), and the trainer's
  `--margin-type combined --margins m1,m2,m3` reaching udon_loss.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from loss_cases import (
    MARGINS,
    assert_rows_and_grads_close,
    fused_backends,
    head_rows_and_grads,
    make_head_inputs,
    margin_of,
    upstream_grads,
)

import udon_fast
from udon_fast.commands import train as train_cli
from udon_fast.commands.train import parse_args
from udon_fast.losses import reference
from udon_fast.losses.margins import ANGLE_EPS, MARGIN_TYPES, resolve, target_terms, transform
from udon_fast.trainer.loop import _loss_options

COMBINED = (1.2, 0.3, 0.15)


def test_every_margin_type_is_tested_on_every_backend():
    assert [margin_type for margin_type, _ in MARGINS] == list(MARGIN_TYPES)


@pytest.mark.parametrize("margin_type,options", MARGINS)
def test_slope_is_the_derivative_of_the_value(margin_type, options):
    """f' of `transform` against autograd of its f, float64, on a grid of [-1, 1] with both clamp edges."""
    margin = margin_of(margin_type, options)
    grid = torch.cat(
        [
            torch.linspace(-1, 1, 2001, dtype=torch.float64),
            torch.tensor([-1 + 2e-6, -1 + 1e-3, 1 - 1e-3, 1 - 2e-6], dtype=torch.float64),
        ]
    )
    cos = grid.clone().requires_grad_()
    value, slope = transform(margin, cos)
    (autograd,) = torch.autograd.grad(value.sum(), cos)
    torch.testing.assert_close(slope.detach(), autograd, rtol=1e-9, atol=1e-9)


def test_combined_follows_insightface_formula_and_contains_arcface_and_cosface():
    cos = torch.linspace(-1 + 1e-4, 1 - 1e-4, 999, dtype=torch.float64)
    m1, m2, m3 = COMBINED
    expected = torch.tensor([math.cos(m1 * math.acos(c) + m2) - m3 for c in cos.tolist()], dtype=torch.float64)
    torch.testing.assert_close(transform(resolve("combined", margins=COMBINED), cos)[0], expected, rtol=0, atol=1e-12)
    for combined, single in (
        (resolve("combined", margins=(1.0, 0.5, 0.0)), resolve("arcface", 0.5)),
        (resolve("combined", margins=(1.0, 0.0, 0.35)), resolve("cosface", 0.35)),
    ):
        for got, want in zip(transform(combined, cos), transform(single, cos)):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_target_terms_scale_and_no_target_rows():
    labels = torch.tensor([2, -1, 0])
    emb = F.normalize(torch.randn(3, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    weight = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    margin = resolve("combined", margins=COMBINED)
    z_y, dz_y = target_terms(margin, 16.0, labels, [(emb, weight), (emb, 2 * weight)])
    assert z_y.shape == dz_y.shape == (3, 2) and z_y.dtype == torch.float32
    cos_y = (emb * F.normalize(weight, dim=1)[labels.clamp_min(0)]).sum(dim=1)
    value, slope = transform(margin, cos_y)
    for column in range(2):  # a weight row's norm does not change its cosine
        torch.testing.assert_close(z_y[:, column], torch.where(labels >= 0, 16 * value, 0.0))
        torch.testing.assert_close(dz_y[:, column], torch.where(labels >= 0, 16 * slope, 0.0))


# ---- theta near 0 and pi, the clamp, the non-monotone tail: every fused backend against the reference ----

# Target cosines of the rows: exactly +-1 (clamped: no gradient from the target logit), 1e-3 inside
# both ends (theta ~ 0.045 and pi - 0.045: large |f'|), the non-monotone tail, the turning point's
# neighbourhood, 0 and a typical positive match.
TURN = math.cos((math.pi - COMBINED[1]) / COMBINED[0])  # f'(TURN) = 0: -0.718 for (1.2, 0.3, 0.15)
TARGET_COSINES = [1.0, -1.0, 1 - 1e-3, -1 + 1e-3, -0.95, -0.9, TURN - 0.02, TURN + 0.02, 0.0, 0.6]


def _rows_at(cosines, classes, d_s, d_t, *, seed=0):
    """Inputs whose rows have exactly these target cosines in both heads: e = c w^ + sqrt(1 - c^2) u,
    u a unit vector orthogonal to the target's normalised weight row w^.  Labels spread over the classes."""
    labels = torch.arange(len(cosines)) * 7 % classes
    e_s, e_t, w_s, w_t, labels = (t.detach() for t in make_head_inputs(labels, d_s, d_t, classes, seed=seed))
    gen = torch.Generator().manual_seed(seed + 1)
    for emb, weight in ((e_t, w_t), (e_s, w_s)):
        target = F.normalize(weight[labels], dim=1)
        noise = torch.randn(emb.shape, generator=gen)
        ortho = F.normalize(noise - (noise * target).sum(dim=1, keepdim=True) * target, dim=1)
        c = torch.tensor(cosines)[:, None]
        emb.copy_(c * target + torch.sqrt(1 - c * c) * ortho)
    return (*(t.requires_grad_() for t in (e_s, e_t, w_s, w_t)), labels)


def test_tail_is_the_formula_as_written():
    """Below cos((pi - m2) / m1) the target logit rises again as the match worsens (f' < 0); no
    threshold fallback replaces it (insightface's older ArcFace used c - m sin(m) there)."""
    margin = resolve("combined", margins=COMBINED)
    cos = torch.tensor([-0.95, -0.9, TURN - 0.02, TURN + 0.02, 0.0, 0.6], dtype=torch.float64)
    value, slope = transform(margin, cos)
    assert (slope[:3] < 0).all() and (slope[3:] > 0).all()
    m1, m2, m3 = COMBINED
    torch.testing.assert_close(value, torch.cos(m1 * torch.acos(cos) + m2) - m3, rtol=0, atol=1e-12)
    arcface = resolve("arcface", 0.5)
    tail = torch.tensor([-0.95, math.cos(math.pi - 0.5) - 0.01], dtype=torch.float64)
    assert (transform(arcface, tail)[1] < 0).all()


@pytest.mark.parametrize("backend", fused_backends())
@pytest.mark.parametrize("margin_type,options", [MARGINS[2], MARGINS[3]])
@pytest.mark.parametrize("single_head", [False, True])
def test_angular_edges_match_reference(backend, margin_type, options, single_head):
    classes = 301  # not a multiple of any backend's tile; odd widths
    inputs = _rows_at(TARGET_COSINES, classes, 13, 37)
    e_t, w_t, labels = inputs[1].detach(), inputs[3].detach(), inputs[4]
    cos_y = reference.cosine_logits(e_t, w_t).gather(1, labels[:, None])[:, 0]
    torch.testing.assert_close(cos_y, torch.tensor(TARGET_COSINES), rtol=0, atol=1e-6)
    margin = margin_of(margin_type, options)
    assert not transform(margin, cos_y[:2])[1].any()  # +-1: outside the clamp
    assert (cos_y[2:4].abs() < 1 - ANGLE_EPS).all()
    upstream = upstream_grads(len(TARGET_COSINES))
    options = dict(margin=margin, scale=16.0, tau_t=0.1, tau_s=0.07, single_head=single_head)
    assert_rows_and_grads_close(
        head_rows_and_grads(backend, inputs, upstream, **options),
        head_rows_and_grads("reference", inputs, upstream, **options),
    )


@pytest.mark.parametrize("backend", fused_backends(triton=False))
def test_combined_batch_of_one_matches_reference(backend):
    """B = 1 through the public API, two heads and one, C = 3001 (several tiles, the last ragged)."""
    inputs = _rows_at([-0.9], 3001, 13, 37)
    for fn in (
        lambda b, *x: udon_fast.udon_loss(*x, margin_type="combined", margins=COMBINED, backend=b).total,
        lambda b, e_s, e_t, w_s, w_t, y: udon_fast.normalized_softmax_ce(
            e_t, w_t, y, margin_type="combined", margins=COMBINED, backend=b
        ),
    ):
        got, want = [
            (fn(b, *inputs), torch.autograd.grad(fn(b, *inputs), inputs[:4], allow_unused=True))
            for b in (backend, "reference")
        ]
        torch.testing.assert_close(got[0], want[0], rtol=2e-4, atol=2e-5)
        for a, b in zip(got[1], want[1]):
            if b is None:
                assert a is None
                continue
            scale = b.abs().max()
            torch.testing.assert_close(a / scale, b / scale, rtol=2e-4, atol=2e-5)


def test_combined_margin_traces_under_torch_compile_fullgraph():
    """target_terms is plain PyTorch: the combined margin compiles with the fused op, no graph break."""
    inputs = _rows_at([-0.9, 0.3, 0.7], 50, 13, 37)

    def loss_fn(e_s, e_t, w_s, w_t, labels):
        return udon_fast.udon_loss(e_s, e_t, w_s, w_t, labels, margin_type="combined", margins=COMBINED).total

    eager = loss_fn(*inputs)
    eager_grads = torch.autograd.grad(eager, inputs[:4])
    compiled = torch.compile(loss_fn, fullgraph=True)(*inputs)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for got, want in zip(torch.autograd.grad(compiled, inputs[:4]), eager_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# ---- arguments ----------------------------------------------------------------------------------------

RANGE = "m1 >= 1, m2 >= 0, m3 >= 0, m1*pi/2 + m2 < pi and cos(m2) - m3 > 0"
BAD = [
    (dict(margin_type="combined"), "margins must be 3 finite numbers (m1, m2, m3) for combined, got None"),
    (dict(margin_type="combined", margins=(1.0, 0.3)), "margins must be 3 finite numbers (m1, m2, m3) for combined"),
    (dict(margin_type="combined", margins=(1.0, float("nan"), 0.1)), "margins must be 3 finite numbers"),
    (dict(margin_type="combined", margins="1,0.3,0.1"), "margins must be 3 finite numbers"),
    (
        dict(margin_type="combined", margins=(0.9, 0.3, 0.1)),
        f"margins (0.9, 0.3, 0.1) is outside the valid range for combined: {RANGE}",
    ),
    (dict(margin_type="combined", margins=(1.0, -0.1, 0.1)), "is outside the valid range for combined"),
    (dict(margin_type="combined", margins=(1.0, 0.3, -0.1)), "is outside the valid range for combined"),
    (dict(margin_type="combined", margins=(2.0, 0.0, 0.0)), "is outside the valid range for combined"),  # m1 pi/2 = pi
    (dict(margin_type="combined", margins=(1.0, 0.5, 0.9)), "is outside the valid range for combined"),  # cos(.5) < .9
    (
        dict(margin_type="combined", margin=0.2, margins=COMBINED),
        "margin is not used by combined: give margins (m1, m2, m3) instead; got 0.2",
    ),
    (dict(margin_type="arcface", margin=0.2, margins=COMBINED), "margins is not used by arcface (it takes margin)"),
]


@pytest.mark.parametrize("options,message", BAD)
def test_bad_margins_are_one_line_errors_naming_the_argument(options, message):
    e_s, e_t, w_s, w_t, labels = (t.detach() for t in make_head_inputs([0, 2, 1], 8, 12, 5))
    calls = [
        lambda: udon_fast.udon_loss(e_s, e_t, w_s, w_t, labels, **options),
        lambda: udon_fast.normalized_softmax_ce(e_t, w_t, labels, **options),
        lambda: udon_fast.UDONLoss(**options),
    ]
    for call in calls:
        with pytest.raises(ValueError) as raised:
            call()
        assert message in str(raised.value) and "\n" not in str(raised.value)


def test_valid_edges_of_the_combined_range():
    for margins in ((1.0, 0.0, 0.0), (1.35, 0.0, 0.0), (1.0, 0.5, 0.0), (1.0, 0.3, 0.2), (1.99, 0.0, 0.0)):
        udon_fast.UDONLoss(margin_type="combined", margins=margins)


def _exit_code(argv) -> int:
    """`python -m udon_fast.train argv`'s exit code (argparse's own errors exit with 2)."""
    try:
        return train_cli.main(argv)
    except SystemExit as exc:
        return exc.code


def test_trainer_accepts_the_combined_margin(tmp_path, capsys):
    config = parse_args(["--margin-type", "combined", "--margins", "1.2,0.3,0.15"])
    assert config.margins == COMBINED
    yaml_file = tmp_path / "combined.yaml"
    yaml_file.write_text("margin-type: combined\nmargins: [1.0, 0.5, 0.0]\n")
    assert tuple(parse_args(["--config", str(yaml_file)]).margins) == (1.0, 0.5, 0.0)
    e_s, e_t, w_s, w_t, labels = (t.detach() for t in make_head_inputs([0, 2, 1], 8, 12, 5))
    trainer = udon_fast.udon_loss(e_s, e_t, w_s, w_t, labels, **_loss_options(config, 1).kwargs())
    direct = udon_fast.udon_loss(
        e_s, e_t, w_s, w_t, labels, margin_type="combined", margins=COMBINED, kl_weight=1.0, similarity_weight=1.0
    )
    torch.testing.assert_close(trainer.total, direct.total)
    for argv, message in (
        (
            ["--margin-type", "combined"],
            "--margins must be 3 finite numbers (m1, m2, m3) for --margin-type combined, got None",
        ),
        (
            ["--margin-type", "combined", "--margins", "1,0.3,0.1", "--margin", "0.2"],
            "--margin is not used by --margin-type combined: give --margins (m1, m2, m3) instead",
        ),
        (
            ["--margin-type", "combined", "--margins", "0.5,0.3,0.1"],
            f"--margins (0.5, 0.3, 0.1) is outside the valid range for --margin-type combined: {RANGE}",
        ),
        (["--margins", "1,0.3,0.1"], "--margins is not used by --margin-type normface (it takes --margin)"),
        (["--margin-type", "combined", "--margins", "1,x,0"], "argument --margins: expected numbers M1,M2,M3"),
    ):
        assert _exit_code(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
