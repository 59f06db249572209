// The fused epilogues of the native head loss: everything done to one class tile after its GEMMs.
//
// A tile holds classes [start, start + K) of every batch row.  Its GEMM products are (B, K) row-major
// fp32 buffers of raw dot products e_b . w_c (teacher and, for two heads, student); the epilogue
// walks each row in 8-lane vectors.  Forward: cosines, the given target logit z_y in place of the
// target's s * cos (the margin is applied before, in margins.target_terms), and the online
// log-sum-exp of the four softmax families (teacher CE, student CE, cos_t / tau_t, cos_s / tau_s)
// plus the KL numerator, merged into per-row running states.  Backward: the
// gradient dL/dcos of the tile, written back pre-divided by ||w_c|| for the dE and dW GEMMs, and
// the per-class column sums sum_b dL/dcos * cos needed for the ||w_c|| part of dW.
//
// The functions are templates instantiated per instruction set in head_loss.cpp (baseline and
// AVX2+FMA); they are always_inline so each instance gets its caller's target.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "vec8.h"

namespace udon_native {

// Online log-sum-exp states of one batch row over the classes seen so far: (running max m, sum of
// exp(x - m)) per family; t_a is sum exp(a - m_a) * (a - b), the KL numerator.
struct RowState {
  float m_zt = kNegInf, s_zt = 0.0f;
  float m_zs = kNegInf, s_zs = 0.0f;
  float m_a = kNegInf, s_a = 0.0f, t_a = 0.0f;
  float m_b = kNegInf, s_b = 0.0f;
};

// Merge a partial (tile_m, tile_s) into (m, s); `extra` / `tile_extra` ride along with s (KL numerator).
UDON_INLINE void merge_lse(float& m, float& s, float tile_m, float tile_s, float* extra = nullptr,
                           float tile_extra = 0.0f) {
  if (tile_m == kNegInf) return;
  if (tile_m > m) {
    const float f = std::exp(m - tile_m);
    s = s * f + tile_s;
    if (extra) *extra = *extra * f + tile_extra;
    m = tile_m;
  } else {
    const float f = std::exp(tile_m - m);
    s += tile_s * f;
    if (extra) *extra += tile_extra * f;
  }
}

UDON_INLINE void merge_state(RowState& into, const RowState& part) {
  merge_lse(into.m_zt, into.s_zt, part.m_zt, part.s_zt);
  merge_lse(into.m_zs, into.s_zs, part.m_zs, part.s_zs);
  merge_lse(into.m_a, into.s_a, part.m_a, part.s_a, &into.t_a, part.t_a);
  merge_lse(into.m_b, into.s_b, part.m_b, part.s_b);
}

// One class tile of every row.  dots_* are (B, K) fp32 row-major with 8 readable floats past the
// end; inv_norm_* are (K,) 1 / ||w_c|| with 8 readable floats past K.  Student pointers are null
// for a single head.
struct TileRows {
  int64_t batch, classes, start;
  float* dots_t;
  float* dots_s;
  const float* inv_norm_t;
  const float* inv_norm_s;
  const int64_t* labels;  // (B,)
  const float* z_y_t;     // (B,) margin-transformed scaled target logits
  const float* z_y_s;
  float scale, inv_tau_t, inv_tau_s;
};

// Backward-only per-row inputs and the per-class outputs of a tile.
struct BackwardRows {
  const float* stats;   // (B, 4): lse of z_t, z_s, cos_t / tau_t, cos_s / tau_s
  const float* g_ce_t;  // (B,) upstream gradients of the per-row losses
  const float* g_ce_s;
  const float* g_kl;
  const float* dz_y_t;  // (B,) d z_y / d cos_y
  const float* dz_y_s;
  float* colsum_t;      // (K + 8,) zeroed: receives sum_b dL/dcos_{b,c} * cos_{b,c}
  float* colsum_s;
};

// 1 / ||w_c|| of K rows of a (K, D) fp32 row-major block.
UDON_INLINE void inv_norms_impl(const float* w, int64_t rows, int64_t dim, float* inv_norm) {
  const int64_t full = dim - dim % kLanes;
  for (int64_t c = 0; c < rows; ++c) {
    const float* row = w + c * dim;
    f8 acc = splat(0.0f);
    for (int64_t d = 0; d < full; d += kLanes) {
      const f8 v = load(row + d);
      acc += v * v;
    }
    float sum = hsum(acc);
    for (int64_t d = full; d < dim; ++d) sum += row[d] * row[d];
    inv_norm[c] = 1.0f / std::sqrt(sum);
  }
}

// out[c, :] = -coef[c] * w[c, :] for a (K, D) block: the ||w_c|| term of dW, before the GEMM adds
// (dL/dcos / ||w||)^T E.
UDON_INLINE void neg_scaled_rows_impl(const float* w, const float* coef, int64_t rows, int64_t dim, float* out) {
  for (int64_t c = 0; c < rows; ++c) {
    const float k = -coef[c];
    for (int64_t d = 0; d < dim; ++d) out[c * dim + d] = k * w[c * dim + d];
  }
}

// Largest value of row[0, K) other than row[skip].
UDON_INLINE float max_excluding(const float* row, int64_t classes, int64_t skip) {
  float m = kNegInf;
  for (int64_t c = 0; c < classes; ++c) {
    if (c != skip && row[c] > m) m = row[c];
  }
  return m;
}

template <bool Dual>
UDON_INLINE void forward_tile_impl(const TileRows& t, RowState* state) {
  const int64_t classes = t.classes, full = classes - classes % kLanes, tail = classes - full;
  const i8 lanes = iota();
  const i8 tail_valid = lanes < splat_i(static_cast<int32_t>(tail));
  const f8 neg_inf = splat(kNegInf), zero = splat(0.0f);
  for (int64_t b = 0; b < t.batch; ++b) {
    float* row_t = t.dots_t + b * classes;
    float* row_s = Dual ? t.dots_s + b * classes : nullptr;
    // Pass 1: cosines in place and their row maxima.
    f8 max_t = neg_inf, max_s = neg_inf;
    for (int64_t c = 0; c < full; c += kLanes) {
      const f8 ct = load(row_t + c) * load(t.inv_norm_t + c);
      store(row_t + c, ct);
      max_t = vmax(max_t, ct);
      if constexpr (Dual) {
        const f8 cs = load(row_s + c) * load(t.inv_norm_s + c);
        store(row_s + c, cs);
        max_s = vmax(max_s, cs);
      }
    }
    if (tail) {
      const f8 ct = load(row_t + full) * load(t.inv_norm_t + full);
      store_partial(row_t + full, ct, tail);
      max_t = vmax(max_t, tail_valid ? ct : neg_inf);
      if constexpr (Dual) {
        const f8 cs = load(row_s + full) * load(t.inv_norm_s + full);
        store_partial(row_s + full, cs, tail);
        max_s = vmax(max_s, tail_valid ? cs : neg_inf);
      }
    }
    // Shifts: the CE families exclude the target's s * cos_y and include z_y instead.
    const int64_t y = t.labels[b] - t.start;
    const bool has_y = 0 <= y && y < classes;
    const int32_t y_lane = has_y ? static_cast<int32_t>(y) : -1;
    const float max_ct = hmax(max_t), max_cs = Dual ? hmax(max_s) : 0.0f;
    const float z_yt = t.z_y_t[b], z_ys = Dual ? t.z_y_s[b] : 0.0f;
    float m_zt = t.scale * max_ct, m_zs = t.scale * max_cs;
    if (has_y) {
      m_zt = std::fmax(t.scale * max_excluding(row_t, classes, y), z_yt);
      if constexpr (Dual) m_zs = std::fmax(t.scale * max_excluding(row_s, classes, y), z_ys);
    }
    const float m_a = max_ct * t.inv_tau_t, m_b = max_cs * t.inv_tau_s;
    // Pass 2: sums of exp(x - m) per family and the KL numerator.
    f8 sum_zt = zero, sum_zs = zero, sum_a = zero, sum_kl = zero, sum_b = zero;
    auto step = [&](int64_t c, auto is_tail) __attribute__((always_inline)) {
      const i8 is_y = (splat_i(static_cast<int32_t>(c)) + lanes) == splat_i(y_lane);
      const f8 ct = load(row_t + c);
      f8 e_zt = vexp(is_y ? splat(z_yt - m_zt) : ct * t.scale - m_zt);
      if constexpr (decltype(is_tail)::value) e_zt = tail_valid ? e_zt : zero;
      sum_zt += e_zt;
      if constexpr (Dual) {
        const f8 cs = load(row_s + c);
        const f8 a = ct * t.inv_tau_t, bs = cs * t.inv_tau_s;
        f8 e_zs = vexp(is_y ? splat(z_ys - m_zs) : cs * t.scale - m_zs);
        f8 e_a = vexp(a - m_a), e_b = vexp(bs - m_b);
        f8 kl = e_a * (a - bs);
        if constexpr (decltype(is_tail)::value) {
          e_zs = tail_valid ? e_zs : zero;
          e_a = tail_valid ? e_a : zero;
          e_b = tail_valid ? e_b : zero;
          kl = tail_valid ? kl : zero;
        }
        sum_zs += e_zs;
        sum_a += e_a;
        sum_b += e_b;
        sum_kl += kl;
      }
    };
    for (int64_t c = 0; c < full; c += kLanes) step(c, std::false_type{});
    if (tail) step(full, std::true_type{});
    RowState& s = state[b];
    merge_lse(s.m_zt, s.s_zt, m_zt, hsum(sum_zt));
    if constexpr (Dual) {
      merge_lse(s.m_zs, s.s_zs, m_zs, hsum(sum_zs));
      merge_lse(s.m_a, s.s_a, m_a, hsum(sum_a), &s.t_a, hsum(sum_kl));
      merge_lse(s.m_b, s.s_b, m_b, hsum(sum_b));
    }
  }
}

template <bool Dual>
UDON_INLINE void backward_tile_impl(const TileRows& t, const BackwardRows& g) {
  const int64_t classes = t.classes, full = classes - classes % kLanes, tail = classes - full;
  const i8 lanes = iota();
  for (int64_t b = 0; b < t.batch; ++b) {
    float* row_t = t.dots_t + b * classes;
    float* row_s = Dual ? t.dots_s + b * classes : nullptr;
    const int64_t y = t.labels[b] - t.start;
    const int32_t y_lane = (0 <= y && y < classes) ? static_cast<int32_t>(y) : -1;
    const float* lse = g.stats + 4 * b;
    const float z_yt = t.z_y_t[b] - lse[0], g_t_other = g.g_ce_t[b] * t.scale, g_t_y = g.g_ce_t[b] * g.dz_y_t[b];
    const float z_ys = Dual ? t.z_y_s[b] - lse[1] : 0.0f;
    const float g_s_other = Dual ? g.g_ce_s[b] * t.scale : 0.0f, g_s_y = Dual ? g.g_ce_s[b] * g.dz_y_s[b] : 0.0f;
    const float g_kl = Dual ? g.g_kl[b] * t.inv_tau_s : 0.0f;
    auto step = [&](int64_t c, auto is_tail) __attribute__((always_inline)) {
      const i8 is_y = (splat_i(static_cast<int32_t>(c)) + lanes) == splat_i(y_lane);
      const f8 inv_t = load(t.inv_norm_t + c);
      const f8 ct = load(row_t + c) * inv_t;
      const f8 p_zt = vexp(is_y ? splat(z_yt) : ct * t.scale - lse[0]);
      const f8 grad_t = is_y ? (p_zt - 1.0f) * g_t_y : p_zt * g_t_other;
      store(g.colsum_t + c, load(g.colsum_t + c) + grad_t * ct);
      if constexpr (decltype(is_tail)::value) {
        store_partial(row_t + c, grad_t * inv_t, tail);
      } else {
        store(row_t + c, grad_t * inv_t);
      }
      if constexpr (Dual) {
        const f8 inv_s = load(t.inv_norm_s + c);
        const f8 cs = load(row_s + c) * inv_s;
        const f8 p_zs = vexp(is_y ? splat(z_ys) : cs * t.scale - lse[1]);
        const f8 p_a = vexp(ct * t.inv_tau_t - lse[2]);
        const f8 p_b = vexp(cs * t.inv_tau_s - lse[3]);
        const f8 grad_s = (is_y ? (p_zs - 1.0f) * g_s_y : p_zs * g_s_other) + (p_b - p_a) * g_kl;
        store(g.colsum_s + c, load(g.colsum_s + c) + grad_s * cs);
        if constexpr (decltype(is_tail)::value) {
          store_partial(row_s + c, grad_s * inv_s, tail);
        } else {
          store(row_s + c, grad_s * inv_s);
        }
      }
    };
    for (int64_t c = 0; c < full; c += kLanes) step(c, std::false_type{});
    if (tail) step(full, std::true_type{});
  }
}

}  // namespace udon_native
