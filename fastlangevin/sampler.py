"""sample(): the Langevin loop over any energy, on top of the fused step."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import math
import numbers

import torch

from . import _backend
from .reference import MH_STREAM
from .ops import (
    check_clamp,
    check_count,
    check_float_tensor,
    check_grad_clip,
    check_positive,
    check_ref_var,
    check_u64,
    default_noise_std,
    langevin_step,
)

Energy = Callable[[torch.Tensor], torch.Tensor]


class NonFiniteError(FloatingPointError):
    """The energy or its gradient became NaN or infinite during sampling."""


@dataclass
class SampleResult:
    """What sample() returns.

    x: [N, ...] final walkers; energy: [N] energies at x; trajectory: [n_steps + 1, N, ...]
    (x0 first) when return_trajectory=True, else None; backend: the backend that ran the steps.
    With mh=True: acceptance, the mean acceptance rate over the steps after warm-up (0-d),
    and step_size, the step size used after warm-up (adapted when adapt_steps > 0).
    """

    x: torch.Tensor
    energy: torch.Tensor
    trajectory: Optional[torch.Tensor]
    n_steps: int
    backend: str
    acceptance: Optional[torch.Tensor] = None
    step_size: Union[None, float, torch.Tensor] = None


def progress_range(n: int, desc: str, enabled: bool, start: int = 0):
    """range(start, n), shown as a tqdm bar when enabled."""
    steps = range(start, n)
    if not enabled:
        return steps
    from tqdm.auto import tqdm

    return tqdm(steps, desc=desc, unit="step")


def check_energy_and_walkers(op: str, energy, x0) -> None:
    """The energy is callable and x0 is a float tensor [N, ...] with N >= 1."""
    if not callable(energy):
        raise TypeError(f"{op}: energy must be callable (an nn.Module or a function), got {type(energy).__name__}")
    check_float_tensor(op, "x0", x0)
    if x0.dim() < 1 or x0.shape[0] == 0:
        raise ValueError(f"{op}: x0 must have shape [N, ...] with N >= 1, got [{', '.join(map(str, x0.shape))}]")


def _check_energy_output(op: str, u, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(u):
        raise TypeError(f"{op}: energy must return a tensor of shape [{x.shape[0]}], got {type(u).__name__}")
    if u.shape != (x.shape[0],):
        raise ValueError(
            f"{op}: energy returned shape [{', '.join(map(str, u.shape))}], expected [{x.shape[0]}] (one energy per walker)"
        )
    if not u.is_floating_point():
        raise TypeError(f"{op}: energy returned dtype {u.dtype}, expected a floating dtype")
    if u.device != x.device:
        raise ValueError(f"{op}: energy returned a tensor on {u.device}, the walkers are on {x.device}")
    return u


def energy_and_grad(energy: Energy, x: torch.Tensor, op: str = "sample") -> tuple[torch.Tensor, torch.Tensor]:
    """(U(x) [N], grad_x U(x) [N, ...]), both detached. Gradients flow to x only: parameters of
    an nn.Module energy get no .grad from this.

    The closed-form protocol: an energy object with a method ``energy_and_grad(x)`` returning
    (U [N], grad [N, ...] of x's shape) is evaluated through it, without autograd (every class
    in fastlangevin.energies has one). The method must return U(x) and its exact gradient in x;
    the results are detached here. Anything else is differentiated by autograd.
    """
    closed = getattr(energy, "energy_and_grad", None)
    if callable(closed):
        out = closed(x)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(f"{op}: energy.energy_and_grad must return a tuple (U, grad), got {type(out).__name__}")
        u = _check_energy_output(op, out[0], x)
        g = out[1]
        if not torch.is_tensor(g) or g.shape != x.shape:
            got = f"shape [{', '.join(map(str, g.shape))}]" if torch.is_tensor(g) else type(g).__name__
            raise ValueError(f"{op}: energy.energy_and_grad returned a gradient of {got}, expected x's shape "
                             f"[{', '.join(map(str, x.shape))}]")
        if g.dtype != x.dtype or g.device != x.device:
            raise TypeError(f"{op}: energy.energy_and_grad returned a {g.dtype} gradient on {g.device}, expected x's "
                            f"{x.dtype} on {x.device}")
        return u.detach(), g.detach()
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        u = _check_energy_output(op, energy(xr), x)
        if not u.requires_grad:
            raise ValueError(
                f"{op}: the energy's output does not depend on x through autograd "
                "(does the energy detach its input or run under torch.no_grad()?)"
            )
        (g,) = torch.autograd.grad(u.sum(), xr, allow_unused=True)
    if g is None:
        # The output needs grad through the energy's parameters only: x is not in its graph (an
        # energy that detaches its input). A zero drift would be plain diffusion, silently.
        raise ValueError(
            f"{op}: the energy's output does not depend on x through autograd (it depends on the "
            "energy's parameters only: does the energy detach its input?)"
        )
    return u.detach(), g.detach()


def _non_finite_rows(u: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """[N] bool: the walkers whose energy u [N] or gradient g [N, ...] is NaN or infinite."""
    return ~torch.isfinite(u) | ~torch.isfinite(g.reshape(g.shape[0], -1)).all(dim=1)


class _NonFiniteWatch:
    """Remembers, on the device, the first step at which some walker's energy or gradient was
    non-finite and how many walkers it hit; the host looks only every `every` steps, so a GPU
    loop does not synchronise on every step. host=False: never look from update() (inside a
    CUDA-graph capture, where `step` may be a 0-d device tensor); the caller checks after the
    replay."""

    def __init__(self, op: str, device: torch.device, every: int, host: bool = True):
        self.op, self.every, self.host = op, every, host
        self.what = "energy or gradient"  # what update() has looked at
        # first: the step of the first bad state (-1: the initial state), meaningful once count > 0
        self.first = torch.full((), -1, dtype=torch.int64, device=device)
        self.count = torch.zeros((), dtype=torch.int64, device=device)

    def bad(self, u: torch.Tensor, g: torch.Tensor, log_w: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[N] bool: the walkers whose energy u [N] or gradient g [N, ...] is NaN/inf, or whose
        log-weight log_w [N] (when given) is NaN or +inf (-inf is a legitimate zero weight)."""
        bad = _non_finite_rows(u, g)
        if log_w is not None:
            bad = bad | torch.isnan(log_w) | (log_w == math.inf)
            self.what = "energy, gradient or log-weight"
        return bad

    def update(self, step, u: torch.Tensor, g: torch.Tensor, log_w: Optional[torch.Tensor] = None,
               bad: Optional[torch.Tensor] = None) -> None:
        """Note the bad walkers (see bad(); or the mask ``bad`` already computed) of the state
        after step ``step`` (-1: the initial state)."""
        n_bad = (self.bad(u, g, log_w) if bad is None else bad).sum()
        new = (self.count == 0) & (n_bad > 0)
        self.first = torch.where(new, step, self.first)
        self.count = torch.where(new, n_bad, self.count)
        if self.host and (step + 1) % self.every == 0:
            self.check()

    def check(self) -> None:
        if int(self.count) > 0:
            first = int(self.first)
            where = "in the initial state (x0)" if first < 0 else f"at step {first}"
            raise NonFiniteError(
                f"{self.op}: {self.what} became non-finite {where} "
                f"for {int(self.count)} walker(s); lower the step size or check the energy"
            )


