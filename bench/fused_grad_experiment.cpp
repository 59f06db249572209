// Experiment: the native head loss with its gradients computed inside the forward pass,
// for a caller that knows the upstream row gradients before the forward (the trainer, which always
// backpropagates the weighted total).  Built and measured by bench/fused_grad_experiment.py; not part of
// the library (docs/kernels.md, "Gradients in the forward pass", gives the measurement and the decision).
//
// This translation unit compiles kernels/native/head_loss.cpp itself under another operator library
// name, so the baseline (head_forward then head_backward) and the experiment are built with the same
// flags into one extension.  head_forward_backward does the forward exactly as head_forward, but
// keeps every tile's raw products E W_tile^T of both heads (a (B, C) fp32 buffer per head) instead of
// dropping them; after the per-row log-sum-exps are merged, the backward pass runs head_backward's
// epilogue and its dE / dW GEMMs on the kept products, so the recompute GEMMs (2 of 8 per (b, c)) and
// the second read of W for them are skipped.  Memory: 4 B C bytes per head, which is what the fused
// backends exist to avoid; a kept version would cut the batch into row chunks to bound it.
#define udon_fast_native udon_fast_fused_experiment
#include "head_loss.cpp"
#undef udon_fast_native

namespace udon_native {
namespace {

std::vector<Tensor> head_forward_backward(
    const Tensor& g_ce_t, const Tensor& g_ce_s, const Tensor& g_kl, const Tensor& e_t, const Tensor& w_t,
    const std::optional<Tensor>& e_s, const std::optional<Tensor>& w_s, const Tensor& labels, const Tensor& z_y,
    const Tensor& dz_y, double scale, double tau_t, double tau_s) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Problem p = make_problem(e_t, w_t, e_s, w_s, labels, z_y, dz_y, scale, tau_t, tau_s);
  const Layout l = make_layout(p.batch, p.classes);
  const bool dual = p.student.has_value();
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  // Tile-major kept products: tile starting at class `start` is the (B, rows) block at offset start * B.
  const Tensor kept_t = at::zeros({p.batch * p.classes + kLanes}, f32);
  const Tensor kept_s = dual ? at::zeros({p.batch * p.classes + kLanes}, f32) : Tensor();
  auto block = [&](const Tensor& kept, int64_t start, int64_t rows) {
    return kept.narrow(0, start * p.batch, p.batch * rows).view({p.batch, rows});
  };
  std::vector<RowState> states(l.groups * p.batch);
  for_each_group(p, l, false, [&](Workspace& ws, int64_t group) {
    for (int64_t tile = l.first_tile(group); tile < l.first_tile(group + 1); ++tile) {
      const int64_t start = tile * l.tile, rows = std::min(l.tile, p.classes - start);
      block(kept_t, start, rows).copy_(
          tile_products(p.teacher, weight_tile(p.teacher, start, rows, ws.w_t, ws.inv_t), ws.dots_t, p.batch, rows));
      if (dual) {
        block(kept_s, start, rows).copy_(tile_products(
            *p.student, weight_tile(*p.student, start, rows, ws.w_s, ws.inv_s), ws.dots_s, p.batch, rows));
      }
      kernels().forward(tile_rows(p, dual ? &p.student->z_y : nullptr, start, rows, ws),
                        states.data() + group * p.batch, dual);
    }
  });
  const auto [ce_t, ce_s, kl, stats] = merge_forward(p, l, states);
  const Tensor gt = g_ce_t.to(at::kFloat).contiguous(), gs = g_ce_s.to(at::kFloat).contiguous();
  const Tensor gk = g_kl.to(at::kFloat).contiguous();
  auto kept = [&](Workspace&, const Head& h, const Tensor&, int64_t start, int64_t rows) {
    return block(&h == &p.teacher ? kept_t : kept_s, start, rows);
  };
  const auto [d_e_t, d_w_t, d_e_s, d_w_s] = backward_pass(p, l, stats, gt, gs, gk, e_t, e_s, kept);
  return {ce_t, ce_s, kl, stats, d_e_t, d_w_t, d_e_s, d_w_s};
}

}  // namespace
}  // namespace udon_native

TORCH_LIBRARY_FRAGMENT(udon_fast_fused_experiment, m) {
  m.def(
      "head_forward_backward(Tensor g_ce_t, Tensor g_ce_s, Tensor g_kl, Tensor e_t, Tensor w_t, Tensor? e_s, "
      "Tensor? w_s, Tensor labels, Tensor z_y, Tensor dz_y, float scale, float tau_t, float tau_s) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(udon_fast_fused_experiment, CPU, m) {
  m.impl("head_forward_backward", TORCH_FN(udon_native::head_forward_backward));
}
