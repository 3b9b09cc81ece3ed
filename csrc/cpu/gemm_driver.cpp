// The parallel, cache-blocked walk of the fused CPU kernels (gemm_driver.h): which thread multiplies which
// A tile by which block of B panels, with what packed where. The arithmetic is in gemm_avx512.cpp /
// gemm_avx2.cpp, the consumers (distances, top-k, mining, rank counting) in gemm_kernels.cpp and
// gemm_rank_count.cpp.
//
// Blocking (the BLIS roles, with y's rows as the vector dimension and x's rows broadcast):
//   for each super-block of y rows (kPackedYBytes; one for most calls), packed into NR-wide panels by all
//   threads, then one barrier
//     each thread, for its own range of MR-row tiles of x, in passes of kPackedXBytes / threads:
//       pack the pass's tiles (its own buffer, no barrier)
//       for each block of y panels that stays in L2 (cache_blocking) in its column part, for each tile of
//       the pass (symmetric mining: only the columns from the tile's diagonal block on):
//         for each depth chunk (one unless D > 512), for each panel: the micro-kernel (the tile's depth
//         chunk stays in L1), and after the last chunk the epilogue on the MR x NR tile of dot products
// Column parts (plan_split): one unless there are fewer tiles than threads; then the threads of a tile
// each take a share of every super-block, with their own consumer state, merged at the end.
// Within a part, every row sees its columns in increasing order, which the top-k tie rule relies on (the
// mining's rule does not depend on the order, which lets the symmetric mining mirror its updates).
// Each thread owns a fixed range of tiles and a fixed share of every super-block's panels, so the only
// barriers are after packing each super-block of y (one for most calls) and before the finishing of split
// columns: on a machine shared with other work, a barrier waits for the slowest, possibly descheduled, thread
// (measured: with a barrier per L2 block, B = 256 / D = 2048 mining steps varied 2x under load).
// Memory: the packed blocks, the norms, and the per-row state of the consumer.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "gemm_driver.h"

namespace reidfast {
namespace cpu {
namespace gemm {
namespace {

// Packed y rows shared by the threads (a super-block) and the packed x tiles of one pass (all threads), in
// bytes; the L2 share comes from the running CPU's cache size (cache_blocking).
constexpr int64_t kPackedYBytes = int64_t{32} << 20;
constexpr int64_t kPackedXBytes = int64_t{16} << 20;
constexpr int64_t kMinPartColumns = 256;

int64_t gcd(int64_t a, int64_t b) { return b == 0 ? a : gcd(b, a % b); }

// First tile of each of `groups` row groups (and tiles as the last bound): equal numbers of tiles, or for
// the symmetric product equal areas of the upper triangle (tile t covers columns from its diagonal block on).
std::vector<int64_t> tile_bounds(int64_t tiles, int64_t groups, int64_t cols, int mr, int64_t diagonal_block,
                                 bool symmetric) {
  std::vector<int64_t> bounds(static_cast<size_t>(groups + 1), tiles);
  for (int64_t g = 0; g < groups; ++g) bounds[g] = tiles * g / groups;
  if (!symmetric) return bounds;
  std::fill(bounds.begin() + 1, bounds.end(), tiles);
  const auto work = [&](int64_t tile) { return cols - tile * mr / diagonal_block * diagonal_block; };
  int64_t total = 0;
  for (int64_t t = 0; t < tiles; ++t) total += work(t);
  int64_t done = 0, group = 1;
  for (int64_t t = 0; t < tiles && group < groups; ++t) {
    while (group < groups && done * groups >= total * group) bounds[group++] = t;
    done += work(t);
  }
  return bounds;
}

// The sizes of one call's walk, fixed before the threads start.
struct WalkPlan {
  int mr = 0, nr = 0, threads = 1, parts = 1;
  int64_t rows = 0, cols = 0, depth = 0;
  bool cosine = false, symmetric = false;
  // With the columns split, the threads of a row group all pack its tiles: x's norms then per thread, so
  // that no two threads write the same element.
  int64_t x_norm_copies = 1;
  bool reuse_norms = false;  // x is y and y is packed in one piece: x's norms are y's (after the barrier)
  int64_t super_cols = 0, block_cols = 0, diagonal_block = 0, pass_tiles = 0;
  std::vector<int64_t> bounds;  // first tile of each row group, then the number of tiles
  int64_t x_floats = 0, scratch_floats = 0, partial_floats = 0;