def sample(
    energy: Energy,
    x0: torch.Tensor,
    n_steps: int,
    step_size: Union[float, torch.Tensor],
    noise_std: Union[None, float, torch.Tensor] = None,
    *,
    seed: int = 0,
    offset: int = 0,
    ref_var: Optional[float] = None,
    grad_clip: Optional[float] = None,
    clamp: Optional[tuple] = None,
    backend: str = "auto",
    progress: bool = False,
    return_trajectory: bool = False,
    check_every: Optional[int] = None,
    mh: bool = False,
    adapt_steps: int = 0,
    target_accept: float = 0.574,
    cuda_graph: bool = False,
) -> SampleResult:
    """Run ``n_steps`` Langevin steps from x0 ([N, ...]) on ``energy`` ([N, ...] -> [N], lower is
    likelier; an nn.Module or a function, differentiated by autograd):

        x_{k+1} = clamp( x_k - a ( clip(grad U(x_k)) + x_k / ref_var ) + s xi_k ),
        xi_k = randn(x.shape, seed=seed, offset=offset + k)

    a = step_size (float or [N]); s = noise_std, default sqrt(2 a). A pure function of its
    inputs and seed: the same seed gives the same samples on every backend (to float
    tolerance). No autograd graph leaks out, and the energy's parameters get no gradient.

    Raises NonFiniteError naming the step and the number of walkers if the energy or its
    gradient turns NaN/inf (checked on the host every ``check_every`` steps: 1 on CPU, 100 on
    GPU, where each check is a device synchronisation).

    ``mh=True`` makes it MALA: each proposal y is accepted with probability
    min(1, exp(alpha(x, y) - alpha(y, x))) (fastlangevin.weights.jarzynski_increment with the
    parameters fixed), the uniform drawn from the Philox stream at offset MH_STREAM | k
    (MH_STREAM = 2^62, so the noise offsets offset + k must stay below 2^62: offset + n_steps
    > 2^62 is refused with mh=True); one energy evaluation per step (at the proposal). A
    proposal whose energy is +inf or NaN (or whose gradient is not finite) is rejected, on the
    fused and the step-by-step path alike; NonFiniteError is about the chain's states. During
    the first ``adapt_steps`` steps the step size adapts toward ``target_accept`` (log a +=
    0.1 (rate - target) per step; the default noise sqrt(2 a) follows); those steps are not
    counted in ``acceptance``. Clamping and gradient clipping break the proposal density, so
    they are refused with mh=True; adapt_steps and target_accept without mh=True are refused.

    Fused chains: when the energy has ``chain_params()`` (fastlangevin.energies.GaussianMixture
    and Gaussian: fastlangevin.chain.mixture_chain), ``double_well_chain_params()``
    (DoubleWell: double_well_chain) or ``mlp_chain_params()``
    (fastlangevin.energies.MLPEnergy with depth <= 4, hidden <= 128: mlp_chain; its own ref_var
    is part of the energy, not sample()'s), x0 is float32/float64 [N, d], step_size and
    noise_std are floats, there is no ref_var, grad_clip, clamp, trajectory, progress bar or
    step-size adaptation, and the backend has the kernel (mixture_chain and double_well_chain:
    cpu, reference, triton, cuda up to d = 512; mlp_chain: cpu, reference, triton, and cuda
    through the Triton kernel where triton is installed), all n_steps run in one fused chain
    call (ULA or MALA; fastlangevin.chain.fused_chain_of), with the same noise and uniforms as
    the loop. Anything else (another energy, a larger MLP, image-shaped walkers, a backend
    without the kernel) runs step by step. A fused chain that ends non-finite is run again step
    by step (the same draws), so NonFiniteError names the first bad step either way.

    ``cuda_graph=True`` (CUDA tensors only; a CPU x0 raises ValueError rather than falling back,
    so that nobody times the eager loop believing it is a graph) runs the whole call, ULA or
    MALA (energy forward and backward, steps, accept/reject, adaptation, trajectory, the final
    energy), as the replay of one CUDA graph (fastlangevin.graphs). The graph is captured on
    the first call, after one eager warm-up run of the loop on a side stream, and cached (a few
    per process, keyed by the energy object, its parameter addresses and training flag, x0's
    shape/dtype/device, n_steps, the float step size and noise, ref_var, grad_clip, clamp,
    backend, mh, adapt_steps, target_accept and return_trajectory); seed, offset, x0 and
    per-walker step tensors are inputs of the replay, so later calls with other seeds and
    offsets replay the same graph with the noise eager mode would draw: the same Philox words;
    the same normals bit for bit on the triton and reference backends, to float32 rounding on
    the cuda backend (see fastlangevin.graphs). Host checks under a graph: none during the
    replay; after it, one check of the non-finite watch (NonFiniteError with the first bad step,
    as in eager mode) and of the final energy; ``check_every`` is not used and progress=True
    is refused. The fused-chain shortcut above is not taken. The
    energy's parameters must be updated in place between calls (optimizer steps are);
    fastlangevin.graphs.clear_cache() drops the cached graphs.
    """
    op = "sample"
    check_energy_and_walkers(op, energy, x0)
    from .graphs import check_cuda_graph

    if check_cuda_graph(op, cuda_graph, x0) and progress:
        raise ValueError(f"{op}: progress=True cannot be combined with cuda_graph=True (the loop runs as one "
                         "graph replay: there is no step to report on the host)")
    n_steps = check_count(op, "n_steps", n_steps)
    a = check_positive(op, "step_size", step_size, x0)
    s = default_noise_std(a) if noise_std is None else check_positive(op, "noise_std", noise_std, x0, allow_zero=True)
    seed = check_u64(op, "seed", seed)
    offset = check_u64(op, "offset", offset)
    check_ref_var(op, ref_var)
    check_grad_clip(op, grad_clip)
    check_clamp(op, clamp)
    be = _backend.resolve(op, backend, x0.device)
    check_every = check_every_of(op, check_every, x0.device)
    fused = None if cuda_graph else _fused_chain(energy, x0, a, s, ref_var, grad_clip, clamp, be, return_trajectory,
                                                 progress, adapt_steps if mh else 0, n_steps)
    if not mh and (adapt_steps or target_accept != 0.574):
        raise ValueError(f"{op}: adapt_steps and target_accept tune MALA's acceptance rate: they need mh=True "
                         f"(got adapt_steps={adapt_steps!r}, target_accept={target_accept!r})")
    if mh:
        if clamp is not None or grad_clip is not None:
            raise ValueError(f"{op}: mh=True cannot be combined with clamp or grad_clip: they change the "
                             "proposal density, so the Metropolis-Hastings ratio would be wrong")
        if isinstance(adapt_steps, bool) or not isinstance(adapt_steps, numbers.Integral) or not 0 <= adapt_steps <= n_steps:
            raise ValueError(f"{op}: adapt_steps must be an int in [0, n_steps], got {adapt_steps!r}")
        if adapt_steps and noise_std is not None:
            raise ValueError(f"{op}: step-size adaptation needs the default noise_std = sqrt(2 step_size)")
        if not 0.0 < target_accept < 1.0:
            raise ValueError(f"{op}: target_accept must be in (0, 1), got {target_accept!r}")
        if not torch.is_tensor(s) and s == 0.0:
            raise ValueError(f"{op}: mh=True needs noise_std > 0 (the proposal density must exist)")
        if offset + n_steps > MH_STREAM:
            raise ValueError(
                f"{op}: with mh=True the steps' noise offsets offset .. offset + n_steps - 1 must stay below "
                f"2^62, got offset={offset}, n_steps={n_steps}: the accept/reject uniforms of step k are the "
                "stream at offset 2^62 | k, which a noise offset of 2^62 or more would share"
            )
    if mh:
        def loop():
            return _sample_mala(energy, x0, n_steps, a, noise_std, seed=seed, offset=offset, ref_var=ref_var,
                                backend=be, progress=progress, return_trajectory=return_trajectory,
                                check_every=check_every, adapt_steps=adapt_steps, target_accept=target_accept)
    else:
        def loop():
            return _sample_ula(op, energy, x0, n_steps, a, s, seed=seed, offset=offset, ref_var=ref_var,
                               grad_clip=grad_clip, clamp=clamp, backend=be, check_every=check_every,
                               return_trajectory=return_trajectory, progress=progress)
    if fused is not None:
        return _sample_chain(op, energy, x0, n_steps, a, s, fused, seed=seed, offset=offset, backend=be, mh=mh,
                             loop=loop)
    if cuda_graph:
        return _sample_graph(op, energy, x0, n_steps, a, noise_std if noise_std is None else s, seed=seed,
                             offset=offset, ref_var=ref_var, grad_clip=grad_clip, clamp=clamp, backend=be,
                             return_trajectory=return_trajectory, mh=mh, adapt_steps=adapt_steps if mh else 0,
                             target_accept=target_accept)
    return loop()


