// CPU kernels of the fused Gaussian-mixture and double-well chains (schemas and update equations
// in csrc/fastlangevin.cpp, readable versions fastlangevin/reference.py::mixture_chain_ref and
// double_well_chain_ref): one tiling and dispatch (run_chain), two step loops: the mixture's on a
// blocked tile (run_tile_blocked), the double well's on rows (run_tile).
//
// Layout of the work: walkers are cut into tiles of rows (about kTileElems elements); each
// OpenMP task copies a tile's state (x, grad, energy) into local buffers and runs all n_steps
// on it before writing it back, so the state never leaves L1/L2 between steps. Per step the
// tile's normals come from the same vectorised Philox/Box-Muller generator as langevin_step
// (csrc/cpu/normals_cpu.h) into a buffer, for the tile's contiguous element range: element
// n * d + j of step k is the same normal the step-by-step path adds. A Philox block that
// straddles two tiles is computed by both (at most one extra block per tile per step).
//
// Why the mixture's tile is blocked ([d][16 walkers] per block of 16 float32 / 8 float64
// walkers, transposed in on the way in and back on the way out): row by row, each walker paid
// K row reductions over d (16-lane partial sums, a horizontal sum, a scalar d-tail), K libm
// expf and one logf, so energy + gradient + update cost ~2.2 ns/element, twice the normals.
// With one walker per SIMD lane every step is plain vertical arithmetic with broadcast means /
// inv_var, the softmax's exp / log are exp_f32 / log_unit_f32 on vectors, and the row-major
// noise is transposed 8 x 8 in registers as it is read. Measured on the 2-core EPYC (Zen 4)
// box, single thread, Carbone GMM (N = 10^4, d = 50, K = 2), ms/step, old -> blocked:
//   float32 ULA 1.50 -> 0.73, weights 1.9 -> 1.03, MALA 2.07 -> 1.24
//   (normals alone ~0.43 of each); float64 ULA / weights / MALA ~9.7 / 10.1 / 10.4 -> ~9.4 /
//   9.7 / 10.0, a few %, while libm's scalar Box-Muller still dominated float64. With the
//   vectorised float64 normals since (csrc/normal.h) float64 ULA is ~1.6 ms/step; the
//   softmax's exp / log on float64 vectors (exp_vf64 / log_vf64 below, instead of libm per
//   walker) took it from 1.60 to 1.54 (medians of 7, three interleaved runs each).
// Two more for the energy since, measured on the 2-core Xeon (AVX-512, Sapphire Rapids class)
// box, float32 ULA on 2 threads, ms/step (min of 7 x 200 steps, builds interleaved): K = 2 as a
// compile-time count (the component loops unrolled; perf had the run-time K loop's compare and
// branch per column among the hottest lines) 0.38 -> 0.34, and on AVX-512 one 64-byte vector
// per block row instead of two 32-byte ones 0.34 -> 0.31 (AVX2 clone 0.47 -> 0.44; float64
// 0.71 -> 0.70). Normals alone take 0.22 of the 0.31 (langevin_step's generator, ~0.9 ns an
// element a thread), so the energy, the update and the transposes are now ~0.09.
// Weights / MALA mode on that box: the increment without the reference term's multiply-adds by
// zero (increment_term<false>; once dropped on Zen 4 as noise-level) and, in weights mode, the
// tile's x / y buffers swapped after each step instead of y copied back block by block: weights
// 0.53 -> 0.50 ms/step, MALA 0.54 -> 0.525 (ULA 0.31). perf puts a quarter of the tile's time
// there in the float64 increment and ~10% in MALA's scalar Philox uniform and libm log per
// walker; with the tile's log uniforms drawn once per step on vectors (mh_log_uniforms, one
// Philox block per two walkers) MALA went 0.55 -> 0.48 ms/step on 2 threads, 1.03 -> 0.92 on
// one (min of 7 x 200 steps, three interleaved runs of each build).
// A block_increment on explicit float64 vectors was slower: GCC 12 lowers an 8-float to
// 8-double __builtin_convertvector as two halves with an insert, where its own vectorisation of
// the loop over lanes loads with one vcvtps2pd zmm.
// Tried and dropped: tiles of 4096 / 6400 elements (same within noise), and of 1024 for
// weights / MALA mode (5 buffers of 48 x 50 floats overflow a 48 KiB L1; 32 rows measured the same).
// The weights / MALA ratio (increment_term, float64) is summed per lane over j, a different
// order from increment_sum's 8 partial sums: results agree to float64 rounding.
//
// -Wpsabi off: the vector helpers of this file (exp_vf32, log_vf32, ...) and normal.h's
// templates instantiated on them take and return 32-byte GCC vectors in a translation unit built
// for baseline x86-64, and GCC notes that such a function's ABI would differ in an AVX build.
// All of them are FL_HD (always_inline), so every call is inlined into its ISA clone and no
// out-of-line call passes a vector across that boundary.
#pragma GCC diagnostic ignored "-Wpsabi"
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "../chain_run.h"
#include "../log_ratio.h"
#include "../normal.h"
#include "../philox.h"
#include "isa_cpu.h"
#include "normals_cpu.h"
#include "vec_cpu.h"

