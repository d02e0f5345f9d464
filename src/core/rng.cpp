#include "core/rng.h"

namespace lmf {

namespace {
inline void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t p = uint64_t{a} * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}
}  // namespace

std::array<uint32_t, 4> philox4x32(uint64_t key, uint64_t stream, uint64_t index) {
  constexpr uint32_t kM0 = 0xD2511F53, kM1 = 0xCD9E8D57;  // multipliers
  constexpr uint32_t kW0 = 0x9E3779B9, kW1 = 0xBB67AE85;  // Weyl key increments
  uint32_t c0 = static_cast<uint32_t>(index), c1 = static_cast<uint32_t>(index >> 32);
  uint32_t c2 = static_cast<uint32_t>(stream), c3 = static_cast<uint32_t>(stream >> 32);
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kM0, c0, hi0, lo0);
    mulhilo(kM1, c2, hi1, lo1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += kW0;
    k1 += kW1;
  }
  return {c0, c1, c2, c3};
}

std::array<double, 2> philox_normal2(uint64_t key, uint64_t stream, uint64_t index) {
  auto r = philox4x32(key, stream, index);
  // 53-bit uniforms; u1 in (0, 1] so log is finite.
  double u1 = ((uint64_t{r[0]} << 21 ^ r[1]) & ((1ull << 53) - 1)) * 0x1.0p-53;
  double u2 = ((uint64_t{r[2]} << 21 ^ r[3]) & ((1ull << 53) - 1)) * 0x1.0p-53;
  u1 = 1.0 - u1;
  double rad = std::sqrt(-2.0 * std::log(u1));
  double th = 2.0 * M_PI * u2;
  return {rad * std::cos(th), rad * std::sin(th)};
}

uint32_t Rng::next_u32() {
  auto r = philox4x32(seed_, stream_, counter_ / 4);
  return r[counter_++ % 4];
}

uint64_t Rng::below(uint64_t n) {
  // 64-bit draw, multiply-shift; the bias is at most n / 2^64, negligible for our n.
  uint64_t x = (uint64_t{next_u32()} << 32) | next_u32();
  return static_cast<uint64_t>((static_cast<unsigned __int128>(x) * n) >> 64);
}

}  // namespace lmf