def _sample_ula(op, energy, x0, n_steps, a, s, *, seed, offset, ref_var, grad_clip, clamp, backend, check_every,
                return_trajectory, progress) -> SampleResult:
    """The eager ULA branch of sample(); arguments already validated."""
    x = x0.detach().clone(memory_format=torch.contiguous_format)
    traj = [x.clone()] if return_trajectory else None
    watch = _NonFiniteWatch(op, x.device, check_every)
    _ula_loop(op, energy, x, n_steps, a, s, seed=seed, offset=offset, ref_var=ref_var, grad_clip=grad_clip,
              clamp=clamp, backend=backend, watch=watch, traj=traj, progress=progress)
    watch.check()
    with torch.no_grad():
        u = _check_energy_output(op, energy(x), x).detach()
    _check_final_energy(op, u, n_steps)
    return SampleResult(
        x=x, energy=u, trajectory=torch.stack(traj) if traj is not None else None, n_steps=n_steps, backend=backend
    )


def check_every_of(op: str, check_every, device: torch.device) -> int:
    """How often (in steps) the host looks at the non-finite watch: None -> 1 on CPU, 100 on a
    GPU (each look is a device synchronisation there); else an int >= 1."""
    if check_every is None:
        return 1 if device.type == "cpu" else 100
    if isinstance(check_every, bool) or not isinstance(check_every, numbers.Integral) or check_every < 1:
        raise ValueError(f"{op}: check_every must be None or an int >= 1, got {check_every!r}")
    return int(check_every)


