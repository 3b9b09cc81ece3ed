// The device side of batch-hard mining (kernels and design: triplet_mine.cu): the tile configurations, the
// (value, index) order, slab staging and the named steps of batch_hard_mine_kernel.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "device_math.cuh"
#include "triplet_common.cuh"

namespace reidfast {
namespace cuda {
namespace triplet {

using namespace device;  // NOLINT: the shared arithmetic of device_math.cuh

constexpr int kThreads = 256;  // threads per block of the mine kernel, every configuration
constexpr int kMicro = 4;      // a thread's micro-tile is kMicro x kMicro dot products
// Register budget of the mine kernel: two resident blocks per SM (<= 128 registers) for float accumulation;
// float64 tiles need about 180 registers, so one.
template <typename AccT>
constexpr int kMinBlocksPerSM = sizeof(AccT) == 4 ? 2 : 1;

// A square tile of kTile anchors x kTile candidates computed by kGroups groups of threads, each group
// accumulating the dot products of the whole tile over kGroupDepth of every kSlabDepth staged features.
template <int Tile, int Groups, int GroupDepth>
struct TileConfig {
  static constexpr int kTile = Tile;
  static constexpr int kGroups = Groups;
  static constexpr int kGroupDepth = GroupDepth;
  static constexpr int kSlabDepth = Groups * GroupDepth;        // features staged per step
  static constexpr int kGroupThreads = kThreads / Groups;
  static constexpr int kThreadsPerSide = Tile / kMicro;          // micro-tiles along a tile side
  static constexpr int kPitch = Tile + 4;                        // padded slab row (see distance.cu)
  static constexpr int kLoadsPerThread = Tile * kSlabDepth / kThreads;
  static constexpr int kNormSlots = (2 * Tile + kGroupThreads - 1) / kGroupThreads;  // norms per thread
  // Epilogue layout: a thread finishes kEpiRows x kEpiCols distances, rows (tid / kThreadsPerRow) * kEpiRows
  // + [0, kEpiRows), columns (tid % kThreadsPerRow) * kEpiCols + [0, kEpiCols). With one group that is its
  // own micro-tile; with several, the summed tile is redistributed one row segment per thread.
  static constexpr int kEpiRows = Groups == 1 ? kMicro : 1;
  static constexpr int kEpiCols = Groups == 1 ? kMicro : Tile * Tile / kThreads;
  static constexpr int kThreadsPerRow = Tile / kEpiCols;  // lanes that share an anchor row, consecutive
  // Shared words (AccT) of the two slabs; with several groups they also hold the partial dot products
  // (kGroups x T x T) and partial norms (kGroups x 2T) once the feature loop is done.
  static constexpr int kSlabWords = 2 * kSlabDepth * kPitch;
  static constexpr int kPartialWords = Groups == 1 ? 0 : Groups * Tile * Tile + Groups * 2 * Tile;