  int64_t per_thread_floats() const {
    return Workspace::aligned_size(x_floats) + Workspace::aligned_size(scratch_floats) +
           Workspace::aligned_size(partial_floats);
  }
};

WalkPlan plan_walk(const IsaKernels& isa, const Rows& x, const Rows& y, bool same_input, Metric metric,
                   const WorkSplit& split, const CacheBlocking& blocking) {
  WalkPlan plan;
  plan.mr = isa.mr;
  plan.nr = isa.nr;
  plan.threads = split.threads;
  plan.parts = split.parts;
  plan.rows = x.count;
  plan.cols = y.count;
  plan.depth = x.depth;
  plan.cosine = metric == Metric::Cosine;
  plan.symmetric = split.symmetric;
  plan.x_norm_copies = split.parts > 1 ? split.threads : 1;
  const auto columns_in = [&](int64_t bytes) {
    return std::min(round_up(plan.cols, plan.nr), std::max<int64_t>(plan.nr, bytes / (plan.depth * 4) / plan.nr * plan.nr));
  };
  plan.super_cols = columns_in(kPackedYBytes);
  // x a prefix of y (same_rows: row i of x is row i of y), never longer: y has no norms for x's extra rows.
  plan.reuse_norms = same_input && plan.rows <= plan.cols && plan.x_norm_copies == 1 && plan.super_cols >= plan.cols;
  plan.block_cols = std::min(plan.super_cols, columns_in(blocking.l2_block_bytes));
  plan.diagonal_block = int64_t{plan.mr} / gcd(plan.mr, plan.nr) * plan.nr;  // a multiple of both MR and NR
  const int64_t tiles = (plan.rows + plan.mr - 1) / plan.mr;
  plan.bounds = tile_bounds(tiles, split.row_groups, plan.cols, plan.mr, plan.diagonal_block, plan.symmetric);
  int64_t most_tiles = 0;
  for (int64_t g = 0; g < split.row_groups; ++g) most_tiles = std::max(most_tiles, plan.bounds[g + 1] - plan.bounds[g]);
  // No bigger than a thread's tiles: the workspace then stays small enough to be kept between calls.
  plan.pass_tiles = std::max<int64_t>(
      1, std::min(most_tiles, kPackedXBytes / plan.threads / (int64_t{4} * plan.mr * plan.depth)));
  plan.x_floats = plan.pass_tiles * plan.mr * plan.depth;
  plan.scratch_floats = x.dtype == DType::Float32 ? 0 : std::max(plan.mr, plan.nr) * plan.depth;
  plan.partial_floats = plan.block_cols * plan.mr;
  return plan;
}

// Norms by global row / column; y's padded to whole panels (zeros; lengths ones) for the vector loads.
struct Norms {
  std::vector<float> x_sq, x_lengths, y_sq, y_lengths;

  explicit Norms(const WalkPlan& plan)
      : x_sq(static_cast<size_t>(plan.rows * plan.x_norm_copies)),
        x_lengths(plan.cosine ? x_sq.size() : 0),
        y_sq(static_cast<size_t>(round_up(plan.cols, plan.nr)), 0.0f),
        y_lengths(plan.cosine ? y_sq.size() : 0, 1.0f) {}
};

// One thread's place in the walk: its tiles, its column part, its buffers.
struct ThreadWalk {
  const WalkPlan& plan;
  const IsaKernels& isa;
  const Rows& x;
  const Rows& y;
  float* packed_y;
  int me, part, slot;
  int64_t first_tile, end_tile;
  float *own_x, *own_scratch, *own_partial, *own_x_sq_norms, *own_x_lengths;
  Strip base;

