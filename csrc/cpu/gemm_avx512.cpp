// The fused distance micro-kernel for AVX-512 (F, DQ, BW, VL): an 8 x 32 register tile (16 zmm
// accumulators, two panel loads and eight broadcasts per step; 8, 12 and 14 rows measured the same on
// Zen 5, and 8 wastes the least on batch sizes that are multiples of 8). Only called after a run-time
// CPU check, so the module still loads and runs on any x86-64 (this file compiles to a stub elsewhere).
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

// Every function defined between push and pop is compiled for AVX-512; the headers above (and so the
// standard library's templates and gemm_internal.h's scalar helpers) keep the baseline instruction set.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,fma")
#endif

namespace reidfast {
namespace cpu {
namespace gemm {
namespace avx512 {
namespace {

using V = __m512;
constexpr int kW = 16;
constexpr int kMR = 8;
constexpr int kNV = 2;

inline V vzero() { return _mm512_setzero_ps(); }
inline V vset1(float x) { return _mm512_set1_ps(x); }
inline V vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, V x) { _mm512_storeu_ps(p, x); }
inline void vstore_mask(float* p, V x, uint32_t lanes) { _mm512_mask_storeu_ps(p, static_cast<__mmask16>(lanes), x); }
inline V vfma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline V vfnma(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a * b
inline V vadd(V a, V b) { return _mm512_add_ps(a, b); }
inline V vsub(V a, V b) { return _mm512_sub_ps(a, b); }
inline V vmul(V a, V b) { return _mm512_mul_ps(a, b); }
inline V vdiv(V a, V b) { return _mm512_div_ps(a, b); }
inline V vsqrt(V a) { return _mm512_sqrt_ps(a); }
// max(floor, x), but x where x is NaN (vmaxps returns its second operand when either is NaN).
inline V vmax_keep_nan(V floor, V x) { return _mm512_max_ps(floor, x); }
// x * 0 in the given lanes (so NaN stays NaN, as in epilogue.h).
inline V vzero_lanes(V x, uint32_t lanes) {
  return _mm512_mask_mul_ps(x, static_cast<__mmask16>(lanes), x, _mm512_setzero_ps());
}
inline uint32_t vle(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
inline uint32_t vge(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
inline uint32_t vnge(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_NGE_UQ); }  // !(a >= b): NaN passes
inline uint32_t vngt(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_NGT_UQ); }  // !(a > b): NaN passes
inline uint32_t veq_labels(const int32_t* labels, int32_t label) {
  return _mm512_cmpeq_epi32_mask(_mm512_loadu_si512(labels), _mm512_set1_epi32(label));
}
inline float vsum_squares(const float* data, int64_t n) {
  V sum0 = vzero(), sum1 = vzero();
  int64_t p = 0;
  for (; p + 2 * kW <= n; p += 2 * kW) {
    const V a = vload(data + p), b = vload(data + p + kW);
    sum0 = vfma(a, a, sum0);
    sum1 = vfma(b, b, sum1);
  }
  for (; p < n; p += kW) {
    const __mmask16 lanes = n - p >= kW ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - p)) - 1u);
    const V a = _mm512_maskz_loadu_ps(lanes, data + p);
    sum0 = vfma(a, a, sum0);
  }
  return _mm512_reduce_add_ps(vadd(sum0, sum1));
}

#include "gemm_isa.inc"

}  // namespace
}  // namespace avx512
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

const IsaKernels* avx512_kernels() {
  static const IsaKernels kernels{"avx512", avx512::kMR, avx512::kNR, &avx512::sq_norm, &avx512::pack_panel,
                                  &avx512::distance_tile, &avx512::topk_tile, &avx512::mine_tile,
                                  &avx512::rank_count_tile};
  return &kernels;
}

}  // namespace gemm
}  // namespace cpu
}  // namespace reidfast

#else  // no x86-64 SIMD (see gemm_internal.h)

namespace reidfast {
namespace cpu {
namespace gemm {
const IsaKernels* avx512_kernels() { return nullptr; }
}  // namespace gemm
}  // namespace cpu
}  // namespace reidfast

#endif