namespace fastlangevin {
namespace {

// Elements per tile: the same 2048 as langevin_step's noise chunk (kChunk, measured there);
// the five [rows, d] tile buffers (x, grad, y, grad_y, noise) take 40 KiB in float32, inside
// L2. The mixture rounds rows up to whole blocks (d = 50: 48 rows); 4096 and 6400 (128 rows,
// whole 64-block generator tiles) measured the same within noise for the blocked tile.
constexpr int64_t kTileElems = 2048;

// Independent partial sums for the row reductions: enough to hide the add latency (2 AVX2
// registers of float32).
constexpr int kLanes = 16;

// The run fields (N, n_steps, a, s, seed, offset, mode, rc, log_w, log_w_steps, accepted) come
// from csrc/chain_run.h; the energy E (MixtureEnergy, DoubleWellEnergy below) is added here: the
// step loop (run_tile) is shared, only E's eval(v, scratch, g) -> U(v), g = grad U(v) differs.
template <typename T, typename E>
struct ChainArgs : ChainRun<T> {
  E e;
  int64_t d;
};

// Vectors (csrc/cpu/vec_cpu.h): 32 bytes, except the mixture energy's 64 in the AVX-512 clone.
// The element type of a GCC vector type.
template <typename V>
using elem_t = std::remove_cv_t<std::remove_reference_t<decltype(std::declval<V>()[0])>>;

// The mixture chain's blocked tile: walkers in blocks of kBlock<T> = kBlockVecs vectors (float
// 16, double 8); block b's state is [d][kBlock] (element (j, lane) at b * d * kBlock + j *
// kBlock + lane), so every step's arithmetic runs across walkers, one walker per lane, with
// means / inv_var broadcast, and no row reduction, horizontal sum or d-tail is left.
constexpr int kBlockVecs = 2;
template <typename T>
constexpr int64_t kBlock = Vec<T>::W * kBlockVecs;

template <int B = 32, typename T>
FL_HD typename Vec<T, B>::type vload(const T* p) {
  return *reinterpret_cast<const typename Vec<T, B>::utype*>(p);
}
template <typename T, typename V>
FL_HD void vstore(T* p, V v) {
  *reinterpret_cast<typename Vec<T, static_cast<int>(sizeof(V))>::utype*>(p) = v;
}

// W x W transpose (W = Vec<T>::W): rows[i][c] -> cols[c][i], with the unpack / shuffle / lane
// permute patterns of the classic AVX transposes (GCC matches them to vunpcklps, vshufps,
// vperm2f128).
FL_HD void transpose(Vec<float>::type (&a)[8]) {
  typedef int32_t M __attribute__((vector_size(32)));
  Vec<float>::type t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = __builtin_shuffle(a[2 * i], a[2 * i + 1], M{0, 8, 1, 9, 4, 12, 5, 13});
    t[2 * i + 1] = __builtin_shuffle(a[2 * i], a[2 * i + 1], M{2, 10, 3, 11, 6, 14, 7, 15});
  }
  for (int h = 0; h < 2; ++h) {  // rows 4h..4h+3: t[4h..4h+3] -> u[4h + c] = columns c, c + 4 of them
    u[4 * h + 0] = __builtin_shuffle(t[4 * h], t[4 * h + 2], M{0, 1, 8, 9, 4, 5, 12, 13});
    u[4 * h + 1] = __builtin_shuffle(t[4 * h], t[4 * h + 2], M{2, 3, 10, 11, 6, 7, 14, 15});
    u[4 * h + 2] = __builtin_shuffle(t[4 * h + 1], t[4 * h + 3], M{0, 1, 8, 9, 4, 5, 12, 13});
    u[4 * h + 3] = __builtin_shuffle(t[4 * h + 1], t[4 * h + 3], M{2, 3, 10, 11, 6, 7, 14, 15});
  }
  for (int c = 0; c < 4; ++c) {
    a[c] = __builtin_shuffle(u[c], u[4 + c], M{0, 1, 2, 3, 8, 9, 10, 11});
    a[c + 4] = __builtin_shuffle(u[c], u[4 + c], M{4, 5, 6, 7, 12, 13, 14, 15});
  }
}
FL_HD void transpose(Vec<double>::type (&a)[4]) {
  typedef int64_t M __attribute__((vector_size(32)));
  const Vec<double>::type t0 = __builtin_shuffle(a[0], a[1], M{0, 4, 2, 6});
  const Vec<double>::type t1 = __builtin_shuffle(a[0], a[1], M{1, 5, 3, 7});
  const Vec<double>::type t2 = __builtin_shuffle(a[2], a[3], M{0, 4, 2, 6});
  const Vec<double>::type t3 = __builtin_shuffle(a[2], a[3], M{1, 5, 3, 7});
  a[0] = __builtin_shuffle(t0, t2, M{0, 1, 4, 5});
  a[1] = __builtin_shuffle(t1, t3, M{0, 1, 4, 5});
  a[2] = __builtin_shuffle(t0, t2, M{2, 3, 6, 7});
  a[3] = __builtin_shuffle(t1, t3, M{2, 3, 6, 7});
}

// e^x and log x on vectors of float32 (of any width): exp_f32 (csrc/cpu/mlp_chain_cpu.cpp) and log_unit_f32
// (csrc/normal.h) operation for operation. Used on the softmax only: x = q_k - max q <= 0 (below
// -87.3, where exp_f32 saturates at 2^-126, the caller selects 0 so a -inf log_coef gives an
// exact 0 weight) and the normaliser sum in [1, K] (log_unit_f32's reduction is valid for every
// normal float).
template <typename V>
FL_HD V exp_vf32(V x) {
  typedef int32_t I __attribute__((vector_size(sizeof(V))));
  V n;
  const V y = exp_parts_f32(x, n);
  I ni = __builtin_convertvector(n, I);
  ni = ni < -126 ? -126 : ni;
  ni = ni > 127 ? 127 : ni;
  return y * reinterpret_cast<V>((ni + 127) << 23);
}
template <typename V>
FL_HD V log_vf32(V u) {
  typedef uint32_t U __attribute__((vector_size(sizeof(V))));
  typedef int32_t I __attribute__((vector_size(sizeof(V))));
  const U b = reinterpret_cast<U>(u) + (0x3f800000u - 0x3f3504f3u);
  const I e = reinterpret_cast<I>(b >> 23) - 127;
  const V m = reinterpret_cast<V>((b & 0x007fffffu) + 0x3f3504f3u);
  return log_parts_f32(m - 1.0f, __builtin_convertvector(e, V));
}

// e^x and log x on vectors of float64, for the same softmax. exp: x = n ln 2 + r, n = round(x /
// ln 2) by the 1.5 * 2^52 trick (so n also sits in the low mantissa bits: no double-to-int64
// conversion, which AVX2 lacks), ln 2 split in two (Cephes' C1 + C2; n C1 is exact), e^r by its
// Taylor series to r^13 (|r| <= ln 2 / 2: truncation 4e-18 relative), 2^n through the exponent
// bits with n clamped to >= -1022; below -708.39 (2^-1022) the caller selects 0, as the float32
// path does below -87.3. Measured against long double (AVX2 + FMA build) over 4 x 10^6 points
// of [-708, 0]: 0.87 ulp; log over [1, 2]: 0.90 ulp. log: log_unit_f64's split and rational
// (csrc/normal.h), valid for every normal double (here the normaliser sum in [1, K]).
template <typename V>
FL_HD V exp_vf64(V x) {
  typedef int64_t I __attribute__((vector_size(sizeof(V))));
  constexpr double kRound = 6755399441055744.0;  // 1.5 * 2^52
  const V big = x * 1.4426950408889634074 + kRound;
  const V n = big - kRound;
  const V r = (x - n * 6.93145751953125e-1) - n * 1.42860682030941723212e-6;
  V p = V{} + 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  I ni = reinterpret_cast<I>(big) - reinterpret_cast<I>(V{} + kRound);
  ni = ni < -1022 ? -1022 : ni;
  return p * reinterpret_cast<V>((ni + 1023) << 52);
}
template <typename V>
FL_HD V log_vf64(V u) {
  typedef uint64_t U __attribute__((vector_size(sizeof(V))));
  constexpr uint64_t kSqrtHalf = 0x3fe6a09e667f3bcdull;
  const U b = reinterpret_cast<U>(u) + (0x3ff0000000000000ull - kSqrtHalf);
  const V fe = reinterpret_cast<V>((b >> 52) | 0x4330000000000000ull) - (4503599627370496.0 + 1023.0);
  const V m = reinterpret_cast<V>((b & 0x000fffffffffffffull) + kSqrtHalf);
  return log_parts_f64(m - 1.0, fe);
}

// e^x and log x on a vector of floats or doubles (either width).
template <typename V>
constexpr bool kFloatVec = std::is_same_v<elem_t<V>, float>;
template <typename V>
FL_HD V exp_v(V x) {
  if constexpr (kFloatVec<V>) return exp_vf32(x); else return exp_vf64(x);
}
template <typename V>
FL_HD V log_v(V x) {
  if constexpr (kFloatVec<V>) return log_vf32(x); else return log_vf64(x);
}
// Where exp_v stops being exact (its 2^n clamp): e^t is taken as 0 below this.
template <typename T>
constexpr T kExpFloor = std::is_same_v<T, float> ? T(-87.33654) : T(-708.3964185322641);

// The Gaussian mixture: means, iv [K, d], coef [K].
template <typename T>
struct MixtureEnergy {
  const T* means;
  const T* iv;
  const T* coef;
  int64_t K, d;
  int64_t scratch() const { return K * kBlock<T>; }

