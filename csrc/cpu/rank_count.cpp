// Rank counting on a block of distances (rank_count.h), for evaluation straight from features.
//
// Per row, the pivots (a query's correct matches, or its sampled matches for CUHK03) are sorted by the
// ranking key (distance, gallery index). An item ranks before pivot j iff its key is smaller, so the items
// of a row fall into slots between consecutive pivots; counting them per slot, over all blocks of the
// gallery, gives every pivot's rank by a prefix sum. Most items lie behind the row's farthest pivot: one
// vector compare per 8 distances drops them (AVX2 where the CPU has it, a scalar loop otherwise), and the
// few others are placed by a binary search over the row's pivots (exact key order, ties by index).
#include "rank_count.h"
#include "rank_slot.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "rerank.h"  // check_overlap_lists

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(REIDFAST_NO_X86_SIMD)
#define REIDFAST_RANK_COUNT_AVX2 1
#include <immintrin.h>
#else
#define REIDFAST_RANK_COUNT_AVX2 0
#endif

namespace reidfast {
namespace cpu {
namespace {

// Columns c of row[0, cols) with !(row[c] > bound) (at or before the bound, or NaN) -> candidates; returns
// how many, in increasing column order.
template <typename T>
int64_t collect_scalar(const T* row, int64_t cols, T bound, int32_t* candidates) {
  int64_t count = 0;
  for (int64_t c = 0; c < cols; ++c) {
    if (!(row[c] > bound)) candidates[count++] = static_cast<int32_t>(c);
  }
  return count;
}

#if REIDFAST_RANK_COUNT_AVX2
__attribute__((target("avx2"))) int64_t collect_avx2(const float* row, int64_t cols, float bound,
                                                      int32_t* candidates) {
  const __m256 limit = _mm256_set1_ps(bound);
  int64_t count = 0, c = 0;
  for (; c + 8 <= cols; c += 8) {
    // _CMP_NGT_UQ: not greater, NaN included (counted by the caller)
    unsigned mask = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(row + c), limit, _CMP_NGT_UQ)));
    for (; mask; mask &= mask - 1) candidates[count++] = static_cast<int32_t>(c + __builtin_ctz(mask));
  }
  for (; c < cols; ++c) {
    if (!(row[c] > bound)) candidates[count++] = static_cast<int32_t>(c);
  }
  return count;
}

__attribute__((target("avx2"))) int64_t collect_avx2(const double* row, int64_t cols, double bound,
                                                      int32_t* candidates) {
  const __m256d limit = _mm256_set1_pd(bound);
  int64_t count = 0, c = 0;
  for (; c + 4 <= cols; c += 4) {
    unsigned mask = static_cast<unsigned>(_mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(row + c), limit, _CMP_NGT_UQ)));
    for (; mask; mask &= mask - 1) candidates[count++] = static_cast<int32_t>(c + __builtin_ctz(mask));
  }
  for (; c < cols; ++c) {
    if (!(row[c] > bound)) candidates[count++] = static_cast<int32_t>(c);
  }
  return count;
}

bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
#endif

template <typename T>
int64_t collect(const T* row, int64_t cols, T bound, int32_t* candidates) {
#if REIDFAST_RANK_COUNT_AVX2
  if (cpu_has_avx2()) return collect_avx2(row, cols, bound, candidates);
#endif
  return collect_scalar(row, cols, bound, candidates);
}

// The value an item is ranked by: its distance, or the re-ranked score of a non-overlapping item.
template <typename T>
struct PlainKey {
  using Value = T;
  Value operator()(T d) const { return d; }
  T bound(Value last_pivot) const { return last_pivot; }
};

