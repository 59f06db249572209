"""The margin transform of the target logit: the one statement of it that every backend follows.

normface: z_y = s * cos_y
cosface:  z_y = s * (cos_y - m)
arcface:  z_y = s * cos(acos(cos_y) + m)     (cos_y clamped to [-1 + ARCFACE_EPS, 1 - ARCFACE_EPS])

Non-target logits are always z_c = s * cos_c.  A row labelled NO_TARGET (-1) has no target among
the classes given (a class-parallel slice that does not own the row's class): all its logits are
s * cos, its z_y counts as 0 (so its per-row CE is the log-sum-exp of the slice) and no class gets
the margin.  Only the backends accept it; the public API rejects labels outside [0, C).  The
Triton and native kernels re-express the same formulas (arcface expanded as
cos_y*cos(m) - sqrt(1 - cos_y^2)*sin(m)) and use `MARGIN_CODES`.

Valid margins (`MARGIN_RANGES`, checked by the public API): normface takes none (m = 0);
cosface 0 <= m < 1 and arcface 0 <= m < pi/2.  A negative margin rewards the target instead of
penalising it; at the upper bound even a perfect match (cos_y = 1) gets a target logit <= 0, no more
than a class orthogonal to the embedding, and beyond it the transform is no longer increasing in
the match (arcface's cos(theta + m) turns back up once theta + m passes pi).
"""
import math

import torch

MARGIN_TYPES = ("normface", "cosface", "arcface")
MARGIN_CODES = {name: code for code, name in enumerate(MARGIN_TYPES)}
ARCFACE_EPS = 1e-6
NO_TARGET = -1
# margin_type -> (lowest valid margin, bound it must stay below; None: only the lowest is valid)
MARGIN_RANGES = {"normface": (0.0, None), "cosface": (0.0, 1.0), "arcface": (0.0, math.pi / 2)}


def margin_range_text(margin_type: str) -> str:
    """The valid margins of `margin_type` in words, e.g. "0 <= margin < 1"."""
    low, high = MARGIN_RANGES[margin_type]
    return f"margin = {low:g} (it has no margin)" if high is None else f"{low:g} <= margin < {high:.6g}"


def margin_in_range(margin_type: str, margin: float) -> bool:
    low, high = MARGIN_RANGES[margin_type]
    return margin == low if high is None else low <= margin < high


def margin_code(margin_type: str) -> int:
    """Integer code of a margin type (0 normface, 1 cosface, 2 arcface) passed to kernels."""
    if margin_type not in MARGIN_CODES:
        raise ValueError(f"margin_type must be one of {MARGIN_TYPES}, got {margin_type!r}")
    return MARGIN_CODES[margin_type]


def target_logit(cos_y: torch.Tensor, code: int, margin: float, scale: float) -> torch.Tensor:
    """Margin-transformed, scaled target logit z_y.

    cos_y: (B,) float cosine of each row's target class.  Returns (B,) of the same dtype.
    """
    if code == 0:
        return scale * cos_y
    if code == 1:
        return scale * (cos_y - margin)
    clamped = cos_y.clamp(-1.0 + ARCFACE_EPS, 1.0 - ARCFACE_EPS)
    return scale * torch.cos(torch.acos(clamped) + margin)


def target_logit_grad(cos_y: torch.Tensor, code: int, margin: float, scale: float) -> torch.Tensor:
    """d z_y / d cos_y for `target_logit`, (B,) float; zero where arcface clamps cos_y."""
    if code in (0, 1):
        return torch.full_like(cos_y, scale)
    inside = (cos_y >= -1.0 + ARCFACE_EPS) & (cos_y <= 1.0 - ARCFACE_EPS)
    clamped = cos_y.clamp(-1.0 + ARCFACE_EPS, 1.0 - ARCFACE_EPS)
    sin_theta = torch.sqrt(1.0 - clamped * clamped)
    grad = scale * (math.cos(margin) + clamped * math.sin(margin) / sin_theta)
    return torch.where(inside, grad, torch.zeros_like(grad))
