// Batch-hard mining on the GPU: for every anchor, the hardest positive (largest distance, same label, self
// excluded) and the hardest negative (smallest distance, other label) among the candidates, without ever
// writing the B x C distance matrix. Semantics: reidfast/reference/triplet.py; contract: triplet.h.
//
// Overview
//   mine kernel    grid = row tiles x candidate chunks. A block owns T anchors (a row tile) and walks the
//                  candidate tiles of its chunk. For each candidate tile it computes the T x T dot products
//                  with the staging scheme of distance.cu (slabs of both operands in shared memory, 4 x 4
//                  register micro-tiles, fused norms, next slab prefetched into registers), finishes the T x T
//                  distances in registers and folds them at once into per-thread running (value, index)
//                  pairs for the hardest positive and negative of each of the thread's anchor rows. After the
//                  chunk, the threads sharing an anchor row reduce their pairs with warp shuffles. With one
//                  chunk the block writes the final outputs; otherwise it writes per-chunk partial pairs to
//                  the workspace and
//   reduce kernel  (one warp per anchor) combines the chunks' pairs and writes the outputs.
//   fill kernel    C == 0: every output becomes -1 / 0.
//   backward       batch_hard_backward (section "backward" below): two O(B*D) passes over the mined pairs,
//                  deterministic (no atomics).
//
// Tile configurations (all 256 threads, square tiles T x T, chosen from B and C by choose_tile)
//   T = 64, 1 feature group : exactly distance.cu's tile: 16 x 16 threads, each a 4 x 4 micro-tile, slabs of
//                             16 features.
//   T = 32, 4 feature groups: the block splits each slab of 64 features into 4 groups of 16; each group of
//                             64 threads (8 x 8, 4 x 4 micro-tiles) covers the whole 32 x 32 tile for its
//                             features. The 4 partial dot products are added through shared memory.
//   T = 16, 16 feature groups: likewise, slabs of 128 features, 16 groups of 8 features x 16 threads.
//   Smaller tiles with an in-block split of the feature axis keep all 256 threads busy while giving 4x / 16x
//   more blocks: a P x K batch of 64 anchors is 1 block with T = 64 but 16 with T = 16. choose_tile takes the
//   largest T that still yields at least kBusyTiles tiles (about two blocks per SM on an H100), else 16.
//
// Exact ties
//   Partial sums are combined in group order 0, 1, ..., and every group accumulates its partial squared norms
//   with the same fused multiply-adds, in the same feature order, as its partial dot products (distance.cu's
//   "Norms" rule). So the distance of a candidate does not depend on where it sits in a tile, identical
//   candidates get bit-identical distances, and an anchor equal to a candidate is at distance exactly 0.
//   The running pairs compare the finished distances (after the clamp and, for euclidean, the sqrt), the
//   values the reference compares: mining on the squared distance would be monotone but not strictly so
//   (many adjacent float32 squares have the same float32 sqrt, and the clamp merges everything below
//   1e-12), and the reference then picks the smallest index among the merged values.
//   The tie rule "a larger (smaller) distance wins, an equal one only with a smaller index" is a total order
//   on (value, index) pairs, so every combination step below (in-thread, shuffle butterfly, over chunks)
//   yields the same winner in any order: the result is deterministic and independent of the tiling.
//   Inside a thread candidates arrive in increasing index, so there a strict comparison suffices.
//
// Chunks and workspace
//   col_tiles = ceil(C / T) candidate tiles are cut into `chunks` consecutive runs of tiles_per_chunk tiles;
//   chunks_target = min(col_tiles, ceil(kTargetBlocks / row_tiles)), tiles_per_chunk =
//   ceil(col_tiles / chunks_target), chunks = ceil(col_tiles / tiles_per_chunk) (no empty chunk). So the grid
//   has about kTargetBlocks = 512 blocks when the candidate axis allows it, and no more chunks than needed.
//   Workspace = 0 bytes when chunks == 1, else B * chunks * 24 bytes: per (anchor, chunk) an 8-byte slot for
//   each of the two values (float32 values use half of it, so the size does not depend on the dtype) and a
//   4-byte int32 index for each. Since chunks <= kTargetBlocks / row_tiles + 1, B * chunks <= 512 * T + B:
//   at most about 24 * (32768 + B) bytes, O(B). Layout (anchor-major, so a warp of the reduce kernel reads
//   one anchor's chunks contiguously), n = B * chunks:
//     [0, 8n) positive values, [8n, 16n) negative values, [16n, 20n) positive indices, [20n, 24n) negative
//     indices; entry (anchor, chunk) at anchor * chunks + chunk; index -1 = no candidate in that chunk.
//
// Precision: float32 accumulation for float32/float16/bfloat16 inputs, float64 for float64 (DESIGN.md).
// Limits: C <= INT_MAX - 64 (indices are int32 inside), B <= INT_MAX.
#include "triplet.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <sstream>
#include <string>
#include <utility>

#include "cuda_check.h"
#include "device_math.cuh"
#include "host_utils.h"
#include "launch.cuh"

namespace reidfast {
namespace cuda {
namespace {

using namespace device;  // NOLINT: the shared arithmetic of device_math.cuh

constexpr int kThreads = 256;       // threads per block of the mine kernel, every configuration
constexpr int kMicro = 4;           // a thread's micro-tile is kMicro x kMicro dot products
constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int64_t kBusyTiles = 256;     // choose_tile: tiles that keep an H100 (132 SMs) busy
constexpr int64_t kTargetBlocks = 512;  // plan: blocks to aim for when splitting the candidate axis
constexpr int kReduceThreads = 256;     // reduce kernel: one warp per anchor
constexpr int kFillThreads = 256;
constexpr int64_t kWorkspaceBytesPerEntry = 8 + 8 + 4 + 4;  // see "Chunks and workspace"
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

// ---- kernels ---------------------------------------------------------------------------------------------

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

template <typename Config, typename InT, typename AccT>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM<AccT>)
    batch_hard_mine_kernel(const InT* __restrict__ anchors, const InT* __restrict__ candidates,
                           const int64_t* __restrict__ anchor_labels, const int64_t* __restrict__ candidate_labels,
                           const int64_t* __restrict__ anchor_index, int64_t num_anchors, int num_candidates,
                           int64_t features, int64_t anchor_row_stride, int64_t candidate_row_stride,
                           int num_chunks, int tiles_per_chunk, int col_tiles, Metric metric,
                           MineTargets<AccT> targets) {
  constexpr int T = Config::kTile;
  constexpr int kEpiRows = Config::kEpiRows;
  constexpr int kEpiCols = Config::kEpiCols;
  constexpr int kThreadsPerRow = Config::kThreadsPerRow;

  __shared__ __align__(16) AccT slab_words[Config::kSlabWords];
  __shared__ AccT factors[2 * T];  // [0, T): anchors' row_factor, [T, 2T): the candidate tile's
  __shared__ int64_t tile_labels[T];
  AccT(*x_slab)[Config::kPitch] = reinterpret_cast<AccT(*)[Config::kPitch]>(slab_words);
  AccT(*y_slab)[Config::kPitch] = reinterpret_cast<AccT(*)[Config::kPitch]>(slab_words + Config::kSlabDepth * Config::kPitch);

  const int tid = threadIdx.x;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x / num_chunks) * T;
  const int chunk = static_cast<int>(blockIdx.x % num_chunks);
  const int first_tile = chunk * tiles_per_chunk;
  const int end_tile = min(first_tile + tiles_per_chunk, col_tiles);

