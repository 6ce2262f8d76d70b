// The float64 row sums of the transition log-ratio on the CPU (csrc/log_ratio.h has the
// arithmetic), for the log-ratio kernel (weights_cpu.cpp).
//
// Per walker a float64 row sum over kLanes independent partial sums: the template below is
// plain C++ that GCC turns into vector registers (SLP) without reassociating any sum, compiled
// twice, portable and AVX2+FMA, picked at run time as in langevin_cpu.cpp. Without a reference
// term (inv_ref = 0, the usual case) a second instantiation drops its multiply-adds by zero:
// the op alone, float32, 2 threads, min of 9 x 3000 calls, six interleaved old/new process
// pairs on the 2-core EPYC: [1024, 64] ~32 -> ~26 us, [10000, 50] ~197 -> ~180 us.
// (`#pragma omp simd reduction` was the first version: GCC 12 left it scalar for float inputs,
// "no vectype for stmt" on its simd arrays, -fopt-info-vec.)
#pragma once

#include <cstdint>
#include <type_traits>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "../log_ratio.h"
#include "isa_cpu.h"

namespace fastlangevin {
namespace {

// Independent partial sums per row: 2 AVX2 registers of doubles, enough to hide the add latency.
constexpr int kLanes = 8;

template <bool kTwoSided, bool kRef, typename scalar_t>
FL_HD double element(const scalar_t* x, const scalar_t* y, const scalar_t* gx, const scalar_t* gy, int64_t i,
                     const RatioCoef& k) {
  const double xv = static_cast<double>(x[i]), yv = static_cast<double>(y[i]), gxv = static_cast<double>(gx[i]);
  if constexpr (kTwoSided) {
    return increment_term<kRef>(xv, yv, gxv, static_cast<double>(gy[i]), k);
  } else {
    return alpha_term<kRef>(xv, yv, gxv, k);
  }
}

// sum_i element(i) over one row of n elements (gy unread when one-sided).
template <bool kTwoSided, bool kRef, typename scalar_t>
FL_HD double row_sum(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y, const scalar_t* __restrict__ gx,
                     const scalar_t* __restrict__ gy, int64_t n, const RatioCoef& k) {
  double part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    FL_UNROLL
    for (int j = 0; j < kLanes; ++j) part[j] += element<kTwoSided, kRef>(x, y, gx, gy, i + j, k);
  }
  double acc = 0.0;
  for (; i < n; ++i) acc += element<kTwoSided, kRef>(x, y, gx, gy, i, k);
  FL_UNROLL
  for (int j = 0; j < kLanes; ++j) acc += part[j];
  return acc;
}

#if defined(__x86_64__) || defined(_M_X64)
template <bool kTwoSided, bool kRef, typename scalar_t>
__attribute__((target("avx2,fma"))) double row_sum_avx2(const scalar_t* x, const scalar_t* y, const scalar_t* gx,
                                                         const scalar_t* gy, int64_t n, const RatioCoef& k) {
  return row_sum<kTwoSided, kRef>(x, y, gx, gy, n, k);
}

// An explicit 8-lane version of row_sum for float32 / float64 rows without a reference term
// (the usual case), used on AVX2 and AVX-512 CPUs alike: lane j sums elements i = j mod 8, with
// the FMAs written out; the tail (n mod 8 elements) is a masked load into the same lanes
// (masked-off lanes add exact 0s), then the 8 lane sums are added in lane order. GCC's code for
// the template above loads each float input twice (a widening load for the low half; a load,
// extract and convert for the high half): ~40 instructions per 8 elements of the two-sided sum
// against 11 vector operations here. Measured on the 2-core Xeon (Sapphire Rapids class) box,
// the op alone, float32, 2 threads, min of 9 x 3000 calls, three interleaved old/new process
// pairs: two-sided [1024, 64] 18.6 -> 15.2 us, [10000, 50] ~160 -> ~150 us; one-sided 14.3 ->
// 12.2 and ~117 -> ~107 us; [4096, 784] 930 us either way (55 GB/s: memory-bound). A 512-bit
// version of the same lanes (one zmm) measured the same as this one, so there is none.
// Rows shorter than 8 use the template (see row_sum_for_isa).
//
// Lane arithmetic (per lane, float64):
//   two-sided  P = gx + gy, D = gx - gy;  part += fma(c2 D, P, (y - x) (c1 P))
//   one-sided                             part += gx fma(c1, y - x, c2 gx)
// The term is formed before the one add into the lane sum, so the loop-carried chain is one
// vaddpd per 8 elements; chaining the two FMAs into the sum doubled it.
struct Avx2Lanes {  // 8 doubles as two ymm registers
  __m256d lo, hi;
};

__attribute__((target("avx2,fma"))) inline Avx2Lanes lanes_load(const float* p) {
  return {_mm256_cvtps_pd(_mm_loadu_ps(p)), _mm256_cvtps_pd(_mm_loadu_ps(p + 4))};
}
__attribute__((target("avx2,fma"))) inline Avx2Lanes lanes_load(const double* p) {
  return {_mm256_loadu_pd(p), _mm256_loadu_pd(p + 4)};
}
// The first m (< 8) elements, zeros after.
__attribute__((target("avx2,fma"))) inline Avx2Lanes lanes_load_tail(const float* p, int m) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(m), idx);
  const __m256 v = _mm256_maskload_ps(p, mask);
  return {_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))};
}
__attribute__((target("avx2,fma"))) inline Avx2Lanes lanes_load_tail(const double* p, int m) {
  const __m256i idx = _mm256_setr_epi64x(0, 1, 2, 3);
  const __m256i m_lo = _mm256_cmpgt_epi64(_mm256_set1_epi64x(m), idx);
  const __m256i m_hi = _mm256_cmpgt_epi64(_mm256_set1_epi64x(m - 4), idx);
  return {_mm256_maskload_pd(p, m_lo), _mm256_maskload_pd(p + 4, m_hi)};
}

