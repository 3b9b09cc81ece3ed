// Fused CPU distance kernels: a hand-written, cache-blocked SGEMM micro-kernel (AVX-512 or AVX2+FMA,
// chosen at run time) whose register tile goes straight through the distance epilogue and the top-k or
// batch-hard update, so no block of dot products is ever written to memory (pairwise distance writes
// only its output). float32 accumulation; float16/bfloat16 inputs are converted while packing.
// Semantics are those of distance.h / triplet.h (the BLAS-product path, kept for float64 and as the
// fallback on CPUs without these instruction sets): ranking on the final distance, ties to the smaller
// column, exact self-distance on x-against-x, NaN ordered after every number in the top-k.
#pragma once

#include <string>
#include <vector>

#include "../common/array.h"

namespace reidfast {
namespace cpu {

// Which micro-kernel to run. Auto picks the widest one this CPU supports (and throws if none is).
enum class GemmKernel : int { Auto = 0, Avx2 = 1, Avx512 = 2 };

// Kernels compiled into this module and supported by the running CPU, widest first ("avx512", "avx2").
std::vector<std::string> supported_gemm_kernels();

// Distances x (N, D) to y (M, D) -> out (N, M) float32 with unit inner stride. x, y: float32, float16 or
// bfloat16 host arrays, unit inner stride, any row stride, one dtype. same_input: y is x (row i's distance
// to itself is then exactly 0 for the euclidean metrics, as in distance_epilogue).
void fused_pairwise_distance(const ArrayView& x, const ArrayView& y, Metric metric, bool same_input,
                             const ArrayView& out, GemmKernel kernel);

// The k nearest rows of y for every row of x, sorted by (distance, column) -> values (N, k) float32 and
// indices (N, k) int64, both contiguous. exclude_self (needs same_input) skips column i for row i.
void fused_topk_distance(const ArrayView& x, const ArrayView& y, Metric metric, bool same_input,
                         bool exclude_self, const ArrayView& values, const ArrayView& indices, GemmKernel kernel);

// Batch-hard mining of anchors (B, D) against candidates (C, D), semantics and outputs as
// batch_hard_mine_block (triplet.h) on the whole batch; dist_ap / dist_an are float32.
void fused_batch_hard_mine(const ArrayView& anchors, const ArrayView& candidates, const ArrayView& anchor_labels,
                           const ArrayView& candidate_labels, const ArrayView& anchor_index, Metric metric,
                           const ArrayView& dist_ap, const ArrayView& dist_an, const ArrayView& positive_index,
                           const ArrayView& negative_index, GemmKernel kernel);

// The rank counting of rank_count_block (rank_count.h) fused into the distance tile: the distances of x
// (rows, D) (queries) to y (cols, D) (gallery items item0 .. item0 + cols - 1), bitwise those of
// fused_pairwise_distance, are never stored; each row's items are filtered against its farthest pivot in
// the tile and the few others placed by the same slot rule into histogram (accumulated). Pivots, labels,
// groups and histogram as rank_count_block, pivot_distance float32. With row_max (rows,) float32 (else
// null), the value compared (pivots included) is rerank_score(d, row_max[r], keep, blend) (rank_slot.h).
// Returns the number of items whose compared value is NaN (not counted).
int64_t fused_rank_count(const ArrayView& x, const ArrayView& y, Metric metric, int64_t item0,
                         const ArrayView& pivot_offsets, const ArrayView& pivot_distance, const ArrayView& pivot_index,
                         const ArrayView* row_labels, const ArrayView* item_labels, const ArrayView* groups,
                         int64_t num_groups, const ArrayView* row_max, float keep, float blend,
                         const ArrayView& histogram, GemmKernel kernel);

}  // namespace cpu
}  // namespace reidfast
