// The backward of batch-hard mining on the GPU (contract: triplet.h; the forward: triplet_mine.cu).
#include "triplet.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <utility>

#include "cuda_check.h"
#include "device_math.cuh"
#include "host_utils.h"
#include "launch.cuh"
#include "triplet_common.cuh"

namespace reidfast {
namespace cuda {
namespace {

using namespace device;   // NOLINT: the shared arithmetic of device_math.cuh
using namespace triplet;  // NOLINT: kWarp, kFullMask, check_vector (triplet_common.cuh)

// Gradients of sum_i grad_ap[i] d(a_i, c_p(i)) + grad_an[i] d(a_i, c_n(i)) (contract: triplet.h). The same
// two passes as reidfast/kernels/triton/triplet_backward.py, whose docstring derives the coefficients:
//   pair kernel   one warp per anchor: the pair coefficients (cosine: norms and dot products of a_i, c_p,
//                 c_n, reduced over the warp) into the 7 B coefficient buffer and, when the candidates are a
//                 separate tensor, grad a_i.
//   rows kernel   one warp per output row j: the contributions of the anchors that chose j, in the order of
//                 the inverse index (CSR), plus row j's own anchor part when the rows are the anchors. No
//                 atomics: the sums have a fixed order, so results are bitwise reproducible.

constexpr int kBackwardThreads = 256;
constexpr int kBackwardRowsPerBlock = kBackwardThreads / kWarp;  // one warp per anchor / output row
constexpr int kFeaturesPerLane = 4;                              // rows kernel: 128 features per warp step

// Views into the coefficient buffer (7 B values of AccT; layout in triplet.h).
template <typename AccT>
struct BackwardCoefficients {
  AccT* on_anchor;        // [B]: anchor part, on a_i (cosine)
  AccT* on_positive;      // [B]: anchor part, on c_p(i)
  AccT* on_negative;      // [B]: anchor part, on c_n(i)
  AccT* entry_on_anchor;  // [2B]: entry e's contribution to its row, on the anchor row
  AccT* entry_on_row;     // [2B]: ... on the row itself (cosine)
};

// Butterfly sum: lanes add the same two partial sums in either order, so every lane ends bit-identical.
template <typename AccT>
__device__ __forceinline__ AccT warp_sum(AccT value) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(kFullMask, value, offset);
  return value;
}

template <typename InT, typename AccT>
__global__ void __launch_bounds__(kBackwardThreads)
    pair_coefficients_kernel(const InT* __restrict__ anchors, const InT* __restrict__ candidates,
                             const int64_t* __restrict__ positive_index, const int64_t* __restrict__ negative_index,
                             const AccT* __restrict__ dist_ap, const AccT* __restrict__ dist_an,
                             const AccT* __restrict__ grad_ap, const AccT* __restrict__ grad_an, int64_t num_anchors,
                             int64_t features, int64_t anchor_row_stride, int64_t candidate_row_stride,
                             Metric metric, BackwardCoefficients<AccT> coefficients, InT* __restrict__ grad_anchors,
                             int64_t grad_row_stride) {
  const int lane = threadIdx.x % kWarp;
  const int64_t anchor = static_cast<int64_t>(blockIdx.x) * kBackwardRowsPerBlock + threadIdx.x / kWarp;
  if (anchor >= num_anchors) return;  // a whole warp: the shuffles below always see full warps
  const int64_t positive = positive_index[anchor], negative = negative_index[anchor];
  const AccT grad_p = positive >= 0 ? grad_ap[anchor] : AccT(0);
  const AccT grad_n = negative >= 0 ? grad_an[anchor] : AccT(0);
  const InT* anchor_row = anchors + anchor * anchor_row_stride;
  const InT* positive_row = candidates + (positive >= 0 ? positive : 0) * candidate_row_stride;
  const InT* negative_row = candidates + (negative >= 0 ? negative : 0) * candidate_row_stride;
  const bool cosine = metric == Metric::Cosine;

  AccT on_anchor = AccT(0), on_positive, on_negative, positive_on_anchor, negative_on_anchor;
  AccT positive_on_row = AccT(0), negative_on_row = AccT(0);
  if (cosine) {
    AccT anchor_sq = AccT(0), positive_sq = AccT(0), negative_sq = AccT(0), dot_p = AccT(0), dot_n = AccT(0);
    for (int64_t f = lane; f < features; f += kWarp) {
      const AccT a = widen(anchor_row[f]);
      const AccT p = positive >= 0 ? widen(positive_row[f]) : AccT(0);
      const AccT n = negative >= 0 ? widen(negative_row[f]) : AccT(0);
      anchor_sq = multiply_add(a, a, anchor_sq);
      positive_sq = multiply_add(p, p, positive_sq);
      negative_sq = multiply_add(n, n, negative_sq);
      dot_p = multiply_add(a, p, dot_p);
      dot_n = multiply_add(a, n, dot_n);
    }
    const AccT eps = static_cast<AccT>(kCosineEps);
    const AccT anchor_length = square_root(warp_sum(anchor_sq));
    const AccT positive_length = square_root(warp_sum(positive_sq));
    const AccT negative_length = square_root(warp_sum(negative_sq));
    const AccT anchor_scale = clamp_min(anchor_length, eps);  // x / max(|x|, eps)
    const AccT positive_scale = clamp_min(positive_length, eps);
    const AccT negative_scale = clamp_min(negative_length, eps);
    const AccT cos_p = warp_sum(dot_p) / (anchor_scale * positive_scale);
    const AccT cos_n = warp_sum(dot_n) / (anchor_scale * negative_scale);
    // The clamp passes no gradient to |x|: below eps only the -c^/eps term is left.
    on_anchor = anchor_length > eps ? (grad_p * cos_p + grad_n * cos_n) / (anchor_scale * anchor_scale) : AccT(0);
    on_positive = -grad_p / (anchor_scale * positive_scale);
    on_negative = -grad_n / (anchor_scale * negative_scale);
    positive_on_anchor = on_positive;
    negative_on_anchor = on_negative;
    positive_on_row = positive_length > eps ? grad_p * cos_p / (positive_scale * positive_scale) : AccT(0);
    negative_on_row = negative_length > eps ? grad_n * cos_n / (negative_scale * negative_scale) : AccT(0);
  } else {
    AccT weight_p = AccT(2) * grad_p, weight_n = AccT(2) * grad_n;  // sqeuclidean: d|a - c|^2/da = 2 (a - c)
    if (metric == Metric::Euclidean) {  // (a - c) / d, and 0 where the forward's clamp was active
      const AccT floor = square_root(static_cast<AccT>(kEuclideanClamp));
      const AccT d_p = dist_ap[anchor], d_n = dist_an[anchor];
      weight_p = d_p > floor ? grad_p / d_p : AccT(0);
      weight_n = d_n > floor ? grad_n / d_n : AccT(0);
    }
    on_positive = weight_p;  // used as w (a - c): exact zero for equal rows, no cancellation
    on_negative = weight_n;
    positive_on_anchor = -weight_p;
    negative_on_anchor = -weight_n;
  }
  if (lane == 0) {
    coefficients.on_anchor[anchor] = on_anchor;
    coefficients.on_positive[anchor] = on_positive;
    coefficients.on_negative[anchor] = on_negative;
    coefficients.entry_on_anchor[anchor] = positive_on_anchor;
    coefficients.entry_on_anchor[num_anchors + anchor] = negative_on_anchor;
    coefficients.entry_on_row[anchor] = positive_on_row;
    coefficients.entry_on_row[num_anchors + anchor] = negative_on_row;
  }
  if (grad_anchors == nullptr) return;  // the rows kernel adds the anchor part (candidates are the anchors)
  InT* grad_row = grad_anchors + anchor * grad_row_stride;
  for (int64_t f = lane; f < features; f += kWarp) {
    const AccT a = widen(anchor_row[f]);
    const AccT p = positive >= 0 ? widen(positive_row[f]) : AccT(0);
    const AccT n = negative >= 0 ? widen(negative_row[f]) : AccT(0);
    const AccT grad = cosine ? on_anchor * a + on_positive * p + on_negative * n
                             : on_positive * (a - p) + on_negative * (a - n);
    grad_row[f] = narrow<InT>(grad);
  }
}

template <typename InT, typename AccT>
__global__ void __launch_bounds__(kBackwardThreads)
    chosen_rows_kernel(const InT* __restrict__ anchors, const InT* __restrict__ rows,
                       const int64_t* __restrict__ positive_index, const int64_t* __restrict__ negative_index,
                       const int64_t* __restrict__ entry_order, const int64_t* __restrict__ entry_offsets,
                       int64_t num_anchors, int64_t num_rows, int64_t features, int64_t anchor_row_stride,
                       int64_t row_stride, Metric metric, bool anchor_part, BackwardCoefficients<AccT> coefficients,
                       InT* __restrict__ grad, int64_t grad_row_stride) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kBackwardRowsPerBlock + threadIdx.x / kWarp;
  if (row >= num_rows) return;
  const bool cosine = metric == Metric::Cosine;
  const int64_t first = entry_offsets[row], last = entry_offsets[row + 1];
  const InT* own_row = rows + row * row_stride;
  int64_t positive = -1, negative = -1;
  AccT on_anchor = AccT(0), on_positive = AccT(0), on_negative = AccT(0);
  if (anchor_part) {  // the rows are the anchors: row j's own pairs
    positive = positive_index[row];
    negative = negative_index[row];
    on_anchor = coefficients.on_anchor[row];
    on_positive = coefficients.on_positive[row];
    on_negative = coefficients.on_negative[row];
  }
  const InT* positive_row = rows + (positive >= 0 ? positive : 0) * row_stride;
  const InT* negative_row = rows + (negative >= 0 ? negative : 0) * row_stride;
  InT* grad_row = grad + row * grad_row_stride;

