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
#include <vector>

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
    T best_positive = -std::numeric_limits<T>::infinity(), best_positive_prekey = best_positive;
    T best_negative = std::numeric_limits<T>::infinity(), best_negative_prekey = best_negative;
    int64_t positive = -1, negative = -1;
    for (int64_t j = 0; j < cols; ++j) {
      // Strict comparisons in increasing j: ties keep the smallest index. The prekey filter skips the
      // sqrt for candidates that cannot win (see Epilogue).
      const T prekey = epilogue.prekey(dots[j], norms_c[j], /*is_self=*/false);
      if (labels_c[j] == label) {
        if (j != self && prekey > best_positive_prekey) {
          const T value = epilogue.finish(prekey);
          if (value > best_positive || positive < 0) {
            best_positive = value;
            positive = j;
          }
          best_positive_prekey = prekey;
        }
      } else if (prekey < best_negative_prekey) {
        const T value = epilogue.finish(prekey);
        if (value < best_negative || negative < 0) {
          best_negative = value;
          negative = j;
        }
        best_negative_prekey = prekey;
      }
    }
    dist_ap.ptr<T>()[i] = positive < 0 ? T(0) : best_positive;
    dist_an.ptr<T>()[i] = negative < 0 ? T(0) : best_negative;
    positive_index.ptr<int64_t>()[i] = positive;
    negative_index.ptr<int64_t>()[i] = negative;
  }
}

// One output row as a combination of input rows: out (+)= coefficient * own - sum_t weight_t * other_t, in
// the order given (so the result does not depend on the number of threads); the row stays in L1 meanwhile.
template <typename T>
struct RowCombination {
  static constexpr int kMaxTerms = 32;  // more partners (a candidate many anchors chose): written in stages
  T coefficient = T(0);
  int terms = 0;
  const T* rows[kMaxTerms];
  T weights[kMaxTerms];
};

template <typename T>
void write_combination(const RowCombination<T>& combination, const T* own, T* out, int64_t dim, bool accumulate) {
  const T c = combination.coefficient;
  if (accumulate) {
#pragma omp simd
    for (int64_t f = 0; f < dim; ++f) out[f] += c * own[f];
  } else if (c == T(0)) {  // no pair (or weights summing to 0): zeros, not 0 * own
    std::fill(out, out + dim, T(0));
  } else {
#pragma omp simd
    for (int64_t f = 0; f < dim; ++f) out[f] = c * own[f];
  }
  for (int t = 0; t < combination.terms; ++t) {
    const T w = combination.weights[t];
    const T* other = combination.rows[t];
#pragma omp simd
    for (int64_t f = 0; f < dim; ++f) out[f] -= w * other[f];
  }
}

