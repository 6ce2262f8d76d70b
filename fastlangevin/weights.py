"""Transition log-ratios of the Gaussian Langevin proposal: MALA acceptance and Jarzynski weights.

For the proposal q(x -> y) = N(y; x - a g(x), s^2 I) of one Langevin step (a = step size,
s = noise std, g = grad U), the part of -log[e^{-U(x)} q(x -> y)] that is not symmetric in
(x, y) is

    alpha(x, y) = U(x) + (a / s^2) (y - x).g(x) + (a^2 / (2 s^2)) |g(x)|^2,

because |y - x + a g(x)|^2 / (2 s^2) = |y - x|^2 / (2 s^2) + alpha(x, y) - U(x) and the
|y - x|^2 part cancels in every ratio below. With s^2 = 2 a this is Carbone et al.'s alpha_k
(../shared/PAPERS.md section 1.2). alpha_x(x, y) - alpha_y(y, x) is therefore

    log[e^{-U_y(y)} q_y(y -> x)] - log[e^{-U_x(x)} q_x(x -> y)],

the MALA log acceptance ratio when both sides use one energy, and the Jarzynski log-weight
increment A_{k+1} - A_k when the old side uses U_{theta_k} and the new side U_{theta_{k+1}}.

Both ops run one fused kernel per backend that reads each [N, ...] input once and reduces every
walker row in float64 (the increments are small differences of energies in the hundreds:
float32 row sums would bury them). Like fastlangevin.ops, validation reads metadata only: no
op here reads a GPU tensor's values or syncs the host.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch

from . import _backend, reference
from .ops import _shape, _triton_ops, check_float_tensor, check_like, check_positive, check_ref_var, default_noise_std

Scalar = Union[float, torch.Tensor]

@_backend.register_fakes_once
def _register_fakes() -> None:
    """The fake (meta) kernel of fastlangevin::log_ratio_out, for torch.compile and opcheck."""

    @torch.library.register_fake("fastlangevin::log_ratio_out")
    def _log_ratio_fake(x, y, grad_x, grad_y, energy_x, energy_y, step_t, std_t, step, noise_std, inv_ref_var, out):
        return None


def _check_walkers(op: str, name: str, x) -> torch.Tensor:
    check_float_tensor(op, name, x)
    if x.dim() < 1:
        raise ValueError(f"{op}: {name} must have shape [N, ...] (at least 1-D), got a 0-d tensor")
    return x


def _check_energy(op: str, name: str, e, x: torch.Tensor, x_name: str) -> torch.Tensor:
    """An [N] float tensor (any float dtype) on x's device, one energy per walker."""
    check_float_tensor(op, name, e)
    if e.device != x.device:
        raise ValueError(f"{op}: {name} is on {e.device}, {x_name} is on {x.device}")
    if e.shape != (x.shape[0],):
        raise ValueError(f"{op}: {name} must have shape [{x.shape[0]}] (one energy per walker of {x_name}), "
                         f"got {_shape(e)}")
    return e


def _coefficients(op: str, step_size, noise_std, x: torch.Tensor):
    """(a, s): floats, or float64 [N] tensors. s defaults to sqrt(2 a); s = 0 is an error here
    (the proposal has no density)."""
    a = check_positive(op, "step_size", step_size, x)
    if torch.is_tensor(a):
        a = a.to(torch.float64)
    if noise_std is None:
        return a, default_noise_std(a)
    s = check_positive(op, "noise_std", noise_std, x)
    return a, s.to(torch.float64) if torch.is_tensor(s) else s


def _log_ratio(op, be, x, y, grad_x, grad_y, energy_x, energy_y, a, s, inv_ref) -> torch.Tensor:
    """The fused kernel of backend ``be`` (cpu, cuda or triton); grad_y None: alpha(x, y) alone."""
    out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    if x.shape[0] == 0:
        return out
    step_t = a.contiguous() if torch.is_tensor(a) else None
    std_t = s.contiguous() if torch.is_tensor(s) else None
    args = (
        x.contiguous(), y.contiguous(), grad_x.contiguous(), None if grad_y is None else grad_y.contiguous(),
        energy_x.contiguous(), None if energy_y is None else energy_y.contiguous(), step_t, std_t,
        0.0 if step_t is not None else a, 0.0 if std_t is not None else s, inv_ref, out,
    )
    if be == "triton":
        _triton_ops().log_ratio_out(*args)
    else:
        _register_fakes()
        torch.ops.fastlangevin.log_ratio_out(*args)
    return out


