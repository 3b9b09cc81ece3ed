// The only file that includes pybind11. Thin: build the views, release the GIL, call the kernel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "array_binding.h"
#include "common/array.h"
#include "cpu/distance.h"
#include "cpu/triplet.h"
#include "cpu/evaluate.h"
#include "cpu/rerank.h"
#include "cpu/gemm_kernels.h"
#include "cpu/rank_count.h"
// [includes: cpu]  (marker: add CPU headers above)
#ifdef REIDFAST_WITH_CUDA
#include "cuda/distance.h"  // runtime_version() for build_info()
#include "cuda_bindings.h"
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;
using reidfast::ArrayView;
using reidfast::DType;
using reidfast::Metric;

#define REIDFAST_STRINGIFY_(x) #x
#define REIDFAST_STRINGIFY(x) REIDFAST_STRINGIFY_(x)

using reidfast::bindings::to_metric;

namespace {

reidfast::cpu::GemmKernel to_gemm_kernel(int code) {
  reidfast::check(code >= 0 && code <= static_cast<int>(reidfast::cpu::GemmKernel::Avx512),
                  "unknown gemm kernel code " + std::to_string(code));
  return static_cast<reidfast::cpu::GemmKernel>(code);
}

std::string compiler_version() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + REIDFAST_STRINGIFY(__GNUC__) "." REIDFAST_STRINGIFY(__GNUC_MINOR__) "." REIDFAST_STRINGIFY(
             __GNUC_PATCHLEVEL__);
#elif defined(_MSC_VER)
  return std::string("msvc ") + REIDFAST_STRINGIFY(_MSC_VER);
#else
  return "unknown";
#endif
}

py::dict build_info() {
  py::dict info;
  info["compiler"] = compiler_version();
  info["cxx_standard"] = static_cast<long>(__cplusplus);
#ifdef _OPENMP
  info["openmp"] = static_cast<long>(_OPENMP);
  info["openmp_max_threads"] = omp_get_max_threads();
#else
  info["openmp"] = py::none();
#endif
#ifdef REIDFAST_WITH_CUDA
  info["cuda"] = true;
  info["cuda_compiler"] = REIDFAST_CUDA_COMPILER_VERSION;
  info["cuda_architectures"] = REIDFAST_CUDA_ARCHITECTURES;
  info["cuda_runtime_version"] = reidfast::cuda::runtime_version();
#else
  info["cuda"] = false;
#endif
  info["build_type"] = REIDFAST_STRINGIFY(REIDFAST_BUILD_TYPE);
  return info;
}

// The epilogues over a given Gram matrix, batch-hard mining and its backward, Market-1501 evaluation.
void add_distance_and_loss_bindings(py::module_& m) {
  m.def(
      "distance_epilogue_cpu",
      [](const ArrayView& gram, const ArrayView& x_sq_norms, const ArrayView& y_sq_norms, int metric,
         int64_t self_offset) {
        py::gil_scoped_release release;
        reidfast::cpu::distance_epilogue(gram, x_sq_norms, y_sq_norms, to_metric(metric), self_offset);
      },
      py::arg("gram"), py::arg("x_sq_norms"), py::arg("y_sq_norms"), py::arg("metric"), py::arg("self_offset"));
  m.def(
      "topk_epilogue_cpu",
      [](const ArrayView& gram, const ArrayView& x_sq_norms, const ArrayView& y_sq_norms, int metric,
         int64_t self_offset, bool exclude_self, const ArrayView& values, const ArrayView& indices) {
        py::gil_scoped_release release;
        reidfast::cpu::topk_epilogue(gram, x_sq_norms, y_sq_norms, to_metric(metric), self_offset, exclude_self,
                                     values, indices);
      },
      py::arg("gram"), py::arg("x_sq_norms"), py::arg("y_sq_norms"), py::arg("metric"), py::arg("self_offset"),
      py::arg("exclude_self"), py::arg("values"), py::arg("indices"));

  m.def(
      "batch_hard_mine_block_cpu",
      [](const ArrayView& gram, const ArrayView& anchor_sq_norms, const ArrayView& candidate_sq_norms,
         const ArrayView& anchor_labels, const ArrayView& candidate_labels, const ArrayView& anchor_index,
         int metric, const ArrayView& dist_ap, const ArrayView& dist_an, const ArrayView& positive_index,
         const ArrayView& negative_index) {
        py::gil_scoped_release release;
        reidfast::cpu::batch_hard_mine_block(gram, anchor_sq_norms, candidate_sq_norms, anchor_labels,
                                             candidate_labels, anchor_index, to_metric(metric), dist_ap, dist_an,
                                             positive_index, negative_index);
      },
      py::arg("gram"), py::arg("anchor_sq_norms"), py::arg("candidate_sq_norms"), py::arg("anchor_labels"),
      py::arg("candidate_labels"), py::arg("anchor_index"), py::arg("metric"), py::arg("dist_ap"),
      py::arg("dist_an"), py::arg("positive_index"), py::arg("negative_index"));

  m.def(
      "evaluate_market1501_cpu",
      [](const ArrayView& distmat, const ArrayView& q_pids, const ArrayView& g_pids, const ArrayView& q_camids,
         const ArrayView& g_camids, const ArrayView& first_match_rank, const ArrayView& average_precision,
         const ArrayView& inverse_negative_penalty) {
        py::gil_scoped_release release;
        reidfast::cpu::evaluate_market1501(distmat, q_pids, g_pids, q_camids, g_camids, first_match_rank,
                                           average_precision, inverse_negative_penalty);
      },
      py::arg("distmat"), py::arg("q_pids"), py::arg("g_pids"), py::arg("q_camids"), py::arg("g_camids"),
      py::arg("first_match_rank"), py::arg("average_precision"), py::arg("inverse_negative_penalty"));

  m.def(
      "batch_hard_backward_cpu",
      [](const ArrayView& anchors, const ArrayView& candidates, const ArrayView& positive_index,
         const ArrayView& negative_index, const ArrayView& positive_weight, const ArrayView& negative_weight,
         const ArrayView& grad_anchors, const ArrayView& grad_candidates) {
        py::gil_scoped_release release;
        reidfast::cpu::batch_hard_backward(anchors, candidates, positive_index, negative_index, positive_weight,
                                           negative_weight, grad_anchors, grad_candidates);
      },
      py::arg("anchors"), py::arg("candidates"), py::arg("positive_index"), py::arg("negative_index"),
      py::arg("positive_weight"), py::arg("negative_weight"), py::arg("grad_anchors"), py::arg("grad_candidates"));

}

