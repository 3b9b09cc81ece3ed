// The driver of the fused CPU distance kernels (gemm_kernels.h): run-time choice of the instruction set,
// packing (with the float16/bfloat16 -> float32 conversion), cache blocking and OpenMP. The arithmetic is
// in gemm_avx512.cpp / gemm_avx2.cpp.
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
// each take a share of every super-block, with their own top-k / mining state, merged at the end.
// Within a part, every row sees its columns in increasing order, which the top-k tie rule relies on (the
// mining's rule does not depend on the order, which lets the symmetric mining mirror its updates).
// Memory: the packed blocks, the norms, and the per-row state of the consumer (top-k reservoir:
// O(N * k * parts)).
#include "gemm_kernels.h"

#include "gemm_internal.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <string>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>  // sysconf: the cache sizes
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace reidfast {
namespace cpu {
namespace {

using gemm::IsaKernels;
using gemm::Strip;

// Packed y rows shared by the threads (a super-block) and the packed x tiles of one pass (all threads), in
// bytes; the L2 share comes from the running CPU's cache size (cache_blocking).
constexpr int64_t kPackedYBytes = int64_t{32} << 20;
constexpr int64_t kPackedXBytes = int64_t{16} << 20;

// The part of the packed y rows that stays in each core's L2 while a thread's tiles go by (bytes), and the
// depth chunk whose A tile stays in L1 while the B panels stream through it (steps).
struct CacheBlocking {
  int64_t l2_block_bytes;
  int64_t depth_chunk;
};

// The L2 cache size in bytes from the OS (glibc's sysconf on Linux), else `fallback`.
int64_t l2_cache_bytes(int64_t fallback) {
#if defined(_SC_LEVEL2_CACHE_SIZE)
  const long bytes = sysconf(_SC_LEVEL2_CACHE_SIZE);
  if (bytes >= 65536) return static_cast<int64_t>(bytes);
#endif
  return fallback;
}

// The y block: the whole L2 up to 512 KiB, and 512-step depth chunks (an A tile chunk of 12 KiB for AVX2,
// 16 KiB for AVX-512). Tuned on a 2-core Zen 5 (1 MiB L2: 384-768 KiB blocks measured alike); on a Zen 3 (32 KiB
// L1d, 512 KiB L2) 128 KiB - 1 MiB blocks and 256 - 1024-step chunks measured within 4% for the B = 256,
// D = 2048 and B = 4096, D = 256 minings, and half the L2 with 448-step chunks was no faster for 2048 x 2048 x
// 2048 distances (within the ~5% noise of a loaded machine). A CPU with a smaller L2 gets its L2 size.
CacheBlocking cache_blocking(const IsaKernels&) {
  static const int64_t l2 = l2_cache_bytes(int64_t{512} << 10);
  return CacheBlocking{std::min<int64_t>(l2, int64_t{512} << 10), 512};
}

bool cpu_has_avx512() {
#if REIDFAST_X86_SIMD
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool cpu_has_avx2() {
#if REIDFAST_X86_SIMD
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

const IsaKernels* usable_avx512() {
  static const IsaKernels* kernels = cpu_has_avx512() ? gemm::avx512_kernels() : nullptr;
  return kernels;
}

const IsaKernels* usable_avx2() {
  static const IsaKernels* kernels = cpu_has_avx2() ? gemm::avx2_kernels() : nullptr;
  return kernels;
}

const IsaKernels& select_kernels(GemmKernel kernel) {
  const IsaKernels* chosen = nullptr;
  switch (kernel) {
    case GemmKernel::Auto: chosen = usable_avx512() ? usable_avx512() : usable_avx2(); break;
    case GemmKernel::Avx512: chosen = usable_avx512(); break;
    case GemmKernel::Avx2: chosen = usable_avx2(); break;
  }
  if (chosen == nullptr) {
    const char* name = kernel == GemmKernel::Avx512 ? "avx512" : kernel == GemmKernel::Avx2 ? "avx2" : "any SIMD";
    fail(std::string("kernel: ") + name +
         " micro-kernel is not available (not compiled for this platform, or the CPU lacks the instructions); "
         "use the BLAS path instead");
  }
  return *chosen;
}

int max_threads() {
#ifdef _OPENMP
  return std::max(1, omp_get_max_threads());
#else
  return 1;
#endif
}

int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

// 64-byte aligned float storage (panel loads then never split a cache line).
struct AlignedFloats {
  struct Free {
    void operator()(float* p) const { ::operator delete(p, std::align_val_t{64}); }
  };
  std::unique_ptr<float[], Free> data;
  int64_t capacity = 0;

  AlignedFloats() = default;
  explicit AlignedFloats(int64_t count) : capacity(count) {
    const size_t bytes = static_cast<size_t>(round_up(std::max<int64_t>(count, 1) * 4, 64));
    data.reset(static_cast<float*>(::operator new(bytes, std::align_val_t{64})));  // throws std::bad_alloc
  }
  float* get() const { return data.get(); }
};

// The packing buffers of one call, carved from one allocation. Up to kCachedWorkspaceBytes it is kept per
// calling thread between calls, so the small calls of a training loop pay no allocation and no page faults
// (measured: a fresh 2.5 MiB per call at B = 256, D = 2048 put page faults at ~6% of a fwd+bwd step).
constexpr int64_t kCachedWorkspaceBytes = int64_t{16} << 20;

class Workspace {
 public:
  explicit Workspace(int64_t floats) {
    if (floats * 4 <= kCachedWorkspaceBytes) {
      thread_local AlignedFloats cached;
      if (cached.capacity < floats) cached = AlignedFloats(floats);
      data_ = cached.get();
    } else {
      own_ = AlignedFloats(floats);
      data_ = own_.get();
    }
  }

  // The next `floats` floats, 64-byte aligned (callers size the workspace with aligned_size).
  float* take(int64_t floats) {
    float* part = data_ + used_;
    used_ += aligned_size(floats);
    return part;
  }

  static int64_t aligned_size(int64_t floats) { return round_up(floats, 16); }

 private:
  AlignedFloats own_;
  float* data_ = nullptr;
  int64_t used_ = 0;
};

float half_to_float(uint16_t half) {
  const uint32_t sign = static_cast<uint32_t>(half & 0x8000u) << 16;
  uint32_t exponent = (half >> 10) & 0x1fu, mantissa = half & 0x3ffu, bits;
  if (exponent == 0x1fu) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf, NaN
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    uint32_t shift = 0;
    while (!(mantissa & 0x400u)) {
      mantissa <<= 1;
      ++shift;
    }
    bits = sign | ((113u - shift) << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

float bfloat16_to_float(uint16_t bfloat) {
  const uint32_t bits = static_cast<uint32_t>(bfloat) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

// The rows of an input matrix in any of the accepted float dtypes.
struct Rows {
  const char* data;
  DType dtype;
  int64_t count, depth, stride_bytes;

  Rows(const ArrayView& view)
      : data(static_cast<const char*>(view.data)), dtype(view.dtype), count(view.size(0)), depth(view.size(1)),
        stride_bytes(view.stride(0) * (view.dtype == DType::Float32 ? 4 : 2)) {}

  // Row i as float32: the row itself, or converted into scratch (depth floats).
  const float* row(int64_t i, float* scratch) const {
    const char* source = data + i * stride_bytes;
    if (dtype == DType::Float32) return reinterpret_cast<const float*>(source);
    const uint16_t* halves = reinterpret_cast<const uint16_t*>(source);
    if (dtype == DType::Float16) {
      for (int64_t p = 0; p < depth; ++p) scratch[p] = half_to_float(halves[p]);
    } else {
      for (int64_t p = 0; p < depth; ++p) scratch[p] = bfloat16_to_float(halves[p]);
    }
    return scratch;
  }
};

// Rows [first, first + count) into `width`-interleaved panels (gemm_internal.h), zero-padding the last, and
// their squared norms (and, for cosine, lengths max(|v|, eps)) into sq_norms[0, count) / lengths[0, count)
// unless sq_norms is null.
// scratch: width * depth floats for the float16/bfloat16 -> float32 conversion.
void pack(const IsaKernels& isa, const Rows& rows, int64_t first, int64_t count, int width, float* packed,
          float* scratch, float* sq_norms, float* lengths) {
  const float* sources[32];  // width <= 32: NR and MR (gemm_isa.inc)
  for (int64_t panel = 0; panel * width < count; ++panel) {
    const int lanes = static_cast<int>(std::min<int64_t>(width, count - panel * width));
    for (int lane = 0; lane < lanes; ++lane) {
      const int64_t i = panel * width + lane;
      sources[lane] = rows.row(first + i, scratch + lane * rows.depth);
      if (!sq_norms) continue;
      sq_norms[i] = isa.sq_norm(sources[lane], rows.depth);
      if (lengths) lengths[i] = std::max(std::sqrt(sq_norms[i]), static_cast<float>(kCosineEps));
    }
    isa.pack_panel(sources, lanes, width, rows.depth, packed + panel * rows.depth * width);
  }
}

void check_features(const ArrayView& view, const char* name) {
  check_matrix(view, name, /*want_cuda=*/false);
  check(view.dtype == DType::Float32 || view.dtype == DType::Float16 || view.dtype == DType::BFloat16,
        std::string(name) + ": expected float32, float16 or bfloat16, got " + dtype_name(view.dtype));
  check(view.size(0) >= 0 && view.size(1) >= 1, std::string(name) + ": expected at least one feature");
}

void check_pair(const ArrayView& x, const ArrayView& y) {
  check_features(x, "x");
  check_features(y, "y");
  check(x.size(1) == y.size(1), "y: expected as many features as x");
  check(x.dtype == y.dtype, "y: expected the dtype of x");
}

void check_output(const ArrayView& view, const char* name, int64_t rows, int64_t cols, DType dtype) {
  check(view.ndim() == 2 && view.size(0) == rows && view.size(1) == cols && view.dtype == dtype && !view.on_cuda() &&
            (cols <= 1 || view.stride(1) == 1),
        std::string(name) + ": expected a host (" + std::to_string(rows) + ", " + std::to_string(cols) + ") " +
            dtype_name(dtype) + " array with unit inner stride");
}

// How the threads share the work: a grid of row groups (ranges of MR-row tiles) by column parts (each part
// a share of every super-block's panels). Many rows: one part, the rows split as before. Fewer tiles than
// threads (a few queries against a large gallery): each tile's columns split in up to threads / tiles parts,
// none below kMinPartColumns, so the otherwise idle threads share the columns.
struct WorkSplit {
  int threads = 1;
  int64_t row_groups = 1;
  int parts = 1;  // column parts; part p of thread t is t % parts
  // Symmetric mining (one part only): a tile skips the column blocks of size lcm(MR, NR) left of its own, its
  // mine epilogue mirrors the rest (MineEpilogue), the threads' row ranges balance the triangle, each thread
  // keeps its own state for all rows (state slot = thread), and the finishing waits for every thread.
  bool symmetric = false;
};

constexpr int64_t kMinPartColumns = 256;

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

// Runs `process(strip, slot)` for every (A tile, block of y rows) pair, in the loop order described at the
// top, then `finish(first_row, end_row)` once per thread for a range of rows (after a barrier when the
// columns are split or the product symmetric, so that every part of those rows is complete). Each thread owns
// a fixed range of tiles and a fixed share of every super-block's panels, so the only barriers are after
// packing each super-block of y (one for most calls) and that one: on a machine shared with other work, a
// barrier waits for the slowest, possibly descheduled, thread (measured: with a barrier per L2 block,
// B = 256 / D = 2048 mining steps varied 2x under load). Within one part, every row sees its columns in
// increasing order.
template <class Process, class Finish>
void for_each_strip(const IsaKernels& isa, const Rows& x, const Rows& y, bool same_input, Metric metric,
                    const WorkSplit& split, const Process& process, const Finish& finish) {
  const int64_t rows = x.count, cols = y.count, depth = x.depth;
  if (rows == 0 || cols == 0) {
    finish(0, rows);
    return;
  }
  const int mr = isa.mr, nr = isa.nr;
  const int64_t tiles_total = (rows + mr - 1) / mr;
  const int threads = split.threads, parts = split.parts;
  const int64_t row_groups = split.row_groups;
  const bool cosine = metric == Metric::Cosine;

  // Norms by global row / column; y's padded to whole panels (zeros; lengths ones) for the vector loads.
  // With the columns split, the threads of a row group all pack its tiles: x's norms then per thread, so
  // that no two threads write the same element.
  const int64_t x_norm_copies = parts > 1 ? threads : 1;
  std::vector<float> x_sq_norms(static_cast<size_t>(rows * x_norm_copies));
  std::vector<float> x_lengths(cosine ? x_sq_norms.size() : 0);
  std::vector<float> y_sq_norms(static_cast<size_t>(round_up(cols, nr)), 0.0f);
  std::vector<float> y_lengths(cosine ? y_sq_norms.size() : 0, 1.0f);

  const auto columns_in = [&](int64_t bytes) {
    return std::min(round_up(cols, nr), std::max<int64_t>(nr, bytes / (depth * 4) / nr * nr));
  };
  const CacheBlocking blocking = cache_blocking(isa);
  const int64_t super_cols = columns_in(kPackedYBytes);
  // x is y and y is packed in one piece: x's norms are y's (complete after the packing's barrier).
  const bool reuse_norms = same_input && x_norm_copies == 1 && super_cols >= cols;
  const int64_t block_cols = std::min(super_cols, columns_in(blocking.l2_block_bytes));
  const bool symmetric = split.symmetric;
  const int64_t diagonal_block = int64_t{mr} / gcd(mr, nr) * nr;  // a multiple of both MR and NR
  const std::vector<int64_t> bounds = tile_bounds(tiles_total, row_groups, cols, mr, diagonal_block, symmetric);
  int64_t most_tiles = 0;
  for (int64_t g = 0; g < row_groups; ++g) most_tiles = std::max(most_tiles, bounds[g + 1] - bounds[g]);
  // No bigger than a thread's tiles: the workspace then stays small enough to be kept between calls.
  const int64_t pass_tiles = std::max<int64_t>(
      1, std::min(most_tiles, kPackedXBytes / threads / (int64_t{4} * mr * depth)));
  const int64_t x_floats = pass_tiles * mr * depth;
  const int64_t scratch_floats = x.dtype == DType::Float32 ? 0 : std::max(mr, nr) * depth;
  const int64_t partial_floats = block_cols * mr;
  const int64_t per_thread = Workspace::aligned_size(x_floats) + Workspace::aligned_size(scratch_floats) +
                             Workspace::aligned_size(partial_floats);
  Workspace workspace(Workspace::aligned_size(super_cols * depth) + threads * per_thread);
  float* const packed_y = workspace.take(super_cols * depth);
  float* const per_thread_buffers = workspace.take(threads * per_thread);

  Strip base;
  base.depth = depth;
  base.depth_chunk = blocking.depth_chunk;
  base.y_sq_norms = y_sq_norms.data();
  base.y_lengths = cosine ? y_lengths.data() : nullptr;
  base.metric = metric;
  base.self_diagonal = same_input;

  bool short_team = false;
#pragma omp parallel num_threads(threads)
  if (team_size() != threads) {
    // Fewer threads than planned (nested parallelism, OMP_DYNAMIC, a thread limit) would leave tiles
    // unassigned: the whole team skips (the condition is the same for every thread, so no barrier is
    // mismatched) and the call reruns on one thread below.
    if (thread_index() == 0) short_team = true;
  } else {
    const int me = thread_index();
    const int part = me % parts;
    const int64_t group = me / parts;
    const int64_t first_tile = bounds[group], end_tile = bounds[group + 1];
    const int slot = symmetric ? me : part;
    float* const own_x = per_thread_buffers + me * per_thread;
    float* const own_scratch = own_x + Workspace::aligned_size(x_floats);
    float* const own_partial = own_scratch + Workspace::aligned_size(scratch_floats);
    float* const own_x_sq_norms = x_sq_norms.data() + (x_norm_copies > 1 ? me * rows : 0);
    float* const own_x_lengths = cosine ? x_lengths.data() + (x_norm_copies > 1 ? me * rows : 0) : nullptr;
    Strip own_base = base;
    own_base.x_sq_norms = reuse_norms ? y_sq_norms.data() : own_x_sq_norms;
    own_base.x_lengths = reuse_norms && cosine ? y_lengths.data() : own_x_lengths;
    for (int64_t super0 = 0; super0 < cols; super0 += super_cols) {
      const int64_t width = std::min(super_cols, cols - super0);
      const int64_t panels = (width + nr - 1) / nr;
      // This part's share of the super-block: whole panels, so blocks start on panel borders.
      const int64_t share0 = panels * part / parts * nr, share_end = std::min(width, panels * (part + 1) / parts * nr);
      if (super0 > 0) {
#pragma omp barrier
      }  // every thread is done with the previous super-block before it is overwritten
#pragma omp for schedule(static)
      for (int64_t panel = 0; panel < panels; ++panel) {
        const int64_t col0 = super0 + panel * nr;
        pack(isa, y, col0, std::min<int64_t>(nr, width - panel * nr), nr, packed_y + panel * nr * depth, own_scratch,
             y_sq_norms.data() + col0, cosine ? y_lengths.data() + col0 : nullptr);
      }  // implicit barrier: the super-block and its norms are complete
      for (int64_t pass0 = first_tile; pass0 < end_tile; pass0 += pass_tiles) {
        const int64_t pass_end = std::min(end_tile, pass0 + pass_tiles);
        for (int64_t tile = pass0; tile < pass_end; ++tile) {
          const int64_t row0 = tile * mr;
          pack(isa, x, row0, std::min<int64_t>(mr, rows - row0), mr, own_x + (tile - pass0) * mr * depth, own_scratch,
               reuse_norms ? nullptr : own_x_sq_norms + row0, cosine ? own_x_lengths + row0 : nullptr);
        }
        for (int64_t block0 = share0; block0 < share_end; block0 += block_cols) {
          const int64_t block_end = std::min(share_end, block0 + block_cols);
          for (int64_t tile = pass0; tile < pass_end; ++tile) {
            Strip strip = own_base;
            strip.a = own_x + (tile - pass0) * mr * depth;
            strip.row0 = tile * mr;
            strip.rows = std::min<int64_t>(mr, rows - strip.row0);
            int64_t start = block0;  // in the super-block
            if (symmetric) {
              const int64_t diagonal = strip.row0 / diagonal_block * diagonal_block;  // global, panel-aligned
              start = std::max(start, diagonal - super0);
              strip.mirror_from = diagonal + diagonal_block;
            }
            if (start >= block_end) continue;
            strip.b = packed_y + start * depth;
            strip.col0 = super0 + start;
            strip.cols = block_end - start;
            strip.partial = own_partial;
            process(strip, slot);
          }
        }
      }
    }
    if (parts > 1 || symmetric) {
#pragma omp barrier
      // every part of every row is complete; the threads share the finishing by rows
      finish(rows * me / threads, rows * (me + 1) / threads);
    } else {
      finish(std::min(rows, first_tile * mr), std::min(rows, end_tile * mr));
    }
  }
  if (short_team) {  // nothing was written: one thread, one part (the callers' other parts stay empty)
    for_each_strip(isa, x, y, same_input, metric, WorkSplit{}, process, finish);
  }
}

}  // namespace

std::vector<std::string> supported_gemm_kernels() {
  std::vector<std::string> names;
  if (usable_avx512()) names.emplace_back("avx512");
  if (usable_avx2()) names.emplace_back("avx2");
  return names;
}

void fused_pairwise_distance(const ArrayView& x, const ArrayView& y, Metric metric, bool same_input,
                             const ArrayView& out, GemmKernel kernel) {
  check_pair(x, y);
  check_output(out, "out", x.size(0), y.size(0), DType::Float32);
  const IsaKernels& isa = select_kernels(kernel);
  gemm::DistanceOut target{out.ptr<float>(), out.stride(0)};
  for_each_strip(
      isa, Rows(x), Rows(y), same_input, metric, plan_split(isa, x.size(0), y.size(0)),
      [&](const Strip& strip, int) { isa.distance_tile(strip, target); }, [](int64_t, int64_t) {});
}

void fused_topk_distance(const ArrayView& x, const ArrayView& y, Metric metric, bool same_input,
                         bool exclude_self, const ArrayView& values, const ArrayView& indices, GemmKernel kernel) {
  check_pair(x, y);
  check(!exclude_self || same_input, "exclude_self: needs same_input (x searched against itself)");
  const int64_t rows = x.size(0), cols = y.size(0), k = values.ndim() == 2 ? values.size(1) : 0;
  check(k >= 1 && k <= cols - (exclude_self ? 1 : 0), "k: expected 1 <= k <= number of candidates");
  check_output(values, "values", rows, k, DType::Float32);
  check_output(indices, "indices", rows, k, DType::Int64);
  check(values.stride(0) == k && indices.stride(0) == k, "values, indices: expected contiguous (N, k) arrays");
  check(cols <= std::numeric_limits<uint32_t>::max(), "y: at most 2^32 - 1 rows for the fused top-k");
  const IsaKernels& isa = select_kernels(kernel);

  // Reservoir per row: room for the k kept plus at least two panels' worth of candidates between
  // selections; up to 1024 more for large k (fewer selections) while staying O(N * k). Measured: larger
  // reservoirs were slower (more appends).
  const int64_t capacity = k + std::max<int64_t>(2 * isa.nr, std::min<int64_t>(k, 1024));
  // One reservoir per row and column part (plan_split); the parts' k best are merged by the same key.
  const WorkSplit split = plan_split(isa, rows, cols);
  const int64_t parts = split.parts;
  std::vector<gemm::TopkEntry> entries(static_cast<size_t>(parts * rows * capacity));
  std::vector<int32_t> counts(static_cast<size_t>(parts * rows), 0);
  std::vector<float> thresholds(static_cast<size_t>(parts * rows), std::numeric_limits<float>::quiet_NaN());
  std::vector<gemm::TopkRows> states(static_cast<size_t>(parts));
  for (int64_t part = 0; part < parts; ++part) {
    gemm::TopkRows& state = states[part];
    state.k = k;
    state.capacity = capacity;
    state.entries = entries.data() + part * rows * capacity;
    state.counts = counts.data() + part * rows;
    state.thresholds = thresholds.data() + part * rows;
    state.metric = metric;
    state.exclude_self = exclude_self;
  }
  float* out_values = values.ptr<float>();
  int64_t* out_indices = indices.ptr<int64_t>();
  const auto finish = [&](int64_t first_row, int64_t end_row) {
    std::vector<gemm::TopkEntry> merged;
    for (int64_t i = first_row; i < end_row; ++i) {
      const gemm::TopkEntry* best;
      if (parts == 1) {
        states[0].select(i);
        gemm::TopkEntry* first = entries.data() + i * capacity;
        std::sort(first, first + k, gemm::KeyOrder());
        best = first;
      } else {  // keys are distinct (they hold the column): the k smallest of the parts' k best are unique
        merged.clear();
        for (const gemm::TopkRows& state : states) {
          state.select(i);
          const gemm::TopkEntry* first = state.entries + i * capacity;
          merged.insert(merged.end(), first, first + std::min<int64_t>(k, state.counts[i]));
        }
        std::partial_sort(merged.begin(), merged.begin() + k, merged.end(), gemm::KeyOrder());
        best = merged.data();
      }
      for (int64_t r = 0; r < k; ++r) {
        out_values[i * k + r] = best[r].value;
        out_indices[i * k + r] = gemm::key_column(best[r].key);
      }
    }
  };
  for_each_strip(
      isa, Rows(x), Rows(y), same_input, metric, split,
      [&](const Strip& strip, int part) { isa.topk_tile(strip, states[part]); }, finish);
}

void fused_batch_hard_mine(const ArrayView& anchors, const ArrayView& candidates, const ArrayView& anchor_labels,
                           const ArrayView& candidate_labels, const ArrayView& anchor_index, Metric metric,
                           const ArrayView& dist_ap, const ArrayView& dist_an, const ArrayView& positive_index,
                           const ArrayView& negative_index, GemmKernel kernel) {
  check_features(anchors, "anchors");
  check_features(candidates, "candidates");
  check(anchors.size(1) == candidates.size(1), "candidates: expected as many features as anchors");
  check(anchors.dtype == candidates.dtype, "candidates: expected the dtype of anchors");
  const int64_t rows = anchors.size(0), cols = candidates.size(0);
  check_vector(anchor_labels, "anchor_labels", rows, DType::Int64);
  check_vector(candidate_labels, "candidate_labels", cols, DType::Int64);
  check_vector(anchor_index, "anchor_index", rows, DType::Int64);
  check_vector(dist_ap, "dist_ap", rows, DType::Float32);
  check_vector(dist_an, "dist_an", rows, DType::Float32);
  check_vector(positive_index, "positive_index", rows, DType::Int64);
  check_vector(negative_index, "negative_index", rows, DType::Int64);
  const IsaKernels& isa = select_kernels(kernel);

  // Labels are only compared for equality: map them to dense int32 ids (sorted distinct values).
  const int64_t* labels_a = anchor_labels.ptr<int64_t>();
  const int64_t* labels_c = candidate_labels.ptr<int64_t>();
  std::vector<int64_t> distinct(labels_c, labels_c + cols);
  distinct.insert(distinct.end(), labels_a, labels_a + rows);
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  const auto dense = [&](int64_t label) {
    return static_cast<int32_t>(std::lower_bound(distinct.begin(), distinct.end(), label) - distinct.begin());
  };
  std::vector<int32_t> ids_a(static_cast<size_t>(rows));
  std::vector<int32_t> ids_c(static_cast<size_t>(round_up(cols, isa.nr)), -1);
  for (int64_t i = 0; i < rows; ++i) ids_a[i] = dense(labels_a[i]);
  for (int64_t j = 0; j < cols; ++j) ids_c[j] = dense(labels_c[j]);

  // Symmetric (the batch against itself): half the product, each tile mirroring its update (WorkSplit).
  const bool same_input = anchors.data == candidates.data && rows == cols && anchors.stride(0) == candidates.stride(0);
  WorkSplit split = plan_split(isa, rows, cols);
  const int64_t* self_index = anchor_index.ptr<int64_t>();
  bool symmetric = same_input && split.parts == 1 && std::equal(ids_a.begin(), ids_a.end(), ids_c.begin());
  for (int64_t i = 0; symmetric && i < rows; ++i) symmetric = self_index[i] == i;
  split.symmetric = symmetric;

  // One running hardest pair per anchor and state slot (a column part, or a thread of the symmetric
  // product), merged by value, ties to the smaller index (the same rule as each offer).
  const int64_t slots = symmetric ? split.threads : split.parts, padded = round_up(std::max(rows, cols), isa.nr);
  std::vector<float> positive_values(static_cast<size_t>(slots * padded), -std::numeric_limits<float>::infinity());
  std::vector<float> negative_values(static_cast<size_t>(slots * padded), std::numeric_limits<float>::infinity());
  std::vector<int64_t> positives(static_cast<size_t>(slots * padded), -1), negatives(positives.size(), -1);
  std::vector<gemm::MineRows> states(static_cast<size_t>(slots));
  for (int64_t slot = 0; slot < slots; ++slot) {
    gemm::MineRows& state = states[slot];
    state.anchor_labels = ids_a.data();
    state.candidate_labels = ids_c.data();
    state.self_index = self_index;
    state.positive_value = positive_values.data() + slot * padded;
    state.positive_index = positives.data() + slot * padded;
    state.negative_value = negative_values.data() + slot * padded;
    state.negative_index = negatives.data() + slot * padded;
  }
  float* out_positive_value = dist_ap.ptr<float>();
  float* out_negative_value = dist_an.ptr<float>();
  int64_t* out_positive = positive_index.ptr<int64_t>();
  int64_t* out_negative = negative_index.ptr<int64_t>();
  const auto finish = [&](int64_t first_row, int64_t end_row) {
    for (int64_t i = first_row; i < end_row; ++i) {
      const gemm::MineRows& best = states[0];
      for (int64_t slot = 1; slot < slots; ++slot) {
        const gemm::MineRows& other = states[slot];
        if (other.positive_index[i] >= 0) best.offer_positive(i, other.positive_index[i], other.positive_value[i]);
        if (other.negative_index[i] >= 0) best.offer_negative(i, other.negative_index[i], other.negative_value[i]);
      }
      out_positive[i] = best.positive_index[i];
      out_negative[i] = best.negative_index[i];
      out_positive_value[i] = best.positive_index[i] < 0 ? 0.0f : best.positive_value[i];
      out_negative_value[i] = best.negative_index[i] < 0 ? 0.0f : best.negative_value[i];
    }
  };
  for_each_strip(
      isa, Rows(anchors), Rows(candidates), same_input, metric, split,
      [&](const Strip& strip, int slot) { isa.mine_tile(strip, states[slot]); }, finish);
}

}  // namespace cpu
}  // namespace reidfast
