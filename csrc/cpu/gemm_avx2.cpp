// The fused distance micro-kernel for AVX2 + FMA: a 6 x 16 register tile (12 ymm accumulators, two panel
// loads and one broadcast per step). Only called after a run-time CPU check, so the module still loads
// and runs on any x86-64 (and this file compiles to a stub elsewhere).
#include "gemm_internal.h"

#if REIDFAST_X86_SIMD

// GCC 12's own intrinsic headers trip -Wmaybe-uninitialized on _mm512_undefined_ps() (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#define REIDFAST_ALWAYS_INLINE __attribute__((always_inline))

// Every function defined between push and pop is compiled for AVX2 + FMA; the headers above (and so the
// standard library's templates and gemm_internal.h's scalar helpers) keep the baseline instruction set.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

namespace reidfast {
namespace cpu {
namespace gemm {
namespace avx2 {
namespace {

using V = __m256;
constexpr int kW = 8;
constexpr int kMR = 6;
constexpr int kNV = 2;

// All-ones in lane l where bit l of `lanes` is set.
inline __m256i lane_mask(uint32_t lanes) {
  const __m256i bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(lanes)), bits), bits);
}

inline V vzero() { return _mm256_setzero_ps(); }
inline V vset1(float x) { return _mm256_set1_ps(x); }
inline V vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, V x) { _mm256_storeu_ps(p, x); }
inline void vstore_mask(float* p, V x, uint32_t lanes) {
  if (lanes == 0xFFu) {
    _mm256_storeu_ps(p, x);
  } else {
    _mm256_maskstore_ps(p, lane_mask(lanes), x);
  }
}
inline V vfma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
inline V vfnma(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }  // c - a * b
inline V vadd(V a, V b) { return _mm256_add_ps(a, b); }
inline V vsub(V a, V b) { return _mm256_sub_ps(a, b); }
inline V vmul(V a, V b) { return _mm256_mul_ps(a, b); }
inline V vdiv(V a, V b) { return _mm256_div_ps(a, b); }
inline V vsqrt(V a) { return _mm256_sqrt_ps(a); }
// max(floor, x), but x where x is NaN (vmaxps returns its second operand when either is NaN).
inline V vmax_keep_nan(V floor, V x) { return _mm256_max_ps(floor, x); }
// x * 0 in the given lanes (so NaN stays NaN, as in epilogue.h).
inline V vzero_lanes(V x, uint32_t lanes) {
  return _mm256_blendv_ps(x, _mm256_mul_ps(x, _mm256_setzero_ps()), _mm256_castsi256_ps(lane_mask(lanes)));
}
inline uint32_t vle(V a, V b) { return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_LE_OQ))); }
inline uint32_t vge(V a, V b) { return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GE_OQ))); }
inline uint32_t vnge(V a, V b) {  // !(a >= b): NaN passes
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_NGE_UQ)));
}
inline uint32_t vngt(V a, V b) {  // !(a > b): NaN passes
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_NGT_UQ)));
}
inline uint32_t veq_labels(const int32_t* labels, int32_t label) {
  const __m256i equal = _mm256_cmpeq_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(labels)),
                                           _mm256_set1_epi32(label));
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(equal)));
}
inline float vsum_squares(const float* data, int64_t n) {
  V sum0 = vzero(), sum1 = vzero();
  int64_t p = 0;
  for (; p + 2 * kW <= n; p += 2 * kW) {
    const V a = vload(data + p), b = vload(data + p + kW);
    sum0 = vfma(a, a, sum0);
    sum1 = vfma(b, b, sum1);
  }
  alignas(32) float lanes[kW];
  vstore(lanes, vadd(sum0, sum1));
  float total = 0.0f;
  for (int l = 0; l < kW; ++l) total += lanes[l];
  for (; p < n; ++p) total += data[p] * data[p];
  return total;
}

#include "gemm_isa.inc"

}  // namespace
}  // namespace avx2
}  // namespace gemm
}  // namespace cpu
}  // namespace reidfast

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

namespace reidfast {
namespace cpu {
namespace gemm {

const IsaKernels* avx2_kernels() {
  static const IsaKernels kernels{"avx2", avx2::kMR, avx2::kNR, &avx2::sq_norm, &avx2::pack_panel,
                                  &avx2::distance_tile, &avx2::topk_tile, &avx2::mine_tile,
                                  &avx2::rank_count_tile};
  return &kernels;
}

}  // namespace gemm
}  // namespace cpu
}  // namespace reidfast

#else  // no x86-64 SIMD (see gemm_internal.h)

namespace reidfast {
namespace cpu {
namespace gemm {
const IsaKernels* avx2_kernels() { return nullptr; }
}  // namespace gemm
}  // namespace cpu
}  // namespace reidfast

#endif
