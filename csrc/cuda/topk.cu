// Fused pairwise distance + per-row top-k on the GPU: for every row of x, the k nearest rows of y, sorted by
// (distance, column), without ever writing the N x M distance matrix. Contract: topk.h; semantics:
// reidfast/reference/distance.py.
//
// Overview
//   scan kernel    grid = row tiles x column chunks. A block owns 64 rows of x and walks the 64-column tiles
//                  of y in its chunk. Per tile it computes the 64 x 64 distances exactly as distance.cu does
//                  (same tiling, staging, conversions, fused norms and epilogue), then offers them to per-row
//                  running top-k lists. With one chunk the block writes the outputs itself; with several each
//                  chunk leaves a sorted partial top-k list per row in the workspace for
//   merge kernel   (one warp per row) which merges the chunks' lists of a row and writes the outputs.
//
// Distance tiles (as distance.cu)
//   256 threads = 16 x 16; thread (thread_row, thread_col) = (tid / 16, tid % 16) holds the 4 x 4 micro-tile
//   of dot products for tile rows thread_row * 4 + [0, 4) and tile columns thread_col * 4 + [0, 4). The
//   feature axis is walked in slabs of 16 features staged, transposed and widened, in shared memory (rows
//   padded to 68 words), with the next slab (also the first slab of the next tile) prefetched into
//   registers. Out-of-range rows / features are staged as zeros. Threads 0..63 accumulate the x-row norms
//   and 64..127 the y-row norms from the staged slabs with the same fused multiply-adds in the same feature
//   order as the dot products, so a row of x equal to a row of y has |x|^2 + |y|^2 - 2 x.y exactly 0 (the
//   diagonal of x against itself: exactly sqrt(1e-12) for euclidean, 0 for sqeuclidean). Every distance is
//   computed by the same operations whatever its position in a tile or chunk, so it is the same number as
//   distance.cu writes, and the result does not depend on the tiling or the chunking.
//
// Ranking: (value, column) entries
//   The lists rank the finished distances, exactly the values returned (for euclidean after the clamp and the
//   sqrt, not the squared distance: float sqrt is monotone but not strictly, and two squared distances with
//   the same sqrt must tie, i.e. list the smaller column first, as the contract and the reference do).
//   A candidate is one integer, the Entry: (order_bits(value) << 32 | column) for float32 accumulation (64
//   bits), (order_bits(value) << 64 | column) for float64 (128 bits). order_bits maps a float to an unsigned
//   integer with the same order (negatives flipped, -0 made +0, every NaN one canonical NaN that sorts after
//   +inf, like torch.sort), so one unsigned comparison is the total order "smaller distance, then smaller
//   column". Columns are distinct, so entries are distinct: the top-k set and its order are unique, and any
//   merge order gives the same result (deterministic, independent of chunks and scheduling). The sentinel
//   (all bits set) is larger than every real entry and fills lists that are not full yet.
//
// Top-k maintenance (scan kernel)
//   A row's 64 tile candidates live in one half-warp (16 lanes x 4), and warp w owns tile rows 8w..8w+7
//   (thread_rows 2w, 2w+1), so all top-k state of a row is touched by one warp only: no block barriers.
//   Per row the block keeps
//     list       k entries, sorted ascending, in the workspace (global memory, L1/L2 resident), initially
//                sentinels; the row's slot for this chunk: lists + (row * chunks + chunk) * k;
//     threshold  a copy of list[k - 1] in shared memory;
//     pending    up to kPending = 64 unsorted candidates in shared memory.
//   Per tile and row, candidates with entry < threshold (only those can still be in the top k: k entries
//   no larger exist) are appended to `pending` (ballot + popc compaction within the half-warp). When the
//   tile's candidates would overflow `pending`, the warp first merges pending into the list (which lowers
//   the threshold) and re-filters. At the end of the chunk every non-empty pending buffer is merged.
//   The threshold is thus stale between merges (a superset of the useful candidates is kept, never fewer),
//   and merges are rare: for candidates in random order a row receives about k (1 + ln(M / k)) insertions
//   in total, so after the first tiles a merge happens about once per 64 insertions.
//   Merge (one warp, merge_pending): sort pending by rank counting (2 entries per lane, keys distinct),
//   copy the list into this warp's shared scratch, then scatter: list entry i goes to position
//   i + #(pending < it), pending entry j to j + #(list < it) (binary searches in shared memory); positions
//   are distinct, the first k are written back to the list, and the one landing at k - 1 is the new
//   threshold. Entries that do not move are not rewritten.
//
// Chunks and workspace
//   With few rows the grid would be too small, so the y axis is cut into chunks of consecutive tiles:
//   chunks_target = min(col_tiles, ceil(kTargetBlocks / row_tiles)), tiles_per_chunk =
//   max(ceil(col_tiles / chunks_target), ceil(2k / 64)) (a chunk covers at least 2k columns, so the partial
//   lists of a row hold at most about half as many entries as the row has columns), chunks =
//   ceil(col_tiles / tiles_per_chunk) (no empty chunk). Chunk c leaves its sorted partial list (sentinels
//   where the chunk had fewer than k columns) in the workspace; the merge kernel takes chunk 0's list as
//   the running list of the row and offers the other chunks' lists, in chunk order, in groups of 32 through
//   the same pending/merge routine (a group whose first entry does not beat the threshold ends that chunk:
//   the lists are sorted). Workspace = N * chunks * k * 16 bytes (one 16-byte slot per entry whatever the
//   dtype; float32 entries use 8 of them). Since chunks <= ceil(kTargetBlocks / row_tiles),
//   N * chunks <= N + 64 * kTargetBlocks: the workspace is O(N k) (at most 16 k (N + 16384) bytes).
//
// Shared memory (dynamic, sized by k): pending 64 x 64 entries, thresholds 64 entries, scratch 8 x k
//   entries, pending counts 64 ints; plus the static slabs and norms. float32 accumulation: 43 KiB at k = 20,
//   58 KiB at k = 256; float64: 86 KiB / 115 KiB (the launch opts in to the dynamic size: above 48 KB in all it
//   must; A100 allows 163 KB per block, H100 227 KB).
//
// Cost
//   The distances: 2 N M D flops (the floor), as in distance.cu. The top-k: O(N M) key computations and
//   comparisons, plus the merges, each O(64 + (k / 32) log 64 + log k) steps per lane of one warp and 2k
//   global entries moved. In random order a row needs about (k (1 + ln(M / k))) / 64 merges per chunk plus
//   a few while the list fills; in the worst case (every candidate beats the threshold, e.g. y in
//   decreasing distance order) one per tile: O(N (M / 64) (64 + k)) extra work, still no N x M memory.
//   Merge kernel: at most N chunks k entries read. Memory: the outputs plus the O(N k) workspace.
//
// Precision: float32 accumulation for float32/float16/bfloat16 inputs, float64 for float64 (DESIGN.md).
// Limits: M <= INT32_MAX (columns are 32-bit inside an entry).
#include "topk.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <sstream>
#include <string>

