"""Chunked pure-PyTorch backend: classes in chunks, online log-sum-exp, recompute in backward.

Runs on any device.  Peak extra memory is O(B * chunk) (a handful of (B, chunk) fp32 tiles), never
O(B * C).  The math is `reference.py`'s, regrouped per class chunk; the target logits and their
derivatives come in from `margins.target_terms`.  See `head_op.py` for the forward/backward contract.
"""

import torch

from .head_backend import FusedBackend
from .layout import Head, Stat

TILE_ELEMENTS = 1 << 17


def chunk_size(batch: int, num_classes: int) -> int:
    """Classes per chunk: keeps one (B, chunk) fp32 tile near 512 KiB (cache-sized)."""
    return max(64, min(num_classes, TILE_ELEMENTS // max(batch, 1)))


class _Head:
    """One cosine-classifier head: (B, D) embeddings against (C, D) raw class weights, in fp32."""

    def __init__(self, emb: torch.Tensor, weight: torch.Tensor):
        self.emb = emb.float()
        self.weight = weight

    def tile(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Weights (K, D) f32, their row norms (K,) and the cosines (B, K) of classes [start, stop)."""
        w = self.weight[start:stop].float()
        norm = w.norm(dim=1)
        return w, norm, (self.emb @ w.t()) / norm


def _ce_logits(cos: torch.Tensor, target_mask: torch.Tensor, z_y: torch.Tensor, scale: float) -> torch.Tensor:
    """Scaled logits of a (B, K) tile with the margin-transformed target logit in place."""
    return torch.where(target_mask, z_y[:, None], scale * cos)


def _merge_lse(lse: torch.Tensor, tile: torch.Tensor) -> torch.Tensor:
    return torch.logaddexp(lse, torch.logsumexp(tile, dim=1))


def _stats(columns: dict[Stat, torch.Tensor], missing: torch.Tensor) -> torch.Tensor:
    """(B, 4) f32 stats in `Stat` column order from (B,) columns; absent ones are `missing`."""
    return torch.stack([columns.get(stat, missing) for stat in Stat], dim=1)


def forward(*, e_t, w_t, e_s, w_s, labels, z_y, dz_y, scale, tau_t, tau_s):
    """Per-row CE_t, CE_s, KL (B,) f32 and stats (B, 4) f32; see head_op.py."""
    batch, num_classes = e_t.shape[0], w_t.shape[0]
    teacher = _Head(e_t, w_t)
    student = None if e_s is None else _Head(e_s, w_s)
    z_y_t = z_y[:, Head.TEACHER]
    z_y_s = None if student is None else z_y[:, Head.STUDENT]
    neg_inf = torch.full((batch,), float("-inf"), device=e_t.device)
    lse_zt, lse_zs, lse_a, lse_b = neg_inf, neg_inf.clone(), neg_inf.clone(), neg_inf.clone()
    kl_mean = torch.zeros(batch, device=e_t.device)
    step = chunk_size(batch, num_classes)
    for start in range(0, num_classes, step):
        stop = min(start + step, num_classes)
        target_mask = labels[:, None] == torch.arange(start, stop, device=labels.device)
        _, _, cos_t = teacher.tile(start, stop)
        lse_zt = _merge_lse(lse_zt, _ce_logits(cos_t, target_mask, z_y_t, scale))
        if student is None:
            continue
        _, _, cos_s = student.tile(start, stop)
        lse_zs = _merge_lse(lse_zs, _ce_logits(cos_s, target_mask, z_y_s, scale))
        a, b = cos_t / tau_t, cos_s / tau_s
        tile_lse_a = torch.logsumexp(a, dim=1)
        tile_mean = (torch.softmax(a, dim=1) * (a - b)).sum(dim=1)
        merged = torch.logaddexp(lse_a, tile_lse_a)
        kl_mean = kl_mean * torch.exp(lse_a - merged) + tile_mean * torch.exp(tile_lse_a - merged)
        lse_a = merged
        lse_b = _merge_lse(lse_b, b)
    ce_t = lse_zt - z_y_t
    if student is None:
        zeros = torch.zeros_like(ce_t)
        return ce_t, zeros, zeros.clone(), _stats({Stat.LSE_ZT: lse_zt}, neg_inf)
    kl = kl_mean - lse_a + lse_b
    return (
        ce_t,
        lse_zs - z_y_s,
        kl,
        _stats({Stat.LSE_ZT: lse_zt, Stat.LSE_ZS: lse_zs, Stat.LSE_A: lse_a, Stat.LSE_B: lse_b}, neg_inf),
    )


def _accumulate_grads(head, g_cos, cos, w, norm, d_emb, d_weight, start, stop):
    """Add a (B, K) dL/dcos tile's contribution to dL/de (B, D) and write dL/dW rows [start, stop)."""
    g_over_norm = g_cos / norm
    d_emb += g_over_norm @ w
    d_weight[start:stop] = ((g_over_norm.t() @ head.emb) - ((g_cos * cos).sum(dim=0) / (norm * norm))[:, None] * w).to(
        d_weight.dtype
    )


def _ce_grad(cos, target_mask, z_y, lse, g_rows, dz_y, scale):
    """dL/dcos of the CE rows for a (B, K) tile: g * (softmax - onehot) * dz/dcos."""
    prob = torch.exp(_ce_logits(cos, target_mask, z_y, scale) - lse[:, None])
    grad = torch.where(target_mask, (prob - 1.0) * dz_y[:, None], prob * scale)
    return grad * g_rows[:, None]


def backward(*, g_ce_t, g_ce_s, g_kl, e_t, w_t, e_s, w_s, labels, stats, z_y, dz_y, scale, tau_t, tau_s):
    """Gradients of sum_b (g_ce_t*CE_t + g_ce_s*CE_s + g_kl*KL) w.r.t. e_t, w_t, e_s, w_s."""
    batch, num_classes = e_t.shape[0], w_t.shape[0]
    teacher = _Head(e_t, w_t)
    student = None if e_s is None else _Head(e_s, w_s)
    z_y_t, dz_y_t = z_y[:, Head.TEACHER], dz_y[:, Head.TEACHER]
    d_e_t = torch.zeros(batch, e_t.shape[1], device=e_t.device)
    d_w_t = torch.empty_like(w_t)
    if student is not None:
        z_y_s, dz_y_s = z_y[:, Head.STUDENT], dz_y[:, Head.STUDENT]
        d_e_s = torch.zeros(batch, e_s.shape[1], device=e_s.device)
        d_w_s = torch.empty_like(w_s)
    step = chunk_size(batch, num_classes)
    for start in range(0, num_classes, step):
        stop = min(start + step, num_classes)
        target_mask = labels[:, None] == torch.arange(start, stop, device=labels.device)
        w, norm, cos_t = teacher.tile(start, stop)
        g_t = _ce_grad(cos_t, target_mask, z_y_t, stats[:, Stat.LSE_ZT], g_ce_t, dz_y_t, scale)
        _accumulate_grads(teacher, g_t, cos_t, w, norm, d_e_t, d_w_t, start, stop)
        if student is None:
            continue
        w, norm, cos_s = student.tile(start, stop)
        g_s = _ce_grad(cos_s, target_mask, z_y_s, stats[:, Stat.LSE_ZS], g_ce_s, dz_y_s, scale)
        p_t = torch.exp(cos_t / tau_t - stats[:, Stat.LSE_A, None])
        p_s = torch.exp(cos_s / tau_s - stats[:, Stat.LSE_B, None])
        g_s += (p_s - p_t) * (g_kl / tau_s)[:, None]
        _accumulate_grads(student, g_s, cos_s, w, norm, d_e_s, d_w_s, start, stop)
    if student is None:
        return d_e_t.to(e_t.dtype), d_w_t, None, None
    return d_e_t.to(e_t.dtype), d_w_t, d_e_s.to(e_s.dtype), d_w_s


BACKEND = FusedBackend("chunked", forward, backward)