  // The super-block of y from column super0 (`width` columns), packed by all threads.
  void pack_super_block(int64_t super0, int64_t width, Norms& norms) const {
    const int64_t panels = (width + plan.nr - 1) / plan.nr;
#pragma omp for schedule(static)
    for (int64_t panel = 0; panel < panels; ++panel) {
      const int64_t col0 = super0 + panel * plan.nr;
      pack(isa, y, col0, std::min<int64_t>(plan.nr, width - panel * plan.nr), plan.nr,
           packed_y + panel * plan.nr * plan.depth, own_scratch, norms.y_sq.data() + col0,
           plan.cosine ? norms.y_lengths.data() + col0 : nullptr);
    }  // implicit barrier: the super-block and its norms are complete
  }

  void pack_pass(int64_t pass0, int64_t pass_end) const {
    for (int64_t tile = pass0; tile < pass_end; ++tile) {
      const int64_t row0 = tile * plan.mr;
      pack(isa, x, row0, std::min<int64_t>(plan.mr, plan.rows - row0), plan.mr, own_x + (tile - pass0) * plan.mr * plan.depth,
           own_scratch, plan.reuse_norms ? nullptr : own_x_sq_norms + row0,
           plan.cosine ? own_x_lengths + row0 : nullptr);
    }
  }

  // The pass's tiles against this part's share [share0, share_end) of the super-block from super0.
  void run_pass(int64_t super0, int64_t share0, int64_t share_end, int64_t pass0, int64_t pass_end,
                const ProcessStrip& process) const {
    for (int64_t block0 = share0; block0 < share_end; block0 += plan.block_cols) {
      const int64_t block_end = std::min(share_end, block0 + plan.block_cols);
      for (int64_t tile = pass0; tile < pass_end; ++tile) {
        Strip strip = base;
        strip.a = own_x + (tile - pass0) * plan.mr * plan.depth;
        strip.row0 = tile * plan.mr;
        strip.rows = std::min<int64_t>(plan.mr, plan.rows - strip.row0);
        int64_t start = block0;  // in the super-block
        if (plan.symmetric) {
          const int64_t diagonal = strip.row0 / plan.diagonal_block * plan.diagonal_block;  // global, panel-aligned
          start = std::max(start, diagonal - super0);
          strip.mirror_from = diagonal + plan.diagonal_block;
        }
        if (start >= block_end) continue;
        strip.b = packed_y + start * plan.depth;
        strip.col0 = super0 + start;
        strip.cols = block_end - start;
        strip.partial = own_partial;
        process(strip, slot);
      }
    }
  }

