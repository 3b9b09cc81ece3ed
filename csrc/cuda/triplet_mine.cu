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
//   backward       batch_hard_backward (triplet_backward.cu): two O(B*D) passes over the mined pairs,
//                  deterministic (no atomics).
//   The mine kernel's device steps (stage, accumulate, sum the groups, fold, reduce over lanes, write) and the
//   tile configurations live in triplet_mine.cuh.
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
#include "triplet.h"

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
#include "triplet_common.cuh"
#include "triplet_mine.cuh"

namespace reidfast {
namespace cuda {
namespace {

using namespace device;   // NOLINT: the shared arithmetic of device_math.cuh
using namespace triplet;  // NOLINT: the mine kernel's tiles and steps (triplet_mine.cuh)

constexpr int64_t kBusyTiles = 256;     // choose_tile: tiles that keep an H100 (132 SMs) busy
constexpr int64_t kTargetBlocks = 512;  // plan: blocks to aim for when splitting the candidate axis
constexpr int kReduceThreads = 256;     // reduce kernel: one warp per anchor
constexpr int kFillThreads = 256;
constexpr int64_t kWorkspaceBytesPerEntry = 8 + 8 + 4 + 4;  // see "Chunks and workspace"

// ---- kernels --------------------------------------------------------------------------------------------

// One block: anchor tile row0 + [0, T) against the candidate tiles of its chunk (grid = row tiles x chunks).
template <typename Config, typename InT, typename AccT>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM<AccT>)
    batch_hard_mine_kernel(const InT* __restrict__ anchors, const InT* __restrict__ candidates,
                           const int64_t* __restrict__ anchor_labels, const int64_t* __restrict__ candidate_labels,
                           const int64_t* __restrict__ anchor_index, int64_t num_anchors, int num_candidates,
                           int64_t features, int64_t anchor_row_stride, int64_t candidate_row_stride,
                           int num_chunks, int tiles_per_chunk, int col_tiles, Metric metric,
                           MineTargets<AccT> targets) {
  constexpr int T = Config::kTile;
  __shared__ __align__(16) AccT slab_words[Config::kSlabWords];
  __shared__ AccT factors[2 * T];  // [0, T): anchors' row_factor, [T, 2T): the candidate tile's
  __shared__ int64_t tile_labels[T];
  AccT(*x_slab)[Config::kPitch] = reinterpret_cast<AccT(*)[Config::kPitch]>(slab_words);
  AccT(*y_slab)[Config::kPitch] = reinterpret_cast<AccT(*)[Config::kPitch]>(slab_words + Config::kSlabDepth * Config::kPitch);

  const MineLayout<Config> layout;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x / num_chunks) * T;
  const int chunk = static_cast<int>(blockIdx.x % num_chunks);
  const int first_tile = chunk * tiles_per_chunk;
  const int end_tile = min(first_tile + tiles_per_chunk, col_tiles);
  const int64_t anchor_row = row0 + layout.stage_row;  // the same staged anchor rows for every tile
  const SlabRows<InT> anchor_rows{anchors + anchor_row * anchor_row_stride, num_anchors - anchor_row,
                                  anchor_row_stride};

  HardestPairs<Config, AccT> pairs;
  start_pairs<Config>(anchor_labels, anchor_index, row0 + layout.epi_row0, num_anchors, num_candidates, pairs);
  for (int tile = first_tile; tile < end_tile; ++tile) {
    const int col0 = tile * T;
    const int tid = threadIdx.x;
    // Published before the first barrier of multiply_tiles; read only after the last one of this tile.
    if (tid < T) tile_labels[tid] = col0 + tid < num_candidates ? candidate_labels[col0 + tid] : 0;
    const int64_t candidate_row = col0 + layout.stage_row;
    const SlabRows<InT> candidate_rows{candidates + candidate_row * candidate_row_stride,
                                       num_candidates - candidate_row, candidate_row_stride};
    AccT norms[Config::kNormSlots];
    AccT dots[kMicro][kMicro];
    multiply_tiles<Config>(anchor_rows, candidate_rows, features, x_slab, y_slab, layout, norms, dots);
    AccT tile_dots[Config::kEpiRows][Config::kEpiCols];
    sum_groups<Config>(norms, dots, layout, metric, slab_words, factors, tile_dots);
    fold_tile<Config>(tile_dots, factors, tile_labels, col0, num_candidates, layout, metric, pairs);
    __syncthreads();  // the next tile rewrites tile_labels, factors and the slabs
  }
  reduce_over_lanes<Config>(pairs);
  if (threadIdx.x % Config::kThreadsPerRow == 0) {
    write_pairs<Config>(pairs, row0 + layout.epi_row0, num_anchors, num_chunks, chunk, targets);
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
      keep_largest(targets.partial_positive_value[entry], targets.partial_positive_index[entry], positive_value,
                   positive_column);
      keep_smallest(targets.partial_negative_value[entry], targets.partial_negative_index[entry], negative_value,
                    negative_column);
    }
  }
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    exchange_pairs(offset, positive_value, positive_column, negative_value, negative_column);
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

}  // namespace cuda
}  // namespace reidfast
