// Turns a failed CUDA runtime call into a C++ exception (pybind11 surfaces it as a Python RuntimeError).
#pragma once

#include <cuda_runtime.h>

#include <sstream>
#include <stdexcept>

namespace reidfast {
namespace cuda {

inline void check_cuda(cudaError_t status, const char* call, const char* file, int line) {
  if (status == cudaSuccess) return;
  std::ostringstream message;
  message << "CUDA error in " << call << " (" << file << ":" << line << "): " << cudaGetErrorName(status) << ": "
          << cudaGetErrorString(status);
  throw std::runtime_error(message.str());
}

}  // namespace cuda
}  // namespace reidfast

// REIDFAST_CUDA_CHECK(cudaMemsetAsync(...)); throws std::runtime_error naming the call on failure.
#define REIDFAST_CUDA_CHECK(call) ::reidfast::cuda::check_cuda((call), #call, __FILE__, __LINE__)
