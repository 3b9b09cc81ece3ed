// C++ CPU distance epilogues with OpenMP. The matrix product itself comes from the caller (a BLAS GEMM
// through torch on a block of rows); these turn a block of dot products into distances, or into each row's
// k nearest, in one pass while the block is still in cache.
#pragma once

#include <cstdint>

#include "../common/array.h"

namespace reidfast {
namespace cpu {

// gram (b, M): dot products of b rows of x with the M rows of y (float32 or float64, rows contiguous),
// overwritten in place with distances. x_sq_norms (b,), y_sq_norms (M,): squared L2 norms, gram's dtype.
// self_offset >= 0: x and y are the same rows and row r of the block is row self_offset + r of y, whose
// squared distance is made exactly 0 (BLAS and the norms round differently); -1: no such diagonal.
void distance_epilogue(const ArrayView& gram, const ArrayView& x_sq_norms, const ArrayView& y_sq_norms,
                       Metric metric, int64_t self_offset);

// Per row of gram (as above, not modified): the k nearest columns, sorted ascending by (distance, column),
// written to values (b, k) (gram's dtype) and indices (b, k) (Int64), both contiguous. exclude_self skips
// column self_offset + r for row r (requires self_offset >= 0). 1 <= k <= M - exclude_self.
void topk_epilogue(const ArrayView& gram, const ArrayView& x_sq_norms, const ArrayView& y_sq_norms, Metric metric,
                   int64_t self_offset, bool exclude_self, const ArrayView& values, const ArrayView& indices);

}  // namespace cpu
}  // namespace reidfast
