// The k-NN pass of re-ranking on the CPU (rerank.h: rerank_topk_block): each row's k nearest items and its
// maximum squared distance, over one block of rows of the joint distance matrix.
#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "rerank.h"

namespace reidfast {
namespace cpu {
namespace {

// Row r of the block is [left[r, :], right[r, :]]; either part may be a transposed view (any strides), so
// rows are handled in tiles of kTile with the column loop outside: a transposed part is then read along
// its contiguous dimension, kTile consecutive values (a cache line) per column.
constexpr int64_t kTile = 16;

template <typename T>
void topk_block_typed(const ArrayView& left, const ArrayView& right, int64_t k, float* row_max, int64_t* indices,
                      int64_t index_stride) {
  const int64_t rows = left.size(0), left_cols = left.size(1), cols = left_cols + right.size(1);
  const T* lp = left.ptr<T>();
  const T* rp = right.ptr<T>();
  const int64_t l0 = left.stride(0), l1 = left.stride(1), r0 = right.stride(0), r1 = right.stride(1);
  using Entry = std::pair<float, int64_t>;  // (normalised value, column): lexicographic = ties by index
  const int64_t tiles = (rows + kTile - 1) / kTile;
#pragma omp parallel
  {
    std::vector<std::vector<Entry>> heaps(kTile);
    for (auto& heap : heaps) heap.reserve(static_cast<size_t>(k));
    float maximum[kTile];
#pragma omp for schedule(dynamic, 1)
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int64_t first = tile * kTile, count = std::min(kTile, rows - first);
      auto value_at = [&](int64_t r, int64_t j) -> T {
        return j < left_cols ? lp[(first + r) * l0 + j * l1] : rp[(first + r) * r0 + (j - left_cols) * r1];
      };
      for (int64_t r = 0; r < count; ++r) maximum[r] = 0.0f;
      for (int64_t j = 0; j < cols; ++j)
        for (int64_t r = 0; r < count; ++r) maximum[r] = std::max(maximum[r], square_f32(value_at(r, j)));
      for (int64_t r = 0; r < count; ++r) {
        if (maximum[r] == 0.0f) maximum[r] = 1.0f;  // an all-zero column stays zero (reference docstring)
        row_max[first + r] = maximum[r];
        heaps[static_cast<size_t>(r)].clear();
      }
      for (int64_t j = 0; j < cols; ++j) {
        for (int64_t r = 0; r < count; ++r) {
          std::vector<Entry>& heap = heaps[static_cast<size_t>(r)];
          const float value = square_f32(value_at(r, j)) / maximum[r];
          if (static_cast<int64_t>(heap.size()) < k) {
            heap.emplace_back(value, j);
            std::push_heap(heap.begin(), heap.end());
          } else if (value < heap.front().first) {  // equal value: the later column loses the tie
            std::pop_heap(heap.begin(), heap.end());
            heap.back() = Entry(value, j);
            std::push_heap(heap.begin(), heap.end());
          }
        }
      }
      for (int64_t r = 0; r < count; ++r) {
        std::vector<Entry>& heap = heaps[static_cast<size_t>(r)];
        std::sort_heap(heap.begin(), heap.end());
        int64_t* out = indices + (first + r) * index_stride;
        for (int64_t t = 0; t < k; ++t) out[t] = heap[static_cast<size_t>(t)].second;
      }
    }
  }
}

}  // namespace

void rerank_topk_block(const ArrayView& left, const ArrayView& right, int64_t k, const ArrayView& row_max,
                       const ArrayView& indices) {
  check(left.ndim() == 2 && right.ndim() == 2 && !left.on_cuda() && !right.on_cuda(),
        "left, right: expected 2-D host arrays");
  check(left.size(0) == right.size(0), "left, right: expected the same number of rows");
  check(left.dtype == right.dtype && (left.dtype == DType::Float32 || left.dtype == DType::Float64),
        std::string("left, right: expected one dtype, float32 or float64, got ") + dtype_name(left.dtype) + " and " +
            dtype_name(right.dtype));
  check(k >= 1 && k <= left.size(1) + right.size(1), "k: expected 1 <= k <= the number of columns");
  check_vector(row_max, "row_max", left.size(0), DType::Float32);
  check_matrix(indices, "indices", false);
  check(indices.dtype == DType::Int64 && indices.size(0) == left.size(0) && indices.size(1) == k,
        "indices: expected an int64 (rows, k) matrix");
  if (left.dtype == DType::Float32) {
    topk_block_typed<float>(left, right, k, row_max.ptr<float>(), indices.ptr<int64_t>(), indices.stride(0));
  } else {
    topk_block_typed<double>(left, right, k, row_max.ptr<float>(), indices.ptr<int64_t>(), indices.stride(0));
  }
}

}  // namespace cpu
}  // namespace reidfast
