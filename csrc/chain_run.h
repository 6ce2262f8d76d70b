// What every fused chain kernel (csrc/cpu/chain_cpu.cpp, csrc/cpu/mlp_chain_cpu.cpp,
// csrc/cuda/chain_cuda.cu) shares: the mode numbers, the MALA uniform stream, the run fields
// (step, noise, seed, offset, mode, the log-ratio coefficients, the per-walker outputs) and the
// host-side checks of the state tensors. One struct and one check function, so that a change
// to the schema's mode / log_w / accepted contract is made once.
//
// The Python layer (fastlangevin/chain.py) validates everything with friendly messages; these
// checks only keep direct callers of torch.ops.fastlangevin.* from reading out of bounds.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <initializer_list>
#include <optional>

#include "log_ratio.h"

namespace fastlangevin {

enum ChainMode : int64_t { kUla = 0, kWeights = 1, kMala = 2 };  // fastlangevin.chain.MODES

// Step k's MALA uniforms use offset kMhStream | ((offset + k) mod 2^62): fastlangevin.walkers.MH_STREAM.
constexpr uint64_t kMhStream = uint64_t(1) << 62;

FL_HD uint64_t mh_offset(uint64_t off) { return kMhStream | (off & (kMhStream - 1)); }

// The run fields of one chain call; T is the walkers' dtype (a and s are used in its arithmetic,
// the ratio coefficients are float64). Passed by value to CUDA kernels: the pointers are then
// device pointers.
template <typename T>
struct ChainRun {
  int64_t N, n_steps;
  T a, s;
  uint64_t seed, offset;
  int64_t mode;
  RatioCoef rc;
  double* log_w;        // [N] (mode kWeights), else null
  double* log_w_steps;  // [n_steps, N] (mode kWeights, optional), else null
  int64_t* accepted;    // [N]

  // The CPU chains' per-walker decision after step k's proposal for walker r, whose log-ratio
  // (Jarzynski increment / MALA log acceptance ratio) is inc: mode kWeights adds inc to the
  // walker's log-weight (and records it in log_w_steps) and takes the move; mode kMala takes the
  // move when log u < inc (NaN ratios reject, as in sample()'s MALA), counting it in accepted,
  // with log u from lu, the step's log uniforms of the tile whose first walker is r0
  // (csrc/cpu/normals_cpu.h mh_log_uniforms: walker r's at lu[r - (r0 & ~1)]). Returns whether
  // the move is taken. (Host only: the CUDA chain keeps the log-weight in a register instead.)
  bool weigh_or_accept(int64_t k, int64_t r, double inc, const double* lu, int64_t r0) const {
    if (mode == kWeights) {
      log_w[r] += inc;
      if (log_w_steps) log_w_steps[k * N + r] = log_w[r];
      return true;
    }
    const bool take = lu[r - (r0 & ~int64_t(1))] < inc;
    accepted[r] += take ? 1 : 0;
    return take;
  }
};

// Checks mode, n_steps, accepted, log_w and log_w_steps of chain op `op` ("mixture_chain",
// "mlp_chain", "double_well_chain") for N walkers.
inline void check_chain_state(const char* op, int64_t N, int64_t n_steps, int64_t mode,
                              const std::optional<at::Tensor>& log_w, const std::optional<at::Tensor>& log_w_steps,
                              const at::Tensor& accepted) {
  TORCH_CHECK(mode >= kUla && mode <= kMala, op, ": mode must be 0 (ULA), 1 (weights) or 2 (MALA)");
  TORCH_CHECK(n_steps >= 0, op, ": n_steps must be >= 0");
  TORCH_CHECK(accepted.is_contiguous() && accepted.scalar_type() == at::kLong && accepted.numel() == N, op,
              ": accepted must be int64 [N]");
  TORCH_CHECK(mode != kWeights || log_w.has_value(), op, ": mode 1 (weights) needs log_w");
  if (log_w)
    TORCH_CHECK(log_w->is_contiguous() && log_w->scalar_type() == at::kDouble && log_w->numel() == N, op,
                ": log_w must be float64 [N]");
  if (log_w_steps)
    TORCH_CHECK(log_w_steps->is_contiguous() && log_w_steps->scalar_type() == at::kDouble &&
                    log_w_steps->numel() == n_steps * N,
                op, ": log_w_steps must be float64 [n_steps, N]");
}

// The mixture chain's tensors (csrc/cpu/chain_cpu.cpp, csrc/cuda/chain_cuda.cu): x, grad [N, d],
// energy [N], means, inv_var [K, d], log_coef [K], all contiguous, one dtype (float32 / float64).
inline void check_mixture_chain_args(const at::Tensor& x, const at::Tensor& energy, const at::Tensor& grad,
                                     const at::Tensor& means, const at::Tensor& inv_var, const at::Tensor& log_coef) {
  // Guards for direct callers; fastlangevin/chain.py checks everything with friendly messages.
  TORCH_CHECK(x.dim() == 2 && x.size(1) >= 1, "mixture_chain: x must be [N, d] with d >= 1");
  const int64_t N = x.size(0), d = x.size(1);
  TORCH_CHECK(means.dim() == 2 && means.size(1) == d, "mixture_chain: means must be [K, d]");
  const int64_t K = means.size(0);
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble, "mixture_chain: x must be float32 or float64");
  for (const at::Tensor* t : {&x, &energy, &grad, &means, &inv_var, &log_coef})
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == st, "mixture_chain: tensors must be contiguous, x's dtype");
  TORCH_CHECK(grad.sizes() == x.sizes() && energy.dim() == 1 && energy.size(0) == N,
              "mixture_chain: grad must be [N, d] and energy [N]");
  TORCH_CHECK(inv_var.sizes() == means.sizes() && log_coef.dim() == 1 && log_coef.size(0) == K && K >= 1,
              "mixture_chain: inv_var must be [K, d] and log_coef [K]");
}

