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
// Ranking: (value, column) entries, one unsigned comparison per candidate: see topk_lists.cuh.
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

#include <cstdint>
#include <string>

#include "cuda_check.h"
#include "device_math.cuh"
#include "host_utils.h"
#include "launch.cuh"
#include "tile64.cuh"
#include "topk_lists.cuh"
#include "topk_plan.h"

namespace reidfast {
namespace cuda {
namespace {

using namespace device;  // NOLINT: the shared arithmetic of device_math.cuh
using namespace tile64;  // NOLINT: the shared 64 x 64 tile product (tile64.cuh)
using namespace topk;    // NOLINT: ranked entries, lists and the plan (topk_lists.cuh, topk_plan.h)

constexpr int kWarps = kThreads / kWarp;          // 8
constexpr int kRowsPerWarp = kTileRows / kWarps;  // 8: warp w owns tile rows [8w, 8w + 8)

static_assert(kMergeRowsPerBlock == kWarps, "merge kernel: one warp per row");
static_assert(2 * kThreadsAlongCols == kWarp, "a warp spans two thread rows: a row's candidates sit in a half-warp");
static_assert(kRowsPerWarp == 2 * kMicroRows, "warp w owns thread rows 2w and 2w + 1");
static_assert(kPending >= kTileCols, "after a merge, one tile's candidates for a row fit the pending buffer");
static_assert(kPending >= kWarp, "the merge kernel offers groups of kWarp entries");

// Shared bytes of the scan kernel's dynamic part (see ScanLists).
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

// The scan block's running top-k state of its rows [row0, row0 + 64) in chunk `chunk` (see "Top-k
// maintenance"); the shared arrays live in the dynamic shared memory, laid out by scan_lists().
template <typename Entry>
struct ScanLists {
  Entry* pending;      // shared [kTileRows][kPending]
  Entry* thresholds;   // shared [kTileRows]: a copy of each list's last entry
  Entry* scratch;      // shared [k]: this warp's
  int* pending_count;  // shared [kTileRows]
  Entry* lists;        // global workspace, see list_of
  int64_t row0;
  int k, chunks, chunk;

