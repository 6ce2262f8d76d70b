// CPU kernel of the fused MLP chain (schema and update equations in csrc/fastlangevin.cpp,
// readable version fastlangevin/reference.py::mlp_chain_ref / mlp_energy_ref).
//
// Layout of the work: walkers are cut into tiles of up to kTileRows rows; each OpenMP thread
// takes a contiguous run of 12-row blocks, copies a tile's state (x, grad, energy) into local
// buffers and runs all n_steps on it. Per step the tile's energy and gradient are a forward pass
// and a backward pass to the input, both written as small dense matmuls [rows, in] x [in, out]
// over the whole tile (gemm_tile: a register-blocked micro-kernel, 6 rows x 16 floats in ymm or
// 12 rows x 32 floats in zmm, in plain C++ that GCC vectorises; no BLAS call per step), each
// forward layer's activation applied to a 6- or 12-row strip while it is in L1.
// The weights are packed once per call, zero-padded to multiples of kLanes columns so that no
// micro-kernel needs a scalar tail: W^T [in, out] for the forward pass, W [out, in] for the
// backward pass. Padded input columns are zero and meet zero weights; padded hidden units get
// zero head/next-layer weights, so their deltas are exactly zero.
//
// Noise: per step the tile's normals come from the same Philox/Box-Muller generator as
// langevin_step (csrc/cpu/normals_cpu.h), element n * d + j of step k, so a chain equals the
// step-by-step loop of sample() to float tolerance.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
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

enum Act : int64_t { kSilu = 0, kSoftplus = 1, kTanh = 2 };
constexpr int64_t kMaxDepth = 4, kMaxHidden = 128;  // fastlangevin.chain.MLP_MAX_DEPTH / _HIDDEN

// Padding of every matrix dimension: 64 bytes (16 floats, 8 doubles), one cache line and one
// AVX-512 register; every micro-kernel block below is one or two such widths.
template <typename T>
constexpr int kLanes = 64 / static_cast<int>(sizeof(T));

// The micro-kernel's shape per instruction set: RB rows x NV vectors of VB bytes of
// accumulators (NV = 2; a width-of-one tail block where a dimension is an odd multiple of
// kLanes, which only the 64-byte vectors have).
//   AVX2 (and the generic clone): 6 rows x 2 ymm = 12 of the 16 ymm registers, plus 2 for the
//     weight row and 1 broadcast.
//   AVX-512: 12 rows x 2 zmm = 24 of the 32 zmm registers. Per step of K: 2 weight-row loads +
//     12 broadcasts for 24 FMAs, so the two FMA ports, not the two load ports, bound it (6 rows
//     x 4 zmm is the other classic shape; it needs 64-float-wide padding, which the 2-D toys'
//     d = 2 would pay for 32 times over).
// Rows of a tile are padded to a multiple of kRowPad, the least common multiple of both RB (12).
struct Avx2Shape {
  static constexpr int VB = 32, RB = 6;
};
struct Avx512Shape {
  static constexpr int VB = 64, RB = 12;
};
constexpr int64_t kRowPad = std::lcm(Avx2Shape::RB, Avx512Shape::RB);

// Walkers per tile: 3 (AVX-512) or 6 (AVX2) micro-kernel row blocks. At 36 rows the
// activations and derivatives of a 128-wide 3-layer MLP take 110 KiB (float32), with the packed
// weights (~450 KiB for 64-128-128-128) in L2; a micro-benchmark of the 36 x 128 x 128 matmul
// ran at ~63 GFLOP/s on one core of an AMD EPYC (AVX2), the whole chain step at ~44. Each
// row block streams the weights from L2 once whatever the tile, so the tile size matters little:
// 24, 36, 48 and 60 rows all ran the 1024 x 64 x 100 chain in 69 to 74 ms on the 2-core Xeon
// (AVX-512), within that VM's noise.
constexpr int64_t kTileRows = 36;
static_assert(kTileRows % kRowPad == 0, "a tile's padded rows must fit its buffers");

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// e^x for float32, vectorisable (Cephes expf: n = round(x log2 e), r = x - n ln 2 in two parts,
// degree-5 polynomial, 2^n through the exponent bits, n clamped to [-126, 127] so 2^n stays a
// normal float: e^x saturates near 1e-38 and 1.7e38 instead of reaching 0 and inf, which is
// what the activations below need). ~2 ulp for |x| < 87. Written without a float clamp or
// floor: those are "control flow" to GCC's vectoriser without -ffinite-math-only (measured:
// the activation loop stayed scalar, 37% of the chain). The magic-number rounding is exact for
// |x| < 2.9e6, far beyond any pre-activation that matters.
FL_HD float exp_f32(float x) {
  float n;
  const float y = exp_parts_f32(x, n);
  int32_t ni = static_cast<int32_t>(n);
  ni = ni < -126 ? -126 : ni;
  ni = ni > 127 ? 127 : ni;
  return y * bits_as<float>(static_cast<uint32_t>(ni + 127) << 23);
}

