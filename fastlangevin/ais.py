"""Annealed importance sampling with the Jarzynski-weighted Langevin kernel: log Z of an energy."""
from __future__ import annotations

import math
import numbers
from typing import Callable, Optional

import torch

from .ops import check_count, check_positive, check_u64, randn
from .sampler import _check_energy_output, progress_range
from .walkers import MH_STREAM, Walkers


class _Annealed:
    """U_beta(x) = beta U(x) + (1 - beta) |x|^2 / (2 base_std^2): N(0, base_std^2 I) at beta = 0,
    the target at beta = 1. beta is this object's parameter theta; Walkers sees it change."""

    def __init__(self, energy, base_std: float):
        self.energy, self.inv2v, self.beta = energy, 0.5 / base_std**2, 0.0

    def __call__(self, x):
        base = self.inv2v * (x * x).reshape(x.shape[0], -1).sum(dim=1)
        if self.beta == 0.0:
            return base
        # checked before the sum: an [N, 1] output would broadcast with base [N] to [N, N]
        u = _check_energy_output("log_partition", self.energy(x), x)
        return self.beta * u + (1.0 - self.beta) * base


def log_partition(
    energy: Callable[[torch.Tensor], torch.Tensor],
    dim,
    *,
    base_std: float = 1.0,
    n_walkers: int = 1024,
    n_steps: int = 1000,
    step_size: float = 0.01,
    schedule: str = "sigmoid",
    resample: Optional[str] = None,
    seed: int = 0,
    device="cpu",
    dtype=torch.float32,
    backend: str = "auto",
    progress: bool = False,
) -> tuple[float, float]:
    """(log Z estimate, standard error) of Z = int exp(-U(x)) dx for an energy on R^dim
    (``dim`` an int or a shape tuple for the event shape, e.g. (1, 8, 8)).

    Walkers start exactly from N(0, base_std^2 I) (log Z_0 = (d/2) log(2 pi base_std^2)) and
    anneal through U_beta = beta U + (1 - beta) |x|^2 / (2 base_std^2), one weighted ULA step per
    beta. The Jarzynski weights make the estimate unbiased in Z for any step size (the step
    size only changes its variance). ``schedule``: "linear" or "sigmoid" in beta (the sigmoid
    spends more steps near both ends, where the log-weights move fastest).

    Standard error by the delta method from the final weights, sqrt((N / ESS - 1) / N); with
    ``resample`` set this ignores the earlier resampling epochs and is optimistic.
    """
    op = "log_partition"
    try:
        shape = (dim,) if isinstance(dim, numbers.Integral) else tuple(dim)
    except TypeError:
        shape = ()
    if not shape or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1 for d in shape):
        raise ValueError(f"{op}: dim must be a positive int or a shape tuple, got {dim!r}")
    shape = tuple(int(d) for d in shape)
    n_walkers = check_count(op, "n_walkers", n_walkers, 1)
    n_steps = check_count(op, "n_steps", n_steps, 1)
    if schedule not in ("linear", "sigmoid"):
        raise ValueError(f"{op}: schedule must be 'linear' or 'sigmoid', got {schedule!r}")
    seed = check_u64(op, "seed", seed)
    x_probe = torch.empty(n_walkers, device=device)
    check_positive(op, "step_size", step_size, x_probe)
    check_positive(op, "base_std", base_std, x_probe)
    d = math.prod(shape)

    t = torch.linspace(0.0, 1.0, n_steps + 1, dtype=torch.float64)
    if schedule == "sigmoid":  # Grosse et al.'s sigmoid schedule, rescaled to [0, 1]
        s = torch.sigmoid(8.0 * (2.0 * t - 1.0))
        t = (s - s[0]) / (s[-1] - s[0])
    betas = t.tolist()

    annealed = _Annealed(energy, float(base_std))
    x0 = float(base_std) * randn((n_walkers, *shape), seed=seed, offset=MH_STREAM - 1, dtype=dtype, device=device)
    walkers = Walkers(annealed, x0, step_size, seed=seed, resample=resample, backend=backend)
    steps = progress_range(n_steps + 1, "AIS", progress, start=1)
    for k in steps:
        annealed.beta = betas[k]
        walkers.step(1)
    walkers.check()
    log_z0 = 0.5 * d * math.log(2.0 * math.pi * float(base_std) ** 2)
    log_z = float(walkers.log_z) + log_z0
    ess = float(walkers.ess)
    se = math.sqrt(max(n_walkers / ess - 1.0, 0.0) / n_walkers) if ess > 0 else float("inf")
    return log_z, se