  // One block of kBlock<T> walkers: v, g [d][kBlock] -> g = grad U(v), u[kBlock] = U(v); q:
  // scratch [K][kBlock] (the log-terms q_k, then the responsibilities r_k).
  template <int KC, int VB>
  FL_HD void eval_block(const T* v, T* __restrict__ g, T* __restrict__ u, T* __restrict__ q) const {
    const int64_t K = KC > 0 ? KC : this->K;
    using V = typename Vec<T, VB>::type;
    constexpr int W = Vec<T, VB>::W;
    constexpr int64_t L = kBlock<T>;
    constexpr int NV = static_cast<int>(L / W);
    // q_k = coef_k - 1/2 sum_j (v_j - m_kj)^2 iv_kj, two components per pass over v.
    for (int64_t k = 0; k < K; k += 2) {
      const bool two = k + 1 < K;
      const T* m0 = means + k * d;
      const T* i0 = iv + k * d;
      const T* m1 = two ? m0 + d : m0;
      const T* i1 = two ? i0 + d : i0;
      V a0[NV] = {}, a1[NV] = {};
      for (int64_t j = 0; j < d; ++j) {
        FL_UNROLL
        for (int n = 0; n < NV; ++n) {
          const V x = vload<VB>(v + j * L + n * W);
          const V d0 = x - m0[j], d1 = x - m1[j];
          a0[n] += d0 * d0 * i0[j];
          a1[n] += d1 * d1 * i1[j];
        }
      }
      FL_UNROLL
      for (int n = 0; n < NV; ++n) {
        vstore(q + k * L + n * W, coef[k] - T(0.5) * a0[n]);
        if (two) vstore(q + (k + 1) * L + n * W, coef[k + 1] - T(0.5) * a1[n]);
      }
    }
    // softmax over k, lane by lane: r_k = e^(q_k - max q) / sum, U = -(max q + log sum)
    FL_UNROLL
    for (int n = 0; n < NV; ++n) {
      V qmax = -std::numeric_limits<T>::infinity() + V{};
      for (int64_t k = 0; k < K; ++k) {
        const V qk = vload<VB>(q + k * L + n * W);
        qmax = qk > qmax ? qk : qmax;
      }
      V sum = {};
      for (int64_t k = 0; k < K; ++k) {
        const V t = vload<VB>(q + k * L + n * W) - qmax;
        V e = exp_v(t);
        e = t < kExpFloor<T> ? V{} : e;  // e^t below the normal range (and -inf) -> 0
        vstore(q + k * L + n * W, e);
        sum += e;
      }
      const V inv = T(1) / sum;
      for (int64_t k = 0; k < K; ++k) vstore(q + k * L + n * W, vload<VB>(q + k * L + n * W) * inv);
      // A NaN sum (a NaN parameter, or walkers at +-inf where every q_k is -inf and t = -inf + inf)
      // stays NaN: log_v's bit arithmetic would map it to a plausible finite log (~88.7, ~709.8),
      // a finite energy where the reference's is NaN, past every non-finite check.
      const V uu = -(qmax + log_v(sum));
      vstore(u + n * W, sum != sum ? sum : uu);
    }
    // g_j = sum_k r_k (v_j - m_kj) iv_kj
    for (int64_t j = 0; j < d; ++j) {
      FL_UNROLL
      for (int n = 0; n < NV; ++n) {
        const V x = vload<VB>(v + j * L + n * W);
        V acc = vload<VB>(q + n * W) * ((x - means[j]) * iv[j]);
        for (int64_t k = 1; k < K; ++k) acc += vload<VB>(q + k * L + n * W) * ((x - means[k * d + j]) * iv[k * d + j]);
        vstore(g + j * L + n * W, acc);
      }
    }
  }
};

// The separable double well (fastlangevin.energies.DoubleWell): with w_j = v_j^2 - c2,
// U(v) = h sum_j w_j^2, grad U(v)_j = ((4 h) v_j) w_j (DoubleWell.energy_and_grad's order);
// no scratch.
template <typename T>
struct DoubleWellEnergy {
  T h, c2;
  int64_t d;
  int64_t scratch() const { return 0; }

