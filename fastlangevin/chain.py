"""Fused Langevin chains: all n steps of every walker in one kernel call, for Gaussian mixtures
(mixture_chain), the separable double well (double_well_chain) and small MLP energies (mlp_chain).

    from fastlangevin.chain import mixture_chain
    res = mixture_chain(x, *gmm.chain_params(), n_steps=1000, step_size=0.1, seed=0)
    res.x, res.energy, res.grad          # [N, d], [N], [N, d]: the state after n steps

The walker's row stays in a local buffer for the whole chain; step k adds exactly the normals
that langevin_step(seed=seed, offset=offset + k) adds, so a chain equals the step-by-step loop
of sample() / Walkers on the same energy (same seed, same noise) to float tolerance. Backends:
mixture_chain: "cpu" (csrc/cpu/chain_cpu.cpp, OpenMP over tiles of walkers), "cuda"
(csrc/cuda/chain_cuda.cu, a warp per walker; d <= 512), "triton"
(fastlangevin/kernels/mixture_chain.py) and "reference" (fastlangevin.reference.mixture_chain_ref,
the oracle). double_well_chain: the same four, each the mixture chain's kernel with the
double well's energy (the oracle fastlangevin.reference.double_well_chain_ref). mlp_chain:
"cpu" (csrc/cpu/mlp_chain_cpu.cpp), "triton" (fastlangevin/kernels/mlp_chain.py) and
"reference" (reference.mlp_chain_ref), every mode, float32 and float64; there is no CUDA C++
MLP kernel, so CUDA walkers run the Triton one (backend "auto", and sample() / Walkers on
backend "cuda"). The Triton chains share their step and mode logic
(fastlangevin/kernels/chain_common.py).

sample() and Walkers.step() call these themselves (fused_chain_of picks the kernel): the
dispatch rule is one protocol method per kernel,

    energy.chain_params()      -> (means, inv_var, log_coef): mixture_chain
                                  (GaussianMixture, Gaussian, models.GMMStudent)
    energy.double_well_chain_params() -> (barrier, center): double_well_chain (DoubleWell)
    energy.mlp_chain_params()  -> (weights, biases, act, inv_ref_var): mlp_chain
                                  (MLPEnergy with depth <= 4 and hidden <= 128; larger MLPs
                                  run step by step with their closed-form energy_and_grad)

checked in that order, and only when the parameters' dimension and device match the walkers'
and the kernel runs on the backend (MIXTURE_CHAIN_BACKENDS, DOUBLE_WELL_CHAIN_BACKENDS,
MLP_CHAIN_BACKENDS; the mixture / double-well "cuda" kernels for d <= 512 only; the MLP chain
on backend "cuda" is the Triton kernel, so only where triton is installed, and on a GPU for
d <= 128, TRITON_MLP_MAX_D). Everything else
(another energy, a larger MLP, a backend without the kernel) runs step by step.
See sample() and Walkers.step() for the other conditions (float step sizes, no clamp, ...).
"""
from __future__ import annotations

import inspect
import math
from typing import NamedTuple, Optional

import torch

from . import _backend, reference
from .ops import _as_i64, _shape, check_count, check_float_tensor, check_u64

MODES = reference.CHAIN_MODES  # ("ula", "weights", "mh")
# The backends whose fused kernels run every mode and dtype (the rest fall back to step by step).
MIXTURE_CHAIN_BACKENDS = ("cpu", "reference", "triton", "cuda")
MLP_CHAIN_BACKENDS = ("cpu", "reference", "triton")
DOUBLE_WELL_CHAIN_BACKENDS = ("cpu", "reference", "triton", "cuda")
CHAIN_BACKENDS = MIXTURE_CHAIN_BACKENDS  # any fused chain at all (sample() / Walkers' first test)
# The CUDA mixture kernel keeps a walker's row in one warp's registers, 16 elements per lane.
CUDA_MIXTURE_MAX_D = 512


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

    @torch.library.register_fake("fastlangevin::double_well_chain")
    def _double_well_chain_fake(x, energy, grad, params, n_steps, step, noise_std, seed, offset, chain_mode, log_w,
                                log_w_steps, accepted):
        return None

    @torch.library.register_fake("fastlangevin::mlp_chain")
    def _mlp_chain_fake(x, energy, grad, weights, biases, act, inv_ref_var, n_steps, step, noise_std, seed, offset,
                        chain_mode, log_w, log_w_steps, accepted):
        return None


