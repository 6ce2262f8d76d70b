"""The public ops: validation, backend choice, and the calls into each backend.

Every function here checks its arguments on the host from metadata only (shape, dtype,
device, Python scalars): no op reads a tensor's values on a GPU, calls .item() or reads the
global generator, so a loop of them can be captured in a CUDA graph.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Union

import torch

from . import _backend, reference

Number = Union[int, float]
U64 = (1 << 64) - 1

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------
# argument checks (shared by every op; messages name the op and the argument)
# --------------------------------------------------------------------------------------------

def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_u64(op: str, name: str, v) -> int:
    """A seed or offset: a Python int in [0, 2**64)."""
    if isinstance(v, bool) or not isinstance(v, int):
        if torch.is_tensor(v) or hasattr(v, "__index__"):
            try:
                v = int(v)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"{op}: {name} must be an int, got {type(v).__name__}") from None
        else:
            raise TypeError(f"{op}: {name} must be an int, got {type(v).__name__}")
    if not 0 <= v <= U64:
        raise ValueError(f"{op}: {name} must be in [0, 2**64), got {v}")
    return v


def resolve_stream(op: str, seed, offset, device, backend: str):
    """(seed, offset, device, backend) of an op that fills a new tensor from the Philox stream."""
    device = torch.device(device)
    return check_u64(op, "seed", seed), check_u64(op, "offset", offset), device, _backend.resolve(op, backend, device)


def _as_i64(v: int) -> int:
    """A 64-bit word (0 <= v < 2**64) as the int64 that the C++ schema carries (two's complement).

    Arithmetic, not a branch on v: under torch.compile v may be a SymInt, and `if v >= 2**63`
    would guard on the branch taken, so that a compiled function recompiled the first time an
    offset crossed 2**63 (v // 2**63 is 0 or 1 for a checked word)."""
    return v - (v // (1 << 63)) * (1 << 64)


# (isinstance rather than torch.is_tensor, and one combined test in check_like: these run several
# times per op call, and a small op's Python overhead is a visible part of its time, e.g. 9 of
# jarzynski_increment's 31 us at [1024, 64] on the 2-core Xeon.)
def check_float_tensor(op: str, name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{op}: {name} must be a floating tensor (float16, bfloat16, float32, float64), got {t.dtype}")
    return t


def check_like(op: str, name: str, t, x: torch.Tensor, x_name: str = "x") -> torch.Tensor:
    """`t` has x's shape, dtype and device."""
    if isinstance(t, torch.Tensor) and t.shape == x.shape and t.dtype == x.dtype and t.device == x.device:
        return t  # x is a checked float tensor, so t is one too
    check_float_tensor(op, name, t)
    if t.device != x.device:
        raise ValueError(f"{op}: {name} is on {t.device}, {x_name} is on {x.device}")
    if t.shape != x.shape:
        raise ValueError(f"{op}: {name} has shape {_shape(t)}, {x_name} has {_shape(x)}")
    if t.dtype != x.dtype:
        raise TypeError(f"{op}: {name} has dtype {t.dtype}, {x_name} has {x.dtype}")
    return t


def check_count(op: str, name: str, v, minimum: int = 0) -> int:
    """A count (n_steps, n_walkers, ...): an int >= minimum, numpy integers included (not bool)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
        raise ValueError(f"{op}: {name} must be an int >= {minimum}, got {v!r}")
    return int(v)


def _traced_float(v) -> bool:
    """A Python float seen by torch.compile while it traces: once a float argument changes between
    calls Dynamo makes it symbolic, and math.isfinite or a comparison on it would be a graph
    break (Unsupported under fullgraph=True) or a guard on its value (a recompile per value). Its
    value is not checked there: it is checked in eager mode, and a compiled call should be
    given values an eager call accepts."""
    return isinstance(v, float) and torch.compiler.is_compiling()


def check_positive(op: str, name: str, v, x: torch.Tensor, allow_zero: bool = False):
    """A step size or noise std: a finite float (> 0, or >= 0 with allow_zero) or a per-walker
    tensor [N] on x's device. Values of a CPU tensor are checked; values of a GPU tensor are not
    (that would need a device sync), nor are they, or a float's, inside torch.compile (a graph
    break; see _traced_float)."""
    if _traced_float(v):
        return v
    if isinstance(v, float) and math.isfinite(v) and (v >= 0 if allow_zero else v > 0):
        return v
    rel = ">= 0" if allow_zero else "> 0"
    if torch.is_tensor(v):
        check_float_tensor(op, name, v)
        if v.device != x.device:
            raise ValueError(f"{op}: {name} is on {v.device}, x is on {x.device}")
        if v.dim() == 0:
            v = v.reshape(1).expand(x.shape[0])
        if v.shape != (x.shape[0],):
            raise ValueError(f"{op}: {name} must be a float or a per-walker tensor [{x.shape[0]}], got shape {_shape(v)}")
        if v.device.type == "cpu" and not torch.compiler.is_compiling():
            bad = ~torch.isfinite(v) | ((v < 0) if allow_zero else (v <= 0))
            if bool(bad.any()):
                raise ValueError(f"{op}: {name} must be finite and {rel}; {int(bad.sum())} of {v.numel()} entries are not")
        return v
    if isinstance(v, bool) or not isinstance(v, numbers.Real):  # numbers.Real: numpy scalars too
        raise TypeError(f"{op}: {name} must be a float or a tensor, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v) or (v < 0 if allow_zero else v <= 0):
        raise ValueError(f"{op}: {name} must be finite and {rel}, got {v}")
    return v


def check_clamp(op: str, clamp) -> tuple[float, float]:
    if clamp is None:
        return -math.inf, math.inf
    try:
        lo, hi = clamp
        if _traced_float(lo) or _traced_float(hi):
            return -math.inf if lo is None else lo, math.inf if hi is None else hi
        lo = -math.inf if lo is None else float(lo)
        hi = math.inf if hi is None else float(hi)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: clamp must be a pair (lo, hi) of floats or None, got {clamp!r}") from None
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"{op}: clamp bounds must not be NaN, got ({lo}, {hi})")
    if lo > hi:
        raise ValueError(f"{op}: clamp has lo > hi: ({lo}, {hi})")
    return lo, hi


def check_grad_clip(op: str, grad_clip) -> float:
    if grad_clip is None:
        return math.inf
    if _traced_float(grad_clip):
        return grad_clip
    if isinstance(grad_clip, bool) or not isinstance(grad_clip, (int, float)):
        raise TypeError(f"{op}: grad_clip must be a float or None, got {type(grad_clip).__name__}")
    if not grad_clip > 0:
        raise ValueError(f"{op}: grad_clip must be > 0, got {grad_clip}")
    return float(grad_clip)


def check_ref_var(op: str, ref_var) -> float:
    """1 / ref_var, or 0 for no reference term."""
    if ref_var is None:
        return 0.0
    if _traced_float(ref_var):
        return 1.0 / ref_var
    if isinstance(ref_var, bool) or not isinstance(ref_var, (int, float)):
        raise TypeError(f"{op}: ref_var must be a float or None, got {type(ref_var).__name__}")
    if not (math.isfinite(ref_var) and ref_var > 0):
        raise ValueError(f"{op}: ref_var must be finite and > 0, got {ref_var}")
    return 1.0 / float(ref_var)


def default_noise_std(step_size):
    """sqrt(2 a): the exact unadjusted Langevin algorithm for step size a."""
    if isinstance(step_size, torch.Tensor):
        return torch.sqrt(2.0 * step_size)
    return math.sqrt(2.0 * step_size)


# --------------------------------------------------------------------------------------------
# fake (meta) implementations for torch.compile / opcheck
# --------------------------------------------------------------------------------------------

@_backend.register_fakes_once
def _register_fakes() -> None:

    @torch.library.register_fake("fastlangevin::philox")
    def _philox_fake(counter, seed):
        return torch.empty_like(counter)

    @torch.library.register_fake("fastlangevin::randn_out")
    def _randn_fake(out, seed, offset):
        return None

    @torch.library.register_fake("fastlangevin::langevin_step_out")
    def _step_fake(x, grad, noise, step_t, std_t, step, noise_std, inv_ref_var, grad_clip, clamp_lo, clamp_hi,
                   seed, offset, out):
        return None


def _triton_ops():
    from .kernels import triton_ops

    return triton_ops


# --------------------------------------------------------------------------------------------
# the ops
# --------------------------------------------------------------------------------------------

def philox(counter: torch.Tensor, seed: int, *, backend: str = "auto") -> torch.Tensor:
    """Philox4x32-10 (Random123) of each counter row.

    counter: int64 [n, 4], each entry a 32-bit word in [0, 2**32); seed: int in [0, 2**64),
    key = (seed & 0xffffffff, seed >> 32). Returns int64 [n, 4] output words.
    """
    op = "philox"
    if not torch.is_tensor(counter):
        raise TypeError(f"{op}: counter must be a torch.Tensor, got {type(counter).__name__}")
    if counter.dtype != torch.int64:
        raise TypeError(f"{op}: counter must be int64, got {counter.dtype}")
    if counter.dim() != 2 or counter.shape[1] != 4:
        raise ValueError(f"{op}: counter must have shape [n, 4], got {_shape(counter)}")
    seed = check_u64(op, "seed", seed)
    be = _backend.resolve(op, backend, counter.device)
    if be == "reference":
        return reference.philox_ref(counter, seed)
    if be == "triton":
        return _triton_ops().philox(counter, _as_i64(seed))
    _register_fakes()
    return torch.ops.fastlangevin.philox(counter.contiguous(), _as_i64(seed))


def randn(
    shape: Sequence[int],
    *,
    seed: int,
    offset: int = 0,
    dtype: torch.dtype = torch.float32,
    device: Union[str, torch.device] = "cpu",
    backend: str = "auto",
) -> torch.Tensor:
    """Exactly the standard normals xi that a noisy op called with (seed, offset) adds to a
    tensor of ``shape``: element i of the flattened tensor gets xi_i.

    The uint32 words are identical on every backend; the normals agree to float tolerance.
    """
    op = "randn"
    if isinstance(shape, int):
        shape = (shape,)
    try:
        shape = torch.Size(shape)
    except TypeError:
        raise TypeError(f"randn: shape must be an int or a sequence of ints, got {shape!r}") from None
    if any(n < 0 for n in shape):
        raise ValueError(f"randn: shape must have sizes >= 0, got {tuple(shape)}")
    if dtype not in _FLOATS:
        raise TypeError(f"{op}: dtype must be a floating dtype, got {dtype}")
    seed, offset, device, be = resolve_stream(op, seed, offset, device, backend)
    if be == "reference":
        return reference.randn_ref(shape, seed, offset, dtype=dtype, device=device)
    out = torch.empty(shape, dtype=dtype, device=device)
    if be == "triton":
        _triton_ops().randn_out(out, _as_i64(seed), _as_i64(offset))
    else:
        _register_fakes()
        torch.ops.fastlangevin.randn_out(out, _as_i64(seed), _as_i64(offset))
    return out


def langevin_step(
    x: torch.Tensor,
    grad: torch.Tensor,
    step_size: Union[float, torch.Tensor],
    noise_std: Union[None, float, torch.Tensor] = None,
    *,
    seed: int = 0,
    offset: int = 0,
    noise: Optional[torch.Tensor] = None,
    ref_var: Optional[float] = None,
    grad_clip: Optional[float] = None,
    clamp: Optional[tuple] = None,
    out: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """One fused Langevin step for walkers x of shape [N, ...]:

        y = clamp( x - a * ( clip(grad, -grad_clip, grad_clip) + x / ref_var ) + s * xi )

    a = ``step_size`` (float, or per-walker tensor [N]); s = ``noise_std`` (default
    sqrt(2 a), the exact ULA; 0 for a noise-free step); xi = ``noise`` if given, else
    ``randn(x.shape, seed=seed, offset=offset)``. ``ref_var`` adds the Gaussian-reference drift
    x / ref_var (CoopVAEBM); ``grad_clip`` clips the gradient by value; ``clamp=(lo, hi)``
    clamps the result (IGEBM style). ``out`` may be any tensor of x's shape, dtype and device,
    x, grad or noise included (``out=x`` updates the walkers in place), or one that overlaps an
    input at a shift (computed into a fresh buffer, then copied), in eager mode and compiled.

    float32 and float64 on every backend; float16/bfloat16 state is stepped with float32
    arithmetic. Non-contiguous inputs are accepted. Returns y (``out`` when given).
    """
    op = "langevin_step"
    check_float_tensor(op, "x", x)
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have shape [N, ...] (at least 1-D), got a 0-d tensor")
    check_like(op, "grad", grad, x)
    if noise is not None:
        check_like(op, "noise", noise, x)
    if out is not None:
        check_like(op, "out", out, x)
    a = check_positive(op, "step_size", step_size, x)
    s = default_noise_std(a) if noise_std is None else check_positive(op, "noise_std", noise_std, x, allow_zero=True)
    seed = check_u64(op, "seed", seed)
    offset = check_u64(op, "offset", offset)
    inv_ref = check_ref_var(op, ref_var)
    clip = check_grad_clip(op, grad_clip)
    lo, hi = check_clamp(op, clamp)
    be = _backend.resolve(op, backend, x.device)
    if be == "reference":
        y = reference.langevin_step_ref(
            x, grad, a, s, seed=seed, offset=offset, noise=noise, ref_var=ref_var, grad_clip=grad_clip, clamp=clamp
        )
        if out is None:
            return y
        return out.copy_(y)

    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    step_t = a.to(acc).contiguous() if torch.is_tensor(a) else None
    std_t = s.to(acc).contiguous() if torch.is_tensor(s) else None
    a_f = 0.0 if step_t is not None else a
    s_f = 0.0 if std_t is not None else s
    xc, gc = x.contiguous(), grad.contiguous()
    nc = noise.contiguous() if noise is not None else None
    # A contiguous out is written directly, x, grad or noise itself included. One that overlaps
    # an input at a shift (x = buf[:-1], out = buf[1:]) is the op's business: each launcher
    # (csrc/step_checks.h overlaps_at_shift, kernels/langevin.py) computes it apart and copies it
    # in. There, not here: under torch.compile Inductor re-inplaces the functionalised op into
    # out's storage, and only the op sees the real pointers (tests/test_compile.py
    # ::test_shifted_overlap_out_compiled; deciding here clobbered walkers, max error 3.7).
    direct = out is not None and out.is_contiguous()
    y = out if direct else torch.empty_like(xc, memory_format=torch.contiguous_format)
    args = (xc, gc, nc, step_t, std_t, a_f, s_f, inv_ref, clip, lo, hi)
    if be == "triton":
        _triton_ops().langevin_step_out(*args, _as_i64(seed), _as_i64(offset), y)
    else:
        _register_fakes()
        torch.ops.fastlangevin.langevin_step_out(*args, _as_i64(seed), _as_i64(offset), y)
    if out is not None and not direct:
        out.copy_(y)
        return out
    return y
