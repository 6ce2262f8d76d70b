// Host-side guards shared by the CPU and CUDA launchers of langevin_step_out. The Python layer
// (fastlangevin/ops.py) validates shapes, dtypes and devices with friendly messages; these checks
// only keep direct callers of torch.ops.fastlangevin.* from reading out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>

#include <initializer_list>
#include <optional>

namespace fastlangevin {

inline void check_step_args(const at::Tensor& x, const at::Tensor& grad, const std::optional<at::Tensor>& noise,
                            const std::optional<at::Tensor>& step_t, const std::optional<at::Tensor>& std_t,
                            const at::Tensor& out) {
  TORCH_CHECK(x.dim() >= 1, "langevin_step: x must be [N, ...]");
  TORCH_CHECK(x.is_contiguous() && grad.is_contiguous() && out.is_contiguous(),
              "langevin_step: x, grad and out must be contiguous");
  TORCH_CHECK(grad.numel() == x.numel() && out.numel() == x.numel(), "langevin_step: grad/out numel != x numel");
  TORCH_CHECK(grad.scalar_type() == x.scalar_type() && out.scalar_type() == x.scalar_type(),
              "langevin_step: grad and out must have x's dtype");
  // The dispatcher picks the kernel from the highest device among the arguments, so a CPU
  // step_t next to CUDA walkers reaches the CUDA kernel with a host pointer (an illegal memory
  // access that kills the context) unless it is refused here.
  for (const at::Tensor* t : {&grad, &out, noise ? &*noise : &x, step_t ? &*step_t : &x, std_t ? &*std_t : &x})
    TORCH_CHECK(t->device() == x.device(), "langevin_step: grad, out, noise, step_size and noise_std must be on x's "
                "device (", x.device(), "), got a tensor on ", t->device());
  const int64_t rows = x.size(0);
  if (noise) TORCH_CHECK(noise->is_contiguous() && noise->numel() == x.numel(), "langevin_step: bad noise tensor");
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (step_t)
    TORCH_CHECK(step_t->is_contiguous() && step_t->numel() == rows && step_t->scalar_type() == acc,
                "langevin_step: step_size must be a contiguous [N] tensor of the accumulation dtype");
  if (std_t)
    TORCH_CHECK(std_t->is_contiguous() && std_t->numel() == rows && std_t->scalar_type() == acc,
                "langevin_step: noise_std must be a contiguous [N] tensor of the accumulation dtype");
}

// Whether `out` shares bytes with one of `inputs` without starting at the same address: a
// kernel that writes element i of out could then clobber an element of an input that another
// thread (or a later iteration) has not read yet (x = buf[:-1], out = buf[1:]). The same start
// is the same elements, read then written by one thread: out = x, grad or noise is the usual
// in-place call and stays direct. Checked here, in the op, not in the Python wrapper: the op is
// what Inductor calls after it re-inplaces the functionalised op into out's storage, with real
// pointers (the wrapper traced fake tensors, whose aliasing it cannot see).
inline bool overlaps_at_shift(const at::Tensor& out, std::initializer_list<const at::Tensor*> inputs) {
  const char* o0 = static_cast<const char*>(out.data_ptr());
  const char* o1 = o0 + out.numel() * out.element_size();
  for (const at::Tensor* t : inputs) {
    if (t == nullptr || t->numel() == 0) continue;
    const char* p0 = static_cast<const char*>(t->data_ptr());
    const char* p1 = p0 + t->numel() * t->element_size();
    if (p0 != o0 && p0 < o1 && o0 < p1) return true;
  }
  return false;
}

// The launchers' shared answer to such an out (langevin_step_out_cpu / _cuda): when out overlaps
// one of the step's inputs at a shift, run_step(y) steps into a fresh contiguous y, which is then
// copied into out, and this returns true (the launcher is done); otherwise it returns false and
// the launcher writes out directly.
template <typename RunStep>
bool step_apart_if_shifted(const at::Tensor& x, const at::Tensor& grad, const std::optional<at::Tensor>& noise,
                           const std::optional<at::Tensor>& step_t, const std::optional<at::Tensor>& std_t,
                           at::Tensor& out, RunStep&& run_step) {
  if (!overlaps_at_shift(out, {&x, &grad, noise ? &*noise : nullptr, step_t ? &*step_t : nullptr,
                               std_t ? &*std_t : nullptr})) {
    return false;
  }
  at::Tensor y = at::empty_like(out, at::MemoryFormat::Contiguous);
  run_step(y);
  out.copy_(y);
  return true;
}

}  // namespace fastlangevin