// Gather form of the scatter in triplet.h: pair (i, j) with weight w adds w a_i - w c_j to grad_anchors[i] and
// w c_j - w a_i to grad_candidates[j], so every output row is its own input row scaled by the sum of its
// pairs' weights, minus its partners' rows weighted. Each row is written once (no zero fill, no
// read-modify-write pass per pair), threads take whole rows (no atomics), and a candidate's incoming pairs
// come in increasing anchor order, positives before negatives (an inverse index built here, O(B + C)).
template <typename T>
void backward_typed(const ArrayView& anchors, const ArrayView& candidates, const ArrayView& positive_index,
                    const ArrayView& negative_index, const ArrayView& positive_weight,
                    const ArrayView& negative_weight, const ArrayView& grad_anchors,
                    const ArrayView& grad_candidates) {
  const int64_t num_anchors = anchors.size(0), num_candidates = candidates.size(0), dim = anchors.size(1);
  const int64_t* pairs[2] = {positive_index.ptr<int64_t>(), negative_index.ptr<int64_t>()};
  const T* weights[2] = {positive_weight.ptr<T>(), negative_weight.ptr<T>()};
  const auto anchor_row = [&](int64_t i) { return anchors.ptr<T>() + i * anchors.stride(0); };
  const auto candidate_row = [&](int64_t j) { return candidates.ptr<T>() + j * candidates.stride(0); };
  const auto live = [&](int side, int64_t i) { return pairs[side][i] >= 0 && weights[side][i] != T(0); };
  // Incoming pairs per candidate row, as a CSR of entries e = side * B + i in increasing e.
  std::vector<int64_t> offsets(static_cast<size_t>(num_candidates + 1), 0), entries;
  for (int side = 0; side < 2; ++side) {
    for (int64_t i = 0; i < num_anchors; ++i) {
      if (live(side, i)) ++offsets[pairs[side][i] + 1];
    }
  }
  for (int64_t j = 0; j < num_candidates; ++j) offsets[j + 1] += offsets[j];
  entries.resize(static_cast<size_t>(offsets[num_candidates]));
  {
    std::vector<int64_t> next(offsets.begin(), offsets.end() - 1);
    for (int side = 0; side < 2; ++side) {
      for (int64_t i = 0; i < num_anchors; ++i) {
        if (live(side, i)) entries[next[pairs[side][i]]++] = side * num_anchors + i;
      }
    }
  }
  const bool same = grad_candidates.ptr<T>() == grad_anchors.ptr<T>();  // candidates are the anchors
  const int64_t out_rows = same ? num_anchors : num_anchors + num_candidates;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < out_rows; ++row) {
    RowCombination<T> combination;
    const bool anchor_side = row < num_anchors;
    const int64_t j = anchor_side ? row : row - num_anchors;  // candidate row (same: anchor row too)
    T* out = anchor_side ? grad_anchors.ptr<T>() + row * grad_anchors.stride(0)
                         : grad_candidates.ptr<T>() + j * grad_candidates.stride(0);
    const T* own = anchor_side ? anchor_row(row) : candidate_row(j);
    bool written = false;
    const auto push = [&](T weight, const T* other) {
      if (combination.terms == RowCombination<T>::kMaxTerms) {
        write_combination(combination, own, out, dim, written);
        written = true;
        combination = RowCombination<T>();
      }
      combination.coefficient += weight;
      combination.rows[combination.terms] = other;
      combination.weights[combination.terms++] = weight;
    };
    if (anchor_side) {
      for (int side = 0; side < 2; ++side) {
        if (live(side, row)) push(weights[side][row], candidate_row(pairs[side][row]));
      }
    }
    if (!anchor_side || same) {
      for (int64_t e = offsets[j]; e < offsets[j + 1]; ++e) {
        const int64_t i = entries[e] % num_anchors;
        push(weights[entries[e] / num_anchors][i], anchor_row(i));
      }
    }
    write_combination(combination, own, out, dim, written);
  }
}

}  // namespace

void batch_hard_backward(const ArrayView& anchors, const ArrayView& candidates, const ArrayView& positive_index,
                         const ArrayView& negative_index, const ArrayView& positive_weight,
                         const ArrayView& negative_weight, const ArrayView& grad_anchors,
                         const ArrayView& grad_candidates) {
  check_matrix(anchors, "anchors", /*want_cuda=*/false);
  check_matrix(candidates, "candidates", /*want_cuda=*/false);
  check_matrix(grad_anchors, "grad_anchors", /*want_cuda=*/false);
  check_matrix(grad_candidates, "grad_candidates", /*want_cuda=*/false);
  const DType dtype = anchors.dtype;
  check(dtype == DType::Float32 || dtype == DType::Float64,
        std::string("anchors: expected float32 or float64, got ") + dtype_name(dtype));
  const int64_t num_anchors = anchors.size(0), dim = anchors.size(1);
  check(candidates.dtype == dtype && grad_anchors.dtype == dtype && grad_candidates.dtype == dtype,
        "candidates, grad_anchors, grad_candidates: expected the anchors' dtype");
  check(candidates.size(1) == dim && grad_anchors.size(0) == num_anchors && grad_anchors.size(1) == dim &&
            grad_candidates.size(0) == candidates.size(0) && grad_candidates.size(1) == dim,
        "grad_anchors, grad_candidates: expected the shapes of anchors and candidates");
  check_vector(positive_index, "positive_index", num_anchors, DType::Int64);
  check_vector(negative_index, "negative_index", num_anchors, DType::Int64);
  check_vector(positive_weight, "positive_weight", num_anchors, dtype);
  check_vector(negative_weight, "negative_weight", num_anchors, dtype);
  for (const ArrayView* index : {&positive_index, &negative_index}) {
    const int64_t* data = index->ptr<int64_t>();
    for (int64_t i = 0; i < num_anchors; ++i) {
      check(data[i] >= -1 && data[i] < candidates.size(0), "positive_index/negative_index: out of range");
    }
  }
  if (dtype == DType::Float32) {
    backward_typed<float>(anchors, candidates, positive_index, negative_index, positive_weight, negative_weight,
                          grad_anchors, grad_candidates);
  } else {
    backward_typed<double>(anchors, candidates, positive_index, negative_index, positive_weight, negative_weight,
                           grad_anchors, grad_candidates);
  }
}

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
