// Rank counting fused into the distance tile on the GPU: the counting pass of evaluation straight from
// features (reidfast/ops/evaluate_features_cuda.py). Contract: rank_count.h; rule: csrc/cpu/rank_count.cpp.
//
// Work split
//   grid = row tiles x column chunks, as topk.cu's scan kernel. A block owns 64 query rows and walks the
//   64-column tiles of its chunk of the gallery block. Per tile it computes the 64 x 64 distances exactly as
//   distance.cu and topk.cu do (tile64.cuh multiply_tile + device::finish_distance: the same float for every
//   entry, whatever its tile or chunk), and the epilogue (rank_count.cuh) counts them in place: no distance
//   is written anywhere.
// Epilogue
//   At the start the block stages, per row, its first pivot, pivot count, label and farthest pivot's key
//   (distance, gallery index) in shared memory. An entry is counted iff its key is not after the farthest
//   pivot's (one or two compares: most items of a large gallery are after it), its item's label is not the
//   row's, and it is not NaN; a survivor's slot is a binary search over the row's sorted pivots (global memory,
//   cached: a query has tens of matches), and one 64-bit atomicAdd puts it in the histogram. Integer atomics
//   commute, so the histogram does not depend on the schedule. NaNs are counted per thread and added once.
// Cost
//   The distances: 2 N M D flops, as distance.cu, with no N x M store; the epilogue: O(N M) compares plus
//   O(log matches) per survivor (items ranked before a query's last match: few for a useful model).
// Memory: none beyond the inputs and the histogram. 64-bit offsets throughout (rows, items, pivots, slots).
#include "rank_count.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <sstream>
#include <string>

#include "cuda_check.h"
#include "device_math.cuh"
#include "host_utils.h"
#include "launch.cuh"
#include "rank_count.cuh"
#include "tile64.cuh"