  // Compute layout: group `group` accumulates features [group * kGroupDepth, +kGroupDepth) of every slab
  // into the micro-tile rows thread_row * 4 + [0, 4), columns thread_col * 4 + [0, 4).
  const int group = tid / Config::kGroupThreads;
  const int group_tid = tid % Config::kGroupThreads;
  const int thread_row = group_tid / Config::kThreadsPerSide;
  const int thread_col = group_tid % Config::kThreadsPerSide;
  const int group_feature0 = group * Config::kGroupDepth;

  // Staging: this thread's first row of a slab (see fetch_slab); the anchors' is the same for every tile.
  const int stage_row = tid / Config::kSlabDepth;
  const int64_t anchor_row = row0 + stage_row;
  const InT* anchor_rows = anchors + anchor_row * anchor_row_stride;
  const int64_t anchors_left = num_anchors - anchor_row;

  // Epilogue layout (see TileConfig).
  const int epi_row0 = (tid / kThreadsPerRow) * kEpiRows;
  const int epi_col0 = (tid % kThreadsPerRow) * kEpiCols;

  int64_t my_labels[kEpiRows];
  int my_self[kEpiRows];  // the anchor's own column, -1 if none (or out of range)
  AccT positive_value[kEpiRows], negative_value[kEpiRows];
  int positive_column[kEpiRows], negative_column[kEpiRows];
#pragma unroll
  for (int i = 0; i < kEpiRows; ++i) {
    const int64_t row = row0 + epi_row0 + i;
    my_labels[i] = 0;
    my_self[i] = -1;
    if (row < num_anchors) {
      my_labels[i] = anchor_labels[row];
      const int64_t self = anchor_index[row];
      if (self >= 0 && self < num_candidates) my_self[i] = static_cast<int>(self);
    }
    positive_value[i] = AccT(0);
    negative_value[i] = AccT(0);
    positive_column[i] = -1;
    negative_column[i] = -1;
  }

  for (int tile = first_tile; tile < end_tile; ++tile) {
    const int col0 = tile * T;
    // Published before the first barrier below; read only after the last one of this tile.
    if (tid < T) tile_labels[tid] = col0 + tid < num_candidates ? candidate_labels[col0 + tid] : 0;

    AccT norms[Config::kNormSlots];
#pragma unroll
    for (int s = 0; s < Config::kNormSlots; ++s) norms[s] = AccT(0);
    AccT dots[kMicro][kMicro];
#pragma unroll
    for (int i = 0; i < kMicro; ++i) {
#pragma unroll
      for (int j = 0; j < kMicro; ++j) dots[i][j] = AccT(0);
    }

    // This thread's first staged row of the candidate tile (see fetch_slab).
    const int64_t candidate_row = col0 + stage_row;
    const InT* candidate_rows = candidates + candidate_row * candidate_row_stride;
    const int64_t candidates_left = num_candidates - candidate_row;
    InT x_staged[Config::kLoadsPerThread];
    InT y_staged[Config::kLoadsPerThread];
    fetch_slab<Config>(anchor_rows, anchors_left, anchor_row_stride, features, 0, x_staged);
    fetch_slab<Config>(candidate_rows, candidates_left, candidate_row_stride, features, 0, y_staged);

    for (int64_t first_feature = 0; first_feature < features; first_feature += Config::kSlabDepth) {
      store_slab<Config>(x_staged, x_slab);
      store_slab<Config>(y_staged, y_slab);
      __syncthreads();

      const int64_t next_feature = first_feature + Config::kSlabDepth;
      if (next_feature < features) {
        fetch_slab<Config>(anchor_rows, anchors_left, anchor_row_stride, features, next_feature, x_staged);
        fetch_slab<Config>(candidate_rows, candidates_left, candidate_row_stride, features, next_feature, y_staged);
      }

      // Partial squared norms: norm n < T is anchor row n, n >= T candidate row n - T.
#pragma unroll
      for (int s = 0; s < Config::kNormSlots; ++s) {
        const int n = group_tid + s * Config::kGroupThreads;
        if (n < 2 * T) {
          const AccT(*own_slab)[Config::kPitch] = n < T ? x_slab : y_slab;
          const int index = n < T ? n : n - T;
#pragma unroll
          for (int k = 0; k < Config::kGroupDepth; ++k) {
            const AccT value = own_slab[group_feature0 + k][index];
            norms[s] = multiply_add(value, value, norms[s]);
          }
        }
      }

#pragma unroll
      for (int k = 0; k < Config::kGroupDepth; ++k) {
        AccT x_fragment[kMicro];
        AccT y_fragment[kMicro];
        load_fragment(&x_slab[group_feature0 + k][thread_row * kMicro], x_fragment);
        load_fragment(&y_slab[group_feature0 + k][thread_col * kMicro], y_fragment);
#pragma unroll
        for (int i = 0; i < kMicro; ++i) {
#pragma unroll
          for (int j = 0; j < kMicro; ++j) dots[i][j] = multiply_add(x_fragment[i], y_fragment[j], dots[i][j]);
        }
      }
      __syncthreads();  // the next step (or the partial sums below) overwrite the slabs
    }

    // Finished dot products in the epilogue layout.
    AccT tile_dots[kEpiRows][kEpiCols];
    if constexpr (Config::kGroups == 1) {
      if (tid < 2 * T) factors[tid] = row_factor(norms[0], metric);  // group_tid == tid, one slot
#pragma unroll
      for (int i = 0; i < kEpiRows; ++i) {
#pragma unroll
        for (int j = 0; j < kEpiCols; ++j) tile_dots[i][j] = dots[i][j];
      }
    } else {
      AccT* partial_dots = slab_words;                                       // [group][row * T + col]
      AccT* partial_norms = slab_words + Config::kGroups * T * T;            // [group][n]
#pragma unroll
      for (int i = 0; i < kMicro; ++i) {
#pragma unroll
        for (int j = 0; j < kMicro; ++j) {
          partial_dots[group * T * T + (thread_row * kMicro + i) * T + thread_col * kMicro + j] = dots[i][j];
        }
      }
#pragma unroll
      for (int s = 0; s < Config::kNormSlots; ++s) {
        const int n = group_tid + s * Config::kGroupThreads;
        if (n < 2 * T) partial_norms[group * 2 * T + n] = norms[s];
      }
      __syncthreads();
      // Sum the groups in order 0, 1, ... for norms and dot products alike (see "Exact ties").
      if (tid < 2 * T) {
        AccT total = partial_norms[tid];
#pragma unroll
        for (int g = 1; g < Config::kGroups; ++g) total += partial_norms[g * 2 * T + tid];
        factors[tid] = row_factor(total, metric);
      }
#pragma unroll
      for (int j = 0; j < kEpiCols; ++j) {
        const int offset = epi_row0 * T + epi_col0 + j;
        AccT total = partial_dots[offset];
#pragma unroll
        for (int g = 1; g < Config::kGroups; ++g) total += partial_dots[g * T * T + offset];
        tile_dots[0][j] = total;
      }
    }
    __syncthreads();  // factors published; partial sums read

    // Fold the tile into the running pairs. Columns arrive in increasing order within a thread.
    const int valid_cols = min(T, num_candidates - col0);
    int64_t col_labels[kEpiCols];
    AccT col_factors[kEpiCols];
#pragma unroll
    for (int j = 0; j < kEpiCols; ++j) {
      col_labels[j] = tile_labels[epi_col0 + j];
      col_factors[j] = factors[T + epi_col0 + j];
    }
#pragma unroll
    for (int i = 0; i < kEpiRows; ++i) {
      const AccT anchor_factor = factors[epi_row0 + i];
#pragma unroll
      for (int j = 0; j < kEpiCols; ++j) {
        if (epi_col0 + j < valid_cols) {
          const int column = col0 + epi_col0 + j;
          const AccT distance = finish_distance(tile_dots[i][j], anchor_factor, col_factors[j], metric);
          if (col_labels[j] == my_labels[i]) {
            if (column != my_self[i] && (positive_column[i] < 0 || distance > positive_value[i])) {
              positive_value[i] = distance;
              positive_column[i] = column;
            }
          } else if (negative_column[i] < 0 || distance < negative_value[i]) {
            negative_value[i] = distance;
            negative_column[i] = column;
          }
        }
      }
    }
    __syncthreads();  // the next tile rewrites tile_labels, factors and the slabs
  }

