// CPU kernels of the fused Gaussian-mixture and double-well chains (schemas and update equations
// in csrc/fastlangevin.cpp, readable versions fastlangevin/reference.py::mixture_chain_ref and
// double_well_chain_ref): one step loop (run_tile), templated on the energy.
//
// Layout of the work: walkers are cut into tiles of rows (about kTileElems elements); each
// OpenMP task copies a tile's state (x, grad, energy) into local buffers and runs all n_steps
// on it before writing it back, so the state never leaves L1/L2 between steps. Per step the
// tile's normals come from the same vectorised Philox/Box-Muller generator as langevin_step
// (csrc/cpu/normals_cpu.h) into a buffer, for the tile's contiguous element range: element
// n * d + j of step k is the same normal the step-by-step path adds. A Philox block that
// straddles two tiles is computed by both (at most one extra block per tile per step).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../chain_run.h"
#include "../log_ratio.h"
#include "../philox.h"
#include "isa_cpu.h"
#include "normals_cpu.h"

namespace fastlangevin {
namespace {

// Elements per tile: the same 2048 as langevin_step's noise chunk (kChunk, measured there);
// the five [rows, d] tile buffers (x, grad, y, grad_y, noise) take 40 KiB in float32, inside
// L2. Not tuned for the chain separately yet.
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

// sum_j (v_j - m_j)^2 iv_j with kLanes independent partial sums.
template <typename T>
FL_HD T quad_form(const T* __restrict__ v, const T* __restrict__ m, const T* __restrict__ iv, int64_t d) {
  T part[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= d; j += kLanes) {
    FL_UNROLL
    for (int l = 0; l < kLanes; ++l) {
      const T df = v[j + l] - m[j + l];
      part[l] += df * df * iv[j + l];
    }
  }
  T acc = 0;
  for (; j < d; ++j) {
    const T df = v[j] - m[j];
    acc += df * df * iv[j];
  }
  FL_UNROLL
  for (int l = 0; l < kLanes; ++l) acc += part[l];
  return acc;
}

// The Gaussian mixture: means, iv [K, d], coef [K]; scratch [K].
template <typename T>
struct MixtureEnergy {
  const T* means;
  const T* iv;
  const T* coef;
  int64_t K, d;
  int64_t scratch() const { return K; }

