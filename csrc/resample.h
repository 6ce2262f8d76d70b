// SMC resampling: the pieces shared by the CPU and CUDA kernels. The definitions (tables,
// positions, ancestors) are written out in fastlangevin/reference.py (resample_tables,
// resample_ref); the uniforms in csrc/philox.h (resample_uniform).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <optional>
#include <string>

#include "philox.h"

namespace fastlangevin {

enum class ResampleScheme : int { kMultinomial = 0, kStratified = 1, kSystematic = 2, kResidual = 3 };

// #{i < n : arr[i] <= v} for a non-decreasing arr (std::upper_bound), usable on the device.
template <typename T>
FL_HD int64_t count_le(const T* arr, int64_t n, T v) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + ((hi - lo) >> 1);
    if (arr[mid] <= v) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// The sorted position of slot j for stratified and systematic resampling: (j + u) / n, in
// this order in float64 (no FMA can form: an add, then a division).
FL_HD double strat_position(int64_t j, double u, int64_t n) {
  return (static_cast<double>(j) + u) / static_cast<double>(n);
}

// Host only: the scheme argument of the op schema.
inline ResampleScheme parse_resample_scheme(c10::string_view s) {
  if (s == "multinomial") return ResampleScheme::kMultinomial;
  if (s == "stratified") return ResampleScheme::kStratified;
  if (s == "systematic") return ResampleScheme::kSystematic;
  if (s == "residual") return ResampleScheme::kResidual;
  TORCH_CHECK_VALUE(false, "resample: scheme must be one of multinomial, stratified, systematic, residual; got '",
                    std::string(s), "'");
}

// Host only. Arguments are validated in fastlangevin/resample.py; these checks guard direct
// callers of torch.ops.fastlangevin.resample from reading out of bounds.
inline void check_resample_args(const at::Tensor& log_w, const std::optional<at::Tensor>& uniforms) {
  TORCH_CHECK(log_w.dim() == 1 && log_w.size(0) >= 1 &&
                  (log_w.scalar_type() == at::kFloat || log_w.scalar_type() == at::kDouble),
              "resample: log_w must be float32 or float64 [N], N >= 1");
  if (uniforms) {
    TORCH_CHECK(uniforms->dim() == 1 && uniforms->size(0) == log_w.size(0) &&
                    uniforms->scalar_type() == at::kDouble && uniforms->device() == log_w.device(),
                "resample: uniforms must be float64 [N] on log_w's device");
  }
}

}  // namespace fastlangevin