  // Reduce over the kThreadsPerRow consecutive lanes that share each anchor row (every lane ends with the
  // winner: the order is total, see "Exact ties").
#pragma unroll
  for (int i = 0; i < kEpiRows; ++i) {
#pragma unroll
    for (int offset = kThreadsPerRow / 2; offset > 0; offset /= 2) {
      const AccT other_positive = __shfl_xor_sync(kFullMask, positive_value[i], offset);
      const int other_positive_column = __shfl_xor_sync(kFullMask, positive_column[i], offset);
      const AccT other_negative = __shfl_xor_sync(kFullMask, negative_value[i], offset);
      const int other_negative_column = __shfl_xor_sync(kFullMask, negative_column[i], offset);
      if (beats_largest(other_positive, other_positive_column, positive_value[i], positive_column[i])) {
        positive_value[i] = other_positive;
        positive_column[i] = other_positive_column;
      }
      if (beats_smallest(other_negative, other_negative_column, negative_value[i], negative_column[i])) {
        negative_value[i] = other_negative;
        negative_column[i] = other_negative_column;
      }
    }
  }

  if (tid % kThreadsPerRow != 0) return;
#pragma unroll
  for (int i = 0; i < kEpiRows; ++i) {
    const int64_t row = row0 + epi_row0 + i;
    if (row >= num_anchors) break;  // rows only increase with i
    if (num_chunks == 1) {
      targets.dist_ap[row] = positive_column[i] >= 0 ? positive_value[i] : AccT(0);
      targets.dist_an[row] = negative_column[i] >= 0 ? negative_value[i] : AccT(0);
      targets.positive_index[row] = positive_column[i];
      targets.negative_index[row] = negative_column[i];
    } else {
      const int64_t entry = row * num_chunks + chunk;
      targets.partial_positive_value[entry] = positive_value[i];
      targets.partial_negative_value[entry] = negative_value[i];
      targets.partial_positive_index[entry] = positive_column[i];
      targets.partial_negative_index[entry] = negative_column[i];
    }
  }
}

// One warp per anchor: lane l combines chunks l, l + 32, ..., then a butterfly over the warp. Warps past
// the last anchor take part in the shuffles (full mask) but write nothing.
template <typename AccT>
__global__ void __launch_bounds__(kReduceThreads)
    reduce_chunks_kernel(MineTargets<AccT> targets, int64_t num_anchors, int num_chunks) {
  const int lane = threadIdx.x % kWarp;
  const int64_t anchor = static_cast<int64_t>(blockIdx.x) * (kReduceThreads / kWarp) + threadIdx.x / kWarp;
  const bool active = anchor < num_anchors;

  AccT positive_value = AccT(0), negative_value = AccT(0);
  int positive_column = -1, negative_column = -1;
  if (active) {
    for (int chunk = lane; chunk < num_chunks; chunk += kWarp) {
      const int64_t entry = anchor * num_chunks + chunk;
      const AccT value_p = targets.partial_positive_value[entry];
      const int column_p = targets.partial_positive_index[entry];
      const AccT value_n = targets.partial_negative_value[entry];
      const int column_n = targets.partial_negative_index[entry];
      if (beats_largest(value_p, column_p, positive_value, positive_column)) {
        positive_value = value_p;
        positive_column = column_p;
      }
      if (beats_smallest(value_n, column_n, negative_value, negative_column)) {
        negative_value = value_n;
        negative_column = column_n;
      }
    }
  }
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const AccT other_positive = __shfl_xor_sync(kFullMask, positive_value, offset);
    const int other_positive_column = __shfl_xor_sync(kFullMask, positive_column, offset);
    const AccT other_negative = __shfl_xor_sync(kFullMask, negative_value, offset);
    const int other_negative_column = __shfl_xor_sync(kFullMask, negative_column, offset);
    if (beats_largest(other_positive, other_positive_column, positive_value, positive_column)) {
      positive_value = other_positive;
      positive_column = other_positive_column;
    }
    if (beats_smallest(other_negative, other_negative_column, negative_value, negative_column)) {
      negative_value = other_negative;
      negative_column = other_negative_column;
    }
  }
  if (active && lane == 0) {
    targets.dist_ap[anchor] = positive_column >= 0 ? positive_value : AccT(0);
    targets.dist_an[anchor] = negative_column >= 0 ? negative_value : AccT(0);
    targets.positive_index[anchor] = positive_column;
    targets.negative_index[anchor] = negative_column;
  }
}

// No candidates: no positive and no negative for anyone.
template <typename AccT>
__global__ void __launch_bounds__(kFillThreads) fill_empty_kernel(MineTargets<AccT> targets, int64_t num_anchors) {
  const int64_t anchor = static_cast<int64_t>(blockIdx.x) * kFillThreads + threadIdx.x;
  if (anchor >= num_anchors) return;
  targets.dist_ap[anchor] = AccT(0);
  targets.dist_an[anchor] = AccT(0);
  targets.positive_index[anchor] = -1;
  targets.negative_index[anchor] = -1;
}

