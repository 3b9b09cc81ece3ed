// Pairwise distance on the CPU: row norms, then cache-blocked dot products with the epilogue fused.
//
// Blocking: a block of kRowBlock rows of x is scored against a block of kColBlock rows of y, both small
// enough to stay in L2 while every pair in the block is visited; each pair's dot product runs over the
// contiguous feature axis, which the compiler vectorises (omp simd reduction).
#include "distance.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <vector>

namespace reidfast {
namespace cpu {
namespace {

constexpr int64_t kRowBlock = 32;
constexpr int64_t kColBlock = 128;

template <typename T>
T dot(const T* a, const T* b, int64_t length) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < length; ++k) sum += a[k] * b[k];
  return sum;
}

template <typename T>
std::vector<T> squared_norms(const ArrayView& a) {
  const int64_t rows = a.size(0), dim = a.size(1), row_stride = a.stride(0);
  const T* data = a.ptr<T>();
  std::vector<T> norms(static_cast<size_t>(rows));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows; ++i) norms[i] = dot(data + i * row_stride, data + i * row_stride, dim);
  return norms;
}

template <typename T>
T epilogue(T dot_xy, T norm_x, T norm_y, Metric metric) {
  switch (metric) {
    case Metric::Cosine: {
      const T eps = static_cast<T>(kCosineEps);
      return T(1) - dot_xy / (std::max(std::sqrt(norm_x), eps) * std::max(std::sqrt(norm_y), eps));
    }
    case Metric::SqEuclidean:
      return std::max(norm_x + norm_y - T(2) * dot_xy, T(0));
    case Metric::Euclidean:
    default:
      return std::sqrt(std::max(norm_x + norm_y - T(2) * dot_xy, static_cast<T>(kEuclideanClamp)));
  }
}

template <typename T>
void pairwise_distance_typed(const ArrayView& x, const ArrayView& y, const ArrayView& out, Metric metric) {
  const int64_t n = x.size(0), m = y.size(0), dim = x.size(1);
  const int64_t x_stride = x.stride(0), y_stride = y.stride(0);
  const T* x_data = x.ptr<T>();
  const T* y_data = y.ptr<T>();
  T* out_data = out.ptr<T>();
  const std::vector<T> x_norms = squared_norms<T>(x);
  const std::vector<T> y_norms = squared_norms<T>(y);

  const int64_t row_blocks = (n + kRowBlock - 1) / kRowBlock;
  const int64_t col_blocks = (m + kColBlock - 1) / kColBlock;
#pragma omp parallel for collapse(2) schedule(dynamic)
  for (int64_t rb = 0; rb < row_blocks; ++rb) {
    for (int64_t cb = 0; cb < col_blocks; ++cb) {
      const int64_t row_end = std::min(n, (rb + 1) * kRowBlock);
      const int64_t col_end = std::min(m, (cb + 1) * kColBlock);
      for (int64_t i = rb * kRowBlock; i < row_end; ++i) {
        const T* x_row = x_data + i * x_stride;
        T* out_row = out_data + i * m;
        for (int64_t j = cb * kColBlock; j < col_end; ++j) {
          const T dot_xy = dot(x_row, y_data + j * y_stride, dim);
          out_row[j] = epilogue(dot_xy, x_norms[i], y_norms[j], metric);
        }
      }
    }
  }
}

}  // namespace

void pairwise_distance(const ArrayView& x, const ArrayView& y, const ArrayView& out, Metric metric) {
  check_matrix(x, "x", /*want_cuda=*/false);
  check_matrix(y, "y", /*want_cuda=*/false);
  check_matrix(out, "out", /*want_cuda=*/false);
  std::ostringstream why;
  if (x.size(1) != y.size(1)) {
    why << "y: expected " << x.size(1) << " features per row to match x, got " << y.size(1);
    fail(why.str());
  }
  if (x.dtype != y.dtype || (x.dtype != DType::Float32 && x.dtype != DType::Float64)) {
    why << "x, y: the CPU kernel takes two float32 or two float64 arrays, got " << dtype_name(x.dtype) << " and "
        << dtype_name(y.dtype);
    fail(why.str());
  }
  check(out.dtype == x.dtype, std::string("out: expected dtype ") + dtype_name(x.dtype));
  check(out.size(0) == x.size(0) && out.size(1) == y.size(0) && (x.size(0) <= 1 || out.stride(0) == y.size(0)),
        "out: expected a contiguous (N, M) array");
  if (x.dtype == DType::Float32) {
    pairwise_distance_typed<float>(x, y, out, metric);
  } else {
    pairwise_distance_typed<double>(x, y, out, metric);
  }
}

}  // namespace cpu
}  // namespace reidfast
