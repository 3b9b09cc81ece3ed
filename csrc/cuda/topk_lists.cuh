// Ranked (value, column) entries and the sorted running top-k lists of the CUDA top-k kernels (topk.cu): the
// total order, the sentinel, and the warp-collective merge of a row's pending candidates into its list.
//
// Ranking: (value, column) entries
//   The lists rank the finished distances, exactly the values returned (for euclidean after the clamp and the
//   sqrt, not the squared distance: float sqrt is monotone but not strictly, and two squared distances with
//   the same sqrt must tie, i.e. list the smaller column first, as the contract and the reference do).
//   A candidate is one integer, the Entry: (order_bits(value) << 32 | column) for float32 accumulation (64
//   bits), (order_bits(value) << 64 | column) for float64 (128 bits). order_bits maps a float to an unsigned
//   integer with the same order (negatives flipped, -0 made +0, every NaN one canonical NaN that sorts after
//   +inf, like torch.sort), so one unsigned comparison is the total order "smaller distance, then smaller
//   column". Columns are distinct, so entries are distinct: the top-k set and its order are unique, and any
//   merge order gives the same result (deterministic, independent of chunks and scheduling). The sentinel
//   (all bits set) is larger than every real entry and fills lists that are not full yet.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "warp.cuh"

namespace reidfast {
namespace cuda {
namespace topk {

constexpr int kPending = 64;  // unsorted candidates a row may hold between merges

static_assert(kPending == 2 * kWarp, "merge_pending sorts the pending buffer with two entries per lane");

// An unsigned integer with the order of the float: -0 counts as +0, every NaN as one NaN after +inf.
__device__ __forceinline__ uint32_t order_bits(float value) {
  uint32_t bits = __float_as_uint(value);
  if (value != value) bits = 0x7fc00000u;
  else if (value == 0.0f) bits = 0u;
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}
__device__ __forceinline__ float from_order_bits(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}
__device__ __forceinline__ uint64_t order_bits(double value) {
  uint64_t bits = static_cast<uint64_t>(__double_as_longlong(value));
  if (value != value) bits = 0x7ff8000000000000ull;
  else if (value == 0.0) bits = 0ull;
  return (bits & 0x8000000000000000ull) ? ~bits : (bits | 0x8000000000000000ull);
}
__device__ __forceinline__ double from_order_bits(uint64_t key) {
  const uint64_t bits = (key & 0x8000000000000000ull) ? (key & 0x7fffffffffffffffull) : ~key;
  return __longlong_as_double(static_cast<long long>(bits));
}

// Entry = (order_bits(value), column) packed so that one unsigned comparison is the ranking order.
template <typename AccT>
struct Ranked;

template <>
struct Ranked<float> {
  using Entry = unsigned long long;
  __device__ __forceinline__ static Entry make(float value, int64_t column) {
    return (static_cast<Entry>(order_bits(value)) << 32) | static_cast<uint32_t>(column);
  }
  __device__ __forceinline__ static float value(Entry entry) {
    return from_order_bits(static_cast<uint32_t>(entry >> 32));
  }
  __device__ __forceinline__ static int64_t column(Entry entry) { return static_cast<uint32_t>(entry); }
};

template <>
struct Ranked<double> {
  using Entry = unsigned __int128;
  __device__ __forceinline__ static Entry make(double value, int64_t column) {
    return (static_cast<Entry>(order_bits(value)) << 64) | static_cast<uint32_t>(column);
  }
  __device__ __forceinline__ static double value(Entry entry) {
    return from_order_bits(static_cast<uint64_t>(entry >> 64));
  }
  __device__ __forceinline__ static int64_t column(Entry entry) { return static_cast<uint32_t>(entry); }
};

template <typename Entry>
__device__ __forceinline__ Entry sentinel() {
  return ~Entry(0);
}

// Number of elements of the sorted array[0, length) smaller than key (lower bound).
template <typename Entry>
__device__ __forceinline__ int count_less(const Entry* array, int length, Entry key) {
  int low = 0, high = length;
  while (low < high) {
    const int middle = (low + high) / 2;
    if (array[middle] < key) {
      low = middle + 1;
    } else {
      high = middle;
    }
  }
  return low;
}

// Warp-collective (all 32 lanes, warp-uniform arguments): merges the n <= kPending unsorted entries of
// `pending` (shared) into the sorted k-entry `list` (global), keeping the k smallest, and stores the new
// list[k - 1] in *threshold (shared). `scratch` (shared, k entries) is this warp's. See "Top-k maintenance".
template <typename Entry>
__device__ void merge_pending(Entry* __restrict__ list, int k, Entry* pending, int n, Entry* scratch,
                              Entry* threshold, int lane) {
  // 1. Sort pending: an entry's position is the number of smaller entries (entries are distinct).
  const Entry first = lane < n ? pending[lane] : sentinel<Entry>();
  const Entry second = lane + kWarp < n ? pending[lane + kWarp] : sentinel<Entry>();
  int first_rank = 0, second_rank = 0;
  for (int t = 0; t < n; ++t) {
    const Entry other = pending[t];
    first_rank += other < first;
    second_rank += other < second;
  }
  __syncwarp();
  if (lane < n) pending[first_rank] = first;
  if (lane + kWarp < n) pending[second_rank] = second;
  // 2. The list, to shared memory for the binary searches.
  for (int i = lane; i < k; i += kWarp) scratch[i] = list[i];
  __syncwarp();
  // 3. Scatter the first k of the merged order.
  for (int i = lane; i < k; i += kWarp) {
    const Entry entry = scratch[i];
    const int position = i + count_less(pending, n, entry);
    if (position < k) {
      if (position != i) list[position] = entry;
      if (position == k - 1) *threshold = entry;
    }
  }
  for (int j = lane; j < n; j += kWarp) {
    const Entry entry = pending[j];
    const int position = j + count_less(scratch, k, entry);
    if (position < k) {
      list[position] = entry;
      if (position == k - 1) *threshold = entry;
    }
  }
  __syncwarp();
}

}  // namespace topk
}  // namespace cuda
}  // namespace reidfast