#include "cuda_check.h"
#include "device_math.cuh"
#include "host_utils.h"
#include "launch.cuh"
#include "tile64.cuh"

namespace reidfast {
namespace cuda {
namespace {

using namespace device;  // NOLINT: the shared arithmetic of device_math.cuh

using namespace tile64;  // NOLINT: the shared 64 x 64 tile product (tile64.cuh)

constexpr int kWarp = 32;
constexpr int kWarps = kThreads / kWarp;  // 8
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kPending = 64;              // unsorted candidates a row may hold between merges
constexpr int kRowsPerWarp = kTileRows / kWarps;  // 8: warp w owns tile rows [8w, 8w + 8)
constexpr int kMergeRowsPerBlock = kWarps;        // merge kernel: one warp per row
constexpr int64_t kTargetBlocks = 256;            // plan: blocks to aim for when chunking the y axis
constexpr int64_t kMinChunkColumnsPerK = 2;       // plan: a chunk covers at least 2k columns
constexpr int64_t kWorkspaceBytesPerEntry = 16;   // one slot per entry, whatever the dtype

static_assert(2 * kThreadsAlongCols == kWarp, "a warp spans two thread rows: a row's candidates sit in a half-warp");
static_assert(kRowsPerWarp == 2 * kMicroRows, "warp w owns thread rows 2w and 2w + 1");
static_assert(kPending == 2 * kWarp, "merge_pending sorts the pending buffer with two entries per lane");
static_assert(kPending >= kTileCols, "after a merge, one tile's candidates for a row fit the pending buffer");
static_assert(kPending >= kWarp, "the merge kernel offers groups of kWarp entries");



// ---- ranked entries ------------------------------------------------------------------------------------

// An unsigned integer with the order of the float: -0 counts as +0, every NaN as one NaN after +inf.
__device__ __forceinline__ uint32_t order_bits(float value) {
  uint32_t bits = __float_as_uint(value);
  if (value != value) bits = 0x7fc00000u;
  else if (value == 0.0f) bits = 0u;
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}
__device__ __forceinline__ float from_order_bits(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}
__device__ __forceinline__ uint64_t order_bits(double value) {
  uint64_t bits = static_cast<uint64_t>(__double_as_longlong(value));
  if (value != value) bits = 0x7ff8000000000000ull;
  else if (value == 0.0) bits = 0ull;
  return (bits & 0x8000000000000000ull) ? ~bits : (bits | 0x8000000000000000ull);
}
__device__ __forceinline__ double from_order_bits(uint64_t key) {
  const uint64_t bits = (key & 0x8000000000000000ull) ? (key & 0x7fffffffffffffffull) : ~key;
  return __longlong_as_double(static_cast<long long>(bits));
}

// Entry = (order_bits(value), column) packed so that one unsigned comparison is the ranking order.
template <typename AccT>
struct Ranked;

template <>
struct Ranked<float> {
  using Entry = unsigned long long;
  __device__ __forceinline__ static Entry make(float value, int64_t column) {
    return (static_cast<Entry>(order_bits(value)) << 32) | static_cast<uint32_t>(column);
  }
  __device__ __forceinline__ static float value(Entry entry) {
    return from_order_bits(static_cast<uint32_t>(entry >> 32));
  }
  __device__ __forceinline__ static int64_t column(Entry entry) { return static_cast<uint32_t>(entry); }
};

template <>
struct Ranked<double> {
  using Entry = unsigned __int128;
  __device__ __forceinline__ static Entry make(double value, int64_t column) {
    return (static_cast<Entry>(order_bits(value)) << 64) | static_cast<uint32_t>(column);
  }
  __device__ __forceinline__ static double value(Entry entry) {
    return from_order_bits(static_cast<uint64_t>(entry >> 64));
  }
  __device__ __forceinline__ static int64_t column(Entry entry) { return static_cast<uint32_t>(entry); }
};

template <typename Entry>
__device__ __forceinline__ Entry sentinel() {
  return ~Entry(0);
}

// Number of elements of the sorted array[0, length) smaller than key (lower bound).
template <typename Entry>
__device__ __forceinline__ int count_less(const Entry* array, int length, Entry key) {
  int low = 0, high = length;
  while (low < high) {
    const int middle = (low + high) / 2;
    if (array[middle] < key) {
      low = middle + 1;
    } else {
      high = middle;
    }
  }
  return low;
}

// Warp-collective (all 32 lanes, warp-uniform arguments): merges the n <= kPending unsorted entries of
// `pending` (shared) into the sorted k-entry `list` (global), keeping the k smallest, and stores the new
// list[k - 1] in *threshold (shared). `scratch` (shared, k entries) is this warp's. See "Top-k maintenance".
template <typename Entry>
__device__ void merge_pending(Entry* __restrict__ list, int k, Entry* pending, int n, Entry* scratch,
                              Entry* threshold, int lane) {
  // 1. Sort pending: an entry's position is the number of smaller entries (entries are distinct).
  const Entry first = lane < n ? pending[lane] : sentinel<Entry>();
  const Entry second = lane + kWarp < n ? pending[lane + kWarp] : sentinel<Entry>();
  int first_rank = 0, second_rank = 0;
  for (int t = 0; t < n; ++t) {
    const Entry other = pending[t];
    first_rank += other < first;
    second_rank += other < second;
  }
  __syncwarp();
  if (lane < n) pending[first_rank] = first;
  if (lane + kWarp < n) pending[second_rank] = second;
  // 2. The list, to shared memory for the binary searches.
  for (int i = lane; i < k; i += kWarp) scratch[i] = list[i];
  __syncwarp();
  // 3. Scatter the first k of the merged order.
  for (int i = lane; i < k; i += kWarp) {
    const Entry entry = scratch[i];
    const int position = i + count_less(pending, n, entry);
    if (position < k) {
      if (position != i) list[position] = entry;
      if (position == k - 1) *threshold = entry;
    }
  }
  for (int j = lane; j < n; j += kWarp) {
    const Entry entry = pending[j];
    const int position = j + count_less(scratch, k, entry);
    if (position < k) {
      list[position] = entry;
      if (position == k - 1) *threshold = entry;
    }
  }
  __syncwarp();
}

// Shared bytes of the scan kernel's dynamic part (see the layout in topk_scan_kernel).
template <typename Entry>
constexpr int64_t scan_shared_bytes(int64_t k) {
  return (kTileRows * kPending + kTileRows + kWarps * k) * static_cast<int64_t>(sizeof(Entry)) +
         kTileRows * static_cast<int64_t>(sizeof(int));
}

// Shared bytes of the merge kernel: per warp, pending (kPending), scratch (k) and the threshold (1).
template <typename Entry>
constexpr int64_t merge_shared_bytes(int64_t k) {
  return kMergeRowsPerBlock * (kPending + k + 1) * static_cast<int64_t>(sizeof(Entry));
}

// Resident blocks per SM the scan kernel's registers are sized for: 2 (<= 128 registers) for float
// accumulation, 1 for float64 (~210: 128-bit entries). Without a minimum, ptxas on sm_90 capped the kernel at
// 128 registers itself and spilled 8 (float) to 64 (float64) bytes; with it neither spills
// (tests/test_cuda_resources.py).
template <typename AccT>
constexpr int kScanBlocksPerSM = sizeof(AccT) == 4 ? 2 : 1;

// Block (blockIdx.x, blockIdx.y) = (row tile, chunk): the top k of rows [row0, row0 + 64) of x among the
// columns of tiles [chunk * tiles_per_chunk, ...) of y. Writes the sorted list of (row, chunk) to
// lists + (row * gridDim.y + chunk) * k, and with a single chunk also the outputs values/indices (N, k).
template <typename InT, typename AccT>
__global__ void __launch_bounds__(kThreads, kScanBlocksPerSM<AccT>)
    topk_scan_kernel(const InT* __restrict__ x, const InT* __restrict__ y, int64_t x_rows, int64_t y_rows,
                     int64_t features, int64_t x_row_stride, int64_t y_row_stride, int k, int tiles_per_chunk,
                     int col_tiles, Metric metric, bool exclude_self, typename Ranked<AccT>::Entry* lists,
                     AccT* __restrict__ values, int64_t* __restrict__ indices) {
  using Entry = typename Ranked<AccT>::Entry;
  __shared__ __align__(16) AccT x_slab[kTileDepth][kSharedPitch];
  __shared__ __align__(16) AccT y_slab[kTileDepth][kSharedPitch];
  __shared__ AccT x_factors[kTileRows];
  __shared__ AccT y_factors[kTileCols];
  REIDFAST_DYNAMIC_SHARED(topk_shared);
  Entry* const pending = reinterpret_cast<Entry*>(topk_shared);  // [kTileRows][kPending]
  Entry* const thresholds = pending + kTileRows * kPending;        // [kTileRows]
  const int warp = threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  Entry* const scratch = thresholds + kTileRows + warp * k;        // [kWarps][k], this warp's
  int* const pending_count = reinterpret_cast<int*>(thresholds + kTileRows + kWarps * k);  // [kTileRows]

  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  const int chunks = static_cast<int>(gridDim.y);
  const int chunk = static_cast<int>(blockIdx.y);
  const int first_tile = chunk * tiles_per_chunk;
  const int end_tile = min(first_tile + tiles_per_chunk, col_tiles);
  const int thread_row = threadIdx.x / kThreadsAlongCols;
  const int thread_col = threadIdx.x % kThreadsAlongCols;
  auto list_of = [&](int64_t row) { return lists + (row * chunks + chunk) * static_cast<int64_t>(k); };

  // Empty lists for this warp's rows (only this warp ever touches them).
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int local_row = warp * kRowsPerWarp + r;
    if (lane == 0) {
      thresholds[local_row] = sentinel<Entry>();
      pending_count[local_row] = 0;
    }
    if (row0 + local_row < x_rows) {
      Entry* const list = list_of(row0 + local_row);
      for (int i = lane; i < k; i += kWarp) list[i] = sentinel<Entry>();
    }
  }
  __syncwarp();

