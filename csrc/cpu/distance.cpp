// Distance and top-k epilogues on the CPU (see distance.h): one pass over a block of dot products.
#include "distance.h"

#include "epilogue.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <queue>
#include <string>
#include <utility>
#include <vector>

namespace reidfast {
namespace cpu {
namespace {

void check_block(const ArrayView& gram, const ArrayView& x_sq_norms, const ArrayView& y_sq_norms) {
  check_matrix(gram, "gram", /*want_cuda=*/false);
  check(gram.dtype == DType::Float32 || gram.dtype == DType::Float64,
        std::string("gram: expected float32 or float64, got ") + dtype_name(gram.dtype));
  check_vector(x_sq_norms, "x_sq_norms", gram.size(0), gram.dtype);
  check_vector(y_sq_norms, "y_sq_norms", gram.size(1), gram.dtype);
}

template <typename T>
void distance_typed(const ArrayView& gram, const ArrayView& x_sq_norms, const ArrayView& y_sq_norms, Metric metric,
                    int64_t self_offset) {
  const int64_t rows = gram.size(0), cols = gram.size(1), stride = gram.stride(0);
  const T* x_norms = x_sq_norms.ptr<T>();
  const T* y_norms = y_sq_norms.ptr<T>();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows; ++i) {
    T* row = gram.ptr<T>() + i * stride;
    const Epilogue<T> epilogue(metric, x_norms[i]);
    const int64_t self = self_offset >= 0 ? self_offset + i : -1;
    for (int64_t j = 0; j < cols; ++j) row[j] = epilogue.distance(row[j], y_norms[j], j == self);
  }
}

template <typename T>
void topk_typed(const ArrayView& gram, const ArrayView& x_sq_norms, const ArrayView& y_sq_norms, Metric metric,
                int64_t self_offset, bool exclude_self, const ArrayView& values, const ArrayView& indices) {
  const int64_t rows = gram.size(0), cols = gram.size(1), stride = gram.stride(0), k = values.size(1);
  const T* x_norms = x_sq_norms.ptr<T>();
  const T* y_norms = y_sq_norms.ptr<T>();
  // Ordered by (distance, column) with NaN after every number, as the reference's stable sort: equal
  // distances (and NaNs) list the smaller column first.
  struct Entry {
    T value;
    int64_t column;
    T prekey;
    bool operator<(const Entry& other) const {
      if (std::isnan(value) || std::isnan(other.value)) {
        return std::isnan(value) != std::isnan(other.value) ? std::isnan(other.value) : column < other.column;
      }
      return value < other.value || (value == other.value && column < other.column);
    }
  };
#pragma omp parallel
  {
    std::vector<Entry> heap;  // max-heap of the k best so far; its top is the one to beat
    heap.reserve(static_cast<size_t>(k));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
      const T* row = gram.ptr<T>() + i * stride;
      const Epilogue<T> epilogue(metric, x_norms[i]);
      const int64_t self = self_offset >= 0 ? self_offset + i : -1;
      heap.clear();
      for (int64_t j = 0; j < cols; ++j) {
        if (exclude_self && j == self) continue;
        const T prekey = epilogue.prekey(row[j], y_norms[j], j == self);
        const bool full = static_cast<int64_t>(heap.size()) == k;
        // j comes after every kept column, so it needs a strictly smaller prekey (a number beats NaN).
        const T top = full ? heap.front().prekey : T(0);
        if (full && !(prekey < top || (std::isnan(top) && !std::isnan(prekey)))) continue;
        const Entry entry{epilogue.finish(prekey), j, prekey};
        if (!full) {
          heap.push_back(entry);
          std::push_heap(heap.begin(), heap.end());
        } else if (entry < heap.front()) {
          std::pop_heap(heap.begin(), heap.end());
          heap.back() = entry;
          std::push_heap(heap.begin(), heap.end());
        }
      }
      std::sort_heap(heap.begin(), heap.end());
      T* out_values = values.ptr<T>() + i * k;
      int64_t* out_indices = indices.ptr<int64_t>() + i * k;
      for (int64_t r = 0; r < k; ++r) {
        out_values[r] = heap[r].value;
        out_indices[r] = heap[r].column;
      }
    }
  }
}

}  // namespace

void distance_epilogue(const ArrayView& gram, const ArrayView& x_sq_norms, const ArrayView& y_sq_norms,
                       Metric metric, int64_t self_offset) {
  check_block(gram, x_sq_norms, y_sq_norms);
  if (gram.dtype == DType::Float32) {
    distance_typed<float>(gram, x_sq_norms, y_sq_norms, metric, self_offset);
  } else {
    distance_typed<double>(gram, x_sq_norms, y_sq_norms, metric, self_offset);
  }
}

void topk_epilogue(const ArrayView& gram, const ArrayView& x_sq_norms, const ArrayView& y_sq_norms, Metric metric,
                   int64_t self_offset, bool exclude_self, const ArrayView& values, const ArrayView& indices) {
  check_block(gram, x_sq_norms, y_sq_norms);
  const int64_t rows = gram.size(0), cols = gram.size(1);
  check(!exclude_self || self_offset >= 0, "exclude_self: needs self_offset >= 0 (x and y the same rows)");
  check(values.ndim() == 2 && values.size(0) == rows && values.dtype == gram.dtype && !values.on_cuda(),
        "values: expected a host (b, k) array of gram's dtype");
  const int64_t k = values.size(1);
  check(k >= 1 && k <= cols - (exclude_self ? 1 : 0), "k: expected 1 <= k <= number of candidates");
  check(values.stride(0) == k && (k == 1 || values.stride(1) == 1), "values: expected a contiguous (b, k) array");
  check(indices.ndim() == 2 && indices.size(0) == rows && indices.size(1) == k && indices.dtype == DType::Int64 &&
            indices.stride(0) == k && (k == 1 || indices.stride(1) == 1) && !indices.on_cuda(),
        "indices: expected a contiguous host (b, k) int64 array");
  if (gram.dtype == DType::Float32) {
    topk_typed<float>(gram, x_sq_norms, y_sq_norms, metric, self_offset, exclude_self, values, indices);
  } else {
    topk_typed<double>(gram, x_sq_norms, y_sq_norms, metric, self_offset, exclude_self, values, indices);
  }
}

}  // namespace cpu
}  // namespace reidfast
