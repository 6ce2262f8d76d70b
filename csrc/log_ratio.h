// The per-element arithmetic of the transition log-ratio, shared by the CPU and CUDA kernels
// (the Triton kernel spells out the same lines in tl.* ops; fastlangevin/reference.py is the
// readable version). Everything is float64: inputs are widened on load.
//
// For the Gaussian proposal q(x -> y) = N(y; x - a G(x), s^2 I), with the reference term folded
// into the energy, U*(v) = U(v) + h |v|^2 and G(v) = g(v) + 2 h v (h = 1 / (2 ref_var), 0 without):
//
//   alpha(x, y) = U*(x) + c1 (y - x).G(x) + c2 |G(x)|^2,    c1 = a / s^2,  c2 = a^2 / (2 s^2).
//
// One-sided (alpha alone), element i contributes  G_x (c1 d + c2 G_x) + h x^2,  d = y - x.
// Two-sided (alpha_x(x, y) - alpha_y(y, x), the Jarzynski increment / MALA log-ratio), the four
// reductions d.G_x, |G_x|^2, -d.G_y, |G_y|^2 and h (|x|^2 - |y|^2) combine per element into
//
//   d (c1 (G_x + G_y) - h (x + y)) + c2 (G_x - G_y)(G_x + G_y)
//
// so one accumulator per walker carries the whole sum, and the differences |G_x|^2 - |G_y|^2 and
// |x|^2 - |y|^2 are formed per element rather than as differences of two large row sums.
#pragma once

#include "philox.h"  // FL_HD

namespace fastlangevin {

struct RatioCoef {
  double c1, c2, h, inv_ref;
};

FL_HD RatioCoef ratio_coef(double a, double s, double inv_ref) {
  RatioCoef k;
  k.c1 = a / (s * s);
  k.c2 = 0.5 * a * k.c1;
  k.h = 0.5 * inv_ref;
  k.inv_ref = inv_ref;
  return k;
}

// Element share of alpha(x, y) - U(x). kRef = false: no reference term (inv_ref = h = 0), the
// same value without the multiply-adds by zero.
template <bool kRef = true>
FL_HD double alpha_term(double x, double y, double gx, const RatioCoef& k) {
  if constexpr (!kRef) return gx * (k.c1 * (y - x) + k.c2 * gx);
  const double G = gx + x * k.inv_ref;
  return G * (k.c1 * (y - x) + k.c2 * G) + k.h * x * x;
}

// Element share of alpha_x(x, y) - alpha_y(y, x) - (U_x(x) - U_y(y)).
template <bool kRef = true>
FL_HD double increment_term(double x, double y, double gx, double gy, const RatioCoef& k) {
  if constexpr (!kRef) {
    const double P = gx + gy;
    return (y - x) * (k.c1 * P) + k.c2 * (gx - gy) * P;
  }
  const double Gx = gx + x * k.inv_ref, Gy = gy + y * k.inv_ref;
  const double P = Gx + Gy;
  return (y - x) * (k.c1 * P - k.h * (x + y)) + k.c2 * (Gx - Gy) * P;
}

// sum_j increment_term(x_j, y_j, gx_j, gy_j) over one walker's d coordinates, in float64 with 8
// independent partial sums (the fused chains' per-walker Jarzynski / MALA ratio). The chains
// have no reference term (csrc/chain_run.h builds their coefficients with inv_ref = 0), so they
// all use increment_term<false>: the same value without the multiply-adds by zero.
template <typename T>
FL_HD double increment_sum(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ gx,
                           const T* __restrict__ gy, int64_t d, const RatioCoef& rc) {
  double part[8] = {};
  int64_t j = 0;
  for (; j + 8 <= d; j += 8) {
    FL_UNROLL
    for (int l = 0; l < 8; ++l)
      part[l] += increment_term<false>(static_cast<double>(x[j + l]), static_cast<double>(y[j + l]),
                                       static_cast<double>(gx[j + l]), static_cast<double>(gy[j + l]), rc);
  }
  double acc = 0.0;
  for (; j < d; ++j)
    acc += increment_term<false>(static_cast<double>(x[j]), static_cast<double>(y[j]), static_cast<double>(gx[j]),
                                 static_cast<double>(gy[j]), rc);
  FL_UNROLL
  for (int l = 0; l < 8; ++l) acc += part[l];
  return acc;
}

}  // namespace fastlangevin