template <typename T>
struct RerankKey {
  using Value = float;
  float row_max, keep, blend;
  Value operator()(T d) const { return rerank_score(d, row_max, keep, blend); }
  // The largest d >= 0 whose score is <= last_pivot (scores grow with |d|): the filter's distance bound,
  // found by bisection over the non-negative floats' bit patterns (their order is the integers').
  T bound(Value last_pivot) const {
    using Bits = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
    auto at = [](Bits bits) {
      T value;
      std::memcpy(&value, &bits, sizeof(T));
      return value;
    };
    auto fits = [&](Bits bits) { return (*this)(at(bits)) <= last_pivot; };
    if (!fits(0)) return -std::numeric_limits<T>::infinity();
    const T infinity = std::numeric_limits<T>::infinity();
    Bits lo = 0, hi;  // fits(lo); the answer is in [lo, hi]
    std::memcpy(&hi, &infinity, sizeof(T));
    if (fits(hi)) return infinity;
    while (hi - lo > 1) {  // invariant: fits(lo), !fits(hi)
      const Bits mid = lo + (hi - lo) / 2;
      if (fits(mid)) {
        lo = mid;
      } else {
        hi = mid;
      }
    }
    return at(lo);
  }
};

template <typename T, typename Key, typename MakeKey>
int64_t count_typed(const ArrayView& distances, int64_t col0, const int64_t* offsets,
                    const typename Key::Value* pivot_distance, const int64_t* pivot_index, const int64_t* row_labels,
                    const int64_t* item_labels, const int64_t* groups, int64_t num_groups, int64_t* histogram,
                    MakeKey make_key) {
  using Value = typename Key::Value;
  const int64_t rows = distances.size(0), cols = distances.size(1), stride = distances.stride(0);
  int64_t nan_count = 0;
#pragma omp parallel reduction(+ : nan_count)
  {
    std::vector<int32_t> candidates(static_cast<size_t>(cols));
#pragma omp for schedule(dynamic, 16)
    for (int64_t r = 0; r < rows; ++r) {
      const auto key = make_key(r);
      const int64_t first = offsets[r], count = offsets[r + 1] - first;
      const T* row = distances.ptr<T>() + r * stride;
      const Value* distance = pivot_distance + first;
      const int64_t* index = pivot_index + first;
      // Without pivots only the NaNs (and -inf) are collected: they are counted like any other row's.
      const T bound = count > 0 ? key.bound(distance[count - 1]) : -std::numeric_limits<T>::infinity();
      const int64_t found = collect(row, cols, bound, candidates.data());
      for (int64_t i = 0; i < found; ++i) {
        const int64_t c = candidates[i], g = col0 + c;
        const Value value = key(row[c]);  // NaN iff the distance is (for finite scores)
        if (std::isnan(value)) {
          ++nan_count;
          continue;
        }
        if (row_labels != nullptr && item_labels[g] == row_labels[r]) continue;  // the row's own label: not counted
        const int64_t lo = pivot_slot(distance, index, count, value, g);  // rank_slot.h
        if (lo < count) histogram[(first + lo) * num_groups + (groups ? groups[g] : 0)] += 1;
      }
    }
  }
  return nan_count;
}

template <typename T>
int64_t count_dispatch(const ArrayView& distances, int64_t col0, const int64_t* offsets, const ArrayView& pivot_distance,
                       const int64_t* pivot_index, const int64_t* row_labels, const int64_t* item_labels,
                       const int64_t* groups, int64_t num_groups, int64_t* histogram, const float* row_max, float keep,
                       float blend) {
  if (row_max == nullptr) {
    return count_typed<T, PlainKey<T>>(distances, col0, offsets, pivot_distance.ptr<T>(), pivot_index, row_labels, item_labels,
                          groups, num_groups, histogram, [](int64_t) { return PlainKey<T>(); });
  }
  return count_typed<T, RerankKey<T>>(distances, col0, offsets, pivot_distance.ptr<float>(), pivot_index, row_labels, item_labels,
                        groups, num_groups, histogram,
                        [=](int64_t r) { return RerankKey<T>{row_max[r], keep, blend}; });
}