// ---- host side -------------------------------------------------------------------------------------------


struct Plan {
  int tile = 0;               // 64, 32 or 16 (TileConfig::kTile)
  int64_t row_tiles = 0;
  int64_t col_tiles = 0;
  int64_t tiles_per_chunk = 0;
  int64_t chunks = 0;
  int64_t workspace_bytes = 0;
};

// The largest tile that still gives kBusyTiles tiles, else the smallest.
int choose_tile(int64_t num_anchors, int64_t num_candidates) {
  for (const int tile : {LargeTile::kTile, MediumTile::kTile}) {
    if (ceil_div(num_anchors, tile) * ceil_div(num_candidates, tile) >= kBusyTiles) return tile;
  }
  return SmallTile::kTile;
}

// The launch geometry for B, C >= 1 and a given tile; chunks_wanted <= 0 means "as plan_for would".
Plan make_plan(int64_t num_anchors, int64_t num_candidates, int tile, int64_t chunks_wanted) {
  Plan plan;
  plan.tile = tile;
  plan.row_tiles = ceil_div(num_anchors, tile);
  plan.col_tiles = ceil_div(num_candidates, tile);
  if (chunks_wanted <= 0) chunks_wanted = ceil_div(kTargetBlocks, plan.row_tiles);
  const int64_t chunks_target = std::max<int64_t>(1, std::min(plan.col_tiles, chunks_wanted));
  plan.tiles_per_chunk = ceil_div(plan.col_tiles, chunks_target);
  plan.chunks = ceil_div(plan.col_tiles, plan.tiles_per_chunk);  // every chunk has at least one tile
  plan.workspace_bytes = plan.chunks > 1 ? num_anchors * plan.chunks * kWorkspaceBytesPerEntry : 0;
  return plan;
}

Plan plan_for(int64_t num_anchors, int64_t num_candidates) {
  return make_plan(num_anchors, num_candidates, choose_tile(num_anchors, num_candidates), 0);
}

// A contiguous CUDA vector on the anchors' device.
void check_vector(const ArrayView& a, const char* name, int64_t length, DType dtype, int device) {
  check_cuda_vector(a, name, length, dtype, device, "anchors");
}

// All argument checks, before any CUDA call (so they also run, and fail clearly, without a GPU).
// Returns the plan (its workspace size checked against `workspace`).
Plan validate(const ArrayView& anchors, const ArrayView& candidates, const ArrayView& anchor_labels,
              const ArrayView& candidate_labels, const ArrayView& anchor_index, Metric metric,
              const ArrayView& dist_ap, const ArrayView& dist_an, const ArrayView& positive_index,
              const ArrayView& negative_index, const ArrayView& workspace) {
  check_feature_pair(anchors, candidates, "anchors", "candidates");
  std::ostringstream why;
  const int device = anchors.device;
  if (candidates.device != device) {
    why << "candidates: expected device cuda:" << device << " (that of anchors), got cuda:" << candidates.device;
    fail(why.str());
  }
  const int64_t num_anchors = anchors.size(0), num_candidates = candidates.size(0);
  if (num_anchors > INT_MAX) {
    why << "anchors: at most " << INT_MAX << " rows are supported, got " << num_anchors;
    fail(why.str());
  }
  if (num_candidates > INT_MAX - LargeTile::kTile) {
    why << "candidates: at most " << INT_MAX - LargeTile::kTile << " rows are supported (int32 indices), got "
        << num_candidates;
    fail(why.str());
  }
  check_vector(anchor_labels, "anchor_labels", num_anchors, DType::Int64, device);
  check_vector(candidate_labels, "candidate_labels", num_candidates, DType::Int64, device);
  check_vector(anchor_index, "anchor_index", num_anchors, DType::Int64, device);
  const DType out_dtype = anchors.dtype == DType::Float64 ? DType::Float64 : DType::Float32;
  if (dist_ap.dtype != out_dtype || dist_an.dtype != out_dtype) {
    const ArrayView& wrong = dist_ap.dtype != out_dtype ? dist_ap : dist_an;
    why << (dist_ap.dtype != out_dtype ? "dist_ap" : "dist_an") << ": expected dtype " << dtype_name(out_dtype)
        << " for " << dtype_name(anchors.dtype) << " inputs, got " << dtype_name(wrong.dtype);
    fail(why.str());
  }
  check_vector(dist_ap, "dist_ap", num_anchors, out_dtype, device);
  check_vector(dist_an, "dist_an", num_anchors, out_dtype, device);
  check_vector(positive_index, "positive_index", num_anchors, DType::Int64, device);
  check_vector(negative_index, "negative_index", num_anchors, DType::Int64, device);
  if (metric != Metric::Euclidean && metric != Metric::SqEuclidean && metric != Metric::Cosine) {
    why << "metric: unknown code " << static_cast<int>(metric);
    fail(why.str());
  }

  Plan plan;
  if (num_anchors > 0 && num_candidates > 0) plan = plan_for(num_anchors, num_candidates);
  check_workspace(workspace, plan.workspace_bytes,
                  "batch_hard_mine_workspace_bytes(" + std::to_string(num_anchors) + ", " +
                      std::to_string(num_candidates) + ")",
                  device, "anchors", 8);
  return plan;
}

template <typename AccT>
MineTargets<AccT> make_targets(const ArrayView& dist_ap, const ArrayView& dist_an, const ArrayView& positive_index,
                               const ArrayView& negative_index, const ArrayView& workspace, int64_t num_anchors,
                               const Plan& plan) {
  MineTargets<AccT> targets{};
  targets.dist_ap = dist_ap.ptr<AccT>();
  targets.dist_an = dist_an.ptr<AccT>();
  targets.positive_index = positive_index.ptr<int64_t>();
  targets.negative_index = negative_index.ptr<int64_t>();
  if (plan.chunks > 1) {
    const int64_t entries = num_anchors * plan.chunks;
    unsigned char* base = workspace.ptr<unsigned char>();
    targets.partial_positive_value = reinterpret_cast<AccT*>(base);
    targets.partial_negative_value = reinterpret_cast<AccT*>(base + 8 * entries);
    targets.partial_positive_index = reinterpret_cast<int*>(base + 16 * entries);
    targets.partial_negative_index = reinterpret_cast<int*>(base + 20 * entries);
  }
  return targets;
}

