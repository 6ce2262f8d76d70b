"""Walkers: the stateful, weighted Langevin sampler the trainers call.

One step of Walkers is Carbone et al.'s weighted ULA (NeurIPS 2023, Algorithm 1), with the
(U, grad U) evaluation cached so that a step costs ONE energy+gradient evaluation:

    X_{k+1} = X_k - a grad U_k(X_k) + s xi_k               (drift cached from the last step)
    U_{k+1}(X_{k+1}), grad U_{k+1}(X_{k+1})                 (the energy's current parameters)
    A_{k+1} = A_k + alpha_k(X_k, X_{k+1}) - alpha_{k+1}(X_{k+1}, X_k)
    alpha(x, y) = U(x) + (a / s^2)(y - x).g(x) + (a^2 / (2 s^2)) |g(x)|^2

and, when ESS < ess_threshold * N, SMC resampling: ancestors drawn from softmax(A), walkers
gathered with their cached energy and gradient, A reset to 0 and log Z carried forward.
Everything after the energy evaluation is decided on the device: no .item(), no Python branch
on a tensor value, so a GPU loop never waits on the host (except every `check_every` steps, to
report non-finite energies). One exception by design: step(n) on an energy with a fused chain
(see step()) with resampling on reads, once per chunk of CHAIN_CHUNK steps, the first step
whose ESS fell below the threshold, to know how far to replay; that is one host sync per 32
steps instead of none. cuda_graph=True, or an energy without a fused chain, never syncs there.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch

from . import _backend
from . import resampling as _resample
from . import weights as _weights
from .ops import (
    check_count,
    check_positive,
    check_ref_var,
    check_u64,
    default_noise_std,
    langevin_step,
)
from .reference import MH_STREAM, RESAMPLE_STREAM
from .sampler import NonFiniteError, _NonFiniteWatch, check_energy_and_walkers, check_every_of, energy_and_grad

# Offsets of the Philox stream (defined in fastlangevin.reference): step k's noise uses offset
# k; the uniforms of the resampling after step k use offset RESAMPLE_STREAM | k, and MALA's
# accept/reject uniforms MH_STREAM | k, so no two draws of one Walkers (or one sample() call)
# ever share a counter.

SCHEMES = ("multinomial", "systematic", "stratified", "residual")


def _own(v):
    """A private copy of a per-walker tensor (floats pass through)."""
    return v.clone() if torch.is_tensor(v) else v

# Steps per speculative chunk of the fused path when resampling may trigger: the log-weights
# of every step of a chunk are kept ([CHAIN_CHUNK, N] float64, 2 MB at N = 10^4), and a trigger
# at step t costs a replay of t + 1 steps.
CHAIN_CHUNK = 32


class Walkers:
    """N Langevin walkers x [N, ...] on ``energy`` ([N, ...] -> [N], lower is likelier), with
    Jarzynski log-weights and SMC resampling.

    Args:
        energy: function or nn.Module; its parameters may change between steps (training):
            each step evaluates it at the new points with its *current* parameters.
        x0: [N, ...] initial walkers (copied).
        step_size: a > 0, float or per-walker [N] tensor (per slot: not moved by resampling).
        noise_std: s, default sqrt(2 a) (exact ULA). The weights use the true kernel variance
            s^2, so a decoupled s (the papers' code) still gives correct weights.
        seed: Philox seed; step k of this object uses offset k (state_dict() keeps k).
        weights: track log-weights (False: plain ULA, no reduction, no resampling).
        resample: scheme for the automatic resampling ("multinomial", "systematic",
            "stratified", "residual") or None for never.
        ess_threshold: resample when ESS < ess_threshold * N.
        ref_var: Gaussian reference term x / ref_var in the drift and |x|^2 / (2 ref_var) in U.
        check_every: host check for non-finite energies every this many steps (1 on CPU, 100 on
            GPU by default).
        cuda_graph: run each ``step(n)`` as the replay of one CUDA graph of the n-step loop
            (energy forward and backward, step, weights, ESS-triggered resampling), captured at
            the first call with that n (after one eager warm-up run of the loop on a side
            stream) and kept on the object (see step()). CUDA tensors only: a CPU x0 raises
            ValueError rather than silently running eagerly.

    Attributes: x [N, ...], energy [N] and grad [N, ...] (of ``energy`` itself: the ref_var term
    is added where the step and the weights use them, not stored), log_weights [N] (float64), weights [N],
    ess (0-d), log_z (0-d, estimate of log Z_theta - log Z_theta0 carried across resampling),
    n_resampled (0-d int64), steps (int), per_walker (dict of [N, ...] tensors that resampling
    moves with the walkers).
    """

    def __init__(
        self,
        energy: Callable[[torch.Tensor], torch.Tensor],
        x0: torch.Tensor,
        step_size: Union[float, torch.Tensor],
        noise_std: Union[None, float, torch.Tensor] = None,
        *,
        seed: int = 0,
        weights: bool = True,
        resample: Optional[str] = "systematic",
        ess_threshold: float = 0.5,
        ref_var: Optional[float] = None,
        backend: str = "auto",
        check_every: Optional[int] = None,
        cuda_graph: bool = False,
    ):
        op = "Walkers"
        check_energy_and_walkers(op, energy, x0)
        from .graphs import GraphCache, check_cuda_graph

        self.cuda_graph = check_cuda_graph(op, cuda_graph, x0)
        self._graphs = GraphCache(size=2)
        # per-walker tensors are copied, as x0 is: a later in-place write by the caller must not
        # change a running chain's step (nor skip the checks made here)
        self.step_size = _own(check_positive(op, "step_size", step_size, x0))
        if noise_std is None:
            self.noise_std = default_noise_std(self.step_size)
        else:
            self.noise_std = _own(check_positive(op, "noise_std", noise_std, x0, allow_zero=not weights))
        if resample is not None and resample not in SCHEMES:
            raise ValueError(f"{op}: resample must be one of {SCHEMES} or None, got {resample!r}")
        if isinstance(ess_threshold, bool) or not (isinstance(ess_threshold, (int, float)) and 0.0 <= ess_threshold <= 1.0):
            raise ValueError(f"{op}: ess_threshold must be in [0, 1], got {ess_threshold!r}")
        check_ref_var(op, ref_var)
        self.seed = check_u64(op, "seed", seed)
        self.energy_fn = energy
        self.use_weights = bool(weights)
        self.scheme = resample
        self.ess_threshold = float(ess_threshold)
        self.ref_var = ref_var
        self.backend = _backend.resolve(op, backend, x0.device)
        self.check_every = check_every_of(op, check_every, x0.device)
        self.steps = 0

        self.x = x0.detach().clone(memory_format=torch.contiguous_format)
        self.energy, self.grad = energy_and_grad(energy, self.x, op)
        n, dev = self.x.shape[0], self.x.device
        self.log_weights = torch.zeros(n, dtype=torch.float64, device=dev)
        self._log_z0 = torch.zeros((), dtype=torch.float64, device=dev)  # carried over resampling
        self.n_resampled = torch.zeros((), dtype=torch.int64, device=dev)
        self._identity = torch.arange(n, device=dev)
        self.per_walker: dict[str, torch.Tensor] = {}
        self._watch = _NonFiniteWatch(op, dev, self.check_every)
        self._watch.update(-1, self.energy, self.grad)  # step -1: the initial state

    # ------------------------------------------------------------------ derived quantities
    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def weights(self) -> torch.Tensor:
        """Normalised weights softmax(log_weights), float64 [N]."""
        return torch.softmax(self.log_weights, dim=0)

    @property
    def ess(self) -> torch.Tensor:
        """Effective sample size exp(2 logsumexp(A) - logsumexp(2A)), 0-d float64."""
        return _resample.ess(self.log_weights)

    @property
    def log_z(self) -> torch.Tensor:
        """Estimate of log Z_theta - log Z_theta0: the carried offset + log mean exp(A)."""
        return self._log_z0 + torch.logsumexp(self.log_weights, dim=0) - math.log(self.n)

    def expectation(self, values: torch.Tensor) -> torch.Tensor:
        """Weighted mean sum_i w_i values_i over walkers (values: [N, ...])."""
        w = self.weights.to(values.dtype)
        return torch.tensordot(w, values, dims=([0], [0]))

    # ------------------------------------------------------------------ moves
    def step(self, n_steps: int = 1) -> "Walkers":
        """n_steps weighted Langevin steps (see the module docstring), resampling on the device
        whenever ESS < ess_threshold * N. Returns self.

        With a GaussianMixture or Gaussian energy (``chain_params()``), a DoubleWell
        (``double_well_chain_params()``) or a small MLPEnergy
        (``mlp_chain_params()``: depth <= 4, hidden <= 128), float step_size and noise_std, no
        ref_var, [N, d] walkers and a backend with the kernel (mixture_chain, double_well_chain:
        cpu, reference, triton, cuda up to d = 512; mlp_chain: cpu, reference, triton, and cuda
        through the Triton kernel where triton is installed), the n steps run as fused chains
        (fastlangevin.chain.fused_chain_of: mixture_chain / double_well_chain / mlp_chain), same
        noise, same results to float tolerance; anything else runs the step loop. Resampling is handled by speculate-and-replay: a chunk of up to CHAIN_CHUNK
        steps runs with the log-weights of every step recorded; if ESS falls below the threshold
        after step t of the chunk, the chunk is replayed from its start for t + 1 steps (the
        chain is deterministic), the walkers are resampled exactly as the loop would, and the
        next chunk starts there; finding t reads one value on the host per chunk (the only host
        sync of a step(n) on the fused path). A chunk that ends non-finite, seen where the host
        looks (every chunk on CPU, a chunk that crosses a multiple of check_every on a GPU), is
        replayed by the step loop from its start, which raises NonFiniteError at the first bad
        step and leaves the state there, as the loop does.

        With ``cuda_graph=True`` the n steps are the replay of one CUDA graph (fastlangevin.graphs),
        captured at the first step(n) with this n, this energy's parameter addresses and training
        flag, and the per_walker names, shapes and dtypes (the last two graphs are kept). Each call
        copies the state (x, grad, energy, log-weights, log Z offset, resampling count, the
        non-finite watch, per_walker) into the graph's buffers, sets the stream to (seed, steps)
        in device memory, replays and clones the new state out: the same Philox words as the
        loop, so the same walkers, weights and resampling decisions as eager mode (bit for bit
        on the triton and reference backends, to float32 rounding of the normals on the cuda
        backend). The host looks at the non-finite watch after a replay that crosses a multiple
        of check_every steps, as the loop does. The fused chains are not used."""
        n_steps = check_count("Walkers.step", "n_steps", n_steps)
        if n_steps and self.cuda_graph:
            return self._step_graph(n_steps)
        if n_steps and self._fused_params() is not None:
            return self._step_fused(n_steps)
        self._advance(n_steps)
        return self

    def _advance(self, n_steps: int, stream=None) -> None:
        """The step loop. stream: None (eager: the ops draw at the int offsets steps + j and
        RESAMPLE_STREAM | (steps + j)), or under CUDA-graph capture a
        fastlangevin.graphs.DeviceStream holding base = steps in device memory, which makes the
        same draws from there (self.steps still counts, for the eager arguments it ignores)."""
        noisy = torch.is_tensor(self.noise_std) or self.noise_std != 0.0
        for j in range(n_steps):
            k = self.steps
            x_new = langevin_step(
                self.x, self.grad, self.step_size, self.noise_std, seed=self.seed, offset=k, ref_var=self.ref_var,
                noise=stream.normals(self.x, j) if stream is not None and noisy else None, backend=self.backend,
            )
            u_new, g_new = energy_and_grad(self.energy_fn, x_new, "Walkers.step")
            lw_new = self.log_weights
            if self.use_weights:
                inc = _weights.jarzynski_increment(
                    self.x, self.grad, self.energy, x_new, g_new, u_new, self.step_size, self.noise_std,
                    ref_var=self.ref_var, backend=self.backend,
                )
                lw_new = self.log_weights + inc
            # the watch may raise: the state is replaced only after it, all of it together, so a
            # NonFiniteError leaves the walkers (and state_dict()) at the last good step
            self._watch.update(k if stream is None else stream.offset(j), u_new, g_new,
                               lw_new if self.use_weights else None)
            self.x, self.grad, self.energy, self.log_weights = x_new, g_new, u_new, lw_new
            self.steps = k + 1
            if self.use_weights and self.scheme is not None:
                self._resample_if(self.ess < self.ess_threshold * self.n, self.scheme, RESAMPLE_STREAM | k,
                                  uniforms=None if stream is None else stream.resample_uniforms(self.n, j))

    # The state a captured step(n) reads and writes (attribute names; per_walker and the
    # watch's first/count are handled beside them).
    _GRAPH_STATE = ("x", "grad", "energy", "log_weights", "_log_z0", "n_resampled")

    def _graph_key(self, n_steps: int) -> tuple:
        from .graphs import energy_key

        def spec(v):
            return (tuple(v.shape), v.dtype, v.data_ptr()) if torch.is_tensor(v) else v

        pw = tuple((k, tuple(v.shape), v.dtype, v.device) for k, v in self.per_walker.items())
        return (n_steps, id(self.energy_fn), energy_key(self.energy_fn), pw, spec(self.step_size),
                spec(self.noise_std), self.scheme, self.use_weights, self.ess_threshold, self.ref_var, self.backend)

    def _graph_values(self) -> dict:
        vals = {name: getattr(self, name) for name in self._GRAPH_STATE}
        vals.update(watch_first=self._watch.first, watch_count=self._watch.count)
        vals.update({"pw:" + k: v for k, v in self.per_walker.items()})
        return vals

    def _graph_body(self, n_steps: int, stream):
        """The function a captured step(n_steps) runs: the eager loop (_advance) on the graph's
        input buffers, with the object's attributes pointed at them for the duration and
        restored after, returning the new state. It writes no input in place (the loop is
        functional: every step makes new tensors), as the warm-up requires."""
        from .sampler import _NonFiniteWatch

        def body(inp: dict) -> dict:
            saved = {name: getattr(self, name) for name in self._GRAPH_STATE}
            saved_steps, saved_watch, saved_pw = self.steps, self._watch, self.per_walker
            try:
                for name in self._GRAPH_STATE:
                    setattr(self, name, inp[name])
                self.per_walker = {k[3:]: v for k, v in inp.items() if k.startswith("pw:")}
                self._watch = _NonFiniteWatch(saved_watch.op, self.x.device, self.check_every, host=False)
                self._watch.first, self._watch.count = inp["watch_first"], inp["watch_count"]
                self._advance(n_steps, stream)
                out = self._graph_values()
            finally:
                for name, v in saved.items():
                    setattr(self, name, v)
                self.steps, self._watch, self.per_walker = saved_steps, saved_watch, saved_pw
            return out

        return body

    def _step_graph(self, n_steps: int) -> "Walkers":
        """step(n_steps) as one CUDA-graph replay (see step())."""
        from .graphs import CapturedLoop, DeviceStream, noise_backend_for

        for k, v in self.per_walker.items():
            if v.device != self.x.device:
                raise ValueError(f"Walkers.step: per_walker[{k!r}] is on {v.device}, the walkers on {self.x.device}; "
                                 "a CUDA graph moves per-walker state only on the walkers' device")
        key = self._graph_key(n_steps)
        loop = self._graphs.get(self.energy_fn, key)
        values = self._graph_values()
        if loop is None:
            stream = DeviceStream(self.x.device, noise_backend_for(self.backend))
            inputs = {k: v.clone() for k, v in values.items()}
            loop = CapturedLoop(self._graph_body(n_steps, stream), inputs, stream)
            self._graphs.put(self.energy_fn, key, loop)
        out = loop.run(values, self.seed, self.steps)
        self._set_graph_state(out, n_steps)
        return self

    def _set_graph_state(self, out: dict, n_steps: int) -> None:
        """Take the state a replay (or an eager run of the body) returned; advance the step
        count; look at the non-finite watch when the loop would have looked in these steps."""
        for name in self._GRAPH_STATE:
            setattr(self, name, out[name])
        self._watch.first, self._watch.count = out["watch_first"], out["watch_count"]
        self.per_walker = {k[3:]: v for k, v in out.items() if k.startswith("pw:")}
        before, self.steps = self.steps, self.steps + n_steps
        if self.steps // self.check_every != before // self.check_every:
            self._watch.check()

    def _fused_params(self):
        """The energy's fused chain runner (fastlangevin.chain.fused_chain_of) when step() can
        run fused chains, else None."""
        from .chain import CHAIN_BACKENDS, fused_chain_of

        if (self.backend not in CHAIN_BACKENDS or torch.is_tensor(self.step_size) or torch.is_tensor(self.noise_std)
                or self.ref_var is not None or self.x.dim() != 2
                or self.x.dtype not in (torch.float32, torch.float64)
                or (self.use_weights and self.noise_std == 0.0)):
            return None
        return fused_chain_of(self.energy_fn, self.x, self.backend)

    def _step_fused(self, n_steps: int) -> "Walkers":
        """step(n_steps) as fused chains (see step())."""
        chain = self._fused_params()
        resampling = self.use_weights and self.scheme is not None
        mode = "weights" if self.use_weights else "ula"
        left = n_steps
        while left:
            m = min(left, CHAIN_CHUNK) if resampling else left
            run = dict(seed=self.seed, offset=self.steps, mode=mode, backend=self.backend, energy=self.energy,
                       grad=self.grad, log_w=self.log_weights if self.use_weights else None)
            res = chain(self.x, m, self.step_size, self.noise_std, return_log_w_steps=resampling, **run)
            done, trigger = m, False
            if resampling:
                ess = _resample.ess_rows(res.log_w_steps)  # [m]: the ESS after each step of the chunk
                hits = torch.nonzero(ess < self.ess_threshold * self.n)
                if hits.numel():
                    done, trigger = int(hits[0, 0]) + 1, True
                    if done < m:  # replay the chunk up to the triggering step
                        res = chain(self.x, done, self.step_size, self.noise_std, **run)
            bad = self._watch.bad(res.energy, res.grad, res.log_w if self.use_weights else None)
            looks = self.x.device.type == "cpu" or (self.steps + done) // self.check_every != self.steps // self.check_every
            if looks and bool(bad.any()):
                # A non-finite state somewhere in this chunk: replay it with the step loop from the
                # chunk's start (the same draws), so that the error names the first bad step and
                # the state is left where the loop leaves it, as on the step-by-step path.
                self._advance(done)
                left -= done
                continue
            self.x, self.energy, self.grad = res.x, res.energy, res.grad
            if self.use_weights:
                self.log_weights = res.log_w
            self.steps += done
            left -= done
            self._watch.update(self.steps - 1, self.energy, self.grad, bad=bad)
            if trigger:
                self._resample_if(torch.ones((), dtype=torch.bool, device=self.x.device), self.scheme,
                                  RESAMPLE_STREAM | (self.steps - 1))
        return self

    def resample(self, scheme: Optional[str] = None, *, when: Optional[torch.Tensor] = None) -> "Walkers":
        """Resample now (scheme defaults to the constructor's, or systematic).

        when: optional 0-d bool tensor on the walkers' device; resample only where it is true,
        decided on the device without a host sync. Trainers use it for their own triggers, e.g.
        the official GMM code's lagged one: ``do = w.ess < n / (1 + c)`` read *before* a step,
        then ``w.step(); w.resample("multinomial", when=do)``. Without it: unconditionally."""
        scheme = scheme or self.scheme or "systematic"
        if scheme not in SCHEMES:
            raise ValueError(f"Walkers.resample: scheme must be one of {SCHEMES}, got {scheme!r}")
        if when is None:
            when = torch.ones((), dtype=torch.bool, device=self.x.device)
        elif not (torch.is_tensor(when) and when.dtype == torch.bool and when.dim() == 0):
            raise TypeError(f"Walkers.resample: when must be a 0-d bool tensor, got {when!r}")
        elif when.device != self.x.device:
            raise ValueError(f"Walkers.resample: when is on {when.device}, the walkers on {self.x.device}")
        self._resample_if(when, scheme, RESAMPLE_STREAM | (1 << 62) | self.steps)
        return self

    def _resample_if(self, do: torch.Tensor, scheme: str, offset: int, uniforms: Optional[torch.Tensor] = None) -> None:
        """Resample where the 0-d bool `do` is true. On a GPU the flag is never read on the host:
        the ancestors are the identity where it is false (a gather that copies x and grad every
        step, the price of a loop without syncs). On CPU tensors reading it costs nothing, so
        the no-op resampling is skipped; the results are the same bits either way. uniforms:
        those of stream (seed, offset), made by the caller (a CUDA-graph capture), or None."""
        if self.x.device.type == "cpu" and not bool(do):
            return
        anc = _resample.resample(self.log_weights, scheme, seed=self.seed, offset=offset, uniforms=uniforms,
                                 backend=self.backend)
        # On a GPU resample() answers NaN or +inf log-weights (or all -inf) with ancestors -1
        # instead of reading the values on the host (on CPU it raises). Those walkers keep their
        # places: a -1 in the gather would be a device-side assert that kills the CUDA context.
        # The non-finite watch sees the log-weights every step and names the step at its next
        # host check.
        anc = torch.where(do & (anc >= 0), anc, self._identity)
        self.gather(anc)
        lse = torch.logsumexp(self.log_weights, dim=0)
        self._log_z0 = torch.where(do, self._log_z0 + lse - math.log(self.n), self._log_z0)
        self.log_weights = torch.where(do, torch.zeros_like(self.log_weights), self.log_weights)
        self.n_resampled = self.n_resampled + do.to(torch.int64)

    def gather(self, ancestors: torch.Tensor) -> None:
        """Move walkers to their ancestors' states: x, grad, energy and every tensor in
        ``self.per_walker`` (the trainer's own per-walker state, e.g. labels or chain ages,
        each [N, ...]) together. ancestors: int64 [N], each in [0, N)."""
        for k, v in self.per_walker.items():
            if not torch.is_tensor(v) or v.dim() < 1 or v.shape[0] != self.n:
                got = list(v.shape) if torch.is_tensor(v) else type(v).__name__
                raise ValueError(f"Walkers.gather: per_walker[{k!r}] must be a tensor [N = {self.n}, ...], got {got}")
        self.x = self.x.index_select(0, ancestors)
        self.grad = self.grad.index_select(0, ancestors)
        self.energy = self.energy.index_select(0, ancestors)
        for k, v in self.per_walker.items():
            self.per_walker[k] = v.index_select(0, ancestors.to(v.device))

    def refresh(self) -> None:
        """Re-evaluate (U, grad U) at the current walkers with the energy's current parameters
        without moving them, adding the energy change to the log-weights (the Jarzynski
        increment of a pure parameter change: A += U_old(x) - U_new(x))."""
        u_new, g_new = energy_and_grad(self.energy_fn, self.x, "Walkers.refresh")
        if self.use_weights:
            self.log_weights = self.log_weights + (self.energy - u_new).to(torch.float64)
        self.energy, self.grad = u_new, g_new

    def check(self) -> None:
        """Raise NonFiniteError now if any energy or gradient so far was NaN/inf."""
        self._watch.check()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to continue bit for bit: walkers, cache, weights, log Z offset,
        counters and the RNG position (the step count is the stream offset)."""
        return {
            "x": self.x, "grad": self.grad, "energy": self.energy, "log_weights": self.log_weights,
            "log_z0": self._log_z0, "n_resampled": self.n_resampled, "steps": self.steps, "seed": self.seed,
            "per_walker": dict(self.per_walker),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict(): x, grad and energy must have this object's shapes and dtype,
        each per_walker tensor N rows (the walkers were built for them: a float64 state is not
        silently taken into float32 walkers, which could not resume bit for bit)."""
        op = "Walkers.load_state_dict"
        missing = [k for k in ("x", "grad", "energy", "log_weights", "log_z0", "n_resampled", "steps", "seed")
                   if k not in state]
        if missing:
            raise KeyError(f"{op}: the state lacks {missing} (is it a Walkers.state_dict()?)")
        for k in ("x", "grad", "energy", "log_weights"):
            if not torch.is_tensor(state[k]):
                raise TypeError(f"{op}: {k} must be a tensor, got {type(state[k]).__name__}")
            if state[k].shape != getattr(self, k).shape:
                raise ValueError(f"{op}: {k} has shape {list(state[k].shape)}, "
                                 f"expected {list(getattr(self, k).shape)}")
        for k in ("x", "grad", "energy"):
            if state[k].dtype != getattr(self, k).dtype:
                raise TypeError(f"{op}: {k} is {state[k].dtype}, these walkers are {getattr(self, k).dtype}")
        for k, v in state.get("per_walker", {}).items():
            if not torch.is_tensor(v) or v.dim() < 1 or v.shape[0] != self.n:
                got = list(v.shape) if torch.is_tensor(v) else type(v).__name__
                raise ValueError(f"{op}: per_walker[{k!r}] must be a tensor [N = {self.n}, ...], got {got}")
        dev = self.x.device
        self.x = state["x"].to(dev).clone()
        self.grad = state["grad"].to(dev).clone()
        self.energy = state["energy"].to(dev).clone()
        self.log_weights = state["log_weights"].to(dev, torch.float64).clone()
        self._log_z0 = state["log_z0"].to(dev, torch.float64).clone()
        self.n_resampled = state["n_resampled"].to(dev).clone()
        self.steps = int(state["steps"])
        self.seed = int(state["seed"])
        self.per_walker = {k: v.to(dev).clone() for k, v in state.get("per_walker", {}).items()}


__all__ = ["Walkers", "NonFiniteError", "SCHEMES", "RESAMPLE_STREAM", "MH_STREAM"]
