"""Benchmark of whole Langevin chains on Carbone et al.'s GMM (../shared/PAPERS.md section 1.5:
d = 50, two unit-variance modes at -10 e1 and 6 e1 with masses 1/4 and 3/4, 10^4 walkers,
h = 0.1, noise sqrt(2h)), 1000 ULA steps, float32, side by side in one process:

* ``eager``     the papers' code: per step, autograd through U(x) = -log sum_i exp(-|x - a_i|^2 / 2 - z_i)
                and x - h grad + sqrt(2h) torch.randn_like(x) (GMM_code/GMM.py does this in float64
                with torch.autograd; here float32 like every other bench).
* ``compile``   torch.compile of that eager step (bench.baselines; compile time and graph
                breaks in the note; not compiled in --quick).
* ``torchebm``  TorchEBM 0.8.9's LangevinDynamics on the same energy, step 0.1, noise_scale 1
                (= noise sqrt(2h); mapping in bench.baselines); n/a without torchebm.
* ``sample``    fastlangevin.sample() step by step: closed-form grads
                (GaussianMixture.energy_and_grad) and one fused langevin_step per step.
* ``chain``     fastlangevin.sample() on the GaussianMixture itself: the whole chain in one
                fastlangevin.chain.mixture_chain call (the device's backend).
* ``chain-mala`` the same with mh=True (MALA inside the chain).

Every method runs the full chain per call; vs_eager = eager time / method time.

    python -m bench.bench_chain [--quick] [--device cpu] [--sizes 10000x50x1000,...] [--out-json PATH]
"""
from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

try:  # run as `python -m bench.bench_chain` / imported as bench.bench_chain
    from . import common
    from .baselines import chain_baselines
    from .bench_langevin import _Candidate, _measure_interleaved
except ImportError:  # run as a file: `python bench/bench_chain.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench import common
    from bench.baselines import chain_baselines
    from bench.bench_langevin import _Candidate, _measure_interleaved

import fastlangevin
from fastlangevin.chain import StepByStep
from fastlangevin.energies import GaussianMixture

NAME = "chain"

STEP_SIZE = 0.1
NOISE_STD = math.sqrt(2.0 * STEP_SIZE)
DTYPE = torch.float32
# [N walkers, d, steps]
SIZES: list[tuple[int, int, int]] = [(10_000, 50, 1000)]
QUICK_SIZES: list[tuple[int, int, int]] = [(1000, 50, 20)]
# One chain per call: calibrate_iters' single call is the warm-up, then `repeats` timed calls.
FULL = dict(warmup=0, target_s=0.0, repeats=3, max_iters=1)
QUICK = dict(warmup=0, target_s=0.0, repeats=2, max_iters=1)

COLUMNS = [
    ("size", "N x d x steps"),
    ("method", "method"),
    ("time_s", "time (s)", ".3f"),
    ("ms_per_step", "ms/step", ".3f"),
    ("mwalker_steps_per_s", "M walker-steps/s", ".2f"),
    ("vs_eager", "x eager", ".1f"),
    ("spread_pct", "spread %", ".0f"),
    ("note", "note"),
]


def carbone_gmm(d: int, dtype=DTYPE) -> GaussianMixture:
    """The paper's teacher GMM (modes -10 e1 and 6 e1, masses 1/4 and 3/4, unit variance)."""
    means = torch.zeros(2, d, dtype=dtype)
    means[0, 0], means[1, 0] = -10.0, 6.0
    return GaussianMixture(means, torch.tensor([0.25, 0.75], dtype=dtype).log(), learnable=False)