// (act(z), act'(z)); float32 through exp_f32 / log_unit_f32 and select-free arithmetic
// (fabs, copysign) so the activation loop vectorises.
FL_HD void act_f32(int64_t act, float z, float& a, float& da) {
  if (act == kSilu) {
    const float s = 1.0f / (1.0f + exp_f32(-z));
    a = z * s;
    da = s * (1.0f + z * (1.0f - s));
  } else if (act == kSoftplus) {
    // log(1 + e^z) = max(z, 0) + log1p(e^-|z|), log1p(e) = -log(1 / (1 + e)) with 1 / (1 + e)
    // in [1/2, 1]; sigmoid(z) = 1/2 + sign(z) (1 - e) / (2 (1 + e)). Absolute errors ~6e-8
    // where e^-|z| is below float32's epsilon.
    const float e = exp_f32(-std::fabs(z));
    const float inv = 1.0f / (1.0f + e);
    a = 0.5f * (z + std::fabs(z)) - log_unit_f32(inv);
    da = 0.5f + std::copysign(0.5f * (1.0f - e) * inv, z);
  } else {
    // tanh z = sign(z) (1 - e) / (1 + e), e = e^{-2|z|} (absolute error ~1e-7 near 0)
    const float e = exp_f32(-2.0f * std::fabs(z));
    const float t = std::copysign((1.0f - e) / (1.0f + e), z);
    a = t;
    da = 1.0f - t * t;
  }
}

FL_HD void act_f64(int64_t act, double z, double& a, double& da) {
  if (act == kSilu) {
    const double s = 1.0 / (1.0 + std::exp(-z));
    a = z * s;
    da = s * (1.0 + z * (1.0 - s));
  } else if (act == kSoftplus) {
    const double e = std::exp(-std::fabs(z));
    a = (z > 0.0 ? z : 0.0) + std::log1p(e);
    da = z >= 0.0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
  } else {
    const double t = std::tanh(z);
    a = t;
    da = 1.0 - t * t;
  }
}

// The activation is a template parameter so the epilogue loop has no branch on it (GCC would
// otherwise have to unswitch it to vectorise).
template <typename T, int64_t ACT>
FL_HD void act_eval(T z, T& a, T& da) {
  if constexpr (std::is_same_v<T, float>) {
    act_f32(ACT, z, a, da);
  } else {
    act_f64(ACT, z, a, da);
  }
}

// Vec<T, VB> (csrc/cpu/vec_cpu.h), VB bytes, for the micro-kernel: plain loops over the
// RB x (NV x VB) accumulators were vectorised along K instead (permutes, accumulators on the
// stack: 0.9 GFLOP/s in a 32x128x128 float32 micro-benchmark, AVX2, AMD EPYC); with explicit
// vectors it is 39 GFLOP/s at RB = 4 and 66 GFLOP/s at RB = 6.

// What gemm_tile does with a finished block of A B (written with the vector type: the first
// version passed the block to a lambda with scalar loops, and GCC left that epilogue and the
// activations scalar, 45% of the chain's time).
enum Epi : int { kBias = 0, kMul = 1, kAxpy = 2 };

// The activation over n elements, in place: z in A -> act(z) in A, act'(z) in D (a
// runtime-length loop with restrict pointers, which GCC vectorises; gemm_tile runs it on each
// row strip of a forward layer).
template <typename T, int64_t ACT>
FL_HD void act_layer(T* __restrict__ A, T* __restrict__ D, int64_t n) {
  for (int64_t e = 0; e < n; ++e) {
    const T z = A[e];
    act_eval<T, ACT>(z, A[e], D[e]);
  }
}

