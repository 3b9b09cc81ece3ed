// Launch plan and argument checks of the CUDA top-k kernels (topk_plan.h); the kernels are in topk.cu.
#include "topk_plan.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <sstream>
#include <string>

#include "host_utils.h"
#include "tile64.cuh"
#include "topk.h"

namespace reidfast {
namespace cuda {
namespace topk {
namespace {

using tile64::kTileCols;
using tile64::kTileRows;

constexpr int64_t kTargetBlocks = 256;           // blocks to aim for when chunking the y axis
constexpr int64_t kMinChunkColumnsPerK = 2;      // a chunk covers at least 2k columns
constexpr int64_t kWorkspaceBytesPerEntry = 16;  // one slot per entry, whatever the dtype

// An (N, k) contiguous output of `dtype` on `device`.
void check_output(const ArrayView& a, const char* name, int64_t rows, int64_t k, DType dtype, int device) {
  check_matrix(a, name, /*want_cuda=*/true);
  std::ostringstream why;
  if (a.dtype != dtype) {
    why << name << ": expected dtype " << dtype_name(dtype) << ", got " << dtype_name(a.dtype);
    fail(why.str());
  }
  if (a.size(0) != rows || a.size(1) != k) {
    why << name << ": expected shape (" << rows << ", " << k << "), got (" << a.size(0) << ", " << a.size(1) << ")";
    fail(why.str());
  }
  if (a.size(0) > 1 && a.stride(0) != a.size(1)) {
    why << name << ": expected a contiguous array (row stride " << a.size(1) << "), got row stride " << a.stride(0);
    fail(why.str());
  }
  if (a.device != device) {
    why << name << ": expected device cuda:" << device << " (that of x), got cuda:" << a.device;
    fail(why.str());
  }
}

}  // namespace

Plan plan_for(int64_t num_rows, int64_t num_cols, int64_t k) {
  Plan plan;
  if (num_rows == 0 || num_cols == 0) return plan;  // nothing to launch
  plan.row_tiles = ceil_div(num_rows, kTileRows);
  plan.col_tiles = ceil_div(num_cols, kTileCols);
  const int64_t chunks_target =
      std::max<int64_t>(1, std::min(plan.col_tiles, ceil_div(kTargetBlocks, plan.row_tiles)));
  const int64_t min_tiles = std::max<int64_t>(1, ceil_div(kMinChunkColumnsPerK * k, kTileCols));
  plan.tiles_per_chunk = std::max(ceil_div(plan.col_tiles, chunks_target), min_tiles);
  plan.chunks = ceil_div(plan.col_tiles, plan.tiles_per_chunk);  // every chunk has at least one tile
  plan.workspace_bytes = num_rows * plan.chunks * k * kWorkspaceBytesPerEntry;
  return plan;
}

Plan validate(const ArrayView& x, const ArrayView& y, int64_t k, Metric metric, bool exclude_self,
              const ArrayView& values, const ArrayView& indices, const ArrayView& workspace) {
  check_feature_pair(x, y);
  std::ostringstream why;
  if (y.device != x.device) {
    why << "y: expected device cuda:" << x.device << " (that of x), got cuda:" << y.device;
    fail(why.str());
  }
  if (metric != Metric::Euclidean && metric != Metric::SqEuclidean && metric != Metric::Cosine) {
    why << "metric: unknown code " << static_cast<int>(metric);
    fail(why.str());
  }
  const int64_t num_rows = x.size(0), num_cols = y.size(0);
  if (num_cols > INT32_MAX) {
    why << "y: at most " << INT32_MAX << " rows are supported, got " << num_cols;
    fail(why.str());
  }
  if (exclude_self && num_rows != num_cols) {
    why << "exclude_self: expected x and y to be the same array (as many rows), got " << num_rows << " and "
        << num_cols << " rows";
    fail(why.str());
  }
  const int64_t max_k = std::min<int64_t>(kTopkMaxK, num_cols - (exclude_self ? 1 : 0));
  if (k < 1 || k > max_k) {
    why << "k: expected 1 <= k <= " << max_k << " (min(" << kTopkMaxK << ", " << num_cols << " rows of y"
        << (exclude_self ? " - 1 for exclude_self" : "") << ")), got " << k;
    fail(why.str());
  }
  const DType value_dtype = x.dtype == DType::Float64 ? DType::Float64 : DType::Float32;
  check_output(values, "values", num_rows, k, value_dtype, x.device);
  check_output(indices, "indices", num_rows, k, DType::Int64, x.device);

  const Plan plan = plan_for(num_rows, num_cols, k);
  check_workspace(workspace, plan.workspace_bytes,
                  "topk_distance_workspace_bytes(" + std::to_string(num_rows) + ", " + std::to_string(num_cols) +
                      ", " + std::to_string(k) + ")",
                  x.device, "x", 16);
  if (plan.row_tiles > INT_MAX || ceil_div(num_rows, kMergeRowsPerBlock) > INT_MAX) {
    why << "x: " << num_rows << " rows need more blocks than one CUDA launch can cover; split x";
    fail(why.str());
  }
  return plan;
}

}  // namespace topk

int64_t topk_distance_workspace_bytes(int64_t num_rows, int64_t num_cols, int64_t k) {
  std::ostringstream why;
  if (num_rows < 0 || num_cols < 0) {
    why << "topk_distance_workspace_bytes: expected non-negative sizes, got (" << num_rows << ", " << num_cols << ")";
    fail(why.str());
  }
  if (k < 1 || k > kTopkMaxK) {
    why << "k: expected 1 <= k <= " << kTopkMaxK << ", got " << k;
    fail(why.str());
  }
  return topk::plan_for(num_rows, num_cols, k).workspace_bytes;
}

}  // namespace cuda
}  // namespace reidfast
