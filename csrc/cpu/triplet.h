// C++ CPU batch-hard mining over a block of precomputed dot products.
#pragma once

#include "../common/array.h"

namespace reidfast {
namespace cpu {

// Mining for a block of b anchors against all C candidates, given their dot products.
// gram (b, C): anchors_block @ candidates.T, float32 or float64, unit inner stride.
// anchor_sq_norms (b,), candidate_sq_norms (C,): squared L2 norms, same dtype as gram, contiguous.
// anchor_labels (b,), candidate_labels (C,), anchor_index (b,): Int64, contiguous (anchor_index -1 = none).
// Outputs (b,): dist_ap, dist_an (gram's dtype), positive_index, negative_index (Int64).
// Semantics as reidfast/reference/triplet.py: hardest positive = max distance over same label excluding
// anchor_index, hardest negative = min over other labels, ties to the smallest index, -1 and 0 when none.
void batch_hard_mine_block(const ArrayView& gram, const ArrayView& anchor_sq_norms,
                           const ArrayView& candidate_sq_norms, const ArrayView& anchor_labels,
                           const ArrayView& candidate_labels, const ArrayView& anchor_index, Metric metric,
                           const ArrayView& dist_ap, const ArrayView& dist_an, const ArrayView& positive_index,
                           const ArrayView& negative_index);

}  // namespace cpu
}  // namespace reidfast

namespace reidfast {
namespace cpu {

// Backward of the mined distances for euclidean-type metrics: with pair (i, j) for j in {positive_index[i],
// negative_index[i]} (skipped when -1) and its coefficient w (positive_weight[i] / negative_weight[i]),
//   grad_anchors[i] += w * (anchors[i] - candidates[j]),   grad_candidates[j] -= w * (anchors[i] - candidates[j]),
// starting from zero: the grads are outputs, every element written (their contents on entry are ignored).
// anchors (B, D), candidates (C, D), grad_anchors (B, D), grad_candidates (C, D): one float dtype (float32 or
// float64), unit inner stride; the two grads may be the same array (anchors scored against themselves).
// Computed in gather form (triplet.cpp): threads take whole output rows, no atomics, and the result does not
// depend on the number of threads.
void batch_hard_backward(const ArrayView& anchors, const ArrayView& candidates, const ArrayView& positive_index,
                         const ArrayView& negative_index, const ArrayView& positive_weight,
                         const ArrayView& negative_weight, const ArrayView& grad_anchors,
                         const ArrayView& grad_candidates);

}  // namespace cpu
}  // namespace reidfast
