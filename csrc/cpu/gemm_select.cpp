// The run-time choice of the fused kernels' instruction set, their cache blocking, and the OpenMP queries
// the drivers use (gemm_driver.h).
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "gemm_driver.h"
#include "gemm_kernels.h"

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>  // sysconf: the cache sizes
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace reidfast {
namespace cpu {
namespace gemm {
namespace {

// The L2 cache size in bytes from the OS (glibc's sysconf on Linux), else `fallback`.
int64_t l2_cache_bytes(int64_t fallback) {
#if defined(_SC_LEVEL2_CACHE_SIZE)
  const long bytes = sysconf(_SC_LEVEL2_CACHE_SIZE);
  if (bytes >= 65536) return static_cast<int64_t>(bytes);
#endif
  return fallback;
}

bool cpu_has_avx512() {
#if REIDFAST_X86_SIMD
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool cpu_has_avx2() {
#if REIDFAST_X86_SIMD
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

const IsaKernels* usable_avx512() {
  static const IsaKernels* kernels = cpu_has_avx512() ? avx512_kernels() : nullptr;
  return kernels;
}

const IsaKernels* usable_avx2() {
  static const IsaKernels* kernels = cpu_has_avx2() ? avx2_kernels() : nullptr;
  return kernels;
}

}  // namespace

// The y block: the whole L2 up to 512 KiB, and 512-step depth chunks (an A tile chunk of 12 KiB for AVX2,
// 16 KiB for AVX-512). Tuned on a 2-core Zen 5 (1 MiB L2: 384-768 KiB blocks measured alike); on a Zen 3 (32 KiB
// L1d, 512 KiB L2) 128 KiB - 1 MiB blocks and 256 - 1024-step chunks measured within 4% for the B = 256,
// D = 2048 and B = 4096, D = 256 minings, and half the L2 with 448-step chunks was no faster for 2048 x 2048 x
// 2048 distances (within the ~5% noise of a loaded machine). A CPU with a smaller L2 gets its L2 size.
CacheBlocking cache_blocking(const IsaKernels&) {
  static const int64_t l2 = l2_cache_bytes(int64_t{512} << 10);
  return CacheBlocking{std::min<int64_t>(l2, int64_t{512} << 10), 512};
}

const IsaKernels& select_kernels(GemmKernel kernel) {
  const IsaKernels* chosen = nullptr;
  switch (kernel) {
    case GemmKernel::Auto: chosen = usable_avx512() ? usable_avx512() : usable_avx2(); break;
    case GemmKernel::Avx512: chosen = usable_avx512(); break;
    case GemmKernel::Avx2: chosen = usable_avx2(); break;
  }
  if (chosen == nullptr) {
    const char* name = kernel == GemmKernel::Avx512 ? "avx512" : kernel == GemmKernel::Avx2 ? "avx2" : "any SIMD";
    fail(std::string("kernel: ") + name +
         " micro-kernel is not available (not compiled for this platform, or the CPU lacks the instructions); "
         "use the BLAS path instead");
  }
  return *chosen;
}

int max_threads() {
#ifdef _OPENMP
  return std::max(1, omp_get_max_threads());
#else
  return 1;
#endif
}

int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

}  // namespace gemm

std::vector<std::string> supported_gemm_kernels() {
  std::vector<std::string> names;
  if (gemm::usable_avx512()) names.emplace_back("avx512");
  if (gemm::usable_avx2()) names.emplace_back("avx2");
  return names;
}

}  // namespace cpu
}  // namespace reidfast
