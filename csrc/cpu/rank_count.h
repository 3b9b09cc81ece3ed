// Rank counting on a block of query-gallery distances: the counting pass of evaluation straight from features.
#pragma once

#include <cstdint>

#include "../common/array.h"

namespace reidfast {
namespace cpu {

// Adds one block of gallery columns to the per-pivot slot histograms of its rows.
//
// distances (rows, cols): float32 or float64, unit inner stride, any row stride; column c is gallery item
// col0 + c. Row r's pivots are entries pivot_offsets[r] .. pivot_offsets[r + 1] of pivot_distance (P,)
// (distances' dtype) and pivot_index (P,) (int64 gallery indices), sorted ascending by the ranking key
// (distance, gallery index): the order of a stable sort, ties to the smaller index.
// For every item g of the block, slot(g) = #{pivots p of its row : key(p) < key(g)}; each item with
// slot < the row's pivot count adds 1 to histogram[(pivot_offsets[r] + slot(g)) * num_groups + group(g)],
// Items whose label item_labels[g] equals their row's row_labels[r] are skipped (both int64 vectors, (G,) and
// (rows,), or both null). group(g) = groups[col0 + c] (contiguous int64 (G,), values in [0, num_groups)) or 0 without groups.
// The prefix sum of a row's histogram over its slots is then, at pivot j, #{items g : key(g) <= key(j)}.
// histogram (P * num_groups,) int64, contiguous, accumulated (not cleared). Returns the number of NaN
// distances in the block, in every row (they are not counted). OpenMP over rows; AVX2 on x86-64 CPUs that have it:
// one compare per 8 distances rejects every item behind the row's farthest pivot, only the others are
// placed by binary search.
//
// Score transform (re-ranked evaluation, rerank.h): with row_max non-null ((rows,) float32), the value compared
// for an item of distance d in row r is keep + float32(float32(d^2) / row_max[r]) * blend, in float32 operations
// (d^2 in d's dtype, then rounded), no contraction: bit for bit the re-ranked distance of an item that shares
// no k-reciprocal neighbour with the query. pivot_distance then holds float32 re-ranked scores.
//
// Not fused into the distance tile (yet): the block of distances is written by the fused kernel and read back
// here while it is still in cache (about 32 MiB per block). The fused form is a RankCountEpilogue beside
// TopkEpilogue in gemm_isa.inc: the row's farthest-match distance as the vector filter on each MR x NR tile
// (as the top-k threshold is), the few survivors appended to a per-row list that this binary search places
// after the tile; it saves the block's store and load, i.e. little next to the product at D >= 256.
int64_t rank_count_block(const ArrayView& distances, int64_t col0, const ArrayView& pivot_offsets,
                         const ArrayView& pivot_distance, const ArrayView& pivot_index, const ArrayView* row_labels,
                         const ArrayView* item_labels, const ArrayView* groups, int64_t num_groups,
                         const ArrayView& histogram, const ArrayView* row_max = nullptr, float keep = 0.0f,
                         float blend = 0.0f);

// The sparse correction after a transformed rank_count_block pass (re-ranked evaluation): the items of row r
// listed in overlap_index[overlap_offsets[r] .. overlap_offsets[r + 1]) (int32 gallery indices of the block's
// columns, col0 = 0) have the re-ranked score overlap_term[e] + float32(float32(d^2) / row_max[r]) * blend
// instead of keep + ...: each one (not of the row's label, not NaN) is taken out of the slot its transformed
// score was counted in and added to the slot of its true score. Other arguments as rank_count_block's
// (row_labels/item_labels required, pivot_distance float32 scores). Rows' pivot ranges must not overlap.
void rank_count_overlap_correct(const ArrayView& distances, const ArrayView& pivot_offsets,
                                const ArrayView& pivot_distance, const ArrayView& pivot_index,
                                const ArrayView& row_labels, const ArrayView& item_labels, const ArrayView* groups,
                                int64_t num_groups, const ArrayView& row_max, float keep, float blend,
                                const ArrayView& overlap_offsets, const ArrayView& overlap_index,
                                const ArrayView& overlap_term, const ArrayView& histogram);

}  // namespace cpu
}  // namespace reidfast
