// udon_fast_native::head_forward / head_backward: the fused UDON head loss on CPU (backend="native").
//
// Same contract as udon_fast/losses/head_op.py and the same math as chunked.py:
//   head_forward(e_t (B, Dt), w_t (C, Dt), e_s (B, Ds)?, w_s (C, Ds)?, labels (B,) int64, z_y (B, H) f32,
//                dz_y (B, H) f32, scale, tau_t, tau_s) -> ce_t (B,) f32, ce_s (B,) f32, kl (B,) f32, stats (B, 4) f32
//   head_backward(g_ce_t, g_ce_s, g_kl (B,) f32, e_t, w_t, e_s?, w_s?, labels, stats, z_y, dz_y, ...)
//                -> d_e_t (B, Dt), d_w_t (C, Dt), d_e_s (B, Ds), d_w_s (C, Ds) in the input dtypes
// (single head when e_s / w_s are absent: ce_s = kl = 0, stats columns 1..3 = -inf, student
// gradients are empty (0,) tensors).  z_y and dz_y are each row's margin-transformed target logit and its
// derivative in the target cosine (margins.target_terms), column 0 teacher, 1 student (H = 2, or 1 for a
// single head): the margin itself never reaches C++.  A label of -1 (margins.NO_TARGET) marks a row whose
// target is not among these classes: no logit is replaced, and its z_y = dz_y = 0 make its CE rows log-sum-exps.
//
// Design: classes are cut into tiles of K classes; consecutive tiles form a fixed number of work
// groups that threads take dynamically.  Per tile, ATen's BLAS (single-threaded inside the
// parallel region) forms the (B, K) dot products E W_tile^T of each head into per-thread fp32
// buffers, and a fused vectorised epilogue (head_epilogue.h) does the rest: forward merges the tile
// into per-group online log-sum-exp states; backward recomputes the tile, turns it into dL/dcos and
// accumulates dE (per group) and dW (rows of the tile) with two more GEMMs.  No (B, C) buffer
// exists.  Groups are reduced in group order, so results are bitwise reproducible for a fixed
// thread count.  fp32 math throughout; bf16 / fp16 weights are upcast tile by tile.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "head_epilogue.h"

namespace udon_native {
namespace {

using at::Tensor;

constexpr int64_t kTileElements = 1 << 16;  // (B, K) elements of one automatic GEMM tile (256 KiB)
constexpr int64_t kMaxTileClasses = 2048;
constexpr int64_t kGroupsPerThread = 4;     // work groups per thread: dynamic load balance
constexpr int64_t kNoTarget = -1;           // margins.NO_TARGET

std::atomic<int64_t> tile_classes_override{0};

// ---- Epilogue instances per instruction set, chosen once at run time.

struct Kernels {
  void (*forward)(const TileRows&, RowState*, bool dual);
  void (*backward)(const TileRows&, const BackwardRows&, bool dual);
  void (*inv_norms)(const float* w, int64_t rows, int64_t dim, float* inv_norm);
  void (*neg_scaled_rows)(const float* w, const float* coef, int64_t rows, int64_t dim, float* out);
};

#define UDON_DEFINE_KERNELS(SUFFIX, TARGET)                                                         \
  TARGET void forward_##SUFFIX(const TileRows& t, RowState* s, bool dual) {                        \
    dual ? forward_tile_impl<true>(t, s) : forward_tile_impl<false>(t, s);                         \
  }                                                                                                \
  TARGET void backward_##SUFFIX(const TileRows& t, const BackwardRows& g, bool dual) {             \
    dual ? backward_tile_impl<true>(t, g) : backward_tile_impl<false>(t, g);                       \
  }                                                                                                \
  TARGET void inv_norms_##SUFFIX(const float* w, int64_t rows, int64_t dim, float* inv_norm) {     \
    inv_norms_impl(w, rows, dim, inv_norm);                                                        \
  }                                                                                                \
  TARGET void neg_scaled_rows_##SUFFIX(const float* w, const float* coef, int64_t rows, int64_t dim, \
                                       float* out) {                                               \
    neg_scaled_rows_impl(w, coef, rows, dim, out);                                                 \
  }

UDON_DEFINE_KERNELS(base, )
UDON_DEFINE_KERNELS(avx2, __attribute__((target("avx2,fma"))))

