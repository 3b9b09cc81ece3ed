// k-reciprocal re-ranking on the CPU (see rerank.h): sparse weight rows, sparse query expansion and the query
// rows of the Jaccard distance through an inverted index (the top-k pass over row blocks: rerank_knn.cpp).
#include "rerank.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace reidfast {
namespace cpu {
namespace {

// joint[j, i]^2 in float32, from the three distance blocks or from the features.
struct PairSource {
  int64_t num_query = 0;
  bool from_features = false;
  bool is_double = false;
  const void* q_g = nullptr;
  const void* q_q = nullptr;
  const void* g_g = nullptr;
  int64_t s_qg = 0, s_qq = 0, s_gg = 0;
  const float* features = nullptr;
  int64_t dim = 0, s_f = 0;
  Metric metric = Metric::Euclidean;
  std::vector<double> sq_norms;  // features: squared L2 norm of every row

  template <typename T>
  float joint_squared(int64_t i, int64_t j) const {
    const int64_t q = num_query;
    T x;
    if (j < q) {
      x = i < q ? static_cast<const T*>(q_q)[j * s_qq + i] : static_cast<const T*>(q_g)[j * s_qg + (i - q)];
    } else {
      x = i < q ? static_cast<const T*>(q_g)[i * s_qg + (j - q)] : static_cast<const T*>(g_g)[(j - q) * s_gg + (i - q)];
    }
    return square_f32(x);
  }

  float features_squared(int64_t i, int64_t j) const {
    const float* a = features + i * s_f;
    const float* b = features + j * s_f;
    double dot = 0.0;
    for (int64_t t = 0; t < dim; ++t) dot += static_cast<double>(a[t]) * static_cast<double>(b[t]);
    if (metric == Metric::Cosine) {
      const double la = std::max(std::sqrt(sq_norms[static_cast<size_t>(i)]), kCosineEps);
      const double lb = std::max(std::sqrt(sq_norms[static_cast<size_t>(j)]), kCosineEps);
      const float d = static_cast<float>(1.0 - dot / (la * lb));
      return d * d;
    }
    // A row's distance to itself is exact, as pairwise_distance makes it for x against x.
    const double sq = sq_norms[static_cast<size_t>(i)] + sq_norms[static_cast<size_t>(j)] - 2.0 * dot;
    const float d = metric == Metric::SqEuclidean
                        ? (i == j ? 0.0f : static_cast<float>(std::max(sq, 0.0)))
                        : (i == j ? static_cast<float>(std::sqrt(kEuclideanClamp))
                                  : static_cast<float>(std::sqrt(std::max(sq, kEuclideanClamp))));
    return d * d;
  }