def transition_log_ratio(
    x: torch.Tensor,
    y: torch.Tensor,
    energy_x: torch.Tensor,
    grad_x: torch.Tensor,
    step_size: Scalar,
    noise_std: Optional[Scalar] = None,
    *,
    ref_var: Optional[float] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """alpha(x, y) per walker, float64 [N]:

        alpha(x, y) = U(x) + (a / s^2) (y - x).g(x) + (a^2 / (2 s^2)) |g(x)|^2

    x, y, grad_x = g(x): [N, ...], one float dtype (float16/bfloat16 are widened on load);
    energy_x = U(x): [N], any float dtype; dot products over all non-batch dims. a =
    ``step_size``, s = ``noise_std`` (default sqrt(2 a), the ULA noise): each a float > 0 or a
    per-walker [N] tensor. ``ref_var`` r makes the Gaussian reference part of the energy, as in
    langevin_step: U -> U + |x|^2 / (2 r), g -> g + x / r. Accumulated in float64 on every
    backend. alpha(x, y) - U(x) + |y - x|^2 / (2 s^2) = -log q(x -> y) + const.
    """
    op = "transition_log_ratio"
    _check_walkers(op, "x", x)
    check_like(op, "y", y, x)
    check_like(op, "grad_x", grad_x, x)
    _check_energy(op, "energy_x", energy_x, x, "x")
    a, s = _coefficients(op, step_size, noise_std, x)
    inv_ref = check_ref_var(op, ref_var)
    be = _backend.resolve(op, backend, x.device)
    if be == "reference":
        return reference.transition_log_ratio_ref(x, y, energy_x, grad_x, a, s, ref_var=ref_var)
    return _log_ratio(op, be, x, y, grad_x, None, energy_x, None, a, s, inv_ref)


def jarzynski_increment(
    x_old: torch.Tensor,
    grad_old: torch.Tensor,
    energy_old: torch.Tensor,
    x_new: torch.Tensor,
    grad_new: torch.Tensor,
    energy_new: torch.Tensor,
    step_size: Scalar,
    noise_std: Optional[Scalar] = None,
    *,
    ref_var: Optional[float] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """The Jarzynski log-weight increment of one Langevin step x_old -> x_new, float64 [N]:

        alpha_old(x_old, x_new) - alpha_new(x_new, x_old)

    with alpha as in transition_log_ratio, alpha_old from (energy_old, grad_old) = U_{theta_k}
    and its gradient at x_old, alpha_new from (energy_new, grad_new) = U_{theta_{k+1}} and its
    gradient at x_new. Carbone et al.'s update is A_{k+1} = A_k + this. With one energy on both
    sides it is the MALA log acceptance ratio log[pi(y) q(y -> x)] - log[pi(x) q(x -> y)].

    x_old, grad_old, x_new, grad_new: [N, ...], one float dtype; energy_old, energy_new: [N];
    step_size, noise_std, ref_var: as in transition_log_ratio (one step and std for both
    directions). One fused kernel reads each [N, ...] input once, float64 accumulation.
    """
    op = "jarzynski_increment"
    _check_walkers(op, "x_old", x_old)
    check_like(op, "grad_old", grad_old, x_old, "x_old")
    check_like(op, "x_new", x_new, x_old, "x_old")
    check_like(op, "grad_new", grad_new, x_old, "x_old")
    _check_energy(op, "energy_old", energy_old, x_old, "x_old")
    _check_energy(op, "energy_new", energy_new, x_old, "x_old")
    a, s = _coefficients(op, step_size, noise_std, x_old)
    inv_ref = check_ref_var(op, ref_var)
    be = _backend.resolve(op, backend, x_old.device)
    if be == "reference":
        return reference.jarzynski_increment_ref(x_old, grad_old, energy_old, x_new, grad_new, energy_new, a, s,
                                                 ref_var=ref_var)
    return _log_ratio(op, be, x_old, x_new, grad_old, grad_new, energy_old, energy_new, a, s, inv_ref)
