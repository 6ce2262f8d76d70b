// CUDA kernels of the fused Gaussian-mixture and double-well chains (schemas and update
// equations in csrc/fastlangevin.cpp, readable versions fastlangevin/reference.py::
// mixture_chain_ref and double_well_chain_ref; the CPU kernels are csrc/cpu/chain_cpu.cpp, the
// Triton ones fastlangevin/kernels/mixture_chain.py). One kernel, templated on the energy
// (MixtureDev, DoubleWellDev): the double well is a per-lane elementwise map and one warp sum.
// The double-well instantiation is unexecuted: compiled (FORCE_CUDA=1, sm_90) without a GPU.
//
// One warp per walker for all n_steps. Lane l holds the walker's elements j = l + 32 i
// (i < PER_LANE) of x, grad, y and grad_y in registers: consecutive lanes touch consecutive
// elements, so the loads and stores at the ends are coalesced, and the per-component quadratic
// forms and the Jarzynski / MALA increment are warp reductions (xor butterflies, so every lane
// ends with the same sum and no broadcast is needed). PER_LANE is 1, 4 or 16 (d <= 32, 128,
// 512 = fastlangevin.chain.CUDA_MIXTURE_MAX_D): three instantiations per dtype; beyond 512 the
// registers would spill and the Python side runs the Triton chain or the step-by-step loop.
// 8 warps (walkers) per block of 256 threads; no grid-stride loop: a warp lives for the whole
// chain, so the grid is simply ceil(N / 8) blocks. ptxas (CUDA 13.0, -Xptxas -v) for sm_90 /
// sm_80: PER_LANE 1 and 4 need 40-94 registers and do not spill; PER_LANE 16 uses 128
// registers in float32 (12-24 bytes of spill) and 255 in float64 (4 bytes of spill, one block
// of 8 warps per SM): fine for a first version, the place to look if d near 512 runs slowly.
//
// The mixture parameters (means, inv_var [K, d], log_coef [K]) are copied once per block into
// shared memory when they fit the default 48 KiB of dynamic shared memory (K (2 d + 1) values:
// K <= 47 components at d = 64 in float64), else read from global memory (L1/L2-resident).
// The K components are visited once per step with an online logsumexp (running max, rescaled
// sum and gradient accumulator), as the Triton kernel does; the CPU kernel takes the max first.
//
// Noise: element n * d + j of step k is lane (n d + j) % 4 of Philox block (n d + j) / 4 of
// stream (seed, offset + k), csrc/philox.h. Each element computes its block and only the
// Box-Muller pair it needs (2 of the 4 normals), with normal.h's exact float32 arithmetic, so
// the normals equal langevin_step's (float64: the same double-precision maps as normals4_f64).
// Everything in this file is unexecuted as of its first commit: it was compiled and linked
// (FORCE_CUDA=1, sm_90) on a machine without a GPU; tests/test_chain.py's cuda-cuda cases are
// the check to run where a GPU is lent.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <initializer_list>
#include <limits>
#include <optional>

#include "../chain_run.h"
#include "../log_ratio.h"
#include "../normal.h"
#include "../philox.h"