template <typename T>
void correct_typed(const ArrayView& distances, const int64_t* offsets, const float* pivot_score,
                   const int64_t* pivot_index, const int64_t* row_labels, const int64_t* item_labels,
                   const int64_t* groups, int64_t num_groups, const float* row_max, float keep, float blend,
                   const int64_t* overlap_offsets, const int32_t* overlap_index, const float* overlap_term,
                   int64_t* histogram) {
  const int64_t rows = distances.size(0), stride = distances.stride(0);
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t first = offsets[r], count = offsets[r + 1] - first;
    if (count == 0) continue;
    const T* row = distances.ptr<T>() + r * stride;
    for (int64_t e = overlap_offsets[r]; e < overlap_offsets[r + 1]; ++e) {
      const int64_t g = overlap_index[e];
      if (item_labels[g] == row_labels[r] || std::isnan(row[g])) continue;
      const float plain = rerank_score(row[g], row_max[r], keep, blend);
      const float score = rerank_score(row[g], row_max[r], overlap_term[e], blend);  // term + the same product
      if (plain == score) continue;
      const int64_t group = groups ? groups[g] : 0;
      const int64_t from = pivot_slot(pivot_score + first, pivot_index + first, count, plain, g);
      const int64_t to = pivot_slot(pivot_score + first, pivot_index + first, count, score, g);
      if (from < count) histogram[(first + from) * num_groups + group] -= 1;
      if (to < count) histogram[(first + to) * num_groups + group] += 1;
    }
  }
}

}  // namespace

int64_t rank_count_block(const ArrayView& distances, int64_t col0, const ArrayView& pivot_offsets,
                         const ArrayView& pivot_distance, const ArrayView& pivot_index, const ArrayView* row_labels,
                         const ArrayView* item_labels, const ArrayView* groups, int64_t num_groups,
                         const ArrayView& histogram, const ArrayView* row_max, float keep, float blend) {
  check_matrix(distances, "distances", /*want_cuda=*/false);
  check(distances.dtype == DType::Float32 || distances.dtype == DType::Float64,
        std::string("distances: expected float32 or float64, got ") + dtype_name(distances.dtype));
  const int64_t rows = distances.size(0), cols = distances.size(1);
  check(cols < (int64_t{1} << 31), "distances: expected fewer than 2^31 columns per block");
  check(col0 >= 0, "col0: expected >= 0");
  check_vector(pivot_offsets, "pivot_offsets", rows + 1, DType::Int64);
  const int64_t* offsets = pivot_offsets.ptr<int64_t>();
  const int64_t num_pivots = pivot_distance.ndim() == 1 ? pivot_distance.size(0) : -1;
  if (row_max != nullptr) check_vector(*row_max, "row_max", rows, DType::Float32);
  check_vector(pivot_distance, "pivot_distance", num_pivots, row_max != nullptr ? DType::Float32 : distances.dtype);
  check_vector(pivot_index, "pivot_index", num_pivots, DType::Int64);
  check(offsets[0] >= 0 && offsets[rows] <= num_pivots, "pivot_offsets: expected offsets within the pivots");
  for (int64_t r = 0; r < rows; ++r) check(offsets[r] <= offsets[r + 1], "pivot_offsets: expected non-decreasing offsets");
  check((row_labels == nullptr) == (item_labels == nullptr), "row_labels, item_labels: expected both or neither");
  const int64_t* row_label_ids = nullptr;
  const int64_t* item_label_ids = nullptr;
  if (row_labels != nullptr) {
    check_vector(*row_labels, "row_labels", rows, DType::Int64);
    check(item_labels->ndim() == 1 && item_labels->size(0) >= col0 + cols,
          "item_labels: expected a vector covering the block's columns");
    check_vector(*item_labels, "item_labels", item_labels->size(0), DType::Int64);
    row_label_ids = row_labels->ptr<int64_t>();
    item_label_ids = item_labels->ptr<int64_t>();
  }
  check(num_groups >= 1, "num_groups: expected >= 1");
  const int64_t* group_ids = nullptr;
  if (groups != nullptr) {
    check(groups->ndim() == 1 && groups->size(0) >= col0 + cols, "groups: expected a vector covering the block's columns");
    check_vector(*groups, "groups", groups->size(0), DType::Int64);
    group_ids = groups->ptr<int64_t>();
    for (int64_t c = 0; c < cols; ++c) {
      check(group_ids[col0 + c] >= 0 && group_ids[col0 + c] < num_groups, "groups: expected values in [0, num_groups)");
    }
  } else {
    check(num_groups == 1, "num_groups: expected 1 without groups");
  }
  check_vector(histogram, "histogram", num_pivots * num_groups, DType::Int64);
  const float* scale = row_max != nullptr ? row_max->ptr<float>() : nullptr;
  if (distances.dtype == DType::Float32) {
    return count_dispatch<float>(distances, col0, offsets, pivot_distance, pivot_index.ptr<int64_t>(), row_label_ids,
                                 item_label_ids, group_ids, num_groups, histogram.ptr<int64_t>(), scale, keep, blend);
  }
  return count_dispatch<double>(distances, col0, offsets, pivot_distance, pivot_index.ptr<int64_t>(), row_label_ids,
                                item_label_ids, group_ids, num_groups, histogram.ptr<int64_t>(), scale, keep, blend);
}