template <bool kTwoSided>
__attribute__((target("avx2,fma"))) inline void lanes_accumulate(Avx2Lanes& part, const Avx2Lanes& x,
                                                                 const Avx2Lanes& y, const Avx2Lanes& gx,
                                                                 const Avx2Lanes& gy, __m256d c1, __m256d c2) {
  if constexpr (kTwoSided) {
    const __m256d p_lo = _mm256_add_pd(gx.lo, gy.lo), p_hi = _mm256_add_pd(gx.hi, gy.hi);
    const __m256d d_lo = _mm256_sub_pd(gx.lo, gy.lo), d_hi = _mm256_sub_pd(gx.hi, gy.hi);
    const __m256d t_lo = _mm256_mul_pd(_mm256_sub_pd(y.lo, x.lo), _mm256_mul_pd(c1, p_lo));
    const __m256d t_hi = _mm256_mul_pd(_mm256_sub_pd(y.hi, x.hi), _mm256_mul_pd(c1, p_hi));
    part.lo = _mm256_add_pd(part.lo, _mm256_fmadd_pd(_mm256_mul_pd(c2, d_lo), p_lo, t_lo));
    part.hi = _mm256_add_pd(part.hi, _mm256_fmadd_pd(_mm256_mul_pd(c2, d_hi), p_hi, t_hi));
  } else {
    const __m256d i_lo = _mm256_fmadd_pd(c1, _mm256_sub_pd(y.lo, x.lo), _mm256_mul_pd(c2, gx.lo));
    const __m256d i_hi = _mm256_fmadd_pd(c1, _mm256_sub_pd(y.hi, x.hi), _mm256_mul_pd(c2, gx.hi));
    part.lo = _mm256_add_pd(part.lo, _mm256_mul_pd(gx.lo, i_lo));
    part.hi = _mm256_add_pd(part.hi, _mm256_mul_pd(gx.hi, i_hi));
  }
}

template <bool kTwoSided, typename scalar_t>
__attribute__((target("avx2,fma"))) double row_sum_lanes_avx2(const scalar_t* x, const scalar_t* y,
                                                               const scalar_t* gx, const scalar_t* gy, int64_t n,
                                                               const RatioCoef& k) {
  const __m256d c1 = _mm256_set1_pd(k.c1), c2 = _mm256_set1_pd(k.c2);
  Avx2Lanes part{_mm256_setzero_pd(), _mm256_setzero_pd()};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const Avx2Lanes vgy = kTwoSided ? lanes_load(gy + i) : part;  // unread when one-sided
    lanes_accumulate<kTwoSided>(part, lanes_load(x + i), lanes_load(y + i), lanes_load(gx + i), vgy, c1, c2);
  }
  if (i < n) {
    const int m = static_cast<int>(n - i);
    const Avx2Lanes vgy = kTwoSided ? lanes_load_tail(gy + i, m) : part;
    lanes_accumulate<kTwoSided>(part, lanes_load_tail(x + i, m), lanes_load_tail(y + i, m),
                                lanes_load_tail(gx + i, m), vgy, c1, c2);
  }
  alignas(32) double lane[8];
  _mm256_store_pd(lane, part.lo);
  _mm256_store_pd(lane + 4, part.hi);
  double acc = 0.0;
  for (int j = 0; j < 8; ++j) acc += lane[j];
  return acc;
}
#endif

template <typename scalar_t>
using RowSumFn = double (*)(const scalar_t*, const scalar_t*, const scalar_t*, const scalar_t*, int64_t,
                            const RatioCoef&);

// The row sum for this call's (two-sided, reference term) and ISA, chosen once per call rather
// than per row, with the coefficients computed once unless step or std is per walker (a 2-d
// walker's row is a handful of operations next to a division and the ISA check). The op alone,
// float32, 2 threads, three interleaved old/new process pairs: [2000, 2] 24 -> 17 us, [1024, 2]
// 14 -> 10 us, [10000, 50] ~167 -> ~151 us, [1024, 64] unchanged.
template <bool kTwoSided, bool kRef, typename scalar_t>
RowSumFn<scalar_t> row_sum_for_isa(int64_t row_len) {
#if defined(__x86_64__) || defined(_M_X64)
  // Rows shorter than one 8-lane group (2-D toys: [2000, 2]) are all tail: the masked loads and
  // the lane sum cost more than the scalar loop there (17 vs 13.5 us at [2000, 2]).
  if constexpr (!kRef && (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>)) {
    if (row_len >= 8 && cpu_has(CpuIsa::kAvx2)) return &row_sum_lanes_avx2<kTwoSided, scalar_t>;
  }
  if (cpu_has(CpuIsa::kAvx2)) return &row_sum_avx2<kTwoSided, kRef, scalar_t>;
#endif
  return &row_sum<kTwoSided, kRef, scalar_t>;
}

template <typename scalar_t>
RowSumFn<scalar_t> pick_row_sum(bool two_sided, bool has_ref, int64_t row_len) {
  if (two_sided) {
    return has_ref ? row_sum_for_isa<true, true, scalar_t>(row_len) : row_sum_for_isa<true, false, scalar_t>(row_len);
  }
  return has_ref ? row_sum_for_isa<false, true, scalar_t>(row_len) : row_sum_for_isa<false, false, scalar_t>(row_len);
}

}  // namespace
}  // namespace fastlangevin