const Kernels& kernels() {
  static const Kernels chosen = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      return Kernels{forward_avx2, backward_avx2, inv_norms_avx2, neg_scaled_rows_avx2};
    }
    return Kernels{forward_base, backward_base, inv_norms_base, neg_scaled_rows_base};
  }();
  return chosen;
}

const char* kernel_isa() {
  return kernels().forward == forward_avx2 ? "avx2+fma" : "x86-64-v2";
}

// ---- Inputs.

// One cosine-classifier head: fp32 embeddings, raw weights and the target-logit terms.
struct Head {
  Tensor emb;     // (B, D) f32 contiguous
  Tensor weight;  // (C, D) input dtype, contiguous
  int64_t dim = 0;
  std::vector<float> z_y;   // (B,) margin-transformed scaled target logit (margins.target_terms)
  std::vector<float> dz_y;  // (B,) d z_y / d cos_y
};

// Head `column` of the (B, H) target terms z_y and dz_y.
Head make_head(const Tensor& emb, const Tensor& weight, const Tensor& z_y, const Tensor& dz_y, int64_t column) {
  Head h;
  h.emb = emb.detach().to(at::kFloat).contiguous();
  h.weight = weight.detach().contiguous();
  h.dim = emb.size(1);
  const Tensor z = z_y.select(1, column).contiguous(), dz = dz_y.select(1, column).contiguous();
  h.z_y.assign(z.const_data_ptr<float>(), z.const_data_ptr<float>() + z.numel());
  h.dz_y.assign(dz.const_data_ptr<float>(), dz.const_data_ptr<float>() + dz.numel());
  return h;
}

void check_pair(const char* emb_name, const Tensor& emb, const char* weight_name, const Tensor& weight) {
  TORCH_CHECK(emb.device().is_cpu() && weight.device().is_cpu(), "udon_fast_native: ", emb_name, " and ",
              weight_name, " must be CPU tensors");
  TORCH_CHECK(emb.dim() == 2 && weight.dim() == 2 && emb.size(1) == weight.size(1), "udon_fast_native: ",
              emb_name, " (B, D) and ", weight_name, " (C, D) disagree: ", emb.sizes(), " vs ", weight.sizes());
  for (const Tensor* t : {&emb, &weight}) {
    const auto type = t->scalar_type();
    TORCH_CHECK(type == at::kFloat || type == at::kBFloat16 || type == at::kHalf,
                "udon_fast_native: embeddings and weights must be float32, bfloat16 or float16, got ", type);
  }
}

struct Problem {
  Head teacher;
  std::optional<Head> student;
  Tensor labels;  // (B,) int64 contiguous
  int64_t batch = 0, classes = 0;
  float scale = 0, inv_tau_t = 0, inv_tau_s = 0;
};

Problem make_problem(const Tensor& e_t, const Tensor& w_t, const std::optional<Tensor>& e_s,
                     const std::optional<Tensor>& w_s, const Tensor& labels, const Tensor& z_y, const Tensor& dz_y,
                     double scale, double tau_t, double tau_s) {
  check_pair("e_t", e_t, "w_t", w_t);
  TORCH_CHECK(e_s.has_value() == w_s.has_value(), "udon_fast_native: pass both e_s and w_s, or neither");
  TORCH_CHECK(labels.scalar_type() == at::kLong && labels.dim() == 1 && labels.size(0) == e_t.size(0),
              "udon_fast_native: labels must be (B,) int64 with B = ", e_t.size(0));
  const int64_t heads = e_s.has_value() ? 2 : 1;
  for (const Tensor* t : {&z_y, &dz_y}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->dim() == 2 && t->size(0) == e_t.size(0) &&
                    t->size(1) == heads,
                "udon_fast_native: z_y and dz_y must be (B, ", heads, ") float32 CPU tensors, got ", t->sizes());
  }
  TORCH_CHECK(scale > 0 && tau_t > 0 && tau_s > 0, "udon_fast_native: scale and temperatures must be > 0");
  TORCH_CHECK(w_t.size(0) > 0, "udon_fast_native: w_t has no classes");
  Problem p;
  p.labels = labels.contiguous();
  p.batch = e_t.size(0);
  p.classes = w_t.size(0);
  const int64_t* y = p.labels.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < p.batch; ++b) {
    TORCH_CHECK((0 <= y[b] && y[b] < p.classes) || y[b] == kNoTarget, "udon_fast_native: label ", y[b],
                " outside [0, ", p.classes, ") and not -1 (no target)");
  }
  p.teacher = make_head(e_t, w_t, z_y, dz_y, 0);
  if (e_s.has_value()) {
    check_pair("e_s", *e_s, "w_s", *w_s);
    TORCH_CHECK(e_s->size(0) == p.batch && w_s->size(0) == p.classes,
                "udon_fast_native: student shapes ", e_s->sizes(), ", ", w_s->sizes(), " do not match the teacher's");
    p.student = make_head(*e_s, *w_s, z_y, dz_y, 1);
  }
  p.scale = static_cast<float>(scale);
  p.inv_tau_t = static_cast<float>(1.0 / tau_t);
  p.inv_tau_s = static_cast<float>(1.0 / tau_s);
  return p;
}