void rank_count_overlap_correct(const ArrayView& distances, const ArrayView& pivot_offsets,
                                const ArrayView& pivot_distance, const ArrayView& pivot_index,
                                const ArrayView& row_labels, const ArrayView& item_labels, const ArrayView* groups,
                                int64_t num_groups, const ArrayView& row_max, float keep, float blend,
                                const ArrayView& overlap_offsets, const ArrayView& overlap_index,
                                const ArrayView& overlap_term, const ArrayView& histogram) {
  check_matrix(distances, "distances", /*want_cuda=*/false);
  check(distances.dtype == DType::Float32 || distances.dtype == DType::Float64,
        std::string("distances: expected float32 or float64, got ") + dtype_name(distances.dtype));
  const int64_t rows = distances.size(0), cols = distances.size(1);
  check_vector(pivot_offsets, "pivot_offsets", rows + 1, DType::Int64);
  const int64_t num_pivots = pivot_distance.ndim() == 1 ? pivot_distance.size(0) : -1;
  check_vector(pivot_distance, "pivot_distance", num_pivots, DType::Float32);
  check_vector(pivot_index, "pivot_index", num_pivots, DType::Int64);
  const int64_t* offsets = pivot_offsets.ptr<int64_t>();
  check(offsets[0] >= 0 && offsets[rows] <= num_pivots, "pivot_offsets: expected offsets within the pivots");
  for (int64_t r = 0; r < rows; ++r) check(offsets[r] <= offsets[r + 1], "pivot_offsets: expected non-decreasing offsets");
  check_vector(row_labels, "row_labels", rows, DType::Int64);
  check(item_labels.ndim() == 1 && item_labels.size(0) >= cols, "item_labels: expected a vector covering the columns");
  check_vector(item_labels, "item_labels", item_labels.size(0), DType::Int64);
  check(num_groups >= 1, "num_groups: expected >= 1");
  const int64_t* group_ids = nullptr;
  if (groups != nullptr) {
    check(groups->ndim() == 1 && groups->size(0) >= cols, "groups: expected a vector covering the columns");
    check_vector(*groups, "groups", groups->size(0), DType::Int64);
    group_ids = groups->ptr<int64_t>();
    for (int64_t c = 0; c < cols; ++c) {
      check(group_ids[c] >= 0 && group_ids[c] < num_groups, "groups: expected values in [0, num_groups)");
    }
  } else {
    check(num_groups == 1, "num_groups: expected 1 without groups");
  }
  check_vector(row_max, "row_max", rows, DType::Float32);
  check_overlap_lists(overlap_offsets, overlap_index, overlap_term, rows, cols, /*increasing=*/false);
  const int64_t* overlap = overlap_offsets.ptr<int64_t>();
  const int32_t* index = overlap_index.ptr<int32_t>();
  check_vector(histogram, "histogram", num_pivots * num_groups, DType::Int64);
  if (distances.dtype == DType::Float32) {
    correct_typed<float>(distances, offsets, pivot_distance.ptr<float>(), pivot_index.ptr<int64_t>(),
                         row_labels.ptr<int64_t>(), item_labels.ptr<int64_t>(), group_ids, num_groups,
                         row_max.ptr<float>(), keep, blend, overlap, index, overlap_term.ptr<float>(),
                         histogram.ptr<int64_t>());
  } else {
    correct_typed<double>(distances, offsets, pivot_distance.ptr<float>(), pivot_index.ptr<int64_t>(),
                          row_labels.ptr<int64_t>(), item_labels.ptr<int64_t>(), group_ids, num_groups,
                          row_max.ptr<float>(), keep, blend, overlap, index, overlap_term.ptr<float>(),
                          histogram.ptr<int64_t>());
  }
}

}  // namespace cpu
}  // namespace reidfast
