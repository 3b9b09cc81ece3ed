// The 64 x 64 tile product shared by the distance, top-k and rank-counting kernels (distance.cu, topk.cu,
// rank_count.cu): block shape, staging of 64 x 16 slabs through shared memory, the per-slab update of a
// thread's 4 x 4 micro-tile of dot products and of the row norms, the walk over the feature axis of one tile
// (multiply_tile) and over a run of tiles (for_each_tile). Every kernel finishes an entry with
// device::finish_distance on the same dots and factors, so an entry is the same float in all of them.
// Layout, bank-conflict and rounding rationale: distance.cu's header.
#pragma once

#include <cstdint>

#include "device_math.cuh"

namespace reidfast {
namespace cuda {
namespace tile64 {

constexpr int kTileRows = 64;   // rows of x (out rows) per block
constexpr int kTileCols = 64;   // rows of y (out columns) per tile
constexpr int kTileDepth = 16;  // features staged per step
constexpr int kMicroRows = 4;   // out rows per thread
constexpr int kMicroCols = 4;   // out columns per thread
constexpr int kThreadsAlongRows = kTileRows / kMicroRows;  // 16
constexpr int kThreadsAlongCols = kTileCols / kMicroCols;  // 16
constexpr int kThreads = kThreadsAlongRows * kThreadsAlongCols;  // 256
constexpr int kSharedPitch = kTileRows + 4;  // padded row of a staged slab, see distance.cu
constexpr int kLoadsPerThread = kTileRows * kTileDepth / kThreads;  // 4

static_assert(kTileRows == kTileCols, "the staging code loads x and y slabs with the same index map");
static_assert(kTileRows * kTileDepth % kThreads == 0, "every thread stages the same number of elements");
static_assert(kThreads % kTileDepth == 0, "a thread's staged elements share one feature index");
static_assert(kSharedPitch % 4 == 0, "16-byte fragment reads need a pitch that is a multiple of 4 words");
static_assert(kTileRows <= kThreads / 2, "threads [0, 2 * kTileRows) accumulate the norms");

// Fetches this thread's kLoadsPerThread elements of the kTileRows x kTileDepth slab of `matrix` that starts
// at (first_row, first_feature); out-of-range elements become zero.
template <typename InT>
__device__ __forceinline__ void fetch_slab(const InT* __restrict__ matrix, int64_t rows, int64_t features,
                                           int64_t row_stride, int64_t first_row, int64_t first_feature,
                                           InT (&staged)[kLoadsPerThread]) {
  const int feature_in_slab = threadIdx.x % kTileDepth;  // the same for all i: kThreads % kTileDepth == 0
  const int64_t feature = first_feature + feature_in_slab;
#pragma unroll
  for (int i = 0; i < kLoadsPerThread; ++i) {
    const int row_in_slab = (threadIdx.x + i * kThreads) / kTileDepth;
    const int64_t row = first_row + row_in_slab;
    staged[i] = (row < rows && feature < features) ? matrix[row * row_stride + feature] : device::zero_of<InT>();
  }
}

// Writes the fetched elements, widened, into the transposed shared slab: slab[feature][row].
template <typename InT, typename AccT>
__device__ __forceinline__ void store_slab(const InT (&staged)[kLoadsPerThread], AccT (*slab)[kSharedPitch]) {
  const int feature_in_slab = threadIdx.x % kTileDepth;
#pragma unroll
  for (int i = 0; i < kLoadsPerThread; ++i) {
    const int row_in_slab = (threadIdx.x + i * kThreads) / kTileDepth;
    slab[feature_in_slab][row_in_slab] = device::widen(staged[i]);
  }
}

// Which row's squared norm a thread accumulates: threads [0, 64) the block's x rows, [64, 128) the tile's
// y rows, the rest none. The norms use the same FMAs in the same feature order as the dot products.
struct NormOwner {
  bool x, y;
  int index;
  __device__ __forceinline__ NormOwner()
      : x(threadIdx.x < kTileRows),
        y(!x && threadIdx.x < kTileRows + kTileCols),
        index(x ? static_cast<int>(threadIdx.x) : static_cast<int>(threadIdx.x) - kTileRows) {}
};

// Adds one staged slab (kTileDepth features) to the thread's micro-tile of dot products, rows
// thread_row * 4 + [0, 4) and columns thread_col * 4 + [0, 4), and to its row norm if it owns one.
template <typename AccT>
__device__ __forceinline__ void multiply_slab(const AccT (*x_slab)[kSharedPitch], const AccT (*y_slab)[kSharedPitch],
                                              int thread_row, int thread_col, const NormOwner& owner, AccT& norm,
                                              AccT (&dots)[kMicroRows][kMicroCols]) {
  if (owner.x || owner.y) {
    const AccT(*own_slab)[kSharedPitch] = owner.x ? x_slab : y_slab;
#pragma unroll
    for (int k = 0; k < kTileDepth; ++k) {
      const AccT value = own_slab[k][owner.index];
      norm = device::multiply_add(value, value, norm);
    }
  }
#pragma unroll
  for (int k = 0; k < kTileDepth; ++k) {
    AccT x_fragment[kMicroRows];
    AccT y_fragment[kMicroCols];
    device::load_fragment(&x_slab[k][thread_row * kMicroRows], x_fragment);
    device::load_fragment(&y_slab[k][thread_col * kMicroCols], y_fragment);
#pragma unroll
    for (int i = 0; i < kMicroRows; ++i) {
#pragma unroll
      for (int j = 0; j < kMicroCols; ++j) dots[i][j] = device::multiply_add(x_fragment[i], y_fragment[j], dots[i][j]);
    }
  }
}

template <typename AccT>
__device__ __forceinline__ void zero_micro_tile(AccT (&dots)[kMicroRows][kMicroCols]) {
#pragma unroll
  for (int i = 0; i < kMicroRows; ++i) {
#pragma unroll
    for (int j = 0; j < kMicroCols; ++j) dots[i][j] = AccT(0);
  }
}

// The sizes of a tile walk: x (x_rows, features) and y (y_rows, features), unit inner stride.
struct TileShape {
  int64_t x_rows, y_rows, features, x_row_stride, y_row_stride;
};

// A block's shared memory for the tile product: the staged slabs and the per-row epilogue inputs
// (device::row_factor) of the block's x rows and of the tile's y rows.
template <typename AccT>
struct TileShared {
  __align__(16) AccT x_slab[kTileDepth][kSharedPitch];
  __align__(16) AccT y_slab[kTileDepth][kSharedPitch];
  AccT x_factors[kTileRows];
  AccT y_factors[kTileCols];
};

// Fetches the first slabs (features [0, 16)) of x rows [row0, +64) and y rows [col0, +64) into registers, for
// the first multiply_tile of a block.
template <typename InT>
__device__ __forceinline__ void fetch_first_slabs(const InT* __restrict__ x, const InT* __restrict__ y,
                                                  const TileShape& shape, int64_t row0, int64_t col0,
                                                  InT (&x_staged)[kLoadsPerThread], InT (&y_staged)[kLoadsPerThread]) {
  fetch_slab(x, shape.x_rows, shape.features, shape.x_row_stride, row0, 0, x_staged);
  fetch_slab(y, shape.y_rows, shape.features, shape.y_row_stride, col0, 0, y_staged);
}

// Block-collective: the 64 x 64 dot products of x rows [row0, +64) and y rows [col0, +64) into each thread's
// micro-tile `dots`, and both sides' row factors into shared.x_factors / y_factors (visible to every thread on
// return). x_staged / y_staged hold the tile's first slabs on entry (fetch_first_slabs, or the previous call's
// prefetch); while the last slab is multiplied the first slabs of tile next_col0 are prefetched (next_col0 < 0:
// none). Starts with a barrier, so the caller may still read the previous tile's factors until it calls this.
template <typename InT, typename AccT>
__device__ __forceinline__ void multiply_tile(const InT* __restrict__ x, const InT* __restrict__ y,
                                              const TileShape& shape, int64_t row0, int64_t col0, int64_t next_col0,
                                              Metric metric, TileShared<AccT>& shared,
                                              InT (&x_staged)[kLoadsPerThread], InT (&y_staged)[kLoadsPerThread],
                                              AccT (&dots)[kMicroRows][kMicroCols]) {
  const int thread_row = threadIdx.x / kThreadsAlongCols;
  const int thread_col = threadIdx.x % kThreadsAlongCols;
  // Everyone is done reading the previous tile's factors (the feature loop has no barrier if features == 0).
  __syncthreads();
  const NormOwner norm_owner;
  AccT norm = AccT(0);
  zero_micro_tile(dots);
  for (int64_t first_feature = 0; first_feature < shape.features; first_feature += kTileDepth) {
    store_slab(x_staged, shared.x_slab);
    store_slab(y_staged, shared.y_slab);
    __syncthreads();
    // Prefetch the next slab, or the first slabs of the next tile, while this one is multiplied.
    const int64_t next_feature = first_feature + kTileDepth;
    if (next_feature < shape.features) {
      fetch_slab(x, shape.x_rows, shape.features, shape.x_row_stride, row0, next_feature, x_staged);
      fetch_slab(y, shape.y_rows, shape.features, shape.y_row_stride, col0, next_feature, y_staged);
    } else if (next_col0 >= 0) {
      fetch_first_slabs(x, y, shape, row0, next_col0, x_staged, y_staged);
    }
    multiply_slab(shared.x_slab, shared.y_slab, thread_row, thread_col, norm_owner, norm, dots);
    __syncthreads();  // the next iteration overwrites the slabs
  }
  if (norm_owner.x) shared.x_factors[norm_owner.index] = device::row_factor(norm, metric);
  if (norm_owner.y) shared.y_factors[norm_owner.index] = device::row_factor(norm, metric);
  __syncthreads();
}

// Block-collective: for each 64-column tile [first_tile, end_tile) of y, the tile product against x rows
// [row0, +64) (multiply_tile, the next tile's first slabs prefetched across the tile boundary), then
// epilogue(col0, dots, col_factors): the tile's first column, the thread's micro-tile of dot products and the
// row factors of its 4 columns (the block's row factors are in shared.x_factors until the next tile starts).
template <typename InT, typename AccT, typename Epilogue>
__device__ __forceinline__ void for_each_tile(const InT* __restrict__ x, const InT* __restrict__ y,
                                              const TileShape& shape, int64_t row0, int first_tile, int end_tile,
                                              Metric metric, TileShared<AccT>& shared,
                                              Epilogue&& epilogue) {
  const int thread_col = threadIdx.x % kThreadsAlongCols;
  AccT dots[kMicroRows][kMicroCols];
  InT x_staged[kLoadsPerThread];
  InT y_staged[kLoadsPerThread];
  fetch_first_slabs(x, y, shape, row0, static_cast<int64_t>(first_tile) * kTileCols, x_staged, y_staged);
  for (int tile = first_tile; tile < end_tile; ++tile) {
    const int64_t col0 = static_cast<int64_t>(tile) * kTileCols;
    const int64_t next_col0 = tile + 1 < end_tile ? col0 + kTileCols : -1;
    multiply_tile(x, y, shape, row0, col0, next_col0, metric, shared, x_staged, y_staged, dots);
    AccT col_factors[kMicroCols];
#pragma unroll
    for (int j = 0; j < kMicroCols; ++j) col_factors[j] = shared.y_factors[thread_col * kMicroCols + j];
    epilogue(col0, dots, col_factors);
  }
}

// The thread's micro-row i of `dots` as a register array. Selected, not indexed: a dynamic index would move dots
// to local memory, and unrolling the caller's loop over i would copy its epilogue four times.
template <typename AccT>
__device__ __forceinline__ void select_micro_row(const AccT (&dots)[kMicroRows][kMicroCols], int i,
                                                 AccT (&row_dots)[kMicroCols]) {
#pragma unroll
  for (int j = 0; j < kMicroCols; ++j) row_dots[j] = dots[0][j];
#pragma unroll
  for (int ii = 1; ii < kMicroRows; ++ii) {
#pragma unroll
    for (int j = 0; j < kMicroCols; ++j) row_dots[j] = i == ii ? dots[ii][j] : row_dots[j];
  }
}

}  // namespace tile64
}  // namespace cuda
}  // namespace reidfast
