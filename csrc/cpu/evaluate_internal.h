// What the Market-1501 (evaluate.cpp) and CUHK03 (evaluate_cuhk03.cpp) CPU evaluations share: the label
// checks, the gallery grouped by pid, and the ranking key (distance, then gallery index).
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "../common/array.h"

// The counting loops are the hot spot: on x86-64 GCC also compiles them for AVX2 (twice the lanes of the
// baseline SSE2) and picks the version at load time (ifunc), so the module still runs on any x86-64 CPU.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define REIDFAST_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define REIDFAST_SIMD_CLONES
#endif

namespace reidfast {
namespace cpu {
namespace evaluate_detail {

inline void check_label_vector(const ArrayView& a, const char* name, int64_t length, const char* length_source) {
  std::ostringstream why;
  if (a.on_cuda()) {
    why << name << ": expected host memory";
    fail(why.str());
  }
  if (a.ndim() != 1 || a.size(0) != length) {
    why << name << ": expected a vector of length " << length << " (" << length_source << ")";
    fail(why.str());
  }
  if (length > 1 && a.stride(0) != 1) {
    why << name << ": expected a contiguous vector, got stride " << a.stride(0);
    fail(why.str());
  }
  if (a.dtype != DType::Int64) {
    why << name << ": expected int64 labels, got " << dtype_name(a.dtype);
    fail(why.str());
  }
}

// A host float32/float64 distmat (Q, G) and its four label vectors.
inline void check_ranking_inputs(const ArrayView& distmat, const ArrayView& q_pids, const ArrayView& g_pids,
                                 const ArrayView& q_camids, const ArrayView& g_camids) {
  check_matrix(distmat, "distmat", /*want_cuda=*/false);
  if (distmat.dtype != DType::Float32 && distmat.dtype != DType::Float64) {
    fail(std::string("distmat: the CPU kernel takes float32 or float64 distances, got ") + dtype_name(distmat.dtype));
  }
  const int64_t num_query = distmat.size(0), num_gallery = distmat.size(1);
  check_label_vector(q_pids, "q_pids", num_query, "distmat rows");
  check_label_vector(q_camids, "q_camids", num_query, "distmat rows");
  check_label_vector(g_pids, "g_pids", num_gallery, "distmat columns");
  check_label_vector(g_camids, "g_camids", num_gallery, "distmat columns");
}

// Gallery indices grouped by pid: indices[begin(pid) .. end(pid)) in increasing gallery index.
struct GalleryByPid {
  std::vector<int64_t> pids;     // sorted
  std::vector<int64_t> indices;  // gallery index of each entry of `pids`

  explicit GalleryByPid(const int64_t* g_pids, int64_t num_gallery) : indices(static_cast<size_t>(num_gallery)) {
    std::iota(indices.begin(), indices.end(), int64_t{0});
    std::stable_sort(indices.begin(), indices.end(), [g_pids](int64_t a, int64_t b) { return g_pids[a] < g_pids[b]; });
    pids.resize(indices.size());
    for (size_t i = 0; i < indices.size(); ++i) pids[i] = g_pids[indices[i]];
  }
};

template <typename T>
struct Match {
  T distance;
  int64_t index;
};

// Key order of the ranking: by distance, then by gallery index (the order of a stable sort).
template <typename T>
inline bool key_less(T distance_a, int64_t index_a, T distance_b, int64_t index_b) {
  return distance_a < distance_b || (distance_a == distance_b && index_a < index_b);
}

}  // namespace evaluate_detail
}  // namespace cpu
}  // namespace reidfast
