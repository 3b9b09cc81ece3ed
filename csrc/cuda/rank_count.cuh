// The rank-counting epilogue of a 64 x 64 distance tile (rank_count.cu): each finished entry is filtered
// against its row's farthest pivot and the few survivors are placed among the row's sorted pivots. The rule
// is csrc/cpu/rank_count.cpp's, entry for entry: key (distance, gallery index), ties to the smaller index,
// the row's own label skipped, NaNs counted apart.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "tile64.cuh"

namespace reidfast {
namespace cuda {
namespace counting {

// The counting pass's inputs beyond the features (rank_count.h): per row a sorted run of pivots, and per
// gallery item (by global index) its label and group.
template <typename AccT>
struct Pivots {
  const int64_t* offsets;      // (rows + 1,): row r's pivots are [offsets[r], offsets[r + 1])
  const AccT* distance;        // (P,)
  const int64_t* index;        // (P,) gallery indices
  const int64_t* row_labels;   // (rows,), or null: no label is skipped
  const int64_t* item_labels;  // by gallery index, or null
  const int64_t* groups;       // by gallery index, or null: group 0
  int64_t num_groups;
};

// What the filter and the placement need of the block's 64 rows, staged once per block in shared memory.
template <typename AccT>
struct RowBounds {
  int64_t first[tile64::kTileRows];  // the row's first pivot
  int64_t count[tile64::kTileRows];  // its number of pivots
  int64_t label[tile64::kTileRows];
  int64_t last_index[tile64::kTileRows];  // the farthest pivot's key: (last_distance, last_index)
  AccT last_distance[tile64::kTileRows];  // (-inf, -1) without pivots: every item ranks after it
};

// Whether (value, item) ranks before (distance, index): smaller distance, ties to the smaller gallery index.
// Neither value nor distance is NaN (pivots never are; NaN entries are set apart first).
template <typename AccT>
__device__ __forceinline__ bool ranks_before(AccT value, int64_t item, AccT distance, int64_t index) {
  return value < distance || (value == distance && item < index);
}

// Threads [0, 64) stage row row0 + threadIdx.x. Visible to the block after its next barrier.
template <typename AccT>
__device__ __forceinline__ void stage_rows(const Pivots<AccT>& pivots, int64_t rows, int64_t row0,
                                           RowBounds<AccT>& bounds) {
  const int local_row = static_cast<int>(threadIdx.x);
  if (local_row >= tile64::kTileRows || row0 + local_row >= rows) return;
  const int64_t row = row0 + local_row;
  const int64_t first = pivots.offsets[row];
  const int64_t count = pivots.offsets[row + 1] - first;
  bounds.first[local_row] = first;
  bounds.count[local_row] = count;
  bounds.label[local_row] = pivots.row_labels != nullptr ? pivots.row_labels[row] : 0;
  bounds.last_distance[local_row] = count > 0 ? pivots.distance[first + count - 1] : -std::numeric_limits<AccT>::infinity();
  bounds.last_index[local_row] = count > 0 ? pivots.index[first + count - 1] : -1;
}

// slot = #{pivots p of the run [distance, index)[0, count) with key(p) < (value, item)} (lower bound).
template <typename AccT>
__device__ __forceinline__ int64_t slot_of(const AccT* __restrict__ distance, const int64_t* __restrict__ index,
                                           int64_t count, AccT value, int64_t item) {
  int64_t low = 0, high = count;
  while (low < high) {
    const int64_t middle = (low + high) / 2;
    if (ranks_before(distance[middle], index[middle], value, item)) {
      low = middle + 1;
    } else {
      high = middle;
    }
  }
  return low;
}

// Counts the entries (local_row, col0 + [0, 4)) of a finished tile row: a value (its item: first_item +
// column) whose slot is below the row's pivot count, i.e. whose key is not after the farthest pivot's (an
// item equal to a pivot's key takes that pivot's slot, as on the host), goes to the histogram; returns how
// many entries are NaN. Columns >= cols are outside y.
template <typename AccT>
__device__ __forceinline__ unsigned count_entries(const Pivots<AccT>& pivots, const RowBounds<AccT>& bounds,
                                                  int local_row, const AccT (&values)[tile64::kMicroCols],
                                                  int64_t col0, int64_t cols, int64_t first_item,
                                                  unsigned long long* __restrict__ histogram) {
  const AccT last_distance = bounds.last_distance[local_row];
  const int64_t last_index = bounds.last_index[local_row];
  unsigned nans = 0;
#pragma unroll
  for (int j = 0; j < tile64::kMicroCols; ++j) {
    const int64_t col = col0 + j;
    const AccT value = values[j];
    if (col >= cols) break;  // columns only increase with j
    if (value != value) {
      ++nans;
      continue;
    }
    const int64_t item = first_item + col;
    if (ranks_before(last_distance, last_index, value, item)) continue;  // after every pivot: most items
    if (pivots.row_labels != nullptr && pivots.item_labels[item] == bounds.label[local_row]) continue;
    const int64_t first = bounds.first[local_row];
    const int64_t slot = slot_of(pivots.distance + first, pivots.index + first, bounds.count[local_row], value, item);
    const int64_t group = pivots.groups != nullptr ? pivots.groups[item] : 0;
    atomicAdd(histogram + (first + slot) * pivots.num_groups + group, 1ull);
  }
  return nans;
}

}  // namespace counting
}  // namespace cuda
}  // namespace reidfast
