// The Jaccard stage of k-reciprocal re-ranking on the GPU: the sparse rows V of the published algorithm
// (built by reidfast/kernels/torch/rerank.py on the device) in, the blended (Q, G) distances out.
//
// Work split
//   Block (q, c) owns query row q and the gallery items [c * kChunk, (c + 1) * kChunk): their sums s live in
//   shared memory (32 KiB), so any gallery size works with a fixed footprint. For each of the query row's
//   entries (column j, value v), in increasing j, the block finds its items' slice of column j's inverted
//   list (items increase within a column: two binary searches) and its threads add min(v, w) to s[item],
//   one list position each. An item occurs at most once per column, so no two threads of one entry touch
//   the same sum; a barrier between entries orders the additions to one item by j. So every sum adds its
//   terms in increasing j, like csrc/cpu/rerank.cpp and the published numpy loop: deterministic, no atomics
//   (given the same V, the same bits as the CPU backend and the torch backend's sequential CPU path).
//
// Epilogue: s -> 1 - s / (2 - s), times (1 - lambda), plus out * lambda, with explicitly rounded operations
// (__fmul_rn, __fadd_rn) so nvcc cannot contract them into an FMA that would round differently from the CPU.
#include "rerank.h"

#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <sstream>
#include <string>

#include "cuda_check.h"
#include "host_utils.h"
#include "launch.cuh"

namespace reidfast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kChunk = 8192;  // gallery items per block: 32 KiB of float sums in shared memory

// First position in [first, last) of the increasing index_item whose item is >= item.
__device__ __forceinline__ int64_t lower_bound(const int64_t* __restrict__ index_item, int64_t first, int64_t last,
                                               int64_t item) {
  while (first < last) {
    const int64_t middle = first + (last - first) / 2;
    if (index_item[middle] < item) {
      first = middle + 1;
    } else {
      last = middle;
    }
  }
  return first;
}

__global__ void __launch_bounds__(kThreads)
    rerank_jaccard_kernel(const int64_t* __restrict__ query_crow, const int64_t* __restrict__ entry_col,
                          const float* __restrict__ entry_val, const int64_t* __restrict__ column_start,
                          const int64_t* __restrict__ index_item, const float* __restrict__ index_val,
                          int64_t num_gallery, float keep, float blend, float* __restrict__ out) {
  __shared__ float sums[kChunk];
  const int64_t query = blockIdx.x;
  const int64_t item0 = static_cast<int64_t>(blockIdx.y) * kChunk;
  const int64_t items = num_gallery - item0 < kChunk ? num_gallery - item0 : kChunk;
  for (int64_t i = threadIdx.x; i < items; i += kThreads) sums[i] = 0.0f;
  __syncthreads();

  for (int64_t entry = query_crow[query]; entry < query_crow[query + 1]; ++entry) {
    const int64_t column = entry_col[entry];
    const float value = entry_val[entry];
    // Every thread finds the same slice, so the skip below is uniform across the block.
    const int64_t first = lower_bound(index_item, column_start[column], column_start[column + 1], item0);
    const int64_t last = lower_bound(index_item, first, column_start[column + 1], item0 + items);
    if (first == last) continue;
    for (int64_t at = first + threadIdx.x; at < last; at += kThreads) {
      const float other = index_val[at];
      sums[index_item[at] - item0] += other < value ? other : value;  // std::min(value, other), as the CPU
    }
    __syncthreads();  // the next entry may add to the same items
  }

  float* const row = out + query * num_gallery + item0;
  for (int64_t i = threadIdx.x; i < items; i += kThreads) {
    const float s = sums[i];
    const float jaccard = __fsub_rn(1.0f, __fdiv_rn(s, __fsub_rn(2.0f, s)));
    row[i] = __fadd_rn(__fmul_rn(jaccard, keep), __fmul_rn(row[i], blend));
  }
}

}  // namespace

void rerank_jaccard(const ArrayView& query_crow, const ArrayView& entry_col, const ArrayView& entry_val,
                    const ArrayView& column_start, const ArrayView& index_item, const ArrayView& index_val,
                    double lambda_value, const ArrayView& out, std::uintptr_t stream) {
  check_matrix(out, "out", /*want_cuda=*/true);
  std::ostringstream why;
  if (out.dtype != DType::Float32) {
    why << "out: expected dtype float32, got " << dtype_name(out.dtype);
    fail(why.str());
  }
  const int64_t num_query = out.size(0), num_gallery = out.size(1);
  if (num_query > 1 && out.stride(0) != num_gallery) {
    why << "out: expected a contiguous array (row stride " << num_gallery << "), got row stride " << out.stride(0);
    fail(why.str());
  }
  if (!(lambda_value >= 0.0 && lambda_value <= 1.0)) {
    why << "lambda_value: expected a number in [0, 1], got " << lambda_value;
    fail(why.str());
  }
  const int device = out.device;
  check_cuda_vector(query_crow, "query_crow", num_query + 1, DType::Int64, device, "out");
  check_cuda_vector(entry_col, "entry_col", -1, DType::Int64, device, "out");
  check_cuda_vector(entry_val, "entry_val", entry_col.size(0), DType::Float32, device, "out");
  check_cuda_vector(column_start, "column_start", -1, DType::Int64, device, "out");
  check_cuda_vector(index_item, "index_item", -1, DType::Int64, device, "out");
  check_cuda_vector(index_val, "index_val", index_item.size(0), DType::Float32, device, "out");
  if (column_start.size(0) < 1) fail("column_start: expected at least one entry (N + 1 for N columns)");
  if (num_query == 0 || num_gallery == 0) return;
  const int64_t chunks = ceil_div(num_gallery, kChunk);
  if (num_query > INT_MAX || chunks > 65535) {
    why << "rerank_jaccard: " << num_query << " queries x " << num_gallery
        << " gallery items are more than one CUDA launch covers";
    fail(why.str());
  }
  // The kernel trusts the index contents (columns < N, items < G, sorted): they come from
  // reidfast/kernels/torch/rerank.py, never from the user.

  DeviceGuard device_guard(device);
  const cudaStream_t cuda_stream = reinterpret_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(num_query), static_cast<unsigned>(chunks));
  const float keep = static_cast<float>(1.0 - lambda_value);
  const float blend = static_cast<float>(lambda_value);
  REIDFAST_LAUNCH(rerank_jaccard_kernel, grid, kThreads, 0, cuda_stream)(
      query_crow.ptr<const int64_t>(), entry_col.ptr<const int64_t>(), entry_val.ptr<const float>(),
      column_start.ptr<const int64_t>(), index_item.ptr<const int64_t>(), index_val.ptr<const float>(), num_gallery,
      keep, blend, out.ptr<float>());
  REIDFAST_CUDA_CHECK(cudaGetLastError());
}

}  // namespace cuda
}  // namespace reidfast