namespace reidfast {
namespace cuda {
namespace {

using namespace device;      // NOLINT: the shared arithmetic of device_math.cuh
using namespace tile64;      // NOLINT: the shared 64 x 64 tile product (tile64.cuh)
using namespace counting;    // NOLINT: the counting epilogue (rank_count.cuh)

constexpr int64_t kTargetBlocks = 1024;  // blocks to aim for when chunking the gallery axis (no merge to pay)

// Resident blocks per SM the registers are sized for: 2 (<= 128 registers) for float accumulation, 1 for
// float64. With 3 (<= 80 registers, as distance.cu) ptxas spilled 32 bytes to the stack on sm_80 (the epilogue's
// 64-bit pivot and item indices); tests/test_cuda_resources.py checks that neither spills.
template <typename AccT>
constexpr int kRankCountBlocksPerSM = sizeof(AccT) == 4 ? 2 : 1;

// Block (blockIdx.x, blockIdx.y) = (row tile, chunk): counts the entries of rows [row0, row0 + 64) of x against
// the gallery tiles [chunk * tiles_per_chunk, ...) of y into `histogram`, and their NaNs into *nan_count.
template <typename InT, typename AccT>
__global__ void __launch_bounds__(kThreads, kRankCountBlocksPerSM<AccT>)
    rank_count_kernel(const InT* __restrict__ x, const InT* __restrict__ y, TileShape shape, int64_t first_item,
                      int tiles_per_chunk, int col_tiles, Metric metric, Pivots<AccT> pivots,
                      unsigned long long* __restrict__ histogram, unsigned long long* __restrict__ nan_count) {
  __shared__ TileShared<AccT> shared;
  __shared__ RowBounds<AccT> bounds;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  const int first_tile = static_cast<int>(blockIdx.y) * tiles_per_chunk;
  const int end_tile = min(first_tile + tiles_per_chunk, col_tiles);
  const int thread_row = threadIdx.x / kThreadsAlongCols;
  const int thread_col = threadIdx.x % kThreadsAlongCols;
  stage_rows(pivots, shape.x_rows, row0, bounds);  // read after the tile product's barriers

  unsigned long long nans = 0;
  // One micro-row at a time (no warp collectives here: threads may leave the loop early).
  const auto count_tile = [&](int64_t col0, const AccT(&dots)[kMicroRows][kMicroCols],
                              const AccT(&col_factors)[kMicroCols]) {
#pragma unroll 1
    for (int i = 0; i < kMicroRows; ++i) {
      const int local_row = thread_row * kMicroRows + i;
      if (row0 + local_row >= shape.x_rows) break;  // rows only increase with i
      AccT row_dots[kMicroCols];
      select_micro_row(dots, i, row_dots);
      const AccT row_factor_i = shared.x_factors[local_row];
      AccT values[kMicroCols];
#pragma unroll
      for (int j = 0; j < kMicroCols; ++j) values[j] = finish_distance(row_dots[j], row_factor_i, col_factors[j], metric);
      nans += count_entries(pivots, bounds, local_row, values, col0 + thread_col * kMicroCols, shape.y_rows, first_item,
                            histogram);
    }
  };
  for_each_tile(x, y, shape, row0, first_tile, end_tile, metric, shared, count_tile);
  if (nans != 0) atomicAdd(nan_count, nans);
}

// ---- host side -------------------------------------------------------------------------------------------

struct Plan {
  int64_t row_tiles = 0;
  int64_t col_tiles = 0;
  int64_t tiles_per_chunk = 0;
  int64_t chunks = 0;
};

// Launch geometry for N rows and M columns (both >= 1): the gallery tiles cut into chunks so that the grid has
// about kTargetBlocks blocks (at most min(col_tiles, kTargetBlocks) chunks: within gridDim.y's 65535).
Plan plan_for(int64_t num_rows, int64_t num_cols) {
  Plan plan;
  plan.row_tiles = ceil_div(num_rows, kTileRows);
  plan.col_tiles = ceil_div(num_cols, kTileCols);
  const int64_t chunks_target =
      std::max<int64_t>(1, std::min(plan.col_tiles, ceil_div(kTargetBlocks, plan.row_tiles)));
  plan.tiles_per_chunk = ceil_div(plan.col_tiles, chunks_target);
  plan.chunks = ceil_div(plan.col_tiles, plan.tiles_per_chunk);  // every chunk has at least one tile
  return plan;
}

// An Int64 vector on the device of x covering the items [0, first_item + cols), or null.
void check_item_vector(const ArrayView* a, const char* name, int64_t first_item, int64_t cols, int device) {
  if (a == nullptr) return;
  check_cuda_vector(*a, name, -1, DType::Int64, device, "query");
  if (a->size(0) < first_item + cols) {
    std::ostringstream why;
    why << name << ": expected at least " << first_item + cols << " entries (first_item + gallery rows), got "
        << a->size(0);
    fail(why.str());
  }
}

// All argument checks, before any CUDA call (so they also run, and fail clearly, without a GPU).
void validate(const ArrayView& x, const ArrayView& y, int64_t first_item, Metric metric,
              const ArrayView& pivot_offsets, const ArrayView& pivot_distance, const ArrayView& pivot_index,
              const ArrayView* row_labels, const ArrayView* item_labels, const ArrayView* groups, int64_t num_groups,
              const ArrayView& histogram, const ArrayView& nan_count) {
  check_feature_pair(x, y, "query", "gallery");
  std::ostringstream why;
  const int device = x.device;
  if (y.device != device) {
    why << "gallery: expected device cuda:" << device << " (that of query), got cuda:" << y.device;
    fail(why.str());
  }
  if (metric != Metric::Euclidean && metric != Metric::SqEuclidean && metric != Metric::Cosine) {
    why << "metric: unknown code " << static_cast<int>(metric);
    fail(why.str());
  }
  if (first_item < 0) {
    why << "first_item: expected >= 0, got " << first_item;
    fail(why.str());
  }
  const int64_t rows = x.size(0), cols = y.size(0);
  const DType distance_dtype = x.dtype == DType::Float64 ? DType::Float64 : DType::Float32;
  check_cuda_vector(pivot_offsets, "pivot_offsets", rows + 1, DType::Int64, device, "query");
  check_cuda_vector(pivot_distance, "pivot_distance", -1, distance_dtype, device, "query");
  const int64_t num_pivots = pivot_distance.size(0);
  check_cuda_vector(pivot_index, "pivot_index", num_pivots, DType::Int64, device, "query");
  if ((row_labels == nullptr) != (item_labels == nullptr)) fail("row_labels, item_labels: expected both or neither");
  if (row_labels != nullptr) check_cuda_vector(*row_labels, "row_labels", rows, DType::Int64, device, "query");
  check_item_vector(item_labels, "item_labels", first_item, cols, device);
  check_item_vector(groups, "groups", first_item, cols, device);
  if (num_groups < 1 || (groups == nullptr && num_groups != 1)) {
    why << "num_groups: expected " << (groups == nullptr ? "1 without groups" : ">= 1") << ", got " << num_groups;
    fail(why.str());
  }
  check_cuda_vector(histogram, "histogram", num_pivots * num_groups, DType::Int64, device, "query");
  check_cuda_vector(nan_count, "nan_count", 1, DType::Int64, device, "query");
  if (ceil_div(rows, kTileRows) > INT_MAX || ceil_div(cols, kTileCols) > INT_MAX) {
    why << "query, gallery: (" << rows << ", " << cols << ") needs more blocks than one CUDA launch can cover; "
        << "split the gallery";
    fail(why.str());
  }
}

// The pivot, label and group arrays of a call, as the host entry point receives them.
struct PivotViews {
  const ArrayView& offsets;
  const ArrayView& distance;
  const ArrayView& index;
  const ArrayView* row_labels;
  const ArrayView* item_labels;
  const ArrayView* groups;
  int64_t num_groups;

