// A borrowed view of an array owned by Python (torch, numpy or cupy): pointer, dtype, shape and
// strides in elements. The native module never allocates user-visible memory and never links libtorch.
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace reidfast {

// Codes shared with reidfast/_native.py (DTYPE_CODES); keep both in sync.
enum class DType : int {
  Float32 = 0,
  Float64 = 1,
  Float16 = 2,
  BFloat16 = 3,
  Int32 = 4,
  Int64 = 5,
  Bool = 6,
  UInt8 = 7,
};

inline const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Int32: return "int32";
    case DType::Int64: return "int64";
    case DType::Bool: return "bool";
    case DType::UInt8: return "uint8";
  }
  return "unknown";
}

// Metric codes shared with reidfast/_native.py (METRIC_CODES).
enum class Metric : int { Euclidean = 0, SqEuclidean = 1, Cosine = 2 };

constexpr double kEuclideanClamp = 1e-12;  // sqrt(max(d2, 1e-12)), as in DESIGN.md
constexpr double kCosineEps = 1e-12;       // x / max(|x|, 1e-12)

struct ArrayView {
  void* data = nullptr;
  DType dtype = DType::Float32;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // in elements, not bytes
  int device = -1;               // -1: host memory; >= 0: CUDA device ordinal

  int64_t ndim() const { return static_cast<int64_t>(shape.size()); }
  int64_t size(int64_t dim) const { return shape.at(static_cast<size_t>(dim)); }
  int64_t stride(int64_t dim) const { return strides.at(static_cast<size_t>(dim)); }
  bool on_cuda() const { return device >= 0; }

  template <typename T>
  T* ptr() const { return static_cast<T*>(data); }
};

[[noreturn]] inline void fail(const std::string& message) { throw std::invalid_argument(message); }

inline void check(bool condition, const std::string& message) {
  if (!condition) fail(message);
}

// Checks the contract the Python layer promises: rank, dtype, unit inner stride, device.
inline void check_matrix(const ArrayView& a, const char* name, bool want_cuda) {
  std::ostringstream why;
  if (a.ndim() != 2) {
    why << name << ": expected a 2-D array, got " << a.ndim() << "-D";
    fail(why.str());
  }
  if (a.size(1) > 1 && a.stride(1) != 1) {
    why << name << ": expected unit stride along the last dimension, got " << a.stride(1);
    fail(why.str());
  }
  if (a.on_cuda() != want_cuda) {
    why << name << ": expected " << (want_cuda ? "CUDA" : "host") << " memory";
    fail(why.str());
  }
}

// A contiguous host vector of `length` elements of `dtype`.
inline void check_vector(const ArrayView& a, const char* name, int64_t length, DType dtype) {
  check(a.ndim() == 1 && a.size(0) == length && (length <= 1 || a.stride(0) == 1) && !a.on_cuda(),
        std::string(name) + ": expected a contiguous host vector of length " + std::to_string(length));
  check(a.dtype == dtype, std::string(name) + ": expected dtype " + dtype_name(dtype) + ", got " + dtype_name(a.dtype));
}

}  // namespace reidfast