  const NormOwner norm_owner;

  // This lane's half-warp holds the candidates of tile row thread_row * 4 + i (i = 0..3).
  const unsigned half_mask = (lane < kThreadsAlongCols) ? 0x0000ffffu : 0xffff0000u;
  const unsigned lanes_below = (1u << lane) - 1u;

  InT x_staged[kLoadsPerThread];
  InT y_staged[kLoadsPerThread];
  fetch_slab(x, x_rows, features, x_row_stride, row0, 0, x_staged);
  fetch_slab(y, y_rows, features, y_row_stride, static_cast<int64_t>(first_tile) * kTileCols, 0, y_staged);

  for (int tile = first_tile; tile < end_tile; ++tile) {
    const int64_t col0 = static_cast<int64_t>(tile) * kTileCols;
    // Everyone is done reading the previous tile's factors (the feature loop below has no barrier if D == 0).
    __syncthreads();

    AccT norm = AccT(0);
    AccT dots[kMicroRows][kMicroCols];
    zero_micro_tile(dots);

    for (int64_t first_feature = 0; first_feature < features; first_feature += kTileDepth) {
      store_slab(x_staged, x_slab);
      store_slab(y_staged, y_slab);
      __syncthreads();

      // Prefetch the next slab, or the first slab of the next tile, while this one is multiplied.
      const int64_t next_feature = first_feature + kTileDepth;
      if (next_feature < features) {
        fetch_slab(x, x_rows, features, x_row_stride, row0, next_feature, x_staged);
        fetch_slab(y, y_rows, features, y_row_stride, col0, next_feature, y_staged);
      } else if (tile + 1 < end_tile) {
        fetch_slab(x, x_rows, features, x_row_stride, row0, 0, x_staged);
        fetch_slab(y, y_rows, features, y_row_stride, col0 + kTileCols, 0, y_staged);
      }

      multiply_slab(x_slab, y_slab, thread_row, thread_col, norm_owner, norm, dots);
      __syncthreads();  // the next iteration overwrites the slabs
    }

    if (norm_owner.x) x_factors[norm_owner.index] = row_factor(norm, metric);
    if (norm_owner.y) y_factors[norm_owner.index] = row_factor(norm, metric);
    __syncthreads();

    AccT col_factors[kMicroCols];
#pragma unroll
    for (int j = 0; j < kMicroCols; ++j) col_factors[j] = y_factors[thread_col * kMicroCols + j];

    // Offer the tile's candidates, one micro-row at a time: the two half-warps handle two rows at once.
#pragma unroll 1
    for (int i = 0; i < kMicroRows; ++i) {
      // dots[i] by selection (a dynamic index would move dots to local memory; unrolling this loop
      // would copy the merge code four times).
      AccT row_dots[kMicroCols];
#pragma unroll
      for (int j = 0; j < kMicroCols; ++j) row_dots[j] = dots[0][j];
#pragma unroll
      for (int ii = 1; ii < kMicroRows; ++ii) {
#pragma unroll
        for (int j = 0; j < kMicroCols; ++j) row_dots[j] = i == ii ? dots[ii][j] : row_dots[j];
      }
      const int local_row = thread_row * kMicroRows + i;
      const int64_t row = row0 + local_row;
      const AccT row_factor_i = x_factors[local_row];
      Entry candidates[kMicroCols];
      bool valid[kMicroCols];
#pragma unroll
      for (int j = 0; j < kMicroCols; ++j) {
        const int64_t col = col0 + thread_col * kMicroCols + j;
        valid[j] = row < x_rows && col < y_rows && !(exclude_self && col == row);
        candidates[j] = Ranked<AccT>::make(finish_distance(row_dots[j], row_factor_i, col_factors[j], metric), col);
      }

      Entry threshold = thresholds[local_row];
      int count = pending_count[local_row];
      bool pass[kMicroCols];
      unsigned masks[kMicroCols];
      int passing = 0;  // this half-warp's candidates for its row that beat the threshold
#pragma unroll
      for (int j = 0; j < kMicroCols; ++j) {
        pass[j] = valid[j] && candidates[j] < threshold;
        masks[j] = __ballot_sync(kFullMask, pass[j]) & half_mask;
        passing += __popc(masks[j]);
      }

      const unsigned overflow = __ballot_sync(kFullMask, count + passing > kPending);
      if (overflow != 0) {  // warp-uniform
        for (int half = 0; half < 2; ++half) {
          if ((overflow >> (half * kThreadsAlongCols)) & 1u) {
            const int merge_row = (warp * 2 + half) * kMicroRows + i;
            merge_pending(list_of(row0 + merge_row), k, pending + merge_row * kPending, pending_count[merge_row],
                          scratch, &thresholds[merge_row], lane);
            if (lane == 0) pending_count[merge_row] = 0;
            __syncwarp();
          }
        }
        // Re-filter against the lowered threshold (the other half-warp's row is unchanged).
        threshold = thresholds[local_row];
        count = pending_count[local_row];
        passing = 0;
#pragma unroll
        for (int j = 0; j < kMicroCols; ++j) {
          pass[j] = valid[j] && candidates[j] < threshold;
          masks[j] = __ballot_sync(kFullMask, pass[j]) & half_mask;
          passing += __popc(masks[j]);
        }
      }

      // Append (count + passing <= kPending now): ballot-prefix compaction within the half-warp.
      Entry* const row_pending = pending + local_row * kPending;
      int base = count;
#pragma unroll
      for (int j = 0; j < kMicroCols; ++j) {
        if (pass[j]) row_pending[base + __popc(masks[j] & lanes_below)] = candidates[j];
        base += __popc(masks[j]);
      }
      __syncwarp();  // every lane has read pending_count[local_row] before it changes
      if (thread_col == 0) pending_count[local_row] = count + passing;
      __syncwarp();
    }
  }

