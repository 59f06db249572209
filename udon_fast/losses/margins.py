"""The margin transform of the target logit: the one implementation that every backend uses.

Each row's target logit is z_y = s * f(c_y), with c_y the cosine of the row's target class; every
other logit is s * c.  `target_terms` computes z_y and dz_y/dc_y of every row once, in plain
PyTorch (so torch.compile traces it); the fused backends take these two vectors and know nothing
of margins.  `reference.py` applies the same f to its materialised logits and differentiates it
with autograd, so every backend test also checks f' below against autograd.

MARGIN_TYPES holds, per margin type, its parameters, the rule for valid values and f with its
derivative; adding a margin type is one entry here.

normface: f(c) = c                          margin = 0 (it has no margin)
cosface:  f(c) = c - m                      0 <= margin < 1
arcface:  f(c) = cos(theta + m)             0 <= margin < pi/2
combined: f(c) = cos(m1 theta + m2) - m3    margins = (m1, m2, m3): m1 >= 1, m2 >= 0, m3 >= 0,
                                            m1 pi/2 + m2 < pi and cos(m2) - m3 > 0

theta = arccos(c~) with c~ = c clamped to [-1 + ANGLE_EPS, 1 - ANGLE_EPS]: arccos' derivative is
infinite at +-1, so a row whose target cosine lies outside the clamp gets f' = 0 (as autograd of
`torch.clamp` gives).  combined is insightface's combined margin: (1, m, 0) is arcface and
(1, 0, m) cosface (up to that clamp), (1.35, 0, 0) insightface's SphereFace setting.

The ranges: a margin penalises the target and never rewards it (the lower bounds); f increases
with the match over c in [0, 1] (arcface's m < pi/2, combined's m1 pi/2 + m2 < pi); and a perfect
match (c = 1) scores above a class orthogonal to the embedding, f(1) > 0 (cosface's m < 1,
combined's cos(m2) > m3).  Below c = cos((pi - m2) / m1) < 0 (arcface: m1 = 1, m2 = m) the angular
margins are not monotone: cos(m1 theta + m2) turns back up as theta passes (pi - m2) / m1, and f' < 0
there.  We apply the formula as written on the whole range, like insightface's CombinedMarginLoss
(arcface_torch); there is no "easy margin" and no threshold fallback (the older insightface ArcFace
replaced f by c - m sin(m) beyond theta = pi - m).  Only a row whose target cosine is that
negative is affected.

A row labelled NO_TARGET (-1) has no target among the classes given (a class-parallel slice that
does not own the row's class): its logits are all s * c and z_y = dz_y = 0, so its per-row CE is
the log-sum-exp of the slice.  Only the backends accept it; the public API rejects labels outside
[0, C).
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import InputError

ANGLE_EPS = 1e-6
NO_TARGET = -1


def _linear(cos: torch.Tensor, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    return cos - shift, torch.ones_like(cos)


def _angular(cos: torch.Tensor, m1: float, m2: float, m3: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos(m1 theta + m2) - m3 and its derivative m1 sin(m1 theta + m2) / sin(theta) in the cosine."""
    inside = (cos >= -1.0 + ANGLE_EPS) & (cos <= 1.0 - ANGLE_EPS)
    clamped = cos.clamp(-1.0 + ANGLE_EPS, 1.0 - ANGLE_EPS)
    angle = m1 * torch.acos(clamped) + m2
    slope = m1 * torch.sin(angle) / torch.sqrt(1.0 - clamped * clamped)
    return torch.cos(angle) - m3, torch.where(inside, slope, torch.zeros_like(slope))


@dataclass(frozen=True)
class MarginType:
    """One margin type.  argument: the keyword its parameters come in ("margin": one number,
    "margins": a tuple of len(names)); valid(*params) and rule (the same in words) give the valid
    values; f(cos, *params) -> (f(cos), f'(cos)), elementwise on a float tensor, unscaled."""

    argument: str
    names: tuple[str, ...]
    rule: str
    valid: Callable[..., bool]
    f: Callable[..., tuple[torch.Tensor, torch.Tensor]]