  __device__ __forceinline__ Entry* list_of(int64_t row) const {
    return lists + (row * chunks + chunk) * static_cast<int64_t>(k);
  }
};

template <typename Entry>
__device__ __forceinline__ ScanLists<Entry> scan_lists(unsigned char* dynamic_shared, Entry* lists, int k,
                                                       int warp) {
  ScanLists<Entry> state;
  state.pending = reinterpret_cast<Entry*>(dynamic_shared);
  state.thresholds = state.pending + kTileRows * kPending;
  state.scratch = state.thresholds + kTileRows + warp * k;
  state.pending_count = reinterpret_cast<int*>(state.thresholds + kTileRows + kWarps * k);
  state.lists = lists;
  state.row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;
  state.k = k;
  state.chunks = static_cast<int>(gridDim.y);
  state.chunk = static_cast<int>(blockIdx.y);
  return state;
}

// Empty lists for this warp's rows (only this warp ever touches them).
template <typename Entry>
__device__ __forceinline__ void clear_lists(const ScanLists<Entry>& state, int64_t x_rows, int warp, int lane) {
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int local_row = warp * kRowsPerWarp + r;
    if (lane == 0) {
      state.thresholds[local_row] = sentinel<Entry>();
      state.pending_count[local_row] = 0;
    }
    if (state.row0 + local_row < x_rows) {
      Entry* const list = state.list_of(state.row0 + local_row);
      for (int i = lane; i < state.k; i += kWarp) list[i] = sentinel<Entry>();
    }
  }
  __syncwarp();
}

// Warp-collective: which of this lane's candidates beat `threshold` (pass), their half-warp ballots (masks),
// and how many of the half-warp's row pass.
template <typename Entry>
__device__ __forceinline__ int filter_candidates(const Entry (&candidates)[kMicroCols], const bool (&valid)[kMicroCols],
                                                 Entry threshold, unsigned half_mask, bool (&pass)[kMicroCols],
                                                 unsigned (&masks)[kMicroCols]) {
  int passing = 0;
#pragma unroll
  for (int j = 0; j < kMicroCols; ++j) {
    pass[j] = valid[j] && candidates[j] < threshold;
    masks[j] = __ballot_sync(kFullMask, pass[j]) & half_mask;
    passing += __popc(masks[j]);
  }
  return passing;
}

// Warp-collective: offers this lane's 4 candidates of tile row local_row (micro-row i of the thread) to the
// row's pending buffer, merging the pending buffers of the warp's two rows of micro-row i first where the
// candidates would overflow them.
template <typename Entry>
__device__ __forceinline__ void offer_candidates(const ScanLists<Entry>& state, int local_row, int i,
                                                 const Entry (&candidates)[kMicroCols], const bool (&valid)[kMicroCols],
                                                 int warp, int lane) {
  const unsigned half_mask = (lane < kThreadsAlongCols) ? 0x0000ffffu : 0xffff0000u;
  const unsigned lanes_below = (1u << lane) - 1u;
  bool pass[kMicroCols];
  unsigned masks[kMicroCols];
  int count = state.pending_count[local_row];
  int passing = filter_candidates(candidates, valid, state.thresholds[local_row], half_mask, pass, masks);

  const unsigned overflow = __ballot_sync(kFullMask, count + passing > kPending);
  if (overflow != 0) {  // warp-uniform
    for (int half = 0; half < 2; ++half) {
      if ((overflow >> (half * kThreadsAlongCols)) & 1u) {
        const int merge_row = (warp * 2 + half) * kMicroRows + i;
        merge_pending(state.list_of(state.row0 + merge_row), state.k, state.pending + merge_row * kPending,
                      state.pending_count[merge_row], state.scratch, &state.thresholds[merge_row], lane);
        if (lane == 0) state.pending_count[merge_row] = 0;
        __syncwarp();
      }
    }
    // Re-filter against the lowered threshold (the other half-warp's row is unchanged).
    count = state.pending_count[local_row];
    passing = filter_candidates(candidates, valid, state.thresholds[local_row], half_mask, pass, masks);
  }

  // Append (count + passing <= kPending now): ballot-prefix compaction within the half-warp.
  Entry* const row_pending = state.pending + local_row * kPending;
  int base = count;
#pragma unroll
  for (int j = 0; j < kMicroCols; ++j) {
    if (pass[j]) row_pending[base + __popc(masks[j] & lanes_below)] = candidates[j];
    base += __popc(masks[j]);
  }
  __syncwarp();  // every lane has read pending_count[local_row] before it changes
  if (threadIdx.x % kThreadsAlongCols == 0) state.pending_count[local_row] = count + passing;
  __syncwarp();
}

// Flushes the pending candidates of this warp's rows into their lists; with one chunk, writes the outputs.
template <typename AccT, typename Entry>
__device__ __forceinline__ void flush_lists(const ScanLists<Entry>& state, int64_t x_rows, AccT* __restrict__ values,
                                            int64_t* __restrict__ indices, int warp, int lane) {
  const int k = state.k;
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int local_row = warp * kRowsPerWarp + r;
    const int64_t row = state.row0 + local_row;
    if (row >= x_rows) break;  // warp-uniform; rows only increase with r
    Entry* const list = state.list_of(row);
    const int count = state.pending_count[local_row];
    if (count > 0) {
      merge_pending(list, k, state.pending + local_row * kPending, count, state.scratch, &state.thresholds[local_row],
                    lane);
    }
    if (state.chunks == 1) {
      for (int i = lane; i < k; i += kWarp) {
        const Entry entry = list[i];
        values[row * k + i] = Ranked<AccT>::value(entry);
        indices[row * k + i] = Ranked<AccT>::column(entry);
      }
    }
  }
}

// Block (blockIdx.x, blockIdx.y) = (row tile, chunk): the top k of rows [row0, row0 + 64) of x among the
// columns of tiles [chunk * tiles_per_chunk, ...) of y. Writes the sorted list of (row, chunk) to
// lists + (row * gridDim.y + chunk) * k, and with a single chunk also the outputs values/indices (N, k).
template <typename InT, typename AccT>
__global__ void __launch_bounds__(kThreads, kScanBlocksPerSM<AccT>)
    topk_scan_kernel(const InT* __restrict__ x, const InT* __restrict__ y, TileShape shape, int k,
                     int tiles_per_chunk, int col_tiles, Metric metric, bool exclude_self,
                     typename Ranked<AccT>::Entry* lists, AccT* __restrict__ values, int64_t* __restrict__ indices) {
  using Entry = typename Ranked<AccT>::Entry;
  __shared__ TileShared<AccT> shared;
  REIDFAST_DYNAMIC_SHARED(topk_shared);
  const int warp = threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  const ScanLists<Entry> state = scan_lists(topk_shared, lists, k, warp);
  const int64_t row0 = state.row0;
  const int first_tile = state.chunk * tiles_per_chunk;
  const int end_tile = min(first_tile + tiles_per_chunk, col_tiles);
  const int thread_row = threadIdx.x / kThreadsAlongCols;
  const int thread_col = threadIdx.x % kThreadsAlongCols;
  clear_lists(state, shape.x_rows, warp, lane);

  // Offer each tile's candidates, one micro-row at a time: the two half-warps handle two rows at once.
  const auto offer_tile = [&](int64_t col0, const AccT(&dots)[kMicroRows][kMicroCols],
                              const AccT(&col_factors)[kMicroCols]) {
#pragma unroll 1
    for (int i = 0; i < kMicroRows; ++i) {
      AccT row_dots[kMicroCols];
      select_micro_row(dots, i, row_dots);
      const int local_row = thread_row * kMicroRows + i;
      const int64_t row = row0 + local_row;
      const AccT row_factor_i = shared.x_factors[local_row];
      Entry candidates[kMicroCols];
      bool valid[kMicroCols];
#pragma unroll
      for (int j = 0; j < kMicroCols; ++j) {
        const int64_t col = col0 + thread_col * kMicroCols + j;
        valid[j] = row < shape.x_rows && col < shape.y_rows && !(exclude_self && col == row);
        candidates[j] = Ranked<AccT>::make(finish_distance(row_dots[j], row_factor_i, col_factors[j], metric), col);
      }
      offer_candidates(state, local_row, i, candidates, valid, warp, lane);
    }
  };
  for_each_tile(x, y, shape, row0, first_tile, end_tile, metric, shared, offer_tile);
  flush_lists(state, shape.x_rows, values, indices, warp, lane);
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
  const TileShape shape{x_rows, y_rows, x.size(1), x.stride(0), y.stride(0)};
  Entry* const lists = workspace.ptr<Entry>();

  const int64_t scan_bytes = scan_shared_bytes<Entry>(k);
  const auto scan = topk_scan_kernel<InT, AccT>;
  allow_shared_bytes(scan, scan_bytes);
  const dim3 scan_grid(static_cast<unsigned>(plan.row_tiles), static_cast<unsigned>(plan.chunks));
  REIDFAST_LAUNCH(scan, scan_grid, kThreads, static_cast<size_t>(scan_bytes), stream)(
      x.ptr<const InT>(), y.ptr<const InT>(), shape, static_cast<int>(k), static_cast<int>(plan.tiles_per_chunk),
      static_cast<int>(plan.col_tiles), metric, exclude_self, lists, values.ptr<AccT>(), indices.ptr<int64_t>());
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
  const Plan plan = topk::validate(x, y, k, metric, exclude_self, values, indices, workspace);
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

}  // namespace cuda
}  // namespace reidfast
