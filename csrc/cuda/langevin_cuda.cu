// CUDA kernels for the noise stream and the Langevin step.
//
// One thread owns one Philox block, i.e. 4 consecutive elements: the 4 words of a Philox call
// become exactly the 4 normals those elements need, so no random bits are wasted and no
// thread needs another thread's words. All three ops live in this one file on purpose: with
// torch 2.14 headers every .cu costs minutes of nvcc time on a 2-core CI machine.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <optional>

#include "../normal.h"
#include "../philox.h"
#include "../step_checks.h"
#include "launch.cuh"

namespace fastlangevin {
namespace {

__global__ void philox_kernel(const int64_t* __restrict__ counter,  // [n, 4]
                              int64_t* __restrict__ out,            // [n, 4]
                              int64_t n, uint64_t seed) {
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < n;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Words4 w = philox4x32_10(static_cast<uint32_t>(counter[4 * r]), static_cast<uint32_t>(counter[4 * r + 1]),
                                   static_cast<uint32_t>(counter[4 * r + 2]),
                                   static_cast<uint32_t>(counter[4 * r + 3]), static_cast<uint32_t>(seed),
                                   static_cast<uint32_t>(seed >> 32));
#pragma unroll
    for (int k = 0; k < 4; ++k) out[4 * r + k] = static_cast<int64_t>(w.w[k]);
  }
}

template <typename acc_t>
__device__ __forceinline__ void block_normals(uint64_t seed, uint64_t offset, uint64_t block, acc_t z[4]) {
  const Words4 w = philox_block(seed, offset, block);
  if constexpr (std::is_same_v<acc_t, double>) {
    normals4_f64(w, z);
  } else {
    normals4_f32(w, z);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void randn_kernel(scalar_t* __restrict__ out, int64_t n, uint64_t seed, uint64_t offset) {
  const int64_t nblocks = (n + 3) / 4;
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; b < nblocks;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t z[4];
    block_normals<acc_t>(seed, offset, static_cast<uint64_t>(b), z);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t i = 4 * b + k;
      if (i < n) out[i] = static_cast<scalar_t>(z[k]);
    }
  }
}

template <typename acc_t>
struct StepArgs {
  const acc_t* step_t;  // [N] or nullptr
  const acc_t* std_t;   // [N] or nullptr
  acc_t step, noise_std, inv_ref, clip, lo, hi;
  int64_t row_len;
  uint64_t seed, offset;
  bool rng, has_ref, has_clip, has_clamp;
};

// y = clamp( x - a * ( clip(g) + x * inv_ref ) + s * xi ), in the reference's order.
template <typename acc_t>
__device__ __forceinline__ acc_t step_one(acc_t xv, acc_t gv, acc_t xi, acc_t a, acc_t s, const StepArgs<acc_t>& p) {
  if (p.has_clip) {
    gv = gv < -p.clip ? -p.clip : gv;
    gv = gv > p.clip ? p.clip : gv;
  }
  const acc_t drift = p.has_ref ? gv + xv * p.inv_ref : gv;
  acc_t v = xv - a * drift + s * xi;
  if (p.has_clamp) {
    v = v < p.lo ? p.lo : v;
    v = v > p.hi ? p.hi : v;
  }
  return v;
}

// No pointer carries __restrict__: langevin_step(..., out=x), out=grad and out=noise are all
// allowed and pass one buffer twice (each element is read, then written, by the same thread,
// but restrict-qualified aliasing is UB whichever input it is). What the read-only-cache loads
// that __restrict__ const allows would buy on these streaming reads is unmeasured (no GPU has
// been lent); a kernel that is wrong under aliasing is not worth it.
template <typename scalar_t, typename acc_t>
__global__ void langevin_step_kernel(const scalar_t* x,      // [N, ...]
                                     const scalar_t* g,      // [N, ...], may be y
                                     const scalar_t* noise,  // [N, ...] or nullptr, may be y
                                     scalar_t* y,            // [N, ...], may be x, g or noise
                                     int64_t n, StepArgs<acc_t> p) {
  const int64_t nblocks = (n + 3) / 4;
  const bool per_row = p.step_t != nullptr || p.std_t != nullptr;
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; b < nblocks;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t z[4] = {0, 0, 0, 0};
    if (p.rng) block_normals<acc_t>(p.seed, p.offset, static_cast<uint64_t>(b), z);
    const int64_t i0 = 4 * b;
    if constexpr (std::is_same_v<scalar_t, float>) {
      // Fast path: 16-byte loads and stores when the 4 elements are in range and aligned
      // (the Python side hands over contiguous tensors; torch allocations are 256-B aligned).
      if (i0 + 3 < n && !per_row && noise == nullptr &&
          ((reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(g) | reinterpret_cast<uintptr_t>(y)) & 15) == 0) {
        const float4 xv = reinterpret_cast<const float4*>(x)[b];
        const float4 gv = reinterpret_cast<const float4*>(g)[b];
        float4 o;
        o.x = step_one<float>(xv.x, gv.x, z[0], p.step, p.noise_std, p);
        o.y = step_one<float>(xv.y, gv.y, z[1], p.step, p.noise_std, p);
        o.z = step_one<float>(xv.z, gv.z, z[2], p.step, p.noise_std, p);
        o.w = step_one<float>(xv.w, gv.w, z[3], p.step, p.noise_std, p);
        reinterpret_cast<float4*>(y)[b] = o;
        continue;
      }
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t i = i0 + k;
      if (i >= n) break;
      acc_t a = p.step, s = p.noise_std;
      if (per_row) {
        const int64_t r = i / p.row_len;
        if (p.step_t) a = p.step_t[r];
        if (p.std_t) s = p.std_t[r];
      }
      const acc_t xi = noise != nullptr ? static_cast<acc_t>(noise[i]) : z[k];
      y[i] = static_cast<scalar_t>(step_one<acc_t>(static_cast<acc_t>(x[i]), static_cast<acc_t>(g[i]), xi, a, s, p));
    }
  }
}

