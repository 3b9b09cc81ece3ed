// Stand-in for cuda_bf16.h in the CPU emulator: __nv_bfloat16 with round-to-nearest-even conversions (the
// same bits as the device's __float2bfloat16_rn and torch.bfloat16).
#pragma once

#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
  std::uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 value) {
  const std::uint32_t bits = static_cast<std::uint32_t>(value.bits) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

inline __nv_bfloat16 __float2bfloat16_rn(float value) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  __nv_bfloat16 out;
  if ((bits & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it a (quiet) NaN, sign preserved
    out.bits = static_cast<std::uint16_t>((bits >> 16) | 0x0040u);
    return out;
  }
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest, ties to even
  out.bits = static_cast<std::uint16_t>(bits >> 16);
  return out;
}