  // The kLanes partial sums are one explicit vector (two ymm in the AVX2 clone, one or two zmm
  // in the AVX-512 one: the same lane-wise operations), and the d-tail goes into its lanes too,
  // summed in lane order at the end. Written with scalar arrays and a scalar tail, GCC
  // vectorised the two clones differently and their energies differed by an ulp for some d
  // (15, 64, 65 in float32; 15, 63 in float64), where isa_cpu.h promises bit-equal clones.
  FL_HD T eval(const T* __restrict__ v, T* __restrict__, T* __restrict__ g) const {
    using P = typename Vec<T, kLanes * static_cast<int>(sizeof(T))>::type;
    using PU = typename Vec<T, kLanes * static_cast<int>(sizeof(T))>::utype;
    const T h4 = T(4) * h;
    P part = {};
    int64_t j = 0;
    for (; j + kLanes <= d; j += kLanes) {
      const P x = *reinterpret_cast<const PU*>(v + j);
      const P w = x * x - c2;
      part += w * w;
      *reinterpret_cast<PU*>(g + j) = (h4 * x) * w;
    }
    T tail[kLanes] = {};
    for (int64_t l = 0; j + l < d; ++l) {
      const T x = v[j + l];
      const T w = x * x - c2;
      tail[l] = w * w;
      g[j + l] = (h4 * x) * w;
    }
    part += *reinterpret_cast<const PU*>(tail);
    T acc = 0;
    FL_UNROLL
    for (int l = 0; l < kLanes; ++l) acc += part[l];
    return h * acc;
  }
};

template <typename T>
struct TileBuffers {
  std::vector<T> x, g, y, gy, noise, q, u, uy;
  std::vector<double> lu;  // MALA: the step's log uniforms (mh_log_uniforms)
  TileBuffers(int64_t rows, int64_t d, int64_t scratch)
      : x(rows * d), g(rows * d), y(rows * d), gy(rows * d), noise(rows * d + 8), q(scratch), u(rows), uy(rows),
        lu(rows + 2) {}
};

// All n_steps for walkers [r0, r1): state in (xs, gs, us) of the buffers.
template <typename T, typename E>
FL_HD void run_tile(const ChainArgs<T, E>& c, int64_t r0, int64_t r1, TileBuffers<T>& b) {
  const int64_t d = c.d;
  const RowsNoise noise(r0, r1, d);
  const uint64_t e0 = noise.e0;
  T* __restrict__ xs = b.x.data();
  T* __restrict__ gs = b.g.data();
  T* __restrict__ ys = b.y.data();
  T* __restrict__ gys = b.gy.data();
  T* __restrict__ q = b.q.data();
  T* us = b.u.data();
  double* __restrict__ lu = b.lu.data();
  const T a = c.a, s = c.s;
  for (int64_t k = 0; k < c.n_steps; ++k) {
    const uint64_t off = c.offset + static_cast<uint64_t>(k);  // wraps mod 2^64 like sample()'s offsets
    noise.fill(c.seed, off, b.noise.data());
    if (c.mode == kMala) mh_log_uniforms(c.seed, mh_offset(off), r0, r1, lu);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t lr = r - r0;
      T* __restrict__ x = xs + lr * d;
      T* __restrict__ g = gs + lr * d;
      const T* __restrict__ xi = b.noise.data() + (static_cast<uint64_t>(r) * d - e0);
      if (c.mode == kUla) {
        // langevin_step's order: (x - a g) + s xi
        for (int64_t j = 0; j < d; ++j) x[j] = (x[j] - a * g[j]) + s * xi[j];
        us[lr] = c.e.eval(x, q, g);
        continue;
      }
      T* __restrict__ y = ys + lr * d;
      T* __restrict__ gy = gys + lr * d;
      for (int64_t j = 0; j < d; ++j) y[j] = (x[j] - a * g[j]) + s * xi[j];
      const T uy = c.e.eval(y, q, gy);
      const double inc =
          (static_cast<double>(us[lr]) - static_cast<double>(uy)) + increment_sum(x, y, g, gy, d, c.rc);
      if (c.weigh_or_accept(k, r, inc, lu, r0)) {
        std::copy(y, y + d, x);
        std::copy(gy, gy + d, g);
        us[lr] = uy;
      }
    }
  }
}

