// Launch plan and argument checks of the CUDA top-k kernels (topk.cu): host code, no kernels, so that the
// checks also run, and fail clearly, without a GPU. See "Chunks and workspace" in topk.cu.
#pragma once

#include <cstdint>

#include "../common/array.h"

namespace reidfast {
namespace cuda {
namespace topk {

constexpr int kMergeRowsPerBlock = 8;  // merge kernel: one warp of its 256 threads per row

struct Plan {
  int64_t row_tiles = 0;
  int64_t col_tiles = 0;
  int64_t tiles_per_chunk = 0;
  int64_t chunks = 0;
  int64_t workspace_bytes = 0;
};

// Launch geometry and workspace for N rows, M columns, k; see "Chunks and workspace". N, M >= 0, k >= 1.
Plan plan_for(int64_t num_rows, int64_t num_cols, int64_t k);

// All argument checks of topk_distance (topk.h), before any CUDA call; the plan of a valid call.
Plan validate(const ArrayView& x, const ArrayView& y, int64_t k, Metric metric, bool exclude_self,
              const ArrayView& values, const ArrayView& indices, const ArrayView& workspace);

}  // namespace topk
}  // namespace cuda
}  // namespace reidfast