// One RB x (NV vectors of VB bytes) block of C at rows r0.., columns o0..: the K-loop of
// multiply-adds, then the epilogue. Every output element is one accumulator summed over
// i = 0 .. K-1 in order, so the result does not depend on the block shape (the AVX2 and
// AVX-512 clones agree bit for bit).
template <typename T, int EPI, int VB, int RB, int NV>
FL_HD void gemm_block(const T* __restrict__ A, int64_t r0, int64_t K, const T* __restrict__ B, int64_t M,
                      int64_t o0, T* __restrict__ C, const T* __restrict__ E, T scale) {
  constexpr int VL = VB / static_cast<int>(sizeof(T));
  using V = typename Vec<T, VB>::type;
  using VU = typename Vec<T, VB>::utype;
  const T* __restrict__ a = A + r0 * K;
  V acc[RB][NV];
  FL_UNROLL
  for (int r = 0; r < RB; ++r) {
    FL_UNROLL
    for (int v = 0; v < NV; ++v) acc[r][v] = V{};
  }
  const T* __restrict__ b = B + o0;
  for (int64_t i = 0; i < K; ++i) {
    V bv[NV];
    FL_UNROLL
    for (int v = 0; v < NV; ++v) bv[v] = *reinterpret_cast<const VU*>(b + i * M + v * VL);
    FL_UNROLL
    for (int r = 0; r < RB; ++r) {
      const T av = a[r * K + i];
      FL_UNROLL
      for (int v = 0; v < NV; ++v) acc[r][v] += av * bv[v];
    }
  }
  FL_UNROLL
  for (int r = 0; r < RB; ++r) {
    FL_UNROLL
    for (int v = 0; v < NV; ++v) {
      const int64_t e = (r0 + r) * M + o0 + v * VL;
      V out;
      if constexpr (EPI == kBias) {
        out = acc[r][v] + *reinterpret_cast<const VU*>(E + o0 + v * VL);
      } else if constexpr (EPI == kMul) {
        out = acc[r][v] * *reinterpret_cast<const VU*>(E + e);
      } else {
        out = acc[r][v] + scale * *reinterpret_cast<const VU*>(E + e);
      }
      *reinterpret_cast<VU*>(C + e) = out;
    }
  }
}

// C[rows, M] = A[rows, K] B[K, M] followed by the epilogue
//   kBias: C = AB + e[col]           (e: [M], the bias)
//   kMul:  C = AB * E                (E: [rows, M], act'(z) of the layer below)
//   kAxpy: C = AB + scale * E        (E: [rows, M], the walkers: + inv_ref_var x)
// A, B, C, E row-major with strides K, M, M, M; rows a multiple of S::RB, M a multiple of
// kLanes<T>. Blocks of two VB-byte vectors, and one of one vector where M leaves it
// (M = 16 (mod 32) floats with 64-byte vectors; never with 32-byte ones, 2 x 32 = kLanes bytes).
// ACT >= 0: then the activation, act(z) into C and act'(z) into D ([rows, M]).
template <typename T, int EPI, typename S, int64_t ACT = -1>
FL_HD void gemm_tile(const T* __restrict__ A, int64_t rows, int64_t K, const T* __restrict__ B, int64_t M,
                     T* __restrict__ C, const T* __restrict__ E, T scale, T* __restrict__ D = nullptr) {
  constexpr int VL = S::VB / static_cast<int>(sizeof(T));
  for (int64_t r0 = 0; r0 < rows; r0 += S::RB) {
    int64_t o0 = 0;
    for (; o0 + 2 * VL <= M; o0 += 2 * VL) gemm_block<T, EPI, S::VB, S::RB, 2>(A, r0, K, B, M, o0, C, E, scale);
    if (o0 < M) gemm_block<T, EPI, S::VB, S::RB, 1>(A, r0, K, B, M, o0, C, E, scale);
    // ACT >= 0 (forward layers): z -> act(z) in C, act'(z) in D over the strip just written, still
    // in L1 (a separate pass over the whole [36, 128] layer cost 3 to 4% more of the chain:
    // medians 63.3 to 67.5 ms against 61.8 to 64.3, 1024 x 64 x 100, 2-core Xeon, AVX-512).
    if constexpr (ACT >= 0) act_layer<T, ACT>(C + r0 * M, D + r0 * M, S::RB * M);
  }
}