def chain_params_of(energy, dtype: Optional[torch.dtype] = None):
    """(means [K, d], inv_var [K, d], log_coef [K]) if ``energy`` can run as a fused mixture
    chain (it has ``chain_params()``, as GaussianMixture and Gaussian do), else None. dtype:
    the walkers', passed on where the method takes it (``chain_params(dtype)`` then computes
    inv_var and log_coef in the walkers' dtype, not in the parameters')."""
    fn = getattr(energy, "chain_params", None)
    if not callable(fn):
        return None
    if dtype is not None and "dtype" in inspect.signature(fn).parameters:
        return fn(dtype=dtype)
    return fn()


def _check_scalar(op: str, name: str, v, allow_zero: bool) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{op}: {name} must be a float (per-walker tensors are not supported by the fused chain), "
                        f"got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v) or (v < 0 if allow_zero else v <= 0):
        raise ValueError(f"{op}: {name} must be finite and {'>= 0' if allow_zero else '> 0'}, got {v}")
    return v


def _check_walkers(op: str, x) -> None:
    """x: float32 or float64 [N, d] (every chain op's walkers)."""
    check_float_tensor(op, "x", x)
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}: x must be float32 or float64, got {x.dtype}")
    if x.dim() != 2 or x.shape[1] == 0:
        raise ValueError(f"{op}: x must have shape [N, d] with d >= 1, got {_shape(x)}")


def _check_run(op: str, n_steps, mode: str, step_size, noise_std, seed, offset) -> tuple:
    """The run arguments every chain op shares: (a, s, seed, offset), s = sqrt(2a) by default."""
    n_steps = check_count(op, "n_steps", n_steps)
    if mode not in MODES:
        raise ValueError(f"{op}: mode must be one of {MODES}, got {mode!r}")
    a = _check_scalar(op, "step_size", step_size, allow_zero=False)
    s = math.sqrt(2.0 * a) if noise_std is None else _check_scalar(op, "noise_std", noise_std, allow_zero=mode == "ula")
    return a, s, check_u64(op, "seed", seed), check_u64(op, "offset", offset)


