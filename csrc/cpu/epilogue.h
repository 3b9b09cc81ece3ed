// The per-element epilogue shared by the CPU kernels: dot product + squared norms -> ranking key -> distance.
#pragma once

#include <algorithm>
#include <cmath>

#include "../common/array.h"

namespace reidfast {
namespace cpu {

// Rows are ranked by the distance itself (not, say, the squared euclidean distance): two pairs whose
// distances round to the same value then tie and go to the smaller index, exactly as in the reference.
// prekey() is a cheaper value that finish() maps monotonically (non-decreasing) onto the distance: the
// clamped squared distance for euclidean (finish = sqrt), the distance itself otherwise. Scans in increasing
// column order use it to reject most candidates without a sqrt: a candidate whose prekey cannot beat the
// current one cannot beat its distance either, and on a tie the earlier (smaller) column keeps its place.
template <typename T>
struct Epilogue {
  Metric metric;
  T x_sq_norm, x_length;

  Epilogue(Metric metric_, T x_sq_norm_)
      : metric(metric_), x_sq_norm(x_sq_norm_), x_length(std::max(std::sqrt(x_sq_norm_), static_cast<T>(kCosineEps))) {}

  T prekey(T dot, T y_sq_norm, bool is_self) const {
    if (metric == Metric::Cosine) {
      const T y_length = std::max(std::sqrt(y_sq_norm), static_cast<T>(kCosineEps));
      return T(1) - dot / (x_length * y_length);
    }
    // A row's distance to itself is exactly 0 (BLAS and the norms round differently), NaN stays NaN.
    const T raw = x_sq_norm + y_sq_norm - T(2) * dot;
    const T squared = is_self ? raw * T(0) : raw;
    return std::max(squared, metric == Metric::SqEuclidean ? T(0) : static_cast<T>(kEuclideanClamp));
  }

  T finish(T prekey_value) const { return metric == Metric::Euclidean ? std::sqrt(prekey_value) : prekey_value; }

  T distance(T dot, T y_sq_norm, bool is_self) const { return finish(prekey(dot, y_sq_norm, is_self)); }
};

}  // namespace cpu
}  // namespace reidfast