def _check_final_energy(op: str, u: torch.Tensor, n_steps: int) -> None:
    if not bool(torch.isfinite(u).all()):
        raise NonFiniteError(
            f"{op}: energy became non-finite at step {n_steps} (the final state) for {int((~torch.isfinite(u)).sum())} walker(s)"
        )


def _ula_loop(op, energy, x, n_steps, a, s, *, seed, offset, ref_var, grad_clip, clamp, backend, watch, traj,
              progress=False, stream=None) -> None:
    """sample()'s ULA steps, updating x in place (and appending to traj). stream: None (eager:
    each step's op draws its noise at the int offset + k) or a fastlangevin.graphs.DeviceStream
    (under CUDA-graph capture: the normals of offset base + k, made from device memory)."""
    noisy = torch.is_tensor(s) or s != 0.0
    for k in progress_range(n_steps, "sample", progress):
        u, g = energy_and_grad(energy, x, op)
        watch.update(k, u, g)
        noise = stream.normals(x, k) if stream is not None and noisy else None
        langevin_step(
            x, g, a, s, seed=seed, offset=(offset + k) & ((1 << 64) - 1), noise=noise, ref_var=ref_var,
            grad_clip=grad_clip, clamp=clamp, out=x, backend=backend,
        )
        if traj is not None:
            traj.append(x.clone())


