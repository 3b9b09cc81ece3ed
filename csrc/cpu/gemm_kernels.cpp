// The fused CPU distance kernels' consumers (gemm_kernels.h): pairwise distances, top-k and batch-hard
// mining, each a tile kernel (gemm_isa.inc) run over the strips of gemm_driver.cpp's parallel walk, with
// its per-row state and its finishing. Rank counting (evaluate_features) is in gemm_rank_count.cpp.
#include "gemm_kernels.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "gemm_driver.h"
#include "gemm_internal.h"

namespace reidfast {
namespace cpu {
namespace {

using gemm::IsaKernels;
using gemm::Rows;
using gemm::Strip;
using gemm::WorkSplit;

// Labels are only compared for equality: anchors' and candidates' labels as dense int32 ids (indices into
// their sorted distinct values); the candidates' padded to whole panels with -1.
void dense_label_ids(const int64_t* anchor_labels, int64_t rows, const int64_t* candidate_labels, int64_t cols,
                     int nr, std::vector<int32_t>& anchor_ids, std::vector<int32_t>& candidate_ids) {
  std::vector<int64_t> distinct(candidate_labels, candidate_labels + cols);
  distinct.insert(distinct.end(), anchor_labels, anchor_labels + rows);
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  const auto dense = [&](int64_t label) {
    return static_cast<int32_t>(std::lower_bound(distinct.begin(), distinct.end(), label) - distinct.begin());
  };
  anchor_ids.assign(static_cast<size_t>(rows), 0);
  candidate_ids.assign(static_cast<size_t>(gemm::round_up(cols, nr)), -1);
  for (int64_t i = 0; i < rows; ++i) anchor_ids[i] = dense(anchor_labels[i]);
  for (int64_t j = 0; j < cols; ++j) candidate_ids[j] = dense(candidate_labels[j]);
}

}  // namespace

void fused_pairwise_distance(const ArrayView& x, const ArrayView& y, Metric metric, bool same_input,
                             const ArrayView& out, GemmKernel kernel) {
  gemm::check_pair(x, y);
  gemm::check_output(out, "out", x.size(0), y.size(0), DType::Float32);
  const IsaKernels& isa = gemm::select_kernels(kernel);
  gemm::DistanceOut target{out.ptr<float>(), out.stride(0)};
  gemm::for_each_strip(
      isa, Rows(x), Rows(y), same_input, metric, gemm::plan_split(isa, x.size(0), y.size(0)),
      [&](const Strip& strip, int) { isa.distance_tile(strip, target); }, [](int64_t, int64_t) {});
}

void fused_topk_distance(const ArrayView& x, const ArrayView& y, Metric metric, bool same_input,
                         bool exclude_self, const ArrayView& values, const ArrayView& indices, GemmKernel kernel) {
  gemm::check_pair(x, y);
  check(!exclude_self || same_input, "exclude_self: needs same_input (x searched against itself)");
  const int64_t rows = x.size(0), cols = y.size(0), k = values.ndim() == 2 ? values.size(1) : 0;
  check(k >= 1 && k <= cols - (exclude_self ? 1 : 0), "k: expected 1 <= k <= number of candidates");
  gemm::check_output(values, "values", rows, k, DType::Float32);
  gemm::check_output(indices, "indices", rows, k, DType::Int64);
  check(values.stride(0) == k && indices.stride(0) == k, "values, indices: expected contiguous (N, k) arrays");
  check(cols <= std::numeric_limits<uint32_t>::max(), "y: at most 2^32 - 1 rows for the fused top-k");
  const IsaKernels& isa = gemm::select_kernels(kernel);

  // Reservoir per row: room for the k kept plus at least two panels' worth of candidates between
  // selections; up to 1024 more for large k (fewer selections) while staying O(N * k). Measured: larger
  // reservoirs were slower (more appends).
  const int64_t capacity = k + std::max<int64_t>(2 * isa.nr, std::min<int64_t>(k, 1024));
  // One reservoir per row and column part (plan_split); the parts' k best are merged by the same key.
  const WorkSplit split = gemm::plan_split(isa, rows, cols);
  const int64_t parts = split.parts;
  std::vector<gemm::TopkEntry> entries(static_cast<size_t>(parts * rows * capacity));
  std::vector<int32_t> counts(static_cast<size_t>(parts * rows), 0);
  std::vector<float> thresholds(static_cast<size_t>(parts * rows), std::numeric_limits<float>::quiet_NaN());
  std::vector<gemm::TopkRows> states(static_cast<size_t>(parts));
  for (int64_t part = 0; part < parts; ++part) {
    gemm::TopkRows& state = states[part];
    state.k = k;
    state.capacity = capacity;
    state.entries = entries.data() + part * rows * capacity;
    state.counts = counts.data() + part * rows;
    state.thresholds = thresholds.data() + part * rows;
    state.metric = metric;
    state.exclude_self = exclude_self;
  }
  float* out_values = values.ptr<float>();
  int64_t* out_indices = indices.ptr<int64_t>();
  const auto finish = [&](int64_t first_row, int64_t end_row) {
    std::vector<gemm::TopkEntry> merged;
    for (int64_t i = first_row; i < end_row; ++i) {
      const gemm::TopkEntry* best;
      if (parts == 1) {
        states[0].select(i);
        gemm::TopkEntry* first = entries.data() + i * capacity;
        std::sort(first, first + k, gemm::KeyOrder());
        best = first;
      } else {  // keys are distinct (they hold the column): the k smallest of the parts' k best are unique
        merged.clear();
        for (const gemm::TopkRows& state : states) {
          state.select(i);
          const gemm::TopkEntry* first = state.entries + i * capacity;
          merged.insert(merged.end(), first, first + std::min<int64_t>(k, state.counts[i]));
        }
        std::partial_sort(merged.begin(), merged.begin() + k, merged.end(), gemm::KeyOrder());
        best = merged.data();
      }
      for (int64_t r = 0; r < k; ++r) {
        out_values[i * k + r] = best[r].value;
        out_indices[i * k + r] = gemm::key_column(best[r].key);
      }
    }
  };
  gemm::for_each_strip(
      isa, Rows(x), Rows(y), same_input, metric, split,
      [&](const Strip& strip, int part) { isa.topk_tile(strip, states[part]); }, finish);
}

void fused_batch_hard_mine(const ArrayView& anchors, const ArrayView& candidates, const ArrayView& anchor_labels,
                           const ArrayView& candidate_labels, const ArrayView& anchor_index, Metric metric,
                           const ArrayView& dist_ap, const ArrayView& dist_an, const ArrayView& positive_index,
                           const ArrayView& negative_index, GemmKernel kernel) {
  gemm::check_features(anchors, "anchors");
  gemm::check_features(candidates, "candidates");
  check(anchors.size(1) == candidates.size(1), "candidates: expected as many features as anchors");
  check(anchors.dtype == candidates.dtype, "candidates: expected the dtype of anchors");
  const int64_t rows = anchors.size(0), cols = candidates.size(0);
  check_vector(anchor_labels, "anchor_labels", rows, DType::Int64);
  check_vector(candidate_labels, "candidate_labels", cols, DType::Int64);
  check_vector(anchor_index, "anchor_index", rows, DType::Int64);
  check_vector(dist_ap, "dist_ap", rows, DType::Float32);
  check_vector(dist_an, "dist_an", rows, DType::Float32);
  check_vector(positive_index, "positive_index", rows, DType::Int64);
  check_vector(negative_index, "negative_index", rows, DType::Int64);
  const IsaKernels& isa = gemm::select_kernels(kernel);

  std::vector<int32_t> ids_a, ids_c;
  dense_label_ids(anchor_labels.ptr<int64_t>(), rows, candidate_labels.ptr<int64_t>(), cols, isa.nr, ids_a, ids_c);

  // Symmetric (the batch against itself): half the product, each tile mirroring its update (WorkSplit).
  // The same-input rule of _arrays.same_rows: row i of the anchors is row i of the candidates (one may be a prefix
  // of the other); its self pair is then exactly 0 apart, as in the distance kernels and on CUDA/Triton.
  const bool same_input = anchors.data == candidates.data &&
                          (std::min(rows, cols) <= 1 || anchors.stride(0) == candidates.stride(0));
  WorkSplit split = gemm::plan_split(isa, rows, cols);
  const int64_t* self_index = anchor_index.ptr<int64_t>();
  bool symmetric = same_input && rows == cols && split.parts == 1 && std::equal(ids_a.begin(), ids_a.end(), ids_c.begin());
  for (int64_t i = 0; symmetric && i < rows; ++i) symmetric = self_index[i] == i;
  split.symmetric = symmetric;

  // One running hardest pair per anchor and state slot (a column part, or a thread of the symmetric
  // product), merged by value, ties to the smaller index (the same rule as each offer).
  const int64_t slots = symmetric ? split.threads : split.parts, padded = gemm::round_up(std::max(rows, cols), isa.nr);
  std::vector<float> positive_values(static_cast<size_t>(slots * padded), -std::numeric_limits<float>::infinity());
  std::vector<float> negative_values(static_cast<size_t>(slots * padded), std::numeric_limits<float>::infinity());
  std::vector<int64_t> positives(static_cast<size_t>(slots * padded), -1), negatives(positives.size(), -1);
  std::vector<gemm::MineRows> states(static_cast<size_t>(slots));
  for (int64_t slot = 0; slot < slots; ++slot) {
    gemm::MineRows& state = states[slot];
    state.anchor_labels = ids_a.data();
    state.candidate_labels = ids_c.data();
    state.self_index = self_index;
    state.positive_value = positive_values.data() + slot * padded;
    state.positive_index = positives.data() + slot * padded;
    state.negative_value = negative_values.data() + slot * padded;
    state.negative_index = negatives.data() + slot * padded;
  }
  float* out_positive_value = dist_ap.ptr<float>();
  float* out_negative_value = dist_an.ptr<float>();
  int64_t* out_positive = positive_index.ptr<int64_t>();
  int64_t* out_negative = negative_index.ptr<int64_t>();
  const auto finish = [&](int64_t first_row, int64_t end_row) {
    for (int64_t i = first_row; i < end_row; ++i) {
      const gemm::MineRows& best = states[0];
      for (int64_t slot = 1; slot < slots; ++slot) {
        const gemm::MineRows& other = states[slot];
        if (other.positive_index[i] >= 0) best.offer_positive(i, other.positive_index[i], other.positive_value[i]);
        if (other.negative_index[i] >= 0) best.offer_negative(i, other.negative_index[i], other.negative_value[i]);
      }
      out_positive[i] = best.positive_index[i];
      out_negative[i] = best.negative_index[i];
      out_positive_value[i] = best.positive_index[i] < 0 ? 0.0f : best.positive_value[i];
      out_negative_value[i] = best.negative_index[i] < 0 ? 0.0f : best.negative_value[i];
    }
  };
  gemm::for_each_strip(
      isa, Rows(anchors), Rows(candidates), same_input, metric, split,
      [&](const Strip& strip, int slot) { isa.mine_tile(strip, states[slot]); }, finish);
}

}  // namespace cpu
}  // namespace reidfast
