#pragma once
// Counter-based RNG: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as
// 1, 2, 3", SC'11). A value is a pure function of (seed, stream, counter), so a draw does not
// depend on thread count or on the order of other draws, and a generator's whole state is
// three integers that a checkpoint saves.
//
// Streams used by lmforge (distinct `stream` values keep uses independent):
//   parameter init: stream = kStreamInit + parameter index, counter = element index / 2
//   data shuffling: stream = kStreamData, counter = epoch
//   sampling:       stream = kStreamSample, counter advances per draw
#include <array>
#include <cmath>
#include <cstdint>

namespace lmf {

inline constexpr uint64_t kStreamInit = 1ull << 32;
inline constexpr uint64_t kStreamData = 1;
inline constexpr uint64_t kStreamSample = 2;
inline constexpr uint64_t kStreamDropTokens = 3;

// 4 x 32 random bits for (key, counter); key = seed, counter = (stream, index).
std::array<uint32_t, 4> philox4x32(uint64_t key, uint64_t stream, uint64_t index);

inline double u32_to_unit(uint32_t x) {  // [0, 1), 2^-32 resolution
  return x * (1.0 / 4294967296.0);
}

// Two standard normals from one Philox block (Box-Muller on two 64-bit uniforms).
std::array<double, 2> philox_normal2(uint64_t key, uint64_t stream, uint64_t index);

// A sequential generator over one stream; state = (seed, stream, counter).
class Rng {
 public:
  Rng(uint64_t seed = 0, uint64_t stream = 0, uint64_t counter = 0)
      : seed_(seed), stream_(stream), counter_(counter) {}
  uint32_t next_u32();
  double uniform() { return u32_to_unit(next_u32()); }  // [0, 1)
  // Uniform integer in [0, n), n > 0 (Lemire's nearly-divisionless method on 64 bits).
  uint64_t below(uint64_t n);
  uint64_t seed() const { return seed_; }
  uint64_t stream() const { return stream_; }
  uint64_t counter() const { return counter_; }  // number of u32 drawn so far
 private:
  uint64_t seed_, stream_, counter_;
};

}  // namespace lmf
