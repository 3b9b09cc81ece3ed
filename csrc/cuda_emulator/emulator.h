// A CPU emulator for the CUDA kernels of csrc/cuda, so that tests run them on machines without a GPU.
//
// The .cu sources are compiled by the host C++ compiler with this header standing in for the CUDA
// headers (csrc/cuda_emulator/include/cuda_runtime.h etc.). Every CUDA thread of a block is a fiber (its own
// stack, switched by hand on x86-64 Linux, by ucontext elsewhere) on the calling OS thread; blocks run one
// after another. A fiber runs until it reaches a
// barrier (__syncthreads, or a warp collective: __syncwarp, __shfl_xor_sync, __ballot_sync), and the
// scheduler resumes it once every thread the barrier covers has arrived. Because fibers switch only at
// barriers, a kernel that reads shared memory another thread writes without a barrier in between sees the
// write or not depending on the order threads run in: set_schedule("reverse") or ("shuffle", seed) exposes
// such races, and lanes of a warp never run in lockstep (as on Volta and later).
//
// `__shared__` variables become function statics: one copy, reused by the blocks in turn (so only one
// launch runs at a time, under a process-wide lock). Dynamic shared memory is filled with 0xFF bytes (NaN
// for floats) before each block, so reads of unwritten dynamic shared memory show up.
//
// Checked like the CUDA runtime (the launch fails, and cudaGetLastError reports it): block size 1..1024,
// grid limits, dynamic shared memory above 48 KiB without cudaFuncSetAttribute, above the sm_90 limit
// (227 KiB). Checked beyond it (the launch throws std::runtime_error naming the kernel's block and thread):
// warp collectives need all 32 lanes present and unexited (full masks only), and a barrier that can never
// be reached (deadlock) is reported instead of hanging.
// atomicAdd (unsigned long long) is a plain read-modify-write: fibers switch only at barriers, so it is atomic.
// Not emulated: cooperative groups, streams (launches run synchronously), global-memory bounds.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};

typedef struct CUstream_st* cudaStream_t;

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorLaunchFailure = 719,
};

enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};

namespace reidfast {
namespace emulator {

struct ThreadCoordinates {
  uint3 thread;
  uint3 block;
  dim3 block_dim;
  dim3 grid_dim;
};

// Of the emulated CUDA thread that is running (threadIdx, blockIdx, blockDim, gridDim).
const ThreadCoordinates& coordinates();

void sync_block();
void sync_warp(unsigned int mask);
std::uint64_t shuffle_xor(std::uint64_t bits, unsigned int mask, int lane_mask, int width);
unsigned int ballot(unsigned int mask, bool predicate);
unsigned char* dynamic_shared();

cudaError_t set_max_dynamic_shared_bytes(const void* kernel, int bytes);
// Runs `body` as every thread of every block of the grid; the launch's error (if any) goes to
// cudaGetLastError, a fault inside the kernel is thrown.
void launch(const void* kernel, dim3 grid, dim3 block, std::size_t dynamic_shared_bytes,
            const std::function<void()>& body);

// The order threads run in between barriers: "forward", "reverse" or "shuffle" (a fresh seeded
// permutation at every scheduling pass). Blocks always run in order.
void set_schedule(const char* order, std::uint64_t seed);
struct Statistics {
  std::uint64_t launches = 0, blocks = 0, threads = 0, barriers = 0, warp_collectives = 0;
};
Statistics statistics();
void reset_statistics();

template <typename... Params>
class Launcher {
 public:
  Launcher(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes)
      : kernel_(kernel), grid_(grid), block_(block), shared_bytes_(shared_bytes) {}

  template <typename... Args>
  void operator()(Args&&... args) const {
    static_assert(sizeof...(Args) == sizeof...(Params), "a kernel launch needs one argument per parameter");
    // Each CUDA thread receives its own copy of the parameters, as on the device.
    const std::tuple<std::decay_t<Params>...> parameters(std::forward<Args>(args)...);
    auto* const kernel = kernel_;
    launch(reinterpret_cast<const void*>(kernel), grid_, block_, shared_bytes_,
           [&parameters, kernel] { std::apply(kernel, parameters); });
  }

 private:
  void (*kernel_)(Params...);
  dim3 grid_, block_;
  std::size_t shared_bytes_;
};

template <typename... Params>
Launcher<Params...> make_launcher(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes,
                                  cudaStream_t /*stream: launches run synchronously*/) {
  return Launcher<Params...>(kernel, grid, block, shared_bytes);
}

template <typename T>
T from_bits(std::uint64_t bits) {
  T value;
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

template <typename T>
std::uint64_t to_bits(T value) {
  std::uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  return bits;
}

}  // namespace emulator
}  // namespace reidfast

#define threadIdx (::reidfast::emulator::coordinates().thread)
#define blockIdx (::reidfast::emulator::coordinates().block)
#define blockDim (::reidfast::emulator::coordinates().block_dim)
#define gridDim (::reidfast::emulator::coordinates().grid_dim)

// --- device intrinsics ---------------------------------------------------------------------------------
inline void __syncthreads() { ::reidfast::emulator::sync_block(); }
inline void __syncwarp(unsigned int mask = 0xffffffffu) { ::reidfast::emulator::sync_warp(mask); }

template <typename T>
inline T __shfl_xor_sync(unsigned int mask, T value, int lane_mask, int width = 32) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffles move words of up to 8 bytes");
  namespace emu = ::reidfast::emulator;
  return emu::from_bits<T>(emu::shuffle_xor(emu::to_bits(value), mask, lane_mask, width));
}

inline unsigned int __ballot_sync(unsigned int mask, int predicate) {
  return ::reidfast::emulator::ballot(mask, predicate != 0);
}

inline int __popc(unsigned int value) { return __builtin_popcount(value); }
inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  const unsigned long long old = *address;  // atomic here: a fiber runs uninterrupted between barriers
  *address = old + value;
  return old;
}
// Explicitly rounded single-precision operations (never contracted into an FMA): plain IEEE ones here.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __uint_as_float(unsigned int bits) { return ::reidfast::emulator::from_bits<float>(bits); }
inline unsigned int __float_as_uint(float value) {
  return static_cast<unsigned int>(::reidfast::emulator::to_bits(value));
}
inline double __longlong_as_double(long long bits) {
  return ::reidfast::emulator::from_bits<double>(static_cast<std::uint64_t>(bits));
}
inline long long __double_as_longlong(double value) {
  return static_cast<long long>(::reidfast::emulator::to_bits(value));
}

// CUDA's integer min/max overloads of the global namespace.
inline int min(int a, int b) { return b < a ? b : a; }
inline int max(int a, int b) { return a < b ? b : a; }
inline long min(long a, long b) { return b < a ? b : a; }
inline long max(long a, long b) { return a < b ? b : a; }
inline long long min(long long a, long long b) { return b < a ? b : a; }
inline long long max(long long a, long long b) { return a < b ? b : a; }

// --- runtime API -----------------------------------------------------------------------------------------
cudaError_t cudaGetLastError();
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaRuntimeGetVersion(int* version);
const char* cudaGetErrorName(cudaError_t error);
const char* cudaGetErrorString(cudaError_t error);

template <typename... Params>
cudaError_t cudaFuncSetAttribute(void (*kernel)(Params...), cudaFuncAttribute attribute, int value) {
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return ::reidfast::emulator::set_max_dynamic_shared_bytes(reinterpret_cast<const void*>(kernel), value);
}
