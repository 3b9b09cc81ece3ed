// C++ CPU re-ID ranking evaluation (Market-1501 protocol) with OpenMP over queries.
#pragma once

#include "../common/array.h"

namespace reidfast {
namespace cpu {

// Per-query Market-1501 metrics of a (Q, G) distance matrix, without sorting any row.
//
// distmat (Q, G): float32 or float64, unit inner stride, any row stride, no NaN (checked by the caller).
// q_pids, q_camids (Q,) and g_pids, g_camids (G,): contiguous int64.
// Outputs (Q,), contiguous: first_match_rank (int64; 1-based rank of the first correct match among the
// query's valid gallery items, 0 when the query has no valid match and is skipped), average_precision and
// inverse_negative_penalty (float64; 0 for skipped queries).
// Semantics and AP rounding are those of reidfast/reference/evaluation.py, bit for bit.
void evaluate_market1501(const ArrayView& distmat, const ArrayView& q_pids, const ArrayView& g_pids,
                         const ArrayView& q_camids, const ArrayView& g_camids, const ArrayView& first_match_rank,
                         const ArrayView& average_precision, const ArrayView& inverse_negative_penalty);

}  // namespace cpu
}  // namespace reidfast
