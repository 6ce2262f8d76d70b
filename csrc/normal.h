// Standard normals from Philox words: the float32 arithmetic shared by the CPU and CUDA
// kernels (the Triton kernel spells out the same polynomials in tl.* ops).
//
// Why hand-written log and sincos: libm's logf/cosf are function calls, so a host compiler
// cannot vectorise the Box-Muller loop around them. These are branch-free Cephes-style
// minimax polynomials on the reduced ranges that Box-Muller actually uses (u in (0, 1],
// t in [0, 1)). Measured against float64 over all 2^24 uniforms of each kind (with and without
// FMA contraction): log 0.83 ulp; sin and cos 1.95 ulp where |value| > 1e-3 and 1.1e-7 absolute
// everywhere. tests/test_philox.py::test_normals_close_to_float64 bounds the end result.
// The angle is reduced in turns (t - q/4, exact by Sterbenz) before it is multiplied by
// 2 pi, so no 2 pi * t rounding error (up to 2.4e-7 rad) ever reaches sin/cos.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "philox.h"

namespace fastlangevin {

FL_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);  // compiles to a register move; vectorises
  return b;
#endif
}
FL_HD float f32_from_bits(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
#endif
}

// Natural log for normal floats u in (0, 1] (Box-Muller's radius uniform).
FL_HD float log_unit_f32(float u) {
  // u = m 2^e with m in [sqrt(1/2), sqrt(2)), found with integer arithmetic only (shifting the
  // exponent boundary to sqrt(1/2) by adding 1 - sqrt(1/2) to the bits): a select here would be
  // "control flow" to GCC's vectoriser.
  const uint32_t b = f32_bits(u) + (0x3f800000u - 0x3f3504f3u);
  const int32_t e = static_cast<int32_t>(b >> 23) - 127;
  const float m = f32_from_bits((b & 0x007fffffu) + 0x3f3504f3u);
  const float x = m - 1.0f;                                        // [sqrt(.5) - 1, sqrt(2) - 1)
  const float z = x * x;
  float p = 7.0376836292e-2f;
  p = p * x - 1.1514610310e-1f;
  p = p * x + 1.1676998740e-1f;
  p = p * x - 1.2420140846e-1f;
  p = p * x + 1.4249322787e-1f;
  p = p * x - 1.6668057665e-1f;
  p = p * x + 2.0000714765e-1f;
  p = p * x - 2.4999993993e-1f;
  p = p * x + 3.3333331174e-1f;
  const float fe = static_cast<float>(e);
  float y = p * x * z;
  y += -2.12194440e-4f * fe;      // ln 2 split in two: 0.693359375 (exact) - 2.12194440e-4
  y += -0.5f * z;
  return (x + y) + 0.693359375f * fe;
}

// sin(2 pi t), cos(2 pi t) for t in [0, 1).
FL_HD void sincos_2pi_f32(float t, float& s_out, float& c_out) {
  const int32_t n = static_cast<int32_t>(t * 4.0f + 0.5f);        // nearest quarter turn, 0..4
  const float r = t - static_cast<float>(n) * 0.25f;              // exact, |r| <= 1/8
  const float a = r * 6.28318530717958647692f;                    // |a| <= pi/4
  const float a2 = a * a;
  const float s = a + a * a2 * (-1.6666654611e-1f + a2 * (8.3321608736e-3f + a2 * -1.9515295891e-4f));
  const float c = 1.0f - 0.5f * a2 +
                  a2 * a2 * (4.166664568298827e-2f + a2 * (-1.388731625493765e-3f + a2 * 2.443315711809948e-5f));
  // rotate by n quarter turns: n=0 (s, c), 1 (c, -s), 2 (-s, -c), 3 (-c, s)
  const float sr = (n & 1) ? c : s;
  const float cr = (n & 1) ? s : c;
  s_out = (n & 2) ? -sr : sr;
  c_out = ((n + 1) & 2) ? -cr : cr;
}

// The four float32 normals of one Philox block.
FL_HD void normals4_f32(const Words4& w, float z[4]) {
  FL_UNROLL
  for (int p = 0; p < 2; ++p) {
    const float ur = uniform_radius(w.w[2 * p]);
    const float ut = uniform_angle(w.w[2 * p + 1]);
    const float rad = sqrtf(-2.0f * log_unit_f32(ur));
    float s, c;
    sincos_2pi_f32(ut, s, c);
    z[2 * p] = rad * c;
    z[2 * p + 1] = rad * s;
  }
}

// The four float64 normals of one Philox block (same uniforms, double-precision maps).
FL_HD void normals4_f64(const Words4& w, double z[4]) {
  constexpr double kTwoPi = 6.283185307179586476925;
  for (int p = 0; p < 2; ++p) {
    const double ur = static_cast<double>(uniform_radius(w.w[2 * p]));
    const double ut = static_cast<double>(uniform_angle(w.w[2 * p + 1]));
    const double rad = sqrt(-2.0 * log(ur));
    z[2 * p] = rad * cos(kTwoPi * ut);
    z[2 * p + 1] = rad * sin(kTwoPi * ut);
  }
}

}  // namespace fastlangevin
