// Pairwise distance on the GPU: one tiled shared-memory kernel computes the dot products, the squared row
// norms and the metric epilogue in a single pass, with no temporary device memory.
//
// Work split
//   Each block owns a kTileRows x kTileCols (64 x 64) tile of `out`: rows of x [row0, row0 + 64) against
//   rows of y [col0, col0 + 64). It walks the feature axis in steps of kTileDepth (16): every step the
//   block stages a 64 x 16 slab of x and of y in shared memory, converted to the accumulation type, and
//   every thread adds those 16 features to its 4 x 4 micro-tile of dot products held in registers.
//
//   256 threads = 16 x 16. Thread (thread_row, thread_col) = (tid / 16, tid % 16) owns out rows
//   row0 + thread_row * 4 + [0, 4) and out columns col0 + thread_col * 4 + [0, 4).
//
// Shared-memory layout
//   x_tile[k][r] holds x[row0 + r][k0 + k] (feature-major, i.e. transposed), so a thread's 4 rows for one
//   feature are 4 consecutive words: one 16-byte load (likewise y_tile for its 4 columns). A warp spans 2
//   thread_rows and all 16 thread_cols, so its x_tile read is 2 broadcast addresses and its y_tile read is
//   256 contiguous bytes: no bank conflicts. Rows are padded from 64 to 68 words: the global->shared copy
//   writes x_tile[k][r] with k varying fastest across a warp, which with a 64-word pitch would put all 16
//   features of a row in one bank (16-way conflict); with 68 (= 4 mod 32, still a multiple of 4 words so
//   the 16-byte reads stay aligned) it is 2-way.
//
// Global loads
//   The 64 x 16 slab is 1024 elements, 4 per thread: element e = tid + 256 * i is row e / 16, feature
//   e % 16, so a warp reads 2 rows x 16 consecutive features (coalesced; the feature axis has unit stride,
//   rows may have any stride). Out-of-range rows and features are staged as zeros, which add nothing to
//   dot products or norms, so sizes need not be multiples of the tile. The next slab is fetched into
//   registers (raw input type) while the current one is multiplied, hiding global latency with a single
//   shared buffer.
//
// Norms
//   Threads 0..63 accumulate |x_r|^2 for the block's 64 x rows, threads 64..127 |y_c|^2 for its 64 y rows,
//   from the same staged slabs, with the same fused multiply-adds in the same feature order as the dot
//   products. So when a row of x equals a row of y, |x|^2 + |y|^2 - 2 x.y is exactly 0 (the self-distance
//   is exactly sqrt(1e-12) for euclidean, 0 for sqeuclidean) rather than rounding noise.
//
// Precision: float32 accumulation for float32/float16/bfloat16 inputs, float64 for float64 (DESIGN.md).
#include "distance.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <sstream>
#include <string>

#include "cuda_check.h"
#include "device_math.cuh"
#include "host_utils.h"
#include "launch.cuh"
#include "tile64.cuh"

namespace reidfast {
namespace cuda {
namespace {

using namespace device;  // NOLINT: the shared arithmetic of device_math.cuh

using namespace tile64;  // NOLINT: the shared 64 x 64 tile product

// Resident blocks per SM the register budget is sized for: 3 (<= 85 registers) for float accumulation, 1 for
// float64. Without the minimum ptxas capped the float kernel at 80 registers on sm_80 anyway and spilled 12
// bytes to the stack; with (256, 3) it fits the same 80 without spilling, and float64 takes ~140 (see
// tests/test_cuda_resources.py).
template <typename AccT>
constexpr int kDistanceBlocksPerSM = sizeof(AccT) == 4 ? 3 : 1;

// out[i][j] = metric(x[i], y[j]) for a kTileRows x kTileCols tile per block; a 1-D grid of
// row_tiles * col_tiles blocks, tile (blockIdx.x / col_tiles, blockIdx.x % col_tiles).
template <typename InT, typename AccT>
__global__ void __launch_bounds__(kThreads, kDistanceBlocksPerSM<AccT>)
    pairwise_distance_kernel(const InT* __restrict__ x, const InT* __restrict__ y, AccT* __restrict__ out,
                             int64_t x_rows, int64_t y_rows, int64_t features, int64_t x_row_stride,
                             int64_t y_row_stride, int col_tiles, Metric metric) {
  __shared__ TileShared<AccT> shared;  // staged slabs and per-row epilogue inputs, see row_factor()
  const TileShape shape{x_rows, y_rows, features, x_row_stride, y_row_stride};
  const int64_t row0 = static_cast<int64_t>(blockIdx.x / col_tiles) * kTileRows;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x % col_tiles) * kTileCols;
  const int thread_row = threadIdx.x / kThreadsAlongCols;
  const int thread_col = threadIdx.x % kThreadsAlongCols;

  AccT dots[kMicroRows][kMicroCols];
  InT x_staged[kLoadsPerThread];
  InT y_staged[kLoadsPerThread];
  fetch_first_slabs(x, y, shape, row0, col0, x_staged, y_staged);
  multiply_tile(x, y, shape, row0, col0, /*next_col0=*/int64_t{-1}, metric, shared, x_staged, y_staged, dots);

