// Device arithmetic shared by the CUDA kernels: element conversions, explicit FMAs, NaN-preserving clamps,
// staged-fragment loads and the distance epilogue. The kernels must round identically (the same FMAs in the
// same order for norms and dot products), so they share these rather than each keeping a copy.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "../common/array.h"

namespace reidfast {
namespace cuda {
namespace device {

__device__ __forceinline__ float widen(float value) { return value; }
__device__ __forceinline__ double widen(double value) { return value; }
__device__ __forceinline__ float widen(__half value) { return __half2float(value); }
__device__ __forceinline__ float widen(__nv_bfloat16 value) { return __bfloat162float(value); }

// Rounds an accumulator to the element type (to nearest even): the inverse of widen, e.g. narrow<__half>(x).
template <typename OutT, typename AccT>
__device__ __forceinline__ OutT narrow(AccT value);
template <>
__device__ __forceinline__ float narrow<float, float>(float value) { return value; }
template <>
__device__ __forceinline__ double narrow<double, double>(double value) { return value; }
template <>
__device__ __forceinline__ __half narrow<__half, float>(float value) { return __float2half_rn(value); }
template <>
__device__ __forceinline__ __nv_bfloat16 narrow<__nv_bfloat16, float>(float value) {
  return __float2bfloat16_rn(value);
}

template <typename T>
__device__ __forceinline__ T zero_of();
template <>
__device__ __forceinline__ float zero_of<float>() { return 0.0f; }
template <>
__device__ __forceinline__ double zero_of<double>() { return 0.0; }
template <>
__device__ __forceinline__ __half zero_of<__half>() { return __float2half_rn(0.0f); }
template <>
__device__ __forceinline__ __nv_bfloat16 zero_of<__nv_bfloat16>() { return __float2bfloat16_rn(0.0f); }

// Explicit fused multiply-adds: the dot products and the norms must round identically (see distance.cu, "Norms").
__device__ __forceinline__ float multiply_add(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double multiply_add(double a, double b, double c) { return fma(a, b, c); }

__device__ __forceinline__ float square_root(float value) { return sqrtf(value); }
__device__ __forceinline__ double square_root(double value) { return sqrt(value); }

// max(value, floor) that lets NaN through, like torch.clamp_min (fmax would replace NaN by floor).
template <typename T>
__device__ __forceinline__ T clamp_min(T value, T floor) {
  return value < floor ? floor : value;
}

// Four consecutive staged values starting at a 16-byte aligned address.
__device__ __forceinline__ void load_fragment(const float* source, float (&fragment)[4]) {
  const float4 packed = *reinterpret_cast<const float4*>(source);
  fragment[0] = packed.x;
  fragment[1] = packed.y;
  fragment[2] = packed.z;
  fragment[3] = packed.w;
}
__device__ __forceinline__ void load_fragment(const double* source, double (&fragment)[4]) {
  const double2 low = *reinterpret_cast<const double2*>(source);
  const double2 high = *reinterpret_cast<const double2*>(source + 2);
  fragment[0] = low.x;
  fragment[1] = low.y;
  fragment[2] = high.x;
  fragment[3] = high.y;
}

// What the epilogue needs per row: the squared norm for the euclidean metrics; for cosine the inverse
// clamped norm 1 / max(|x|, eps), computed once per row so that each output costs a multiply, not a divide.
template <typename AccT>
__device__ __forceinline__ AccT row_factor(AccT squared_norm, Metric metric) {
  if (metric != Metric::Cosine) return squared_norm;
  return AccT(1) / clamp_min(square_root(squared_norm), static_cast<AccT>(kCosineEps));
}

template <typename AccT>
__device__ __forceinline__ AccT finish_distance(AccT dot, AccT x_factor, AccT y_factor, Metric metric) {
  if (metric == Metric::Cosine) return AccT(1) - dot * x_factor * y_factor;  // factors are inverse norms
  const AccT squared = x_factor + y_factor - AccT(2) * dot;                  // factors are squared norms
  if (metric == Metric::SqEuclidean) return clamp_min(squared, AccT(0));
  return square_root(clamp_min(squared, static_cast<AccT>(kEuclideanClamp)));
}

}  // namespace device
}  // namespace cuda
}  // namespace reidfast