  // Flush the pending candidates of this warp's rows; with one chunk, write the outputs.
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int local_row = warp * kRowsPerWarp + r;
    const int64_t row = row0 + local_row;
    if (row >= x_rows) break;  // warp-uniform; rows only increase with r
    Entry* const list = list_of(row);
    const int count = pending_count[local_row];
    if (count > 0) {
      merge_pending(list, k, pending + local_row * kPending, count, scratch, &thresholds[local_row], lane);
    }
    if (chunks == 1) {
      for (int i = lane; i < k; i += kWarp) {
        const Entry entry = list[i];
        values[row * k + i] = Ranked<AccT>::value(entry);
        indices[row * k + i] = Ranked<AccT>::column(entry);
      }
    }
  }
}

// One warp per row: merges the sorted partial lists of the row's `chunks` chunks (chunk 0's list is the
// running list) and writes the row's outputs.
template <typename AccT>
__global__ void __launch_bounds__(kThreads)
    topk_merge_kernel(typename Ranked<AccT>::Entry* lists, int64_t x_rows, int k, int chunks,
                      AccT* __restrict__ values, int64_t* __restrict__ indices) {
  using Entry = typename Ranked<AccT>::Entry;
  REIDFAST_DYNAMIC_SHARED(topk_shared);
  const int warp = threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  Entry* const pending = reinterpret_cast<Entry*>(topk_shared) + warp * (kPending + k + 1);
  Entry* const scratch = pending + kPending;
  Entry* const threshold = scratch + k;
  const unsigned lanes_below = (1u << lane) - 1u;

  const int64_t row = static_cast<int64_t>(blockIdx.x) * kMergeRowsPerBlock + warp;
  if (row >= x_rows) return;  // whole warp; this kernel has no block barriers
  Entry* const list = lists + row * chunks * static_cast<int64_t>(k);
  if (lane == 0) *threshold = list[k - 1];
  __syncwarp();

  int count = 0;  // warp-uniform
  for (int chunk = 1; chunk < chunks; ++chunk) {
    const Entry* const partial = list + static_cast<int64_t>(chunk) * k;
    for (int group = 0; group < k; group += kWarp) {
      const Entry entry = group + lane < k ? partial[group + lane] : sentinel<Entry>();
      bool pass = entry < *threshold;
      unsigned mask = __ballot_sync(kFullMask, pass);
      if (mask != 0 && count + __popc(mask) > kPending) {
        merge_pending(list, k, pending, count, scratch, threshold, lane);
        count = 0;
        pass = entry < *threshold;
        mask = __ballot_sync(kFullMask, pass);
      }
      if (mask == 0) break;  // partial is sorted: nothing further in this chunk beats the threshold
      if (pass) pending[count + __popc(mask & lanes_below)] = entry;
      count += __popc(mask);
      __syncwarp();
    }
  }
  if (count > 0) merge_pending(list, k, pending, count, scratch, threshold, lane);

  for (int i = lane; i < k; i += kWarp) {
    const Entry entry = list[i];
    values[row * k + i] = Ranked<AccT>::value(entry);
    indices[row * k + i] = Ranked<AccT>::column(entry);
  }
}

// ---- host side -------------------------------------------------------------------------------------------


struct Plan {
  int64_t row_tiles = 0;
  int64_t col_tiles = 0;
  int64_t tiles_per_chunk = 0;
  int64_t chunks = 0;
  int64_t workspace_bytes = 0;
};

// Launch geometry and workspace for N rows, M columns, k; see "Chunks and workspace". N, M >= 0, k >= 1.
Plan plan_for(int64_t num_rows, int64_t num_cols, int64_t k) {
  Plan plan;
  if (num_rows == 0 || num_cols == 0) return plan;  // nothing to launch
  plan.row_tiles = ceil_div(num_rows, kTileRows);
  plan.col_tiles = ceil_div(num_cols, kTileCols);
  const int64_t chunks_target =
      std::max<int64_t>(1, std::min(plan.col_tiles, ceil_div(kTargetBlocks, plan.row_tiles)));
  const int64_t min_tiles = std::max<int64_t>(1, ceil_div(kMinChunkColumnsPerK * k, kTileCols));
  plan.tiles_per_chunk = std::max(ceil_div(plan.col_tiles, chunks_target), min_tiles);
  plan.chunks = ceil_div(plan.col_tiles, plan.tiles_per_chunk);  // every chunk has at least one tile
  plan.workspace_bytes = num_rows * plan.chunks * k * kWorkspaceBytesPerEntry;
  return plan;
}

// An (N, k) contiguous output of `dtype` on `device`.
void check_output(const ArrayView& a, const char* name, int64_t rows, int64_t k, DType dtype, int device) {
  check_matrix(a, name, /*want_cuda=*/true);
  std::ostringstream why;
  if (a.dtype != dtype) {
    why << name << ": expected dtype " << dtype_name(dtype) << ", got " << dtype_name(a.dtype);
    fail(why.str());
  }
  if (a.size(0) != rows || a.size(1) != k) {
    why << name << ": expected shape (" << rows << ", " << k << "), got (" << a.size(0) << ", " << a.size(1) << ")";
    fail(why.str());
  }
  if (a.size(0) > 1 && a.stride(0) != a.size(1)) {
    why << name << ": expected a contiguous array (row stride " << a.size(1) << "), got row stride " << a.stride(0);
    fail(why.str());
  }
  if (a.device != device) {
    why << name << ": expected device cuda:" << device << " (that of x), got cuda:" << a.device;
    fail(why.str());
  }
}

// All argument checks, before any CUDA call (so they also run, and fail clearly, without a GPU).
Plan validate(const ArrayView& x, const ArrayView& y, int64_t k, Metric metric, bool exclude_self,
              const ArrayView& values, const ArrayView& indices, const ArrayView& workspace) {
  check_feature_pair(x, y);
  std::ostringstream why;
  if (y.device != x.device) {
    why << "y: expected device cuda:" << x.device << " (that of x), got cuda:" << y.device;
    fail(why.str());
  }
  if (metric != Metric::Euclidean && metric != Metric::SqEuclidean && metric != Metric::Cosine) {
    why << "metric: unknown code " << static_cast<int>(metric);
    fail(why.str());
  }
  const int64_t num_rows = x.size(0), num_cols = y.size(0);
  if (num_cols > INT32_MAX) {
    why << "y: at most " << INT32_MAX << " rows are supported, got " << num_cols;
    fail(why.str());
  }
  if (exclude_self && num_rows != num_cols) {
    why << "exclude_self: expected x and y to be the same array (as many rows), got " << num_rows << " and "
        << num_cols << " rows";
    fail(why.str());
  }
  const int64_t max_k = std::min<int64_t>(kTopkMaxK, num_cols - (exclude_self ? 1 : 0));
  if (k < 1 || k > max_k) {
    why << "k: expected 1 <= k <= " << max_k << " (min(" << kTopkMaxK << ", " << num_cols << " rows of y"
        << (exclude_self ? " - 1 for exclude_self" : "") << ")), got " << k;
    fail(why.str());
  }
  const DType value_dtype = x.dtype == DType::Float64 ? DType::Float64 : DType::Float32;
  check_output(values, "values", num_rows, k, value_dtype, x.device);
  check_output(indices, "indices", num_rows, k, DType::Int64, x.device);

  const Plan plan = plan_for(num_rows, num_cols, k);
  check_workspace(workspace, plan.workspace_bytes,
                  "topk_distance_workspace_bytes(" + std::to_string(num_rows) + ", " + std::to_string(num_cols) +
                      ", " + std::to_string(k) + ")",
                  x.device, "x", 16);
  if (plan.row_tiles > INT_MAX || ceil_div(num_rows, kMergeRowsPerBlock) > INT_MAX) {
    why << "x: " << num_rows << " rows need more blocks than one CUDA launch can cover; split x";
    fail(why.str());
  }
  return plan;
}

// Requests `bytes` of dynamic shared memory for `kernel` on the current device. Needed whenever static +
// dynamic exceed 48 KB (float32 from k = 101 on, float64 always); set on every launch: it costs a host call
// and keeps no state that could go stale across devices.
template <typename Kernel>
void allow_shared_bytes(Kernel kernel, int64_t bytes) {
  REIDFAST_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

template <typename InT, typename AccT>
void launch_topk(const ArrayView& x, const ArrayView& y, int64_t k, Metric metric, bool exclude_self,
                 const ArrayView& values, const ArrayView& indices, const ArrayView& workspace, const Plan& plan,
                 cudaStream_t stream) {
  using Entry = typename Ranked<AccT>::Entry;
  const int64_t x_rows = x.size(0), y_rows = y.size(0);
  Entry* const lists = workspace.ptr<Entry>();

  const int64_t scan_bytes = scan_shared_bytes<Entry>(k);
  const auto scan = topk_scan_kernel<InT, AccT>;
  allow_shared_bytes(scan, scan_bytes);
  const dim3 scan_grid(static_cast<unsigned>(plan.row_tiles), static_cast<unsigned>(plan.chunks));
  REIDFAST_LAUNCH(scan, scan_grid, kThreads, static_cast<size_t>(scan_bytes), stream)(
      x.ptr<const InT>(), y.ptr<const InT>(), x_rows, y_rows, x.size(1), x.stride(0), y.stride(0),
      static_cast<int>(k), static_cast<int>(plan.tiles_per_chunk), static_cast<int>(plan.col_tiles), metric,
      exclude_self, lists, values.ptr<AccT>(), indices.ptr<int64_t>());
  REIDFAST_CUDA_CHECK(cudaGetLastError());

  if (plan.chunks > 1) {
    const int64_t merge_bytes = merge_shared_bytes<Entry>(k);
    const auto merge = topk_merge_kernel<AccT>;
    allow_shared_bytes(merge, merge_bytes);
    const unsigned merge_blocks = static_cast<unsigned>(ceil_div(x_rows, kMergeRowsPerBlock));
    REIDFAST_LAUNCH(merge, merge_blocks, kThreads, static_cast<size_t>(merge_bytes), stream)(
        lists, x_rows, static_cast<int>(k), static_cast<int>(plan.chunks), values.ptr<AccT>(),
        indices.ptr<int64_t>());
    REIDFAST_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace

void topk_distance(const ArrayView& x, const ArrayView& y, int64_t k, Metric metric, bool exclude_self,
                   const ArrayView& values, const ArrayView& indices, const ArrayView& workspace,
                   std::uintptr_t stream) {
  const Plan plan = validate(x, y, k, metric, exclude_self, values, indices, workspace);
  if (x.size(0) == 0) return;  // no rows: nothing to launch (a 0-block grid is an error)

  // `stream` must belong to x.device (the Python layer passes torch.cuda.current_stream(x.device)).
  DeviceGuard device_guard(x.device);
  const cudaStream_t cuda_stream = reinterpret_cast<cudaStream_t>(stream);
  switch (x.dtype) {
    case DType::Float32:
      launch_topk<float, float>(x, y, k, metric, exclude_self, values, indices, workspace, plan, cuda_stream);
      break;
    case DType::Float64:
      launch_topk<double, double>(x, y, k, metric, exclude_self, values, indices, workspace, plan, cuda_stream);
      break;
    case DType::Float16:
      launch_topk<__half, float>(x, y, k, metric, exclude_self, values, indices, workspace, plan, cuda_stream);
      break;
    case DType::BFloat16:
      launch_topk<__nv_bfloat16, float>(x, y, k, metric, exclude_self, values, indices, workspace, plan,
                                        cuda_stream);
      break;
    default:
      fail(std::string("x: unsupported dtype ") + dtype_name(x.dtype));  // unreachable after validate()
  }
}

int64_t topk_distance_workspace_bytes(int64_t num_rows, int64_t num_cols, int64_t k) {
  std::ostringstream why;
  if (num_rows < 0 || num_cols < 0) {
    why << "topk_distance_workspace_bytes: expected non-negative sizes, got (" << num_rows << ", " << num_cols << ")";
    fail(why.str());
  }
  if (k < 1 || k > kTopkMaxK) {
    why << "k: expected 1 <= k <= " << kTopkMaxK << ", got " << k;
    fail(why.str());
  }
  return plan_for(num_rows, num_cols, k).workspace_bytes;
}

}  // namespace cuda
}  // namespace reidfast
