"""Benchmark of whole Langevin chains on a small MLP energy of 8x8-digits size: walkers [N, 64],
MLP 64-128-128-128-1 SiLU (fastlangevin.energies.MLPEnergy, the trainers' models.MLPEnergy at
its toy size), h = 0.01, noise sqrt(2h), float32, side by side in one process:

* ``eager``      the trainers' loop: per step, torch.autograd.grad of U(x).sum() through the
                 nn.Sequential, then x - h grad + sqrt(2h) torch.randn_like(x).
* ``compile``    torch.compile of that eager step (not compiled in --quick).
* ``torchebm``   TorchEBM 0.8.9's LangevinDynamics on the same MLPEnergy, noise_scale 1
                 (mapping in bench.baselines); n/a without torchebm.
* ``sample``     fastlangevin.sample() step by step: closed-form grads
                 (MLPEnergy.energy_and_grad: torch matmuls, no autograd) and one fused
                 langevin_step per step.
* ``chain``      fastlangevin.sample() on the MLPEnergy itself: the whole chain in one
                 fastlangevin.chain.mlp_chain call (the C++ kernel on the CPU, the Triton
                 kernel on CUDA tensors; not yet timed on a GPU).
* ``chain-mala`` the same with mh=True (MALA inside the chain).

Every method runs the full chain per call; vs_eager = eager time / method time. Run it with
OMP_NUM_THREADS=1 on a shared machine (bench/results record torch_threads and the load).

Sizes: 1024 x 64 (8x8 digits), 256 x 64 (a small negative batch) and 1024 x 2 (2-D toys),
all with the 128-wide 3-layer MLP.

What bounds the ratio: the chain is FLOP-bound. A step is 82k multiply-adds per walker
(forward 64x128 + 2 x 128x128 + the head, the same again backward to the input), 168 MFLOP for
1024 walkers. Each row reports its GFLOP/s and that rate as a share of the device's float32
matmul rate (torch.mm of 2048^2 matrices, measured in the same run: "% sgemm"), and the
report states the ceiling that follows: eager time x sgemm rate / FLOPs, the speed-up of a
method that ran every FLOP at the matmul rate. On the idle 2-core AMD EPYC (Zen 4) dev box
(bench/results/mlp_chain-cpu-24b3a92.json, both threads, 1024 x 64): sgemm 174 GFLOP/s, the
eager loop 67 (38%: what it loses is the elementwise passes, autograd and allocation), the
fused chain 144 (83%); the ceiling is 2.6x and the chain reaches 2.15x. At 256 x 64 the ceiling
is 3.2x and the chain 2.78x. The issue's 3x at digits size is above this CPU's ceiling.
On a 2-core Intel Xeon with two full-width AVX-512 FMA units
(bench/results/mlp_chain-cpu-2cf7f80-xeon-repeat*.json): sgemm 317 to 337 GFLOP/s, the chain's
AVX-512 clone 239 to 261 (74 to 77%), 2.5x to 2.6x eager against a 3.4x ceiling.

    python -m bench.bench_mlp_chain [--quick] [--device cpu] [--sizes 1024x64x100,...] [--out-json PATH]
"""
from __future__ import annotations

import math
import statistics
import time
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

try:  # run as `python -m bench.bench_mlp_chain` / imported as bench.bench_mlp_chain
    from . import common
    from .baselines import chain_baselines
    from .bench_chain import measure_rows
    from .bench_langevin import _Candidate
except ImportError:  # run as a file
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench import common
    from bench.baselines import chain_baselines
    from bench.bench_chain import measure_rows
    from bench.bench_langevin import _Candidate

import fastlangevin
from fastlangevin.chain import StepByStep
from fastlangevin.energies import MLPEnergy

NAME = "mlp_chain"

STEP_SIZE = 0.01
NOISE_STD = math.sqrt(2.0 * STEP_SIZE)
DTYPE = torch.float32
HIDDEN, DEPTH, ACT = 128, 3, "silu"
# [N walkers, d, steps]
SIZES: list[tuple[int, int, int]] = [(1024, 64, 100), (256, 64, 100), (1024, 2, 100)]
QUICK_SIZES: list[tuple[int, int, int]] = [(64, 64, 5)]
# One chain per call: calibrate_iters' single call is the warm-up, then `repeats` timed calls.
FULL = dict(warmup=0, target_s=0.0, repeats=5, max_iters=1)
QUICK = dict(warmup=0, target_s=0.0, repeats=2, max_iters=1)

COLUMNS = [
    ("size", "N x d x steps"),
    ("method", "method"),
    ("time_s", "time (s)", ".3f"),
    ("ms_per_step", "ms/step", ".3f"),
    ("mwalker_steps_per_s", "M walker-steps/s", ".3f"),
    ("vs_eager", "x eager", ".2f"),
    ("gflops", "GFLOP/s", ".0f"),
    ("pct_of_sgemm", "% sgemm", ".0f"),
    ("spread_pct", "spread %", ".0f"),
    ("note", "note"),
]


def flops_per_walker_step(d: int, hidden: int = HIDDEN, depth: int = DEPTH) -> int:
    """Multiply-add FLOPs of one energy + gradient evaluation: the forward pass (d x H, then
    H x H per further hidden layer, then the H -> 1 head) and the backward pass to the input
    (the same matrices transposed), 2 FLOPs per multiply-add; activations not counted."""
    macs = d * hidden + (depth - 1) * hidden * hidden + hidden
    return 2 * 2 * macs


