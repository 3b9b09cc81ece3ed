// The slot rule of rank counting, shared by the counting pass over a block of distances (rank_count.cpp)
// and the one fused into the distance tile (gemm_rank_count.cpp), and the re-ranked evaluation's score
// of an item that shares no k-reciprocal neighbour with its query.
#pragma once

#include <cstdint>

namespace reidfast {
namespace cpu {

// #{pivots p of the row : key(p) < (value, item)}: a binary search on the row's `count` pivots, sorted
// ascending by the ranking key (distance, gallery index) (exact order, ties to the smaller index).
template <typename T>
inline int64_t pivot_slot(const T* pivot_distance, const int64_t* pivot_index, int64_t count, T value, int64_t item) {
  int64_t lo = 0, hi = count;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (pivot_distance[mid] < value || (pivot_distance[mid] == value && pivot_index[mid] < item)) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// keep + (float32(d * d) / row_max) * blend, each operation rounded to float32 in that order: the re-ranked
// distance of an item without a shared k-reciprocal neighbour (ops/rerank.py; keep is 1 - lambda, or an
// overlapping item's Jaccard term). d * d is taken in the distance's own precision (float64 distances square in
// float64, as numpy does), then rounded. The volatile intermediates forbid the compiler to contract a multiply
// and an add into one FMA (a different rounding), whatever the file's -ffp-contract.
template <typename T>
inline float rerank_score(T distance, float row_max, float keep, float blend) {
  volatile float squared = static_cast<float>(distance * distance);
  volatile float scaled = squared / row_max;
  volatile float blended = scaled * blend;
  return keep + blended;
}

}  // namespace cpu
}  // namespace reidfast