def _sample_graph(op, energy, x0, n_steps, a, noise_std, *, seed, offset, ref_var, grad_clip, clamp, backend,
                  return_trajectory, mh, adapt_steps, target_accept) -> SampleResult:
    """sample(..., cuda_graph=True), arguments validated (noise_std None means the default)."""
    from . import graphs

    dev = x0.device

    def spec(v):  # tensors are replay inputs (shape and dtype baked); floats are baked
        return ("tensor", tuple(v.shape), v.dtype) if torch.is_tensor(v) else v

    key = (id(energy), graphs.energy_key(energy), tuple(x0.shape), x0.dtype, dev, n_steps, spec(a), spec(noise_std),
           ref_var, grad_clip, check_clamp(op, clamp), backend, return_trajectory, mh, adapt_steps, target_accept)
    values = {"x": x0.detach()}
    if torch.is_tensor(a):
        values["a"] = a
    if torch.is_tensor(noise_std):
        values["s"] = noise_std
    loop = graphs.SAMPLE_GRAPHS.get(energy, key)
    if loop is None:
        stream = graphs.DeviceStream(dev, graphs.noise_backend_for(backend))
        loop = graphs.CapturedLoop(_sample_body(op, energy, n_steps, a, noise_std, stream, ref_var=ref_var,
                                                grad_clip=grad_clip, clamp=clamp, backend=backend,
                                                return_trajectory=return_trajectory, mh=mh,
                                                adapt_steps=adapt_steps, target_accept=target_accept),
                                   {k: v.detach().clone(memory_format=torch.contiguous_format)
                                    for k, v in values.items()}, stream)
        graphs.SAMPLE_GRAPHS.put(energy, key, loop)
    out = loop.run(values, seed, offset)
    return _sample_graph_result(op, out, n_steps, backend, mh)