// ---- Tiling and scheduling.

struct Layout {
  int64_t tile = 0, tiles = 0, groups = 0;
  int64_t first_tile(int64_t group) const { return group * tiles / groups; }
};

Layout make_layout(int64_t batch, int64_t classes) {
  Layout l;
  int64_t tile = tile_classes_override.load();
  if (tile <= 0) {
    tile = std::clamp<int64_t>(kTileElements / std::max<int64_t>(batch, 1), 64, kMaxTileClasses);
    tile -= tile % kLanes;
  }
  l.tile = std::min(tile, classes);
  l.tiles = (classes + l.tile - 1) / l.tile;
  l.groups = std::min<int64_t>(l.tiles, kGroupsPerThread * at::get_num_threads());
  return l;
}

// Per-thread fp32 buffers of one tile (zero-initialised: the vector tails read past the data).
struct Workspace {
  Tensor dots_t, dots_s;      // (B * K + 8): GEMM products, then cosines / dL/dcos / ||w||
  Tensor inv_t, inv_s;        // (K + 8): 1 / ||w_c||
  Tensor colsum_t, colsum_s;  // (K + 8): sum_b dL/dcos * cos, then the dW coefficient
  Tensor w_t, w_s;            // (K, D): fp32 copy of a non-fp32 weight tile
  Tensor dw_t, dw_s;          // (K, D): fp32 dW tile for a non-fp32 weight

  Workspace(const Problem& p, const Layout& l, bool backward) {
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    const int64_t pad = kLanes;
    const bool dual = p.student.has_value();
    dots_t = at::zeros({p.batch * l.tile + pad}, f32);
    inv_t = at::zeros({l.tile + pad}, f32);
    if (dual) {
      dots_s = at::zeros({p.batch * l.tile + pad}, f32);
      inv_s = at::zeros({l.tile + pad}, f32);
    }
    if (backward) {
      colsum_t = at::zeros({l.tile + pad}, f32);
      if (dual) colsum_s = at::zeros({l.tile + pad}, f32);
    }
    auto fp32_copy = [&](const Head& h, Tensor& w, Tensor& dw) {
      if (h.weight.scalar_type() == at::kFloat) return;
      w = at::empty({l.tile, h.dim}, f32);
      if (backward) dw = at::empty({l.tile, h.dim}, f32);
    };
    fp32_copy(p.teacher, w_t, dw_t);
    if (dual) fp32_copy(*p.student, w_s, dw_s);
  }
};

// Runs body(workspace, group) for every group; threads take groups dynamically.  Each group is done
// by one thread in tile order, so per-group results do not depend on the schedule.  Inside the
// region ATen (and its BLAS) runs single-threaded.
template <typename Body>
void for_each_group(const Problem& p, const Layout& l, bool backward, const Body& body) {
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), l.groups);
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    Workspace ws(p, l, backward);
    for (int64_t g = next.fetch_add(1); g < l.groups; g = next.fetch_add(1)) body(ws, g);
  });
}

