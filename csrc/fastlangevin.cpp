// Every op schema of fastlangevin, and no math. Kernels register per backend at the bottom of
// csrc/cpu/*.cpp and csrc/cuda/*.cu; fake (meta) implementations live in fastlangevin/ops.py.
//
// Conventions: `out` arguments are mutated in place (Tensor(a!)); scalars that may be absent
// are passed as neutral values (grad_clip = inf, clamp = (-inf, inf), inv_ref_var = 0) so the
// kernels branch on plain doubles, never on Python objects. Seeds and offsets are 64-bit words
// carried in int64 (two's complement for values >= 2^63), declared SymInt so that torch.compile
// keeps them symbolic (an `int` argument would specialise a compiled graph on its value, one
// recompile per new offset); the kernels still take int64_t, which the dispatcher allows for
// SymInt arguments (it converts concrete SymInts on the call).
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import fastlangevin._C` loads this shared object, which runs the static registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fastlangevin, m) {
  // counter: [n, 4] int64 holding 32-bit words -> [n, 4] int64 words of Philox4x32-10.
  m.def("philox(Tensor counter, SymInt seed) -> Tensor");
  // out: any float tensor, filled with the normals of stream (seed, offset), element i <- xi_i.
  m.def("randn_out(Tensor(a!) out, SymInt seed, SymInt offset) -> ()");
  // out = clamp(x - a * (clip(grad) + x * inv_ref_var) + s * xi), x/grad/noise/out: [N, ...];
  // a = step_t[n] if given else step, s = std_t[n] if given else noise_std (per walker n);
  // xi = noise if given else the normals of stream (seed, offset).
  m.def(
      "langevin_step_out(Tensor x, Tensor grad, Tensor? noise, Tensor? step_t, Tensor? std_t, float step, "
      "float noise_std, float inv_ref_var, float grad_clip, float clamp_lo, float clamp_hi, SymInt seed, "
      "SymInt offset, Tensor(a!) out) -> ()");
  // out: float64 [n], filled with the resampling uniforms u_0 .. u_{n-1} of stream (seed, offset).
  m.def("resample_uniforms_out(Tensor(a!) out, SymInt seed, SymInt offset) -> ()");
  // log_w: float32/float64 [N] -> int64 [N] ancestor indices (all -1 when log_w has a NaN or +inf
  // or is all -inf); scheme: multinomial, stratified, systematic or residual; uniforms: float64
  // [N] or the uniforms of stream (seed, offset).
  m.def("resample(Tensor log_w, str scheme, Tensor? uniforms, SymInt seed, SymInt offset) -> Tensor");
  // The transition log-ratio of the Gaussian proposal q(x -> y) = N(y; x - a G(x), s^2 I), per walker n:
  //   G(v) = grad_v + v * inv_ref_var,   U*(v) = energy_v + inv_ref_var |v|^2 / 2,
  //   alpha(x, y) = U*(x) + (a / s^2) (y - x).G(x) + (a^2 / (2 s^2)) |G(x)|^2,
  // dot products over all non-batch dims; a = step_t[n] if given else step, s likewise.
  // out = alpha(x, y) when grad_y is absent, else alpha_x(x, y) - alpha_y(y, x) (the Jarzynski
  // increment; energy_y and grad_y are the other side's). Accumulated in float64.
  // x, y, grad_x, grad_y: [N, ...] (one dtype); energy_x, energy_y: [N] (any float dtype);
  // step_t, std_t: [N] float64; out: [N] float64.
  m.def(
      "log_ratio_out(Tensor x, Tensor y, Tensor grad_x, Tensor? grad_y, Tensor energy_x, Tensor? energy_y, "
      "Tensor? step_t, Tensor? std_t, float step, float noise_std, float inv_ref_var, Tensor(a!) out) -> ()");
  // n_steps Langevin steps of the Gaussian-mixture energy for every walker n, in one call:
  //   q_k(v) = log_coef[k] - 1/2 sum_j (v_j - means[k, j])^2 inv_var[k, j],
  //   U(v) = -logsumexp_k q_k(v),  grad U(v) = sum_k softmax(q(v))_k (v - means[k]) inv_var[k].
  // Step k: y = x - step * grad + noise_std * xi (xi: the normals of stream (seed, offset + k),
  // element n * d + j, exactly langevin_step's), then (U, grad) at y, and by mode:
  //   0 ULA: x <- y;  1 weights: log_w[n] += alpha(x, y) - alpha(y, x), x <- y;
  //   2 MALA: x <- y where log u < alpha(x, y) - alpha(y, x), u = resample uniform n of stream
  //     (seed, 2^62 | ((offset + k) mod 2^62)); accepted[n] counts the accepted proposals.
  // alpha as in log_ratio_out (float64). x, grad: [N, d], energy: [N], the state and its cached
  // energy and gradient, updated in place (one dtype: float32 or float64); means, inv_var:
  // [K, d], log_coef: [K] (x's dtype); log_w: float64 [N] (mode 1); log_w_steps: float64
  // [n_steps, N], log_w after each step (mode 1, optional); accepted: int64 [N].
  m.def(
      "mixture_chain(Tensor(a!) x, Tensor(b!) energy, Tensor(c!) grad, Tensor means, Tensor inv_var, "
      "Tensor log_coef, int n_steps, float step, float noise_std, SymInt seed, SymInt offset, int mode, "
      "Tensor(d!)? log_w, Tensor(e!)? log_w_steps, Tensor(f!) accepted) -> ()");
  // n_steps Langevin steps of the separable double well for every walker n, in one call (ULA,
  // weights or MALA exactly as mixture_chain, same noise and uniforms):
  //   w_j = v_j^2 - center^2,  U(v) = barrier sum_j w_j^2,  grad U(v)_j = 4 barrier v_j w_j.
  // params: [2] = (barrier, center), x's dtype. The other arguments as in mixture_chain,
  // chain_mode being its mode (named as in mlp_chain).
  m.def(
      "double_well_chain(Tensor(a!) x, Tensor(b!) energy, Tensor(c!) grad, Tensor params, int n_steps, "
      "float step, float noise_std, SymInt seed, SymInt offset, int chain_mode, Tensor(d!)? log_w, "
      "Tensor(e!)? log_w_steps, Tensor(f!) accepted) -> ()");
  // n_steps Langevin steps of the MLP energy for every walker n, in one call (ULA, weights or
  // MALA exactly as mixture_chain, same noise and uniforms):
  //   h_0 = v, h_l = act(h_{l-1} W_l^T + b_l) (l = 1 .. L = len(weights) - 1, 1 <= L <= 4),
  //   U(v) = h_L W_{L+1}^T + b_{L+1} + inv_ref_var |v|^2 / 2,
  //   grad U(v) = delta_1 W_1 + inv_ref_var v, delta_L = W_{L+1} * act'(z_L),
  //   delta_l = (delta_{l+1} W_{l+1}) * act'(z_l).
  // weights: [H, d], [H, H] x (L - 1), [1, H] (nn.Linear's [out, in], 1 <= H <= 128); biases:
  // [H] x L, [1]; all x's dtype. act: 0 silu, 1 softplus, 2 tanh. The other arguments as in
  // mixture_chain, chain_mode being its mode (grad already holds the reference term: the ratio
  // uses it as is). Not named `mode`: opcheck's dispatch-mode wrappers take a `mode` argument.
  m.def(
      "mlp_chain(Tensor(a!) x, Tensor(b!) energy, Tensor(c!) grad, Tensor[] weights, Tensor[] biases, int act, "
      "float inv_ref_var, int n_steps, float step, float noise_std, SymInt seed, SymInt offset, int chain_mode, "
      "Tensor(d!)? log_w, Tensor(e!)? log_w_steps, Tensor(f!) accepted) -> ()");
}