// y = (x - a g) + s xi for one block of the blocked tile (langevin_step's order), xi read from
// the row-major noise of its rows (nz: the first row's) W x W at a time and transposed in
// registers; out may be x itself (ULA).
template <typename T>
FL_HD void propose_block(const T* x, const T* g, T* out, const T* __restrict__ nz, int64_t d, T a, T s) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::W, NV = kBlockVecs;
  constexpr int64_t L = kBlock<T>;
  FL_UNROLL
  for (int n = 0; n < NV; ++n) {
    const T* p = nz + n * W * d;
    int64_t j = 0;
    for (; j + W <= d; j += W) {
      V col[W];
      FL_UNROLL
      for (int i = 0; i < W; ++i) col[i] = vload(p + i * d + j);
      transpose(col);
      FL_UNROLL
      for (int i = 0; i < W; ++i) {
        const int64_t o = (j + i) * L + n * W;
        vstore(out + o, (vload(x + o) - a * vload(g + o)) + s * col[i]);
      }
    }
    for (; j < d; ++j) {
      V xi;
      FL_UNROLL
      for (int i = 0; i < W; ++i) xi[i] = p[i * d + j];
      const int64_t o = j * L + n * W;
      vstore(out + o, (vload(x + o) - a * vload(g + o)) + s * xi);
    }
  }
}