namespace fastlangevin {
namespace {

constexpr int kWarp = 32;
constexpr int kChainThreads = 256;
constexpr int kWalkersPerBlock = kChainThreads / kWarp;
constexpr int64_t kMaxD = 16 * kWarp;                // fastlangevin.chain.CUDA_MIXTURE_MAX_D
constexpr size_t kMaxSharedBytes = 48 * 1024;         // dynamic shared memory without an opt-in

// The run fields (csrc/chain_run.h) and the energy E (MixtureDev, DoubleWellDev below).
template <typename T, typename E>
struct CudaChainArgs : ChainRun<T> {
  E e;
  int64_t d;
};

template <typename T>
__device__ __forceinline__ T warp_allsum(T v) {
#pragma unroll
  for (int m = kWarp / 2; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

__device__ __forceinline__ float dev_exp(float v) { return expf(v); }
__device__ __forceinline__ double dev_exp(double v) { return exp(v); }
__device__ __forceinline__ float dev_log(float v) { return logf(v); }
__device__ __forceinline__ double dev_log(double v) { return log(v); }

// Normal number e of stream (seed, off): lane e % 4 of Philox block e / 4, from csrc/normal.h's
// box_muller_pair of the two words that hold it (as normals4_f32 / normals4_f64 pair them).
template <typename T>
__device__ __forceinline__ T normal_at(uint64_t seed, uint64_t off, uint64_t e) {
  const Words4 w = philox_block(seed, off, e >> 2);
  const bool second = (e & 2) != 0;  // lanes 2, 3 come from words (w2, w3)
  const uint32_t wa = second ? w.w[2] : w.w[0];
  const uint32_t wb = second ? w.w[3] : w.w[1];
  const bool odd = (e & 1) != 0;     // lanes 1, 3 are the sine halves
  T zc, zs;
  box_muller_pair(wa, wb, zc, zs);
  return odd ? zs : zc;
}

// U(v), and grad U(v) into g; v and g are this lane's elements of one walker (zeros past d).
template <typename T, int PER_LANE>
__device__ __forceinline__ T mixture_eval(const T (&v)[PER_LANE], T (&g)[PER_LANE], const T* __restrict__ means,
                                          const T* __restrict__ iv, const T* __restrict__ coef, int64_t K, int64_t d,
                                          int lane) {
  T mx = -std::numeric_limits<T>::infinity();
  T sum = 0;
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) g[i] = 0;
  for (int64_t k = 0; k < K; ++k) {
    const T* m = means + k * d;
    const T* w = iv + k * d;
    T div[PER_LANE];
    T part = 0;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
      const int64_t j = lane + kWarp * i;
      div[i] = 0;
      if (j < d) {
        const T df = v[i] - m[j];
        div[i] = df * w[j];
        part += df * div[i];
      }
    }
    const T q = coef[k] - T(0.5) * warp_allsum(part);
    const T nmx = q > mx ? q : mx;
    // shift by 0 while the max is still -inf (the first component, or leading components of
    // zero weight, log_coef = -inf): exp(-inf - 0) = 0 where exp(-inf - -inf) would be NaN
    const T shift = nmx == -std::numeric_limits<T>::infinity() ? T(0) : nmx;
    const T scale = dev_exp(mx - shift);
    const T e = dev_exp(q - shift);
    sum = sum * scale + e;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) g[i] = g[i] * scale + e * div[i];
    mx = nmx;
  }
  const T inv = T(1) / sum;
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) g[i] *= inv;
  return -(mx + dev_log(sum));
}

// The Gaussian mixture: means, iv [K, d], coef [K], copied into shared memory by prepare()
// when params_in_smem.
template <typename T>
struct MixtureDev {
  const T* means;  // [K, d]
  const T* iv;     // [K, d]
  const T* coef;   // [K]
  int64_t K, d;
  bool params_in_smem;

  // Called by every thread of the block before any warp leaves (it may __syncthreads).
  __device__ __forceinline__ void prepare(unsigned char* smem_raw) {
    if (!params_in_smem) return;
    T* sm = reinterpret_cast<T*>(smem_raw);
    const int64_t kd = K * d;
    for (int64_t i = threadIdx.x; i < kd; i += blockDim.x) {
      sm[i] = means[i];
      sm[kd + i] = iv[i];
    }
    for (int64_t i = threadIdx.x; i < K; i += blockDim.x) sm[2 * kd + i] = coef[i];
    __syncthreads();
    means = sm;
    iv = sm + kd;
    coef = sm + 2 * kd;
  }

  template <int PER_LANE>
  __device__ __forceinline__ T eval(const T (&v)[PER_LANE], T (&g)[PER_LANE], int lane) const {
    return mixture_eval<T, PER_LANE>(v, g, means, iv, coef, K, d, lane);
  }
};

// The separable double well: par [2] = (barrier, center) on the device, read by prepare() (no
// host sync); w_j = v_j^2 - c2, U = h sum_j w_j^2, grad U_j = ((4 h) v_j) w_j.
template <typename T>
struct DoubleWellDev {
  const T* par;
  int64_t d;
  T h, c2;

  __device__ __forceinline__ void prepare(unsigned char*) {
    h = par[0];
    c2 = par[1] * par[1];
  }

  template <int PER_LANE>
  __device__ __forceinline__ T eval(const T (&v)[PER_LANE], T (&g)[PER_LANE], int lane) const {
    const T h4 = T(4) * h;
    T part = 0;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
      g[i] = 0;
      if (lane + kWarp * i < d) {
        const T w = v[i] * v[i] - c2;
        part += w * w;
        g[i] = (h4 * v[i]) * w;
      }
    }
    return h * warp_allsum(part);
  }
};