def gmm_energy(x: torch.Tensor, a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The papers' energy written in torch ops: x [N, d], means a [K, d], z [K] (-log weights)
    -> U [N] = -logsumexp_i(-|x - a_i|^2 / 2 - z_i)."""
    return -torch.logsumexp(-0.5 * ((x[:, None, :] - a) ** 2).sum(-1) - z, dim=1)


def _row(size, method, c: Optional[_Candidate], note: str = "") -> dict[str, Any]:
    n, d, steps = size
    t = statistics.median(c.times) if c is not None and c.error is None and c.times else None
    notes = [note] + ([f"n/a: {c.error}"] if c is not None and c.error else [])
    return {
        "size": f"{n}x{d}x{steps}",
        "shape": [n, d],
        "n_steps": steps,
        "method": method,
        "time_s": t,
        "ms_per_step": None if t is None else 1e3 * t / steps,
        "mwalker_steps_per_s": None if t is None else n * steps / t / 1e6,
        "vs_eager": None,
        "repeat_times_s": list(c.times) if c is not None else [],
        "spread_pct": (100.0 * (max(c.times) - min(c.times)) / t) if t else None,
        "note": "; ".join(filter(None, notes)),
    }


def measure_rows(cands: list, size, dev: torch.device, verbose: bool) -> list[dict[str, Any]]:
    """Time the candidates interleaved and return their rows, each with its ratio to the first
    (the eager loop) as vs_eager; shared by the chain benchmarks."""
    _measure_interleaved(cands, dev)
    size_rows = [_row(size, c.method, c, c.note) for c in cands]
    eager_t = size_rows[0]["time_s"]
    for r in size_rows:
        if r["time_s"] and eager_t:
            r["vs_eager"] = eager_t / r["time_s"]
        if verbose:
            t = "-" if r["time_s"] is None else f"{r['time_s']:.3f} s"
            print(f"  {r['size']:>16}  {r['method']:<11} {t}  {r['note']}", file=sys.stderr, flush=True)
    return size_rows


def run(
    device: str = "cpu",
    quick: bool = False,
    *,
    sizes: Optional[Sequence[Sequence[int]]] = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Time the four methods at every (N, d, steps) size; returns the results payload (name, env,
    config, backends, not_run, rows: one per (size, method) with time_s per chain, ms_per_step,
    mwalker_steps_per_s, vs_eager, repeat_times_s, spread_pct, note). Methods are timed
    round-robin (bench_langevin._measure_interleaved)."""
    dev = torch.device(device)
    not_run: dict[str, str] = {}
    env = common.env_info(dev)
    sizes = [tuple(int(v) for v in s) for s in (sizes or (QUICK_SIZES if quick else SIZES))]
    settings = QUICK if quick else FULL
    rows: list[dict[str, Any]] = []
    gen = torch.Generator(device=dev).manual_seed(0)
    for size in sizes:
        n, d, steps = size
        gmm = carbone_gmm(d).to(dev)
        means, z = gmm.means, -gmm.log_weights
        # walkers start half in each mode, as the paper's Jarzynski walkers do
        x0 = torch.randn(n, d, dtype=DTYPE, device=dev, generator=gen)
        x0[: n // 2, 0] -= 10.0
        x0[n // 2:, 0] += 6.0
        seeds = iter(range(1, 1 << 30))
        cands = chain_baselines(lambda x: gmm_energy(x, means, z), x0, steps, STEP_SIZE, NOISE_STD, settings,
                                dev, quick=quick)
        cands += [
            _Candidate("sample", lambda: fastlangevin.sample(StepByStep(gmm), x0, steps, STEP_SIZE,
                                                              seed=next(seeds)), settings,
                       note="closed-form grad + fused step, per step"),
        ]
        # sample() routes the GaussianMixture to the fused chain of the device's backend (cpu:
        # C++; cuda: csrc/cuda/chain_cuda.cu for d <= 512, else Triton)
        cands += [
            _Candidate("chain", lambda: fastlangevin.sample(gmm, x0, steps, STEP_SIZE, seed=next(seeds)), settings,
                       note="one mixture_chain call"),
            _Candidate("chain-mala", lambda: fastlangevin.sample(gmm, x0, steps, STEP_SIZE, seed=next(seeds),
                                                                  mh=True), settings,
                       note="one mixture_chain call, MALA"),
        ]
        rows += measure_rows(cands, size, dev, verbose)
    return common.payload(NAME, dev, quick, env=env, sizes=sizes, settings=settings, rows=rows, not_run=not_run,
                          dtype=str(DTYPE), step_size=STEP_SIZE, noise_std=NOISE_STD,
                          energy="Carbone et al. GMM: modes -10 e1, 6 e1, masses 1/4, 3/4, unit variance")


def report(payload: dict[str, Any], file=None) -> str:
    """Print env info, the results table and the methods not run; returns the table text."""
    cfg = payload["config"]
    return common.print_report(payload, f"ULA chains on the paper's GMM, {cfg['dtype']}",
                               f"one call = the whole chain; x eager = eager time / method time; {cfg['timer']}",
                               COLUMNS, file=file)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.bench_main(
        argv, prog="python -m bench.bench_chain",
        description="Time whole Langevin chains on the paper's GMM: eager autograd loop vs sample() vs fused chain.",
        run=run, report=report, sizes_help="comma-separated NxDxSTEPS sizes, e.g. 10000x50x1000",
    )


if __name__ == "__main__":
    sys.exit(main())
