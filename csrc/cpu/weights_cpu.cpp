// CPU kernel of the transition log-ratio (csrc/log_ratio.h has the arithmetic): OpenMP over
// walkers through at::parallel_for, and per walker a float64 row sum over kLanes independent
// partial sums, which GCC turns into vector registers (SLP) without reassociating any sum.
// Compiled twice, portable and AVX2+FMA, picked at run time as in langevin_cpu.cpp.
// Without a reference term (inv_ref = 0, the usual case) a second instantiation drops its
// multiply-adds by zero: the op alone, float32, 2 threads, min of 9 x 3000 calls, six
// interleaved old/new process pairs: [1024, 64] ~32 -> ~26 us, [10000, 50] ~197 -> ~180 us;
// [4096, 784] is memory-bound (no change beyond noise).
// (`#pragma omp simd reduction` was the first version: GCC 12 left it scalar for float inputs,
// "no vectype for stmt" on its simd arrays, -fopt-info-vec.)
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "isa_cpu.h"

#include <algorithm>
#include <optional>

#include "../log_ratio.h"
#include "../log_ratio_checks.h"

namespace fastlangevin {
namespace {

// Rows per parallel task: about 16K elements, so a task of short rows ([10000, 50]) still
// amortises the per-task cost, and a single long row is one task.
constexpr int64_t kGrainElems = 1 << 14;

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
RowSumFn<scalar_t> row_sum_for_isa() {
#if defined(__x86_64__) || defined(_M_X64)
  if (cpu_has(CpuIsa::kAvx2)) return &row_sum_avx2<kTwoSided, kRef, scalar_t>;
#endif
  return &row_sum<kTwoSided, kRef, scalar_t>;
}

template <typename scalar_t>
RowSumFn<scalar_t> pick_row_sum(bool two_sided, bool has_ref) {
  if (two_sided) return has_ref ? row_sum_for_isa<true, true, scalar_t>() : row_sum_for_isa<true, false, scalar_t>();
  return has_ref ? row_sum_for_isa<false, true, scalar_t>() : row_sum_for_isa<false, false, scalar_t>();
}

void log_ratio_out_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& grad_x,
                       const std::optional<at::Tensor>& grad_y, const at::Tensor& energy_x,
                       const std::optional<at::Tensor>& energy_y, const std::optional<at::Tensor>& step_t,
                       const std::optional<at::Tensor>& std_t, double step, double noise_std, double inv_ref_var,
                       at::Tensor& out) {
  const int64_t row_len = check_log_ratio_args(x, y, grad_x, grad_y, energy_x, energy_y, step_t, std_t, out);
  const int64_t rows = x.size(0);
  if (rows == 0) return;
  const EnergyPtr exp_ = energy_ptr(energy_x);
  const EnergyPtr eyp = energy_y ? energy_ptr(*energy_y) : exp_;
  const double* a_row = step_t ? step_t->data_ptr<double>() : nullptr;
  const double* s_row = std_t ? std_t->data_ptr<double>() : nullptr;
  double* o = out.data_ptr<double>();
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, row_len));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "log_ratio_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* yp = y.data_ptr<scalar_t>();
    const scalar_t* gxp = grad_x.data_ptr<scalar_t>();
    const scalar_t* gyp = grad_y ? grad_y->data_ptr<scalar_t>() : nullptr;
    const bool two_sided = grad_y.has_value();  // not gyp != nullptr: an empty tensor's data_ptr is null
    const RowSumFn<scalar_t> row_sum_fn = pick_row_sum<scalar_t>(two_sided, inv_ref_var != 0.0);
    const bool per_row = a_row != nullptr || s_row != nullptr;
    const RatioCoef k_all = ratio_coef(step, noise_std, inv_ref_var);  // unless per_row
    at::parallel_for(0, rows, grain, [&](int64_t rb, int64_t re) {
      for (int64_t r = rb; r < re; ++r) {
        const RatioCoef k =
            per_row ? ratio_coef(a_row ? a_row[r] : step, s_row ? s_row[r] : noise_std, inv_ref_var) : k_all;
        const int64_t i0 = r * row_len;
        // one-sided: gy is never read (gx passed in its place)
        const double sum = row_sum_fn(xp + i0, yp + i0, gxp + i0, (two_sided ? gyp : gxp) + i0, row_len, k);
        o[r] = (two_sided ? exp_[r] - eyp[r] : exp_[r]) + sum;
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlangevin, CPU, m) {
  m.impl("log_ratio_out", &log_ratio_out_cpu);
}

}  // namespace fastlangevin