def _check_state(op: str, x, energy, grad, energy_fn, mode: str, log_w, return_log_w_steps: bool) -> tuple:
    """The chain's starting state: (energy [N], grad [N, d]) as given (a Walkers' cache) or
    energy_fn(x) when neither is; log_w [N] float64 (zeros by default) for mode "weights"."""
    n = x.shape[0]
    if (energy is None) != (grad is None):
        raise ValueError(f"{op}: give both energy and grad (the state's cached values) or neither")
    if energy is None:
        energy, grad = energy_fn(x.detach())
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
    return energy, grad, log_w


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

    Backends: "cpu" (csrc/cpu/chain_cpu.cpp), "cuda" (csrc/cuda/chain_cuda.cu, one warp per
    walker, d <= 512), "triton" (fastlangevin/kernels/mixture_chain.py) and "reference"
    (reference.mixture_chain_ref); every mode, float32 and float64 on each. "auto" on CUDA
    tensors picks "cuda", or "triton" where d > 512.
    """
    op = "mixture_chain"
    _check_walkers(op, x)
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
    a, s, seed, offset = _check_run(op, n_steps, mode, step_size, noise_std, seed, offset)
    be = _backend.resolve(op, backend, x.device)
    if (be == "cuda" and d > CUDA_MIXTURE_MAX_D and backend == "auto"
            and _backend._available("triton", x.device) is None):
        be = "triton"  # the Triton kernel has no dimension limit
    if be == "cuda" and d > CUDA_MIXTURE_MAX_D:
        raise ValueError(f"{op}: backend 'cuda' runs walkers of dimension d <= {CUDA_MIXTURE_MAX_D}, got "
                         f"x of shape {_shape(x)}; use backend 'triton' (sample() and Walkers run step by step)")
    means, inv_var, log_coef = (t.detach().to(x.dtype).contiguous() for t in (means, inv_var, log_coef))
    energy_fn = lambda y: reference.mixture_energy_ref(y, means, inv_var, log_coef)  # noqa: E731
    energy, grad, log_w = _check_state(op, x, energy, grad, energy_fn, mode, log_w, return_log_w_steps)

    if be == "reference":
        return _reference_chain(energy_fn, x, energy, grad, n_steps, a, s, seed, offset, mode, log_w,
                                return_log_w_steps, "mixture_chain_ref")

    xo, uo, go, lw, steps, acc = _kernel_state(x, energy, grad, log_w, n_steps, return_log_w_steps)
    if be == "triton":
        from .kernels.mixture_chain import mixture_chain_triton

        mixture_chain_triton(xo, uo, go, means, inv_var, log_coef, n_steps, a, s, seed, offset, MODES.index(mode), lw,
                             steps, acc)
        return ChainResult(xo, uo, go, lw, acc, steps)
    _register_fakes()  # "cpu" and "cuda": one op, dispatched by device
    torch.ops.fastlangevin.mixture_chain(xo, uo, go, means, inv_var, log_coef, n_steps, a, s, _as_i64(seed),
                                         _as_i64(offset), MODES.index(mode), lw, steps, acc)
    return ChainResult(xo, uo, go, lw, acc, steps)


# --------------------------------------------------------------------------------------------
# the separable double well
# --------------------------------------------------------------------------------------------


def double_well_chain_params_of(energy):
    """(barrier, center) if ``energy`` has ``double_well_chain_params()`` (as
    fastlangevin.energies.DoubleWell does), else None."""
    fn = getattr(energy, "double_well_chain_params", None)
    return fn() if callable(fn) else None


def _dw_scalar(op: str, name: str, v, x: torch.Tensor) -> torch.Tensor:
    if torch.is_tensor(v):
        if v.numel() != 1:
            raise ValueError(f"{op}: {name} must be a float or a one-element tensor, got shape {_shape(v)}")
        if v.device != x.device:
            raise ValueError(f"{op}: {name} is on {v.device}, x is on {x.device}")
        return v.detach().reshape(()).to(x.dtype)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
        raise ValueError(f"{op}: {name} must be a finite float > 0 or a tensor, got {v!r}")
    return torch.tensor(float(v), dtype=x.dtype, device=x.device)


def double_well_chain(
    x: torch.Tensor,
    barrier,
    center,
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
    """n_steps Langevin steps of the separable double well (fastlangevin.energies.DoubleWell)

        U(x) = barrier sum_j (x_j^2 - center^2)^2,   grad U(x)_j = 4 barrier x_j (x_j^2 - center^2)

    for every walker of x [N, d] (float32 or float64), in one kernel call; step k is the update
    of mixture_chain with this energy (same noise stream offset + k, same modes "ula",
    "weights", "mh", same alpha, same arguments). barrier, center: floats > 0 or one-element
    tensors on x's device (cast to x's dtype; ``DoubleWell.double_well_chain_params()`` gives
    them). Inputs are not modified.

    Backends: "cpu" (csrc/cpu/chain_cpu.cpp, the mixture chain's loop with this energy),
    "cuda" (csrc/cuda/chain_cuda.cu, the mixture chain's kernel with this energy: one warp per
    walker, d <= 512), "triton" (fastlangevin/kernels/mixture_chain.py, the mixture chain's
    kernel with ENERGY = 1) and "reference" (reference.double_well_chain_ref); every mode,
    float32 and float64. "auto" on CUDA tensors picks "cuda", or "triton" where d > 512.
    """
    op = "double_well_chain"
    _check_walkers(op, x)
    h, c = _dw_scalar(op, "barrier", barrier, x), _dw_scalar(op, "center", center, x)
    a, s, seed, offset = _check_run(op, n_steps, mode, step_size, noise_std, seed, offset)
    be = _backend.resolve(op, backend, x.device)
    if (be == "cuda" and x.shape[1] > CUDA_MIXTURE_MAX_D and backend == "auto"
            and _backend._available("triton", x.device) is None):
        be = "triton"  # the Triton kernel has no dimension limit
    if be == "cuda" and x.shape[1] > CUDA_MIXTURE_MAX_D:
        raise ValueError(f"{op}: backend 'cuda' runs walkers of dimension d <= {CUDA_MIXTURE_MAX_D}, got "
                         f"x of shape {_shape(x)}; use backend 'triton' (sample() and Walkers run step by step)")
    energy_fn = lambda y: reference.double_well_energy_ref(y, h, c)  # noqa: E731
    energy, grad, log_w = _check_state(op, x, energy, grad, energy_fn, mode, log_w, return_log_w_steps)
    if be == "reference":
        return _reference_chain(energy_fn, x, energy, grad, n_steps, a, s, seed, offset, mode, log_w,
                                return_log_w_steps, "double_well_chain_ref")

    xo, uo, go, lw, steps, acc = _kernel_state(x, energy, grad, log_w, n_steps, return_log_w_steps)
    params = torch.stack([h, c]).contiguous()
    if be == "triton":
        from .kernels.mixture_chain import double_well_chain_triton

        double_well_chain_triton(xo, uo, go, params, n_steps, a, s, seed, offset, MODES.index(mode), lw, steps, acc)
        return ChainResult(xo, uo, go, lw, acc, steps)
    _register_fakes()
    torch.ops.fastlangevin.double_well_chain(xo, uo, go, params, n_steps, a, s, _as_i64(seed), _as_i64(offset),
                                             MODES.index(mode), lw, steps, acc)
    return ChainResult(xo, uo, go, lw, acc, steps)


# --------------------------------------------------------------------------------------------
# small MLP energies
# --------------------------------------------------------------------------------------------

MLP_ACTS = reference.MLP_ACTS  # ("silu", "softplus", "tanh"), the kernel's act 0, 1, 2
# The fused kernel's limits: its buffers are sized for these (csrc/cpu/mlp_chain_cpu.cpp
# kMaxDepth / kMaxHidden), the sizes of 2-D toys, tabular data and 8x8 digits.
MLP_MAX_DEPTH, MLP_MAX_HIDDEN = 4, 128
# The Triton MLP kernel on CUDA tensors: walkers of d <= 128 (DP, the next power of 2 >= d, at
# most 128). Its state tiles [BLOCK_N, DP] live in registers, and compiled for sm_90 at DP 256
# float64 it needs 296 KB of shared memory (the H100 / H200 have 227 KB). Larger walkers (MNIST's
# 784) run step by step.
TRITON_MLP_MAX_D = 128


def mlp_chain_params_of(energy):
    """(weights, biases, act, inv_ref_var) if ``energy`` has ``mlp_chain_params()`` (as
    fastlangevin.energies.MLPEnergy does) and fits the fused kernel (depth <= 4, hidden <= 128),
    else None."""
    fn = getattr(energy, "mlp_chain_params", None)
    if not callable(fn):
        return None
    params = fn()
    ws = params[0]
    if not 2 <= len(ws) <= MLP_MAX_DEPTH + 1 or ws[0].shape[0] > MLP_MAX_HIDDEN:
        return None
    return params


class StepByStep(torch.nn.Module):
    """``inner`` without the fused-chain protocol (chain_params, double_well_chain_params,
    mlp_chain_params): sample() and Walkers run it step by step, one langevin_step per step,
    with ``inner.energy_and_grad`` (closed-form gradients) where it has one, autograd through
    ``inner(x)`` otherwise. For comparing a fused chain with the step-by-step path on the same
    energy, as tests/ and bench/ do. Parameters stay ``inner``'s (no copy)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    @property
    def energy_and_grad(self):
        return self.inner.energy_and_grad  # AttributeError (no closed form) -> autograd


def fused_chain_of(energy, x: torch.Tensor, backend: Optional[str] = None):
    """A function run(x, n_steps, step_size, noise_std, **kw) -> ChainResult that runs ``energy``'s
    fused chain (mixture_chain, double_well_chain or mlp_chain with its parameters bound; kw:
    energy, grad, seed, offset, mode, log_w, return_log_w_steps, backend), or None when the
    energy has no fused chain for walkers like x [N, d] on ``backend`` (a resolved backend
    name; None: any) (see the module docstring for the rule). The MLP runner runs backend
    "cuda" as "triton" (the only MLP chain kernel for CUDA tensors)."""
    if x.dim() != 2 or x.shape[1] == 0:
        return None
    params = chain_params_of(energy, x.dtype)
    if params is not None:
        if params[0].shape[1] != x.shape[1] or params[0].device != x.device:
            return None
        if backend is not None and (backend not in MIXTURE_CHAIN_BACKENDS or
                                    (backend == "cuda" and x.shape[1] > CUDA_MIXTURE_MAX_D)):
            return None
        return lambda xx, n_steps, a, s=None, **kw: mixture_chain(xx, *params, n_steps, a, s, **kw)
    params = double_well_chain_params_of(energy)
    if params is not None:
        if getattr(energy, "dim", x.shape[1]) != x.shape[1] or params[0].device != x.device:
            return None
        if backend is not None and (backend not in DOUBLE_WELL_CHAIN_BACKENDS or
                                    (backend == "cuda" and x.shape[1] > CUDA_MIXTURE_MAX_D)):
            return None
        return lambda xx, n_steps, a, s=None, **kw: double_well_chain(xx, *params, n_steps, a, s, **kw)
    params = mlp_chain_params_of(energy)
    if params is not None:
        ws, bs, act, inv_ref = params
        if ws[0].shape[1] != x.shape[1] or ws[0].device != x.device:
            return None
        if backend == "cuda":  # no CUDA C++ MLP kernel: CUDA walkers run the Triton one, if triton is here
            if x.device.type != "cuda" or _backend._available("triton", x.device) is not None:
                return None
        elif backend is not None and backend not in MLP_CHAIN_BACKENDS:
            return None
        if x.device.type == "cuda" and x.shape[1] > TRITON_MLP_MAX_D:
            return None

        def run(xx, n_steps, a, s=None, **kw):
            if kw.get("backend") == "cuda":
                kw["backend"] = "triton"
            return mlp_chain(xx, ws, bs, act, n_steps, a, s, inv_ref_var=inv_ref, **kw)

        return run
    return None


def mlp_chain(
    x: torch.Tensor,
    weights,
    biases,
    act: str,
    n_steps: int,
    step_size: float,
    noise_std: Optional[float] = None,
    *,
    inv_ref_var: float = 0.0,
    energy: Optional[torch.Tensor] = None,
    grad: Optional[torch.Tensor] = None,
    seed: int = 0,
    offset: int = 0,
    mode: str = "ula",
    log_w: Optional[torch.Tensor] = None,
    return_log_w_steps: bool = False,
    backend: str = "auto",
) -> ChainResult:
    """n_steps Langevin steps of the MLP energy (fastlangevin.energies.MLPEnergy)

        h_0 = x,  h_l = act(h_{l-1} W_l^T + b_l)  (l = 1 .. L),
        U(x) = h_L w^T + b + inv_ref_var |x|^2 / 2

    for every walker of x [N, d] (float32 or float64), in one kernel call; step k is the
    update of mixture_chain with this energy (same noise stream offset + k, same modes "ula",
    "weights", "mh", same alpha). The forward pass and the backward pass to the input run as
    small dense matmuls over a tile of walkers held in local buffers for all n_steps; the
    weights are packed once per call.

    weights: L + 1 matrices (1 <= L <= 4): [H, d], [H, H] x (L - 1), [1, H] (nn.Linear's
    [out, in], the head last), 1 <= H <= 128; biases: [H] x L, [1] (any float dtype, cast to
    x's). act: "silu", "softplus" or "tanh". inv_ref_var: 1 / ref_var >= 0 (0: no reference
    term). The other arguments are mixture_chain's. ``MLPEnergy.mlp_chain_params()`` gives
    (weights, biases, act, inv_ref_var). Inputs are not modified.

    Backends: "cpu" (csrc/cpu/mlp_chain_cpu.cpp), "triton" (fastlangevin/kernels/mlp_chain.py;
    CUDA tensors, or CPU tensors under TRITON_INTERPRET=1) and "reference"
    (reference.mlp_chain_ref); every mode, float32 and float64 on each. There is no "cuda"
    kernel: "auto" on CUDA tensors picks "triton", an explicit "cuda" raises ValueError
    (fused_chain_of's runner, which sample() and Walkers call with their backend, turns
    "cuda" into "triton").
    """
    op = "mlp_chain"
    _check_walkers(op, x)
    d = x.shape[1]
    if act not in MLP_ACTS:
        raise ValueError(f"{op}: act must be one of {MLP_ACTS}, got {act!r}")
    weights, biases = list(weights), list(biases)
    depth = len(weights) - 1
    if not 1 <= depth <= MLP_MAX_DEPTH:
        raise ValueError(f"{op}: weights must hold 2 to {MLP_MAX_DEPTH + 1} matrices (1 to {MLP_MAX_DEPTH} hidden "
                         f"layers and the head), got {len(weights)}")
    if len(biases) != len(weights):
        raise ValueError(f"{op}: biases must hold one vector per weight matrix ({len(weights)}), got {len(biases)}")
    for name, t in [(f"weights[{i}]", w) for i, w in enumerate(weights)] + \
                   [(f"biases[{i}]", b) for i, b in enumerate(biases)]:
        check_float_tensor(op, name, t)
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device}, x is on {x.device}")
    h = weights[0].shape[0] if weights[0].dim() == 2 else -1
    if not 1 <= h <= MLP_MAX_HIDDEN:
        raise ValueError(f"{op}: weights[0] has shape {_shape(weights[0])}, expected [H, {d}] with "
                         f"1 <= H <= {MLP_MAX_HIDDEN} (larger MLPs: run sample() step by step)")
    for i, (w, b) in enumerate(zip(weights, biases)):
        out, inp = (1 if i == depth else h), (d if i == 0 else h)
        if w.shape != (out, inp):
            raise ValueError(f"{op}: weights[{i}] has shape {_shape(w)}, expected [{out}, {inp}] (x has {_shape(x)})")
        if b.shape != (out,):
            raise ValueError(f"{op}: biases[{i}] has shape {_shape(b)}, expected [{out}]")
    if isinstance(inv_ref_var, bool) or not isinstance(inv_ref_var, (int, float)) or \
            not (math.isfinite(inv_ref_var) and inv_ref_var >= 0):
        raise ValueError(f"{op}: inv_ref_var must be a finite float >= 0, got {inv_ref_var!r}")
    inv_ref_var = float(inv_ref_var)
    a, s, seed, offset = _check_run(op, n_steps, mode, step_size, noise_std, seed, offset)
    be = _backend.resolve(op, backend, x.device)
    if be == "cuda" and backend == "auto" and _backend._available("triton", x.device) is None:
        be = "triton"  # no CUDA C++ kernel: the Triton kernel runs the MLP chain on CUDA tensors
    if be not in MLP_CHAIN_BACKENDS:
        raise ValueError(f"{op}: backend {be!r} has no fused MLP chain kernel (available: {MLP_CHAIN_BACKENDS}; "
                         "on CUDA tensors use backend 'triton'); sample() and Walkers route CUDA walkers to the "
                         "Triton kernel, or run step by step where triton is missing")
    if be == "triton" and x.device.type == "cuda" and d > TRITON_MLP_MAX_D:
        raise ValueError(f"{op}: the Triton kernel runs CUDA walkers of dimension d <= {TRITON_MLP_MAX_D} (its "
                         f"state tiles live in registers), got d = {d}; sample() and Walkers run such walkers "
                         "step by step")
    weights = [w.detach().to(x.dtype).contiguous() for w in weights]
    biases = [b.detach().to(x.dtype).contiguous() for b in biases]
    energy_fn = lambda y: reference.mlp_energy_ref(y, weights, biases, act, inv_ref_var)  # noqa: E731
    energy, grad, log_w = _check_state(op, x, energy, grad, energy_fn, mode, log_w, return_log_w_steps)

    if be == "reference":
        if return_log_w_steps:
            return _loop_with_steps(energy_fn, x.detach(), energy, grad, n_steps, a, s, seed, offset, log_w, op)
        xo, uo, go, lw, acc = reference.mlp_chain_ref(
            x.detach(), energy.detach().to(x.dtype), grad.detach().to(x.dtype), weights, biases, act, inv_ref_var,
            n_steps, a, s, seed=seed, offset=offset, mode=mode,
            log_w=None if log_w is None else log_w.to(torch.float64))
        return ChainResult(xo, uo, go, lw, acc, None)

    xo, uo, go, lw, steps, acc = _kernel_state(x, energy, grad, log_w, n_steps, return_log_w_steps)
    if be == "triton":
        from .kernels.mlp_chain import mlp_chain_triton

        mlp_chain_triton(xo, uo, go, weights, biases, act, inv_ref_var, n_steps, a, s, seed, offset, MODES.index(mode),
                         lw, steps, acc)
        return ChainResult(xo, uo, go, lw, acc, steps)
    _register_fakes()
    torch.ops.fastlangevin.mlp_chain(xo, uo, go, weights, biases, MLP_ACTS.index(act), inv_ref_var, n_steps, a, s,
                                     _as_i64(seed), _as_i64(offset), MODES.index(mode), lw, steps, acc)
    return ChainResult(xo, uo, go, lw, acc, steps)