// Weight rows [start, start + K) of a head as an fp32 (K, D) tile (a view, or a copy into `buffer`),
// with 1 / ||w_c|| in inv_norm.
Tensor weight_tile(const Head& h, int64_t start, int64_t rows, const Tensor& buffer, const Tensor& inv_norm) {
  Tensor w = h.weight.narrow(0, start, rows);
  if (w.scalar_type() != at::kFloat) w = buffer.narrow(0, 0, rows).copy_(w);
  kernels().inv_norms(w.const_data_ptr<float>(), rows, h.dim, inv_norm.data_ptr<float>());
  return w;
}

// (B, K) view of a per-thread dots buffer holding E W_tile^T.
Tensor tile_products(const Head& h, const Tensor& w, const Tensor& dots, int64_t batch, int64_t rows) {
  Tensor out = dots.narrow(0, 0, batch * rows).view({batch, rows});
  at::mm_out(out, h.emb, w.t());
  return out;
}

TileRows tile_rows(const Problem& p, const std::vector<float>* z_y_s, int64_t start, int64_t rows, Workspace& ws) {
  const bool dual = p.student.has_value();
  return TileRows{p.batch, rows, start,
                  ws.dots_t.data_ptr<float>(), dual ? ws.dots_s.data_ptr<float>() : nullptr,
                  ws.inv_t.const_data_ptr<float>(), dual ? ws.inv_s.const_data_ptr<float>() : nullptr,
                  p.labels.const_data_ptr<int64_t>(), p.teacher.z_y.data(), dual ? z_y_s->data() : nullptr,
                  p.scale, p.inv_tau_t, p.inv_tau_s};
}

// ---- Ops.

// Merges the per-group row states of a forward pass (group order) into ce_t, ce_s, kl (B,) and stats (B, 4).
std::tuple<Tensor, Tensor, Tensor, Tensor> merge_forward(const Problem& p, const Layout& l,
                                                         const std::vector<RowState>& states) {
  const bool dual = p.student.has_value();
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  Tensor ce_t = at::empty({p.batch}, f32), ce_s = at::zeros({p.batch}, f32), kl = at::zeros({p.batch}, f32);
  Tensor stats = at::empty({p.batch, 4}, f32);
  float* out_t = ce_t.data_ptr<float>();
  float* out_s = ce_s.data_ptr<float>();
  float* out_kl = kl.data_ptr<float>();
  float* st = stats.data_ptr<float>();
  for (int64_t b = 0; b < p.batch; ++b) {
    RowState s = states[b];
    for (int64_t g = 1; g < l.groups; ++g) merge_state(s, states[g * p.batch + b]);
    const float lse_zt = s.m_zt + std::log(s.s_zt);
    out_t[b] = lse_zt - p.teacher.z_y[b];
    st[4 * b] = lse_zt;
    if (!dual) {
      st[4 * b + 1] = st[4 * b + 2] = st[4 * b + 3] = kNegInf;
      continue;
    }
    const float lse_zs = s.m_zs + std::log(s.s_zs), lse_a = s.m_a + std::log(s.s_a), lse_b = s.m_b + std::log(s.s_b);
    out_s[b] = lse_zs - p.student->z_y[b];
    out_kl[b] = s.t_a / s.s_a - lse_a + lse_b;
    st[4 * b + 1] = lse_zs;
    st[4 * b + 2] = lse_a;
    st[4 * b + 3] = lse_b;
  }
  return {ce_t, ce_s, kl, stats};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> head_forward(
    const Tensor& e_t, const Tensor& w_t, const std::optional<Tensor>& e_s, const std::optional<Tensor>& w_s,
    const Tensor& labels, const Tensor& z_y, const Tensor& dz_y, double scale, double tau_t, double tau_s) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Problem p = make_problem(e_t, w_t, e_s, w_s, labels, z_y, dz_y, scale, tau_t, tau_s);
  const Layout l = make_layout(p.batch, p.classes);
  const bool dual = p.student.has_value();
  std::vector<RowState> states(l.groups * p.batch);
  for_each_group(p, l, false, [&](Workspace& ws, int64_t group) {
    for (int64_t tile = l.first_tile(group); tile < l.first_tile(group + 1); ++tile) {
      const int64_t start = tile * l.tile, rows = std::min(l.tile, p.classes - start);
      tile_products(p.teacher, weight_tile(p.teacher, start, rows, ws.w_t, ws.inv_t), ws.dots_t, p.batch, rows);
      if (dual) {
        tile_products(*p.student, weight_tile(*p.student, start, rows, ws.w_s, ws.inv_s), ws.dots_s, p.batch, rows);
      }
      kernels().forward(tile_rows(p, dual ? &p.student->z_y : nullptr, start, rows, ws),
                        states.data() + group * p.batch, dual);
    }
  });
  return merge_forward(p, l, states);
}

