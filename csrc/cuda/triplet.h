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

// Backward of batch_hard_mine: the gradients of sum_i grad_ap[i] d(a_i, c_p(i)) + grad_an[i] d(a_i, c_n(i)) with
// respect to anchors (B, D) and candidates (C, D) (p, n = positive_index, negative_index in [-1, C); -1
// contributes nothing), for the metric's d exactly as reidfast/kernels/triton/triplet_backward.py derives it
// (euclidean: 0 where dist <= sqrt(1e-12), the forward's clamp; cosine: the x / max(|x|, 1e-12) backward).
// O(B*D) work, no B x C matrix, float32 accumulation (float64 for float64), deterministic: no atomics.
// anchors/candidates: as batch_hard_mine. dist_ap/dist_an/grad_ap/grad_an (B,): the distance dtype.
// entry_order (2B,), entry_offsets (C + 1,) Int64: the inverse index, entries e < B for anchor e's positive and
// B + i for anchor i's negative, stably sorted by candidate row; row j gets entry_order[entry_offsets[j] ..
// entry_offsets[j + 1]) in that order. coefficients: kBackwardCoefficientsPerAnchor * B scratch values of the
// distance dtype ([0, B) anchor part on a_i, [B, 2B) on c_p, [2B, 3B) on c_n, [3B, 5B) entry e on the anchor
// row, [5B, 7B) entry e on the candidate row). grad_anchors (B, D), grad_candidates (C, D): outputs in the
// input dtype, unit inner stride, every element written.
// candidates_are_anchors: the candidates are the anchors themselves (pass the anchors and grad_anchors views as
// candidates and grad_candidates): grad_anchors then receives both parts, rounded once.
// Index values are not checked here (device memory): the caller guarantees the range. Asynchronous on `stream`.
constexpr int64_t kBackwardCoefficientsPerAnchor = 7;
void batch_hard_backward(const ArrayView& anchors, const ArrayView& candidates, const ArrayView& positive_index,
                         const ArrayView& negative_index, const ArrayView& dist_ap, const ArrayView& dist_an,
                         const ArrayView& grad_ap, const ArrayView& grad_an, Metric metric,
                         bool candidates_are_anchors, const ArrayView& entry_order, const ArrayView& entry_offsets,
                         const ArrayView& coefficients, const ArrayView& grad_anchors,
                         const ArrayView& grad_candidates, std::uintptr_t stream);

// Scratch bytes batch_hard_mine needs for B anchors and C candidates (O(B), e.g. per-chunk partial results).
int64_t batch_hard_mine_workspace_bytes(int64_t num_anchors, int64_t num_candidates);

}  // namespace cuda
}  // namespace reidfast
