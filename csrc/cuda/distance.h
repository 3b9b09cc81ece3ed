// CUDA pairwise distance (compiled only when REIDFAST_WITH_CUDA is defined).
#pragma once

#include <cstdint>

#include "../common/array.h"

namespace reidfast {
namespace cuda {

// x (N, D), y (M, D): same dtype among float32/float64/float16/bfloat16, unit inner stride, any row
// stride, on the same CUDA device. out (N, M): contiguous, float64 for float64 inputs, else float32.
// Runs asynchronously on `stream` (a cudaStream_t passed as an integer; 0 = legacy default stream).
void pairwise_distance(const ArrayView& x, const ArrayView& y, const ArrayView& out, Metric metric,
                       std::uintptr_t stream);

// Runtime facts for reidfast.backends(): number of visible devices (0 when the driver is missing),
// and the CUDA runtime version the module was built against (e.g. 13000).
int device_count();
int runtime_version();

}  // namespace cuda
}  // namespace reidfast