template <typename T, int PER_LANE, typename E>
__global__ void __launch_bounds__(kChainThreads)
chain_kernel(T* __restrict__ xp,  // [N, d], updated in place
             T* __restrict__ up,  // [N]
             T* __restrict__ gp,  // [N, d]
             const CudaChainArgs<T, E> c) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int64_t d = c.d;
  E e = c.e;
  e.prepare(smem_raw);
  const int lane = threadIdx.x % kWarp;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWalkersPerBlock + threadIdx.x / kWarp;
  if (r >= c.N) return;  // whole warps leave together, after the only __syncthreads

  T x[PER_LANE], g[PER_LANE], y[PER_LANE], gy[PER_LANE];
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) {
    const int64_t j = lane + kWarp * i;
    x[i] = j < d ? xp[r * d + j] : T(0);
    g[i] = j < d ? gp[r * d + j] : T(0);
  }
  T u = up[r];
  double lw = c.mode == kWeights ? c.log_w[r] : 0.0;
  int64_t taken = 0;
  const T a = c.a, s = c.s;
  for (int64_t k = 0; k < c.n_steps; ++k) {
    const uint64_t off = c.offset + static_cast<uint64_t>(k);  // wraps mod 2^64 like sample()'s offsets
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
      const int64_t j = lane + kWarp * i;
      // langevin_step's order: (x - a g) + s xi
      y[i] = j < d ? (x[i] - a * g[i]) + s * normal_at<T>(c.seed, off, static_cast<uint64_t>(r * d + j)) : T(0);
    }
    const T uy = e.template eval<PER_LANE>(y, gy, lane);
    bool take = true;
    if (c.mode != kUla) {
      double part = 0.0;
#pragma unroll
      for (int i = 0; i < PER_LANE; ++i) {
        if (lane + kWarp * i < d)
          part += increment_term<false>(static_cast<double>(x[i]), static_cast<double>(y[i]),
                                        static_cast<double>(g[i]), static_cast<double>(gy[i]),
                                        c.rc);  // a chain has no reference term (csrc/log_ratio.h)
      }
      const double inc = (static_cast<double>(u) - static_cast<double>(uy)) + warp_allsum(part);
      if (c.mode == kWeights) {
        lw += inc;
        if (c.log_w_steps != nullptr && lane == 0) c.log_w_steps[k * c.N + r] = lw;
      } else {
        const double u01 = resample_uniform(c.seed, mh_offset(off), static_cast<uint64_t>(r));
        take = log(u01) < inc;  // NaN ratios reject, as in sample()'s MALA
        taken += take ? 1 : 0;
      }
    }
    if (take) {
#pragma unroll
      for (int i = 0; i < PER_LANE; ++i) {
        x[i] = y[i];
        g[i] = gy[i];
      }
      u = uy;
    }
  }
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) {
    const int64_t j = lane + kWarp * i;
    if (j < d) {
      xp[r * d + j] = x[i];
      gp[r * d + j] = g[i];
    }
  }
  if (lane == 0) {
    up[r] = u;
    if (c.mode == kWeights) c.log_w[r] = lw;
    c.accepted[r] += c.mode == kMala ? taken : c.n_steps;
  }
}