def sgemm_gflops(dev: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """This device's float32 matmul rate, GFLOP/s: torch.mm of two [n, n] matrices (MKL /
    oneDNN on CPU, cuBLAS on GPU), median of `repeats` after a warm-up. The ceiling that any
    MLP energy evaluation, fused or not, can approach; measured in the same run as the chains."""
    a = torch.randn(n, n, device=dev, dtype=DTYPE)
    b = torch.randn(n, n, device=dev, dtype=DTYPE)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        common.sync(dev)
        t0 = time.perf_counter()
        a @ b
        common.sync(dev)
        times.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / statistics.median(times) / 1e9


def run(
    device: str = "cpu",
    quick: bool = False,
    *,
    sizes: Optional[Sequence[Sequence[int]]] = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Time the four methods at every (N, d, steps) size; returns the results payload (name, env,
    config, backends, not_run, rows as bench_chain's). Methods are timed round-robin."""
    dev = torch.device(device)
    not_run: dict[str, str] = {}
    # CUDA walkers: the fused chain is the Triton kernel (there is no CUDA C++ MLP kernel)
    fused = dev.type == "cpu" or fastlangevin.backends()["triton"] is True
    if not fused:
        not_run["chain"] = not_run["chain-mala"] = (f"no MLP chain kernel for {dev.type} tensors here (the Triton "
                                                    f"kernel needs triton: {fastlangevin.backends()['triton']})")
    env = common.env_info(dev)
    peak = sgemm_gflops(dev, n=512 if quick else 2048)
    sizes = [tuple(int(v) for v in s) for s in (sizes or (QUICK_SIZES if quick else SIZES))]
    settings = QUICK if quick else FULL
    rows: list[dict[str, Any]] = []
    gen = torch.Generator(device=dev).manual_seed(0)
    for size in sizes:
        n, d, steps = size
        torch.manual_seed(0)
        energy = MLPEnergy(d, hidden=HIDDEN, depth=DEPTH, act=ACT).to(device=dev, dtype=DTYPE)
        energy.requires_grad_(False)  # sampling only, as in a trainer's negative phase
        x0 = torch.rand(n, d, dtype=DTYPE, device=dev, generator=gen)  # digits live in [0, 1]
        seeds = iter(range(1, 1 << 30))
        cands = chain_baselines(energy, x0, steps, STEP_SIZE, NOISE_STD, settings, dev, quick=quick)
        cands += [
            _Candidate("sample", lambda: fastlangevin.sample(StepByStep(energy), x0, steps, STEP_SIZE,
                                                              seed=next(seeds)), settings,
                       note="closed-form grad (torch matmuls) + fused step, per step"),
        ]
        if fused:
            cands += [
                _Candidate("chain", lambda: fastlangevin.sample(energy, x0, steps, STEP_SIZE, seed=next(seeds)),
                           settings, note="one mlp_chain call"),
                _Candidate("chain-mala", lambda: fastlangevin.sample(energy, x0, steps, STEP_SIZE, seed=next(seeds),
                                                                      mh=True), settings,
                           note="one mlp_chain call, MALA"),
            ]
        size_rows = measure_rows(cands, size, dev, verbose)
        work = flops_per_walker_step(d) * n * steps
        for r in size_rows:
            if r["time_s"]:
                r["gflops"] = work / r["time_s"] / 1e9
                r["pct_of_sgemm"] = 100.0 * r["gflops"] / peak
        eager_t = size_rows[0]["time_s"]
        for r in size_rows:  # the best any method could do: every FLOP at the sgemm rate
            r["ceiling_vs_eager"] = eager_t / (work / (peak * 1e9)) if eager_t else None
        rows += size_rows
    return common.payload(NAME, dev, quick, env=env, sizes=sizes, settings=settings, rows=rows, not_run=not_run,
                          dtype=str(DTYPE), step_size=STEP_SIZE, noise_std=NOISE_STD,
                          energy=f"MLPEnergy(d, hidden={HIDDEN}, depth={DEPTH}, act={ACT!r}), torch.manual_seed(0) init",
                          flops="2 x 2 x (d H + (depth - 1) H^2 + H) per walker-step (forward + backward to the input)",
                          sgemm_gflops=peak,
                          sgemm=f"torch.mm of two [{512 if quick else 2048}]^2 float32 matrices, median of 5, same run")


def report(payload: dict[str, Any], file=None) -> str:
    """Print env info, the results table and the methods not run; returns the table text."""
    cfg = payload["config"]
    ceil = {r["size"]: r.get("ceiling_vs_eager") for r in payload["rows"]}
    ceil_txt = ", ".join(f"{k}: {v:.2f}x" for k, v in ceil.items() if v)
    return common.print_report(payload, f"ULA chains on a digits-sized MLP energy, {cfg['dtype']}",
                               f"one call = the whole chain; x eager = eager time / method time; "
                               f"% sgemm = GFLOP/s over this device's float32 matmul rate "
                               f"({cfg['sgemm_gflops']:.0f} GFLOP/s), so eager time x that rate / FLOPs "
                               f"bounds x eager ({ceil_txt}); {cfg['timer']}",
                               COLUMNS, file=file)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.bench_main(
        argv, prog="python -m bench.bench_mlp_chain",
        description="Time whole Langevin chains on a digits-sized MLP energy: eager autograd loop vs sample() "
                    "vs fused chain.",
        run=run, report=report, sizes_help="comma-separated NxDxSTEPS sizes, e.g. 1024x64x100",
    )


if __name__ == "__main__":
    sys.exit(main())
