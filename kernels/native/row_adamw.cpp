// udon_fast_native::row_adamw_: the AdamW step of K sampled rows of a (C, D) fp32 weight, in place, each
// row with its own step count (Partial FC; the caller is udon_fast/optim/row_adamw.py).
//
//   row_adamw_(param (C, D) f32!, exp_avg (C, D) f32!, exp_avg_sq (C, D) f32!, step (C,) f32!,
//              index (K,) int64 distinct rows, grad (K, D) f32, lr () float tensor, beta1, beta2,
//              weight_decay, eps, maximize, vector_width, found_inf () f32?) -> ()
//
// Row index[k] moves exactly as torch's fused CPU AdamW (aten/src/ATen/native/cpu/FusedAdamKernel.cpp,
// ADAMW mode, fp32) moves a parameter made of that row alone: its count +1, the row's scalars in double
// (std::pow bias corrections, lr / bias_correction1, std::sqrt(bias_correction2)) rounded to float once,
// and per element the float arithmetic of that kernel, including where torch's compiled code fuses a
// multiply-add: exp_avg's lerp is one FMA everywhere; exp_avg_sq's update is fma(c2 g, g, v beta2) in the
// kernel's vector loop (a row's first D - D % vector_width columns, vector_width = floats per vector of
// torch's CPU capability) and fma(v, beta2, c2 g g) in its scalar tail.  A found_inf equal to 1 leaves
// the rows, moments and counts as they were (torch: count, skip the kernel, uncount).  Rows are
// independent: threads take rows; the other C - K rows are not touched.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>

namespace udon_native {
namespace {

using at::Tensor;

// Elements of a row block worth a thread (~1 ms at a few ns per element): smaller steps run on the
// calling thread, where waking the pool would cost more than the step.
constexpr int64_t kGrainElements = 1 << 18;

struct RowConstants {
  float decay, lerp_weight, beta2, grad_sq_weight, bias_correction2_sqrt, eps, neg_step_size;
  bool decay_on, lerp_small, maximize;
};

struct RowArgs {
  float *param, *exp_avg, *exp_avg_sq, *step;
  const float* grad;
  const int64_t* index;
  int64_t dim, vector_end;
  double lr, beta1, beta2, weight_decay, eps;
  bool maximize;
};

RowConstants row_constants(const RowArgs& a, double step) {
  const double bias_correction1 = 1 - std::pow(a.beta1, step);
  const double bias_correction2 = 1 - std::pow(a.beta2, step);
  const float lerp_weight = static_cast<float>(1 - a.beta1);
  return RowConstants{static_cast<float>(1 - a.lr * a.weight_decay), lerp_weight, static_cast<float>(a.beta2),
                      static_cast<float>(1 - a.beta2), static_cast<float>(std::sqrt(bias_correction2)),
                      static_cast<float>(a.eps), static_cast<float>(-(a.lr / bias_correction1)),
                      a.weight_decay != 0, std::abs(lerp_weight) < 0.5f, a.maximize};
}

// One element as torch's fused kernel computes it; kTail: its scalar tail loop (see the header).
template <bool kTail>
__attribute__((always_inline)) inline void element(float& p, float& m, float& v, float g, const RowConstants& c) {
  if (c.maximize) g = -g;
  if (c.decay_on) p = p * c.decay;
  const float diff = g - m;
  m = c.lerp_small ? std::fma(c.lerp_weight, diff, m) : std::fma(c.lerp_weight - 1.0f, diff, g);
  const float scaled = c.grad_sq_weight * g;
  v = kTail ? std::fma(v, c.beta2, scaled * g) : std::fma(scaled, g, v * c.beta2);
  const float denom = std::sqrt(v) / c.bias_correction2_sqrt + c.eps;
  p = p + c.neg_step_size * m / denom;
}

// Columns [d, end) of one row in the vector loop's arithmetic, eight at a time (AVX2 + FMA): the same
// IEEE operations per element as element<false>, so the same bits.
__attribute__((target("avx2,fma"))) int64_t vector_columns_avx2(float* p, float* m, float* v, const float* g,
                                                                int64_t end, const RowConstants& c) {
  const __m256 decay = _mm256_set1_ps(c.decay), beta2 = _mm256_set1_ps(c.beta2);
  const __m256 grad_sq_weight = _mm256_set1_ps(c.grad_sq_weight), eps = _mm256_set1_ps(c.eps);
  const __m256 bias_correction2_sqrt = _mm256_set1_ps(c.bias_correction2_sqrt);
  const __m256 neg_step_size = _mm256_set1_ps(c.neg_step_size);
  const __m256 lerp_coeff = _mm256_set1_ps(c.lerp_small ? c.lerp_weight : c.lerp_weight - 1.0f);
  const __m256 sign = _mm256_set1_ps(c.maximize ? -1.0f : 1.0f);
  int64_t d = 0;
  for (; d + 8 <= end; d += 8) {
    __m256 pv = _mm256_loadu_ps(p + d), mv = _mm256_loadu_ps(m + d), vv = _mm256_loadu_ps(v + d);
    const __m256 gv = _mm256_mul_ps(_mm256_loadu_ps(g + d), sign);
    if (c.decay_on) pv = _mm256_mul_ps(pv, decay);
    mv = _mm256_fmadd_ps(lerp_coeff, _mm256_sub_ps(gv, mv), c.lerp_small ? mv : gv);
    vv = _mm256_fmadd_ps(_mm256_mul_ps(grad_sq_weight, gv), gv, _mm256_mul_ps(vv, beta2));
    const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vv), bias_correction2_sqrt), eps);
    pv = _mm256_add_ps(pv, _mm256_div_ps(_mm256_mul_ps(neg_step_size, mv), denom));
    _mm256_storeu_ps(p + d, pv);
    _mm256_storeu_ps(m + d, mv);
    _mm256_storeu_ps(v + d, vv);
  }
  return d;
}

