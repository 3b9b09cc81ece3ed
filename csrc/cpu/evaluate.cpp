// Market-1501 evaluation on the CPU without sorting a row.
//
// CMC, AP and INP of a query depend only on the ranks of its correct matches among the valid gallery items
// (valid = not same pid and same camid; ties broken by gallery index, as a stable sort does):
//   rank(m) = 1 + #{valid v : (d_v, v) < (d_m, m)}   (lexicographic key: distance, then gallery index).
// Per query (OpenMP over queries):
//   1. the correct matches are the gallery items of the query's pid in other cameras; a table of gallery
//      indices grouped by pid (built once, O(G log G)) lists them, and the removed same-camera items,
//      without scanning the row;
//   2. k <= 32 matches (the usual case): one branch-free, vectorised counting pass over the row per match,
//      #{g : (d_g, g) < (d_m, m)}, minus the removed items before it. O(k G / lanes), whatever the
//      distances look like;
//   3. more matches: sort them by key, then one pass over the row: each valid item falls at slot
//      p = #{match keys <= its key} (binary search; items behind the farthest match skip it) and bumps
//      count[p]; the i-th match's rank is 1 + count[0] + ... + count[i]. O(G log k).
// Scratch memory is O(k) per thread; no row is sorted and no Q x G index or match matrix exists.
//
// AP is summed exactly as numpy sums the reference's full-length precision vector (pairwise summation,
// see pairwise_sum_of_sparse), so the float64 AP is bit-identical to reidfast/reference/evaluation.py.
//
// The CUHK03 protocol is in evaluate_cuhk03.cpp; what both share is in evaluate_internal.h.
#include "evaluate.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "evaluate_internal.h"

