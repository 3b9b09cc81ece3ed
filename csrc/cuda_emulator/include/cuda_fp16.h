// Stand-in for cuda_fp16.h in the CPU emulator: __half with round-to-nearest-even conversions (the same
// bits as the device's __float2half_rn and torch.float16).
#pragma once

#include <cstdint>
#include <cstring>

struct __half {
  std::uint16_t bits;
};

inline float __half2float(__half value) {
  _Float16 half;
  std::memcpy(&half, &value.bits, sizeof(half));
  return static_cast<float>(half);
}

inline __half __float2half_rn(float value) {
  const _Float16 half = static_cast<_Float16>(value);  // IEEE conversion: round to nearest even
  __half out;
  std::memcpy(&out.bits, &half, sizeof(half));
  return out;
}