// Adds one tile's dL/dcos / ||w|| (B, K) to dE (B, D) and writes dW rows [start, start + K):
// dW_c = sum_b g_bc / ||w_c|| e_b - (sum_b g_bc cos_bc) / ||w_c||^2 w_c.
void accumulate_grads(const Head& h, const Tensor& w, const Tensor& grad, const Tensor& inv_norm,
                      const Tensor& colsum, Tensor d_emb, const Tensor& d_weight, const Tensor& dw_buffer,
                      int64_t start, int64_t rows) {
  at::addmm_out(d_emb, d_emb, grad, w);
  float* coef = colsum.data_ptr<float>();
  const float* inv = inv_norm.const_data_ptr<float>();
  for (int64_t c = 0; c < rows; ++c) coef[c] *= inv[c] * inv[c];
  const bool direct = d_weight.scalar_type() == at::kFloat;
  Tensor dw = direct ? d_weight.narrow(0, start, rows) : dw_buffer.narrow(0, 0, rows);
  kernels().neg_scaled_rows(w.const_data_ptr<float>(), coef, rows, h.dim, dw.data_ptr<float>());
  at::addmm_out(dw, dw, grad.t(), h.emb);
  if (!direct) d_weight.narrow(0, start, rows).copy_(dw);
}

// The backward pass over all tiles: `products(ws, head, w_tile, start, rows)` gives a tile's (B, rows) fp32
// products E W_tile^T of `head` (head_backward recomputes them into the workspace); the epilogue overwrites
// them with dL/dcos / ||w||.  st (B, 4) stats and gt, gs, gk (B,) upstream gradients, fp32 contiguous.
// Returns d_e_t, d_w_t, d_e_s, d_w_s in the dtypes of e_t, w_t, e_s, w_s.
template <typename Products>
std::tuple<Tensor, Tensor, Tensor, Tensor> backward_pass(const Problem& p, const Layout& l, const Tensor& st,
                                                         const Tensor& gt, const Tensor& gs, const Tensor& gk,
                                                         const Tensor& e_t, const std::optional<Tensor>& e_s,
                                                         const Products& products) {
  const bool dual = p.student.has_value();
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  const Tensor d_e_t_parts = at::zeros({l.groups, p.batch, p.teacher.dim}, f32);
  const Tensor d_e_s_parts = dual ? at::zeros({l.groups, p.batch, p.student->dim}, f32) : Tensor();
  const Tensor d_w_t = at::empty_like(p.teacher.weight);
  const Tensor d_w_s = dual ? at::empty_like(p.student->weight) : p.teacher.weight.new_empty({0});
  for_each_group(p, l, true, [&](Workspace& ws, int64_t group) {
    for (int64_t tile = l.first_tile(group); tile < l.first_tile(group + 1); ++tile) {
      const int64_t start = tile * l.tile, rows = std::min(l.tile, p.classes - start);
      const Tensor wt = weight_tile(p.teacher, start, rows, ws.w_t, ws.inv_t);
      const Tensor grad_t = products(ws, p.teacher, wt, start, rows);
      Tensor ws_tile, grad_s;
      if (dual) {
        ws_tile = weight_tile(*p.student, start, rows, ws.w_s, ws.inv_s);
        grad_s = products(ws, *p.student, ws_tile, start, rows);
      }
      ws.colsum_t.narrow(0, 0, rows).zero_();
      if (dual) ws.colsum_s.narrow(0, 0, rows).zero_();
      const BackwardRows rows_in{st.const_data_ptr<float>(), gt.const_data_ptr<float>(), gs.const_data_ptr<float>(),
                                 gk.const_data_ptr<float>(), p.teacher.dz_y.data(),
                                 dual ? p.student->dz_y.data() : nullptr, ws.colsum_t.data_ptr<float>(),
                                 dual ? ws.colsum_s.data_ptr<float>() : nullptr};
      TileRows t = tile_rows(p, dual ? &p.student->z_y : nullptr, start, rows, ws);
      t.dots_t = grad_t.data_ptr<float>();
      t.dots_s = dual ? grad_s.data_ptr<float>() : nullptr;
      kernels().backward(t, rows_in, dual);
      accumulate_grads(p.teacher, wt, grad_t, ws.inv_t, ws.colsum_t, d_e_t_parts[group], d_w_t, ws.dw_t, start, rows);
      if (dual) {
        accumulate_grads(*p.student, ws_tile, grad_s, ws.inv_s, ws.colsum_s, d_e_s_parts[group], d_w_s, ws.dw_s,
                         start, rows);
      }
    }
  });
  auto reduce = [&](const Tensor& parts, const Tensor& like) {
    Tensor total = parts[0].clone();
    for (int64_t g = 1; g < l.groups; ++g) total.add_(parts[g]);
    return total.to(like.scalar_type());
  };
  const Tensor d_e_t = reduce(d_e_t_parts, e_t);
  const Tensor d_e_s = dual ? reduce(d_e_s_parts, *e_s) : e_t.new_empty({0});
  return {d_e_t, d_w_t, d_e_s, d_w_s};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> head_backward(
    const Tensor& g_ce_t, const Tensor& g_ce_s, const Tensor& g_kl, const Tensor& e_t, const Tensor& w_t,
    const std::optional<Tensor>& e_s, const std::optional<Tensor>& w_s, const Tensor& labels, const Tensor& stats,
    const Tensor& z_y, const Tensor& dz_y, double scale, double tau_t, double tau_s) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Problem p = make_problem(e_t, w_t, e_s, w_s, labels, z_y, dz_y, scale, tau_t, tau_s);
  for (const Tensor* t : {&g_ce_t, &g_ce_s, &g_kl}) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == p.batch, "udon_fast_native: upstream gradients must be (B,)");
  }
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == p.batch && stats.size(1) == 4,
              "udon_fast_native: stats must be (B, 4)");
  const Tensor gt = g_ce_t.to(at::kFloat).contiguous(), gs = g_ce_s.to(at::kFloat).contiguous();
  const Tensor gk = g_kl.to(at::kFloat).contiguous(), st = stats.to(at::kFloat).contiguous();
  const Layout l = make_layout(p.batch, p.classes);
  auto recompute = [&](Workspace& ws, const Head& h, const Tensor& w, int64_t, int64_t rows) {
    return tile_products(h, w, &h == &p.teacher ? ws.dots_t : ws.dots_s, p.batch, rows);
  };
  return backward_pass(p, l, st, gt, gs, gk, e_t, e_s, recompute);
}