int64_t vector_columns_base(float*, float*, float*, const float*, int64_t, const RowConstants&) { return 0; }

template <int64_t (*kVectorColumns)(float*, float*, float*, const float*, int64_t, const RowConstants&)>
__attribute__((always_inline)) inline void step_row(const RowArgs& a, int64_t k) {
  const int64_t row = a.index[k];
  const RowConstants c = row_constants(a, static_cast<double>(a.step[row]));
  float* p = a.param + row * a.dim;
  float* m = a.exp_avg + row * a.dim;
  float* v = a.exp_avg_sq + row * a.dim;
  const float* g = a.grad + k * a.dim;
  int64_t d = kVectorColumns(p, m, v, g, a.vector_end, c);
  for (; d < a.vector_end; ++d) element<false>(p[d], m[d], v[d], g[d], c);
  for (; d < a.dim; ++d) element<true>(p[d], m[d], v[d], g[d], c);
}

// The same loop per instruction set (std::fma is one instruction with FMA, a correctly rounded libm call
// without), chosen once at run time.
#define UDON_DEFINE_ROW_KERNEL(SUFFIX, TARGET)                                  \
  TARGET void step_rows_##SUFFIX(const RowArgs& a, int64_t begin, int64_t end) { \
    for (int64_t k = begin; k < end; ++k) step_row<vector_columns_##SUFFIX>(a, k); \
  }
UDON_DEFINE_ROW_KERNEL(avx2, __attribute__((target("avx2,fma"))))
UDON_DEFINE_ROW_KERNEL(base, )

using RowKernel = void (*)(const RowArgs&, int64_t, int64_t);

RowKernel row_kernel() {
  static const RowKernel chosen = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? step_rows_avx2 : step_rows_base;
  }();
  return chosen;
}

void check_state(const Tensor& t, const Tensor& param, const char* name) {
  TORCH_CHECK(t.sizes() == param.sizes() && t.scalar_type() == at::kFloat && t.is_contiguous(),
              "udon_fast_native.row_adamw_: ", name, " must be a contiguous float32 tensor shaped like param");
}

