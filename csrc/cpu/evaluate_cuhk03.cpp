// CUHK03 single-shot evaluation on the CPU without sorting a row (the protocol: evaluate.h).
//
// Which image of each identity every sampled gallery takes is drawn from numpy's seeded generator exactly
// as the reference draws it (cuhk03_draw_offsets replays numpy's bounded-integer algorithm on the
// generator's own bits). Then (evaluate_cuhk03_sampled_ranks) identity j's o-th image in ranking order
// ranks before a sampled match P iff more than o of j's images rank before P, so per query one pass over
// the row counts, for each distinct sampled match (<= R pivots), each identity's images before it; each
// repeat then compares those counts with its offsets. No row or identity group is sorted.
#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <string>
#include <vector>

#include "evaluate.h"
#include "evaluate_internal.h"

namespace reidfast {
namespace cpu {
namespace {

using evaluate_detail::check_label_vector;
using evaluate_detail::check_ranking_inputs;
using evaluate_detail::GalleryByPid;
using evaluate_detail::key_less;
using evaluate_detail::Match;

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

// The query's correct matches (its pid, other cameras), sorted by ranking key.
template <typename T>
void sorted_matches(const T* row, const GalleryByPid& gallery, const int64_t* g_camids, int64_t pid, int64_t camid,
                    std::vector<Match<T>>& matches) {
  const auto group_begin = std::lower_bound(gallery.pids.begin(), gallery.pids.end(), pid);
  const auto group_end = std::upper_bound(group_begin, gallery.pids.end(), pid);
  matches.clear();
  for (auto it = group_begin; it != group_end; ++it) {
    const int64_t g = gallery.indices[static_cast<size_t>(it - gallery.pids.begin())];
    if (g_camids[g] != camid) matches.push_back({row[g], g});
  }
  std::sort(matches.begin(), matches.end(), [](const Match<T>& a, const Match<T>& b) {
    return key_less(a.distance, a.index, b.distance, b.index);
  });
}

// The distinct match positions the repeats sample for the query's own identity, ascending; false when an
// offset lies outside [0, number of matches).
inline bool sampled_pivots(const int64_t* query_offsets, int64_t num_repeats, int64_t num_identities,
                           int64_t own_identity, int64_t num_matches, std::vector<int64_t>& pivot_match) {
  pivot_match.clear();
  for (int64_t r = 0; r < num_repeats; ++r) {
    const int64_t o = query_offsets[r * num_identities + own_identity];
    if (o < 0 || o >= num_matches) return false;
    pivot_match.push_back(o);
  }
  std::sort(pivot_match.begin(), pivot_match.end());
  pivot_match.erase(std::unique(pivot_match.begin(), pivot_match.end()), pivot_match.end());
  return true;
}

// images_before[s][j] = #{images of identity j ranked before pivot s}, (pivots + 1, identities). An item with
// s pivots before it ranks before pivots s, s + 1, ...: one vectorised pass per pivot counts s, one pass
// bins the items by (s, identity), and prefix sums over s finish it (row num_pivots: after every pivot).
template <typename T>
void count_images_before_pivots(const T* row, int64_t num_gallery, const int64_t* identity, int64_t num_identities,
                                const std::vector<Match<T>>& matches, const std::vector<int64_t>& pivot_match,
                                std::vector<int32_t>& pivots_before, std::vector<int32_t>& images_before) {
  const int64_t num_pivots = static_cast<int64_t>(pivot_match.size());
  pivots_before.assign(static_cast<size_t>(num_gallery), 0);
  for (int64_t s = 0; s < num_pivots; ++s) {
    const Match<T>& pivot = matches[pivot_match[s]];
    add_one_after_key_simd(row, num_gallery, pivot.distance, pivot.index, pivots_before.data());
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
}

// Each repeat's rank of the sampled match: 1 + #{other identities whose sampled image ranks before it}. The
// query's own identity is counted in images_before too but never compared.
inline void ranks_per_repeat(const int64_t* query_offsets, int64_t num_repeats, int64_t num_identities,
                             int64_t own_identity, const std::vector<int64_t>& pivot_match,
                             const std::vector<int32_t>& images_before, int64_t* ranks) {
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
    std::vector<int32_t> pivots_before;   // (G,): per item, the number of pivots ranked before it
    std::vector<int32_t> images_before;   // (pivots + 1, identities): images of j ranked before pivot s

#pragma omp for schedule(dynamic, 8)
    for (int64_t q = 0; q < num_query; ++q) {
      const T* row = distances + q * row_stride;
      int64_t* ranks = sampled_rank + q * num_repeats;
      const int64_t* query_offsets = offsets + q * num_repeats * num_identities;
      sorted_matches(row, gallery, g_camids, q_pids[q], q_camids[q], matches);
      const int64_t num_matches = static_cast<int64_t>(matches.size());
      const int64_t own_identity = num_matches ? identity[matches[0].index] : 0;
      if (num_matches == 0 ||
          !sampled_pivots(query_offsets, num_repeats, num_identities, own_identity, num_matches, pivot_match)) {
        if (num_matches) bad_query.store(q);
        std::fill(ranks, ranks + num_repeats, int64_t{0});
        continue;
      }
      count_images_before_pivots(row, num_gallery, identity, num_identities, matches, pivot_match, pivots_before,
                                 images_before);
      ranks_per_repeat(query_offsets, num_repeats, num_identities, own_identity, pivot_match, images_before, ranks);
    }
  }
  const int64_t bad = bad_query.load();
  if (bad >= 0) {
    fail("offsets: query " + std::to_string(bad) + " samples a match index outside [0, its number of matches)");
  }
}

}  // namespace

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
