// The fused kernels' inputs as float32 panels (gemm_driver.h): the float16/bfloat16 -> float32 conversion,
// the packing with the rows' norms, the checks on the inputs, and the per-call workspace.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "gemm_driver.h"

namespace reidfast {
namespace cpu {
namespace gemm {
namespace {

float half_to_float(uint16_t half) {
  const uint32_t sign = static_cast<uint32_t>(half & 0x8000u) << 16;
  uint32_t exponent = (half >> 10) & 0x1fu, mantissa = half & 0x3ffu, bits;
  if (exponent == 0x1fu) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf, NaN
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    uint32_t shift = 0;
    while (!(mantissa & 0x400u)) {
      mantissa <<= 1;
      ++shift;
    }
    bits = sign | ((113u - shift) << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

float bfloat16_to_float(uint16_t bfloat) {
  const uint32_t bits = static_cast<uint32_t>(bfloat) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

constexpr int64_t kCachedWorkspaceBytes = int64_t{16} << 20;

}  // namespace

const float* Rows::row(int64_t i, float* scratch) const {
  const char* source = data + i * stride_bytes;
  if (dtype == DType::Float32) return reinterpret_cast<const float*>(source);
  const uint16_t* halves = reinterpret_cast<const uint16_t*>(source);
  if (dtype == DType::Float16) {
    for (int64_t p = 0; p < depth; ++p) scratch[p] = half_to_float(halves[p]);
  } else {
    for (int64_t p = 0; p < depth; ++p) scratch[p] = bfloat16_to_float(halves[p]);
  }
  return scratch;
}

void pack(const IsaKernels& isa, const Rows& rows, int64_t first, int64_t count, int width, float* packed,
          float* scratch, float* sq_norms, float* lengths) {
  const float* sources[32];  // width <= 32: NR and MR (gemm_isa.inc)
  for (int64_t panel = 0; panel * width < count; ++panel) {
    const int lanes = static_cast<int>(std::min<int64_t>(width, count - panel * width));
    for (int lane = 0; lane < lanes; ++lane) {
      const int64_t i = panel * width + lane;
      sources[lane] = rows.row(first + i, scratch + lane * rows.depth);
      if (!sq_norms) continue;
      sq_norms[i] = isa.sq_norm(sources[lane], rows.depth);
      if (lengths) lengths[i] = std::max(std::sqrt(sq_norms[i]), static_cast<float>(kCosineEps));
    }
    isa.pack_panel(sources, lanes, width, rows.depth, packed + panel * rows.depth * width);
  }
}

AlignedFloats::AlignedFloats(int64_t count) : capacity(count) {
  const size_t bytes = static_cast<size_t>(round_up(std::max<int64_t>(count, 1) * 4, 64));
  data.reset(static_cast<float*>(::operator new(bytes, std::align_val_t{64})));  // throws std::bad_alloc
}

Workspace::Workspace(int64_t floats) {
  if (floats * 4 <= kCachedWorkspaceBytes) {
    thread_local AlignedFloats cached;
    if (cached.capacity < floats) cached = AlignedFloats(floats);
    data_ = cached.get();
  } else {
    own_ = AlignedFloats(floats);
    data_ = own_.get();
  }
}

void check_features(const ArrayView& view, const char* name) {
  check_matrix(view, name, /*want_cuda=*/false);
  check(view.dtype == DType::Float32 || view.dtype == DType::Float16 || view.dtype == DType::BFloat16,
        std::string(name) + ": expected float32, float16 or bfloat16, got " + dtype_name(view.dtype));
  check(view.size(0) >= 0 && view.size(1) >= 1, std::string(name) + ": expected at least one feature");
}

void check_pair(const ArrayView& x, const ArrayView& y) {
  check_features(x, "x");
  check_features(y, "y");
  check(x.size(1) == y.size(1), "y: expected as many features as x");
  check(x.dtype == y.dtype, "y: expected the dtype of x");
}

void check_output(const ArrayView& view, const char* name, int64_t rows, int64_t cols, DType dtype) {
  check(view.ndim() == 2 && view.size(0) == rows && view.size(1) == cols && view.dtype == dtype && !view.on_cuda() &&
            (cols <= 1 || view.stride(1) == 1),
        std::string(name) + ": expected a host (" + std::to_string(rows) + ", " + std::to_string(cols) + ") " +
            dtype_name(dtype) + " array with unit inner stride");
}

}  // namespace gemm
}  // namespace cpu
}  // namespace reidfast
