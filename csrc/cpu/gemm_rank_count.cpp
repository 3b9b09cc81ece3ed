// Rank counting fused into the distance tile (gemm_kernels.h: fused_rank_count): evaluate_features' counting
// pass without the block of distances. Per query row, an item ranks before pivot j iff its key (distance,
// gallery index) is smaller; the tile's vector filter (RankCountEpilogue, gemm_isa.inc) drops every item
// behind the row's farthest pivot on its prekey, and RankCountRows::place counts the few others into the
// slot between consecutive pivots, exactly as rank_count_block does on the stored distances.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "gemm_driver.h"
#include "gemm_internal.h"
#include "gemm_kernels.h"
#include "rank_slot.h"

namespace reidfast {
namespace cpu {
namespace gemm {

void RankCountRows::place(int64_t row, int64_t column, float prekey) const {
  float value = finish(metric, prekey);  // the distance, bitwise the distance epilogue's
  if (row_max != nullptr) value = rerank_score(value, row_max[row], keep, blend);
  if (std::isnan(value)) {
    ++nan_counts[row];
    return;
  }
  const int64_t item = item0 + column;
  if (row_labels != nullptr && item_labels[item] == row_labels[row]) return;  // the row's own label: not counted
  const int64_t first = pivot_offsets[row], count = pivot_offsets[row + 1] - first;
  const int64_t slot = pivot_slot(pivot_distance + first, pivot_index + first, count, value, item);
  if (slot < count) histogram[(first + slot) * num_groups + (groups != nullptr ? groups[item] : 0)] += 1;
}

}  // namespace gemm

namespace {

float from_bits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

// The largest prekey p (epilogue.h) whose compared value may still rank at or before `bound` (the row's
// farthest pivot); every prekey above it compares strictly after. The compared value g(p) is the distance
// finish(p), or rerank_score of it; both are non-decreasing in p over [0, inf] (rounded operations with
// non-negative operands), so a binary search on the bit patterns of [0, inf] finds the last p with
// !(g(p) > bound). Negative prekeys (cosine, rounding) pass whenever 0 does: conservative, as the bound only
// filters and place() decides. Without a well-behaved transform (row_max or blend not positive and finite,
// keep not finite: NaN or non-monotone values) every prekey passes.
float prekey_bound(Metric metric, float bound, bool transform, float row_max, float keep, float blend) {
  if (!transform && metric != Metric::Euclidean) return bound;  // the prekey is the distance itself
  constexpr float kInf = std::numeric_limits<float>::infinity();
  if (transform && !(row_max > 0.0f && row_max < kInf && blend > 0.0f && blend < kInf && std::isfinite(keep))) {
    return kInf;
  }
  const auto after_bound = [&](float prekey) {
    const float distance = gemm::finish(metric, prekey);
    return (transform ? rerank_score(distance, row_max, keep, blend) : distance) > bound;
  };
  if (after_bound(0.0f)) return -kInf;  // nothing ranks at or before the bound (or the row has no pivots)
  if (!after_bound(kInf)) return kInf;
  uint32_t lo = 0, hi = 0x7f800000u;  // the bits of +0 (not after) and +inf (after)
  while (hi - lo > 1) {
    const uint32_t mid = lo + (hi - lo) / 2;
    (after_bound(from_bits(mid)) ? hi : lo) = mid;
  }
  return from_bits(lo);
}

// Checks the pivot arrays, labels, groups and histogram of a call with `rows` query rows and `cols` items
// from item0, as rank_count_block; returns the number of pivots.
int64_t check_pivots(int64_t rows, int64_t cols, int64_t item0, const ArrayView& pivot_offsets,
                     const ArrayView& pivot_distance, const ArrayView& pivot_index, const ArrayView* row_labels,
                     const ArrayView* item_labels, const ArrayView* groups, int64_t num_groups,
                     const ArrayView& histogram) {
  check(item0 >= 0, "item0: expected >= 0");
  check_vector(pivot_offsets, "pivot_offsets", rows + 1, DType::Int64);
  const int64_t* offsets = pivot_offsets.ptr<int64_t>();
  const int64_t num_pivots = pivot_distance.ndim() == 1 ? pivot_distance.size(0) : -1;
  check_vector(pivot_distance, "pivot_distance", num_pivots, DType::Float32);
  check_vector(pivot_index, "pivot_index", num_pivots, DType::Int64);
  check(offsets[0] >= 0 && offsets[rows] <= num_pivots, "pivot_offsets: expected offsets within the pivots");
  for (int64_t r = 0; r < rows; ++r) check(offsets[r] <= offsets[r + 1], "pivot_offsets: expected non-decreasing offsets");
  check((row_labels == nullptr) == (item_labels == nullptr), "row_labels, item_labels: expected both or neither");
  if (row_labels != nullptr) {
    check_vector(*row_labels, "row_labels", rows, DType::Int64);
    check(item_labels->ndim() == 1 && item_labels->size(0) >= item0 + cols,
          "item_labels: expected a vector covering the items' gallery indices");
    check_vector(*item_labels, "item_labels", item_labels->size(0), DType::Int64);
  }
  check(num_groups >= 1, "num_groups: expected >= 1");
  if (groups != nullptr) {
    check(groups->ndim() == 1 && groups->size(0) >= item0 + cols, "groups: expected a vector covering the items' gallery indices");
    check_vector(*groups, "groups", groups->size(0), DType::Int64);
    const int64_t* ids = groups->ptr<int64_t>();
    for (int64_t c = 0; c < cols; ++c) {
      check(ids[item0 + c] >= 0 && ids[item0 + c] < num_groups, "groups: expected values in [0, num_groups)");
    }
  } else {
    check(num_groups == 1, "num_groups: expected 1 without groups");
  }
  check_vector(histogram, "histogram", num_pivots * num_groups, DType::Int64);
  return num_pivots;
}

}  // namespace

int64_t fused_rank_count(const ArrayView& x, const ArrayView& y, Metric metric, int64_t item0,
                         const ArrayView& pivot_offsets, const ArrayView& pivot_distance, const ArrayView& pivot_index,
                         const ArrayView* row_labels, const ArrayView* item_labels, const ArrayView* groups,
                         int64_t num_groups, const ArrayView* row_max, float keep, float blend,
                         const ArrayView& histogram, GemmKernel kernel) {
  gemm::check_pair(x, y);
  const int64_t rows = x.size(0), cols = y.size(0);
  const int64_t num_pivots = check_pivots(rows, cols, item0, pivot_offsets, pivot_distance, pivot_index, row_labels,
                                          item_labels, groups, num_groups, histogram);
  if (row_max != nullptr) check_vector(*row_max, "row_max", rows, DType::Float32);
  const gemm::IsaKernels& isa = gemm::select_kernels(kernel);

  gemm::RankCountRows base;
  base.pivot_offsets = pivot_offsets.ptr<int64_t>();
  base.pivot_distance = pivot_distance.ptr<float>();
  base.pivot_index = pivot_index.ptr<int64_t>();
  base.row_labels = row_labels != nullptr ? row_labels->ptr<int64_t>() : nullptr;
  base.item_labels = item_labels != nullptr ? item_labels->ptr<int64_t>() : nullptr;
  base.groups = groups != nullptr ? groups->ptr<int64_t>() : nullptr;
  base.num_groups = num_groups;
  base.item0 = item0;
  base.row_max = row_max != nullptr ? row_max->ptr<float>() : nullptr;
  base.keep = keep;
  base.blend = blend;
  base.metric = metric;
  std::vector<float> bounds(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t last = base.pivot_offsets[r + 1] - 1;
    const float bound = last >= base.pivot_offsets[r] ? base.pivot_distance[last] : -std::numeric_limits<float>::infinity();
    bounds[r] = prekey_bound(metric, bound, row_max != nullptr, base.row_max ? base.row_max[r] : 1.0f, keep, blend);
  }
  base.prekey_bounds = bounds.data();

  // One histogram and NaN count per column part (gemm_driver.h): part 0 counts into the output, the others
  // into their own copies, added to the output rows by rows once every part is complete.
  const gemm::WorkSplit split = gemm::plan_split(isa, rows, cols);
  const int64_t parts = split.parts, histogram_size = num_pivots * num_groups;
  std::vector<int64_t> part_histograms(static_cast<size_t>((parts - 1) * histogram_size), 0);
  std::vector<int64_t> nan_counts(static_cast<size_t>(parts * rows), 0);
  std::vector<gemm::RankCountRows> states(static_cast<size_t>(parts), base);
  for (int64_t part = 0; part < parts; ++part) {
    states[part].histogram = part == 0 ? histogram.ptr<int64_t>() : part_histograms.data() + (part - 1) * histogram_size;
    states[part].nan_counts = nan_counts.data() + part * rows;
  }
  const auto finish = [&](int64_t first_row, int64_t end_row) {
    if (parts == 1 || first_row >= end_row) return;
    const int64_t first = base.pivot_offsets[first_row] * num_groups, end = base.pivot_offsets[end_row] * num_groups;
    for (int64_t part = 1; part < parts; ++part) {
      for (int64_t i = first; i < end; ++i) states[0].histogram[i] += states[part].histogram[i];
    }
  };
  gemm::for_each_strip(
      isa, gemm::Rows(x), gemm::Rows(y), /*same_input=*/false, metric, split,
      [&](const gemm::Strip& strip, int part) { isa.rank_count_tile(strip, states[part]); }, finish);
  int64_t nan_total = 0;
  for (const int64_t count : nan_counts) nan_total += count;
  return nan_total;
}

}  // namespace cpu
}  // namespace reidfast