template <typename Config, typename InT, typename AccT>
void launch_mine(const ArrayView& anchors, const ArrayView& candidates, const ArrayView& anchor_labels,
                 const ArrayView& candidate_labels, const ArrayView& anchor_index, Metric metric,
                 const MineTargets<AccT>& targets, const Plan& plan, cudaStream_t stream) {
  const int64_t blocks64 = plan.row_tiles * plan.chunks;
  if (blocks64 > INT_MAX) {
    std::ostringstream why;
    why << "batch_hard_mine: " << plan.row_tiles << " x " << plan.chunks
        << " blocks are more than one CUDA launch can cover; split the anchors";
    fail(why.str());
  }
  const unsigned int blocks = static_cast<unsigned int>(blocks64);
  const auto mine = batch_hard_mine_kernel<Config, InT, AccT>;
  REIDFAST_LAUNCH(mine, blocks, kThreads, 0, stream)(
      anchors.ptr<const InT>(), candidates.ptr<const InT>(), anchor_labels.ptr<const int64_t>(),
      candidate_labels.ptr<const int64_t>(), anchor_index.ptr<const int64_t>(), anchors.size(0),
      static_cast<int>(candidates.size(0)), anchors.size(1), anchors.stride(0), candidates.stride(0),
      static_cast<int>(plan.chunks), static_cast<int>(plan.tiles_per_chunk), static_cast<int>(plan.col_tiles),
      metric, targets);
  REIDFAST_CUDA_CHECK(cudaGetLastError());
  if (plan.chunks > 1) {
    const unsigned int reduce_blocks =
        static_cast<unsigned int>(ceil_div(anchors.size(0), kReduceThreads / kWarp));
    const auto reduce = reduce_chunks_kernel<AccT>;
    REIDFAST_LAUNCH(reduce, reduce_blocks, kReduceThreads, 0, stream)(targets, anchors.size(0),
                                                                      static_cast<int>(plan.chunks));
    REIDFAST_CUDA_CHECK(cudaGetLastError());
  }
}

template <typename InT, typename AccT>
void launch_typed(const ArrayView& anchors, const ArrayView& candidates, const ArrayView& anchor_labels,
                  const ArrayView& candidate_labels, const ArrayView& anchor_index, Metric metric,
                  const ArrayView& dist_ap, const ArrayView& dist_an, const ArrayView& positive_index,
                  const ArrayView& negative_index, const ArrayView& workspace, const Plan& plan,
                  cudaStream_t stream) {
  const int64_t num_anchors = anchors.size(0);
  const MineTargets<AccT> targets =
      make_targets<AccT>(dist_ap, dist_an, positive_index, negative_index, workspace, num_anchors, plan);
  if (candidates.size(0) == 0) {
    const unsigned int blocks = static_cast<unsigned int>(ceil_div(num_anchors, kFillThreads));
    const auto fill = fill_empty_kernel<AccT>;
    REIDFAST_LAUNCH(fill, blocks, kFillThreads, 0, stream)(targets, num_anchors);
    REIDFAST_CUDA_CHECK(cudaGetLastError());
    return;
  }
  switch (plan.tile) {
    case LargeTile::kTile:
      launch_mine<LargeTile, InT, AccT>(anchors, candidates, anchor_labels, candidate_labels, anchor_index, metric,
                                        targets, plan, stream);
      break;
    case MediumTile::kTile:
      launch_mine<MediumTile, InT, AccT>(anchors, candidates, anchor_labels, candidate_labels, anchor_index, metric,
                                         targets, plan, stream);
      break;
    case SmallTile::kTile:
      launch_mine<SmallTile, InT, AccT>(anchors, candidates, anchor_labels, candidate_labels, anchor_index, metric,
                                        targets, plan, stream);
      break;
    default:
      fail("batch_hard_mine: internal error: unknown tile " + std::to_string(plan.tile));
  }
}

// Launches with an explicit plan (batch_hard_mine uses plan_for; tests force other tiles and chunkings).
// Arguments must have passed validate(); the workspace must hold plan.workspace_bytes.
void launch_with_plan(const ArrayView& anchors, const ArrayView& candidates, const ArrayView& anchor_labels,
                      const ArrayView& candidate_labels, const ArrayView& anchor_index, Metric metric,
                      const ArrayView& dist_ap, const ArrayView& dist_an, const ArrayView& positive_index,
                      const ArrayView& negative_index, const ArrayView& workspace, const Plan& plan,
                      std::uintptr_t stream) {
  if (anchors.size(0) == 0) return;  // nothing to write (a 0-block grid is an error)

  // `stream` must belong to anchors.device (the Python layer passes torch.cuda.current_stream(device)).
  DeviceGuard device_guard(anchors.device);
  const cudaStream_t cuda_stream = reinterpret_cast<cudaStream_t>(stream);
  switch (anchors.dtype) {
    case DType::Float32:
      launch_typed<float, float>(anchors, candidates, anchor_labels, candidate_labels, anchor_index, metric,
                                 dist_ap, dist_an, positive_index, negative_index, workspace, plan, cuda_stream);
      break;
    case DType::Float64:
      launch_typed<double, double>(anchors, candidates, anchor_labels, candidate_labels, anchor_index, metric,
                                   dist_ap, dist_an, positive_index, negative_index, workspace, plan, cuda_stream);
      break;
    case DType::Float16:
      launch_typed<__half, float>(anchors, candidates, anchor_labels, candidate_labels, anchor_index, metric,
                                  dist_ap, dist_an, positive_index, negative_index, workspace, plan, cuda_stream);
      break;
    case DType::BFloat16:
      launch_typed<__nv_bfloat16, float>(anchors, candidates, anchor_labels, candidate_labels, anchor_index, metric,
                                         dist_ap, dist_an, positive_index, negative_index, workspace, plan,
                                         cuda_stream);
      break;
    default:
      fail(std::string("anchors: unsupported dtype ") + dtype_name(anchors.dtype));  // unreachable after validate()
  }
}

// ---- backward ------------------------------------------------------------------------------------------
// Gradients of sum_i grad_ap[i] d(a_i, c_p(i)) + grad_an[i] d(a_i, c_n(i)) (contract: triplet.h). The same
// two passes as reidfast/kernels/triton/triplet_backward.py, whose docstring derives the coefficients:
//   pair kernel   one warp per anchor: the pair coefficients (cosine: norms and dot products of a_i, c_p,
//                 c_n, reduced over the warp) into the 7 B coefficient buffer and, when the candidates are a
//                 separate tensor, grad a_i.
//   rows kernel   one warp per output row j: the contributions of the anchors that chose j, in the order of
//                 the inverse index (CSR), plus row j's own anchor part when the rows are the anchors. No
//                 atomics: the sums have a fixed order, so results are bitwise reproducible.

constexpr int kBackwardThreads = 256;
constexpr int kBackwardRowsPerBlock = kBackwardThreads / kWarp;  // one warp per anchor / output row
constexpr int kFeaturesPerLane = 4;                              // rows kernel: 128 features per warp step

