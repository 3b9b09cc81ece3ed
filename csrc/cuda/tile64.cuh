// The 64 x 64 tile product shared by the distance and top-k kernels (distance.cu, topk.cu): block shape,
// staging of 64 x 16 slabs through shared memory, and the per-slab update of a thread's 4 x 4 micro-tile of
// dot products and of the row norms. Layout, bank-conflict and rounding rationale: distance.cu's header.
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

}  // namespace tile64
}  // namespace cuda
}  // namespace reidfast