void row_adamw_(const Tensor& param, const Tensor& exp_avg, const Tensor& exp_avg_sq, const Tensor& step,
                const Tensor& index, const Tensor& grad, const Tensor& lr, double beta1, double beta2,
                double weight_decay, double eps, bool maximize, int64_t vector_width,
                const std::optional<Tensor>& found_inf) {
  TORCH_CHECK(param.dim() == 2 && param.scalar_type() == at::kFloat && param.is_contiguous(),
              "udon_fast_native.row_adamw_: param must be a contiguous (C, D) float32 tensor");
  check_state(exp_avg, param, "exp_avg");
  check_state(exp_avg_sq, param, "exp_avg_sq");
  const int64_t classes = param.size(0), dim = param.size(1);
  TORCH_CHECK(step.dim() == 1 && step.size(0) == classes && step.scalar_type() == at::kFloat && step.is_contiguous(),
              "udon_fast_native.row_adamw_: step must be a contiguous (C,) float32 tensor");
  TORCH_CHECK(index.dim() == 1 && index.scalar_type() == at::kLong,
              "udon_fast_native.row_adamw_: index must be a (K,) int64 tensor");
  const int64_t rows = index.size(0);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == rows && grad.size(1) == dim && grad.scalar_type() == at::kFloat,
              "udon_fast_native.row_adamw_: grad must be a (K, D) float32 tensor");
  TORCH_CHECK(lr.numel() == 1, "udon_fast_native.row_adamw_: lr must hold one value");
  TORCH_CHECK(vector_width >= 1, "udon_fast_native.row_adamw_: vector_width must be >= 1");
  const Tensor index_c = index.contiguous(), grad_c = grad.contiguous();
  const int64_t* index_ptr = index_c.const_data_ptr<int64_t>();
  for (int64_t k = 0; k < rows; ++k) {
    TORCH_CHECK(index_ptr[k] >= 0 && index_ptr[k] < classes, "udon_fast_native.row_adamw_: index ", index_ptr[k],
                " outside [0, ", classes, ")");
  }
  float found = 0.0f;
  if (found_inf.has_value()) {
    TORCH_CHECK(found_inf->numel() == 1 && found_inf->scalar_type() == at::kFloat,
                "udon_fast_native.row_adamw_: found_inf must be one float32 value");
    found = found_inf->item<float>();
  }
  float* step_ptr = step.data_ptr<float>();
  for (int64_t k = 0; k < rows; ++k) step_ptr[index_ptr[k]] += 1.0f;
  if (found != 1.0f) {
    const RowArgs args{param.data_ptr<float>(), exp_avg.data_ptr<float>(), exp_avg_sq.data_ptr<float>(), step_ptr,
                       grad_c.const_data_ptr<float>(), index_ptr, dim, dim - dim % vector_width,
                       lr.item<double>(), beta1, beta2, weight_decay, eps, maximize};
    const RowKernel kernel = row_kernel();
    at::parallel_for(0, rows, std::max<int64_t>(1, kGrainElements / std::max<int64_t>(dim, 1)),
                     [&](int64_t begin, int64_t end) { kernel(args, begin, end); });
  }
  if (found_inf.has_value()) {
    for (int64_t k = 0; k < rows; ++k) step_ptr[index_ptr[k]] -= found;
  }
}

}  // namespace
}  // namespace udon_native

TORCH_LIBRARY_FRAGMENT(udon_fast_native, m) {
  m.def(
      "row_adamw_(Tensor(a!) param, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, Tensor(d!) step, Tensor index, "
      "Tensor grad, Tensor lr, float beta1, float beta2, float weight_decay, float eps, bool maximize, "
      "int vector_width, Tensor? found_inf) -> ()");
}

TORCH_LIBRARY_IMPL(udon_fast_native, CPU, m) {
  m.impl("row_adamw_", TORCH_FN(udon_native::row_adamw_));
}