// k-NN pass and the finish of k-reciprocal re-ranking (cpu/rerank.h), dense and sparse.
void add_rerank_bindings(py::module_& m) {
  m.def("rerank_half_k1", &reidfast::cpu::rerank_half_k1, py::arg("k1"));
  m.def(
      "rerank_topk_block_cpu",
      [](const ArrayView& left, const ArrayView& right, int64_t k, const ArrayView& row_max,
         const ArrayView& indices) {
        py::gil_scoped_release release;
        reidfast::cpu::rerank_topk_block(left, right, k, row_max, indices);
      },
      py::arg("left"), py::arg("right"), py::arg("k"), py::arg("row_max"), py::arg("indices"));
  m.def(
      "rerank_finish_cpu",
      [](const ArrayView& ranks, const ArrayView& row_max, const ArrayView& features, int metric,
         const ArrayView& q_g, const ArrayView& q_q, const ArrayView& g_g, int64_t num_query, int64_t k1, int64_t k2,
         double lambda_value, const ArrayView& out) {
        py::gil_scoped_release release;
        reidfast::cpu::rerank_finish(ranks, row_max, features, to_metric(metric), q_g, q_q, g_g, num_query, k1, k2,
                                     lambda_value, out);
      },
      py::arg("ranks"), py::arg("row_max"), py::arg("features"), py::arg("metric"), py::arg("q_g"), py::arg("q_q"),
      py::arg("g_g"), py::arg("num_query"), py::arg("k1"), py::arg("k2"), py::arg("lambda_value"), py::arg("out"));
  // Re-ranked top-k / evaluation without the (Q, G) output (cpu/rerank.h): the overlap lists as numpy arrays.
  m.def(
      "rerank_overlap_cpu",
      [](const ArrayView& ranks, const ArrayView& row_max, const ArrayView& features, int metric,
         const ArrayView& q_g, const ArrayView& q_q, const ArrayView& g_g, int64_t num_query, int64_t k1, int64_t k2,
         double lambda_value) {
        reidfast::cpu::RerankOverlap overlap;
        {
          py::gil_scoped_release release;
          overlap = reidfast::cpu::rerank_overlap(ranks, row_max, features, to_metric(metric), q_g, q_q, g_g,
                                                  num_query, k1, k2, lambda_value);
        }
        return py::make_tuple(py::array_t<int64_t>(overlap.offsets.size(), overlap.offsets.data()),
                              py::array_t<int32_t>(overlap.index.size(), overlap.index.data()),
                              py::array_t<float>(overlap.term.size(), overlap.term.data()));
      },
      py::arg("ranks"), py::arg("row_max"), py::arg("features"), py::arg("metric"), py::arg("q_g"), py::arg("q_q"),
      py::arg("g_g"), py::arg("num_query"), py::arg("k1"), py::arg("k2"), py::arg("lambda_value"));
  m.def(
      "rerank_select_block_cpu",
      [](const ArrayView& distances, const ArrayView& row_max, double lambda_value, const ArrayView& overlap_offsets,
         const ArrayView& overlap_index, const ArrayView& overlap_term, const ArrayView& values,
         const ArrayView& indices) {
        py::gil_scoped_release release;
        reidfast::cpu::rerank_select_block(distances, row_max, lambda_value, overlap_offsets, overlap_index,
                                           overlap_term, values, indices);
      },
      py::arg("distances"), py::arg("row_max"), py::arg("lambda_value"), py::arg("overlap_offsets"),
      py::arg("overlap_index"), py::arg("overlap_term"), py::arg("values"), py::arg("indices"));

  m.def(
      "evaluate_cuhk03_sampled_ranks_cpu",
      [](const ArrayView& distmat, const ArrayView& q_pids, const ArrayView& g_pids, const ArrayView& q_camids,
         const ArrayView& g_camids, const ArrayView& identity, const ArrayView& offsets,
         const ArrayView& sampled_rank) {
        py::gil_scoped_release release;
        reidfast::cpu::evaluate_cuhk03_sampled_ranks(distmat, q_pids, g_pids, q_camids, g_camids, identity, offsets,
                                                     sampled_rank);
      },
      py::arg("distmat"), py::arg("q_pids"), py::arg("g_pids"), py::arg("q_camids"), py::arg("g_camids"),
      py::arg("identity"), py::arg("offsets"), py::arg("sampled_rank"));
  m.def(
      "cuhk03_draw_offsets_cpu",
      [](std::uintptr_t bit_generator, const ArrayView& images_per_identity, const ArrayView& own_identity,
         const ArrayView& num_matches, const ArrayView& offsets) {
        py::gil_scoped_release release;  // the caller holds the numpy generator's lock
        reidfast::cpu::cuhk03_draw_offsets(bit_generator, images_per_identity, own_identity, num_matches, offsets);
      },
      py::arg("bit_generator"), py::arg("images_per_identity"), py::arg("own_identity"), py::arg("num_matches"),
      py::arg("offsets"));

}