  // Epilogue: each thread finishes its micro-tile from the published per-row factors.
  AccT col_factors[kMicroCols];
#pragma unroll
  for (int j = 0; j < kMicroCols; ++j) col_factors[j] = shared.y_factors[thread_col * kMicroCols + j];

#pragma unroll
  for (int i = 0; i < kMicroRows; ++i) {
    const int64_t row = row0 + thread_row * kMicroRows + i;
    if (row >= x_rows) break;  // rows only increase with i
    const AccT row_factor_i = shared.x_factors[thread_row * kMicroRows + i];
    AccT* out_row = out + row * y_rows;
#pragma unroll
    for (int j = 0; j < kMicroCols; ++j) {
      const int64_t col = col0 + thread_col * kMicroCols + j;
      if (col < y_rows) out_row[col] = finish_distance(dots[i][j], row_factor_i, col_factors[j], metric);
    }
  }
}

template <typename InT, typename AccT>
void launch_pairwise_distance(const ArrayView& x, const ArrayView& y, const ArrayView& out, Metric metric,
                              cudaStream_t stream) {
  const int64_t x_rows = x.size(0), y_rows = y.size(0), features = x.size(1);
  const int64_t row_tiles = ceil_div(x_rows, kTileRows);
  const int64_t col_tiles = ceil_div(y_rows, kTileCols);
  if (col_tiles > INT_MAX / row_tiles) {
    std::ostringstream why;
    why << "pairwise_distance: a (" << x_rows << ", " << y_rows << ") output needs " << row_tiles << " x "
        << col_tiles << " tiles, more than one CUDA launch can cover (" << INT_MAX << "); split x";
    fail(why.str());
  }
  const unsigned int blocks = static_cast<unsigned int>(row_tiles * col_tiles);
  const auto kernel = pairwise_distance_kernel<InT, AccT>;
  REIDFAST_LAUNCH(kernel, blocks, kThreads, 0, stream)(
      x.ptr<const InT>(), y.ptr<const InT>(), out.ptr<AccT>(), x_rows, y_rows, features, x.stride(0), y.stride(0),
      static_cast<int>(col_tiles), metric);
  REIDFAST_CUDA_CHECK(cudaGetLastError());
}

// All argument checks, before any CUDA call (so they also run, and fail clearly, without a GPU).
void validate(const ArrayView& x, const ArrayView& y, const ArrayView& out, Metric metric) {
  check_feature_pair(x, y);
  check_matrix(out, "out", /*want_cuda=*/true);
  std::ostringstream why;
  const DType out_dtype = x.dtype == DType::Float64 ? DType::Float64 : DType::Float32;
  if (out.dtype != out_dtype) {
    why << "out: expected dtype " << dtype_name(out_dtype) << " for " << dtype_name(x.dtype) << " inputs, got "
        << dtype_name(out.dtype);
    fail(why.str());
  }
  if (out.size(0) != x.size(0) || out.size(1) != y.size(0)) {
    why << "out: expected shape (" << x.size(0) << ", " << y.size(0) << "), got (" << out.size(0) << ", "
        << out.size(1) << ")";
    fail(why.str());
  }
  if (out.size(0) > 1 && out.stride(0) != out.size(1)) {
    why << "out: expected a contiguous array (row stride " << out.size(1) << "), got row stride " << out.stride(0);
    fail(why.str());
  }
  if (y.device != x.device || out.device != x.device) {
    why << "x, y, out: expected one CUDA device, got cuda:" << x.device << ", cuda:" << y.device << ", cuda:"
        << out.device;
    fail(why.str());
  }
  if (metric != Metric::Euclidean && metric != Metric::SqEuclidean && metric != Metric::Cosine) {
    why << "metric: unknown code " << static_cast<int>(metric);
    fail(why.str());
  }
}

}  // namespace

void pairwise_distance(const ArrayView& x, const ArrayView& y, const ArrayView& out, Metric metric,
                       std::uintptr_t stream) {
  validate(x, y, out, metric);
  if (x.size(0) == 0 || y.size(0) == 0) return;  // empty output: nothing to launch (a 0-block grid is an error)

  // `stream` must belong to x.device (the Python layer passes torch.cuda.current_stream(x.device)).
  DeviceGuard device_guard(x.device);
  const cudaStream_t cuda_stream = reinterpret_cast<cudaStream_t>(stream);
  switch (x.dtype) {
    case DType::Float32:
      launch_pairwise_distance<float, float>(x, y, out, metric, cuda_stream);
      break;
    case DType::Float64:
      launch_pairwise_distance<double, double>(x, y, out, metric, cuda_stream);
      break;
    case DType::Float16:
      launch_pairwise_distance<__half, float>(x, y, out, metric, cuda_stream);
      break;
    case DType::BFloat16:
      launch_pairwise_distance<__nv_bfloat16, float>(x, y, out, metric, cuda_stream);
      break;
    default:
      fail(std::string("x: unsupported dtype ") + dtype_name(x.dtype));  // unreachable after validate()
  }
}

int device_count() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear the error so later runtime calls do not report it
    return 0;
  }
  return count;
}

int runtime_version() {
  int version = 0;
  REIDFAST_CUDA_CHECK(cudaRuntimeGetVersion(&version));
  return version;
}

}  // namespace cuda
}  // namespace reidfast
