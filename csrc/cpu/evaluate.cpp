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
// CUHK03: which image of each identity every sampled gallery takes is drawn from numpy's seeded generator
// exactly as the reference draws it (cuhk03_draw_offsets replays numpy's bounded-integer algorithm on the
// generator's own bits). Then (evaluate_cuhk03_sampled_ranks) identity j's o-th image in ranking order
// ranks before a sampled match P iff more than o of j's images rank before P, so per query one pass over
// the row counts, for each distinct sampled match (<= R pivots), each identity's images before it; each
// repeat then compares those counts with its offsets. No row or identity group is sorted.
#include "evaluate.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

namespace reidfast {
namespace cpu {
namespace {

// Up to this many matches a query is ranked by one vectorised counting pass per match (k * G / lanes
// comparisons, no branches); above it by one pass with a binary search per item (G log k).
constexpr int64_t kMaxMatchesForCounting = 32;
constexpr int64_t kCountBlock = int64_t{1} << 30;  // int32 block counters cannot overflow

void check_label_vector(const ArrayView& a, const char* name, int64_t length, const char* length_source) {
  std::ostringstream why;
  if (a.on_cuda()) {
    why << name << ": expected host memory";
    fail(why.str());
  }
  if (a.ndim() != 1 || a.size(0) != length) {
    why << name << ": expected a vector of length " << length << " (" << length_source << ")";
    fail(why.str());
  }
  if (length > 1 && a.stride(0) != 1) {
    why << name << ": expected a contiguous vector, got stride " << a.stride(0);
    fail(why.str());
  }
  if (a.dtype != DType::Int64) {
    why << name << ": expected int64 labels, got " << dtype_name(a.dtype);
    fail(why.str());
  }
}

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

// Gallery indices grouped by pid: indices[begin(pid) .. end(pid)) in increasing gallery index.
struct GalleryByPid {
  std::vector<int64_t> pids;     // sorted
  std::vector<int64_t> indices;  // gallery index of each entry of `pids`