// The mixture's step loop on the blocked tile (rows [r0, r1) padded to whole blocks; the padding
// lanes compute on finite junk and are never written back, weighed or accepted).
template <int KC, int VB, typename T>
FL_HD void run_tile_blocked(const ChainArgs<T, MixtureEnergy<T>>& c, int64_t r0, int64_t r1, TileBuffers<T>& b) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::W, NV = kBlockVecs;
  constexpr int64_t L = kBlock<T>;
  const int64_t d = c.d;
  const int64_t nblk = (r1 - r0 + L - 1) / L;
  const RowsNoise noise(r0, r1, d);
  const uint64_t e0 = noise.e0;
  T* __restrict__ q = b.q.data();
  double* __restrict__ lu = b.lu.data();
  const T a = c.a, s = c.s;
  for (int64_t k = 0; k < c.n_steps; ++k) {
    const uint64_t off = c.offset + static_cast<uint64_t>(k);  // wraps mod 2^64 like sample()'s offsets
    noise.fill(c.seed, off, b.noise.data());
    if (c.mode == kMala) mh_log_uniforms(c.seed, mh_offset(off), r0, r1, lu);
    for (int64_t blk = 0; blk < nblk; ++blk) {
      const int64_t rb = r0 + blk * L;  // the block's first walker
      T* x = b.x.data() + blk * d * L;
      T* g = b.g.data() + blk * d * L;
      T* u = b.u.data() + blk * L;
      const T* nz = b.noise.data() + (static_cast<uint64_t>(rb) * d - e0);
      if (c.mode == kUla) {
        propose_block(x, g, x, nz, d, a, s);
        c.e.template eval_block<KC, VB>(x, g, u, q);
        continue;
      }
      T* y = b.y.data() + blk * d * L;
      T* gy = b.gy.data() + blk * d * L;
      T* uy = b.uy.data() + blk * L;
      propose_block(x, g, y, nz, d, a, s);
      c.e.template eval_block<KC, VB>(y, gy, uy, q);
      // increment_term<false>: no reference term in a chain (csrc/log_ratio.h, increment_sum)
      double inc[L] = {};
      for (int64_t j = 0; j < d; ++j) {
        FL_UNROLL
        for (int64_t l = 0; l < L; ++l)
          inc[l] += increment_term<false>(static_cast<double>(x[j * L + l]), static_cast<double>(y[j * L + l]),
                                          static_cast<double>(g[j * L + l]), static_cast<double>(gy[j * L + l]),
                                          c.rc);
      }
      T take[L];  // 1 where walker rb + l takes its proposal (never a padding lane), else 0
      for (int64_t l = 0; l < L; ++l) {
        const int64_t r = rb + l;
        const double ratio = (static_cast<double>(u[l]) - static_cast<double>(uy[l])) + inc[l];
        take[l] = r < r1 && c.weigh_or_accept(k, r, ratio, lu, r0);
        u[l] = take[l] != T(0) ? uy[l] : u[l];
      }
      if (c.mode == kWeights) continue;  // every walker moves: the buffers swap after the step
      V tk[NV];
      FL_UNROLL
      for (int n = 0; n < NV; ++n) tk[n] = vload(take + n * W);
      for (int64_t j = 0; j < d; ++j) {
        FL_UNROLL
        for (int n = 0; n < NV; ++n) {
          const int64_t o = j * L + n * W;
          vstore(x + o, tk[n] != T(0) ? vload(y + o) : vload(x + o));
          vstore(g + o, tk[n] != T(0) ? vload(gy + o) : vload(g + o));
        }
      }
    }
    if (c.mode == kWeights) {  // (y, grad y) of every block, the padding lanes' junk too, is the new state
      std::swap(b.x, b.y);
      std::swap(b.g, b.gy);
    }
  }
}

