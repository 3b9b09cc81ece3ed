// C++ CPU pairwise distance with OpenMP.
#pragma once

#include "../common/array.h"

namespace reidfast {
namespace cpu {

// x (N, D), y (M, D): both float32 or both float64, unit inner stride, any row stride.
// out (N, M): contiguous, same dtype as the inputs. Metric semantics as in reidfast/reference/distance.py.
void pairwise_distance(const ArrayView& x, const ArrayView& y, const ArrayView& out, Metric metric);

}  // namespace cpu
}  // namespace reidfast