// Views into the coefficient buffer (7 B values of AccT; layout in triplet.h).
template <typename AccT>
struct BackwardCoefficients {
  AccT* on_anchor;        // [B]: anchor part, on a_i (cosine)
  AccT* on_positive;      // [B]: anchor part, on c_p(i)
  AccT* on_negative;      // [B]: anchor part, on c_n(i)
  AccT* entry_on_anchor;  // [2B]: entry e's contribution to its row, on the anchor row
  AccT* entry_on_row;     // [2B]: ... on the row itself (cosine)
};

// Butterfly sum: lanes add the same two partial sums in either order, so every lane ends bit-identical.
template <typename AccT>
__device__ __forceinline__ AccT warp_sum(AccT value) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(kFullMask, value, offset);
  return value;
}

template <typename InT, typename AccT>
__global__ void __launch_bounds__(kBackwardThreads)
    pair_coefficients_kernel(const InT* __restrict__ anchors, const InT* __restrict__ candidates,
                             const int64_t* __restrict__ positive_index, const int64_t* __restrict__ negative_index,
                             const AccT* __restrict__ dist_ap, const AccT* __restrict__ dist_an,
                             const AccT* __restrict__ grad_ap, const AccT* __restrict__ grad_an, int64_t num_anchors,
                             int64_t features, int64_t anchor_row_stride, int64_t candidate_row_stride,
                             Metric metric, BackwardCoefficients<AccT> coefficients, InT* __restrict__ grad_anchors,
                             int64_t grad_row_stride) {
  const int lane = threadIdx.x % kWarp;
  const int64_t anchor = static_cast<int64_t>(blockIdx.x) * kBackwardRowsPerBlock + threadIdx.x / kWarp;
  if (anchor >= num_anchors) return;  // a whole warp: the shuffles below always see full warps
  const int64_t positive = positive_index[anchor], negative = negative_index[anchor];
  const AccT grad_p = positive >= 0 ? grad_ap[anchor] : AccT(0);
  const AccT grad_n = negative >= 0 ? grad_an[anchor] : AccT(0);
  const InT* anchor_row = anchors + anchor * anchor_row_stride;
  const InT* positive_row = candidates + (positive >= 0 ? positive : 0) * candidate_row_stride;
  const InT* negative_row = candidates + (negative >= 0 ? negative : 0) * candidate_row_stride;
  const bool cosine = metric == Metric::Cosine;

  AccT on_anchor = AccT(0), on_positive, on_negative, positive_on_anchor, negative_on_anchor;
  AccT positive_on_row = AccT(0), negative_on_row = AccT(0);
  if (cosine) {
    AccT anchor_sq = AccT(0), positive_sq = AccT(0), negative_sq = AccT(0), dot_p = AccT(0), dot_n = AccT(0);
    for (int64_t f = lane; f < features; f += kWarp) {
      const AccT a = widen(anchor_row[f]);
      const AccT p = positive >= 0 ? widen(positive_row[f]) : AccT(0);
      const AccT n = negative >= 0 ? widen(negative_row[f]) : AccT(0);
      anchor_sq = multiply_add(a, a, anchor_sq);
      positive_sq = multiply_add(p, p, positive_sq);
      negative_sq = multiply_add(n, n, negative_sq);
      dot_p = multiply_add(a, p, dot_p);
      dot_n = multiply_add(a, n, dot_n);
    }
    const AccT eps = static_cast<AccT>(kCosineEps);
    const AccT anchor_length = square_root(warp_sum(anchor_sq));
    const AccT positive_length = square_root(warp_sum(positive_sq));
    const AccT negative_length = square_root(warp_sum(negative_sq));
    const AccT anchor_scale = clamp_min(anchor_length, eps);  // x / max(|x|, eps)
    const AccT positive_scale = clamp_min(positive_length, eps);
    const AccT negative_scale = clamp_min(negative_length, eps);
    const AccT cos_p = warp_sum(dot_p) / (anchor_scale * positive_scale);
    const AccT cos_n = warp_sum(dot_n) / (anchor_scale * negative_scale);
    // The clamp passes no gradient to |x|: below eps only the -c^/eps term is left.
    on_anchor = anchor_length > eps ? (grad_p * cos_p + grad_n * cos_n) / (anchor_scale * anchor_scale) : AccT(0);
    on_positive = -grad_p / (anchor_scale * positive_scale);
    on_negative = -grad_n / (anchor_scale * negative_scale);
    positive_on_anchor = on_positive;
    negative_on_anchor = on_negative;
    positive_on_row = positive_length > eps ? grad_p * cos_p / (positive_scale * positive_scale) : AccT(0);
    negative_on_row = negative_length > eps ? grad_n * cos_n / (negative_scale * negative_scale) : AccT(0);
  } else {
    AccT weight_p = AccT(2) * grad_p, weight_n = AccT(2) * grad_n;  // sqeuclidean: d|a - c|^2/da = 2 (a - c)
    if (metric == Metric::Euclidean) {  // (a - c) / d, and 0 where the forward's clamp was active
      const AccT floor = square_root(static_cast<AccT>(kEuclideanClamp));
      const AccT d_p = dist_ap[anchor], d_n = dist_an[anchor];
      weight_p = d_p > floor ? grad_p / d_p : AccT(0);
      weight_n = d_n > floor ? grad_n / d_n : AccT(0);
    }
    on_positive = weight_p;  // used as w (a - c): exact zero for equal rows, no cancellation
    on_negative = weight_n;
    positive_on_anchor = -weight_p;
    negative_on_anchor = -weight_n;
  }
  if (lane == 0) {
    coefficients.on_anchor[anchor] = on_anchor;
    coefficients.on_positive[anchor] = on_positive;
    coefficients.on_negative[anchor] = on_negative;
    coefficients.entry_on_anchor[anchor] = positive_on_anchor;
    coefficients.entry_on_anchor[num_anchors + anchor] = negative_on_anchor;
    coefficients.entry_on_row[anchor] = positive_on_row;
    coefficients.entry_on_row[num_anchors + anchor] = negative_on_row;
  }
  if (grad_anchors == nullptr) return;  // the rows kernel adds the anchor part (candidates are the anchors)
  InT* grad_row = grad_anchors + anchor * grad_row_stride;
  for (int64_t f = lane; f < features; f += kWarp) {
    const AccT a = widen(anchor_row[f]);
    const AccT p = positive >= 0 ? widen(positive_row[f]) : AccT(0);
    const AccT n = negative >= 0 ? widen(negative_row[f]) : AccT(0);
    const AccT grad = cosine ? on_anchor * a + on_positive * p + on_negative * n
                             : on_positive * (a - p) + on_negative * (a - n);
    grad_row[f] = narrow<InT>(grad);
  }
}