  // U(v), and grad U(v) into g[d]; q: scratch [K].
  FL_HD T eval(const T* __restrict__ v, T* __restrict__ q, T* __restrict__ g) const {
    T qmax = -std::numeric_limits<T>::infinity();
    for (int64_t k = 0; k < K; ++k) {
      q[k] = coef[k] - T(0.5) * quad_form(v, means + k * d, iv + k * d, d);
      qmax = q[k] > qmax ? q[k] : qmax;
    }
    T sum = 0;
    for (int64_t k = 0; k < K; ++k) {
      q[k] = std::exp(q[k] - qmax);
      sum += q[k];
    }
    const T inv = T(1) / sum;
    for (int64_t k = 0; k < K; ++k) {
      const T r = q[k] * inv;
      const T* m = means + k * d;
      const T* ivk = iv + k * d;
      if (k == 0) {
        for (int64_t j = 0; j < d; ++j) g[j] = r * ((v[j] - m[j]) * ivk[j]);
      } else {
        for (int64_t j = 0; j < d; ++j) g[j] += r * ((v[j] - m[j]) * ivk[j]);
      }
    }
    return -(qmax + std::log(sum));
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

  FL_HD T eval(const T* __restrict__ v, T* __restrict__, T* __restrict__ g) const {
    const T h4 = T(4) * h;
    T part[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= d; j += kLanes) {
      FL_UNROLL
      for (int l = 0; l < kLanes; ++l) {
        const T w = v[j + l] * v[j + l] - c2;
        part[l] += w * w;
        g[j + l] = (h4 * v[j + l]) * w;
      }
    }
    T acc = 0;
    for (; j < d; ++j) {
      const T w = v[j] * v[j] - c2;
      acc += w * w;
      g[j] = (h4 * v[j]) * w;
    }
    FL_UNROLL
    for (int l = 0; l < kLanes; ++l) acc += part[l];
    return h * acc;
  }
};

template <typename T>
struct TileBuffers {
  std::vector<T> x, g, y, gy, noise, q, u;
  TileBuffers(int64_t rows, int64_t d, int64_t K)
      : x(rows * d), g(rows * d), y(rows * d), gy(rows * d), noise(rows * d + 8), q(K), u(rows) {}
};

// All n_steps for walkers [r0, r1): state in (xs, gs, us) of the buffers.
template <typename T, typename E>
FL_HD void run_tile(const ChainArgs<T, E>& c, int64_t r0, int64_t r1, TileBuffers<T>& b) {
  const int64_t d = c.d;
  const uint64_t e0 = (static_cast<uint64_t>(r0) * d) & ~uint64_t(3);  // first element of the first Philox block
  const uint64_t e1 = static_cast<uint64_t>(r1) * d;
  const int64_t nblocks = static_cast<int64_t>((e1 - e0 + 3) / 4);
  T* __restrict__ xs = b.x.data();
  T* __restrict__ gs = b.g.data();
  T* __restrict__ ys = b.y.data();
  T* __restrict__ gys = b.gy.data();
  T* __restrict__ q = b.q.data();
  T* us = b.u.data();
  const T a = c.a, s = c.s;
  for (int64_t k = 0; k < c.n_steps; ++k) {
    const uint64_t off = c.offset + static_cast<uint64_t>(k);  // wraps mod 2^64 like sample()'s offsets
    if constexpr (std::is_same_v<T, float>) {
      fill_normals_f32(c.seed, off, e0 / 4, nblocks, b.noise.data());
    } else {
      fill_normals_f64(c.seed, off, e0 / 4, nblocks, b.noise.data());
    }
    const uint64_t mh_off = mh_offset(off);
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
      if (c.weigh_or_accept(k, r, inc, mh_off)) {
        std::copy(y, y + d, x);
        std::copy(gy, gy + d, g);
        us[lr] = uy;
      }
    }
  }
}

template <typename T, typename E>
void run_tile_generic(const ChainArgs<T, E>& c, int64_t r0, int64_t r1, TileBuffers<T>& b) {
  run_tile(c, r0, r1, b);
}

#if defined(__x86_64__) || defined(_M_X64)
// The same code compiled for AVX2 + FMA, picked at run time (the extension itself is built for
// baseline x86-64, SSE2).
template <typename T, typename E>
__attribute__((target("avx2,fma"))) void run_tile_avx2(const ChainArgs<T, E>& c, int64_t r0, int64_t r1,
                                                       TileBuffers<T>& b) {
  run_tile(c, r0, r1, b);
}

template <typename T, typename E>
__attribute__((target("avx2,fma,avx512f,avx512vl"))) void run_tile_avx512(const ChainArgs<T, E>& c, int64_t r0,
                                                                        int64_t r1, TileBuffers<T>& b) {
  run_tile(c, r0, r1, b);
}
#endif

template <typename T, typename E>
void run_chain(const ChainArgs<T, E>& c, T* xp, T* gp, T* up) {
  const int64_t d = c.d;
  const int64_t rows = std::max<int64_t>(1, kTileElems / d);
  const int64_t n_tiles = (c.N + rows - 1) / rows;
  at::parallel_for(0, n_tiles, 1, [&](int64_t tb, int64_t te) {
    TileBuffers<T> b(rows, d, c.e.scratch());
    for (int64_t t = tb; t < te; ++t) {
      const int64_t r0 = t * rows, r1 = std::min(c.N, r0 + rows);
      std::copy(xp + r0 * d, xp + r1 * d, b.x.data());
      std::copy(gp + r0 * d, gp + r1 * d, b.g.data());
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
      std::copy(b.x.data(), b.x.data() + (r1 - r0) * d, xp + r0 * d);
      std::copy(b.g.data(), b.g.data() + (r1 - r0) * d, gp + r0 * d);
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
