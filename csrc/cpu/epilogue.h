// The per-element epilogue shared by the CPU kernels: dot product + squared norms -> ranking key -> distance.
#pragma once

#include <algorithm>
#include <cmath>

#include "../common/array.h"

namespace reidfast {
namespace cpu {

// Rows are ranked by the distance itself (not, say, the squared euclidean distance): two pairs whose
// distances round to the same value then tie and go to the smaller index, exactly as in the reference.
template <typename T>
struct Epilogue {
  Metric metric;
  T x_sq_norm, x_length;

  Epilogue(Metric metric_, T x_sq_norm_)
      : metric(metric_), x_sq_norm(x_sq_norm_), x_length(std::max(std::sqrt(x_sq_norm_), static_cast<T>(kCosineEps))) {}

  T distance(T dot, T y_sq_norm, bool is_self) const {
    if (metric == Metric::Cosine) {
      const T y_length = std::max(std::sqrt(y_sq_norm), static_cast<T>(kCosineEps));
      return T(1) - dot / (x_length * y_length);
    }
    // A row's distance to itself is exactly 0 (BLAS and the norms round differently), NaN stays NaN.
    const T raw = x_sq_norm + y_sq_norm - T(2) * dot;
    const T squared = is_self ? raw * T(0) : raw;
    return metric == Metric::SqEuclidean ? std::max(squared, T(0))
                                         : std::sqrt(std::max(squared, static_cast<T>(kEuclideanClamp)));
  }
};

}  // namespace cpu
}  // namespace reidfast