def _sample_body(op, energy, n_steps, a, noise_std, stream, *, ref_var, grad_clip, clamp, backend,
                 return_trajectory, mh, adapt_steps, target_accept):
    """The function that sample(..., cuda_graph=True) captures: inputs {"x": [N, ...], and
    "a" / "s" [N] when the step size / noise std are tensors} -> outputs {x, energy, trajectory,
    acceptance, step_size, first, count (the non-finite watch)}. It only reads its inputs and
    draws all randomness from `stream`, so it also runs eagerly (the tests run it on CPU)."""

    def body(inp: dict) -> dict:
        a_, s_ = inp.get("a", a), inp.get("s", noise_std)
        dev = inp["x"].device
        watch = _NonFiniteWatch(op, dev, 1, host=False)
        if mh:
            res = _sample_mala(energy, inp["x"], n_steps, a_, s_, seed=0, offset=0, ref_var=ref_var,
                               backend=backend, progress=False, return_trajectory=return_trajectory,
                               check_every=1, adapt_steps=adapt_steps, target_accept=target_accept,
                               stream=stream, watch=watch)
            out = dict(x=res.x, energy=res.energy, trajectory=res.trajectory, acceptance=res.acceptance,
                       step_size=res.step_size)
        else:
            s_used = default_noise_std(a_) if s_ is None else s_
            x = inp["x"].clone(memory_format=torch.contiguous_format)
            traj = [x.clone()] if return_trajectory else None
            # seed=0, offset=0: unused, every draw comes from the stream
            _ula_loop(op, energy, x, n_steps, a_, s_used, seed=0, offset=0, ref_var=ref_var,
                      grad_clip=grad_clip, clamp=clamp, backend=backend, watch=watch, traj=traj, stream=stream)
            with torch.no_grad():
                u = _check_energy_output(op, energy(x), x).detach()
            out = dict(x=x, energy=u, trajectory=torch.stack(traj) if traj is not None else None)
        out.update(first=watch.first, count=watch.count)
        return out

    return body


def _sample_graph_result(op, out: dict, n_steps: int, backend: str, mh: bool) -> SampleResult:
    """The host checks after a replay (the non-finite watch; the final energy for ULA), then
    the SampleResult."""
    watch = _NonFiniteWatch(op, out["x"].device, 1)
    watch.first, watch.count = out["first"], out["count"]
    watch.check()
    if not mh:
        _check_final_energy(op, out["energy"], n_steps)
    return SampleResult(x=out["x"], energy=out["energy"], trajectory=out["trajectory"], n_steps=n_steps,
                        backend=backend, acceptance=out.get("acceptance"), step_size=out.get("step_size"))


def _scaled_step(a, log_scale: torch.Tensor, n: int) -> torch.Tensor:
    """a * exp(log_scale) as a per-walker float64 tensor [n] on log_scale's device."""
    scale = torch.exp(log_scale)
    if torch.is_tensor(a):
        return a.to(torch.float64) * scale
    return (a * scale).expand(n).contiguous()


