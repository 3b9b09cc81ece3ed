// Internal to the fused CPU kernels' drivers (gemm_kernels.cpp, gemm_rank_count.cpp): the run-time choice
// of the instruction set (gemm_select.cpp), the input rows and their packing (gemm_packing.cpp), and the
// cache-blocked, OpenMP-parallel walk over (A tile, block of B panels) strips (gemm_driver.cpp).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <new>

#include "gemm_internal.h"
#include "gemm_kernels.h"

namespace reidfast {
namespace cpu {
namespace gemm {

// --- instruction set and cache sizes (gemm_select.cpp) ------------------------------------------------

// The micro-kernels of `kernel` (Auto: the widest this CPU runs). Throws (naming `kernel`) if the chosen one
// is not compiled in or the CPU lacks it.
const IsaKernels& select_kernels(GemmKernel kernel);

// The part of the packed y rows that stays in each core's L2 while a thread's tiles go by (bytes), and the
// depth chunk whose A tile stays in L1 while the B panels stream through it (steps).
struct CacheBlocking {
  int64_t l2_block_bytes;
  int64_t depth_chunk;
};
CacheBlocking cache_blocking(const IsaKernels& isa);

int max_threads();
int thread_index();
int team_size();

inline int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

// --- input rows and packing (gemm_packing.cpp) ----------------------------------------------------------

// The rows of an input matrix in any of the accepted float dtypes (float32, float16, bfloat16).
struct Rows {
  const char* data;
  DType dtype;
  int64_t count, depth, stride_bytes;

  explicit Rows(const ArrayView& view)
      : data(static_cast<const char*>(view.data)), dtype(view.dtype), count(view.size(0)), depth(view.size(1)),
        stride_bytes(view.stride(0) * (view.dtype == DType::Float32 ? 4 : 2)) {}

  // Row i as float32: the row itself, or converted into scratch (depth floats).
  const float* row(int64_t i, float* scratch) const;
};

// Rows [first, first + count) into `width`-interleaved panels (gemm_internal.h), zero-padding the last, and
// their squared norms (and, for cosine, lengths max(|v|, eps)) into sq_norms[0, count) / lengths[0, count)
// unless sq_norms is null. scratch: width * depth floats for the float16/bfloat16 -> float32 conversion.
void pack(const IsaKernels& isa, const Rows& rows, int64_t first, int64_t count, int width, float* packed,
          float* scratch, float* sq_norms, float* lengths);

// 64-byte aligned float storage (panel loads then never split a cache line).
struct AlignedFloats {
  struct Free {
    void operator()(float* p) const { ::operator delete(p, std::align_val_t{64}); }
  };
  std::unique_ptr<float[], Free> data;
  int64_t capacity = 0;

  AlignedFloats() = default;
  explicit AlignedFloats(int64_t count);
  float* get() const { return data.get(); }
};

// The packing buffers of one call, carved from one allocation. Up to kCachedWorkspaceBytes it is kept per
// calling thread between calls, so the small calls of a training loop pay no allocation and no page faults
// (measured: a fresh 2.5 MiB per call at B = 256, D = 2048 put page faults at ~6% of a fwd+bwd step).
class Workspace {
 public:
  explicit Workspace(int64_t floats);

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

// Argument checks shared by the drivers ("name: expected ...").
void check_features(const ArrayView& view, const char* name);
void check_pair(const ArrayView& x, const ArrayView& y);
void check_output(const ArrayView& view, const char* name, int64_t rows, int64_t cols, DType dtype);

// --- the parallel walk over strips (gemm_driver.cpp) ------------------------------------------------------

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

WorkSplit plan_split(const IsaKernels& isa, int64_t rows, int64_t cols);

// process(strip, slot): one (A tile, block of y panels) pair through the consumer's tile kernel; slot is the
// thread's column part (its own state), or the thread itself for the symmetric product.
using ProcessStrip = std::function<void(const Strip&, int)>;
// finish(first_row, end_row): the consumer's per-row finishing, once per thread for a range of rows.
using FinishRows = std::function<void(int64_t, int64_t)>;

// Runs `process` for every (A tile, block of y rows) pair, in the loop order described in gemm_driver.cpp,
// then `finish` once per thread (after a barrier when the columns are split or the product symmetric, so
// that every part of those rows is complete). Within one part, every row sees its columns in increasing order.
void for_each_strip(const IsaKernels& isa, const Rows& x, const Rows& y, bool same_input, Metric metric,
                    const WorkSplit& split, const ProcessStrip& process, const FinishRows& finish);

}  // namespace gemm
}  // namespace cpu
}  // namespace reidfast