  explicit GalleryByPid(const int64_t* g_pids, int64_t num_gallery) : indices(static_cast<size_t>(num_gallery)) {
    std::iota(indices.begin(), indices.end(), int64_t{0});
    std::stable_sort(indices.begin(), indices.end(), [g_pids](int64_t a, int64_t b) { return g_pids[a] < g_pids[b]; });
    pids.resize(indices.size());
    for (size_t i = 0; i < indices.size(); ++i) pids[i] = g_pids[indices[i]];
  }
};

template <typename T>
struct Match {
  T distance;
  int64_t index;
};

// Key order of the ranking: by distance, then by gallery index (the order of a stable sort).
template <typename T>
inline bool key_less(T distance_a, int64_t index_a, T distance_b, int64_t index_b) {
  return distance_a < distance_b || (distance_a == distance_b && index_a < index_b);
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

// The counting loops are the hot spot: on x86-64 GCC also compiles them for AVX2 (twice the lanes of the
// baseline SSE2) and picks the version at load time (ifunc), so the module still runs on any x86-64 CPU.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define REIDFAST_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define REIDFAST_SIMD_CLONES
#endif

REIDFAST_SIMD_CLONES int64_t count_keys_before_simd(const float* row, int64_t length, float distance, int64_t index) {
  return count_keys_before(row, length, distance, index);
}

REIDFAST_SIMD_CLONES int64_t count_keys_before_simd(const double* row, int64_t length, double distance,
                                                    int64_t index) {
  return count_keys_before(row, length, distance, index);
}

// slot[g] += 1 for the items g ranked after (distance, index): (row[g], g) > (distance, index), vectorised.
template <typename T>
inline void add_one_after_key(const T* row, int64_t length, T distance, int64_t index, int32_t* slot) {
  const int64_t split = std::min(std::max(index, int64_t{0}), length);
#pragma omp simd
  for (int64_t g = 0; g < split; ++g) slot[g] += row[g] > distance ? 1 : 0;  // before the index: ties rank first
#pragma omp simd
  for (int64_t g = split + 1; g < length; ++g) slot[g] += row[g] >= distance ? 1 : 0;
}

REIDFAST_SIMD_CLONES void add_one_after_key_simd(const float* row, int64_t length, float distance, int64_t index,
                                                 int32_t* slot) {
  add_one_after_key(row, length, distance, index, slot);
}

REIDFAST_SIMD_CLONES void add_one_after_key_simd(const double* row, int64_t length, double distance, int64_t index,
                                                 int32_t* slot) {
  add_one_after_key(row, length, distance, index, slot);
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

// numpy's C interface to a bit generator (numpy/random/bitgen.h), reached through the address Python gives.
struct NumpyBitGenerator {
  void* state;
  uint64_t (*next_uint64)(void* state);
  uint32_t (*next_uint32)(void* state);
  double (*next_double)(void* state);
  uint64_t (*next_raw)(void* state);
};

// numpy's random_bounded_uint64(state, 0, rng = high - 1, mask, use_masked = false) for 1 <= high < 2^32:
// no bits for rng == 0, else Lemire's multiply-and-reject on 32-bit words (buffered_bounded_lemire_uint32).
inline int64_t numpy_bounded_draw(const NumpyBitGenerator& generator, uint64_t high) {
  const uint32_t rng = static_cast<uint32_t>(high - 1);
  if (rng == 0) return 0;
  const uint32_t rng_excl = rng + 1;
  uint64_t m = static_cast<uint64_t>(generator.next_uint32(generator.state)) * rng_excl;
  uint32_t leftover = static_cast<uint32_t>(m);
  if (leftover < rng_excl) {
    const uint32_t threshold = (UINT32_MAX - rng) % rng_excl;
    while (leftover < threshold) {
      m = static_cast<uint64_t>(generator.next_uint32(generator.state)) * rng_excl;
      leftover = static_cast<uint32_t>(m);
    }
  }
  return static_cast<int64_t>(m >> 32);
}

// CUHK03 sampled ranks of one distance type; see evaluate_cuhk03_sampled_ranks in evaluate.h.
template <typename T>
void cuhk03_typed(const ArrayView& distmat, const int64_t* q_pids, const int64_t* g_pids, const int64_t* q_camids,
                  const int64_t* g_camids, const int64_t* identity, const int64_t* offsets, int64_t num_repeats,
                  int64_t num_identities, int64_t* sampled_rank) {
  const int64_t num_query = distmat.size(0), num_gallery = distmat.size(1), row_stride = distmat.stride(0);
  const T* distances = distmat.ptr<T>();
  const GalleryByPid gallery(g_pids, num_gallery);
  std::atomic<int64_t> bad_query{-1};  // a query whose own offset is not below its number of matches

#pragma omp parallel
  {
    std::vector<Match<T>> matches;        // the query's correct matches, sorted by key
    std::vector<int64_t> pivot_match;     // distinct sampled match indices into `matches`, ascending
    std::vector<T> pivot_distance;        // their keys: distance ...
    std::vector<int64_t> pivot_index;     // ... and gallery index
    std::vector<int32_t> pivots_before;   // (G,): per item, the number of pivots ranked before it
    std::vector<int32_t> images_before;   // (pivots + 1, identities): images of j ranked before pivot s

#pragma omp for schedule(dynamic, 8)
    for (int64_t q = 0; q < num_query; ++q) {
      const T* row = distances + q * row_stride;
      const int64_t pid = q_pids[q], camid = q_camids[q];
      int64_t* ranks = sampled_rank + q * num_repeats;
      const int64_t* query_offsets = offsets + q * num_repeats * num_identities;

      const auto group_begin = std::lower_bound(gallery.pids.begin(), gallery.pids.end(), pid);
      const auto group_end = std::upper_bound(group_begin, gallery.pids.end(), pid);
      matches.clear();
      for (auto it = group_begin; it != group_end; ++it) {
        const int64_t g = gallery.indices[static_cast<size_t>(it - gallery.pids.begin())];
        if (g_camids[g] != camid) matches.push_back({row[g], g});
      }
      const int64_t num_matches = static_cast<int64_t>(matches.size());
      if (num_matches == 0) {
        std::fill(ranks, ranks + num_repeats, int64_t{0});
        continue;
      }
      std::sort(matches.begin(), matches.end(), [](const Match<T>& a, const Match<T>& b) {
        return key_less(a.distance, a.index, b.distance, b.index);
      });
      const int64_t own_identity = identity[matches[0].index];

      pivot_match.clear();
      bool offsets_ok = true;
      for (int64_t r = 0; r < num_repeats; ++r) {
        const int64_t o = query_offsets[r * num_identities + own_identity];
        offsets_ok = offsets_ok && o >= 0 && o < num_matches;
        pivot_match.push_back(o);
      }
      if (!offsets_ok) {
        bad_query.store(q);
        std::fill(ranks, ranks + num_repeats, int64_t{0});
        continue;
      }
      std::sort(pivot_match.begin(), pivot_match.end());
      pivot_match.erase(std::unique(pivot_match.begin(), pivot_match.end()), pivot_match.end());
      const int64_t num_pivots = static_cast<int64_t>(pivot_match.size());
      pivot_distance.resize(pivot_match.size());
      pivot_index.resize(pivot_match.size());
      for (int64_t s = 0; s < num_pivots; ++s) {
        pivot_distance[s] = matches[pivot_match[s]].distance;
        pivot_index[s] = matches[pivot_match[s]].index;
      }

      // An item with s pivots before it ranks before pivots s, s + 1, ...: one vectorised pass per pivot
      // counts s, one pass bins the items by (s, identity); row num_pivots collects those after every
      // pivot. The query's own identity is counted too but never compared.
      pivots_before.assign(static_cast<size_t>(num_gallery), 0);
      for (int64_t s = 0; s < num_pivots; ++s) {
        add_one_after_key_simd(row, num_gallery, pivot_distance[s], pivot_index[s], pivots_before.data());
      }
      images_before.assign(static_cast<size_t>((num_pivots + 1) * num_identities), 0);
      for (int64_t g = 0; g < num_gallery; ++g) {
        ++images_before[static_cast<size_t>(pivots_before[g] * num_identities + identity[g])];
      }
      for (int64_t s = 1; s < num_pivots; ++s) {
        int32_t* current = images_before.data() + s * num_identities;
        const int32_t* previous = current - num_identities;
        for (int64_t j = 0; j < num_identities; ++j) current[j] += previous[j];
      }

      for (int64_t r = 0; r < num_repeats; ++r) {
        const int64_t* repeat_offsets = query_offsets + r * num_identities;
        const int64_t s = std::lower_bound(pivot_match.begin(), pivot_match.end(), repeat_offsets[own_identity]) -
                          pivot_match.begin();
        const int32_t* before = images_before.data() + s * num_identities;
        int64_t preceding = 0;
        for (int64_t j = 0; j < num_identities; ++j) preceding += before[j] > repeat_offsets[j] ? 1 : 0;
        preceding -= before[own_identity] > repeat_offsets[own_identity] ? 1 : 0;
        ranks[r] = 1 + preceding;
      }
    }
  }
  const int64_t bad = bad_query.load();
  if (bad >= 0) {
    fail("offsets: query " + std::to_string(bad) + " samples a match index outside [0, its number of matches)");
  }
}

// A host float32/float64 distmat (Q, G) and its four label vectors.
void check_ranking_inputs(const ArrayView& distmat, const ArrayView& q_pids, const ArrayView& g_pids,
                          const ArrayView& q_camids, const ArrayView& g_camids) {
  check_matrix(distmat, "distmat", /*want_cuda=*/false);
  if (distmat.dtype != DType::Float32 && distmat.dtype != DType::Float64) {
    fail(std::string("distmat: the CPU kernel takes float32 or float64 distances, got ") + dtype_name(distmat.dtype));
  }
  const int64_t num_query = distmat.size(0), num_gallery = distmat.size(1);
  check_label_vector(q_pids, "q_pids", num_query, "distmat rows");
  check_label_vector(q_camids, "q_camids", num_query, "distmat rows");
  check_label_vector(g_pids, "g_pids", num_gallery, "distmat columns");
  check_label_vector(g_camids, "g_camids", num_gallery, "distmat columns");
}

}  // namespace

void evaluate_market1501(const ArrayView& distmat, const ArrayView& q_pids, const ArrayView& g_pids,
                         const ArrayView& q_camids, const ArrayView& g_camids, const ArrayView& first_match_rank,
                         const ArrayView& average_precision, const ArrayView& inverse_negative_penalty) {
  check_ranking_inputs(distmat, q_pids, g_pids, q_camids, g_camids);
  const int64_t num_query = distmat.size(0), num_gallery = distmat.size(1);
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

void cuhk03_draw_offsets(std::uintptr_t bit_generator, const ArrayView& images_per_identity,
                         const ArrayView& own_identity, const ArrayView& num_matches, const ArrayView& offsets) {
  check(bit_generator != 0, "bit_generator: expected the address of numpy's bitgen_t, got 0");
  check(!offsets.on_cuda() && offsets.ndim() == 3 && offsets.dtype == DType::Int64,
        "offsets: expected a host int64 array of shape (num_query, num_repeats, num_identities)");
  const int64_t num_query = offsets.size(0), num_repeats = offsets.size(1), num_identities = offsets.size(2);
  check(offsets.stride(2) == 1 && offsets.stride(1) == num_identities && offsets.stride(0) == num_repeats * num_identities,
        "offsets: expected a contiguous array");
  check_label_vector(images_per_identity, "images_per_identity", num_identities, "identities");
  check_label_vector(own_identity, "own_identity", num_query, "queries");
  check_label_vector(num_matches, "num_matches", num_query, "queries");
  const int64_t* counts = images_per_identity.ptr<int64_t>();
  const int64_t* own = own_identity.ptr<int64_t>();
  const int64_t* matches = num_matches.ptr<int64_t>();
  constexpr int64_t kMaxBound = int64_t{UINT32_MAX};
  for (int64_t j = 0; j < num_identities; ++j) {
    check(counts[j] >= 1 && counts[j] <= kMaxBound, "images_per_identity: expected values in [1, 2^32 - 1]");
  }
  for (int64_t q = 0; q < num_query; ++q) {
    check(matches[q] >= 0 && matches[q] <= kMaxBound, "num_matches: expected values in [0, 2^32 - 1]");
    check(matches[q] == 0 || (own[q] >= 0 && own[q] < num_identities),
          "own_identity: expected values in [0, " + std::to_string(num_identities) + ") for queries with matches");
  }
  const NumpyBitGenerator& generator = *reinterpret_cast<const NumpyBitGenerator*>(bit_generator);
  int64_t* out = offsets.ptr<int64_t>();
  for (int64_t q = 0; q < num_query; ++q) {  // sequential: one stream, in numpy's element order
    if (matches[q] == 0) continue;
    for (int64_t r = 0; r < num_repeats; ++r) {
      int64_t* row = out + (q * num_repeats + r) * num_identities;
      for (int64_t j = 0; j < num_identities; ++j) {
        row[j] = numpy_bounded_draw(generator, static_cast<uint64_t>(j == own[q] ? matches[q] : counts[j]));
      }
    }
  }
}

void evaluate_cuhk03_sampled_ranks(const ArrayView& distmat, const ArrayView& q_pids, const ArrayView& g_pids,
                                   const ArrayView& q_camids, const ArrayView& g_camids, const ArrayView& identity,
                                   const ArrayView& offsets, const ArrayView& sampled_rank) {
  check_ranking_inputs(distmat, q_pids, g_pids, q_camids, g_camids);
  const int64_t num_query = distmat.size(0), num_gallery = distmat.size(1);
  check_label_vector(identity, "identity", num_gallery, "distmat columns");
  check(!offsets.on_cuda() && offsets.ndim() == 3 && offsets.size(0) == num_query && offsets.dtype == DType::Int64,
        "offsets: expected a host int64 array of shape (num_query, num_repeats, num_identities)");
  const int64_t num_repeats = offsets.size(1), num_identities = offsets.size(2);
  check(num_repeats >= 1 && num_identities >= 1, "offsets: expected num_repeats >= 1 and num_identities >= 1");
  check(offsets.stride(2) == 1 && offsets.stride(1) == num_identities && offsets.stride(0) == num_repeats * num_identities,
        "offsets: expected a contiguous array");
  check(!sampled_rank.on_cuda() && sampled_rank.ndim() == 2 && sampled_rank.size(0) == num_query &&
            sampled_rank.size(1) == num_repeats && sampled_rank.stride(1) == 1 && sampled_rank.stride(0) == num_repeats,
        "sampled_rank: expected a contiguous host array of shape (num_query, num_repeats)");
  check(sampled_rank.dtype == DType::Int64, std::string("sampled_rank: expected int64, got ") + dtype_name(sampled_rank.dtype));
  const int64_t* identity_data = identity.ptr<int64_t>();
  for (int64_t g = 0; g < num_gallery; ++g) {
    check(identity_data[g] >= 0 && identity_data[g] < num_identities,
          "identity: expected values in [0, " + std::to_string(num_identities) + "), got " +
              std::to_string(identity_data[g]) + " at " + std::to_string(g));
  }
  if (num_query == 0) return;
  if (distmat.dtype == DType::Float32) {
    cuhk03_typed<float>(distmat, q_pids.ptr<int64_t>(), g_pids.ptr<int64_t>(), q_camids.ptr<int64_t>(),
                        g_camids.ptr<int64_t>(), identity_data, offsets.ptr<int64_t>(), num_repeats, num_identities,
                        sampled_rank.ptr<int64_t>());
  } else {
    cuhk03_typed<double>(distmat, q_pids.ptr<int64_t>(), g_pids.ptr<int64_t>(), q_camids.ptr<int64_t>(),
                         g_camids.ptr<int64_t>(), identity_data, offsets.ptr<int64_t>(), num_repeats, num_identities,
                         sampled_rank.ptr<int64_t>());
  }
}

}  // namespace cpu
}  // namespace reidfast
