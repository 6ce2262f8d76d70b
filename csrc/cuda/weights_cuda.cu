// CUDA kernel of the transition log-ratio (csrc/log_ratio.h has the arithmetic).
//
// A group of threads owns one walker row: a warp (32) when there are enough rows to fill the
// GPU, else the whole block (256), so a few very long rows still spread over many threads.
// Lanes stride through the row (consecutive lanes read consecutive elements: coalesced), each
// keeps a float64 partial sum, the warp reduces by shuffles and a block group finishes through
// shared memory. Every input element is read once; the only write is one double per walker.
// Compiled for each input dtype x {warp, block} group x {reference term, none}: 16 small
// kernels, one file (nvcc time on a 2-core CI machine is the constraint, see langevin_cuda.cu;
// this file: ~27 s for sm_90 at -O3 on that machine).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "../log_ratio.h"
#include "../log_ratio_checks.h"

namespace fastlangevin {
namespace {

constexpr int kThreads = 256;

struct RatioArgs {
  const double* step_t;  // [N] or nullptr
  const double* std_t;   // [N] or nullptr
  double step, noise_std, inv_ref;
  int64_t rows, row_len;
  bool two_sided;  // gy is read (not gy != nullptr: an empty tensor's data_ptr is null)
};

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// kRef = false: no reference term (inv_ref = 0), as in the CPU kernel, so a non-finite x or y
// without a reference term gives the CPU's +-inf rather than inf * 0 = NaN.
template <typename scalar_t, int kGroup, bool kRef>
__global__ void __launch_bounds__(kThreads)
log_ratio_kernel(const scalar_t* __restrict__ x,   // [N, row_len]
                 const scalar_t* __restrict__ y,   // [N, row_len]
                 const scalar_t* __restrict__ gx,  // [N, row_len]
                 const scalar_t* __restrict__ gy,  // [N, row_len]; unread when one-sided
                 EnergyPtr ex, EnergyPtr ey,       // [N]; ey unused when one-sided
                 double* __restrict__ out,         // [N]
                 RatioArgs p) {
  constexpr int kGroups = kThreads / kGroup;
  __shared__ double warp_part[kThreads / 32];
  const int lane = threadIdx.x % kGroup;
  // With kGroup == kThreads every thread of the block sees the same r, so __syncthreads below is
  // reached uniformly.
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kGroups + threadIdx.x / kGroup; r < p.rows;
       r += static_cast<int64_t>(gridDim.x) * kGroups) {
    const RatioCoef k = ratio_coef(p.step_t ? p.step_t[r] : p.step, p.std_t ? p.std_t[r] : p.noise_std, p.inv_ref);
    const int64_t i0 = r * p.row_len;
    double acc = 0.0;
    if (p.two_sided) {
#pragma unroll 4
      for (int64_t i = i0 + lane; i < i0 + p.row_len; i += kGroup) {
        acc += increment_term<kRef>(static_cast<double>(x[i]), static_cast<double>(y[i]),
                                    static_cast<double>(gx[i]), static_cast<double>(gy[i]), k);
      }
    } else {
#pragma unroll 4
      for (int64_t i = i0 + lane; i < i0 + p.row_len; i += kGroup) {
        acc += alpha_term<kRef>(static_cast<double>(x[i]), static_cast<double>(y[i]), static_cast<double>(gx[i]),
                                k);
      }
    }
    acc = warp_sum(acc);
    if constexpr (kGroup > 32) {
      if (threadIdx.x % 32 == 0) warp_part[threadIdx.x / 32] = acc;
      __syncthreads();
      acc = 0.0;
      if (threadIdx.x < 32) {
        acc = threadIdx.x < kThreads / 32 ? warp_part[threadIdx.x] : 0.0;
        acc = warp_sum(acc);
      }
      __syncthreads();  // warp_part is rewritten by the next row
    }
    if (lane == 0) out[r] = (p.two_sided ? ex[r] - ey[r] : ex[r]) + acc;
  }
}

void log_ratio_out_cuda(const at::Tensor& x, const at::Tensor& y, const at::Tensor& grad_x,
                        const std::optional<at::Tensor>& grad_y, const at::Tensor& energy_x,
                        const std::optional<at::Tensor>& energy_y, const std::optional<at::Tensor>& step_t,
                        const std::optional<at::Tensor>& std_t, double step, double noise_std, double inv_ref_var,
                        at::Tensor& out) {
  const int64_t row_len = check_log_ratio_args(x, y, grad_x, grad_y, energy_x, energy_y, step_t, std_t, out);
  const int64_t rows = x.size(0);
  const c10::cuda::CUDAGuard guard(x.device());
  if (rows == 0) return;
  RatioArgs p;
  p.step_t = step_t ? step_t->data_ptr<double>() : nullptr;
  p.std_t = std_t ? std_t->data_ptr<double>() : nullptr;
  p.step = step;
  p.noise_std = noise_std;
  p.inv_ref = inv_ref_var;
  p.rows = rows;
  p.row_len = row_len;
  p.two_sided = grad_y.has_value();
  const EnergyPtr ex = energy_ptr(energy_x);
  const EnergyPtr ey = energy_y ? energy_ptr(*energy_y) : ex;
  // A warp per row when the rows alone give every SM at least 16 warps, or a row is too short
  // to keep 256 threads busy; otherwise a block per row.
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const bool warp_rows = rows >= static_cast<int64_t>(sms) * 16 || p.row_len < 2048;
  const int groups = warp_rows ? kThreads / 32 : 1;
  const int grid = static_cast<int>(std::min<int64_t>((rows + groups - 1) / groups, static_cast<int64_t>(sms) * 32));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "log_ratio_cuda", [&] {
    const scalar_t* gyp = grad_y ? grad_y->data_ptr<scalar_t>() : nullptr;
    auto launch = [&](auto kernel) {
      kernel<<<grid, kThreads, 0, stream>>>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                            grad_x.data_ptr<scalar_t>(), gyp, ex, ey, out.data_ptr<double>(), p);
    };
    const bool ref = inv_ref_var != 0.0;
    if (warp_rows) {
      ref ? launch(log_ratio_kernel<scalar_t, 32, true>) : launch(log_ratio_kernel<scalar_t, 32, false>);
    } else {
      ref ? launch(log_ratio_kernel<scalar_t, kThreads, true>) : launch(log_ratio_kernel<scalar_t, kThreads, false>);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlangevin, CUDA, m) {
  m.impl("log_ratio_out", &log_ratio_out_cuda);
}

}  // namespace fastlangevin