// The fused SIMD distance kernels and evaluate_features' rank counting (cpu/gemm_kernels.h, cpu/rank_count.h).
void add_fused_kernel_bindings(py::module_& m) {
  // Fused SIMD distance kernels; kernel: 0 auto, 1 avx2, 2 avx512 (reidfast/ops/distance.py: GEMM_KERNEL_CODES).
  m.def("cpu_gemm_kernels", &reidfast::cpu::supported_gemm_kernels,
        "The fused SIMD micro-kernels this module has and this CPU runs, widest first.");
  m.def(
      "fused_pairwise_distance_cpu",
      [](const ArrayView& x, const ArrayView& y, int metric, bool same_input, const ArrayView& out, int kernel) {
        py::gil_scoped_release release;
        reidfast::cpu::fused_pairwise_distance(x, y, to_metric(metric), same_input, out, to_gemm_kernel(kernel));
      },
      py::arg("x"), py::arg("y"), py::arg("metric"), py::arg("same_input"), py::arg("out"), py::arg("kernel"));
  m.def(
      "fused_topk_distance_cpu",
      [](const ArrayView& x, const ArrayView& y, int metric, bool same_input, bool exclude_self,
         const ArrayView& values, const ArrayView& indices, int kernel) {
        py::gil_scoped_release release;
        reidfast::cpu::fused_topk_distance(x, y, to_metric(metric), same_input, exclude_self, values, indices,
                                           to_gemm_kernel(kernel));
      },
      py::arg("x"), py::arg("y"), py::arg("metric"), py::arg("same_input"), py::arg("exclude_self"),
      py::arg("values"), py::arg("indices"), py::arg("kernel"));
  m.def(
      "fused_batch_hard_mine_cpu",
      [](const ArrayView& anchors, const ArrayView& candidates, const ArrayView& anchor_labels,
         const ArrayView& candidate_labels, const ArrayView& anchor_index, int metric, const ArrayView& dist_ap,
         const ArrayView& dist_an, const ArrayView& positive_index, const ArrayView& negative_index, int kernel) {
        py::gil_scoped_release release;
        reidfast::cpu::fused_batch_hard_mine(anchors, candidates, anchor_labels, candidate_labels, anchor_index,
                                             to_metric(metric), dist_ap, dist_an, positive_index, negative_index,
                                             to_gemm_kernel(kernel));
      },
      py::arg("anchors"), py::arg("candidates"), py::arg("anchor_labels"), py::arg("candidate_labels"),
      py::arg("anchor_index"), py::arg("metric"), py::arg("dist_ap"), py::arg("dist_an"), py::arg("positive_index"),
      py::arg("negative_index"), py::arg("kernel"));

  // Evaluation straight from features: the counting pass over one block of distances (cpu/rank_count.h).
  m.def(
      "rank_count_block_cpu",
      [](const ArrayView& distances, int64_t col0, const ArrayView& pivot_offsets, const ArrayView& pivot_distance,
         const ArrayView& pivot_index, const ArrayView* row_labels, const ArrayView* item_labels,
         const ArrayView* groups, int64_t num_groups, const ArrayView& histogram, const ArrayView* row_max, float keep,
         float blend) {
        py::gil_scoped_release release;
        return reidfast::cpu::rank_count_block(distances, col0, pivot_offsets, pivot_distance, pivot_index,
                                               row_labels, item_labels, groups, num_groups, histogram, row_max, keep,
                                               blend);
      },
      py::arg("distances"), py::arg("col0"), py::arg("pivot_offsets"), py::arg("pivot_distance"),
      py::arg("pivot_index"), py::arg("row_labels").none(true), py::arg("item_labels").none(true),
      py::arg("groups").none(true), py::arg("num_groups"), py::arg("histogram"),
      py::arg("row_max").none(true) = py::none(), py::arg("keep") = 0.0f, py::arg("blend") = 0.0f);
  m.def(
      "rank_count_overlap_correct_cpu",
      [](const ArrayView& distances, const ArrayView& pivot_offsets, const ArrayView& pivot_distance,
         const ArrayView& pivot_index, const ArrayView& row_labels, const ArrayView& item_labels,
         const ArrayView* groups, int64_t num_groups, const ArrayView& row_max, float keep, float blend,
         const ArrayView& overlap_offsets, const ArrayView& overlap_index, const ArrayView& overlap_term,
         const ArrayView& histogram) {
        py::gil_scoped_release release;
        reidfast::cpu::rank_count_overlap_correct(distances, pivot_offsets, pivot_distance, pivot_index, row_labels,
                                                  item_labels, groups, num_groups, row_max, keep, blend,
                                                  overlap_offsets, overlap_index, overlap_term, histogram);
      },
      py::arg("distances"), py::arg("pivot_offsets"), py::arg("pivot_distance"), py::arg("pivot_index"),
      py::arg("row_labels"), py::arg("item_labels"), py::arg("groups").none(true), py::arg("num_groups"),
      py::arg("row_max"), py::arg("keep"), py::arg("blend"), py::arg("overlap_offsets"), py::arg("overlap_index"),
      py::arg("overlap_term"), py::arg("histogram"));

  // The counting pass fused into the distance tile (cpu/gemm_kernels.h: fused_rank_count); kernel as above.
  m.def(
      "fused_rank_count_cpu",
      [](const ArrayView& x, const ArrayView& y, int metric, int64_t item0, const ArrayView& pivot_offsets,
         const ArrayView& pivot_distance, const ArrayView& pivot_index, const ArrayView* row_labels,
         const ArrayView* item_labels, const ArrayView* groups, int64_t num_groups, const ArrayView& histogram,
         const ArrayView* row_max, float keep, float blend, int kernel) {
        py::gil_scoped_release release;
        return reidfast::cpu::fused_rank_count(x, y, to_metric(metric), item0, pivot_offsets, pivot_distance,
                                               pivot_index, row_labels, item_labels, groups, num_groups, row_max,
                                               keep, blend, histogram, to_gemm_kernel(kernel));
      },
      py::arg("x"), py::arg("y"), py::arg("metric"), py::arg("item0"), py::arg("pivot_offsets"),
      py::arg("pivot_distance"), py::arg("pivot_index"), py::arg("row_labels").none(true),
      py::arg("item_labels").none(true), py::arg("groups").none(true), py::arg("num_groups"), py::arg("histogram"),
      py::arg("row_max").none(true) = nullptr, py::arg("keep") = 0.0f, py::arg("blend") = 1.0f,
      py::arg("kernel") = 0);

}
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "reidfast native kernels (C++/OpenMP, optional CUDA). Internal: use the reidfast package API.";

  reidfast::bindings::add_array_view(m, /*module_local=*/false);

  m.def("build_info", &build_info, "Compiler, OpenMP and CUDA versions this module was built with.");
  m.def(
      "set_num_threads",
      [](int threads) {
        reidfast::check(threads >= 1, "threads: expected a positive count, got " + std::to_string(threads));
#ifdef _OPENMP
        omp_set_num_threads(threads);  // this module's OpenMP runtime, for parallel regions the calling thread starts
#endif
      },
      py::arg("threads"), "The OpenMP thread count of the kernels called from this thread (reidfast follows torch's).");

  add_distance_and_loss_bindings(m);
  add_rerank_bindings(m);
  add_fused_kernel_bindings(m);

  // [bindings: cpu]  (marker: add CPU bindings above)

#ifdef REIDFAST_WITH_CUDA
  reidfast::bindings::add_cuda_kernels(m);
#endif
}
