// CUDA batch-hard mining for the fused triplet loss (compiled only when REIDFAST_WITH_CUDA is defined).
#pragma once

#include <cstdint>

#include "../common/array.h"

namespace reidfast {
namespace cuda {

// For every anchor i (row of `anchors` (B, D)) against every candidate j (row of `candidates` (C, D)), with
// d(i, j) the metric distance exactly as in pairwise_distance (norm expansion, float32 accumulation, float64
// for float64 inputs):
//   hardest positive: argmax_j d(i, j) over j with candidate_labels[j] == anchor_labels[i] and j != anchor_index[i]
//   hardest negative: argmin_j d(i, j) over j with candidate_labels[j] != anchor_labels[i]
// Ties go to the smallest j. An anchor without positives (negatives) gets index -1 and distance 0.
// anchors/candidates: same dtype in {Float32, Float64, Float16, BFloat16}, unit inner stride, any row stride;
// anchor_labels (B,), candidate_labels (C,), anchor_index (B,): Int64, contiguous (anchor_index -1 = none).
// dist_ap/dist_an (B,): Float64 for Float64 inputs, else Float32; positive_index/negative_index (B,): Int64.
// workspace: UInt8 of at least batch_hard_mine_workspace_bytes(B, C) bytes (may be 0 bytes if that says 0).
// Never materialises a B x C matrix. Asynchronous on `stream`.
void batch_hard_mine(const ArrayView& anchors, const ArrayView& candidates, const ArrayView& anchor_labels,
                     const ArrayView& candidate_labels, const ArrayView& anchor_index, Metric metric,
                     const ArrayView& dist_ap, const ArrayView& dist_an, const ArrayView& positive_index,
                     const ArrayView& negative_index, const ArrayView& workspace, std::uintptr_t stream);

// Scratch bytes batch_hard_mine needs for B anchors and C candidates (O(B), e.g. per-chunk partial results).
int64_t batch_hard_mine_workspace_bytes(int64_t num_anchors, int64_t num_candidates);

}  // namespace cuda
}  // namespace reidfast
