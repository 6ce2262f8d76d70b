"""SMC resampling: effective sample size, the uniform stream, and ancestor indices.

    from fastlangevin import resampling as rs
    rs.ess(log_w)                                     # 0-d float64, in [1, N]
    a = rs.resample(log_w, "systematic", seed=0, offset=t)   # int64 [N] ancestors
    x = x[a]                                          # the resampled walkers

Every backend (reference, cpu, cuda, triton) returns the same ancestors from the same
uniforms: the definitions are written out in ``fastlangevin.reference.resample_ref`` and the
uniform stream in ``fastlangevin.reference`` (module docstring) and ``csrc/philox.h``.

Like the rest of fastlangevin, nothing here reads a GPU tensor's values on the host: a loop of
resampling steps can be captured in a CUDA graph. The price is in the bad-input path: log-weights
that are NaN, +inf, or all -inf are reported with a ValueError for CPU tensors (outside
torch.compile: a value check there would be a graph break), but on a GPU they
give ancestors all equal to -1, so that ``x.index_select(0, a)`` and ``torch.gather`` fail
loudly (a device-side assert). Plain ``x[a]`` would not: it wraps -1 to the last walker; check
``(a < 0).any()`` where that matters. fastlangevin.Walkers does not let it get that far: it
keeps the walkers in place where the ancestors are -1 and reports the NaN/+inf log-weight, with
its step, at the next non-finite check (no device assert, which would end the CUDA context).
Explicit ``uniforms`` outside [0, 1) are likewise rejected for CPU tensors only.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch

from . import _backend, reference
from .ops import _as_i64, _shape, _triton_ops, check_u64, resolve_stream

SCHEMES = reference.RESAMPLE_SCHEMES

__all__ = ["SCHEMES", "ess", "uniforms", "resample"]


def _check_log_w(op: str, log_w) -> torch.Tensor:
    if not torch.is_tensor(log_w):
        raise TypeError(f"{op}: log_w must be a torch.Tensor, got {type(log_w).__name__}")
    if log_w.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}: log_w must be float32 or float64, got {log_w.dtype}")
    if log_w.dim() != 1 or log_w.shape[0] < 1:
        raise ValueError(f"{op}: log_w must have shape [N] with N >= 1, got {_shape(log_w)}")
    return log_w


def ess(log_w: torch.Tensor) -> torch.Tensor:
    """Effective sample size (sum w)^2 / sum w^2 of log-weights [N] (float32 or float64).

    Computed in log space, exp(2 logsumexp(log_w) - logsumexp(2 log_w)) in float64, so weights
    of any magnitude (log-weights of 1e4) neither overflow nor underflow. Returns a 0-d float64
    tensor on log_w's device: N for equal weights, 1 for a single walker or when one weight
    dominates, 0 when every log-weight is -inf, NaN for a NaN log-weight.
    """
    _check_log_w("ess", log_w)
    return ess_rows(log_w)


def ess_rows(log_w: torch.Tensor) -> torch.Tensor:
    """ess() along the last dimension of log_w [..., N] (unchecked): [...] float64.

    With a = exp(log_w - max log_w) in (0, 1], ESS = (sum a)^2 / sum a^2: equal log-weights give
    N exactly (every a is 1; the difference of two logsumexps, the earlier form, rounded to
    4.999999999999999 for N = 5 and exceeded N at log-weights of 1e4), and sum a^2 <= sum a
    bounds it below by 1. It is clamped to N against the last ulp of rounding above it."""
    lw = log_w.to(torch.float64)
    m = lw.amax(dim=-1, keepdim=True)
    a = torch.exp(lw - torch.where(torch.isneginf(m), 0.0, m))  # all -inf: a = 0 (ESS 0), not NaN
    s1, s2 = a.sum(dim=-1), (a * a).sum(dim=-1)
    val = torch.clamp(s1 * s1 / s2, max=float(lw.shape[-1]))
    return torch.where(s1 == 0, 0.0, val)


# --------------------------------------------------------------------------------------------
# fake (meta) implementations for torch.compile / opcheck of the C++ ops
# --------------------------------------------------------------------------------------------

@_backend.register_fakes_once
def _register_fakes() -> None:

    @torch.library.register_fake("fastlangevin::resample_uniforms_out")
    def _uniforms_fake(out, seed, offset):
        return None

    @torch.library.register_fake("fastlangevin::resample")
    def _resample_fake(log_w, scheme, uniforms, seed, offset):
        return torch.empty(log_w.shape, dtype=torch.int64, device=log_w.device)


# --------------------------------------------------------------------------------------------
# the ops
# --------------------------------------------------------------------------------------------

def uniforms(
    n: int,
    *,
    seed: int,
    offset: int = 0,
    device: Union[str, torch.device] = "cpu",
    backend: str = "auto",
) -> torch.Tensor:
    """The resampling uniforms u_0 .. u_{n-1} of stream (seed, offset): float64 [n] in [0, 1),
    53 random bits each, bit-identical on every backend. ``resample`` with the same (seed,
    offset) uses exactly these (systematic: u_0 only)."""
    op = "uniforms"
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{op}: n must be an int, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"{op}: n must be >= 0, got {n}")
    seed, offset, device, be = resolve_stream(op, seed, offset, device, backend)
    if be == "reference":
        return reference.uniforms_ref(n, seed, offset, device=device)
    out = torch.empty(n, dtype=torch.float64, device=device)
    if be == "triton":
        _triton_ops().resample_uniforms_out(out, _as_i64(seed), _as_i64(offset))
    else:
        _register_fakes()
        torch.ops.fastlangevin.resample_uniforms_out(out, _as_i64(seed), _as_i64(offset))
    return out


def _check_uniforms(op: str, u, log_w: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(u):
        raise TypeError(f"{op}: uniforms must be a torch.Tensor or None, got {type(u).__name__}")
    if u.dtype != torch.float64:
        raise TypeError(f"{op}: uniforms must be float64, got {u.dtype}")
    if u.device != log_w.device:
        raise ValueError(f"{op}: uniforms is on {u.device}, log_w is on {log_w.device}")
    if u.shape != log_w.shape:
        raise ValueError(f"{op}: uniforms has shape {_shape(u)}, log_w has {_shape(log_w)}")
    if u.device.type == "cpu" and not torch.compiler.is_compiling():
        bad = ~((u >= 0) & (u < 1))  # NaN counts as outside
        if bool(bad.any()):
            raise ValueError(f"{op}: uniforms must lie in [0, 1); {int(bad.sum())} of {u.numel()} entries do not")
    return u.contiguous()


def _check_weights_cpu(op: str, log_w: torch.Tensor) -> None:
    """The weights must define a distribution; checked on CPU tensors only (no GPU sync)."""
    if math.isfinite(float(log_w.max())):  # max is NaN, +inf or -inf exactly when bad: one pass
        return
    n_nan = int(torch.isnan(log_w).sum())
    if n_nan:
        raise ValueError(f"{op}: log_w has {n_nan} NaN entries")
    n_inf = int(torch.isposinf(log_w).sum())
    if n_inf:
        raise ValueError(f"{op}: log_w has {n_inf} +inf entries")
    if bool(torch.isneginf(log_w).all()):
        raise ValueError(f"{op}: all log-weights are -inf")


def resample(
    log_w: torch.Tensor,
    scheme: str = "systematic",
    *,
    seed: int,
    offset: int = 0,
    uniforms: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Ancestor indices for SMC resampling: int64 [N] from log-weights [N] (float32 or float64;
    unnormalised; -inf for dead walkers).

    Weights w = softmax(log_w) and cdf = cumsum(w) in float64; slot j's ancestor is the walker
    whose cdf step holds position p_j (the number of cdf entries <= p_j, capped at the last
    walker of positive weight, so zero-weight walkers are never picked):

      ``"multinomial"``  p_j = u_j (iid)
      ``"stratified"``   p_j = (j + u_j) / N
      ``"systematic"``   p_j = (j + u_0) / N (one uniform; the lowest variance, the default)
      ``"residual"``     floor(N w_i) copies of walker i first, in index order; the remaining
                         slots j are multinomial draws with u_j from the residual weights
                         N w_i - floor(N w_i)

    u = ``uniforms`` (float64 [N] in [0, 1): the seam for exact tests) or else
    ``uniforms(N, seed=seed, offset=offset)``. Systematic and stratified ancestors come out
    sorted; multinomial ones do not. Exact definitions: fastlangevin.reference.resample_ref.

    Bad weights (a NaN or +inf log-weight, or all -inf) raise ValueError for CPU tensors and
    give ancestors all -1 for GPU tensors (see the module docstring).
    """
    op = "resample"
    _check_log_w(op, log_w)
    if not isinstance(scheme, str):
        raise TypeError(f"{op}: scheme must be a str, got {type(scheme).__name__}")
    if scheme not in SCHEMES:
        raise ValueError(f"{op}: scheme must be one of {SCHEMES}, got {scheme!r}")
    seed = check_u64(op, "seed", seed)
    offset = check_u64(op, "offset", offset)
    if uniforms is not None:
        uniforms = _check_uniforms(op, uniforms, log_w)
    if log_w.device.type == "cpu" and not torch.compiler.is_compiling():
        _check_weights_cpu(op, log_w)
    be = _backend.resolve(op, backend, log_w.device)
    if be == "reference":
        return reference.resample_ref(log_w, scheme, seed=seed, offset=offset, uniforms=uniforms)
    lw = log_w.contiguous()
    if be == "triton":
        return _triton_ops().resample(lw, scheme, uniforms, _as_i64(seed), _as_i64(offset))
    _register_fakes()
    return torch.ops.fastlangevin.resample(lw, scheme, uniforms, _as_i64(seed), _as_i64(offset))
