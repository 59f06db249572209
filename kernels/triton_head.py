"""Triton kernels of the fused UDON head loss (launched by `udon_fast.losses.triton_backend`).

The math is `udon_fast/losses/chunked.py`'s, regrouped per (batch tile, class tile); the kernels
know nothing of margins: each row's target logit z_y and its derivative dz_y in the target cosine
come in from `udon_fast/losses/margins.py` (`target_terms`).  Per (b, c):

    n_c = ||W_c||,  cos_bc = e_b . W_c / n_c                      (fp32 accumulation)
    z_bc = s * cos_bc off target, z_y (given) on target            (CE logits, per head)
    a_bc = cos_t / tau_t,  b_bc = cos_s / tau_s                   (KL logits, raw cosines)

forward: online log-sum-exp of z_t, z_s, a, b (running max m in natural units, exponentials as
    exp2((x - m) * LOG2E), so a single class gives lse = z and softmax = 1 exactly, as in torch) and
    the KL numerator sum_c exp(a_c - m_a) * (a_c - b_c), so that KL = sum_c p_t (a - b) - lse_a + lse_b.
backward: G = dL/dcos, per head (chunked._ce_grad, plus the KL term on the student):
    G_t = g_ce_t * (softmax(z_t) - onehot) * dz/dcos                 (dz/dcos = s, or dz_y on target)
    G_s = g_ce_s * (softmax(z_s) - onehot) * dz/dcos + g_kl * (p_s - p_t) / tau_s
    dE_b = sum_c G_bc W_c / n_c,   dW_c = sum_b G_bc e_b / n_c - (sum_b G_bc cos_bc) W_c / n_c^2

Layouts: e (B, D) and W (C, D) row-major, all four in one of fp32/bf16/fp16, labels (B,) int64
(NO_TARGET = -1: no class of this launch is the row's target, see margins.py), z_y and dz_y
(B, HEADS) f32 row-major (column 0 teacher, 1 student; HEADS = 2 with TWO_HEADS, else 1);
every buffer the kernels write is fp32 except dW, stored in W's dtype.  Dots take the inputs as
stored (fp32 ones with DOT_PRECISION "ieee"); the backward dots take G in GRAD_DTYPE: bf16 for bf16
inputs, else fp32 (tf32 for fp16 inputs: G ~ g * s / C underflows fp16 at UnED sizes).  D blocks
are padded to a power of two >= 16 and masked.  No (B, C) tensor exists: each program keeps one
(BLOCK_B, BLOCK_C) tile.  Every output element is written by exactly one program (no atomics), so
results are deterministic.
"""

import triton
import triton.language as tl

from ..losses.layout import Head, Partial, Stat

LOG2E = tl.constexpr(1.4426950408889634)

# `losses/layout.py`'s layouts as kernel constants (jit code reads only constexpr globals).
FORWARD_FIELDS = tl.constexpr(len(Partial))
STAT_COLUMNS = tl.constexpr(len(Stat))
TEACHER, STUDENT = tl.constexpr(int(Head.TEACHER)), tl.constexpr(int(Head.STUDENT))
LSE_A = tl.constexpr(int(Stat.LSE_A))
LSE_B = tl.constexpr(int(Stat.LSE_B))
M_ZT, L_ZT = tl.constexpr(int(Partial.M_ZT)), tl.constexpr(int(Partial.L_ZT))
M_ZS, L_ZS = tl.constexpr(int(Partial.M_ZS)), tl.constexpr(int(Partial.L_ZS))
M_A, L_A = tl.constexpr(int(Partial.M_A)), tl.constexpr(int(Partial.L_A))
M_B, L_B = tl.constexpr(int(Partial.M_B)), tl.constexpr(int(Partial.L_B))
KL_NUM = tl.constexpr(int(Partial.KL_NUM))


@triton.jit
def _load_rows(ptr, rows, row_mask, D, BLOCK_D: tl.constexpr):
    """(BLOCK_B, BLOCK_D) tile of a row-major (*, D) matrix in its own dtype, zero outside."""
    offs_d = tl.arange(0, BLOCK_D)
    ptrs = ptr + rows.to(tl.int64)[:, None] * D + offs_d[None, :]
    return tl.load(ptrs, mask=row_mask[:, None] & (offs_d < D)[None, :], other=0.0)


