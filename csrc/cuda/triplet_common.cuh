// What the batch-hard mining (triplet_mine.cu) and its backward (triplet_backward.cu) share: the check of the small per-anchor vectors.
#pragma once

#include <cstdint>

#include "../common/array.h"
#include "host_utils.h"
#include "warp.cuh"

namespace reidfast {
namespace cuda {
namespace triplet {

// A contiguous CUDA vector on the anchors' device.
inline void check_vector(const ArrayView& a, const char* name, int64_t length, DType dtype, int device) {
  check_cuda_vector(a, name, length, dtype, device, "anchors");
}

}  // namespace triplet
}  // namespace cuda
}  // namespace reidfast
