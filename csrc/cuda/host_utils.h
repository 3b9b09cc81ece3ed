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
// floating dtype, the same number of features. Messages name them x_name and y_name.
inline void check_feature_pair(const ArrayView& x, const ArrayView& y, const char* x_name = "x",
                               const char* y_name = "y") {
  check_matrix(x, x_name, /*want_cuda=*/true);
  check_matrix(y, y_name, /*want_cuda=*/true);
  std::ostringstream why;
  if (!is_floating(x.dtype)) {
    why << x_name << ": expected float32, float64, float16 or bfloat16, got " << dtype_name(x.dtype);
    fail(why.str());
  }
  if (y.dtype != x.dtype) {
    why << y_name << ": expected dtype " << dtype_name(x.dtype) << " to match " << x_name << ", got "
        << dtype_name(y.dtype);
    fail(why.str());
  }
  if (y.size(1) != x.size(1)) {
    why << y_name << ": expected " << x.size(1) << " features per row to match " << x_name << ", got " << y.size(1);
    fail(why.str());
  }
}

// A contiguous CUDA vector of `length` elements (any length when length < 0) of `dtype` on `device`, the
// device of the array named `device_of`.
inline void check_cuda_vector(const ArrayView& a, const char* name, int64_t length, DType dtype, int device,
                              const char* device_of) {
  std::ostringstream why;
  if (a.ndim() != 1) {
    why << name << ": expected a 1-D array, got " << a.ndim() << "-D";
    fail(why.str());
  }
  if (length >= 0 && a.size(0) != length) {
    why << name << ": expected length " << length << ", got " << a.size(0);
    fail(why.str());
  }
  if (a.dtype != dtype) {
    why << name << ": expected dtype " << dtype_name(dtype) << ", got " << dtype_name(a.dtype);
    fail(why.str());
  }
  if (a.size(0) > 1 && a.stride(0) != 1) {
    why << name << ": expected a contiguous array (stride 1), got stride " << a.stride(0);
    fail(why.str());
  }
  if (!a.on_cuda()) {
    why << name << ": expected CUDA memory";
    fail(why.str());
  }
  if (a.device != device) {
    why << name << ": expected device cuda:" << device << " (that of " << device_of << "), got cuda:" << a.device;
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