MARGIN_TYPES: dict[str, MarginType] = {
    "normface": MarginType(
        "margin", ("m",), "margin = 0 (it has no margin)", lambda m: m == 0, lambda cos, m: _linear(cos, 0.0)
    ),
    "cosface": MarginType("margin", ("m",), "0 <= margin < 1", lambda m: 0 <= m < 1, _linear),
    "arcface": MarginType(
        "margin",
        ("m",),
        f"0 <= margin < {math.pi / 2:.6g}",
        lambda m: 0 <= m < math.pi / 2,
        lambda cos, m: _angular(cos, 1.0, m, 0.0),
    ),
    "combined": MarginType(
        "margins",
        ("m1", "m2", "m3"),
        "m1 >= 1, m2 >= 0, m3 >= 0, m1*pi/2 + m2 < pi and cos(m2) - m3 > 0",
        lambda m1, m2, m3: (
            m1 >= 1 and m2 >= 0 and m3 >= 0 and m1 * math.pi / 2 + m2 < math.pi and math.cos(m2) - m3 > 0
        ),
        _angular,
    ),
}


@dataclass(frozen=True)
class Margin:
    """A validated margin: its type (a key of MARGIN_TYPES) and parameters (floats), from `resolve`."""

    type: str
    params: tuple[float, ...]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def resolve(
    margin_type: str, margin: float = 0.0, margins: Sequence[float] | None = None, *, flags: bool = False
) -> Margin:
    """The Margin of the public arguments, or a one-line InputError (a ValueError) naming the bad argument.

    margin: the one parameter of normface/cosface/arcface; margins: the tuple of a type that takes
    several (combined: (m1, m2, m3)); each type leaves the other at its default (0.0, None).
    flags: name the arguments as the trainer's command-line flags (--margin-type, --margin, --margins).
    """

    def name(argument: str) -> str:
        return "--" + argument.replace("_", "-") if flags else argument

    where = f"{name('margin_type')} {margin_type}" if flags else margin_type
    if margin_type not in MARGIN_TYPES:
        raise InputError(f"{name('margin_type')} must be one of {', '.join(MARGIN_TYPES)}; got {margin_type!r}")
    kind = MARGIN_TYPES[margin_type]
    if kind.argument == "margin":
        if margins is not None:
            raise InputError(f"{name('margins')} is not used by {where} (it takes {name('margin')}); got {margins!r}")
        if not _is_number(margin):
            raise InputError(f"{name('margin')} must be a finite number, got {margin!r}")
        params = (float(margin),)
    else:
        if margin != 0:
            raise InputError(
                f"{name('margin')} is not used by {where}: give {name('margins')} "
                f"({', '.join(kind.names)}) instead; got {margin!r}"
            )
        if (
            isinstance(margins, (str, bytes))
            or not isinstance(margins, Sequence)
            or len(margins) != len(kind.names)
            or not all(_is_number(m) for m in margins)
        ):
            raise InputError(
                f"{name('margins')} must be {len(kind.names)} finite numbers ({', '.join(kind.names)}) "
                f"for {where}, got {margins!r}"
            )
        params = tuple(float(m) for m in margins)
    if not kind.valid(*params):
        shown = margin if kind.argument == "margin" else tuple(margins)
        raise InputError(f"{name(kind.argument)} {shown!r} is outside the valid range for {where}: {kind.rule}")
    return Margin(margin_type, params)


def transform(margin: Margin, cos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """f(cos) and f'(cos) of `margin`, unscaled, elementwise: two tensors of cos's shape and dtype."""
    return MARGIN_TYPES[margin.type].f(cos, *margin.params)


def target_cosines(*, emb: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """c_y = e_b . W_y / ||W_y|| of each row's target class, (B,) f32, detached.

    emb (B, D), weight (C, D) with C >= 1, labels (B,) int64 in [0, C) or NO_TARGET (such rows
    read class 0; `target_terms` zeroes them).
    """
    target_w = weight.detach()[labels.clamp_min(0)].float()
    return (emb.detach().float() * target_w).sum(dim=1) / target_w.norm(dim=1)


def target_terms(
    margin: Margin, scale: float, labels: torch.Tensor, heads: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """z_y = s f(c_y) and dz_y/dc_y = s f'(c_y) of every row of every head, for the fused backends.

    heads: (emb (B, D_h), weight (C, D_h)) per head (teacher first).  Returns z_y and dz_y, each
    (B, H) f32 (H = len(heads), column h for head h), 0 in the rows labelled NO_TARGET.  They are
    constants to autograd: the backends' backward applies dz_y to the target cosine themselves.
    """
    cos_y = torch.stack([target_cosines(emb=emb, weight=weight, labels=labels) for emb, weight in heads], dim=1)
    value, slope = transform(margin, cos_y)  # both heads in one pass of elementwise ops
    has_target = (labels != NO_TARGET)[:, None]
    return torch.where(has_target, scale * value, 0.0), torch.where(has_target, scale * slope, 0.0)
