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
#include <vector>

#include "../common/array.h"

namespace reidfast {
namespace cpu {

// np.power(joint, 2) in the joint's dtype, then .astype(float32).
template <typename T>
inline float square_f32(T x) {
  return static_cast<float>(x * x);
}

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

// The sparse form of rerank_finish's output: per query row i, the gallery items g sharing a k-reciprocal
// neighbour with it (Jaccard overlap s > 0), entries offsets[i] .. offsets[i + 1] of index (increasing g)
// and term = float32((1 - s / (2 - s)) * (1 - lambda)), the Jaccard part of out[i, g]. Every other item has
// s == 0, i.e. the term 1 - lambda: out[i, g] = term + (d^2 / row_max[i]) * lambda in float32, d the
// query-gallery distance (rerank_select_block).
struct RerankOverlap {
  std::vector<int64_t> offsets;  // (Q + 1,)
  std::vector<int32_t> index;    // (E,) gallery indices
  std::vector<float> term;       // (E,)
};

// rerank_finish's inputs (without out): the overlap lists of the query rows, in O(N * k1 + E) memory.
RerankOverlap rerank_overlap(const ArrayView& ranks, const ArrayView& row_max, const ArrayView& features,
                             Metric metric, const ArrayView& q_g, const ArrayView& q_q, const ArrayView& g_g,
                             int64_t num_query, int64_t k1, int64_t k2, double lambda_value);

// The k smallest re-ranked distances of a block of query rows, ascending by (value, gallery index):
// distances (rows, G) float32/float64 (unit inner stride): the query-gallery distances d the top-k pass
// saw; row_max (rows,) float32: the rows' normalisation; overlap_offsets (rows + 1,) int64 into
// overlap_index (E,) int32 and overlap_term (E,) float32 (a RerankOverlap's, sliced by offsets).
// value(g) = term(g) + float32(float32(d^2) / row_max) * lambda, term(g) = 1 - lambda off the overlap:
// bit for bit rerank_finish's out[i, g]. values (rows, k) float32, indices (rows, k) int64; 1 <= k <= G.
void rerank_select_block(const ArrayView& distances, const ArrayView& row_max, double lambda_value,
                         const ArrayView& overlap_offsets, const ArrayView& overlap_index,
                         const ArrayView& overlap_term, const ArrayView& values, const ArrayView& indices);

// Validates overlap lists for `rows` rows of `cols` gallery items (rerank_select_block's, and the re-ranked
// counting's in rank_count.h): offsets (rows + 1,) int64 within index (E,) int32 / term (E,) float32, gallery
// indices in [0, cols) and, when `increasing`, strictly increasing per row.
void check_overlap_lists(const ArrayView& overlap_offsets, const ArrayView& overlap_index,
                         const ArrayView& overlap_term, int64_t rows, int64_t cols, bool increasing);

// round_half_even(k1 / 2), as np.around(k1 / 2.0): 1 -> 0, 5 -> 2, 7 -> 4, 21 -> 10.
int64_t rerank_half_k1(int64_t k1);

}  // namespace cpu
}  // namespace reidfast