def _sample_mala(energy, x0, n_steps, a, noise_std, *, seed, offset, ref_var, backend, progress, return_trajectory,
                 check_every, adapt_steps, target_accept, stream=None, watch=None) -> SampleResult:
    """The MALA branch of sample(); arguments already validated. stream, watch: None (eager),
    or under CUDA-graph capture a fastlangevin.graphs.DeviceStream that makes the noise and the
    uniforms (seed and offset then unused), and a host=False watch that the caller checks after
    the replay."""
    from .resampling import uniforms
    from .weights import jarzynski_increment

    op = "sample"
    mask64 = (1 << 64) - 1
    x = x0.detach().clone(memory_format=torch.contiguous_format)
    n, dev = x.shape[0], x.device
    u_x, g_x = energy_and_grad(energy, x, op)
    if watch is None:
        watch = _NonFiniteWatch(op, dev, check_every)
    watch.update(-1, u_x, g_x)
    traj = [x.clone()] if return_trajectory else None
    # Adaptation keeps log a as a 0-d device tensor (no host sync); a per-walker step tensor
    # is scaled by the same factor.
    log_scale = torch.zeros((), dtype=torch.float64, device=dev)
    accepted = torch.zeros((), dtype=torch.float64, device=dev)
    steps = progress_range(n_steps, "sample (MALA)", progress)
    a_k, s_k = a, noise_std
    for k in steps:
        if adapt_steps and k <= adapt_steps:
            a_k = _scaled_step(a, log_scale, n)
            s_k = None
        s_used = default_noise_std(a_k) if s_k is None else s_k
        y = langevin_step(x, g_x, a_k, s_used, seed=seed, offset=(offset + k) & mask64, ref_var=ref_var,
                          noise=None if stream is None else stream.normals(x, k), backend=backend)
        u_y, g_y = energy_and_grad(energy, y, op)
        log_r = jarzynski_increment(x, g_x, u_x, y, g_y, u_y, a_k, s_used, ref_var=ref_var, backend=backend)
        if stream is None:
            u = uniforms(n, seed=seed, offset=MH_STREAM | ((offset + k) & (MH_STREAM - 1)), device=dev)
        else:
            u = stream.mh_uniforms(n, k)
        # A proposal with U = +inf has ratio -inf and one with a NaN energy or gradient a NaN ratio:
        # both are rejected, as in the fused MALA chains; the watch looks at the chain's states.
        acc = torch.log(u) < log_r
        shape = (n,) + (1,) * (x.dim() - 1)
        x = torch.where(acc.view(shape), y, x)
        g_x = torch.where(acc.view(shape), g_y, g_x)
        u_x = torch.where(acc, u_y, u_x)
        watch.update(k, u_x, g_x)
        rate = acc.to(torch.float64).mean()
        if k < adapt_steps:
            log_scale = log_scale + 0.1 * (rate - target_accept)
        else:
            accepted = accepted + rate
        if traj is not None:
            traj.append(x.clone())
    if stream is None:
        watch.check()
    counted = n_steps - adapt_steps
    acceptance = accepted / counted if counted > 0 else torch.full((), float("nan"), dtype=torch.float64, device=dev)
    if adapt_steps:
        a_k = _scaled_step(a, log_scale, n)
    return SampleResult(x=x, energy=u_x, trajectory=torch.stack(traj) if traj is not None else None, n_steps=n_steps,
                        backend=backend, acceptance=acceptance, step_size=a_k)


def _fused_chain(energy, x0, a, s, ref_var, grad_clip, clamp, backend, return_trajectory, progress, adapt_steps,
                 n_steps):
    """The energy's fused chain runner (fastlangevin.chain.fused_chain_of) when sample() can run
    the fused chain, else None."""
    from .chain import CHAIN_BACKENDS, fused_chain_of

    if (backend not in CHAIN_BACKENDS or torch.is_tensor(a) or torch.is_tensor(s) or ref_var is not None
            or grad_clip is not None or clamp is not None or return_trajectory or progress or adapt_steps
            or n_steps == 0 or x0.dim() != 2 or x0.dtype not in (torch.float32, torch.float64)):
        return None
    return fused_chain_of(energy, x0, backend)


def _raise_if_non_finite(op: str, u: torch.Tensor, g: torch.Tensor, where: str) -> None:
    bad = _non_finite_rows(u, g)
    if bool(bad.any()):
        raise NonFiniteError(f"{op}: energy or gradient became non-finite {where} for {int(bad.sum())} walker(s); "
                             "lower the step size or check the energy")


def _sample_chain(op, energy, x0, n_steps, a, s, run, *, seed, offset, backend, mh, loop) -> SampleResult:
    """sample() as one fused chain (arguments validated, run from _fused_chain). loop: the same
    call on the step-by-step path. A chain that ends non-finite is run again by ``loop``
    (sample() is a pure function of its arguments, so it replays the same states), whose watch
    raises NonFiniteError naming the first bad step, as the step-by-step path does."""
    x = x0.detach()
    u, g = energy_and_grad(energy, x, op)
    _raise_if_non_finite(op, u, g, "in the initial state (x0)")
    res = run(x, n_steps, a, s, energy=u, grad=g, seed=seed, offset=offset, mode="mh" if mh else "ula",
              backend=backend)
    bad = _non_finite_rows(res.energy, res.grad)
    if bool(bad.any()):
        loop()  # raises at the first bad step; it stays finite only where rounding differs at the edge
        raise NonFiniteError(f"{op}: energy or gradient non-finite after step {n_steps - 1} of the fused chain for "
                             f"{int(bad.sum())} walker(s) (the step-by-step replay stayed finite); lower the "
                             "step size or check the energy")
    acceptance = None
    if mh:
        acceptance = res.accepted.sum().to(torch.float64) / (x.shape[0] * n_steps)
    return SampleResult(x=res.x, energy=res.energy, trajectory=None, n_steps=n_steps, backend=backend,
                        acceptance=acceptance, step_size=a if mh else None)