def _reference_chain(energy_fn, x, energy, grad, n_steps, a, s, seed, offset, mode, log_w, return_log_w_steps,
                     op) -> ChainResult:
    """Backend "reference" of a chain op: reference._chain_loop_ref of energy_fn (the loop of
    mixture_chain_ref / double_well_chain_ref), or _loop_with_steps for return_log_w_steps."""
    if return_log_w_steps:
        return _loop_with_steps(energy_fn, x.detach(), energy, grad, n_steps, a, s, seed, offset, log_w, op)
    xo, uo, go, lw, acc = reference._chain_loop_ref(
        energy_fn, x.detach(), energy.detach().to(x.dtype), grad.detach().to(x.dtype), n_steps, a, s, seed=seed,
        offset=offset, mode=mode, log_w=None if log_w is None else log_w.to(torch.float64), op=op)
    return ChainResult(xo, uo, go, lw, acc, None)


def _kernel_state(x, energy, grad, log_w, n_steps, return_log_w_steps) -> tuple:
    """The buffers a chain kernel updates in place: copies of x, energy, grad (x's dtype,
    contiguous) and log_w (float64), log_w_steps [n_steps, N] (or None) and accepted (zeros)."""
    n = x.shape[0]
    xo = x.detach().to(memory_format=torch.contiguous_format, copy=True)
    uo = energy.detach().to(x.dtype, copy=True).contiguous()
    go = grad.detach().to(x.dtype, copy=True).contiguous()
    lw = None if log_w is None else log_w.detach().to(torch.float64, copy=True).contiguous()
    steps = torch.empty(n_steps, n, dtype=torch.float64, device=x.device) if return_log_w_steps else None
    acc = torch.zeros(n, dtype=torch.int64, device=x.device)
    return xo, uo, go, lw, steps, acc


def _loop_with_steps(energy_fn, x, energy, grad, n_steps, a, s, seed, offset, log_w, op):
    """The reference loop of energy_fn one step at a time (mode "weights"), keeping log_w after
    each step."""
    rows = []
    u, g, lw = energy.to(x.dtype), grad.to(x.dtype), log_w.to(torch.float64)
    mask = (1 << 64) - 1
    for k in range(n_steps):
        x, u, g, lw, _ = reference._chain_loop_ref(energy_fn, x, u, g, 1, a, s, seed=seed, offset=(offset + k) & mask,
                                                   mode="weights", log_w=lw, op=op)
        rows.append(lw)
    steps = torch.stack(rows) if rows else torch.empty(0, x.shape[0], dtype=torch.float64, device=x.device)
    acc = torch.full((x.shape[0],), n_steps, dtype=torch.int64, device=x.device)
    return ChainResult(x, u, g, lw, acc, steps)
