"""Fused Langevin chains of analytic energies: all n steps of every walker in one kernel call.

    from fastlangevin.chain import mixture_chain
    res = mixture_chain(x, *gmm.chain_params(), n_steps=1000, step_size=0.1, seed=0)
    res.x, res.energy, res.grad          # [N, d], [N], [N, d]: the state after n steps

The walker's row stays in a local buffer for the whole chain; step k adds exactly the normals
that langevin_step(seed=seed, offset=offset + k) adds, so a chain equals the step-by-step loop
of sample() / Walkers on the same energy (same seed, same noise) to float tolerance. Backends:
"cpu" (csrc/cpu/chain_cpu.cpp, OpenMP over tiles of walkers) and "reference"
(fastlangevin.reference.mixture_chain_ref, the oracle); no Triton or CUDA kernel yet.

sample() and Walkers.step() call this themselves when the energy is a
fastlangevin.energies.GaussianMixture or Gaussian (anything with ``chain_params()``); see their
docstrings for when.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from . import _backend, reference
from .ops import _as_i64, _shape, check_float_tensor, check_u64

MODES = reference.CHAIN_MODES  # ("ula", "weights", "mh")
CHAIN_BACKENDS = ("cpu", "reference")


class ChainResult(NamedTuple):
    """x [N, d], energy [N], grad [N, d]: the final state and its energy and gradient;
    log_w: float64 [N] (mode "weights"), else None; accepted: int64 [N] accepted proposals per
    walker (n_steps except for "mh"); log_w_steps: float64 [n_steps, N], log_w after each step
    (when asked for), else None."""

    x: torch.Tensor
    energy: torch.Tensor
    grad: torch.Tensor
    log_w: Optional[torch.Tensor]
    accepted: torch.Tensor
    log_w_steps: Optional[torch.Tensor]


@_backend.register_fakes_once
def _register_fakes() -> None:
    @torch.library.register_fake("fastlangevin::mixture_chain")
    def _chain_fake(x, energy, grad, means, inv_var, log_coef, n_steps, step, noise_std, seed, offset, mode, log_w,
                    log_w_steps, accepted):
        return None


def chain_params_of(energy):
    """(means [K, d], inv_var [K, d], log_coef [K]) if ``energy`` can run as a fused mixture
    chain (it has ``chain_params()``, as GaussianMixture and Gaussian do), else None."""
    fn = getattr(energy, "chain_params", None)
    return fn() if callable(fn) else None


def _check_scalar(op: str, name: str, v, allow_zero: bool) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{op}: {name} must be a float (per-walker tensors are not supported by the fused chain), "
                        f"got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v) or (v < 0 if allow_zero else v <= 0):
        raise ValueError(f"{op}: {name} must be finite and {'>= 0' if allow_zero else '> 0'}, got {v}")
    return v


def mixture_chain(
    x: torch.Tensor,
    means: torch.Tensor,
    inv_var: torch.Tensor,
    log_coef: torch.Tensor,
    n_steps: int,
    step_size: float,
    noise_std: Optional[float] = None,
    *,
    energy: Optional[torch.Tensor] = None,
    grad: Optional[torch.Tensor] = None,
    seed: int = 0,
    offset: int = 0,
    mode: str = "ula",
    log_w: Optional[torch.Tensor] = None,
    return_log_w_steps: bool = False,
    backend: str = "auto",
) -> ChainResult:
    """n_steps Langevin steps of the Gaussian-mixture energy

        q_k(x) = log_coef_k - 1/2 sum_j (x_j - means_kj)^2 inv_var_kj,   U(x) = -logsumexp_k q_k(x)

    for every walker of x [N, d] (float32 or float64), in one kernel call. Step k:

        y = x - a grad U(x) + s xi_k,   xi_k = randn(x.shape, seed=seed, offset=offset + k)
        "ula":     x <- y
        "weights": log_w += alpha(x, y) - alpha(y, x)   (Jarzynski increment, fixed parameters); x <- y
        "mh":      x <- y with probability min(1, exp(alpha(x, y) - alpha(y, x)))  (MALA; the
                   uniform of walker n is fastlangevin.resampling.uniforms(N, seed=seed,
                   offset=MH_STREAM | (offset + k))[n], as in sample(mh=True))

    alpha(x, y) = U(x) + (a / s^2)(y - x).grad U(x) + (a^2 / (2 s^2)) |grad U(x)|^2
    (fastlangevin.weights), accumulated in float64. means, inv_var: [K, d]; log_coef: [K] (any
    float dtype, cast to x's); a = step_size > 0, s = noise_std (default sqrt(2 a); > 0 for
    "weights" and "mh"), both floats. energy [N], grad [N, d]: U and grad U at x (default:
    computed here); a Walkers passes its cached values, which may come from earlier parameters.
    log_w: float64 [N] starting log-weights for "weights" (default 0). return_log_w_steps: also
    return log_w after every step, float64 [n_steps, N] (Walkers uses it to find the step at
    which resampling triggers). Inputs are not modified.
    """
    op = "mixture_chain"
    check_float_tensor(op, "x", x)
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}: x must be float32 or float64, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{op}: x must have shape [N, d], got {_shape(x)}")
    n, d = x.shape
    for name, t in (("means", means), ("inv_var", inv_var), ("log_coef", log_coef)):
        check_float_tensor(op, name, t)
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device}, x is on {x.device}")
    if means.dim() != 2 or means.shape[1] != d or means.shape[0] < 1:
        raise ValueError(f"{op}: means has shape {_shape(means)}, expected [K, {d}] (x has {_shape(x)})")
    k = means.shape[0]
    if inv_var.shape != means.shape:
        raise ValueError(f"{op}: inv_var has shape {_shape(inv_var)}, expected [{k}, {d}]")
    if log_coef.shape != (k,):
        raise ValueError(f"{op}: log_coef has shape {_shape(log_coef)}, expected [{k}]")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise ValueError(f"{op}: n_steps must be an int >= 0, got {n_steps!r}")
    if mode not in MODES:
        raise ValueError(f"{op}: mode must be one of {MODES}, got {mode!r}")
    a = _check_scalar(op, "step_size", step_size, allow_zero=False)
    s = math.sqrt(2.0 * a) if noise_std is None else _check_scalar(op, "noise_std", noise_std, allow_zero=mode == "ula")
    seed = check_u64(op, "seed", seed)
    offset = check_u64(op, "offset", offset)
    be = _backend.resolve(op, backend, x.device)
    if be not in CHAIN_BACKENDS:
        raise ValueError(f"{op}: backend {be!r} has no fused chain kernel yet (available: {CHAIN_BACKENDS}); "
                         "sample() and Walkers fall back to the step-by-step loop there")
    means, inv_var, log_coef = (t.detach().to(x.dtype).contiguous() for t in (means, inv_var, log_coef))
    if (energy is None) != (grad is None):
        raise ValueError(f"{op}: give both energy and grad (the state's cached values) or neither")
    if energy is None:
        energy, grad = reference.mixture_energy_ref(x, means, inv_var, log_coef)
    else:
        check_float_tensor(op, "energy", energy)
        check_float_tensor(op, "grad", grad)
        if energy.shape != (n,):
            raise ValueError(f"{op}: energy has shape {_shape(energy)}, expected [{n}]")
        if grad.shape != x.shape:
            raise ValueError(f"{op}: grad has shape {_shape(grad)}, x has {_shape(x)}")
    if mode == "weights":
        if log_w is None:
            log_w = torch.zeros(n, dtype=torch.float64, device=x.device)
        elif not torch.is_tensor(log_w) or log_w.shape != (n,):
            raise ValueError(f"{op}: log_w must be a tensor of shape [{n}]")
    elif log_w is not None or return_log_w_steps:
        raise ValueError(f"{op}: log_w and return_log_w_steps belong to mode 'weights', got mode {mode!r}")

    if be == "reference":
        if return_log_w_steps:
            return _reference_with_steps(x, energy, grad, means, inv_var, log_coef, n_steps, a, s, seed, offset,
                                         log_w)
        xo, uo, go, lw, acc = reference.mixture_chain_ref(
            x.detach(), energy.detach().to(x.dtype), grad.detach().to(x.dtype), means, inv_var, log_coef, n_steps, a,
            s, seed=seed, offset=offset, mode=mode, log_w=None if log_w is None else log_w.to(torch.float64))
        return ChainResult(xo, uo, go, lw, acc, None)

    xo = x.detach().to(memory_format=torch.contiguous_format, copy=True)
    uo = energy.detach().to(x.dtype, copy=True).contiguous()
    go = grad.detach().to(x.dtype, copy=True).contiguous()
    lw = None if log_w is None else log_w.detach().to(torch.float64, copy=True).contiguous()
    steps = torch.empty(n_steps, n, dtype=torch.float64, device=x.device) if return_log_w_steps else None
    acc = torch.zeros(n, dtype=torch.int64, device=x.device)
    _register_fakes()
    torch.ops.fastlangevin.mixture_chain(xo, uo, go, means, inv_var, log_coef, n_steps, a, s, _as_i64(seed),
                                         _as_i64(offset), MODES.index(mode), lw, steps, acc)
    return ChainResult(xo, uo, go, lw, acc, steps)


def _reference_with_steps(x, energy, grad, means, inv_var, log_coef, n_steps, a, s, seed, offset, log_w):
    """The reference chain one step at a time, keeping log_w after each step."""
    rows = []
    u, g, lw = energy.to(x.dtype), grad.to(x.dtype), log_w.to(torch.float64)
    acc = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    mask = (1 << 64) - 1
    for k in range(n_steps):
        x, u, g, lw, _ = reference.mixture_chain_ref(x, u, g, means, inv_var, log_coef, 1, a, s, seed=seed,
                                                     offset=(offset + k) & mask, mode="weights", log_w=lw)
        rows.append(lw)
        acc += 1
    steps = torch.stack(rows) if rows else torch.empty(0, x.shape[0], dtype=torch.float64, device=x.device)
    return ChainResult(x, u, g, lw, acc, steps)