// Classes per tile: 0 restores the automatic choice (about 64k (B, K) elements).  Returns the
// previous setting.  A tuning and testing knob.
int64_t set_tile_classes(int64_t classes) {
  TORCH_CHECK(classes >= 0, "udon_fast_native: tile classes must be >= 0");
  return tile_classes_override.exchange(classes);
}

std::string head_kernel_info() {
  return std::string("head loss epilogue ") + kernel_isa() + ", " + std::to_string(at::get_num_threads()) +
         " ATen threads";
}

}  // namespace
}  // namespace udon_native

TORCH_LIBRARY_FRAGMENT(udon_fast_native, m) {
  m.def(
      "head_forward(Tensor e_t, Tensor w_t, Tensor? e_s, Tensor? w_s, Tensor labels, Tensor z_y, Tensor dz_y, "
      "float scale, float tau_t, float tau_s) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "head_backward(Tensor g_ce_t, Tensor g_ce_s, Tensor g_kl, Tensor e_t, Tensor w_t, Tensor? e_s, Tensor? w_s, "
      "Tensor labels, Tensor stats, Tensor z_y, Tensor dz_y, float scale, float tau_t, float tau_s) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("set_tile_classes(int classes) -> int", &udon_native::set_tile_classes);
  m.def("head_kernel_info() -> str", &udon_native::head_kernel_info);
}

TORCH_LIBRARY_IMPL(udon_fast_native, CPU, m) {
  m.impl("head_forward", TORCH_FN(udon_native::head_forward));
  m.impl("head_backward", TORCH_FN(udon_native::head_backward));
}
