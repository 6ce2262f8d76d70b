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
#include <type_traits>

#include "philox.h"

namespace fastlangevin {

// The bits of a float or double as the unsigned integer of its size, and back (memcpy: a
// register move on host and device, and GCC vectorises around it).
template <typename To, typename From>
FL_HD To bits_as(From f) {
  static_assert(sizeof(To) == sizeof(From), "bits_as: sizes differ");
  To t;
  std::memcpy(&t, &f, sizeof t);
  return t;
}

// log(m 2^e) from x = m - 1, m in [sqrt(1/2), sqrt(2)), and fe = e: the polynomial part of
// log_unit_f32 below, on a float or on a GCC vector of floats (csrc/cpu/chain_cpu.cpp's
// softmax evaluates it across walkers; F{} + c is c exactly, in either case).
template <typename F>
FL_HD F log_parts_f32(F x, F fe) {
  const F z = x * x;
  F p = F{} + 7.0376836292e-2f;
  p = p * x - 1.1514610310e-1f;
  p = p * x + 1.1676998740e-1f;
  p = p * x - 1.2420140846e-1f;
  p = p * x + 1.4249322787e-1f;
  p = p * x - 1.6668057665e-1f;
  p = p * x + 2.0000714765e-1f;
  p = p * x - 2.4999993993e-1f;
  p = p * x + 3.3333331174e-1f;
  F y = p * x * z;
  y += -2.12194440e-4f * fe;      // ln 2 split in two: 0.693359375 (exact) - 2.12194440e-4
  y += -0.5f * z;
  return (x + y) + 0.693359375f * fe;
}

// e^x = 2^n e^r for float32 (Cephes expf): n = round(x log2 e) by magic-number rounding (exact
// for |x| < 2.9e6), r = x - n ln 2 with ln 2 in two parts, e^r by a degree-5 polynomial.
// Returns e^r and n (as a float); the caller scales by 2^n through the exponent bits, its own
// way for floats (csrc/cpu/mlp_chain_cpu.cpp exp_f32) and for GCC vectors of floats
// (csrc/cpu/chain_cpu.cpp exp_vf32).
template <typename F>
FL_HD F exp_parts_f32(F x, F& n) {
  n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const F r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  F p = F{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * r * r + r + 1.0f;
}

// Natural log for normal floats u in (0, 1] (Box-Muller's radius uniform).
FL_HD float log_unit_f32(float u) {
  // u = m 2^e with m in [sqrt(1/2), sqrt(2)), found with integer arithmetic only (shifting the
  // exponent boundary to sqrt(1/2) by adding 1 - sqrt(1/2) to the bits): a select here would be
  // "control flow" to GCC's vectoriser.
  const uint32_t b = bits_as<uint32_t>(u) + (0x3f800000u - 0x3f3504f3u);
  const int32_t e = static_cast<int32_t>(b >> 23) - 127;
  const float m = bits_as<float>((b & 0x007fffffu) + 0x3f3504f3u);
  return log_parts_f32(m - 1.0f, static_cast<float>(e));
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

// log(m 2^e) from x = m - 1, m in [sqrt(1/2), sqrt(2)), and fe = e: the rational part of
// log_unit_f64 below, on a double or on a GCC vector of doubles (the chain's softmax).
template <typename F>
FL_HD F log_parts_f64(F x, F fe) {
  const F z = x * x;
  F p = F{} + 1.01875663804580931796e-4;
  p = p * x + 4.97494994976747001425e-1;
  p = p * x + 4.70579119878881725854e0;
  p = p * x + 1.44989225341610930846e1;
  p = p * x + 1.79368678507819816313e1;
  p = p * x + 7.70838733755885391666e0;
  F q = x + 1.12873587189167450590e1;
  q = q * x + 4.52279145837532221105e1;
  q = q * x + 8.29875266912776603211e1;
  q = q * x + 7.11544750618563894466e1;
  q = q * x + 2.31251620126765340583e1;
  F y = x * (z * p / q);
  y -= fe * 2.121944400546905827679e-4;  // ln 2 = 0.693359375 (exact) - 2.1219444005469058e-4
  y -= 0.5 * z;
  return (x + y) + fe * 0.693359375;
}

// Natural log for normal doubles u in (0, 1], the float64 twin of log_unit_f32: the same
// select-free split u = m 2^e, m in [sqrt(1/2), sqrt(2)), and Cephes' rational approximation
// log(1 + x) = x - x^2/2 + x^3 P(x)/Q(x) (Moshier's log.c, peak error 1.4e-16 relative on
// [0.5, 2]). e becomes a double through the 2^52 bit trick instead of an int64 conversion,
// which AVX2 has no instruction for (GCC would leave the loop scalar). Measured against long
// double over all 2^24 radius uniforms: 0.86 ulp (glibc's log: 0.52).
FL_HD double log_unit_f64(double u) {
  constexpr uint64_t kSqrtHalf = 0x3fe6a09e667f3bcdull;  // sqrt(1/2)
  const uint64_t b = bits_as<uint64_t>(u) + (0x3ff0000000000000ull - kSqrtHalf);
  const double fe = bits_as<double>((b >> 52) | 0x4330000000000000ull) - (4503599627370496.0 + 1023.0);
  const double m = bits_as<double>((b & 0x000fffffffffffffull) + kSqrtHalf);
  return log_parts_f64(m - 1.0, fe);
}

// sin(2 pi t), cos(2 pi t) for doubles t in [0, 1): the float64 twin of sincos_2pi_f32 (reduce
// by quarter turns exactly, then Cephes' sin.c / cos.c polynomials on |a| <= pi/4, peak error
// about 1e-16). The quarter n comes from the 1.5 * 2^52 rounding trick (round to nearest; a tie
// at an odd eighth gives |r| = 1/8 either way), read from the low mantissa bits, so the loop
// needs no float-to-int conversion. Measured against long double over all 2^24 angle uniforms:
// 1.75 x 2^-53 absolute for both (glibc's sin(2 pi t), which rounds 2 pi t first: 6.2).
FL_HD void sincos_2pi_f64(double t, double& s_out, double& c_out) {
  constexpr double kRound = 6755399441055744.0;  // 1.5 * 2^52
  const double big = t * 4.0 + kRound;
  const uint64_t n = bits_as<uint64_t>(big);                // low bits: the nearest quarter turn, 0..4
  const double r = t - (big - kRound) * 0.25;      // exact, |r| <= 1/8
  const double a = r * 6.283185307179586476925;    // |a| <= pi/4
  const double z = a * a;
  double ps = 1.58962301576546568060e-10;
  ps = ps * z - 2.50507477628578072866e-8;
  ps = ps * z + 2.75573136213857245213e-6;
  ps = ps * z - 1.98412698295895385996e-4;
  ps = ps * z + 8.33333333332211858878e-3;
  ps = ps * z - 1.66666666666666307295e-1;
  const double s = a + a * z * ps;
  double pc = -1.13585365213876817300e-11;
  pc = pc * z + 2.08757008419747316778e-9;
  pc = pc * z - 2.75573141792967388112e-7;
  pc = pc * z + 2.48015872888517045348e-5;
  pc = pc * z - 1.38888888888730564116e-3;
  pc = pc * z + 4.16666666666665929218e-2;
  const double c = 1.0 - 0.5 * z + z * z * pc;
  // rotate by n quarter turns: n=0 (s, c), 1 (c, -s), 2 (-s, -c), 3 (-c, s)
  const double sr = (n & 1) ? c : s;
  const double cr = (n & 1) ? s : c;
  s_out = (n & 2) ? -sr : sr;
  c_out = ((n + 1) & 2) ? -cr : cr;
}

// The Box-Muller pair of one radius word and one angle word (csrc/philox.h's uniforms):
// zc, zs = sqrt(-2 ln u_r) (cos, sin)(2 pi u_t), with the float32 maps above or the float64
// ones (the same uniforms, exact in float64). Its one spelling: the block functions below, the
// CPU tile loop (csrc/cpu/langevin_cpu.cpp, vectorised across blocks) and the CUDA chain's
// single-element draw (csrc/cuda/chain_cuda.cu) all call it.
template <typename T>
FL_HD void box_muller_pair(uint32_t wr, uint32_t wt, T& zc, T& zs) {
  T rad, s, c;
  if constexpr (std::is_same_v<T, float>) {
    rad = sqrtf(-2.0f * log_unit_f32(uniform_radius(wr)));
    sincos_2pi_f32(uniform_angle(wt), s, c);
  } else {
    rad = sqrt(-2.0 * log_unit_f64(static_cast<double>(uniform_radius(wr))));
    sincos_2pi_f64(static_cast<double>(uniform_angle(wt)), s, c);
  }
  zc = rad * c;
  zs = rad * s;
}

// The four normals of one Philox block: (w0, w1) -> (z0, z1), (w2, w3) -> (z2, z3).
FL_HD void normals4_f32(const Words4& w, float z[4]) {
  box_muller_pair(w.w[0], w.w[1], z[0], z[1]);
  box_muller_pair(w.w[2], w.w[3], z[2], z[3]);
}
FL_HD void normals4_f64(const Words4& w, double z[4]) {
  box_muller_pair(w.w[0], w.w[1], z[0], z[1]);
  box_muller_pair(w.w[2], w.w[3], z[2], z[3]);
}

}  // namespace fastlangevin
