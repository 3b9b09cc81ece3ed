// k-reciprocal re-ranking (Zhong et al., CVPR 2017) on the CPU, exact and in O(N*k1 + Q*G) memory.
//
// The published algorithm only ever looks at each row's k1+1 nearest items, each row's maximum squared
// distance, and the normalised squared distance of the pairs in the expanded k-reciprocal sets. The caller
// (reidfast/ops/rerank.py) makes one blockwise pass over the rows of the joint distance matrix with
// rerank_topk_block, then rerank_finish builds the sparse weight rows, the query expansion and the Jaccard
// distance of the query rows, and blends it into the output. Arithmetic follows
// reidfast/reference/rerank.py step for step in float32 (sums in the same order), see there.
//
// "Row i" is row i of the published `dist` matrix: column i of the joint squared distances
// [[q_q, q_g], [q_g.T, g_g]] over that column's maximum, i.e. joint[j, i]^2 / max_j' joint[j', i]^2.
#pragma once

#include <cstdint>

#include "../common/array.h"

namespace reidfast {
namespace cpu {

// Row r of the block is [left[r, :], right[r, :]] (b rows, N columns in all): the raw distances of the
// joint matrix for one item each, float32 or float64, any strides (a transposed view reads well). Writes
// row_max (b,) float32: max_j float32(x_j^2), with 0 replaced by 1; and indices (b, k) int64: the k
// columns with the smallest float32(x_j^2) / row_max, ascending by (value, column). 1 <= k <= N.
void rerank_topk_block(const ArrayView& left, const ArrayView& right, int64_t k, const ArrayView& row_max,
                       const ArrayView& indices);

// ranks (N, K) int64: each row's K >= k1+1 first items (from rerank_topk_block); row_max (N,) float32.
// Pair distances come from either
//   features.ndim() == 2: features (N, D) float32 (queries then gallery), metric euclidean or cosine;
//   otherwise q_g (Q, G), q_q (Q, Q), g_g (G, G), all float32 or all float64.
// out (Q, G) float32, contiguous: on entry the normalised squared query-gallery distance; on exit
// jaccard * (1 - lambda) + out * lambda.
void rerank_finish(const ArrayView& ranks, const ArrayView& row_max, const ArrayView& features, Metric metric,
                   const ArrayView& q_g, const ArrayView& q_q, const ArrayView& g_g, int64_t num_query, int64_t k1,
                   int64_t k2, double lambda_value, const ArrayView& out);

// round_half_even(k1 / 2), as np.around(k1 / 2.0): 1 -> 0, 5 -> 2, 7 -> 4, 21 -> 10.
int64_t rerank_half_k1(int64_t k1);

}  // namespace cpu
}  // namespace reidfast