at::Tensor philox_cuda(const at::Tensor& counter, int64_t seed) {
  TORCH_CHECK(counter.dim() == 2 && counter.size(1) == 4 && counter.scalar_type() == at::kLong,
              "philox: counter must be int64 [n, 4], got ", counter.scalar_type(), " ", counter.sizes());
  const c10::cuda::CUDAGuard guard(counter.device());
  auto c = counter.contiguous();
  auto out = at::empty_like(c);
  const int64_t n = c.size(0);
  if (n == 0) return out;
  philox_kernel<<<grid_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      c.data_ptr<int64_t>(), out.data_ptr<int64_t>(), n, static_cast<uint64_t>(seed));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

void randn_out_cuda(at::Tensor& out, int64_t seed, int64_t offset) {
  TORCH_CHECK(out.is_contiguous(), "randn: out must be contiguous");
  const c10::cuda::CUDAGuard guard(out.device());
  const int64_t n = out.numel();
  if (n == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "randn_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    randn_kernel<scalar_t, acc_t><<<grid_for((n + 3) / 4), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        out.data_ptr<scalar_t>(), n, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void langevin_step_out_cuda(const at::Tensor& x, const at::Tensor& grad, const std::optional<at::Tensor>& noise,
                            const std::optional<at::Tensor>& step_t, const std::optional<at::Tensor>& std_t,
                            double step, double noise_std, double inv_ref_var, double grad_clip, double clamp_lo,
                            double clamp_hi, int64_t seed, int64_t offset, at::Tensor& out) {
  check_step_args(x, grad, noise, step_t, std_t, out);
  if (step_apart_if_shifted(x, grad, noise, step_t, std_t, out, [&](at::Tensor& y) {
        langevin_step_out_cuda(x, grad, noise, step_t, std_t, step, noise_std, inv_ref_var, grad_clip, clamp_lo,
                               clamp_hi, seed, offset, y);
      })) {
    return;
  }
  TORCH_CHECK(!noise || noise->scalar_type() == x.scalar_type(), "langevin_step: noise must have x's dtype");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.numel();
  if (n == 0) return;
  const int64_t rows = x.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "langevin_step_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    StepArgs<acc_t> p;
    p.step_t = step_t ? step_t->data_ptr<acc_t>() : nullptr;
    p.std_t = std_t ? std_t->data_ptr<acc_t>() : nullptr;
    p.step = static_cast<acc_t>(step);
    p.noise_std = static_cast<acc_t>(noise_std);
    p.inv_ref = static_cast<acc_t>(inv_ref_var);
    p.has_ref = inv_ref_var != 0.0;
    p.clip = static_cast<acc_t>(grad_clip);
    p.has_clip = std::isfinite(grad_clip);
    p.lo = static_cast<acc_t>(clamp_lo);
    p.hi = static_cast<acc_t>(clamp_hi);
    p.has_clamp = std::isfinite(clamp_lo) || std::isfinite(clamp_hi);
    p.row_len = rows > 0 ? n / rows : 1;
    p.seed = static_cast<uint64_t>(seed);
    p.offset = static_cast<uint64_t>(offset);
    p.rng = !noise && (p.std_t != nullptr || noise_std != 0.0);
    langevin_step_kernel<scalar_t, acc_t><<<grid_for((n + 3) / 4), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), noise ? noise->data_ptr<scalar_t>() : nullptr,
        out.data_ptr<scalar_t>(), n, p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlangevin, CUDA, m) {
  m.impl("philox", &philox_cuda);
  m.impl("randn_out", &randn_out_cuda);
  m.impl("langevin_step_out", &langevin_step_out_cuda);
}

}  // namespace fastlangevin
