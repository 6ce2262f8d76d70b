"""sample(): the Langevin loop over any energy, on top of the fused step."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch

from . import _backend
from .ops import (
    check_clamp,
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
    """

    x: torch.Tensor
    energy: torch.Tensor
    trajectory: Optional[torch.Tensor]
    n_steps: int
    backend: str


def _check_energy_output(op: str, u, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(u):
        raise TypeError(f"{op}: energy must return a tensor of shape [{x.shape[0]}], got {type(u).__name__}")
    if u.shape != (x.shape[0],):
        raise ValueError(
            f"{op}: energy returned shape [{', '.join(map(str, u.shape))}], expected [{x.shape[0]}] (one energy per walker)"
        )
    if not u.is_floating_point():
        raise TypeError(f"{op}: energy returned dtype {u.dtype}, expected a floating dtype")
    return u


def energy_and_grad(energy: Energy, x: torch.Tensor, op: str = "sample") -> tuple[torch.Tensor, torch.Tensor]:
    """(U(x) [N], grad_x U(x) [N, ...]), both detached. Gradients flow to x only: parameters of
    an nn.Module energy get no .grad from this."""
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
        g = torch.zeros_like(x)
    return u.detach(), g.detach()


class _NonFiniteWatch:
    """Remembers, on the device, the first step at which some walker's energy or gradient was
    non-finite and how many walkers it hit; the host looks only every `every` steps, so a GPU
    loop does not synchronise on every step."""

    def __init__(self, op: str, device: torch.device, every: int):
        self.op, self.every = op, every
        self.first = torch.full((), -1, dtype=torch.int64, device=device)
        self.count = torch.zeros((), dtype=torch.int64, device=device)

    def update(self, step: int, u: torch.Tensor, g: torch.Tensor) -> None:
        bad = ~torch.isfinite(u) | ~torch.isfinite(g.reshape(g.shape[0], -1)).all(dim=1)
        n_bad = bad.sum()
        new = (self.first < 0) & (n_bad > 0)
        self.first = torch.where(new, step, self.first)
        self.count = torch.where(new, n_bad, self.count)
        if (step + 1) % self.every == 0:
            self.check()

    def check(self) -> None:
        first = int(self.first)
        if first >= 0:
            raise NonFiniteError(
                f"{self.op}: energy or gradient became non-finite at step {first} "
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
    """
    op = "sample"
    if not callable(energy):
        raise TypeError(f"{op}: energy must be callable (an nn.Module or a function), got {type(energy).__name__}")
    check_float_tensor(op, "x0", x0)
    if x0.dim() < 1 or x0.shape[0] == 0:
        raise ValueError(f"{op}: x0 must have shape [N, ...] with N >= 1, got [{', '.join(map(str, x0.shape))}]")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise ValueError(f"{op}: n_steps must be an int >= 0, got {n_steps!r}")
    a = check_positive(op, "step_size", step_size, x0)
    s = default_noise_std(a) if noise_std is None else check_positive(op, "noise_std", noise_std, x0, allow_zero=True)
    seed = check_u64(op, "seed", seed)
    offset = check_u64(op, "offset", offset)
    check_ref_var(op, ref_var)
    check_grad_clip(op, grad_clip)
    check_clamp(op, clamp)
    be = _backend.resolve(op, backend, x0.device)
    if check_every is None:
        check_every = 1 if x0.device.type == "cpu" else 100

    x = x0.detach().clone(memory_format=torch.contiguous_format)
    traj = [x.clone()] if return_trajectory else None
    watch = _NonFiniteWatch(op, x.device, check_every)
    steps = range(n_steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="sample", unit="step")
    for k in steps:
        u, g = energy_and_grad(energy, x, op)
        watch.update(k, u, g)
        langevin_step(
            x, g, a, s, seed=seed, offset=(offset + k) & ((1 << 64) - 1), ref_var=ref_var, grad_clip=grad_clip,
            clamp=clamp, out=x, backend=be,
        )
        if traj is not None:
            traj.append(x.clone())
    watch.check()
    with torch.no_grad():
        u = _check_energy_output(op, energy(x), x).detach()
    if not bool(torch.isfinite(u).all()):
        raise NonFiniteError(
            f"{op}: energy became non-finite at step {n_steps} (the final state) for {int((~torch.isfinite(u)).sum())} walker(s)"
        )
    return SampleResult(
        x=x, energy=u, trajectory=torch.stack(traj) if traj is not None else None, n_steps=n_steps, backend=be
    )
