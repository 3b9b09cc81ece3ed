// Host-side helpers shared by the CUDA kernels' entry points (distance.cu, topk.cu, triplet.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <sstream>
#include <string>

#include "../common/array.h"
#include "cuda_check.h"

namespace reidfast {
namespace cuda {

inline int64_t ceil_div(int64_t numerator, int64_t denominator) { return (numerator + denominator - 1) / denominator; }

inline bool is_floating(DType dtype) {
  return dtype == DType::Float32 || dtype == DType::Float64 || dtype == DType::Float16 || dtype == DType::BFloat16;
}

// Makes `device` current for the guard's lifetime and restores the caller's device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    REIDFAST_CUDA_CHECK(cudaGetDevice(&previous_device_));
    if (previous_device_ != device) {
      REIDFAST_CUDA_CHECK(cudaSetDevice(device));
      switched_ = true;
    }
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(previous_device_);  // best effort: a destructor must not throw
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_device_ = 0;
  bool switched_ = false;
};

// x (N, D) and y (M, D) as the distance kernels take them: CUDA matrices with unit inner stride, one
// floating dtype, the same number of features.
inline void check_feature_pair(const ArrayView& x, const ArrayView& y) {
  check_matrix(x, "x", /*want_cuda=*/true);
  check_matrix(y, "y", /*want_cuda=*/true);
  std::ostringstream why;
  if (!is_floating(x.dtype)) {
    why << "x: expected float32, float64, float16 or bfloat16, got " << dtype_name(x.dtype);
    fail(why.str());
  }
  if (y.dtype != x.dtype) {
    why << "y: expected dtype " << dtype_name(x.dtype) << " to match x, got " << dtype_name(y.dtype);
    fail(why.str());
  }
  if (y.size(1) != x.size(1)) {
    why << "y: expected " << x.size(1) << " features per row to match x, got " << y.size(1);
    fail(why.str());
  }
}

// A kernel's scratch: a 1-D uint8 array of at least `bytes` (as `sizing_call` reports them), and when any
// is needed contiguous, `alignment`-aligned and on `device` (whose owner `device_of` names).
inline void check_workspace(const ArrayView& workspace, int64_t bytes, const std::string& sizing_call, int device,
                            const char* device_of, int alignment) {
  std::ostringstream why;
  if (workspace.ndim() != 1) {
    why << "workspace: expected a 1-D array, got " << workspace.ndim() << "-D";
    fail(why.str());
  }
  if (workspace.dtype != DType::UInt8) {
    why << "workspace: expected dtype uint8, got " << dtype_name(workspace.dtype);
    fail(why.str());
  }
  if (workspace.size(0) < bytes) {
    why << "workspace: expected at least " << bytes << " bytes (" << sizing_call << "), got " << workspace.size(0);
    fail(why.str());
  }
  if (bytes == 0) return;
  if (workspace.size(0) > 1 && workspace.stride(0) != 1) {
    why << "workspace: expected a contiguous array (stride 1), got stride " << workspace.stride(0);
    fail(why.str());
  }
  if (!workspace.on_cuda() || workspace.device != device) {
    why << "workspace: expected CUDA memory on device cuda:" << device << " (that of " << device_of << ")";
    fail(why.str());
  }
  const std::uintptr_t offset = reinterpret_cast<std::uintptr_t>(workspace.data) % alignment;
  if (offset != 0) {
    why << "workspace: expected a" << (alignment == 8 ? "n " : " ") << alignment
        << "-byte aligned address (a fresh allocation), got offset " << offset;
    fail(why.str());
  }
}

}  // namespace cuda
}  // namespace reidfast