  for (int64_t feature0 = 0; feature0 < features; feature0 += kWarp * kFeaturesPerLane) {
    AccT own[kFeaturesPerLane], total[kFeaturesPerLane];
#pragma unroll
    for (int t = 0; t < kFeaturesPerLane; ++t) {
      const int64_t f = feature0 + lane + t * kWarp;
      own[t] = f < features ? widen(own_row[f]) : AccT(0);
      total[t] = AccT(0);
    }
    for (int64_t slot = first; slot < last; ++slot) {  // the inverse index's order: a fixed summation order
      const int64_t entry = entry_order[slot];
      const int64_t anchor = entry >= num_anchors ? entry - num_anchors : entry;
      const AccT on_anchor_row = coefficients.entry_on_anchor[entry];
      const AccT on_own_row = cosine ? coefficients.entry_on_row[entry] : AccT(0);
      const InT* anchor_row = anchors + anchor * anchor_row_stride;
#pragma unroll
      for (int t = 0; t < kFeaturesPerLane; ++t) {
        const int64_t f = feature0 + lane + t * kWarp;
        if (f >= features) continue;
        const AccT a = widen(anchor_row[f]);
        total[t] = cosine ? multiply_add(on_own_row, own[t], multiply_add(on_anchor_row, a, total[t]))
                          : multiply_add(on_anchor_row, a - own[t], total[t]);
      }
    }
#pragma unroll
    for (int t = 0; t < kFeaturesPerLane; ++t) {
      const int64_t f = feature0 + lane + t * kWarp;
      if (f >= features) continue;
      AccT value = total[t];
      if (anchor_part) {
        const AccT p = positive >= 0 ? widen(positive_row[f]) : AccT(0);
        const AccT n = negative >= 0 ? widen(negative_row[f]) : AccT(0);
        value += cosine ? on_anchor * own[t] + on_positive * p + on_negative * n
                        : on_positive * (own[t] - p) + on_negative * (own[t] - n);
      }
      grad_row[f] = narrow<InT>(value);
    }
  }
}

// All argument checks of batch_hard_backward, before any CUDA call.
void validate_backward(const ArrayView& anchors, const ArrayView& candidates, const ArrayView& positive_index,
                       const ArrayView& negative_index, const ArrayView& dist_ap, const ArrayView& dist_an,
                       const ArrayView& grad_ap, const ArrayView& grad_an, Metric metric,
                       bool candidates_are_anchors, const ArrayView& entry_order, const ArrayView& entry_offsets,
                       const ArrayView& coefficients, const ArrayView& grad_anchors,
                       const ArrayView& grad_candidates) {
  check_matrix(anchors, "anchors", /*want_cuda=*/true);
  check_matrix(candidates, "candidates", /*want_cuda=*/true);
  check_matrix(grad_anchors, "grad_anchors", /*want_cuda=*/true);
  check_matrix(grad_candidates, "grad_candidates", /*want_cuda=*/true);
  std::ostringstream why;
  if (!is_floating(anchors.dtype)) {
    why << "anchors: expected float32, float64, float16 or bfloat16, got " << dtype_name(anchors.dtype);
    fail(why.str());
  }
  const int device = anchors.device;
  const int64_t num_anchors = anchors.size(0), features = anchors.size(1), num_rows = candidates.size(0);
  const std::pair<const ArrayView*, const char*> matrices[] = {
      {&candidates, "candidates"}, {&grad_anchors, "grad_anchors"}, {&grad_candidates, "grad_candidates"}};
  for (const auto& [matrix, name] : matrices) {
    if (matrix->dtype != anchors.dtype || matrix->size(1) != features || matrix->device != device) {
      why << name << ": expected " << dtype_name(anchors.dtype) << " rows of " << features << " features on cuda:"
          << device << " (as anchors), got " << dtype_name(matrix->dtype) << " rows of " << matrix->size(1)
          << " on cuda:" << matrix->device;
      fail(why.str());
    }
  }
  if (grad_anchors.size(0) != num_anchors || grad_candidates.size(0) != num_rows) {
    why << "grad_anchors, grad_candidates: expected " << num_anchors << " and " << num_rows << " rows, got "
        << grad_anchors.size(0) << " and " << grad_candidates.size(0);
    fail(why.str());
  }
  if (candidates_are_anchors && (candidates.data != anchors.data || num_rows != num_anchors ||
                                 candidates.strides != anchors.strides || grad_candidates.data != grad_anchors.data ||
                                 grad_candidates.strides != grad_anchors.strides)) {
    fail("candidates_are_anchors: expected candidates and grad_candidates to be the anchors and grad_anchors views");
  }
  if (!candidates_are_anchors && grad_candidates.data == grad_anchors.data && num_anchors > 0 && features > 0) {
    fail("grad_candidates: expected a buffer of its own (it is grad_anchors; set candidates_are_anchors)");
  }
  const DType acc_dtype = anchors.dtype == DType::Float64 ? DType::Float64 : DType::Float32;
  check_vector(positive_index, "positive_index", num_anchors, DType::Int64, device);
  check_vector(negative_index, "negative_index", num_anchors, DType::Int64, device);
  check_vector(dist_ap, "dist_ap", num_anchors, acc_dtype, device);
  check_vector(dist_an, "dist_an", num_anchors, acc_dtype, device);
  check_vector(grad_ap, "grad_ap", num_anchors, acc_dtype, device);
  check_vector(grad_an, "grad_an", num_anchors, acc_dtype, device);
  check_vector(entry_order, "entry_order", 2 * num_anchors, DType::Int64, device);
  check_vector(entry_offsets, "entry_offsets", num_rows + 1, DType::Int64, device);
  check_vector(coefficients, "coefficients", kBackwardCoefficientsPerAnchor * num_anchors, acc_dtype, device);
  if (metric != Metric::Euclidean && metric != Metric::SqEuclidean && metric != Metric::Cosine) {
    why << "metric: unknown code " << static_cast<int>(metric);
    fail(why.str());
  }
}

template <typename InT, typename AccT>
void launch_backward_typed(const ArrayView& anchors, const ArrayView& rows, const ArrayView& positive_index,
                           const ArrayView& negative_index, const ArrayView& dist_ap, const ArrayView& dist_an,
                           const ArrayView& grad_ap, const ArrayView& grad_an, Metric metric, bool rows_are_anchors,
                           const ArrayView& entry_order, const ArrayView& entry_offsets,
                           const ArrayView& coefficients, const ArrayView& grad_anchors, const ArrayView& grad_rows,
                           cudaStream_t stream) {
  const int64_t num_anchors = anchors.size(0), num_rows = rows.size(0), features = anchors.size(1);
  AccT* base = coefficients.ptr<AccT>();
  const BackwardCoefficients<AccT> coefficient_views{base, base + num_anchors, base + 2 * num_anchors,
                                                      base + 3 * num_anchors, base + 5 * num_anchors};
  if (num_anchors > 0) {
    const unsigned int blocks = static_cast<unsigned int>(ceil_div(num_anchors, kBackwardRowsPerBlock));
    const auto pairs = pair_coefficients_kernel<InT, AccT>;
    REIDFAST_LAUNCH(pairs, blocks, kBackwardThreads, 0, stream)(
        anchors.ptr<const InT>(), rows.ptr<const InT>(), positive_index.ptr<const int64_t>(),
        negative_index.ptr<const int64_t>(), dist_ap.ptr<const AccT>(), dist_an.ptr<const AccT>(),
        grad_ap.ptr<const AccT>(), grad_an.ptr<const AccT>(), num_anchors, features, anchors.stride(0),
        rows.stride(0), metric, coefficient_views, rows_are_anchors ? nullptr : grad_anchors.ptr<InT>(),
        grad_anchors.stride(0));
    REIDFAST_CUDA_CHECK(cudaGetLastError());
  }
  if (num_rows > 0) {
    const unsigned int blocks = static_cast<unsigned int>(ceil_div(num_rows, kBackwardRowsPerBlock));
    const auto chosen = chosen_rows_kernel<InT, AccT>;
    REIDFAST_LAUNCH(chosen, blocks, kBackwardThreads, 0, stream)(
        anchors.ptr<const InT>(), rows.ptr<const InT>(), positive_index.ptr<const int64_t>(),
        negative_index.ptr<const int64_t>(), entry_order.ptr<const int64_t>(), entry_offsets.ptr<const int64_t>(),
        num_anchors, num_rows, features, anchors.stride(0), rows.stride(0), metric, rows_are_anchors,
        coefficient_views, grad_rows.ptr<InT>(), grad_rows.stride(0));
    REIDFAST_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace

void batch_hard_backward(const ArrayView& anchors, const ArrayView& candidates, const ArrayView& positive_index,
                         const ArrayView& negative_index, const ArrayView& dist_ap, const ArrayView& dist_an,
                         const ArrayView& grad_ap, const ArrayView& grad_an, Metric metric,
                         bool candidates_are_anchors, const ArrayView& entry_order, const ArrayView& entry_offsets,
                         const ArrayView& coefficients, const ArrayView& grad_anchors,
                         const ArrayView& grad_candidates, std::uintptr_t stream) {
  validate_backward(anchors, candidates, positive_index, negative_index, dist_ap, dist_an, grad_ap, grad_an, metric,
                    candidates_are_anchors, entry_order, entry_offsets, coefficients, grad_anchors, grad_candidates);
  if (anchors.size(1) == 0 || (anchors.size(0) == 0 && candidates.size(0) == 0)) return;  // nothing to write
  DeviceGuard device_guard(anchors.device);
  const cudaStream_t cuda_stream = reinterpret_cast<cudaStream_t>(stream);
  switch (anchors.dtype) {
    case DType::Float32:
      launch_backward_typed<float, float>(anchors, candidates, positive_index, negative_index, dist_ap, dist_an,
                                          grad_ap, grad_an, metric, candidates_are_anchors, entry_order,
                                          entry_offsets, coefficients, grad_anchors, grad_candidates, cuda_stream);
      break;
    case DType::Float64:
      launch_backward_typed<double, double>(anchors, candidates, positive_index, negative_index, dist_ap, dist_an,
                                            grad_ap, grad_an, metric, candidates_are_anchors, entry_order,
                                            entry_offsets, coefficients, grad_anchors, grad_candidates, cuda_stream);
      break;
    case DType::Float16:
      launch_backward_typed<__half, float>(anchors, candidates, positive_index, negative_index, dist_ap, dist_an,
                                           grad_ap, grad_an, metric, candidates_are_anchors, entry_order,
                                           entry_offsets, coefficients, grad_anchors, grad_candidates, cuda_stream);
      break;
    case DType::BFloat16:
      launch_backward_typed<__nv_bfloat16, float>(anchors, candidates, positive_index, negative_index, dist_ap,
                                                  dist_an, grad_ap, grad_an, metric, candidates_are_anchors,
                                                  entry_order, entry_offsets, coefficients, grad_anchors,
                                                  grad_candidates, cuda_stream);
      break;
    default:
      fail(std::string("anchors: unsupported dtype ") + dtype_name(anchors.dtype));  // unreachable after validate
  }
}

}  // namespace cuda
}  // namespace reidfast
