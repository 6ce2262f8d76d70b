// SMC resampling: the pieces shared by the CPU and CUDA kernels. The definitions (tables,
// positions, ancestors) are written out in fastlangevin/reference.py (resample_tables,
// resample_ref); the uniforms in csrc/philox.h (resample_uniform).
#pragma once

#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cstdint>
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

}  // namespace fastlangevin