// The run fields (N, n_steps, a, s, seed, offset, mode, rc, log_w, log_w_steps, accepted) come
// from csrc/chain_run.h; the MLP's packed parameters are added here.
template <typename T>
struct MlpArgs : ChainRun<T> {
  int64_t depth, d, dP, HP, act;
  const T* fwd[kMaxDepth];   // W_l^T padded: [IP_l, HP], IP_0 = dP, else HP
  const T* bwd[kMaxDepth];   // W_l padded: [HP, IP_l]
  const T* bias[kMaxDepth];  // [HP]
  const T* head;             // [HP]
  T head_bias, inv_ref;
};

// sum_j increment_term(x_j, y_j, gx_j, gy_j) in float64 (csrc/log_ratio.h); the same sum as
// A zero-filled buffer aligned to 64 bytes: every kLanes-wide weight row and tile row then sits
// in one cache line (std::vector's 16-byte alignment splits them in two).
template <typename T>
struct Buf {
  std::unique_ptr<T[], void (*)(void*)> p{nullptr, &std::free};
  int64_t n = 0;
  Buf() = default;
  explicit Buf(int64_t count) : n(count) {
    const size_t bytes = (static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(T) + 63) / 64 * 64;
    p.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
    TORCH_CHECK(p, "mlp_chain: out of memory");
    std::fill(p.get(), p.get() + count, T(0));
  }
  T* data() { return p.get(); }
  const T* data() const { return p.get(); }
  T& operator[](int64_t i) { return p.get()[i]; }
  T* begin() { return p.get(); }
  T* end() { return p.get() + n; }
};

template <typename T>
struct TileBuffers {
  // x, g, y, gy: [R, dP] (padded columns stay 0); acts, ders: depth x [R, HP]; delta, delta2:
  // [R, HP]; noise: the tile's normals; u, uy: [R]; lu: MALA's log uniforms (mh_log_uniforms).
  Buf<T> x, g, y, gy, acts, ders, delta, delta2, noise, u, uy;
  std::vector<double> lu;
  TileBuffers(const MlpArgs<T>& c, int64_t R)
      : x(R * c.dP), g(R * c.dP), y(R * c.dP), gy(R * c.dP), acts(c.depth * R * c.HP), ders(c.depth * R * c.HP),
        delta(R * c.HP), delta2(R * c.HP), noise(R * c.d + 8), u(R), uy(R), lu(R + 2) {}
};

// U and grad U of the R tile rows of v [R, dP] into u [R], g [R, dP].
template <typename T, int64_t ACT, typename S>
FL_HD void mlp_eval(const MlpArgs<T>& c, int64_t R, const T* __restrict__ v, T* __restrict__ u, T* __restrict__ g,
                    TileBuffers<T>& b) {
  constexpr int L = kLanes<T>;
  const int64_t HP = c.HP, dP = c.dP;
  const T* in = v;
  int64_t K = dP;
  for (int64_t l = 0; l < c.depth; ++l) {
    T* __restrict__ A = b.acts.data() + l * R * HP;
    T* __restrict__ D = b.ders.data() + l * R * HP;
    gemm_tile<T, kBias, S, ACT>(in, R, K, c.fwd[l], HP, A, c.bias[l], T(0), D);
    in = A;
    K = HP;
  }
  // head: U = h_L . w + b + inv_ref |v|^2 / 2;  delta_L = w * act'(z_L)
  const T* __restrict__ AL = b.acts.data() + (c.depth - 1) * R * HP;
  const T* __restrict__ DL = b.ders.data() + (c.depth - 1) * R * HP;
  T* __restrict__ delta = b.delta.data();
  for (int64_t r = 0; r < R; ++r) {
    T part[L] = {};
    for (int64_t o = 0; o < HP; o += L) {
      FL_UNROLL
      for (int j = 0; j < L; ++j) {
        part[j] += AL[r * HP + o + j] * c.head[o + j];
        delta[r * HP + o + j] = c.head[o + j] * DL[r * HP + o + j];
      }
    }
    T sq[L] = {};
    for (int64_t o = 0; o < dP; o += L) {
      FL_UNROLL
      for (int j = 0; j < L; ++j) sq[j] += v[r * dP + o + j] * v[r * dP + o + j];
    }
    T acc = 0, accq = 0;
    FL_UNROLL
    for (int j = 0; j < L; ++j) {
      acc += part[j];
      accq += sq[j];
    }
    u[r] = (acc + c.head_bias) + T(0.5) * c.inv_ref * accq;
  }
  // delta_{l-1} = (delta_l W_l) * act'(z_{l-1}), l = depth-1 .. 1
  T* cur = b.delta.data();
  T* nxt = b.delta2.data();
  for (int64_t l = c.depth - 1; l >= 1; --l) {
    const T* __restrict__ D = b.ders.data() + (l - 1) * R * HP;
    gemm_tile<T, kMul, S>(cur, R, HP, c.bwd[l], HP, nxt, D, T(0));
    std::swap(cur, nxt);
  }
  // grad U = delta_1 W_1 + inv_ref v
  gemm_tile<T, kAxpy, S>(cur, R, HP, c.bwd[0], dP, g, v, c.inv_ref);
}

