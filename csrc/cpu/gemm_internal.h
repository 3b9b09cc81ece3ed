// Internal to the fused CPU kernels (gemm_driver.cpp walks, gemm_kernels.cpp / gemm_rank_count.cpp consume,
// gemm_avx512.cpp / gemm_avx2.cpp compute): the packed-panel contract, the per-row state of the top-k,
// batch-hard and rank-counting epilogues with their scalar updates (compiled for the baseline ISA), and the
// table of one ISA's kernels.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "../common/array.h"

// The SIMD micro-kernels need x86-64 and GCC/clang target pragmas; elsewhere (or with REIDFAST_NO_X86_SIMD)
// gemm_avx512.cpp / gemm_avx2.cpp compile to stubs and the CPU backend keeps its BLAS path.
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(REIDFAST_NO_X86_SIMD)
#define REIDFAST_X86_SIMD 1
#else
#define REIDFAST_X86_SIMD 0
#endif

namespace reidfast {
namespace cpu {
namespace gemm {

// Packed layouts (BLIS style), float32, zero-padded:
//   A tile: MR rows of x; depth x MR floats, element (p, r) at [p * MR + r].
//   B panel: NR rows of y ("columns" of the output); depth x NR floats, element (p, c) at [p * NR + c].
// The micro-kernel multiplies one A tile by one B panel over the depth (in chunks when it is long), so each
// MR x NR tile of dot products is final, and goes through the epilogue, while it is still in registers.

// One A tile against a block of B panels, and the epilogue's inputs that do not depend on the consumer.
struct Strip {
  const float* a = nullptr;   // packed A tile (depth x MR)
  int64_t rows = 0;           // valid rows in the tile (<= MR)
  int64_t row0 = 0;           // global index of the tile's first row
  const float* b = nullptr;   // packed B block: consecutive panels of depth x NR
  float* partial = nullptr;   // the thread's scratch for partial sums: MR floats per column of the block
  int64_t cols = 0;           // valid columns in the block
  int64_t col0 = 0;           // global index of the block's first column
  int64_t depth = 0;
  // Depth is split into chunks of at most this many steps (gemm_kernels.cpp sizes it from the L1 cache), so
  // that the A tile's chunk stays in L1 while the B panels stream from L2. Measured on Zen 5: without the
  // split, D = 2048 ran about 20% below D = 256.
  int64_t depth_chunk = 512;
  const float* x_sq_norms = nullptr;  // (N,) by global row
  const float* y_sq_norms = nullptr;  // (M padded to NR,) by global column, 0 in the padding
  const float* x_lengths = nullptr;   // cosine: max(|x_i|, eps) by global row
  const float* y_lengths = nullptr;   // cosine: max(|y_j|, eps) by global column, 1 in the padding
  Metric metric = Metric::Euclidean;
  bool self_diagonal = false;  // x is y: column i is row i itself
  // Symmetric mining (x is y, same labels, each anchor its own column): panels from this global column on
  // also offer each of their columns' rows the tile's rows, so the tiles below the diagonal are skipped.
  int64_t mirror_from = std::numeric_limits<int64_t>::max();
};

inline float finish(Metric metric, float prekey) { return metric == Metric::Euclidean ? std::sqrt(prekey) : prekey; }

// --- top-k ------------------------------------------------------------------------------------------

// One candidate of a row's top-k. key orders candidates exactly as the ranking does: the distance's bits
// made monotone (NaN after every number, -0 as +0) above the column, so ties go to the smaller column and
// the selection compares plain integers.
struct TopkEntry {
  uint64_t key;
  float prekey;  // the value finish() maps onto the distance (clamped squared distance for euclidean)
  float value;   // the distance
};

inline uint64_t ranking_key(float value, int64_t column) {
  uint32_t bits;
  const float normalized = value + 0.0f;  // -0 -> +0: equal distances must tie
  std::memcpy(&bits, &normalized, sizeof(bits));
  bits = std::isnan(value) ? 0xffffffffu : (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
  return (static_cast<uint64_t>(bits) << 32) | static_cast<uint32_t>(column);
}

inline int64_t key_column(uint64_t key) { return static_cast<int64_t>(key & 0xffffffffu); }

struct KeyOrder {
  bool operator()(const TopkEntry& a, const TopkEntry& b) const { return a.key < b.key; }
};

// Every row's candidates for its k best, as a reservoir: the SIMD filter appends every column whose prekey
// is below the row's threshold (cheap), and when the reservoir is full a selection keeps the k best and
// tightens the threshold to the k-th one's prekey. Columns arrive in increasing order per row, so a later
// column can only enter by a strictly smaller distance, hence a strictly smaller prekey (epilogue.h).
struct TopkRows {
  int64_t k = 0;
  int64_t capacity = 0;          // entries per row, >= k + NR (room for a whole panel after a selection)
  TopkEntry* entries = nullptr;  // (N, capacity)
  int32_t* counts = nullptr;     // (N,)
  // (N,): a candidate is appended when !(prekey >= threshold); NaN (everything passes) until the first
  // selection, and whenever the k-th best is NaN.
  float* thresholds = nullptr;
  Metric metric = Metric::Euclidean;
  bool exclude_self = false;

  // Keeps the k best of the row's reservoir (unordered) and tightens its threshold.
  void select(int64_t row) const {
    TopkEntry* first = entries + row * capacity;
    int32_t& count = counts[row];
    if (count < k) return;
    std::nth_element(first, first + (k - 1), first + count, KeyOrder());
    count = static_cast<int32_t>(k);
    thresholds[row] = first[k - 1].prekey;
  }

  void append(int64_t row, int64_t column, float prekey) const {
    int32_t& count = counts[row];
    const float value = finish(metric, prekey);
    entries[row * capacity + count] = TopkEntry{ranking_key(value, column), prekey, value};
    ++count;
  }
};

// --- batch-hard mining ------------------------------------------------------------------------------

// Per anchor the running hardest positive (max distance) and negative (min distance), ties to the smaller
// index. The harder candidate wins whatever the order of the offers, so tiles may be visited in any order
// and a tile may also offer each of its columns' rows its own rows (the symmetric half product).
struct MineRows {
  const int32_t* anchor_labels = nullptr;     // (B,) dense label ids
  const int32_t* candidate_labels = nullptr;  // (C padded to NR,) dense label ids
  const int64_t* self_index = nullptr;        // (B,) the anchor's own column, -1: none
  float* positive_value = nullptr;            // (B padded to NR,), -inf: none yet (also the SIMD filter)
  int64_t* positive_index = nullptr;          // -1: none yet
  float* negative_value = nullptr;            // +inf: none yet
  int64_t* negative_index = nullptr;

  void offer_positive(int64_t row, int64_t column, float value) const {
    float& best = positive_value[row];
    int64_t& index = positive_index[row];
    if (value > best || (value == best && index >= 0 && column < index)) {
      best = value;
      index = column;
    }
  }

  void offer_negative(int64_t row, int64_t column, float value) const {
    float& best = negative_value[row];
    int64_t& index = negative_index[row];
    if (value < best || (value == best && index >= 0 && column < index)) {
      best = value;
      index = column;
    }
  }
};

// --- rank counting (evaluate_features) ------------------------------------------------------------------

// Per query row, its pivots (correct matches) sorted by (distance, gallery index), as rank_count_block
// (rank_count.h), and the slot histogram the tile's items are counted into. The SIMD filter passes an item
// when !(prekey > prekey_bounds[row]) (NaN passes: counted apart): no item with a prekey (epilogue.h) above
// the bound compares at or before the row's farthest pivot. place() then applies the exact rule to the few.
struct RankCountRows {
  const float* prekey_bounds = nullptr;   // (rows,)
  const int64_t* pivot_offsets = nullptr;  // (rows + 1,): row r's pivots are [offsets[r], offsets[r + 1])
  const float* pivot_distance = nullptr;  // (P,) the compared values (re-ranked scores with row_max)
  const int64_t* pivot_index = nullptr;   // (P,) global gallery indices
  const int64_t* row_labels = nullptr;    // (rows,) or null: items of the row's label are not counted
  const int64_t* item_labels = nullptr;   // by global gallery index, or null
  const int64_t* groups = nullptr;        // by global gallery index, values in [0, num_groups), or null
  int64_t num_groups = 1;
  int64_t item0 = 0;                      // global gallery index of the call's column 0
  const float* row_max = nullptr;         // (rows,) or null: compare rerank_score(d, row_max[r], keep, blend)
  float keep = 0.0f, blend = 1.0f;
  Metric metric = Metric::Euclidean;
  int64_t* histogram = nullptr;           // (P * num_groups,), accumulated
  int64_t* nan_counts = nullptr;          // (rows,): items whose compared value is NaN

  // Counts the item at `column` of the call with this prekey into its row's slot (gemm_rank_count.cpp).
  void place(int64_t row, int64_t column, float prekey) const;
};

// --- one instruction set's kernels --------------------------------------------------------------------

struct DistanceOut {
  float* data = nullptr;  // (N, M) with row stride `stride`
  int64_t stride = 0;
};

struct IsaKernels {
  const char* name;
  int mr, nr;
  // sum of squares of n floats
  float (*sq_norm)(const float* data, int64_t n);
  // One packed panel of `width` (MR or NR) lanes from `lanes` <= width float32 rows (the rest zero).
  void (*pack_panel)(const float* const* rows, int lanes, int width, int64_t depth, float* target);
  // The micro-kernel for the strip's A tile against every panel of its B block, each followed by the epilogue.
  void (*distance_tile)(const Strip& strip, const DistanceOut& out);
  void (*topk_tile)(const Strip& strip, const TopkRows& rows);
  void (*mine_tile)(const Strip& strip, const MineRows& rows);
  void (*rank_count_tile)(const Strip& strip, const RankCountRows& rows);
};

// nullptr when not compiled in (non-x86 target or compiler without the intrinsics).
const IsaKernels* avx512_kernels();
const IsaKernels* avx2_kernels();

}  // namespace gemm
}  // namespace cpu
}  // namespace reidfast
