// Eight-lane float vectors (GCC vector extensions) and the vectorised exp of the head-loss epilogue.
//
// Everything here is always_inline: the same source is compiled into a baseline (x86-64-v2, two SSE
// registers per vector) and an AVX2+FMA (one YMM register) instance of each epilogue function in
// head_epilogue.h, chosen at run time, so these helpers take the instruction set of their caller.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

namespace udon_native {

#define UDON_INLINE inline __attribute__((always_inline))

typedef float f8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));

constexpr int64_t kLanes = 8;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

UDON_INLINE f8 splat(float x) { return f8{} + x; }
UDON_INLINE i8 splat_i(int32_t x) { return i8{} + x; }
UDON_INLINE i8 iota() { return i8{0, 1, 2, 3, 4, 5, 6, 7}; }

// Unaligned load / store of 8 floats.
UDON_INLINE f8 load(const float* p) {
  f8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
UDON_INLINE void store(float* p, f8 v) { std::memcpy(p, &v, sizeof v); }

// Store the first n (< 8) lanes only.
UDON_INLINE void store_partial(float* p, f8 v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) p[i] = v[i];
}

UDON_INLINE f8 vmax(f8 a, f8 b) { return a > b ? a : b; }

// Fixed-order horizontal reductions (bitwise reproducible).
UDON_INLINE float hsum(f8 v) {
  return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
}
UDON_INLINE float hmax(f8 v) {
  float m = v[0];
  for (int i = 1; i < 8; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

// exp(x) for 8 lanes, ~1 ulp on [-87.3, 88] (Cephes expf: Cody-Waite reduction by ln 2, degree-6
// polynomial, exponent by integer shift).  Lanes below -87.3 (including -inf) give exactly 0; the
// arguments of the epilogue are logits minus a running max, so they are <= ~0.
UDON_INLINE f8 vexp(f8 x) {
  const i8 underflow = x < splat(-87.33654f);
  x = x < splat(-87.33654f) ? splat(-87.33654f) : x;
  x = x > splat(88.0f) ? splat(88.0f) : x;
  f8 k = x * 1.44269504088896341f + 12582912.0f;  // round(x / ln 2) via the 1.5 * 2^23 trick
  k = k - 12582912.0f;
  f8 r = x - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  f8 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const f8 y = p * r * r + r + 1.0f;
  const i8 bits = (__builtin_convertvector(k, i8) + 127) << 23;
  const f8 result = y * __builtin_bit_cast(f8, bits);
  return underflow ? splat(0.0f) : result;
}

}  // namespace udon_native