  template <typename AccT>
  Pivots<AccT> device_pointers() const {
    return Pivots<AccT>{offsets.ptr<int64_t>(),
                        distance.ptr<AccT>(),
                        index.ptr<int64_t>(),
                        row_labels != nullptr ? row_labels->ptr<int64_t>() : nullptr,
                        item_labels != nullptr ? item_labels->ptr<int64_t>() : nullptr,
                        groups != nullptr ? groups->ptr<int64_t>() : nullptr,
                        num_groups};
  }
};

template <typename InT, typename AccT>
void launch_rank_count(const ArrayView& x, const ArrayView& y, int64_t first_item, Metric metric,
                       const PivotViews& pivots, const ArrayView& histogram, const ArrayView& nan_count,
                       cudaStream_t stream) {
  const TileShape shape{x.size(0), y.size(0), x.size(1), x.stride(0), y.stride(0)};
  const Plan plan = plan_for(shape.x_rows, shape.y_rows);
  const auto kernel = rank_count_kernel<InT, AccT>;
  const dim3 grid(static_cast<unsigned>(plan.row_tiles), static_cast<unsigned>(plan.chunks));
  REIDFAST_LAUNCH(kernel, grid, kThreads, 0, stream)(
      x.ptr<const InT>(), y.ptr<const InT>(), shape, first_item, static_cast<int>(plan.tiles_per_chunk),
      static_cast<int>(plan.col_tiles), metric, pivots.device_pointers<AccT>(), histogram.ptr<unsigned long long>(),
      nan_count.ptr<unsigned long long>());
  REIDFAST_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void rank_count(const ArrayView& x, const ArrayView& y, int64_t first_item, Metric metric,
                const ArrayView& pivot_offsets, const ArrayView& pivot_distance, const ArrayView& pivot_index,
                const ArrayView* row_labels, const ArrayView* item_labels, const ArrayView* groups, int64_t num_groups,
                const ArrayView& histogram, const ArrayView& nan_count, std::uintptr_t stream) {
  validate(x, y, first_item, metric, pivot_offsets, pivot_distance, pivot_index, row_labels, item_labels, groups,
           num_groups, histogram, nan_count);
  if (x.size(0) == 0 || y.size(0) == 0) return;  // nothing to count (a 0-block grid is an error)

  // `stream` must belong to x.device (the Python layer passes torch.cuda.current_stream(x.device)).
  DeviceGuard device_guard(x.device);
  const cudaStream_t cuda_stream = reinterpret_cast<cudaStream_t>(stream);
  const PivotViews pivots{pivot_offsets, pivot_distance, pivot_index, row_labels, item_labels, groups, num_groups};
  switch (x.dtype) {
    case DType::Float32:
      launch_rank_count<float, float>(x, y, first_item, metric, pivots, histogram, nan_count, cuda_stream);
      break;
    case DType::Float64:
      launch_rank_count<double, double>(x, y, first_item, metric, pivots, histogram, nan_count, cuda_stream);
      break;
    case DType::Float16:
      launch_rank_count<__half, float>(x, y, first_item, metric, pivots, histogram, nan_count, cuda_stream);
      break;
    case DType::BFloat16:
      launch_rank_count<__nv_bfloat16, float>(x, y, first_item, metric, pivots, histogram, nan_count, cuda_stream);
      break;
    default:
      fail(std::string("query: unsupported dtype ") + dtype_name(x.dtype));  // unreachable after validate()
  }
}

}  // namespace cuda
}  // namespace reidfast