@triton.jit
def _weight_tile(w_ptr, cols, col_mask, D, BLOCK_D: tl.constexpr):
    """Weights (BLOCK_C, BLOCK_D) of the class tile `cols` as stored, and their fused row norms
    (BLOCK_C,) f32 (1 where masked, so masked cosines are 0, never NaN)."""
    w = _load_rows(w_ptr, cols, col_mask, D, BLOCK_D)
    w32 = w.to(tl.float32)
    return w, tl.where(col_mask, tl.sqrt(tl.sum(w32 * w32, axis=1)), 1.0)


@triton.jit
def _cosines(e, w, norm, DOT_PRECISION: tl.constexpr):
    """cos (BLOCK_B, BLOCK_C) f32 = e @ w^T / norm, fp32 accumulation."""
    return tl.dot(e, tl.trans(w), input_precision=DOT_PRECISION) / norm[None, :]


@triton.jit
def _online_lse(m, s, x):
    """Merge a (BLOCK_B, BLOCK_C) tile of logits (-inf where masked, >= 1 finite per row) into the
    running (max, sum): returns new max, new sum, rescale factor and exp(x - new max)."""
    m_new = tl.maximum(m, tl.max(x, axis=1))
    alpha = tl.exp2((m - m_new) * LOG2E)
    p = tl.exp2((x - m_new[:, None]) * LOG2E)
    return m_new, s * alpha + tl.sum(p, axis=1), alpha, p