// All n_steps for walkers [r0, r1) whose state is in b.x, b.g, b.u; R = the padded row count.
template <typename T, int64_t ACT, typename S>
FL_HD void run_tile(const MlpArgs<T>& c, int64_t r0, int64_t r1, int64_t R, TileBuffers<T>& b) {
  const int64_t d = c.d, dP = c.dP, nr = r1 - r0;
  const RowsNoise noise(r0, r1, d);
  const uint64_t e0 = noise.e0;
  T* __restrict__ xs = b.x.data();
  T* __restrict__ gs = b.g.data();
  T* __restrict__ ys = b.y.data();
  T* __restrict__ gys = b.gy.data();
  const T a = c.a, s = c.s;
  for (int64_t k = 0; k < c.n_steps; ++k) {
    const uint64_t off = c.offset + static_cast<uint64_t>(k);  // wraps mod 2^64 like sample()'s offsets
    noise.fill(c.seed, off, b.noise.data());
    // ULA updates x in place; the other modes propose y and keep x.
    T* __restrict__ dst = c.mode == kUla ? xs : ys;
    for (int64_t lr = 0; lr < nr; ++lr) {
      const T* __restrict__ xi = b.noise.data() + (static_cast<uint64_t>(r0 + lr) * d - e0);
      const T* __restrict__ x = xs + lr * dP;
      const T* __restrict__ g = gs + lr * dP;
      T* __restrict__ y = dst + lr * dP;
      for (int64_t j = 0; j < d; ++j) y[j] = (x[j] - a * g[j]) + s * xi[j];  // langevin_step's order
    }
    if (c.mode == kUla) {
      mlp_eval<T, ACT, S>(c, R, xs, b.u.data(), gs, b);
      continue;
    }
    mlp_eval<T, ACT, S>(c, R, ys, b.uy.data(), gys, b);
    if (c.mode == kMala) mh_log_uniforms(c.seed, mh_offset(off), r0, r1, b.lu.data());
    for (int64_t lr = 0; lr < nr; ++lr) {
      const int64_t r = r0 + lr;
      T* x = xs + lr * dP;
      T* g = gs + lr * dP;
      const T* y = ys + lr * dP;
      const T* gy = gys + lr * dP;
      const double inc = (static_cast<double>(b.u[lr]) - static_cast<double>(b.uy[lr])) +
                         increment_sum(x, y, g, gy, d, c.rc);
      if (c.weigh_or_accept(k, r, inc, b.lu.data(), r0)) {
        std::copy(y, y + d, x);
        std::copy(gy, gy + d, g);
        b.u[lr] = b.uy[lr];
      }
    }
  }
}

#define FL_MLP_TILE_CLONE(NAME, TARGET, SHAPE)                                                  \
  template <typename T>                                                                         \
  TARGET void NAME(const MlpArgs<T>& c, int64_t r0, int64_t r1, int64_t R, TileBuffers<T>& b) { \
    switch (c.act) {                                                                            \
      case kSilu: return run_tile<T, kSilu, SHAPE>(c, r0, r1, R, b);                            \
      case kSoftplus: return run_tile<T, kSoftplus, SHAPE>(c, r0, r1, R, b);                    \
      default: return run_tile<T, kTanh, SHAPE>(c, r0, r1, R, b);                               \
    }                                                                                           \
  }

