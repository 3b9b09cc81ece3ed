// Top-k of re-ranked rows without the (Q, G) output (rerank.h: rerank_select_block): the blend of
// rerank_finish's jaccard() applied to one block of query-gallery distances, only the k best kept per row.
#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "rerank.h"

namespace reidfast {
namespace cpu {
namespace {

// np.square(d) in d's dtype rounded to float32, / row_max, * lambda (all float32, no contraction: this
// file is compiled with -ffp-contract=off), as _re_ranking_cpu and jaccard() compute out[i, g].
template <typename T>
inline float blended(T d, float row_max, float blend) {
  const float square = square_f32(d);
  const float original = square / row_max;
  return original * blend;
}

template <typename T>
void select_typed(const ArrayView& distances, const float* row_max, float keep, float blend, const int64_t* offsets,
                  const int32_t* overlap_index, const float* overlap_term, int64_t k, float* values,
                  int64_t value_stride, int64_t* indices, int64_t index_stride) {
  const int64_t rows = distances.size(0), cols = distances.size(1), stride = distances.stride(0);
  using Entry = std::pair<float, int64_t>;  // (value, gallery index): lexicographic = ties by index
#pragma omp parallel
  {
    std::vector<Entry> heap;
    heap.reserve(static_cast<size_t>(k));
#pragma omp for schedule(dynamic, 4)
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = distances.ptr<T>() + r * stride;
      const int64_t first = offsets[r], last = offsets[r + 1];
      int64_t next = first;  // the next overlap item of the row (increasing gallery index)
      heap.clear();
      for (int64_t g = 0; g < cols; ++g) {
        float term = keep;
        if (next < last && overlap_index[next] == g) term = overlap_term[next++];
        const float b = blended(row[g], row_max[r], blend);
        const float value = term + b;
        if (static_cast<int64_t>(heap.size()) < k) {
          heap.emplace_back(value, g);
          std::push_heap(heap.begin(), heap.end());
        } else if (value < heap.front().first) {  // equal value: the later index loses the tie
          std::pop_heap(heap.begin(), heap.end());
          heap.back() = Entry(value, g);
          std::push_heap(heap.begin(), heap.end());
        }
      }
      std::sort_heap(heap.begin(), heap.end());
      for (int64_t t = 0; t < k; ++t) {
        values[r * value_stride + t] = heap[static_cast<size_t>(t)].first;
        indices[r * index_stride + t] = heap[static_cast<size_t>(t)].second;
      }
    }
  }
}

}  // namespace

void check_overlap_lists(const ArrayView& overlap_offsets, const ArrayView& overlap_index,
                         const ArrayView& overlap_term, int64_t rows, int64_t cols, bool increasing) {
  check_vector(overlap_offsets, "overlap_offsets", rows + 1, DType::Int64);
  const int64_t entries = overlap_index.ndim() == 1 ? overlap_index.size(0) : -1;
  check_vector(overlap_index, "overlap_index", entries, DType::Int32);
  check_vector(overlap_term, "overlap_term", entries, DType::Float32);
  const int64_t* offsets = overlap_offsets.ptr<int64_t>();
  const int32_t* index = overlap_index.ptr<int32_t>();
  for (int64_t r = 0; r < rows; ++r) {
    check(offsets[r] >= 0 && offsets[r] <= offsets[r + 1] && offsets[r + 1] <= entries,
          "overlap_offsets: expected non-decreasing offsets within the overlap entries");
    for (int64_t e = offsets[r]; e < offsets[r + 1]; ++e) {
      check(index[e] >= 0 && index[e] < cols && (!increasing || e == offsets[r] || index[e - 1] < index[e]),
            "overlap_index: expected gallery indices of the block's columns, increasing per row");
    }
  }
}

void rerank_select_block(const ArrayView& distances, const ArrayView& row_max, double lambda_value,
                         const ArrayView& overlap_offsets, const ArrayView& overlap_index,
                         const ArrayView& overlap_term, const ArrayView& values, const ArrayView& indices) {
  check_matrix(distances, "distances", false);
  check(distances.dtype == DType::Float32 || distances.dtype == DType::Float64,
        std::string("distances: expected float32 or float64, got ") + dtype_name(distances.dtype));
  const int64_t rows = distances.size(0), cols = distances.size(1);
  check(cols < (int64_t{1} << 31), "distances: expected fewer than 2^31 gallery items");
  check_vector(row_max, "row_max", rows, DType::Float32);
  check_overlap_lists(overlap_offsets, overlap_index, overlap_term, rows, cols, /*increasing=*/true);
  const int64_t* offsets = overlap_offsets.ptr<int64_t>();
  const int32_t* index = overlap_index.ptr<int32_t>();
  check_matrix(values, "values", false);
  check_matrix(indices, "indices", false);
  const int64_t k = values.ndim() == 2 ? values.size(1) : 0;
  check(k >= 1 && k <= cols, "values: expected 1 <= k <= G columns");
  check(values.dtype == DType::Float32 && values.size(0) == rows, "values: expected a float32 (rows, k) matrix");
  check(indices.dtype == DType::Int64 && indices.size(0) == rows && indices.size(1) == k,
        "indices: expected an int64 (rows, k) matrix");
  const float keep = static_cast<float>(1.0 - lambda_value);
  const float blend = static_cast<float>(lambda_value);
  if (distances.dtype == DType::Float32) {
    select_typed<float>(distances, row_max.ptr<float>(), keep, blend, offsets, index, overlap_term.ptr<float>(), k,
                        values.ptr<float>(), values.stride(0), indices.ptr<int64_t>(), indices.stride(0));
  } else {
    select_typed<double>(distances, row_max.ptr<float>(), keep, blend, offsets, index, overlap_term.ptr<float>(), k,
                         values.ptr<float>(), values.stride(0), indices.ptr<int64_t>(), indices.stride(0));
  }
}

}  // namespace cpu
}  // namespace reidfast
