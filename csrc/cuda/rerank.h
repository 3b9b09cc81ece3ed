// CUDA Jaccard stage of k-reciprocal re-ranking (compiled only when REIDFAST_WITH_CUDA is defined).
#pragma once

#include <cstdint>

#include "../common/array.h"

namespace reidfast {
namespace cuda {

// Steps 7-8 of the published algorithm for the query rows, deterministic and in its float32 order:
//   s[q, g] = sum over the columns j of query row q, in increasing j, of min(V[q, j], V[g, j])
//   out[q, g] = (1 - s / (2 - s)) * (1 - lambda) + out[q, g] * lambda     (out holds the normalised distance)
// query_crow (Q + 1,) int64: query row q's entries are [query_crow[q], query_crow[q + 1]) of entry_col (int64,
// columns increasing within a row) and entry_val (float32). The gallery rows as an inverted index:
// column j's entries are [column_start[j], column_start[j + 1]) of index_item (int64 gallery item in [0, G),
// increasing within a column) and index_val (float32); column_start has N + 1 entries (N = Q + G columns).
// out (Q, G) float32, contiguous. All on one CUDA device. Asynchronous on `stream`.
void rerank_jaccard(const ArrayView& query_crow, const ArrayView& entry_col, const ArrayView& entry_val,
                    const ArrayView& column_start, const ArrayView& index_item, const ArrayView& index_val,
                    double lambda_value, const ArrayView& out, std::uintptr_t stream);

}  // namespace cuda
}  // namespace reidfast
