// CUDA rank counting fused into the distance tile: the counting pass of evaluation straight from features
// (compiled only when REIDFAST_WITH_CUDA is defined). The host counterpart is csrc/cpu/rank_count.h.
#pragma once

#include <cstdint>

#include "../common/array.h"

namespace reidfast {
namespace cuda {

// Adds the items of a gallery block to the per-pivot slot histograms of the query rows, without writing the
// block's distances anywhere: each query x gallery entry is computed exactly as pairwise_distance computes it
// (the same float; float32 accumulation, float64 for float64 inputs) and counted in the tile's epilogue.
//
// x (rows, D) queries and y (cols, D) gallery items: same dtype in {Float32, Float64, Float16, BFloat16}, unit
// inner stride, any row stride; row c of y is gallery item first_item + c (first_item >= 0).
// Row r's pivots are entries pivot_offsets[r] .. pivot_offsets[r + 1] of pivot_distance (P,) (Float64 for
// Float64 inputs, else Float32) and pivot_index (P,) (Int64 gallery indices), sorted ascending by the ranking
// key (distance, gallery index). For every item g, slot(g) = #{pivots p of the row : key(p) < key(g)}; each
// item with slot < the row's pivot count adds 1 to histogram[(pivot_offsets[r] + slot(g)) * num_groups +
// group(g)], except items whose item_labels[g] equals row_labels[r] (Int64 (rows,) and (>= first_item + cols,),
// both or neither). group(g) = groups[g] (Int64, (>= first_item + cols,), values in [0, num_groups)) or 0
// without groups (then num_groups == 1). NaN distances are never counted: their number is added to
// nan_count[0] (every row's, like the host kernel). histogram (P * num_groups,) and nan_count (1,): Int64,
// contiguous, accumulated (not cleared). All arrays on x's device. The pivots, offsets, labels and groups are
// read on the device and not validated there: the Python layer builds them (offsets non-decreasing, within P).
// Asynchronous on `stream`; counts are integer atomics, so the result does not depend on the schedule.
void rank_count(const ArrayView& x, const ArrayView& y, int64_t first_item, Metric metric,
                const ArrayView& pivot_offsets, const ArrayView& pivot_distance, const ArrayView& pivot_index,
                const ArrayView* row_labels, const ArrayView* item_labels, const ArrayView* groups, int64_t num_groups,
                const ArrayView& histogram, const ArrayView& nan_count, std::uintptr_t stream);

}  // namespace cuda
}  // namespace reidfast