template <typename InT, typename AccT>
__global__ void __launch_bounds__(kBackwardThreads)
    chosen_rows_kernel(const InT* __restrict__ anchors, const InT* __restrict__ rows,
                       const int64_t* __restrict__ positive_index, const int64_t* __restrict__ negative_index,
                       const int64_t* __restrict__ entry_order, const int64_t* __restrict__ entry_offsets,
                       int64_t num_anchors, int64_t num_rows, int64_t features, int64_t anchor_row_stride,
                       int64_t row_stride, Metric metric, bool anchor_part, BackwardCoefficients<AccT> coefficients,
                       InT* __restrict__ grad, int64_t grad_row_stride) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kBackwardRowsPerBlock + threadIdx.x / kWarp;
  if (row >= num_rows) return;
  const bool cosine = metric == Metric::Cosine;
  const int64_t first = entry_offsets[row], last = entry_offsets[row + 1];
  const InT* own_row = rows + row * row_stride;
  int64_t positive = -1, negative = -1;
  AccT on_anchor = AccT(0), on_positive = AccT(0), on_negative = AccT(0);
  if (anchor_part) {  // the rows are the anchors: row j's own pairs
    positive = positive_index[row];
    negative = negative_index[row];
    on_anchor = coefficients.on_anchor[row];
    on_positive = coefficients.on_positive[row];
    on_negative = coefficients.on_negative[row];
  }
  const InT* positive_row = rows + (positive >= 0 ? positive : 0) * row_stride;
  const InT* negative_row = rows + (negative >= 0 ? negative : 0) * row_stride;
  InT* grad_row = grad + row * grad_row_stride;

  for (int64_t feature0 = 0; feature0 < features; feature0 += kWarp * kFeaturesPerLane) {
    AccT own[kFeaturesPerLane], total[kFeaturesPerLane];
#pragma unroll
    for (int t = 0; t < kFeaturesPerLane; ++t) {
      const int64_t f = feature0 + lane + t * kWarp;
      own[t] = f < features ? widen(own_row[f]) : AccT(0);
      total[t] = AccT(0);
    }
    for (int64_t slot = first; slot < last; ++slot) {  // the inverse index's order: a fixed summation order
      const int64_t entry = entry_order[slot];
      const int64_t anchor = entry >= num_anchors ? entry - num_anchors : entry;
      const AccT on_anchor_row = coefficients.entry_on_anchor[entry];
      const AccT on_own_row = cosine ? coefficients.entry_on_row[entry] : AccT(0);
      const InT* anchor_row = anchors + anchor * anchor_row_stride;
#pragma unroll
      for (int t = 0; t < kFeaturesPerLane; ++t) {
        const int64_t f = feature0 + lane + t * kWarp;
        if (f >= features) continue;
        const AccT a = widen(anchor_row[f]);
        total[t] = cosine ? multiply_add(on_own_row, own[t], multiply_add(on_anchor_row, a, total[t]))
                          : multiply_add(on_anchor_row, a - own[t], total[t]);
      }
    }
#pragma unroll
    for (int t = 0; t < kFeaturesPerLane; ++t) {
      const int64_t f = feature0 + lane + t * kWarp;
      if (f >= features) continue;
      AccT value = total[t];
      if (anchor_part) {
        const AccT p = positive >= 0 ? widen(positive_row[f]) : AccT(0);
        const AccT n = negative >= 0 ? widen(negative_row[f]) : AccT(0);
        value += cosine ? on_anchor * own[t] + on_positive * p + on_negative * n
                        : on_positive * (own[t] - p) + on_negative * (own[t] - n);
      }
      grad_row[f] = narrow<InT>(value);
    }
  }
}

// All argument checks of batch_hard_backward, before any CUDA call.
void validate_backward(const ArrayView& anchors, const ArrayView& candidates, const ArrayView& positive_index,
                       const ArrayView& negative_index, const ArrayView& dist_ap, const ArrayView& dist_an,
                       const ArrayView& grad_ap, const ArrayView& grad_an, Metric metric,
                       bool candidates_are_anchors, const ArrayView& entry_order, const ArrayView& entry_offsets,
                       const ArrayView& coefficients, const ArrayView& grad_anchors,
                       const ArrayView& grad_candidates) {
  check_matrix(anchors, "anchors", /*want_cuda=*/true);
  check_matrix(candidates, "candidates", /*want_cuda=*/true);
  check_matrix(grad_anchors, "grad_anchors", /*want_cuda=*/true);
  check_matrix(grad_candidates, "grad_candidates", /*want_cuda=*/true);
  std::ostringstream why;
  if (!is_floating(anchors.dtype)) {
    why << "anchors: expected float32, float64, float16 or bfloat16, got " << dtype_name(anchors.dtype);
    fail(why.str());
  }
  const int device = anchors.device;
  const int64_t num_anchors = anchors.size(0), features = anchors.size(1), num_rows = candidates.size(0);
  const std::pair<const ArrayView*, const char*> matrices[] = {
      {&candidates, "candidates"}, {&grad_anchors, "grad_anchors"}, {&grad_candidates, "grad_candidates"}};
  for (const auto& [matrix, name] : matrices) {
    if (matrix->dtype != anchors.dtype || matrix->size(1) != features || matrix->device != device) {
      why << name << ": expected " << dtype_name(anchors.dtype) << " rows of " << features << " features on cuda:"
          << device << " (as anchors), got " << dtype_name(matrix->dtype) << " rows of " << matrix->size(1)
          << " on cuda:" << matrix->device;
      fail(why.str());
    }
  }
  if (grad_anchors.size(0) != num_anchors || grad_candidates.size(0) != num_rows) {
    why << "grad_anchors, grad_candidates: expected " << num_anchors << " and " << num_rows << " rows, got "
        << grad_anchors.size(0) << " and " << grad_candidates.size(0);
    fail(why.str());
  }
  if (candidates_are_anchors && (candidates.data != anchors.data || num_rows != num_anchors ||
                                 candidates.strides != anchors.strides || grad_candidates.data != grad_anchors.data ||
                                 grad_candidates.strides != grad_anchors.strides)) {
    fail("candidates_are_anchors: expected candidates and grad_candidates to be the anchors and grad_anchors views");
  }
  if (!candidates_are_anchors && grad_candidates.data == grad_anchors.data && num_anchors > 0 && features > 0) {
    fail("grad_candidates: expected a buffer of its own (it is grad_anchors; set candidates_are_anchors)");
  }
  const DType acc_dtype = anchors.dtype == DType::Float64 ? DType::Float64 : DType::Float32;
  check_vector(positive_index, "positive_index", num_anchors, DType::Int64, device);
  check_vector(negative_index, "negative_index", num_anchors, DType::Int64, device);
  check_vector(dist_ap, "dist_ap", num_anchors, acc_dtype, device);
  check_vector(dist_an, "dist_an", num_anchors, acc_dtype, device);
  check_vector(grad_ap, "grad_ap", num_anchors, acc_dtype, device);
  check_vector(grad_an, "grad_an", num_anchors, acc_dtype, device);
  check_vector(entry_order, "entry_order", 2 * num_anchors, DType::Int64, device);
  check_vector(entry_offsets, "entry_offsets", num_rows + 1, DType::Int64, device);
  check_vector(coefficients, "coefficients", kBackwardCoefficientsPerAnchor * num_anchors, acc_dtype, device);
  if (metric != Metric::Euclidean && metric != Metric::SqEuclidean && metric != Metric::Cosine) {
    why << "metric: unknown code " << static_cast<int>(metric);
    fail(why.str());
  }
}

