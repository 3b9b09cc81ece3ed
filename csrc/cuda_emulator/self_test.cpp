// Small kernels, in CUDA dialect, that check the emulator itself (tests/test_cuda_emulator.py): barrier and
// warp-collective semantics, the faults it reports, and launch-configuration errors. Emulator build only.
#include "self_test.h"

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "../cuda/launch.cuh"

namespace reidfast {
namespace emulator {
namespace self_test {
namespace {

constexpr int kMaxThreads = 1024;
constexpr unsigned kFullMask = 0xffffffffu;

// out[i] = in[i] reversed within each block: a thread reads what another wrote, so it needs the barrier.
__global__ void mirror_kernel(const int* in, int* out, bool barrier) {
  __shared__ int staged[kMaxThreads];
  const int t = static_cast<int>(threadIdx.x), n = static_cast<int>(blockDim.x);
  const int base = static_cast<int>(blockIdx.x) * n;
  staged[t] = in[base + t];
  if (barrier) __syncthreads();
  out[base + t] = staged[n - 1 - t];
}

// Each lane gets its warp's sum (xor butterfly) and the warp's ballot of odd inputs.
__global__ void warp_kernel(const int* in, int* sums, unsigned* ballots) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  int value = in[i];
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(kFullMask, value, offset);
  sums[i] = value;
  ballots[i] = __ballot_sync(kFullMask, in[i] & 1);
}

// Lane 0 of each warp exits before the full-mask shuffle of the other lanes.
__global__ void early_exit_kernel(int* out) {
  if (threadIdx.x % 32 == 0) return;
  out[threadIdx.x] = __shfl_xor_sync(kFullMask, 1, 1);
}

// Thread 0 waits at __syncthreads, the rest of its warp at __syncwarp: neither barrier can complete.
__global__ void deadlock_kernel(int* out) {
  if (threadIdx.x == 0) {
    __syncthreads();
  } else {
    __syncwarp();
  }
  out[threadIdx.x] = 1;
}

// A full-mask collective in a warp of fewer than 32 threads.
__global__ void partial_warp_kernel(int* out) { out[threadIdx.x] = __shfl_xor_sync(kFullMask, 1, 1); }

// Copies the first blockDim.x bytes of dynamic shared memory, unwritten (the emulator fills it with 0xFF).
__global__ void dynamic_shared_kernel(int* out) {
  REIDFAST_DYNAMIC_SHARED(bytes);
  out[threadIdx.x] = bytes[threadIdx.x];
}

__global__ void empty_kernel() {}

std::vector<int> run_int_kernel(const char* name, int threads, int blocks) {
  std::vector<int> out(static_cast<std::size_t>(threads) * static_cast<std::size_t>(blocks), 0);
  const std::string kernel(name);
  if (kernel == "early_exit") {
    REIDFAST_LAUNCH(early_exit_kernel, blocks, threads, 0, nullptr)(out.data());
  } else if (kernel == "deadlock") {
    REIDFAST_LAUNCH(deadlock_kernel, blocks, threads, 0, nullptr)(out.data());
  } else if (kernel == "partial_warp") {
    REIDFAST_LAUNCH(partial_warp_kernel, blocks, threads, 0, nullptr)(out.data());
  } else if (kernel == "dynamic_shared") {
    REIDFAST_LAUNCH(dynamic_shared_kernel, blocks, threads, static_cast<std::size_t>(threads), nullptr)(out.data());
  } else {
    throw std::invalid_argument("kernel: unknown self-test kernel '" + kernel + "'");
  }
  return out;
}

}  // namespace

std::vector<int> mirror(const std::vector<int>& values, int threads, bool barrier) {
  if (threads <= 0 || threads > kMaxThreads || values.size() % static_cast<std::size_t>(threads) != 0)
    throw std::invalid_argument("values: expected a whole number of blocks of `threads` (1..1024) values");
  std::vector<int> out(values.size(), 0);
  const int blocks = static_cast<int>(values.size() / static_cast<std::size_t>(threads));
  REIDFAST_LAUNCH(mirror_kernel, blocks, threads, 0, nullptr)(values.data(), out.data(), barrier);
  return out;
}

std::pair<std::vector<int>, std::vector<unsigned>> warp_sums_and_ballots(const std::vector<int>& values) {
  if (values.empty() || values.size() % 32 != 0 || values.size() > 32 * 32)
    throw std::invalid_argument("values: expected 32 to 1024 values, a multiple of 32");
  std::vector<int> sums(values.size());
  std::vector<unsigned> ballots(values.size());
  REIDFAST_LAUNCH(warp_kernel, 1, static_cast<int>(values.size()), 0, nullptr)(values.data(), sums.data(),
                                                                                 ballots.data());
  return {sums, ballots};
}

std::vector<int> run(const std::string& kernel, int threads, int blocks) {
  return run_int_kernel(kernel.c_str(), threads, blocks);
}

std::string launch_error(unsigned grid_x, unsigned grid_y, unsigned block_x, std::size_t shared_bytes,
                         int max_dynamic_shared_bytes) {
  cudaGetLastError();  // clear
  if (max_dynamic_shared_bytes >= 0) {
    const cudaError_t status =
        cudaFuncSetAttribute(empty_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_dynamic_shared_bytes);
    if (status != cudaSuccess) return cudaGetErrorName(cudaGetLastError());
  }
  REIDFAST_LAUNCH(empty_kernel, dim3(grid_x, grid_y), block_x, shared_bytes, nullptr)();
  const std::string error = cudaGetErrorName(cudaGetLastError());
  cudaFuncSetAttribute(empty_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 0);  // reset for the next call
  return error;
}

}  // namespace self_test
}  // namespace emulator
}  // namespace reidfast