template <typename T, int PER_LANE, typename E>
void launch(const CudaChainArgs<T, E>& c, T* xp, T* up, T* gp, size_t smem) {
  const int64_t blocks = (c.N + kWalkersPerBlock - 1) / kWalkersPerBlock;
  chain_kernel<T, PER_LANE, E><<<static_cast<unsigned>(blocks), kChainThreads, smem,
                                 at::cuda::getCurrentCUDAStream()>>>(xp, up, gp, c);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The instantiation for d (PER_LANE 1, 4 or 16).
template <typename T, typename E>
void launch_for_d(const CudaChainArgs<T, E>& c, at::Tensor& x, at::Tensor& energy, at::Tensor& grad, size_t smem) {
  T* xp = x.data_ptr<T>();
  T* up = energy.data_ptr<T>();
  T* gp = grad.data_ptr<T>();
  if (c.d <= kWarp) {
    launch<T, 1>(c, xp, up, gp, smem);
  } else if (c.d <= 4 * kWarp) {
    launch<T, 4>(c, xp, up, gp, smem);
  } else {
    launch<T, 16>(c, xp, up, gp, smem);
  }
}

// The device and size checks every chain op of this file shares (after its argument checks).
void check_cuda_chain(const char* op, std::initializer_list<const at::Tensor*> ts, const at::Tensor& x,
                      const std::optional<at::Tensor>& log_w, const std::optional<at::Tensor>& log_w_steps) {
  for (const at::Tensor* t : ts)
    TORCH_CHECK(t->device() == x.device(), op, ": every tensor must be on x's device (", x.device(),
                "), got one on ", t->device());
  if (log_w) TORCH_CHECK(log_w->device() == x.device(), op, ": log_w is on ", log_w->device());
  if (log_w_steps) TORCH_CHECK(log_w_steps->device() == x.device(), op, ": log_w_steps is on ", log_w_steps->device());
  const int64_t N = x.size(0), d = x.size(1);
  TORCH_CHECK(d <= kMaxD, op, ": the CUDA kernel runs walkers of dimension d <= ", kMaxD,
              " (one warp per walker, 16 elements per lane), got d = ", d);
  TORCH_CHECK(N / kWalkersPerBlock < std::numeric_limits<int32_t>::max(), op, ": too many walkers (", N,
              ") for one launch");
}

void mixture_chain_cuda(at::Tensor& x, at::Tensor& energy, at::Tensor& grad, const at::Tensor& means,
                        const at::Tensor& inv_var, const at::Tensor& log_coef, int64_t n_steps, double step,
                        double noise_std, int64_t seed, int64_t offset, int64_t mode,
                        const std::optional<at::Tensor>& log_w, const std::optional<at::Tensor>& log_w_steps,
                        at::Tensor& accepted) {
  check_mixture_chain_args(x, energy, grad, means, inv_var, log_coef);
  const int64_t N = x.size(0), d = x.size(1), K = means.size(0);
  check_chain_state("mixture_chain", N, n_steps, mode, log_w, log_w_steps, accepted);
  check_cuda_chain("mixture_chain", {&x, &energy, &grad, &means, &inv_var, &log_coef, &accepted}, x, log_w,
                   log_w_steps);
  const c10::cuda::CUDAGuard guard(x.device());
  if (N == 0 || n_steps == 0) return;

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mixture_chain_cuda", [&] {
    using T = scalar_t;
    CudaChainArgs<T, MixtureDev<T>> c;
    static_cast<ChainRun<T>&>(c) =
        make_chain_run<T>(N, n_steps, step, noise_std, seed, offset, mode, log_w, log_w_steps, accepted);
    const size_t bytes = static_cast<size_t>(K * (2 * d + 1)) * sizeof(T);
    c.e = {means.data_ptr<T>(), inv_var.data_ptr<T>(), log_coef.data_ptr<T>(), K, d, bytes <= kMaxSharedBytes};
    c.d = d;
    launch_for_d(c, x, energy, grad, c.e.params_in_smem ? bytes : 0);
  });
}

void double_well_chain_cuda(at::Tensor& x, at::Tensor& energy, at::Tensor& grad, const at::Tensor& params,
                            int64_t n_steps, double step, double noise_std, int64_t seed, int64_t offset,
                            int64_t chain_mode, const std::optional<at::Tensor>& log_w,
                            const std::optional<at::Tensor>& log_w_steps, at::Tensor& accepted) {
  check_double_well_chain_args(x, energy, grad, params);
  const int64_t N = x.size(0), d = x.size(1);
  check_chain_state("double_well_chain", N, n_steps, chain_mode, log_w, log_w_steps, accepted);
  check_cuda_chain("double_well_chain", {&x, &energy, &grad, &params, &accepted}, x, log_w, log_w_steps);
  const c10::cuda::CUDAGuard guard(x.device());
  if (N == 0 || n_steps == 0) return;

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "double_well_chain_cuda", [&] {
    using T = scalar_t;
    CudaChainArgs<T, DoubleWellDev<T>> c;
    static_cast<ChainRun<T>&>(c) =
        make_chain_run<T>(N, n_steps, step, noise_std, seed, offset, chain_mode, log_w, log_w_steps, accepted);
    c.e = {params.data_ptr<T>(), d, T(0), T(0)};
    c.d = d;
    launch_for_d(c, x, energy, grad, 0);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlangevin, CUDA, m) {
  m.impl("mixture_chain", &mixture_chain_cuda);
  m.impl("double_well_chain", &double_well_chain_cuda);
}

}  // namespace fastlangevin