  static_assert(kThreadsPerSide * kThreadsPerSide == kGroupThreads, "a group covers the tile with micro-tiles");
  static_assert(Tile * kSlabDepth % kThreads == 0, "every thread stages the same number of elements");
  static_assert(kThreads % kSlabDepth == 0, "a thread's staged elements share one feature index");
  static_assert(kPitch % 4 == 0, "16-byte fragment reads need a pitch that is a multiple of 4 words");
  static_assert(Groups == 1 || Tile * Tile % kThreads == 0, "the summed tile splits evenly over the threads");
  static_assert(kThreads / kThreadsPerRow * kEpiRows == Tile, "the epilogue layout covers every row once");
  static_assert(kThreadsPerRow <= kWarp && kWarp % kThreadsPerRow == 0, "row lanes sit inside one warp");
  static_assert((kThreadsPerRow & (kThreadsPerRow - 1)) == 0, "butterfly reduction needs a power of two");
  static_assert(2 * Tile <= kThreads, "threads [0, 2T) finish the norms");
  static_assert(kPartialWords <= kSlabWords, "partial sums alias the slabs");
};

using LargeTile = TileConfig<64, 1, 16>;
using MediumTile = TileConfig<32, 4, 16>;
using SmallTile = TileConfig<16, 16, 8>;


// ---- the (value, index) order ---------------------------------------------------------------------------

// Does (value, index) beat (best, best_index) as a hardest positive (largest) / negative (smallest)?
// Index -1 means "nothing yet" (loses to anything real). Ties go to the smaller index.
template <typename AccT>
__device__ __forceinline__ bool beats_largest(AccT value, int index, AccT best, int best_index) {
  return index >= 0 && (best_index < 0 || value > best || (value == best && index < best_index));
}
template <typename AccT>
__device__ __forceinline__ bool beats_smallest(AccT value, int index, AccT best, int best_index) {
  return index >= 0 && (best_index < 0 || value < best || (value == best && index < best_index));
}

// (best, best_index) becomes (value, index) where that beats it as a hardest positive / negative.
template <typename AccT>
__device__ __forceinline__ void keep_largest(AccT value, int index, AccT& best, int& best_index) {
  if (beats_largest(value, index, best, best_index)) {
    best = value;
    best_index = index;
  }
}
template <typename AccT>
__device__ __forceinline__ void keep_smallest(AccT value, int index, AccT& best, int& best_index) {
  if (beats_smallest(value, index, best, best_index)) {
    best = value;
    best_index = index;
  }
}

// One butterfly step: every lane keeps the better of its pairs and those of the lane `offset` away.
template <typename AccT>
__device__ __forceinline__ void exchange_pairs(int offset, AccT& positive_value, int& positive_column,
                                               AccT& negative_value, int& negative_column) {
  const AccT other_positive = __shfl_xor_sync(kFullMask, positive_value, offset);
  const int other_positive_column = __shfl_xor_sync(kFullMask, positive_column, offset);
  const AccT other_negative = __shfl_xor_sync(kFullMask, negative_value, offset);
  const int other_negative_column = __shfl_xor_sync(kFullMask, negative_column, offset);
  keep_largest(other_positive, other_positive_column, positive_value, positive_column);
  keep_smallest(other_negative, other_negative_column, negative_value, negative_column);
}

// ---- staging (distance.cu's fetch_slab / store_slab, for a slab of Config::kSlabDepth features) --------

// The thread's staged element i is row first_row + tid / kSlabDepth + i * kRowStep of the slab's rows, feature
// first_feature + tid % kSlabDepth. `rows` points at the thread's row tid / kSlabDepth of the tile and
// `rows_left` counts the matrix rows from there on (<= 0: none), so the addresses are one base pointer plus
// multiples of a single step, and out-of-range rows or features are staged as zeros.
template <typename Config, typename InT>
__device__ __forceinline__ void fetch_slab(const InT* __restrict__ rows, int64_t rows_left, int64_t row_stride,
                                           int64_t features, int64_t first_feature,
                                           InT (&staged)[Config::kLoadsPerThread]) {
  constexpr int kRowStep = kThreads / Config::kSlabDepth;
  const int64_t feature = first_feature + threadIdx.x % Config::kSlabDepth;  // the same for all i
  const bool feature_ok = feature < features;
  const InT* source = rows + feature;
#pragma unroll
  for (int i = 0; i < Config::kLoadsPerThread; ++i) {
    staged[i] = (feature_ok && i * kRowStep < rows_left) ? source[i * kRowStep * row_stride] : zero_of<InT>();
  }
}

template <typename Config, typename InT, typename AccT>
__device__ __forceinline__ void store_slab(const InT (&staged)[Config::kLoadsPerThread],
                                           AccT (*slab)[Config::kPitch]) {
  const int feature_in_slab = threadIdx.x % Config::kSlabDepth;
#pragma unroll
  for (int i = 0; i < Config::kLoadsPerThread; ++i) {
    const int row_in_slab = (threadIdx.x + i * kThreads) / Config::kSlabDepth;
    slab[feature_in_slab][row_in_slab] = widen(staged[i]);
  }
}

// Where the mine kernel writes: the outputs (one chunk) or the workspace partials (several).
template <typename AccT>
struct MineTargets {
  AccT* dist_ap;
  AccT* dist_an;
  int64_t* positive_index;
  int64_t* negative_index;
  AccT* partial_positive_value;  // [anchor * chunks + chunk], used when chunks > 1
  AccT* partial_negative_value;
  int* partial_positive_index;
  int* partial_negative_index;
};

// ---- the mine kernel's steps (batch_hard_mine_kernel in triplet_mine.cu runs them in this order) -----------

// Where this thread works in the block, from threadIdx.x (layouts: TileConfig).
template <typename Config>
struct MineLayout {
  int group;           // accumulates features [group_feature0, + kGroupDepth) of every slab
  int group_tid;       // thread index inside the group
  int thread_row;      // micro-tile rows thread_row * kMicro + [0, kMicro) ...
  int thread_col;      // ... and columns thread_col * kMicro + [0, kMicro)
  int group_feature0;
  int stage_row;       // first row of a slab this thread stages (fetch_slab)
  int epi_row0;        // epilogue: rows epi_row0 + [0, kEpiRows), columns epi_col0 + [0, kEpiCols)
  int epi_col0;
  __device__ __forceinline__ MineLayout()
      : group(threadIdx.x / Config::kGroupThreads),
        group_tid(threadIdx.x % Config::kGroupThreads),
        thread_row(group_tid / Config::kThreadsPerSide),
        thread_col(group_tid % Config::kThreadsPerSide),
        group_feature0(group * Config::kGroupDepth),
        stage_row(threadIdx.x / Config::kSlabDepth),
        epi_row0((threadIdx.x / Config::kThreadsPerRow) * Config::kEpiRows),
        epi_col0((threadIdx.x % Config::kThreadsPerRow) * Config::kEpiCols) {}
};

// The rows one operand stages from (see fetch_slab): the thread's first row, rows left from it, row stride.
template <typename InT>
struct SlabRows {
  const InT* rows;
  int64_t rows_left;
  int64_t row_stride;
};

// The running hardest positive and negative (value, column) of the thread's epilogue rows, with each row's
// label and own column (-1: none).
template <typename Config, typename AccT>
struct HardestPairs {
  int64_t labels[Config::kEpiRows];
  int self[Config::kEpiRows];
  AccT positive_value[Config::kEpiRows];
  AccT negative_value[Config::kEpiRows];
  int positive_column[Config::kEpiRows];
  int negative_column[Config::kEpiRows];
};

// Empty pairs ("nothing yet") for anchor rows row0 + epi_row0 + [0, kEpiRows), with their labels.
template <typename Config, typename AccT>
__device__ __forceinline__ void start_pairs(const int64_t* __restrict__ anchor_labels,
                                            const int64_t* __restrict__ anchor_index, int64_t first_row,
                                            int64_t num_anchors, int num_candidates,
                                            HardestPairs<Config, AccT>& pairs) {
#pragma unroll
  for (int i = 0; i < Config::kEpiRows; ++i) {
    const int64_t row = first_row + i;
    pairs.labels[i] = 0;
    pairs.self[i] = -1;
    if (row < num_anchors) {
      pairs.labels[i] = anchor_labels[row];
      const int64_t self = anchor_index[row];
      if (self >= 0 && self < num_candidates) pairs.self[i] = static_cast<int>(self);
    }
    pairs.positive_value[i] = AccT(0);
    pairs.negative_value[i] = AccT(0);
    pairs.positive_column[i] = -1;
    pairs.negative_column[i] = -1;
  }
}

// Stage a slab: the fetched elements of both operands into the shared slabs, then a barrier.
template <typename Config, typename InT, typename AccT>
__device__ __forceinline__ void stage_slabs(const InT (&x_staged)[Config::kLoadsPerThread],
                                            const InT (&y_staged)[Config::kLoadsPerThread],
                                            AccT (*x_slab)[Config::kPitch], AccT (*y_slab)[Config::kPitch]) {
  store_slab<Config>(x_staged, x_slab);
  store_slab<Config>(y_staged, y_slab);
  __syncthreads();
}

// Accumulate the group's kGroupDepth features of the staged slabs into the thread's partial squared norms
// (norm n < T is anchor row n, n >= T candidate row n - T) and its micro-tile of dot products.
template <typename Config, typename AccT>
__device__ __forceinline__ void accumulate_slab(const AccT (*x_slab)[Config::kPitch],
                                                const AccT (*y_slab)[Config::kPitch],
                                                const MineLayout<Config>& layout,
                                                AccT (&norms)[Config::kNormSlots], AccT (&dots)[kMicro][kMicro]) {
  constexpr int T = Config::kTile;
#pragma unroll
  for (int s = 0; s < Config::kNormSlots; ++s) {
    const int n = layout.group_tid + s * Config::kGroupThreads;
    if (n < 2 * T) {
      const AccT(*own_slab)[Config::kPitch] = n < T ? x_slab : y_slab;
      const int index = n < T ? n : n - T;
#pragma unroll
      for (int k = 0; k < Config::kGroupDepth; ++k) {
        const AccT value = own_slab[layout.group_feature0 + k][index];
        norms[s] = multiply_add(value, value, norms[s]);
      }
    }
  }
#pragma unroll
  for (int k = 0; k < Config::kGroupDepth; ++k) {
    AccT x_fragment[kMicro];
    AccT y_fragment[kMicro];
    load_fragment(&x_slab[layout.group_feature0 + k][layout.thread_row * kMicro], x_fragment);
    load_fragment(&y_slab[layout.group_feature0 + k][layout.thread_col * kMicro], y_fragment);
#pragma unroll
    for (int i = 0; i < kMicro; ++i) {
#pragma unroll
      for (int j = 0; j < kMicro; ++j) dots[i][j] = multiply_add(x_fragment[i], y_fragment[j], dots[i][j]);
    }
  }
}

// The whole feature axis for one anchor tile x candidate tile: stage, prefetch the next slab into registers,
// accumulate; the thread ends with its (group's partial) norms and dot products.
template <typename Config, typename InT, typename AccT>
__device__ __forceinline__ void multiply_tiles(const SlabRows<InT>& anchor_rows, const SlabRows<InT>& candidate_rows,
                                               int64_t features, AccT (*x_slab)[Config::kPitch],
                                               AccT (*y_slab)[Config::kPitch], const MineLayout<Config>& layout,
                                               AccT (&norms)[Config::kNormSlots], AccT (&dots)[kMicro][kMicro]) {
#pragma unroll
  for (int s = 0; s < Config::kNormSlots; ++s) norms[s] = AccT(0);
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
#pragma unroll
    for (int j = 0; j < kMicro; ++j) dots[i][j] = AccT(0);
  }
  InT x_staged[Config::kLoadsPerThread];
  InT y_staged[Config::kLoadsPerThread];
  fetch_slab<Config>(anchor_rows.rows, anchor_rows.rows_left, anchor_rows.row_stride, features, 0, x_staged);
  fetch_slab<Config>(candidate_rows.rows, candidate_rows.rows_left, candidate_rows.row_stride, features, 0, y_staged);
  for (int64_t first_feature = 0; first_feature < features; first_feature += Config::kSlabDepth) {
    stage_slabs<Config>(x_staged, y_staged, x_slab, y_slab);
    const int64_t next = first_feature + Config::kSlabDepth;
    if (next < features) {
      fetch_slab<Config>(anchor_rows.rows, anchor_rows.rows_left, anchor_rows.row_stride, features, next, x_staged);
      fetch_slab<Config>(candidate_rows.rows, candidate_rows.rows_left, candidate_rows.row_stride, features, next,
                         y_staged);
    }
    accumulate_slab<Config>(x_slab, y_slab, layout, norms, dots);
    __syncthreads();  // the next step (or the partial sums of sum_groups) overwrite the slabs
  }
}

// The finished dot products in the epilogue layout, and the row factors of the tile's anchors ([0, T)) and
// candidates ([T, 2T)) published in `factors`. With several groups their partials go through the slab words
// and are summed in group order 0, 1, ... for norms and dot products alike (triplet_mine.cu, "Exact ties").
// Ends with a barrier: factors published, partial sums read.
template <typename Config, typename AccT>
__device__ __forceinline__ void sum_groups(const AccT (&norms)[Config::kNormSlots],
                                           const AccT (&dots)[kMicro][kMicro], const MineLayout<Config>& layout,
                                           Metric metric, AccT* slab_words, AccT* factors,
                                           AccT (&tile_dots)[Config::kEpiRows][Config::kEpiCols]) {
  constexpr int T = Config::kTile;
  const int tid = threadIdx.x;
  if constexpr (Config::kGroups == 1) {
    if (tid < 2 * T) factors[tid] = row_factor(norms[0], metric);  // group_tid == tid, one slot
#pragma unroll
    for (int i = 0; i < Config::kEpiRows; ++i) {
#pragma unroll
      for (int j = 0; j < Config::kEpiCols; ++j) tile_dots[i][j] = dots[i][j];
    }
  } else {
    AccT* partial_dots = slab_words;                             // [group][row * T + col]
    AccT* partial_norms = slab_words + Config::kGroups * T * T;  // [group][n]
#pragma unroll
    for (int i = 0; i < kMicro; ++i) {
#pragma unroll
      for (int j = 0; j < kMicro; ++j) {
        partial_dots[layout.group * T * T + (layout.thread_row * kMicro + i) * T + layout.thread_col * kMicro + j] =
            dots[i][j];
      }
    }
#pragma unroll
    for (int s = 0; s < Config::kNormSlots; ++s) {
      const int n = layout.group_tid + s * Config::kGroupThreads;
      if (n < 2 * T) partial_norms[layout.group * 2 * T + n] = norms[s];
    }
    __syncthreads();
    if (tid < 2 * T) {
      AccT total = partial_norms[tid];
#pragma unroll
      for (int g = 1; g < Config::kGroups; ++g) total += partial_norms[g * 2 * T + tid];
      factors[tid] = row_factor(total, metric);
    }
#pragma unroll
    for (int j = 0; j < Config::kEpiCols; ++j) {
      const int offset = layout.epi_row0 * T + layout.epi_col0 + j;
      AccT total = partial_dots[offset];
#pragma unroll
      for (int g = 1; g < Config::kGroups; ++g) total += partial_dots[g * T * T + offset];
      tile_dots[0][j] = total;
    }
  }
  __syncthreads();
}

// Fold the tile into the hardest pairs: finish each distance and keep it if it beats the running pair.
// Columns arrive in increasing order within a thread, so a strict comparison keeps the smallest index.
template <typename Config, typename AccT>
__device__ __forceinline__ void fold_tile(const AccT (&tile_dots)[Config::kEpiRows][Config::kEpiCols],
                                          const AccT* factors, const int64_t* tile_labels, int col0,
                                          int num_candidates, const MineLayout<Config>& layout, Metric metric,
                                          HardestPairs<Config, AccT>& pairs) {
  constexpr int T = Config::kTile;
  const int valid_cols = min(T, num_candidates - col0);
  int64_t col_labels[Config::kEpiCols];
  AccT col_factors[Config::kEpiCols];
#pragma unroll
  for (int j = 0; j < Config::kEpiCols; ++j) {
    col_labels[j] = tile_labels[layout.epi_col0 + j];
    col_factors[j] = factors[T + layout.epi_col0 + j];
  }
#pragma unroll
  for (int i = 0; i < Config::kEpiRows; ++i) {
    const AccT anchor_factor = factors[layout.epi_row0 + i];
#pragma unroll
    for (int j = 0; j < Config::kEpiCols; ++j) {
      if (layout.epi_col0 + j >= valid_cols) continue;
      const int column = col0 + layout.epi_col0 + j;
      const AccT distance = finish_distance(tile_dots[i][j], anchor_factor, col_factors[j], metric);
      if (col_labels[j] == pairs.labels[i]) {
        if (column != pairs.self[i] && (pairs.positive_column[i] < 0 || distance > pairs.positive_value[i])) {
          pairs.positive_value[i] = distance;
          pairs.positive_column[i] = column;
        }
      } else if (pairs.negative_column[i] < 0 || distance < pairs.negative_value[i]) {
        pairs.negative_value[i] = distance;
        pairs.negative_column[i] = column;
      }
    }
  }
}

// Reduce over the kThreadsPerRow consecutive lanes that share each anchor row: a butterfly, so every lane ends
// with the winner (the order is total, see "Exact ties").
template <typename Config, typename AccT>
__device__ __forceinline__ void reduce_over_lanes(HardestPairs<Config, AccT>& pairs) {
#pragma unroll
  for (int i = 0; i < Config::kEpiRows; ++i) {
#pragma unroll
    for (int offset = Config::kThreadsPerRow / 2; offset > 0; offset /= 2) {
      exchange_pairs(offset, pairs.positive_value[i], pairs.positive_column[i], pairs.negative_value[i],
                     pairs.negative_column[i]);
    }
  }
}

// Write the pairs of anchor rows first_row + [0, kEpiRows): the outputs with one chunk, else this chunk's
// workspace partials. Called by the first lane of each row group.
template <typename Config, typename AccT>
__device__ __forceinline__ void write_pairs(const HardestPairs<Config, AccT>& pairs, int64_t first_row,
                                            int64_t num_anchors, int num_chunks, int chunk,
                                            const MineTargets<AccT>& targets) {
#pragma unroll
  for (int i = 0; i < Config::kEpiRows; ++i) {
    const int64_t row = first_row + i;
    if (row >= num_anchors) break;  // rows only increase with i
    if (num_chunks == 1) {
      targets.dist_ap[row] = pairs.positive_column[i] >= 0 ? pairs.positive_value[i] : AccT(0);
      targets.dist_an[row] = pairs.negative_column[i] >= 0 ? pairs.negative_value[i] : AccT(0);
      targets.positive_index[row] = pairs.positive_column[i];
      targets.negative_index[row] = pairs.negative_column[i];
    } else {
      const int64_t entry = row * num_chunks + chunk;
      targets.partial_positive_value[entry] = pairs.positive_value[i];
      targets.partial_negative_value[entry] = pairs.negative_value[i];
      targets.partial_positive_index[entry] = pairs.positive_column[i];
      targets.partial_negative_index[entry] = pairs.negative_column[i];
    }
  }
}

}  // namespace triplet
}  // namespace cuda
}  // namespace reidfast