FL_MLP_TILE_CLONE(run_tile_generic, , Avx2Shape)

#if defined(__x86_64__) || defined(_M_X64)
// The same code compiled for AVX2 + FMA and for AVX-512, picked at run time (the extension is
// built for baseline x86-64). prefer-vector-width=512: the activation and step loops in zmm
// too (GCC's default tuning would vectorise them in ymm).
FL_MLP_TILE_CLONE(run_tile_avx2, __attribute__((target("avx2,fma"))), Avx2Shape)
FL_MLP_TILE_CLONE(run_tile_avx512,
                  __attribute__((target("avx2,fma,avx512f,avx512vl,avx512dq,prefer-vector-width=512"))),
                  Avx512Shape)
#endif

template <typename T>
void run_chain(const MlpArgs<T>& c, T* xp, T* gp, T* up) {
  const int64_t d = c.d, dP = c.dP;
  // The threads split kRowPad-row blocks, not tiles: each takes a contiguous run of blocks and
  // cuts it into tiles of up to kTileRows rows, so the only padding is the last block's. With
  // whole tiles split between threads, N = 1024 on 2 threads was 15 tiles of 36 against 14
  // (540 rows of work against an even 512); with blocks it is 43 blocks each (516 rows).
  const int64_t n_blocks = (c.N + kRowPad - 1) / kRowPad;
  const int64_t rows = std::min(kTileRows, n_blocks * kRowPad);
  at::parallel_for(0, n_blocks, 1, [&](int64_t bb, int64_t be) {
    TileBuffers<T> b(c, rows);
    for (int64_t r0 = bb * kRowPad, r_end = std::min(c.N, be * kRowPad); r0 < r_end; r0 += rows) {
      const int64_t r1 = std::min(r_end, r0 + rows), nr = r1 - r0;
      std::fill(b.x.begin(), b.x.end(), T(0));  // padded rows and columns: zeros
      std::fill(b.g.begin(), b.g.end(), T(0));
      std::fill(b.y.begin(), b.y.end(), T(0));
      for (int64_t lr = 0; lr < nr; ++lr) {
        std::copy(xp + (r0 + lr) * d, xp + (r0 + lr + 1) * d, b.x.data() + lr * dP);
        std::copy(gp + (r0 + lr) * d, gp + (r0 + lr + 1) * d, b.g.data() + lr * dP);
      }
      std::copy(up + r0, up + r1, b.u.data());
      // The micro-kernels run on whole row blocks: only round_up(nr, kRowPad) rows are computed.
      const int64_t R = round_up(nr, kRowPad);
#if defined(__x86_64__) || defined(_M_X64)
      if (cpu_has(CpuIsa::kAvx512)) {
        run_tile_avx512(c, r0, r1, R, b);
      } else if (cpu_has(CpuIsa::kAvx2)) {
        run_tile_avx2(c, r0, r1, R, b);
      } else {
        run_tile_generic(c, r0, r1, R, b);
      }
#else
      run_tile_generic(c, r0, r1, R, b);
#endif
      for (int64_t lr = 0; lr < nr; ++lr) {
        std::copy(b.x.data() + lr * dP, b.x.data() + lr * dP + d, xp + (r0 + lr) * d);
        std::copy(b.g.data() + lr * dP, b.g.data() + lr * dP + d, gp + (r0 + lr) * d);
      }
      std::copy(b.u.data(), b.u.data() + nr, up + r0);
    }
  });
}

