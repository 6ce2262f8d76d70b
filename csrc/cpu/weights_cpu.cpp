// CPU kernel of the transition log-ratio: OpenMP over walkers through at::parallel_for, and per
// walker the float64 row sum of csrc/cpu/log_ratio_cpu.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "../log_ratio_checks.h"
#include "log_ratio_cpu.h"

namespace fastlangevin {
namespace {

// Rows per parallel task: about 16K elements, so a task of short rows ([10000, 50]) still
// amortises the per-task cost, and a single long row is one task.
constexpr int64_t kGrainElems = 1 << 14;

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
    const RowSumFn<scalar_t> row_sum_fn = pick_row_sum<scalar_t>(two_sided, inv_ref_var != 0.0, row_len);
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