// The double-well chain's tensors (csrc/cpu/chain_cpu.cpp): x, grad [N, d], energy [N],
// params [2] = (barrier, center), all contiguous, one dtype (float32 / float64).
inline void check_double_well_chain_args(const at::Tensor& x, const at::Tensor& energy, const at::Tensor& grad,
                                         const at::Tensor& params) {
  // d >= 1: the tile size is a number of elements divided by d (d = 0 was a SIGFPE)
  TORCH_CHECK(x.dim() == 2 && x.size(1) >= 1, "double_well_chain: x must be [N, d] with d >= 1");
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble, "double_well_chain: x must be float32 or float64");
  for (const at::Tensor* t : {&x, &energy, &grad, &params})
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == st,
                "double_well_chain: tensors must be contiguous, x's dtype");
  TORCH_CHECK(grad.sizes() == x.sizes() && energy.dim() == 1 && energy.size(0) == x.size(0),
              "double_well_chain: grad must be [N, d] and energy [N]");
  TORCH_CHECK(params.dim() == 1 && params.size(0) == 2, "double_well_chain: params must be [2] (barrier, center)");
}

// The run fields from the op's arguments (after check_chain_state). The ratio coefficients carry
// no reference term: the chains' gradients already include it (mlp_chain) or have none.
template <typename T>
ChainRun<T> make_chain_run(int64_t N, int64_t n_steps, double step, double noise_std, int64_t seed, int64_t offset,
                           int64_t mode, const std::optional<at::Tensor>& log_w,
                           const std::optional<at::Tensor>& log_w_steps, at::Tensor& accepted) {
  ChainRun<T> r;
  r.N = N;
  r.n_steps = n_steps;
  r.a = static_cast<T>(step);
  r.s = static_cast<T>(noise_std);
  r.seed = static_cast<uint64_t>(seed);
  r.offset = static_cast<uint64_t>(offset);
  r.mode = mode;
  r.rc = ratio_coef(step, noise_std, 0.0);  // no reference term: the chains' increments rely on it
  r.log_w = mode == kWeights ? log_w->data_ptr<double>() : nullptr;
  r.log_w_steps = (mode == kWeights && log_w_steps) ? log_w_steps->data_ptr<double>() : nullptr;
  r.accepted = accepted.data_ptr<int64_t>();
  return r;
}

}  // namespace fastlangevin
