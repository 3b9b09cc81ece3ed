// Batch-hard mining on the CPU: one pass over a block of dot products, per anchor a running hardest
// positive and negative. The dot products come from the caller (a BLAS GEMM on a block of anchors), so the
// block never needs more than b x C values and the mining costs one read of them.
#include "triplet.h"

#include "epilogue.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

namespace reidfast {
namespace cpu {
namespace {

template <typename T>
void mine_typed(const ArrayView& gram, const ArrayView& anchor_sq_norms, const ArrayView& candidate_sq_norms,
                const ArrayView& anchor_labels, const ArrayView& candidate_labels, const ArrayView& anchor_index,
                Metric metric, const ArrayView& dist_ap, const ArrayView& dist_an, const ArrayView& positive_index,
                const ArrayView& negative_index) {
  const int64_t rows = gram.size(0), cols = gram.size(1), row_stride = gram.stride(0);
  const T* gram_data = gram.ptr<T>();
  const T* norms_a = anchor_sq_norms.ptr<T>();
  const T* norms_c = candidate_sq_norms.ptr<T>();
  const int64_t* labels_a = anchor_labels.ptr<int64_t>();
  const int64_t* labels_c = candidate_labels.ptr<int64_t>();
  const int64_t* self_index = anchor_index.ptr<int64_t>();

#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows; ++i) {
    const T* dots = gram_data + i * row_stride;
    const int64_t label = labels_a[i];
    const int64_t self = self_index[i];
    const Epilogue<T> epilogue(metric, norms_a[i]);
    T best_positive = -std::numeric_limits<T>::infinity();
    T best_negative = std::numeric_limits<T>::infinity();
    int64_t positive = -1, negative = -1;
    for (int64_t j = 0; j < cols; ++j) {
      const T key = epilogue.distance(dots[j], norms_c[j], /*is_self=*/false);
      // Strict comparisons in increasing j: ties keep the smallest index.
      if (labels_c[j] == label) {
        if (j != self && key > best_positive) {
          best_positive = key;
          positive = j;
        }
      } else if (key < best_negative) {
        best_negative = key;
        negative = j;
      }
    }
    dist_ap.ptr<T>()[i] = positive < 0 ? T(0) : best_positive;
    dist_an.ptr<T>()[i] = negative < 0 ? T(0) : best_negative;
    positive_index.ptr<int64_t>()[i] = positive;
    negative_index.ptr<int64_t>()[i] = negative;
  }
}

}  // namespace

void batch_hard_mine_block(const ArrayView& gram, const ArrayView& anchor_sq_norms,
                           const ArrayView& candidate_sq_norms, const ArrayView& anchor_labels,
                           const ArrayView& candidate_labels, const ArrayView& anchor_index, Metric metric,
                           const ArrayView& dist_ap, const ArrayView& dist_an, const ArrayView& positive_index,
                           const ArrayView& negative_index) {
  check_matrix(gram, "gram", /*want_cuda=*/false);
  check(gram.dtype == DType::Float32 || gram.dtype == DType::Float64,
        std::string("gram: expected float32 or float64, got ") + dtype_name(gram.dtype));
  const int64_t rows = gram.size(0), cols = gram.size(1);
  check_vector(anchor_sq_norms, "anchor_sq_norms", rows, gram.dtype);
  check_vector(candidate_sq_norms, "candidate_sq_norms", cols, gram.dtype);
  check_vector(anchor_labels, "anchor_labels", rows, DType::Int64);
  check_vector(candidate_labels, "candidate_labels", cols, DType::Int64);
  check_vector(anchor_index, "anchor_index", rows, DType::Int64);
  check_vector(dist_ap, "dist_ap", rows, gram.dtype);
  check_vector(dist_an, "dist_an", rows, gram.dtype);
  check_vector(positive_index, "positive_index", rows, DType::Int64);
  check_vector(negative_index, "negative_index", rows, DType::Int64);
  if (gram.dtype == DType::Float32) {
    mine_typed<float>(gram, anchor_sq_norms, candidate_sq_norms, anchor_labels, candidate_labels, anchor_index,
                      metric, dist_ap, dist_an, positive_index, negative_index);
  } else {
    mine_typed<double>(gram, anchor_sq_norms, candidate_sq_norms, anchor_labels, candidate_labels, anchor_index,
                       metric, dist_ap, dist_an, positive_index, negative_index);
  }
}

}  // namespace cpu
}  // namespace reidfast