namespace reidfast {
namespace cpu {
namespace {

using evaluate_detail::check_ranking_inputs;
using evaluate_detail::GalleryByPid;
using evaluate_detail::key_less;
using evaluate_detail::Match;

// Up to this many matches a query is ranked by one vectorised counting pass per match (k * G / lanes
// comparisons, no branches); above it by one pass with a binary search per item (G log k).
constexpr int64_t kMaxMatchesForCounting = 32;
constexpr int64_t kCountBlock = int64_t{1} << 30;  // int32 block counters cannot overflow

void check_output_vector(const ArrayView& a, const char* name, int64_t length, DType dtype) {
  check(!a.on_cuda() && a.ndim() == 1 && a.size(0) == length && (length <= 1 || a.stride(0) == 1),
        std::string(name) + ": expected a contiguous host vector of length " + std::to_string(length));
  check(a.dtype == dtype, std::string(name) + ": expected dtype " + dtype_name(dtype) + ", got " + dtype_name(a.dtype));
}

// numpy's pairwise summation (numpy/_core/src/umath/loops_utils.h.src, pairwise_sum), of a float64 vector of
// length n that is zero except at the sorted positions position[lo..hi) (relative offset `start`), holding
// value[lo..hi). Adding 0.0 is exact, so skipping the zeros while keeping numpy's block structure (blocks
// of <= 128 split at multiples of 8, 8 interleaved accumulators, a sequential tail) reproduces numpy's
// result bit for bit: np.sum(a) == 0.0 + pairwise_sum(a, n).
double pairwise_sum_of_sparse(const int64_t* position, const double* value, int64_t lo, int64_t hi, int64_t start,
                              int64_t n) {
  if (lo == hi) return 0.0;
  if (n < 8) {
    double sum = 0.0;
    for (int64_t i = lo; i < hi; ++i) sum += value[i];
    return sum;
  }
  if (n <= 128) {
    double lane[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    const int64_t unrolled_end = start + n - n % 8;
    int64_t i = lo;
    for (; i < hi && position[i] < unrolled_end; ++i) lane[(position[i] - start) % 8] += value[i];
    double sum = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
    for (; i < hi; ++i) sum += value[i];
    return sum;
  }
  int64_t half = n / 2;
  half -= half % 8;
  const int64_t split = std::lower_bound(position + lo, position + hi, start + half) - position;
  return pairwise_sum_of_sparse(position, value, lo, split, start, half) +
         pairwise_sum_of_sparse(position, value, split, hi, start + half, n - half);
}

// #{g : (row[g], g) < (distance, index)}: two branch-free counting loops the compiler vectorises.
template <typename T>
inline int64_t count_keys_before(const T* row, int64_t length, T distance, int64_t index) {
  int64_t count = 0;
  for (int64_t begin = 0; begin < length; begin += kCountBlock) {  // int32 lanes vectorise best
    const int64_t end = std::min(length, begin + kCountBlock);
    const int64_t split = std::min(std::max(index, begin), end);
    int32_t block_count = 0;
#pragma omp simd reduction(+ : block_count)
    for (int64_t g = begin; g < split; ++g) block_count += row[g] <= distance ? 1 : 0;  // before: ties count
#pragma omp simd reduction(+ : block_count)
    for (int64_t g = std::max(split, index + 1); g < end; ++g) block_count += row[g] < distance ? 1 : 0;
    count += block_count;
  }
  return count;
}

REIDFAST_SIMD_CLONES int64_t count_keys_before_simd(const float* row, int64_t length, float distance, int64_t index) {
  return count_keys_before(row, length, distance, index);
}

REIDFAST_SIMD_CLONES int64_t count_keys_before_simd(const double* row, int64_t length, double distance,
                                                    int64_t index) {
  return count_keys_before(row, length, distance, index);
}

// Ranks of the matches by one counting pass per match: k vectorised passes over the row. Fast for few
// matches (the common case), whatever the distances look like.
template <typename T>
void match_positions_by_counting(const T* row, int64_t num_gallery, const std::vector<Match<T>>& matches,
                                 const std::vector<Match<T>>& removed, std::vector<int64_t>& match_position) {
  match_position.clear();
  for (const Match<T>& match : matches) {
    int64_t position = count_keys_before_simd(row, num_gallery, match.distance, match.index);
    for (const Match<T>& item : removed) {
      if (key_less(item.distance, item.index, match.distance, match.index)) --position;
    }
    match_position.push_back(position);
  }
  std::sort(match_position.begin(), match_position.end());
}

// Ranks of the matches by one pass over the row: each valid item's slot among the sorted match keys
// (binary search; items behind the farthest match skip it), then prefix sums. O(G log k) for many matches.
template <typename T>
void match_positions_by_slots(const T* row, int64_t num_gallery, const int64_t* g_pids, const int64_t* g_camids,
                              int64_t pid, int64_t camid, std::vector<Match<T>>& matches,
                              std::vector<T>& match_distance, std::vector<int64_t>& items_at_slot,
                              std::vector<int64_t>& match_position) {
  std::sort(matches.begin(), matches.end(), [](const Match<T>& a, const Match<T>& b) {
    return key_less(a.distance, a.index, b.distance, b.index);
  });
  const int64_t num_matches = static_cast<int64_t>(matches.size());
  match_distance.resize(matches.size());
  for (int64_t i = 0; i < num_matches; ++i) match_distance[i] = matches[i].distance;
  items_at_slot.assign(matches.size(), 0);
  const T farthest_match = match_distance[num_matches - 1];
  const T* first = match_distance.data();
  for (int64_t g = 0; g < num_gallery; ++g) {
    const T d = row[g];
    if (d > farthest_match) continue;                        // behind every match: counts in no rank
    if (g_pids[g] == pid && g_camids[g] == camid) continue;  // removed from the ranking
    int64_t slot = std::lower_bound(first, first + num_matches, d) - first;
    while (slot < num_matches && match_distance[slot] == d && matches[slot].index <= g) ++slot;  // ties: by index
    if (slot < num_matches) ++items_at_slot[slot];
  }
  // The i-th match is preceded by the valid items in slots 0..i (match i itself sits in slot i + 1).
  match_position.resize(matches.size());
  int64_t preceding = 0;
  for (int64_t i = 0; i < num_matches; ++i) {
    preceding += items_at_slot[i];
    match_position[i] = preceding;
  }
}

template <typename T>
void evaluate_typed(const ArrayView& distmat, const int64_t* q_pids, const int64_t* g_pids, const int64_t* q_camids,
                    const int64_t* g_camids, int64_t* first_match_rank, double* average_precision,
                    double* inverse_negative_penalty) {
  const int64_t num_query = distmat.size(0), num_gallery = distmat.size(1), row_stride = distmat.stride(0);
  const T* distances = distmat.ptr<T>();
  const GalleryByPid gallery(g_pids, num_gallery);

#pragma omp parallel
  {
    std::vector<Match<T>> matches;        // the query's correct matches: same pid, other camera
    std::vector<Match<T>> removed;        // same pid, same camera: not in the ranking
    std::vector<T> match_distance;        // scratch of match_positions_by_slots
    std::vector<int64_t> items_at_slot;   // scratch of match_positions_by_slots
    std::vector<int64_t> match_position;  // 0-based rank of each match among the valid items, ascending
    std::vector<double> match_precision;  // (i + 1) / rank_i

#pragma omp for schedule(dynamic, 8)
    for (int64_t q = 0; q < num_query; ++q) {
      const T* row = distances + q * row_stride;
      const int64_t pid = q_pids[q], camid = q_camids[q];

      const auto group_begin = std::lower_bound(gallery.pids.begin(), gallery.pids.end(), pid);
      const auto group_end = std::upper_bound(group_begin, gallery.pids.end(), pid);
      matches.clear();
      removed.clear();
      for (auto it = group_begin; it != group_end; ++it) {
        const int64_t g = gallery.indices[static_cast<size_t>(it - gallery.pids.begin())];
        (g_camids[g] == camid ? removed : matches).push_back({row[g], g});
      }
      const int64_t num_matches = static_cast<int64_t>(matches.size());
      if (num_matches == 0) {
        first_match_rank[q] = 0;
        average_precision[q] = 0.0;
        inverse_negative_penalty[q] = 0.0;
        continue;
      }
      if (num_matches <= kMaxMatchesForCounting) {
        match_positions_by_counting(row, num_gallery, matches, removed, match_position);
      } else {
        match_positions_by_slots(row, num_gallery, g_pids, g_camids, pid, camid, matches, match_distance,
                                 items_at_slot, match_position);
      }

      match_precision.resize(matches.size());
      for (int64_t i = 0; i < num_matches; ++i) {
        match_precision[i] = static_cast<double>(i + 1) / static_cast<double>(match_position[i] + 1);
      }
      const int64_t num_valid_items = num_gallery - static_cast<int64_t>(removed.size());
      first_match_rank[q] = match_position[0] + 1;
      const double precision_sum =
          0.0 + pairwise_sum_of_sparse(match_position.data(), match_precision.data(), 0, num_matches, 0, num_valid_items);
      average_precision[q] = precision_sum / static_cast<double>(num_matches);
      inverse_negative_penalty[q] =
          static_cast<double>(num_matches) / static_cast<double>(match_position[num_matches - 1] + 1);
    }
  }
}

}  // namespace

void evaluate_market1501(const ArrayView& distmat, const ArrayView& q_pids, const ArrayView& g_pids,
                         const ArrayView& q_camids, const ArrayView& g_camids, const ArrayView& first_match_rank,
                         const ArrayView& average_precision, const ArrayView& inverse_negative_penalty) {
  check_ranking_inputs(distmat, q_pids, g_pids, q_camids, g_camids);
  const int64_t num_query = distmat.size(0);
  check_output_vector(first_match_rank, "first_match_rank", num_query, DType::Int64);
  check_output_vector(average_precision, "average_precision", num_query, DType::Float64);
  check_output_vector(inverse_negative_penalty, "inverse_negative_penalty", num_query, DType::Float64);
  if (num_query == 0) return;
  if (distmat.dtype == DType::Float32) {
    evaluate_typed<float>(distmat, q_pids.ptr<int64_t>(), g_pids.ptr<int64_t>(), q_camids.ptr<int64_t>(),
                          g_camids.ptr<int64_t>(), first_match_rank.ptr<int64_t>(), average_precision.ptr<double>(),
                          inverse_negative_penalty.ptr<double>());
  } else {
    evaluate_typed<double>(distmat, q_pids.ptr<int64_t>(), g_pids.ptr<int64_t>(), q_camids.ptr<int64_t>(),
                           g_camids.ptr<int64_t>(), first_match_rank.ptr<int64_t>(), average_precision.ptr<double>(),
                           inverse_negative_penalty.ptr<double>());
  }
}

}  // namespace cpu
}  // namespace reidfast