@triton.jit
def forward_kernel(
    e_t_ptr,
    w_t_ptr,
    e_s_ptr,
    w_s_ptr,
    labels_ptr,
    z_y_ptr,
    part_ptr,
    B,
    C,
    DT,
    DS,
    tiles_per_split,
    scale,
    inv_tau_t,
    inv_tau_s,
    TWO_HEADS: tl.constexpr,
    HEADS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_DT: tl.constexpr,
    BLOCK_DS: tl.constexpr,
):
    """Partial softmax states of one batch tile over one class split.

    Grid: (cdiv(B, BLOCK_B), splits); split j covers class tiles [j*tiles_per_split, ...) and holds
    at least one.  part (splits, FORWARD_FIELDS, B) f32, fields `layout.Partial` (single head: the
    teacher CE pair only).  z_y (B, HEADS) f32: the target logits.
    """
    pid_b, split = tl.program_id(0), tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < B
    labels = tl.load(labels_ptr + rows, mask=row_mask, other=-1).to(tl.int32)
    e_t = _load_rows(e_t_ptr, rows, row_mask, DT, BLOCK_DT)
    z_y_t = tl.load(z_y_ptr + rows * HEADS + TEACHER, mask=row_mask, other=0.0)
    neg_inf = tl.full((BLOCK_B,), float("-inf"), tl.float32)
    zeros = tl.zeros((BLOCK_B,), tl.float32)
    m_zt, l_zt = neg_inf, zeros
    if TWO_HEADS:
        e_s = _load_rows(e_s_ptr, rows, row_mask, DS, BLOCK_DS)
        z_y_s = tl.load(z_y_ptr + rows * HEADS + STUDENT, mask=row_mask, other=0.0)
        m_zs, l_zs, m_a, l_a, m_b, l_b, kl_num = neg_inf, zeros, neg_inf, zeros, neg_inf, zeros, zeros
    c_start = split * tiles_per_split * BLOCK_C
    c_end = tl.minimum(c_start + tiles_per_split * BLOCK_C, C)
    for c0 in range(c_start, c_end, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_mask = cols < C
        is_target = labels[:, None] == cols[None, :]
        w_t, norm_t = _weight_tile(w_t_ptr, cols, col_mask, DT, BLOCK_DT)
        cos_t = _cosines(e_t, w_t, norm_t, DOT_PRECISION)
        z_t = tl.where(is_target, z_y_t[:, None], scale * cos_t)
        m_zt, l_zt, _, _ = _online_lse(m_zt, l_zt, tl.where(col_mask[None, :], z_t, float("-inf")))
        if TWO_HEADS:
            w_s, norm_s = _weight_tile(w_s_ptr, cols, col_mask, DS, BLOCK_DS)
            cos_s = _cosines(e_s, w_s, norm_s, DOT_PRECISION)
            z_s = tl.where(is_target, z_y_s[:, None], scale * cos_s)
            m_zs, l_zs, _, _ = _online_lse(m_zs, l_zs, tl.where(col_mask[None, :], z_s, float("-inf")))
            a = cos_t * inv_tau_t
            b = cos_s * inv_tau_s
            m_a, l_a, alpha, p_a = _online_lse(m_a, l_a, tl.where(col_mask[None, :], a, float("-inf")))
            kl_num = kl_num * alpha + tl.sum(p_a * (a - b), axis=1)
            m_b, l_b, _, _ = _online_lse(m_b, l_b, tl.where(col_mask[None, :], b, float("-inf")))
    out = part_ptr + split * FORWARD_FIELDS * B + rows
    tl.store(out + M_ZT * B, m_zt, mask=row_mask)
    tl.store(out + L_ZT * B, l_zt, mask=row_mask)
    if TWO_HEADS:
        tl.store(out + M_ZS * B, m_zs, mask=row_mask)
        tl.store(out + L_ZS * B, l_zs, mask=row_mask)
        tl.store(out + M_A * B, m_a, mask=row_mask)
        tl.store(out + L_A * B, l_a, mask=row_mask)
        tl.store(out + M_B * B, m_b, mask=row_mask)
        tl.store(out + L_B * B, l_b, mask=row_mask)
        tl.store(out + KL_NUM * B, kl_num, mask=row_mask)


@triton.jit
def _load_row_terms(z_y_ptr, dz_y_ptr, stats_ptr, g_ce_ptr, rows, row_mask, HEAD: tl.constexpr, HEADS: tl.constexpr):
    """Per-row backward inputs of one head (HEAD: TEACHER or STUDENT, of HEADS columns): z_y, dz_y,
    the CE log-sum-exp (stats column HEAD: `Stat.LSE_ZT` / `LSE_ZS` are the heads' indices) and the CE
    row gradient, each (BLOCK_B,) f32 (zero where masked)."""
    z_y = tl.load(z_y_ptr + rows * HEADS + HEAD, mask=row_mask, other=0.0)
    dz_y = tl.load(dz_y_ptr + rows * HEADS + HEAD, mask=row_mask, other=0.0)
    lse_z = tl.load(stats_ptr + rows * STAT_COLUMNS + HEAD, mask=row_mask, other=0.0)
    g_ce = tl.load(g_ce_ptr + rows, mask=row_mask, other=0.0)
    return z_y, dz_y, lse_z, g_ce


@triton.jit
def _ce_grad(cos, is_target, valid, z_y, dz_y, lse_z, g_ce, scale):
    """dL/dcos (BLOCK_B, BLOCK_C) f32 of the CE rows: g * (softmax(z) - onehot) * dz/dcos, 0 where invalid."""
    prob = tl.exp2((tl.where(is_target, z_y[:, None], scale * cos) - lse_z[:, None]) * LOG2E)
    grad = tl.where(is_target, (prob - 1.0) * dz_y[:, None], prob * scale) * g_ce[:, None]
    return tl.where(valid, grad, 0.0)


@triton.jit
def _kl_grad(cos_t, cos_s, valid, lse_a, lse_b, g_kl_over_tau, inv_tau_t, inv_tau_s):
    """dKL/dcos_s (BLOCK_B, BLOCK_C) f32: g_kl * (p_s - p_t) / tau_s, 0 where invalid."""
    p_t = tl.exp2((cos_t * inv_tau_t - lse_a[:, None]) * LOG2E)
    p_s = tl.exp2((cos_s * inv_tau_s - lse_b[:, None]) * LOG2E)
    return tl.where(valid, (p_s - p_t) * g_kl_over_tau[:, None], 0.0)


@triton.jit
def grad_weight_kernel(
    e_t_ptr,
    w_t_ptr,
    e_s_ptr,
    w_s_ptr,
    labels_ptr,
    z_y_ptr,
    dz_y_ptr,
    stats_ptr,
    g_ce_t_ptr,
    g_ce_s_ptr,
    g_kl_ptr,
    d_w_t_ptr,
    d_w_s_ptr,
    B,
    C,
    DT,
    DS,
    scale,
    inv_tau_t,
    inv_tau_s,
    TWO_HEADS: tl.constexpr,
    HEADS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    GRAD_DTYPE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_DT: tl.constexpr,
    BLOCK_DS: tl.constexpr,
):
    """dW_t (C, DT) and dW_s (C, DS) rows of one class tile, in W's dtype, written once.

    Grid: (cdiv(C, BLOCK_C),); loops over all batch tiles, recomputing the cosines and G.
    stats (B, STAT_COLUMNS) f32 of the forward (`layout.Stat`); g_* (B,) f32; z_y, dz_y (B, HEADS) f32.
    """
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    offs_dt = tl.arange(0, BLOCK_DT)
    offs_ds = tl.arange(0, BLOCK_DS)
    w_t, norm_t = _weight_tile(w_t_ptr, cols, col_mask, DT, BLOCK_DT)
    if TWO_HEADS:
        w_s, norm_s = _weight_tile(w_s_ptr, cols, col_mask, DS, BLOCK_DS)
    acc_t = tl.zeros((BLOCK_C, BLOCK_DT), tl.float32)
    g_cos_t = tl.zeros((BLOCK_C,), tl.float32)
    acc_s = tl.zeros((BLOCK_C, BLOCK_DS), tl.float32)
    g_cos_s = tl.zeros((BLOCK_C,), tl.float32)
    for b0 in range(0, B, BLOCK_B):
        rows = b0 + tl.arange(0, BLOCK_B)
        row_mask = rows < B
        labels = tl.load(labels_ptr + rows, mask=row_mask, other=-1).to(tl.int32)
        is_target = labels[:, None] == cols[None, :]
        valid = row_mask[:, None] & col_mask[None, :]
        e_t = _load_rows(e_t_ptr, rows, row_mask, DT, BLOCK_DT)
        cos_t = _cosines(e_t, w_t, norm_t, DOT_PRECISION)
        z_y, dz_y, lse_z, g_ce = _load_row_terms(
            z_y_ptr, dz_y_ptr, stats_ptr, g_ce_t_ptr, rows, row_mask, TEACHER, HEADS
        )
        g_t = _ce_grad(cos_t, is_target, valid, z_y, dz_y, lse_z, g_ce, scale)
        acc_t += tl.dot(
            tl.trans(g_t / norm_t[None, :]).to(GRAD_DTYPE), e_t.to(GRAD_DTYPE), input_precision=DOT_PRECISION
        )
        g_cos_t += tl.sum(g_t * cos_t, axis=0)
        if TWO_HEADS:
            e_s = _load_rows(e_s_ptr, rows, row_mask, DS, BLOCK_DS)
            cos_s = _cosines(e_s, w_s, norm_s, DOT_PRECISION)
            z_y, dz_y, lse_z, g_ce = _load_row_terms(
                z_y_ptr, dz_y_ptr, stats_ptr, g_ce_s_ptr, rows, row_mask, STUDENT, HEADS
            )
            lse_a = tl.load(stats_ptr + rows * STAT_COLUMNS + LSE_A, mask=row_mask, other=0.0)
            lse_b = tl.load(stats_ptr + rows * STAT_COLUMNS + LSE_B, mask=row_mask, other=0.0)
            g_kl_over_tau = tl.load(g_kl_ptr + rows, mask=row_mask, other=0.0) * inv_tau_s
            g_s = _ce_grad(cos_s, is_target, valid, z_y, dz_y, lse_z, g_ce, scale)
            g_s += _kl_grad(cos_t, cos_s, valid, lse_a, lse_b, g_kl_over_tau, inv_tau_t, inv_tau_s)
            acc_s += tl.dot(
                tl.trans(g_s / norm_s[None, :]).to(GRAD_DTYPE), e_s.to(GRAD_DTYPE), input_precision=DOT_PRECISION
            )
            g_cos_s += tl.sum(g_s * cos_s, axis=0)
    d_w_t = acc_t - (g_cos_t / (norm_t * norm_t))[:, None] * w_t.to(tl.float32)
    cols64 = cols.to(tl.int64)
    tl.store(
        d_w_t_ptr + cols64[:, None] * DT + offs_dt[None, :], d_w_t, mask=col_mask[:, None] & (offs_dt < DT)[None, :]
    )
    if TWO_HEADS:
        d_w_s = acc_s - (g_cos_s / (norm_s * norm_s))[:, None] * w_s.to(tl.float32)
        tl.store(
            d_w_s_ptr + cols64[:, None] * DS + offs_ds[None, :], d_w_s, mask=col_mask[:, None] & (offs_ds < DS)[None, :]
        )


@triton.jit
def grad_emb_kernel(
    e_t_ptr,
    w_t_ptr,
    e_s_ptr,
    w_s_ptr,
    labels_ptr,
    z_y_ptr,
    dz_y_ptr,
    stats_ptr,
    g_ce_t_ptr,
    g_ce_s_ptr,
    g_kl_ptr,
    d_e_t_ptr,
    d_e_s_ptr,
    B,
    C,
    DT,
    DS,
    tiles_per_split,
    scale,
    inv_tau_t,
    inv_tau_s,
    TWO_HEADS: tl.constexpr,
    HEADS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    GRAD_DTYPE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_DT: tl.constexpr,
    BLOCK_DS: tl.constexpr,
):
    """Partial dE of one batch tile over one class split: d_e_t (splits, B, DT), d_e_s (splits, B, DS) f32.

    Grid: (cdiv(B, BLOCK_B), splits), splits as in `forward_kernel`; the launcher sums the splits.
    """
    pid_b, split = tl.program_id(0), tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < B
    labels = tl.load(labels_ptr + rows, mask=row_mask, other=-1).to(tl.int32)
    e_t = _load_rows(e_t_ptr, rows, row_mask, DT, BLOCK_DT)
    z_y_t, dz_y_t, lse_zt, g_ce_t = _load_row_terms(
        z_y_ptr, dz_y_ptr, stats_ptr, g_ce_t_ptr, rows, row_mask, TEACHER, HEADS
    )
    acc_t = tl.zeros((BLOCK_B, BLOCK_DT), tl.float32)
    acc_s = tl.zeros((BLOCK_B, BLOCK_DS), tl.float32)
    if TWO_HEADS:
        e_s = _load_rows(e_s_ptr, rows, row_mask, DS, BLOCK_DS)
        z_y_s, dz_y_s, lse_zs, g_ce_s = _load_row_terms(
            z_y_ptr, dz_y_ptr, stats_ptr, g_ce_s_ptr, rows, row_mask, STUDENT, HEADS
        )
        lse_a = tl.load(stats_ptr + rows * STAT_COLUMNS + LSE_A, mask=row_mask, other=0.0)
        lse_b = tl.load(stats_ptr + rows * STAT_COLUMNS + LSE_B, mask=row_mask, other=0.0)
        g_kl_over_tau = tl.load(g_kl_ptr + rows, mask=row_mask, other=0.0) * inv_tau_s
    c_start = split * tiles_per_split * BLOCK_C
    c_end = tl.minimum(c_start + tiles_per_split * BLOCK_C, C)
    for c0 in range(c_start, c_end, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_mask = cols < C
        is_target = labels[:, None] == cols[None, :]
        valid = row_mask[:, None] & col_mask[None, :]
        w_t, norm_t = _weight_tile(w_t_ptr, cols, col_mask, DT, BLOCK_DT)
        cos_t = _cosines(e_t, w_t, norm_t, DOT_PRECISION)
        g_t = _ce_grad(cos_t, is_target, valid, z_y_t, dz_y_t, lse_zt, g_ce_t, scale)
        acc_t += tl.dot((g_t / norm_t[None, :]).to(GRAD_DTYPE), w_t.to(GRAD_DTYPE), input_precision=DOT_PRECISION)
        if TWO_HEADS:
            w_s, norm_s = _weight_tile(w_s_ptr, cols, col_mask, DS, BLOCK_DS)
            cos_s = _cosines(e_s, w_s, norm_s, DOT_PRECISION)
            g_s = _ce_grad(cos_s, is_target, valid, z_y_s, dz_y_s, lse_zs, g_ce_s, scale)
            g_s += _kl_grad(cos_t, cos_s, valid, lse_a, lse_b, g_kl_over_tau, inv_tau_t, inv_tau_s)
            acc_s += tl.dot((g_s / norm_s[None, :]).to(GRAD_DTYPE), w_s.to(GRAD_DTYPE), input_precision=DOT_PRECISION)
    part_rows = (split * B + rows).to(tl.int64)
    offs_dt = tl.arange(0, BLOCK_DT)
    tl.store(
        d_e_t_ptr + part_rows[:, None] * DT + offs_dt[None, :], acc_t, mask=row_mask[:, None] & (offs_dt < DT)[None, :]
    )
    if TWO_HEADS:
        offs_ds = tl.arange(0, BLOCK_DS)
        tl.store(
            d_e_s_ptr + part_rows[:, None] * DS + offs_ds[None, :],
            acc_s,
            mask=row_mask[:, None] & (offs_ds < DS)[None, :],
        )
