"""The comparison rows every benchmark shares: torch.compile of an eager composition, the
papers' eager autograd Langevin loop, and TorchEBM's LangevinDynamics on the same energy.

Each helper returns a bench_langevin._Candidate, so the rows are timed round-robin with the
others (_measure_interleaved). A row that cannot run (no torchebm, a composition that does not
compile, compilation skipped in --quick) is a candidate with ``error`` set before timing: it
becomes an "n/a: <why>" row and the run goes on.

TorchEBM mapping (torchebm 0.8.9, samplers/langevin_dynamics.py with its default
EulerMaruyamaIntegrator, core/base_integrator.py BaseSDERungeKuttaIntegrator.step):

    x' = x + eta * (-grad U(x)) + sqrt(2 D) * sqrt(eta) * xi,   D = noise_scale ** 2
       = x - eta grad U(x) + sqrt(2 eta) * noise_scale * xi

so fastlangevin's x' = x - a grad U + s xi is step_size = a, noise_scale = s / sqrt(2 a):
noise_scale = 1 for the exact ULA noise s = sqrt(2a) (the GMM and MLP chains), and
0.01 / sqrt(2) = 0.00707 for the conv bench's decoupled s = 0.01 at a = 1. Same update in
exact arithmetic; the noise itself is torch's generator, not fastlangevin's Philox stream. The gradient
is its BaseModel.gradient: torch.autograd.grad of forward(x) (shape [N]) with ones as
grad_outputs, the same autograd work as the eager loop; noise is torch.randn_like.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

try:
    from . import common
    from .bench_langevin import _Candidate, _short
except ImportError:  # run as a file
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench import common
    from bench.bench_langevin import _Candidate, _short

QUICK_SKIP = "skipped in --quick (compile time)"


def failed(method: Any, why: str, settings: dict, note: str = "") -> _Candidate:
    """A candidate that is not timed: its row says ``n/a: why``."""
    c = _Candidate(method, lambda: None, settings, note=note)
    c.error = why
    return c


def compile_first_call(fn: Callable, *args, device, **compile_kw) -> tuple[Optional[Callable], str]:
    """torch.compile(fn, dynamic=False, **compile_kw), then its first call fn(*args), timed
    (the compilation; inductor on CPU runs gcc: 4 to 16 s for a GMM Langevin step on the
    2-core box). Returns (compiled, note) with note "compile X.X s, G graphs, K graph breaks", or
    (None, "ExceptionType: first line") when compilation or the first call fails.

    dynamic=False: each shape gets its own specialised code, the best case for compile (a
    sampler's shapes are fixed). The graph-break count comes from torch._dynamo's counters:
    torch.autograd.grad breaks the graph under the default config (trace_autograd_ops=False),
    which is what a user calling torch.compile on the papers' step gets.
    """
    import torch._dynamo

    # Dynamo caches compiled code per Python code object, and every torch.compile of one
    # function shares that cache: python -m bench compiles eager_step at 6 shapes and
    # torch_resample at 16 (scheme x N). Past recompile_limit (8 in torch 2.14) dynamo silently
    # runs the function eagerly, and the row would time eager under the name "compile" (seen:
    # "compile 0.0 s" rows at N = 1e5 in a full run). 64 covers every bench; the graph count in
    # the note shows what was compiled (0 new graphs: a cache hit, or a fallback).
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    counters = torch._dynamo.utils.counters
    breaks_before = sum(counters["graph_break"].values())
    graphs_before = counters["stats"]["unique_graphs"]
    try:
        compiled = torch.compile(fn, dynamic=False, **compile_kw)
        t0 = time.perf_counter()
        compiled(*args)
        common.sync(torch.device(device))
        dt = time.perf_counter() - t0
    except Exception as e:  # no C++ compiler, inductor bugs, unsupported ops: report, go on
        return None, _short(e)
    breaks = sum(counters["graph_break"].values()) - breaks_before
    graphs = counters["stats"]["unique_graphs"] - graphs_before
    return compiled, f"compile {dt:.1f} s, {graphs} graphs, {breaks} graph breaks"


def compiled_candidate(method: Any, fn: Callable, args: tuple, call: Callable[[Callable], Callable],
                       settings: dict, device, *, quick: bool, note: str = "",
                       skip: Optional[str] = None) -> _Candidate:
    """The "compile" row: ``call(compiled)`` is the closure timed (compiled = torch.compile of
    ``fn``, first called on ``args`` outside the timing). In --quick it is not compiled at all
    (QUICK_SKIP): CI's bench smoke run must stay under ~2 minutes on 2 cores. ``skip``: a reason
    not to compile this one (the row says it), e.g. a size the module compiles elsewhere."""
    if quick or skip:
        return failed(method, QUICK_SKIP if quick else skip, settings, note)
    compiled, how = compile_first_call(fn, *args, device=device)
    if compiled is None:
        return failed(method, how, settings, note)
    return _Candidate(method, call(compiled), settings, note="; ".join(filter(None, [note, how])))


# --------------------------------------------------------------------------------------------
# Langevin chains: the papers' eager loop, its torch.compile, TorchEBM
# --------------------------------------------------------------------------------------------

def autograd_step(energy: Callable, x: torch.Tensor, a: float, s: float) -> torch.Tensor:
    """The papers' step: x [N, ...] -> x - a grad U(x) + s torch.randn_like(x), grad U by
    torch.autograd.grad of U(x).sum() (U: [N, ...] -> [N])."""
    xr = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(energy(xr).sum(), xr)
    return x - a * g + s * torch.randn_like(x)


def run_steps(step: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n_steps: int) -> torch.Tensor:
    for _ in range(n_steps):
        x = step(x)
    return x


def eager_chain(energy: Callable, x: torch.Tensor, n_steps: int, a: float, s: float) -> torch.Tensor:
    """n_steps of autograd_step from x [N, ...]."""
    return run_steps(lambda y: autograd_step(energy, y, a, s), x, n_steps)


def _torchebm_sampler(energy: Callable, a: float, s: float, device: torch.device, dtype: torch.dtype):
    """LangevinDynamics on ``energy`` wrapped as a torchebm BaseModel (see the module docstring
    for the noise mapping). Raises ImportError without torchebm."""
    from torchebm.core import BaseModel
    from torchebm.samplers import LangevinDynamics

    class Energy(BaseModel):
        def __init__(self, fn):
            super().__init__(dtype=dtype, device=device)
            self.fn = fn  # an nn.Module registers as a submodule; a function is a plain attribute

        def forward(self, x):
            return self.fn(x)

    return LangevinDynamics(Energy(energy), step_size=a, noise_scale=s / math.sqrt(2.0 * a),
                            dtype=dtype, device=device)


def chain_baselines(energy: Callable, x0: torch.Tensor, n_steps: int, a: float, s: float, settings: dict,
                    device: torch.device, *, quick: bool) -> list[_Candidate]:
    """The eager, compile and torchebm candidates of a chain benchmark, eager first (the
    vs_eager reference of measure_rows): each runs the n_steps chain from x0 [N, ...] per call
    on energy U: [N, ...] -> [N], step x - a grad U + s xi."""
    cands = [_Candidate("eager", lambda: eager_chain(energy, x0, n_steps, a, s), settings,
                        note="autograd + torch.randn_like per step")]

    def step(x):
        return autograd_step(energy, x, a, s)

    cands.append(compiled_candidate("compile", step, (x0,), lambda c: lambda: run_steps(c, x0, n_steps),
                                    settings, device, quick=quick, note="torch.compile of the eager step"))
    try:
        sampler = _torchebm_sampler(energy, a, s, device, x0.dtype)
    except ImportError as e:
        cands.append(failed("torchebm", f"torchebm not installed ({_short(e)})", settings))
    else:
        import torchebm

        cands.append(_Candidate("torchebm", lambda: sampler.sample(x=x0, n_steps=n_steps), settings,
                                note=f"torchebm {torchebm.__version__} LangevinDynamics, "
                                     f"noise_scale {s / math.sqrt(2.0 * a):.4g}"))
    return cands