void mlp_chain_cpu(at::Tensor& x, at::Tensor& energy, at::Tensor& grad, at::TensorList weights, at::TensorList biases,
                   int64_t act, double inv_ref_var, int64_t n_steps, double step, double noise_std, int64_t seed,
                   int64_t offset, int64_t mode, const std::optional<at::Tensor>& log_w,
                   const std::optional<at::Tensor>& log_w_steps, at::Tensor& accepted) {
  // Guards for direct callers; fastlangevin/chain.py checks everything with friendly messages.
  TORCH_CHECK(x.dim() == 2, "mlp_chain: x must be [N, d]");
  const int64_t N = x.size(0), d = x.size(1);
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble, "mlp_chain: x must be float32 or float64");
  const int64_t depth = static_cast<int64_t>(weights.size()) - 1;
  TORCH_CHECK(depth >= 1 && depth <= kMaxDepth, "mlp_chain: weights must hold 2 to 5 matrices (1 to 4 hidden layers "
              "and the head), got ", weights.size());
  TORCH_CHECK(biases.size() == weights.size(), "mlp_chain: biases must hold one vector per weight matrix");
  const int64_t H = weights[0].dim() == 2 ? weights[0].size(0) : -1;
  TORCH_CHECK(H >= 1 && H <= kMaxHidden, "mlp_chain: hidden width must be in [1, 128]");
  for (int64_t l = 0; l <= depth; ++l) {
    const at::Tensor& w = weights[l];
    const at::Tensor& bb = biases[l];
    const int64_t out = l == depth ? 1 : H, in = l == 0 ? d : H;
    TORCH_CHECK(w.dim() == 2 && w.size(0) == out && w.size(1) == in, "mlp_chain: weights[", l, "] must be [", out,
                ", ", in, "]");
    TORCH_CHECK(bb.dim() == 1 && bb.size(0) == out, "mlp_chain: biases[", l, "] must be [", out, "]");
    TORCH_CHECK(w.is_contiguous() && bb.is_contiguous() && w.scalar_type() == st && bb.scalar_type() == st,
                "mlp_chain: weights and biases must be contiguous, x's dtype");
  }
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&x, &energy, &grad})
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == st, "mlp_chain: x, energy, grad must be contiguous, one dtype");
  TORCH_CHECK(grad.sizes() == x.sizes() && energy.dim() == 1 && energy.size(0) == N,
              "mlp_chain: grad must be [N, d] and energy [N]");
  TORCH_CHECK(act >= kSilu && act <= kTanh, "mlp_chain: act must be 0 (silu), 1 (softplus) or 2 (tanh)");
  check_chain_state("mlp_chain", N, n_steps, mode, log_w, log_w_steps, accepted);
  if (N == 0 || n_steps == 0) return;

  AT_DISPATCH_FLOATING_TYPES(st, "mlp_chain_cpu", [&] {
    using T = scalar_t;
    constexpr int L = kLanes<T>;
    const int64_t dP = round_up(d, L), HP = round_up(H, L);
    // Packed, zero-padded weights (once per call): forward W^T [IP, HP], backward W [HP, IP].
    std::vector<Buf<T>> fwd, bwd, bias;
    for (int64_t l = 0; l < depth; ++l) {
      const int64_t in = l == 0 ? d : H, IP = l == 0 ? dP : HP;
      const T* w = weights[l].data_ptr<T>();
      fwd.emplace_back(IP * HP);
      bwd.emplace_back(HP * IP);
      bias.emplace_back(HP);
      for (int64_t o = 0; o < H; ++o) {
        for (int64_t i = 0; i < in; ++i) {
          fwd[l][i * HP + o] = w[o * in + i];
          bwd[l][o * IP + i] = w[o * in + i];
        }
        bias[l][o] = biases[l].data_ptr<T>()[o];
      }
    }
    Buf<T> head(HP);
    std::copy(weights[depth].data_ptr<T>(), weights[depth].data_ptr<T>() + H, head.data());

    MlpArgs<T> c;
    static_cast<ChainRun<T>&>(c) =
        make_chain_run<T>(N, n_steps, step, noise_std, seed, offset, mode, log_w, log_w_steps, accepted);
    c.depth = depth;
    c.d = d;
    c.dP = dP;
    c.HP = HP;
    c.act = act;
    for (int64_t l = 0; l < depth; ++l) {
      c.fwd[l] = fwd[l].data();
      c.bwd[l] = bwd[l].data();
      c.bias[l] = bias[l].data();
    }
    c.head = head.data();
    c.head_bias = biases[depth].data_ptr<T>()[0];
    c.inv_ref = static_cast<T>(inv_ref_var);
    run_chain(c, x.data_ptr<T>(), grad.data_ptr<T>(), energy.data_ptr<T>());
  });
  if (mode != kMala) accepted.add_(n_steps);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlangevin, CPU, m) {
  m.impl("mlp_chain", &mlp_chain_cpu);
}

}  // namespace fastlangevin