// The mixture on its blocked tile (energy vectors of VB bytes; with kUnrollK, K = 2, the papers'
// mixtures, gets its component loops unrolled), the double well on rows.
template <int VB, bool kUnrollK, typename T, typename E>
FL_HD void run_tile_any(const ChainArgs<T, E>& c, int64_t r0, int64_t r1, TileBuffers<T>& b) {
  if constexpr (std::is_same_v<E, MixtureEnergy<T>>) {
    if (kUnrollK && c.e.K == 2) {
      run_tile_blocked<2, VB>(c, r0, r1, b);
    } else {
      run_tile_blocked<0, VB>(c, r0, r1, b);
    }
  } else {
    run_tile(c, r0, r1, b);
  }
}

template <typename T, typename E>
void run_tile_generic(const ChainArgs<T, E>& c, int64_t r0, int64_t r1, TileBuffers<T>& b) {
  // no K = 2 unrolling here: with SSE2 halves it was slower (2.4 -> 2.65 ms/step on the Carbone GMM)
  run_tile_any<32, false>(c, r0, r1, b);
}

#if defined(__x86_64__) || defined(_M_X64)
// The same code compiled for AVX2 + FMA, picked at run time (the extension itself is built for
// baseline x86-64, SSE2).
template <typename T, typename E>
__attribute__((target("avx2,fma"))) void run_tile_avx2(const ChainArgs<T, E>& c, int64_t r0, int64_t r1,
                                                       TileBuffers<T>& b) {
  run_tile_any<32, true>(c, r0, r1, b);
}

// And for AVX-512, where the mixture's energy runs on one 64-byte vector per block row (a block
// is 16 float32 / 8 float64 walkers) instead of two 32-byte ones.
template <typename T, typename E>
__attribute__((target("avx2,fma,avx512f,avx512vl"))) void run_tile_avx512(const ChainArgs<T, E>& c, int64_t r0,
                                                                        int64_t r1, TileBuffers<T>& b) {
  run_tile_any<64, true>(c, r0, r1, b);
}
#endif

