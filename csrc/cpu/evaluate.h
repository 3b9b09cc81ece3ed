// C++ CPU re-ID ranking evaluation (Market-1501 and CUHK03 protocols) with OpenMP over queries.
#pragma once

#include <cstdint>

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

// CUHK03 single-shot protocol: the rank of the query's sampled match in each sampled gallery.
//
// A query's kept ranking is its row sorted by (distance, gallery index) without the items of its pid and
// camera; each of the R sampled galleries takes one image per identity, the o-th of that identity in the
// kept ranking, o = offsets[q][r][j] (drawn by the caller). The sampled gallery keeps the ranking's order,
// so the match's rank there is 1 + #{identities j != the query's : their sampled image ranks before it}.
//
// distmat, q_pids, g_pids, q_camids, g_camids: as in evaluate_market1501. identity (G,): contiguous int64,
// each gallery item's identity in [0, J) (J = offsets.size(2)). offsets (Q, R, J): contiguous int64;
// rows of queries without a valid match are ignored, and the query's own identity's offset must be below
// its number of matches. sampled_rank (Q, R): contiguous int64 output, 1-based; 0 for skipped queries.
// Per query O(R G / SIMD lanes + G + R J) time, O(G + R J) scratch memory; no row is sorted.
// The CUHK03 draws of numpy's Generator, made natively: for each query q with num_matches[q] > 0, in order,
// for each repeat r and identity j, offsets[q][r][j] = what `Generator.integers(0, high)` returns for
// high = images_per_identity[j] (num_matches[q] for j == own_identity[q]), consuming the generator's bits
// exactly as numpy does (random_bounded_uint64 without masking: 32-bit Lemire rejection on next_uint32), so
// the values and the generator's state afterwards equal numpy's. Rows of the other queries are left as
// they are. bit_generator: the address of numpy's bitgen_t (`generator.bit_generator.ctypes.bit_generator`);
// the caller holds the generator's lock. Bounds must lie in [1, 2^32 - 1].
// images_per_identity (J,), own_identity (Q,), num_matches (Q,): contiguous int64; offsets (Q, R, J) int64.
void cuhk03_draw_offsets(std::uintptr_t bit_generator, const ArrayView& images_per_identity,
                         const ArrayView& own_identity, const ArrayView& num_matches, const ArrayView& offsets);

void evaluate_cuhk03_sampled_ranks(const ArrayView& distmat, const ArrayView& q_pids, const ArrayView& g_pids,
                                   const ArrayView& q_camids, const ArrayView& g_camids, const ArrayView& identity,
                                   const ArrayView& offsets, const ArrayView& sampled_rank);

}  // namespace cpu
}  // namespace reidfast
