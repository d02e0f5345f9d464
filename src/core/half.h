#pragma once
// bf16 and IEEE fp16 <-> float conversions, bit-exact and portable (no compiler half types), so
// checkpoints read the same on every host. float -> half rounds to nearest, ties to even, as
// PyTorch and CUDA's __float2bfloat16_rn / __float2half_rn do.
#include <bit>
#include <cstdint>

namespace lmf {

inline float bf16_to_float(uint16_t h) { return std::bit_cast<float>(uint32_t{h} << 16); }

inline uint16_t float_to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  // A NaN must stay a NaN: rounding could carry its payload into the exponent and make it Inf.
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  // Round to nearest even: add 0x7fff plus the lowest kept bit, then truncate.
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// A bf16 number as stored (activations and the compute copy of the weights under bf16 storage):
// only its bits, with explicit conversions both ways, so that no arithmetic happens in bf16 by
// accident; every op computes in float and rounds what it stores (to nearest even).
struct bf16 {
  uint16_t bits;
  bf16() = default;  // uninitialised, as float is (buffers are not zeroed twice)
  explicit bf16(float f) : bits(float_to_bf16(f)) {}
  explicit operator float() const { return bf16_to_float(bits); }
  friend bool operator==(bf16 a, bf16 b) { return a.bits == b.bits; }  // the same bits
};
static_assert(sizeof(bf16) == 2);

inline float f16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t{h & 0x8000u} << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));  // Inf/NaN
  if (exp != 0) return std::bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));
  if (mant == 0) return std::bit_cast<float>(sign);  // signed zero
  // Subnormal: value = mant * 2^-24, exact in float.
  const float v = static_cast<float>(mant) * 0x1p-24f;
  return sign ? -v : v;
}

inline uint16_t float_to_f16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u)
    return sign | 0x7e00u | static_cast<uint16_t>((abs >> 13) & 0x3ffu);  // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds past 65504 (or is Inf): Inf
  if (abs >= 0x38800000u) {                       // normal in fp16 (>= 2^-14)
    // Rebias the exponent (127 -> 15) and round the 13 dropped bits to nearest even; a carry
    // out of the mantissa correctly bumps the exponent.
    uint32_t v = abs - (112u << 23);
    v += 0xfffu + ((v >> 13) & 1u);
    return sign | static_cast<uint16_t>(v >> 13);
  }
  if (abs < 0x33000000u) return sign;  // below half the smallest subnormal (2^-25): zero
  // Subnormal in fp16: shift the full 24-bit significand so its units are 2^-24, rounding to even.
  const uint32_t exp = abs >> 23;
  const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126 - exp;  // 14..24 for exp in [102, 112]
  uint32_t r = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (r & 1u))) ++r;
  return sign | static_cast<uint16_t>(r);
}

}  // namespace lmf
