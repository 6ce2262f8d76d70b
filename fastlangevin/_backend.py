"""Which backends exist here, and why not when they don't.

Nothing in this module imports triton or touches CUDA at import time: ``import fastlangevin``
must work on a machine with neither.
"""
from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("reference", "cpu", "cuda", "triton")


# The fake (meta) registrars of the op modules (register_fakes_once). They run right after the
# extension loads (or at their definition, if it already has), never lazily inside an op call:
# torch.compile traces op calls, and Dynamo refuses to trace torch.library.register_fake.
_REGISTRARS: list = []
_EXT_STATE: list = []  # [(loaded, reason)] once the load was tried


def _extension() -> tuple[bool, str]:
    """(loaded, reason): load fastlangevin._C once, which registers torch.ops.fastlangevin.*,
    then register every op module's fake kernels."""
    if not _EXT_STATE:
        try:
            from . import _C  # noqa: F401  (registration happens on load)
            _EXT_STATE.append((True, ""))
        except ImportError as e:
            _EXT_STATE.append((False, f"the C++ extension fastlangevin._C is not built or failed to load ({e})"))
        if _EXT_STATE[0][0]:
            for registrar in _REGISTRARS:
                registrar()
    return _EXT_STATE[0]


def extension_loaded() -> bool:
    return _extension()[0]


def register_fakes_once(fn):
    """Decorator for a function that registers fake (meta) kernels of C++ ops with
    torch.library.register_fake: it runs once, and only when the extension (which defines the
    ops) is loaded: when the extension loads, or at once if it already has. Each op module also
    calls its registrar before its first call into the C++ op (a no-op by then)."""
    done = False

    @functools.wraps(fn)
    def wrapper() -> None:
        nonlocal done
        if done or not extension_loaded():
            return
        done = True
        fn()

    _REGISTRARS.append(wrapper)
    if _EXT_STATE and _EXT_STATE[0][0]:
        wrapper()
    return wrapper


def _has_cuda_kernels() -> bool:
    return extension_loaded() and torch._C._dispatch_has_kernel_for_dispatch_key(
        "fastlangevin::langevin_step_out", "CUDA"
    )


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _triton() -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return False, f"triton is not installed ({e})"
    return True, ""


def backends() -> dict[str, bool | str]:
    """Backend name -> True, or a string saying why it is unavailable here."""
    return dict(_backends_cached(triton_interpret()))


@functools.lru_cache(maxsize=None)
def _backends_cached(interpret: bool) -> tuple:
    # Cached: every op resolves its backend on every call, and rebuilding this (a dispatcher
    # query, torch.cuda.is_available()) cost ~50 us per call, as much as a small resampling.
    out: dict[str, bool | str] = {"reference": True}
    ok, why = _extension()
    out["cpu"] = True if ok else why
    if not ok:
        out["cuda"] = why
    elif not _has_cuda_kernels():
        out["cuda"] = "fastlangevin._C was built without CUDA kernels (CPU-only torch, no nvcc, or FASTLANGEVIN_NO_CUDA=1)"
    elif not torch.cuda.is_available():
        out["cuda"] = "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    else:
        out["cuda"] = True
    ok, why = _triton()
    if not ok:
        out["triton"] = why
    elif not (torch.cuda.is_available() or interpret):
        out["triton"] = "no GPU is visible and TRITON_INTERPRET=1 is not set (set it before importing triton to run on CPU tensors)"
    else:
        out["triton"] = True
    return tuple(out.items())


# A constant for torch.compile (evaluated, not traced): the answer depends only on the build, the
# visible GPU and TRITON_INTERPRET, none of which changes inside a compiled function.
@torch.compiler.assume_constant_result
def _status(name: str, interpret: bool):
    """True, or why backend `name` is unavailable."""
    return dict(_backends_cached(interpret))[name]


def _available(name: str, device: torch.device) -> str | None:
    """None if `name` can run on tensors of `device`, else the reason it cannot."""
    # Only the triton entry depends on TRITON_INTERPRET: the other names skip the environment
    # lookup (~0.5 us of every op call).
    status = _status(name, triton_interpret() if name == "triton" else False)
    if status is not True:
        return status
    if name == "cpu" and device.type != "cpu":
        return f"the cpu backend runs on CPU tensors, got a tensor on {device}"
    if name == "cuda" and device.type != "cuda":
        return f"the cuda backend runs on CUDA tensors, got a tensor on {device}"
    if name == "triton" and device.type == "cpu" and not triton_interpret():
        return "the triton backend runs CPU tensors only under TRITON_INTERPRET=1"
    if name == "triton" and device.type not in ("cpu", "cuda"):
        return f"the triton backend does not support {device.type} tensors"
    return None


def resolve(op: str, backend: str, device: torch.device) -> str:
    """The backend that runs `op` on tensors of `device`; raises ValueError naming the op."""
    if backend == "auto":
        order = ("cuda", "triton", "reference") if device.type == "cuda" else ("cpu", "reference")
        for name in order:
            if _available(name, device) is None:
                return name
        return "reference"
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    why = _available(backend, device)
    if why is not None:
        raise ValueError(f"{op}: backend {backend!r} is unavailable: {why}")
    return backend
