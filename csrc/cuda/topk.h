// CUDA fused distance + top-k (compiled only when REIDFAST_WITH_CUDA is defined).
#pragma once

#include <cstdint>

#include "../common/array.h"

namespace reidfast {
namespace cuda {

// Largest k the CUDA top-k kernel supports; the Python op uses another path above it.
constexpr int kTopkMaxK = 256;

// For every row i of x (N, D): the k nearest rows of y (M, D) under `metric` (distances exactly as
// pairwise_distance computes them: norm expansion, float32 accumulation, float64 for float64 inputs),
// sorted ascending by (distance, column index): equal distances list the smaller column first.
// exclude_self: x and y are the same array and column i is skipped for row i (then k <= M - 1).
// x/y: same dtype in {Float32, Float64, Float16, BFloat16}, unit inner stride, any row stride.
// values (N, k): Float64 for Float64 inputs, else Float32, contiguous; indices (N, k): Int64, contiguous.
// workspace: UInt8, at least topk_distance_workspace_bytes(N, M, k) bytes. Never materialises N x M.
// 1 <= k <= min(kTopkMaxK, M - exclude_self). Asynchronous on `stream`.
void topk_distance(const ArrayView& x, const ArrayView& y, int64_t k, Metric metric, bool exclude_self,
                   const ArrayView& values, const ArrayView& indices, const ArrayView& workspace,
                   std::uintptr_t stream);

int64_t topk_distance_workspace_bytes(int64_t num_rows, int64_t num_cols, int64_t k);

}  // namespace cuda
}  // namespace reidfast
