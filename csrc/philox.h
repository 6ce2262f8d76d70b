// fastlangevin noise contract, C++ half. The Python half is fastlangevin/reference.py;
// these two files are the only places the counter layout and the uniform/normal maps are
// written down. Every backend (CPU C++, CUDA, Triton) must reproduce them.
//
//   Philox4x32-10 (Salmon et al., Random123), key = (seed & 0xffffffff, seed >> 32).
//   Element i of a noisy op called with (seed, offset) uses
//       counter = (lo32(i >> 2), hi32(i >> 2), lo32(offset), hi32(offset)),  lane = i & 3.
//   The step offset lives in the counter, never in the seed: (seed, offset) and
//   (seed, offset + 1) never share a counter, whatever the tensor size (up to 2^66 elements).
//   Words (w0, w1) -> normals (z0, z1) and (w2, w3) -> (z2, z3) by Box-Muller:
//       u_r = ((w_a >> 8) + 1) * 2^-24          in (0, 1]   (exact in float32)
//       u_t =  (w_b >> 8)      * 2^-24          in [0, 1)   (exact in float32)
//       z_a = sqrt(-2 ln u_r) * cos(2 pi u_t),  z_b = sqrt(-2 ln u_r) * sin(2 pi u_t)
//   Both uniforms are exactly representable in float32, so every backend starts the
//   transcendental part from the same numbers and only the last-ulp accuracy of log/sin/cos
//   differs (the tests bound it). 24-bit uniforms cap |z| at sqrt(48 ln 2) = 5.77, the same cap
//   as PyTorch's own float32 CPU normal_ (P(|z| > 5.77) = 7.9e-9).
//
//   Resampling uniforms (fastlangevin.resample.uniforms) are a second map of the same words.
//   Uniform j of stream (seed, offset) uses block j >> 1 (the counter above with i >> 2
//   replaced by j >> 1) and the words (w_a, w_b) = (w0, w1) for even j, (w2, w3) for odd j:
//       u_j = ((w_a >> 5) * 2^26 + (w_b >> 6)) * 2^-53     in [0, 1), float64, 53 random bits
//   (the integer is below 2^53, so every backend produces the same double exactly). 53 bits,
//   not 24: a position (j + u) / N must resolve cdf steps of single walkers at N = 10^6 and
//   weights far below 2^-24.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FL_HD __host__ __device__ __forceinline__
#define FL_UNROLL _Pragma("unroll")
#else
#define FL_HD inline __attribute__((always_inline))
// Full unrolling is what lets GCC vectorise a loop around philox4x32_10 / normals4_f32:
// a loop left inside the body is "control flow in loop" to its vectoriser.
#define FL_UNROLL _Pragma("GCC unroll 16")
#endif

namespace fastlangevin {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;  // sqrt(3) - 1
constexpr int kPhiloxRounds = 10;

struct Words4 {
  uint32_t w[4];
};

FL_HD void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3,
                        uint32_t k0, uint32_t k1) {
  // 32x32 -> 64 bit products; written with uint64 so that host compilers vectorise it
  // (vpmuludq) and nvcc emits mul.hi/mul.lo.
  const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
  const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
  const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
  const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
  c0 = hi1 ^ c1 ^ k0;
  c1 = lo1;
  c2 = hi0 ^ c3 ^ k1;
  c3 = lo0;
}

// Philox4x32-10 on one counter block. The key is bumped between rounds (9 bumps).
FL_HD Words4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                           uint32_t k0, uint32_t k1) {
  FL_UNROLL
  for (int r = 0; r < kPhiloxRounds; ++r) {
    if (r > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    philox_round(c0, c1, c2, c3, k0, k1);
  }
  return Words4{{c0, c1, c2, c3}};
}

// The four words for philox block `block` (= element index >> 2) of stream (seed, offset).
FL_HD Words4 philox_block(uint64_t seed, uint64_t offset, uint64_t block) {
  return philox4x32_10(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                       static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

constexpr float kTwoPow24Inv = 5.9604644775390625e-08f;  // 2^-24

// Radius uniform in (0, 1] and angle uniform in [0, 1); both exact in float32.
FL_HD float uniform_radius(uint32_t w) {
  return static_cast<float>((w >> 8) + 1u) * kTwoPow24Inv;
}
FL_HD float uniform_angle(uint32_t w) {
  return static_cast<float>(w >> 8) * kTwoPow24Inv;
}

constexpr double kTwoPow53Inv = 1.1102230246251565404e-16;  // 2^-53

// The float64 resampling uniform of words (w_a, w_b): exact, in [0, 1). Spelled as
// (w_a >> 5) 2^26 + (w_b >> 6) in double arithmetic, every step exact (a 27-bit and a 26-bit
// integer, their sum below 2^53): the same double as the 53-bit integer's conversion, but
// through int32 -> double conversions, which AVX2 vectorises (it has no uint64 -> double), so
// a host loop of these uniforms vectorises (csrc/cpu/normals_cpu.h fill_uniform_pairs).
FL_HD double uniform53(uint32_t wa, uint32_t wb) {
  return (static_cast<double>(static_cast<int32_t>(wa >> 5)) * 67108864.0 +
          static_cast<double>(static_cast<int32_t>(wb >> 6))) *
         kTwoPow53Inv;
}

// Resampling uniform j of stream (seed, offset).
FL_HD double resample_uniform(uint64_t seed, uint64_t offset, uint64_t j) {
  const Words4 w = philox_block(seed, offset, j >> 1);
  return (j & 1) ? uniform53(w.w[2], w.w[3]) : uniform53(w.w[0], w.w[1]);
}

}  // namespace fastlangevin