template <typename T, typename E>
void run_chain(const ChainArgs<T, E>& c, T* xp, T* gp, T* up) {
  constexpr bool blocked = std::is_same_v<E, MixtureEnergy<T>>;
  constexpr int64_t L = kBlock<T>;
  const int64_t d = c.d;
  int64_t rows = std::max<int64_t>(1, kTileElems / d);
  if (blocked) rows = (rows + L - 1) / L * L;
  const int64_t n_tiles = (c.N + rows - 1) / rows;
  at::parallel_for(0, n_tiles, 1, [&](int64_t tb, int64_t te) {
    TileBuffers<T> b(rows, d, c.e.scratch());
    for (int64_t t = tb; t < te; ++t) {
      const int64_t r0 = t * rows, r1 = std::min(c.N, r0 + rows);
      if (blocked) {  // row r0 + blk L + l, coordinate j -> b.x[blk d L + j L + l]; padding lanes 0
        std::fill(b.x.begin(), b.x.end(), T(0));
        std::fill(b.g.begin(), b.g.end(), T(0));
        std::fill(b.u.begin(), b.u.end(), T(0));
        for (int64_t lr = 0; lr < r1 - r0; ++lr) {
          const int64_t o = (lr / L) * d * L + lr % L;
          for (int64_t j = 0; j < d; ++j) {
            b.x[o + j * L] = xp[(r0 + lr) * d + j];
            b.g[o + j * L] = gp[(r0 + lr) * d + j];
          }
        }
      } else {
        std::copy(xp + r0 * d, xp + r1 * d, b.x.data());
        std::copy(gp + r0 * d, gp + r1 * d, b.g.data());
      }
      std::copy(up + r0, up + r1, b.u.data());
#if defined(__x86_64__) || defined(_M_X64)
      if (cpu_has(CpuIsa::kAvx512)) {
        run_tile_avx512(c, r0, r1, b);
      } else if (cpu_has(CpuIsa::kAvx2)) {
        run_tile_avx2(c, r0, r1, b);
      } else {
        run_tile_generic(c, r0, r1, b);
      }
#else
      run_tile_generic(c, r0, r1, b);
#endif
      if (blocked) {
        for (int64_t lr = 0; lr < r1 - r0; ++lr) {
          const int64_t o = (lr / L) * d * L + lr % L;
          for (int64_t j = 0; j < d; ++j) {
            xp[(r0 + lr) * d + j] = b.x[o + j * L];
            gp[(r0 + lr) * d + j] = b.g[o + j * L];
          }
        }
      } else {
        std::copy(b.x.data(), b.x.data() + (r1 - r0) * d, xp + r0 * d);
        std::copy(b.g.data(), b.g.data() + (r1 - r0) * d, gp + r0 * d);
      }
      std::copy(b.u.data(), b.u.data() + (r1 - r0), up + r0);
    }
  });
}

void mixture_chain_cpu(at::Tensor& x, at::Tensor& energy, at::Tensor& grad, const at::Tensor& means,
                       const at::Tensor& inv_var, const at::Tensor& log_coef, int64_t n_steps, double step,
                       double noise_std, int64_t seed, int64_t offset, int64_t mode,
                       const std::optional<at::Tensor>& log_w, const std::optional<at::Tensor>& log_w_steps,
                       at::Tensor& accepted) {
  check_mixture_chain_args(x, energy, grad, means, inv_var, log_coef);
  const int64_t N = x.size(0), d = x.size(1), K = means.size(0);
  const auto st = x.scalar_type();
  check_chain_state("mixture_chain", N, n_steps, mode, log_w, log_w_steps, accepted);
  if (N == 0 || n_steps == 0) return;

  AT_DISPATCH_FLOATING_TYPES(st, "mixture_chain_cpu", [&] {
    ChainArgs<scalar_t, MixtureEnergy<scalar_t>> c;
    static_cast<ChainRun<scalar_t>&>(c) =
        make_chain_run<scalar_t>(N, n_steps, step, noise_std, seed, offset, mode, log_w, log_w_steps, accepted);
    c.e = {means.data_ptr<scalar_t>(), inv_var.data_ptr<scalar_t>(), log_coef.data_ptr<scalar_t>(), K, d};
    c.d = d;
    run_chain(c, x.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), energy.data_ptr<scalar_t>());
  });
  if (mode != kMala) accepted.add_(n_steps);
}

void double_well_chain_cpu(at::Tensor& x, at::Tensor& energy, at::Tensor& grad, const at::Tensor& params,
                           int64_t n_steps, double step, double noise_std, int64_t seed, int64_t offset,
                           int64_t chain_mode, const std::optional<at::Tensor>& log_w,
                           const std::optional<at::Tensor>& log_w_steps, at::Tensor& accepted) {
  check_double_well_chain_args(x, energy, grad, params);
  const int64_t N = x.size(0), d = x.size(1);
  check_chain_state("double_well_chain", N, n_steps, chain_mode, log_w, log_w_steps, accepted);
  if (N == 0 || n_steps == 0) return;

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "double_well_chain_cpu", [&] {
    ChainArgs<scalar_t, DoubleWellEnergy<scalar_t>> c;
    static_cast<ChainRun<scalar_t>&>(c) = make_chain_run<scalar_t>(N, n_steps, step, noise_std, seed, offset,
                                                                   chain_mode, log_w, log_w_steps, accepted);
    const scalar_t* p = params.data_ptr<scalar_t>();
    c.e = {p[0], p[1] * p[1], d};  // barrier, center^2 (DoubleWell: center.to(dtype) ** 2)
    c.d = d;
    run_chain(c, x.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), energy.data_ptr<scalar_t>());
  });
  if (chain_mode != kMala) accepted.add_(n_steps);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlangevin, CPU, m) {
  m.impl("mixture_chain", &mixture_chain_cpu);
  m.impl("double_well_chain", &double_well_chain_cpu);
}

}  // namespace fastlangevin
