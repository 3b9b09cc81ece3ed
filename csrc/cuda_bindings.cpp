// Thin: release the GIL and call the kernel's host entry point (which validates its arguments).
#include "cuda_bindings.h"

#include <cstdint>

#include "array_binding.h"
#include "common/array.h"
#include "cuda/distance.h"
#include "cuda/rank_count.h"
#include "cuda/rerank.h"
#include "cuda/topk.h"
#include "cuda/triplet.h"
// [includes: cuda]  (marker: add CUDA headers above)

namespace py = pybind11;
using reidfast::ArrayView;

namespace reidfast {
namespace bindings {
namespace {

// An optional array argument: None -> nullptr. Taken as py::object because in the emulator module (whose
// ArrayView is module-local) pybind11 hands a None for `const ArrayView*` to _C's global ArrayView type in its
// no-conversion pass, which rejects None; casting ourselves keeps None working in both modules.
const ArrayView* optional_view(const py::object& value) {
  return value.is_none() ? nullptr : value.cast<const ArrayView*>();
}

}  // namespace

void add_cuda_kernels(py::module_& m) {
  m.def("cuda_device_count", &reidfast::cuda::device_count);
  m.def(
      "pairwise_distance_cuda",
      [](const ArrayView& x, const ArrayView& y, const ArrayView& out, int metric, std::uintptr_t stream) {
        py::gil_scoped_release release;
        reidfast::cuda::pairwise_distance(x, y, out, to_metric(metric), stream);
      },
      py::arg("x"), py::arg("y"), py::arg("out"), py::arg("metric"), py::arg("stream"));

  m.def("batch_hard_mine_workspace_bytes", &reidfast::cuda::batch_hard_mine_workspace_bytes,
        py::arg("num_anchors"), py::arg("num_candidates"));
  m.def(
      "batch_hard_mine_cuda",
      [](const ArrayView& anchors, const ArrayView& candidates, const ArrayView& anchor_labels,
         const ArrayView& candidate_labels, const ArrayView& anchor_index, int metric, const ArrayView& dist_ap,
         const ArrayView& dist_an, const ArrayView& positive_index, const ArrayView& negative_index,
         const ArrayView& workspace, std::uintptr_t stream) {
        py::gil_scoped_release release;
        reidfast::cuda::batch_hard_mine(anchors, candidates, anchor_labels, candidate_labels, anchor_index,
                                        to_metric(metric), dist_ap, dist_an, positive_index, negative_index,
                                        workspace, stream);
      },
      py::arg("anchors"), py::arg("candidates"), py::arg("anchor_labels"), py::arg("candidate_labels"),
      py::arg("anchor_index"), py::arg("metric"), py::arg("dist_ap"), py::arg("dist_an"), py::arg("positive_index"),
      py::arg("negative_index"), py::arg("workspace"), py::arg("stream"));

  m.attr("cuda_topk_max_k") = reidfast::cuda::kTopkMaxK;
  m.def("topk_distance_workspace_bytes", &reidfast::cuda::topk_distance_workspace_bytes);
  m.def("topk_distance_cuda", [](const ArrayView& x, const ArrayView& y, int64_t k, int metric, bool exclude_self,
                                 const ArrayView& values, const ArrayView& indices, const ArrayView& workspace,
                                 std::uintptr_t stream) {
        py::gil_scoped_release release;
        reidfast::cuda::topk_distance(x, y, k, to_metric(metric), exclude_self, values, indices, workspace, stream);
      }, py::arg("x"), py::arg("y"), py::arg("k"), py::arg("metric"), py::arg("exclude_self"), py::arg("values"),
      py::arg("indices"), py::arg("workspace"), py::arg("stream"));

  m.attr("batch_hard_backward_coefficients_per_anchor") = reidfast::cuda::kBackwardCoefficientsPerAnchor;
  m.def(
      "batch_hard_backward_cuda",
      [](const ArrayView& anchors, const ArrayView& candidates, const ArrayView& positive_index,
         const ArrayView& negative_index, const ArrayView& dist_ap, const ArrayView& dist_an, const ArrayView& grad_ap,
         const ArrayView& grad_an, int metric, bool candidates_are_anchors, const ArrayView& entry_order,
         const ArrayView& entry_offsets, const ArrayView& coefficients, const ArrayView& grad_anchors,
         const ArrayView& grad_candidates, std::uintptr_t stream) {
        py::gil_scoped_release release;
        reidfast::cuda::batch_hard_backward(anchors, candidates, positive_index, negative_index, dist_ap, dist_an,
                                            grad_ap, grad_an, to_metric(metric), candidates_are_anchors, entry_order,
                                            entry_offsets, coefficients, grad_anchors, grad_candidates, stream);
      },
      py::arg("anchors"), py::arg("candidates"), py::arg("positive_index"), py::arg("negative_index"),
      py::arg("dist_ap"), py::arg("dist_an"), py::arg("grad_ap"), py::arg("grad_an"), py::arg("metric"),
      py::arg("candidates_are_anchors"), py::arg("entry_order"), py::arg("entry_offsets"), py::arg("coefficients"),
      py::arg("grad_anchors"), py::arg("grad_candidates"), py::arg("stream"));

  m.def(
      "rerank_jaccard_cuda",
      [](const ArrayView& query_crow, const ArrayView& entry_col, const ArrayView& entry_val,
         const ArrayView& column_start, const ArrayView& index_item, const ArrayView& index_val, double lambda_value,
         const ArrayView& out, std::uintptr_t stream) {
        py::gil_scoped_release release;
        reidfast::cuda::rerank_jaccard(query_crow, entry_col, entry_val, column_start, index_item, index_val,
                                       lambda_value, out, stream);
      },
      py::arg("query_crow"), py::arg("entry_col"), py::arg("entry_val"), py::arg("column_start"),
      py::arg("index_item"), py::arg("index_val"), py::arg("lambda_value"), py::arg("out"), py::arg("stream"));

  // Evaluation straight from features: rank counting fused into the distance tile (cuda/rank_count.h).
  m.def(
      "rank_count_cuda",
      [](const ArrayView& query, const ArrayView& gallery, int64_t first_item, int metric,
         const ArrayView& pivot_offsets, const ArrayView& pivot_distance, const ArrayView& pivot_index,
         const py::object& row_labels, const py::object& item_labels, const py::object& groups, int64_t num_groups,
         const ArrayView& histogram, const ArrayView& nan_count, std::uintptr_t stream) {
        const ArrayView* const row_label_view = optional_view(row_labels);
        const ArrayView* const item_label_view = optional_view(item_labels);
        const ArrayView* const group_view = optional_view(groups);
        py::gil_scoped_release release;
        reidfast::cuda::rank_count(query, gallery, first_item, to_metric(metric), pivot_offsets, pivot_distance,
                                   pivot_index, row_label_view, item_label_view, group_view, num_groups, histogram,
                                   nan_count, stream);
      },
      py::arg("query"), py::arg("gallery"), py::arg("first_item"), py::arg("metric"), py::arg("pivot_offsets"),
      py::arg("pivot_distance"), py::arg("pivot_index"), py::arg("row_labels").none(true),
      py::arg("item_labels").none(true), py::arg("groups").none(true), py::arg("num_groups"), py::arg("histogram"),
      py::arg("nan_count"), py::arg("stream"));

  // [bindings: cuda]  (marker: add CUDA bindings above)
}

}  // namespace bindings
}  // namespace reidfast
