// CUDA kernels for SMC resampling: the uniform stream and the ancestor indices.
//
// The tables (softmax, cdf, residual counts) are built with ATen ops in exactly the order of
// fastlangevin/reference.py's resample_tables, so the reference on the same GPU searches the
// same bits; then one kernel per call generates each slot's uniform and binary-searches. The
// positions of stratified/systematic are sorted, but a per-slot binary search in a grid is
// what a GPU does well (no merge walk). Nothing is read back to the host: F, the last positive
// weight and the validity of the weights are read by the kernel from device memory.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/where.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>

#include "../philox.h"
#include "../resample.h"
#include "launch.cuh"

namespace fastlangevin {
namespace {

__global__ void resample_uniforms_kernel(double* __restrict__ out, int64_t n, uint64_t seed, uint64_t offset) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < n;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[j] = resample_uniform(seed, offset, static_cast<uint64_t>(j));
  }
}

struct Tables {
  const double* lw_max;      // 0-d
  const double* cdf;         // [n]
  const int64_t* last;       // 0-d
  const int64_t* counts_cum; // [n], residual only
  const double* res_cdf;     // [n], residual only
  const int64_t* res_last;   // 0-d, residual only
};

__global__ void resample_kernel(Tables t, const double* __restrict__ uniforms, int64_t* __restrict__ out, int64_t n,
                                ResampleScheme scheme, uint64_t seed, uint64_t offset) {
  const bool ok = isfinite(*t.lw_max);
  const int64_t last = *t.last;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < n;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (!ok) {
      out[j] = -1;
      continue;
    }
    const int64_t ju = scheme == ResampleScheme::kSystematic ? 0 : j;
    if (scheme == ResampleScheme::kResidual) {
      if (j < t.counts_cum[n - 1]) {
        out[j] = count_le<int64_t>(t.counts_cum, n, j);
      } else {
        const double u = uniforms ? uniforms[j] : resample_uniform(seed, offset, static_cast<uint64_t>(j));
        out[j] = std::min(count_le<double>(t.res_cdf, n, u), *t.res_last);
      }
      continue;
    }
    const double u = uniforms ? uniforms[ju] : resample_uniform(seed, offset, static_cast<uint64_t>(ju));
    const double p = scheme == ResampleScheme::kMultinomial ? u : strat_position(j, u, n);
    out[j] = std::min(count_le<double>(t.cdf, n, p), last);
  }
}

void resample_uniforms_out_cuda(at::Tensor& out, int64_t seed, int64_t offset) {
  TORCH_CHECK(out.is_contiguous() && out.scalar_type() == at::kDouble,
              "resample_uniforms: out must be a contiguous float64 tensor, got ", out.scalar_type());
  const c10::cuda::CUDAGuard guard(out.device());
  const int64_t n = out.numel();
  if (n == 0) return;
  resample_uniforms_kernel<<<grid_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      out.data_ptr<double>(), n, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// reference.py's _capped_cdf and _last_positive
at::Tensor last_positive(const at::Tensor& v, const at::Tensor& idx) {
  return at::where(v.gt(0), idx, -1).amax();
}
at::Tensor capped_cdf(const at::Tensor& cum, const at::Tensor& last, const at::Tensor& idx) {
  return at::where(idx.ge(last), 1.0, cum.clamp_max(1.0));
}

at::Tensor resample_cuda(const at::Tensor& log_w, c10::string_view scheme_name, const std::optional<at::Tensor>& uniforms,
                         int64_t seed, int64_t offset) {
  const ResampleScheme scheme = parse_resample_scheme(scheme_name);
  check_resample_args(log_w, uniforms);
  const int64_t n = log_w.size(0);
  const c10::cuda::CUDAGuard guard(log_w.device());
  // resample_tables of fastlangevin/reference.py, op for op
  const at::Tensor lw = log_w.to(at::kDouble).contiguous();
  const at::Tensor idx = at::arange(n, lw.options().dtype(at::kLong));
  const at::Tensor lw_max = lw.amax();
  const at::Tensor w = lw.softmax(0);
  const at::Tensor last = last_positive(w, idx);
  const at::Tensor cdf = capped_cdf(w.cumsum(0), last, idx);
  at::Tensor counts_cum, res_cdf, res_last;
  if (scheme == ResampleScheme::kResidual) {
    const at::Tensor nw = w.mul(static_cast<double>(n));
    const at::Tensor c = nw.floor();
    const at::Tensor r = nw.sub(c);
    const at::Tensor res_cum = r.cumsum(0);
    res_last = last_positive(r, idx);
    counts_cum = c.to(at::kLong).cumsum(0);
    res_cdf = capped_cdf(res_cum.div(res_cum.select(0, n - 1)), res_last, idx).contiguous();
  }
  Tables t{lw_max.data_ptr<double>(), cdf.data_ptr<double>(), last.data_ptr<int64_t>(),
           counts_cum.defined() ? counts_cum.data_ptr<int64_t>() : nullptr,
           res_cdf.defined() ? res_cdf.data_ptr<double>() : nullptr,
           res_last.defined() ? res_last.data_ptr<int64_t>() : nullptr};
  at::Tensor u_t = uniforms ? uniforms->contiguous() : at::Tensor();
  auto out = at::empty({n}, lw.options().dtype(at::kLong));
  resample_kernel<<<grid_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      t, u_t.defined() ? u_t.data_ptr<double>() : nullptr, out.data_ptr<int64_t>(), n, scheme,
      static_cast<uint64_t>(seed), static_cast<uint64_t>(offset));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlangevin, CUDA, m) {
  m.impl("resample_uniforms_out", &resample_uniforms_out_cuda);
  m.impl("resample", &resample_cuda);
}

}  // namespace fastlangevin