  void run(Norms& norms, const ProcessStrip& process, const FinishRows& finish) const {
    for (int64_t super0 = 0; super0 < plan.cols; super0 += plan.super_cols) {
      const int64_t width = std::min(plan.super_cols, plan.cols - super0);
      const int64_t panels = (width + plan.nr - 1) / plan.nr;
      // This part's share of the super-block: whole panels, so blocks start on panel borders.
      const int64_t share0 = panels * part / plan.parts * plan.nr;
      const int64_t share_end = std::min(width, panels * (part + 1) / plan.parts * plan.nr);
      if (super0 > 0) {
#pragma omp barrier
      }  // every thread is done with the previous super-block before it is overwritten
      pack_super_block(super0, width, norms);
      for (int64_t pass0 = first_tile; pass0 < end_tile; pass0 += plan.pass_tiles) {
        const int64_t pass_end = std::min(end_tile, pass0 + plan.pass_tiles);
        pack_pass(pass0, pass_end);
        run_pass(super0, share0, share_end, pass0, pass_end, process);
      }
    }
    if (plan.parts > 1 || plan.symmetric) {
#pragma omp barrier
      // every part of every row is complete; the threads share the finishing by rows
      finish(plan.rows * me / plan.threads, plan.rows * (me + 1) / plan.threads);
    } else {
      finish(std::min(plan.rows, first_tile * plan.mr), std::min(plan.rows, end_tile * plan.mr));
    }
  }
};

ThreadWalk thread_walk(const WalkPlan& plan, const IsaKernels& isa, const Rows& x, const Rows& y, float* packed_y,
                       float* per_thread_buffers, Norms& norms, const Strip& base, int me) {
  const int part = me % plan.parts;
  const int64_t group = me / plan.parts;
  float* const own_x = per_thread_buffers + me * plan.per_thread_floats();
  float* const own_scratch = own_x + Workspace::aligned_size(plan.x_floats);
  float* const own_partial = own_scratch + Workspace::aligned_size(plan.scratch_floats);
  const int64_t norm_offset = plan.x_norm_copies > 1 ? me * plan.rows : 0;
  float* const own_x_sq_norms = norms.x_sq.data() + norm_offset;
  float* const own_x_lengths = plan.cosine ? norms.x_lengths.data() + norm_offset : nullptr;
  Strip own_base = base;
  own_base.x_sq_norms = plan.reuse_norms ? norms.y_sq.data() : own_x_sq_norms;
  own_base.x_lengths = plan.reuse_norms && plan.cosine ? norms.y_lengths.data() : own_x_lengths;
  return ThreadWalk{plan, isa, x, y, packed_y, me, part, plan.symmetric ? me : part, plan.bounds[group],
                    plan.bounds[group + 1], own_x, own_scratch, own_partial, own_x_sq_norms, own_x_lengths, own_base};
}

}  // namespace

WorkSplit plan_split(const IsaKernels& isa, int64_t rows, int64_t cols) {
  WorkSplit split;
  const int64_t tiles = std::max<int64_t>(1, (rows + isa.mr - 1) / isa.mr);
  const int available = max_threads();
  if (tiles >= available) {
    split.threads = available;
    split.row_groups = available;
    return split;
  }
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(available / tiles, cols / kMinPartColumns));
  split.parts = static_cast<int>(parts);
  split.row_groups = tiles;
  split.threads = static_cast<int>(tiles * parts);
  return split;
}

void for_each_strip(const IsaKernels& isa, const Rows& x, const Rows& y, bool same_input, Metric metric,
                    const WorkSplit& split, const ProcessStrip& process, const FinishRows& finish) {
  if (x.count == 0 || y.count == 0) {
    finish(0, x.count);
    return;
  }
  const CacheBlocking blocking = cache_blocking(isa);
  const WalkPlan plan = plan_walk(isa, x, y, same_input, metric, split, blocking);
  Norms norms(plan);
  Workspace workspace(Workspace::aligned_size(plan.super_cols * plan.depth) + plan.threads * plan.per_thread_floats());
  float* const packed_y = workspace.take(plan.super_cols * plan.depth);
  float* const per_thread_buffers = workspace.take(plan.threads * plan.per_thread_floats());

  Strip base;
  base.depth = plan.depth;
  base.depth_chunk = blocking.depth_chunk;
  base.y_sq_norms = norms.y_sq.data();
  base.y_lengths = plan.cosine ? norms.y_lengths.data() : nullptr;
  base.metric = metric;
  base.self_diagonal = same_input;

  bool short_team = false;
#pragma omp parallel num_threads(plan.threads)
  if (team_size() != plan.threads) {
    // Fewer threads than planned (nested parallelism, OMP_DYNAMIC, a thread limit) would leave tiles
    // unassigned: the whole team skips (the condition is the same for every thread, so no barrier is
    // mismatched) and the call reruns on one thread below.
    if (thread_index() == 0) short_team = true;
  } else {
    thread_walk(plan, isa, x, y, packed_y, per_thread_buffers, norms, base, thread_index()).run(norms, process, finish);
  }
  if (short_team) {  // nothing was written: one thread, one part (the callers' other parts stay empty)
    for_each_strip(isa, x, y, same_input, metric, WorkSplit{}, process, finish);
  }
}

}  // namespace gemm
}  // namespace cpu
}  // namespace reidfast
