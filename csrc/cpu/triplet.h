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