template <typename InT, typename AccT>
void launch_backward_typed(const ArrayView& anchors, const ArrayView& rows, const ArrayView& positive_index,
                           const ArrayView& negative_index, const ArrayView& dist_ap, const ArrayView& dist_an,
                           const ArrayView& grad_ap, const ArrayView& grad_an, Metric metric, bool rows_are_anchors,
                           const ArrayView& entry_order, const ArrayView& entry_offsets,
                           const ArrayView& coefficients, const ArrayView& grad_anchors, const ArrayView& grad_rows,
                           cudaStream_t stream) {
  const int64_t num_anchors = anchors.size(0), num_rows = rows.size(0), features = anchors.size(1);
  AccT* base = coefficients.ptr<AccT>();
  const BackwardCoefficients<AccT> coefficient_views{base, base + num_anchors, base + 2 * num_anchors,
                                                      base + 3 * num_anchors, base + 5 * num_anchors};
  if (num_anchors > 0) {
    const unsigned int blocks = static_cast<unsigned int>(ceil_div(num_anchors, kBackwardRowsPerBlock));
    const auto pairs = pair_coefficients_kernel<InT, AccT>;
    REIDFAST_LAUNCH(pairs, blocks, kBackwardThreads, 0, stream)(
        anchors.ptr<const InT>(), rows.ptr<const InT>(), positive_index.ptr<const int64_t>(),
        negative_index.ptr<const int64_t>(), dist_ap.ptr<const AccT>(), dist_an.ptr<const AccT>(),
        grad_ap.ptr<const AccT>(), grad_an.ptr<const AccT>(), num_anchors, features, anchors.stride(0),
        rows.stride(0), metric, coefficient_views, rows_are_anchors ? nullptr : grad_anchors.ptr<InT>(),
        grad_anchors.stride(0));
    REIDFAST_CUDA_CHECK(cudaGetLastError());
  }
  if (num_rows > 0) {
    const unsigned int blocks = static_cast<unsigned int>(ceil_div(num_rows, kBackwardRowsPerBlock));
    const auto chosen = chosen_rows_kernel<InT, AccT>;
    REIDFAST_LAUNCH(chosen, blocks, kBackwardThreads, 0, stream)(
        anchors.ptr<const InT>(), rows.ptr<const InT>(), positive_index.ptr<const int64_t>(),
        negative_index.ptr<const int64_t>(), entry_order.ptr<const int64_t>(), entry_offsets.ptr<const int64_t>(),
        num_anchors, num_rows, features, anchors.stride(0), rows.stride(0), metric, rows_are_anchors,
        coefficient_views, grad_rows.ptr<InT>(), grad_rows.stride(0));
    REIDFAST_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace

void batch_hard_mine(const ArrayView& anchors, const ArrayView& candidates, const ArrayView& anchor_labels,
                     const ArrayView& candidate_labels, const ArrayView& anchor_index, Metric metric,
                     const ArrayView& dist_ap, const ArrayView& dist_an, const ArrayView& positive_index,
                     const ArrayView& negative_index, const ArrayView& workspace, std::uintptr_t stream) {
  const Plan plan = validate(anchors, candidates, anchor_labels, candidate_labels, anchor_index, metric, dist_ap,
                             dist_an, positive_index, negative_index, workspace);
  launch_with_plan(anchors, candidates, anchor_labels, candidate_labels, anchor_index, metric, dist_ap, dist_an,
                   positive_index, negative_index, workspace, plan, stream);
}

int64_t batch_hard_mine_workspace_bytes(int64_t num_anchors, int64_t num_candidates) {
  if (num_anchors < 0 || num_candidates < 0) {
    std::ostringstream why;
    why << "batch_hard_mine_workspace_bytes: expected non-negative sizes, got (" << num_anchors << ", "
        << num_candidates << ")";
    fail(why.str());
  }
  if (num_anchors == 0 || num_candidates == 0) return 0;
  return plan_for(num_anchors, num_candidates).workspace_bytes;
}

void batch_hard_backward(const ArrayView& anchors, const ArrayView& candidates, const ArrayView& positive_index,
                         const ArrayView& negative_index, const ArrayView& dist_ap, const ArrayView& dist_an,
                         const ArrayView& grad_ap, const ArrayView& grad_an, Metric metric,
                         bool candidates_are_anchors, const ArrayView& entry_order, const ArrayView& entry_offsets,
                         const ArrayView& coefficients, const ArrayView& grad_anchors,
                         const ArrayView& grad_candidates, std::uintptr_t stream) {
  validate_backward(anchors, candidates, positive_index, negative_index, dist_ap, dist_an, grad_ap, grad_an, metric,
                    candidates_are_anchors, entry_order, entry_offsets, coefficients, grad_anchors, grad_candidates);
  if (anchors.size(1) == 0 || (anchors.size(0) == 0 && candidates.size(0) == 0)) return;  // nothing to write
  DeviceGuard device_guard(anchors.device);
  const cudaStream_t cuda_stream = reinterpret_cast<cudaStream_t>(stream);
  switch (anchors.dtype) {
    case DType::Float32:
      launch_backward_typed<float, float>(anchors, candidates, positive_index, negative_index, dist_ap, dist_an,
                                          grad_ap, grad_an, metric, candidates_are_anchors, entry_order,
                                          entry_offsets, coefficients, grad_anchors, grad_candidates, cuda_stream);
      break;
    case DType::Float64:
      launch_backward_typed<double, double>(anchors, candidates, positive_index, negative_index, dist_ap, dist_an,
                                            grad_ap, grad_an, metric, candidates_are_anchors, entry_order,
                                            entry_offsets, coefficients, grad_anchors, grad_candidates, cuda_stream);
      break;
    case DType::Float16:
      launch_backward_typed<__half, float>(anchors, candidates, positive_index, negative_index, dist_ap, dist_an,
                                           grad_ap, grad_an, metric, candidates_are_anchors, entry_order,
                                           entry_offsets, coefficients, grad_anchors, grad_candidates, cuda_stream);
      break;
    case DType::BFloat16:
      launch_backward_typed<__nv_bfloat16, float>(anchors, candidates, positive_index, negative_index, dist_ap,
                                                  dist_an, grad_ap, grad_an, metric, candidates_are_anchors,
                                                  entry_order, entry_offsets, coefficients, grad_anchors,
                                                  grad_candidates, cuda_stream);
      break;
    default:
      fail(std::string("anchors: unsupported dtype ") + dtype_name(anchors.dtype));  // unreachable after validate
  }
}

}  // namespace cuda
}  // namespace reidfast
