// Host-side guards of fastlangevin::log_ratio_out, shared by its CPU and CUDA kernels. Shapes,
// dtypes and devices are validated with proper messages in fastlangevin/weights.py; these checks
// keep direct callers of torch.ops.fastlangevin.log_ratio_out from reading out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <optional>

#include "philox.h"  // FL_HD

namespace fastlangevin {

// The energy dtypes the kernels read (EnergyPtr switches over exactly these).
inline bool is_energy_dtype(c10::ScalarType t) {
  return t == at::kDouble || t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

// An [N] energy of any of those dtypes read as double, so a float32 energy next to float64
// walkers (or the reverse) needs no conversion kernel on the GPU, and no two widening copies
// (allocation + copy, ~2 us each at N = 1024) per call on the CPU.
struct EnergyPtr {
  const void* p;
  c10::ScalarType t;
  FL_HD double operator[](int64_t r) const {
    switch (t) {
      case c10::ScalarType::Double: return static_cast<const double*>(p)[r];
      case c10::ScalarType::Float: return static_cast<const float*>(p)[r];
      case c10::ScalarType::Half: return static_cast<float>(static_cast<const c10::Half*>(p)[r]);
      default: return static_cast<float>(static_cast<const c10::BFloat16*>(p)[r]);
    }
  }
};

// energy: contiguous, dtype accepted by is_energy_dtype (check_log_ratio_args checks both).
inline EnergyPtr energy_ptr(const at::Tensor& e) { return EnergyPtr{e.data_ptr(), e.scalar_type()}; }

// Returns the row length (elements per walker); 0 when there are no walkers.
inline int64_t check_log_ratio_args(const at::Tensor& x, const at::Tensor& y, const at::Tensor& grad_x,
                                    const std::optional<at::Tensor>& grad_y, const at::Tensor& energy_x,
                                    const std::optional<at::Tensor>& energy_y,
                                    const std::optional<at::Tensor>& step_t, const std::optional<at::Tensor>& std_t,
                                    const at::Tensor& out) {
  const char* op = "log_ratio";
  TORCH_CHECK(x.dim() >= 1, op, ": x must be [N, ...]");
  const int64_t rows = x.size(0);
  const int64_t n = x.numel();
  for (const at::Tensor* t : {&x, &y, &grad_x}) {
    TORCH_CHECK(t->is_contiguous() && t->numel() == n && t->scalar_type() == x.scalar_type() &&
                    t->device() == x.device(), op, ": x, y and grad_x must be contiguous and alike");
  }
  TORCH_CHECK(grad_y.has_value() == energy_y.has_value(), op, ": grad_y and energy_y come together");
  if (grad_y) TORCH_CHECK(grad_y->is_contiguous() && grad_y->numel() == n && grad_y->scalar_type() == x.scalar_type() &&
                              grad_y->device() == x.device(), op, ": grad_y must be contiguous, like x");
  for (const at::Tensor* e : {&energy_x, energy_y ? &*energy_y : &energy_x}) {
    TORCH_CHECK(e->numel() == rows && e->is_contiguous() && is_energy_dtype(e->scalar_type()) &&
                    e->device() == x.device(), op, ": energies must be contiguous float [N] tensors");
  }
  TORCH_CHECK(out.is_contiguous() && out.numel() == rows && out.scalar_type() == at::kDouble && out.device() == x.device(),
              op, ": out must be a contiguous float64 [N]");
  for (const auto* t : {&step_t, &std_t}) {
    if (*t) TORCH_CHECK((*t)->is_contiguous() && (*t)->numel() == rows && (*t)->scalar_type() == at::kDouble &&
                            (*t)->device() == x.device(), op, ": step_t and std_t must be contiguous float64 [N]");
  }
  return rows > 0 ? n / rows : 0;
}

}  // namespace fastlangevin