  float squared(int64_t i, int64_t j) const {
    if (from_features) return features_squared(i, j);
    return is_double ? joint_squared<double>(i, j) : joint_squared<float>(i, j);
  }
};

// numpy's float32 pairwise summation (np.sum of a contiguous 1-D float32 array).
float pairwise_sum(const float* a, int64_t n) {
  if (n < 8) {
    float res = 0.0f;
    for (int64_t i = 0; i < n; ++i) res += a[i];
    return res;
  }
  if (n <= 128) {
    float r[8];
    for (int t = 0; t < 8; ++t) r[t] = a[t];
    int64_t i = 8;
    for (; i < n - (n % 8); i += 8)
      for (int t = 0; t < 8; ++t) r[t] += a[i + t];
    float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  int64_t n2 = n / 2;
  n2 -= n2 % 8;
  return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

struct SparseRow {
  std::vector<int32_t> index;  // increasing
  std::vector<float> value;
};

// Each row's first items, from rerank_topk_block: row i is rank + i * stride.
struct RankRows {
  const int64_t* rank = nullptr;
  int64_t stride = 0;
  const int64_t* row(int64_t i) const { return rank + i * stride; }
};

// R(i, k): the j among the k+1 first of row i whose own k+1 first contain i, in row i's order.
void reciprocal(const RankRows& ranks, int64_t i, int64_t k, std::vector<int32_t>& result) {
  result.clear();
  const int64_t* forward = ranks.row(i);
  for (int64_t a = 0; a <= k; ++a) {
    const int64_t* backward = ranks.row(forward[a]);
    for (int64_t b = 0; b <= k; ++b) {
      if (backward[b] == i) {
        result.push_back(static_cast<int32_t>(forward[a]));
        break;
      }
    }
  }
}

// Validates the pair-distance inputs (see rerank.h) and wraps them; features: squared norms precomputed.
PairSource make_pair_source(const ArrayView& features, Metric metric, const ArrayView& q_g, const ArrayView& q_q,
                            const ArrayView& g_g, int64_t num_query, int64_t n) {
  const int64_t num_gallery = n - num_query;
  PairSource source;
  source.num_query = num_query;
  if (features.ndim() == 2) {
    check_matrix(features, "features", false);
    check(features.dtype == DType::Float32 && features.size(0) == n, "features: expected float32 (N, D)");
    check(metric == Metric::Euclidean || metric == Metric::SqEuclidean || metric == Metric::Cosine,
          "metric: expected euclidean, sqeuclidean or cosine");
    source.from_features = true;
    source.features = features.ptr<float>();
    source.dim = features.size(1);
    source.s_f = features.stride(0);
    source.metric = metric;
    source.sq_norms.resize(static_cast<size_t>(n));
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const float* a = source.features + i * source.s_f;
      double s = 0.0;
      for (int64_t t = 0; t < source.dim; ++t) s += static_cast<double>(a[t]) * static_cast<double>(a[t]);
      source.sq_norms[static_cast<size_t>(i)] = s;
    }
    return source;
  }
  check_matrix(q_g, "q_g", false);
  check_matrix(q_q, "q_q", false);
  check_matrix(g_g, "g_g", false);
  check(q_g.dtype == q_q.dtype && q_g.dtype == g_g.dtype &&
            (q_g.dtype == DType::Float32 || q_g.dtype == DType::Float64),
        "q_g, q_q, g_g: expected one dtype, float32 or float64");
  check(q_g.size(0) == num_query && q_g.size(1) == num_gallery && q_q.size(0) == num_query &&
            q_q.size(1) == num_query && g_g.size(0) == num_gallery && g_g.size(1) == num_gallery,
        "q_g, q_q, g_g: expected shapes (Q, G), (Q, Q), (G, G)");
  source.is_double = q_g.dtype == DType::Float64;
  source.q_g = q_g.data;
  source.q_q = q_q.data;
  source.g_g = g_g.data;
  source.s_qg = q_g.stride(0);
  source.s_qq = q_q.stride(0);
  source.s_gg = g_g.stride(0);
  return source;
}

// Phase 1 (the torch backend's _reciprocal_mask at round(k1/2)): R(i, half) of every row.
std::vector<std::vector<int32_t>> half_reciprocal_sets(const RankRows& ranks, int64_t n, int64_t half) {
  std::vector<std::vector<int32_t>> sets(static_cast<size_t>(n));
#pragma omp parallel for schedule(dynamic, 64)
  for (int64_t i = 0; i < n; ++i) reciprocal(ranks, i, half, sets[static_cast<size_t>(i)]);
  return sets;
}

// Phase 2, steps 3-5 (_weights): each row's expanded k-reciprocal set (R(i, k1) plus every R(c, half) of its
// members c sharing more than 2/3 of its items with R(i, k1)), weighted exp(-d) and normalised to sum 1.
std::vector<SparseRow> weights(const RankRows& ranks, const PairSource& source, const float* row_max, int64_t n,
                               int64_t k1, const std::vector<std::vector<int32_t>>& half_sets) {
  std::vector<SparseRow> rows(static_cast<size_t>(n));
#pragma omp parallel
  {
    std::vector<int64_t> in_reciprocal(static_cast<size_t>(n), -1), in_expanded(static_cast<size_t>(n), -1);
    std::vector<int32_t> recip, expanded;
    std::vector<float> w;
#pragma omp for schedule(dynamic, 64)
    for (int64_t i = 0; i < n; ++i) {
      reciprocal(ranks, i, k1, recip);
      expanded.clear();
      for (int32_t x : recip) {
        in_reciprocal[static_cast<size_t>(x)] = i;
        in_expanded[static_cast<size_t>(x)] = i;
        expanded.push_back(x);
      }
      for (int32_t c : recip) {
        const std::vector<int32_t>& candidate = half_sets[static_cast<size_t>(c)];
        int64_t overlap = 0;
        for (int32_t x : candidate) overlap += in_reciprocal[static_cast<size_t>(x)] == i;
        if (static_cast<double>(overlap) > 2.0 / 3.0 * static_cast<double>(candidate.size())) {
          for (int32_t x : candidate) {
            if (in_expanded[static_cast<size_t>(x)] != i) {
              in_expanded[static_cast<size_t>(x)] = i;
              expanded.push_back(x);
            }
          }
        }
      }
      std::sort(expanded.begin(), expanded.end());
      w.resize(expanded.size());
      for (size_t t = 0; t < expanded.size(); ++t) w[t] = std::exp(-source.squared(i, expanded[t]) / row_max[i]);
      const float total = pairwise_sum(w.data(), static_cast<int64_t>(w.size()));
      SparseRow& row = rows[static_cast<size_t>(i)];
      row.index = expanded;
      row.value.resize(w.size());
      for (size_t t = 0; t < w.size(); ++t) row.value[t] = w[t] / total;
    }
  }
  return rows;
}

// Phase 3, step 6 (_query_expansion): row i becomes the mean of the rows of its k2 first items (self
// included), summed in rank order.
std::vector<SparseRow> query_expansion(const std::vector<SparseRow>& weight_rows, const RankRows& ranks, int64_t n,
                                       int64_t k2) {
  std::vector<SparseRow> rows(static_cast<size_t>(n));
#pragma omp parallel
  {
    std::vector<float> acc(static_cast<size_t>(n), 0.0f);
    std::vector<int64_t> seen(static_cast<size_t>(n), -1);
    std::vector<int32_t> touched;
#pragma omp for schedule(dynamic, 64)
    for (int64_t i = 0; i < n; ++i) {
      touched.clear();
      const int64_t* first = ranks.row(i);
      for (int64_t a = 0; a < k2; ++a) {
        const SparseRow& source_row = weight_rows[static_cast<size_t>(first[a])];
        for (size_t t = 0; t < source_row.index.size(); ++t) {
          const int32_t j = source_row.index[t];
          if (seen[static_cast<size_t>(j)] != i) {
            seen[static_cast<size_t>(j)] = i;
            acc[static_cast<size_t>(j)] = 0.0f;
            touched.push_back(j);
          }
          acc[static_cast<size_t>(j)] += source_row.value[t];
        }
      }
      std::sort(touched.begin(), touched.end());
      SparseRow& row = rows[static_cast<size_t>(i)];
      row.index = touched;
      row.value.resize(touched.size());
      const float count = static_cast<float>(k2);
      for (size_t t = 0; t < touched.size(); ++t) row.value[t] = acc[static_cast<size_t>(touched[t])] / count;
    }
  }
  return rows;
}

// The gallery rows by column: column j's entries are [column_start[j], column_start[j + 1]) of (item: gallery
// item, increasing; value).
struct InvertedIndex {
  std::vector<int64_t> column_start;
  std::vector<int32_t> item;
  std::vector<float> value;
};

// Phase 4, step 7 (gallery_inverted_index).
InvertedIndex gallery_inverted_index(const std::vector<SparseRow>& weight_rows, int64_t num_query) {
  const int64_t n = static_cast<int64_t>(weight_rows.size()), num_gallery = n - num_query;
  InvertedIndex index;
  std::vector<int64_t>& column_start = index.column_start;
  column_start.assign(static_cast<size_t>(n) + 1, 0);
  for (int64_t g = 0; g < num_gallery; ++g)
    for (int32_t j : weight_rows[static_cast<size_t>(num_query + g)].index) ++column_start[static_cast<size_t>(j) + 1];
  for (int64_t j = 0; j < n; ++j) column_start[static_cast<size_t>(j) + 1] += column_start[static_cast<size_t>(j)];
  index.item.resize(static_cast<size_t>(column_start.back()));
  index.value.resize(static_cast<size_t>(column_start.back()));
  std::vector<int64_t> fill(column_start.begin(), column_start.end() - 1);
  for (int64_t g = 0; g < num_gallery; ++g) {
    const SparseRow& row = weight_rows[static_cast<size_t>(num_query + g)];
    for (size_t t = 0; t < row.index.size(); ++t) {
      const int64_t at = fill[static_cast<size_t>(row.index[t])]++;
      index.item[static_cast<size_t>(at)] = static_cast<int32_t>(g);
      index.value[static_cast<size_t>(at)] = row.value[t];
    }
  }
  return index;
}

// Phase 5, step 7 for one query row: shared[g] = s = sum_j min(V[i, j], V[g, j]) in increasing j over the
// gallery rows sharing a column with row i, exactly as published. Every touched g is appended to `touched`
// once (marked in `seen`); each min is a positive weight, so the untouched g have s == 0.
void accumulate_overlap(const SparseRow& row, const InvertedIndex& index, float* shared, int64_t* seen, int64_t mark,
                        std::vector<int32_t>& touched) {
  touched.clear();
  const std::vector<int64_t>& column_start = index.column_start;
  for (size_t t = 0; t < row.index.size(); ++t) {
    const int32_t j = row.index[t];
    const float v = row.value[t];
    for (int64_t at = column_start[static_cast<size_t>(j)]; at < column_start[static_cast<size_t>(j) + 1]; ++at) {
      const int32_t g = index.item[static_cast<size_t>(at)];
      if (seen[g] != mark) {
        seen[g] = mark;
        touched.push_back(g);
      }
      shared[g] += std::min(v, index.value[static_cast<size_t>(at)]);
    }
  }
}

// The Jaccard term of the output, (1 - s / (2 - s)) * (1 - lambda), in the published float32 operations.
inline float jaccard_term(float s, float keep) {
  const float jaccard_distance = 1.0f - s / (2.0f - s);
  return jaccard_distance * keep;
}

// Phase 5 driver: visit(i, shared, touched) for every query row i (OpenMP over rows) after
// accumulate_overlap, with per-thread accumulators; shared is cleared at the touched items afterwards.
template <typename Visit>
void for_each_query_overlap(const std::vector<SparseRow>& weight_rows, const InvertedIndex& index,
                            int64_t num_query, int64_t num_gallery, Visit visit) {
#pragma omp parallel
  {
    std::vector<float> shared(static_cast<size_t>(num_gallery), 0.0f);
    std::vector<int64_t> seen(static_cast<size_t>(num_gallery), -1);
    std::vector<int32_t> touched;
#pragma omp for schedule(dynamic, 4)
    for (int64_t i = 0; i < num_query; ++i) {
      accumulate_overlap(weight_rows[static_cast<size_t>(i)], index, shared.data(), seen.data(), i, touched);
      visit(i, shared.data(), touched);
      for (int32_t g : touched) shared[static_cast<size_t>(g)] = 0.0f;
    }
  }
}

// Phase 5, steps 7-8 (_jaccard), dense: out = jaccard * (1 - lambda) + out * lambda for the query rows.
void jaccard(const std::vector<SparseRow>& weight_rows, const InvertedIndex& index, int64_t num_query,
             double lambda_value, const ArrayView& out) {
  const int64_t num_gallery = out.size(1), out_stride = out.stride(0);
  const float keep = static_cast<float>(1.0 - lambda_value);
  const float blend = static_cast<float>(lambda_value);
  for_each_query_overlap(weight_rows, index, num_query, num_gallery,
                         [&](int64_t i, const float* shared, std::vector<int32_t>&) {
                           float* result = out.ptr<float>() + i * out_stride;
                           for (int64_t g = 0; g < num_gallery; ++g) {
                             const float a = jaccard_term(shared[g], keep);
                             const float b = result[g] * blend;
                             result[g] = a + b;
                           }
                         });
}

// Phase 5, sparse: per query row, its touched gallery items (increasing) and their Jaccard terms.
RerankOverlap jaccard_overlap(const std::vector<SparseRow>& weight_rows, const InvertedIndex& index,
                              int64_t num_query, int64_t num_gallery, double lambda_value) {
  const float keep = static_cast<float>(1.0 - lambda_value);
  std::vector<std::vector<int32_t>> items(static_cast<size_t>(num_query));
  std::vector<std::vector<float>> terms(static_cast<size_t>(num_query));
  for_each_query_overlap(weight_rows, index, num_query, num_gallery,
                         [&](int64_t i, const float* shared, std::vector<int32_t>& touched) {
                           std::sort(touched.begin(), touched.end());
                           std::vector<float>& term = terms[static_cast<size_t>(i)];
                           term.resize(touched.size());
                           for (size_t t = 0; t < touched.size(); ++t) term[t] = jaccard_term(shared[touched[t]], keep);
                           items[static_cast<size_t>(i)] = touched;
                         });
  RerankOverlap result;
  result.offsets.assign(static_cast<size_t>(num_query) + 1, 0);
  for (int64_t i = 0; i < num_query; ++i)
    result.offsets[static_cast<size_t>(i) + 1] = result.offsets[static_cast<size_t>(i)] + items[static_cast<size_t>(i)].size();
  result.index.reserve(static_cast<size_t>(result.offsets.back()));
  result.term.reserve(static_cast<size_t>(result.offsets.back()));
  for (int64_t i = 0; i < num_query; ++i) {
    result.index.insert(result.index.end(), items[static_cast<size_t>(i)].begin(), items[static_cast<size_t>(i)].end());
    result.term.insert(result.term.end(), terms[static_cast<size_t>(i)].begin(), terms[static_cast<size_t>(i)].end());
    std::vector<int32_t>().swap(items[static_cast<size_t>(i)]);
    std::vector<float>().swap(terms[static_cast<size_t>(i)]);
  }
  return result;
}

// Steps 1-7 (everything before the Jaccard output): the query rows of V and the gallery rows' inverted index.
struct QueryRows {
  std::vector<SparseRow> weight_rows;  // the query rows only (the gallery rows are freed)
  InvertedIndex index;
};

QueryRows sparse_query_rows(const ArrayView& ranks, const ArrayView& row_max, const ArrayView& features,
                            Metric metric, const ArrayView& q_g, const ArrayView& q_q, const ArrayView& g_g,
                            int64_t num_query, int64_t k1, int64_t k2) {
  check_matrix(ranks, "ranks", false);
  check(ranks.dtype == DType::Int64, "ranks: expected int64");
  const int64_t n = ranks.size(0), width = ranks.size(1);
  check(num_query >= 1 && num_query < n, "num_query: expected 1 <= Q < N");
  check(k1 >= 1 && k1 < n && width >= k1 + 1, "ranks: expected at least k1 + 1 columns, 1 <= k1 < N");
  check(k2 >= 1 && k2 <= k1, "k2: expected 1 <= k2 <= k1");
  check(n < (int64_t(1) << 31), "re-ranking supports fewer than 2^31 items");
  check_vector(row_max, "row_max", n, DType::Float32);
  const PairSource source = make_pair_source(features, metric, q_g, q_q, g_g, num_query, n);
  const RankRows rank_rows{ranks.ptr<int64_t>(), ranks.stride(0)};

  QueryRows result;
  {
    const std::vector<std::vector<int32_t>> half_sets = half_reciprocal_sets(rank_rows, n, rerank_half_k1(k1));
    result.weight_rows = weights(rank_rows, source, row_max.ptr<float>(), n, k1, half_sets);
  }
  if (k2 != 1) result.weight_rows = query_expansion(result.weight_rows, rank_rows, n, k2);
  result.index = gallery_inverted_index(result.weight_rows, num_query);
  // Gallery rows are no longer needed: free them before the per-thread accumulators.
  result.weight_rows.resize(static_cast<size_t>(num_query));
  result.weight_rows.shrink_to_fit();
  return result;
}

}  // namespace

int64_t rerank_half_k1(int64_t k1) {
  const int64_t floor_half = k1 / 2;
  if (k1 % 2 == 0) return floor_half;
  return floor_half % 2 == 0 ? floor_half : floor_half + 1;  // x.5 rounds to the even neighbour
}

void rerank_finish(const ArrayView& ranks, const ArrayView& row_max, const ArrayView& features, Metric metric,
                   const ArrayView& q_g, const ArrayView& q_q, const ArrayView& g_g, int64_t num_query, int64_t k1,
                   int64_t k2, double lambda_value, const ArrayView& out) {
  check_matrix(out, "out", false);
  check(ranks.ndim() == 2, "ranks: expected an int64 (N, K) matrix");
  check(out.dtype == DType::Float32 && out.size(0) == num_query && out.size(1) == ranks.size(0) - num_query,
        "out: expected a float32 (Q, G) matrix");
  const QueryRows rows = sparse_query_rows(ranks, row_max, features, metric, q_g, q_q, g_g, num_query, k1, k2);
  jaccard(rows.weight_rows, rows.index, num_query, lambda_value, out);
}

RerankOverlap rerank_overlap(const ArrayView& ranks, const ArrayView& row_max, const ArrayView& features,
                             Metric metric, const ArrayView& q_g, const ArrayView& q_q, const ArrayView& g_g,
                             int64_t num_query, int64_t k1, int64_t k2, double lambda_value) {
  check(ranks.ndim() == 2, "ranks: expected an int64 (N, K) matrix");
  const QueryRows rows = sparse_query_rows(ranks, row_max, features, metric, q_g, q_q, g_g, num_query, k1, k2);
  return jaccard_overlap(rows.weight_rows, rows.index, num_query, ranks.size(0) - num_query, lambda_value);
}

}  // namespace cpu
}  // namespace reidfast
