"""Benchmark of the sampler's own overhead on a convolutional EBM: models.NijkampEBM (the 5-conv
Nijkamp-style net of Carbone et al.'s CIFAR-10 code, ../shared/PAPERS.md section 1.5) on walkers
[N, 3, 32, 32], h = 1, noise std 0.01 (their CIFAR-10 sampler's values, without their clamps),
float32, side by side in one process:

* ``eager``      the papers' loop: per step, torch.autograd.grad of U(x).sum() through the net,
                 then x - h grad + s torch.randn_like(x).
* ``compile``    the same loop over torch.compile of that step (compile time in the note; not
                 compiled in --quick).
* ``torchebm``   TorchEBM's LangevinDynamics on the same net (noise mapping: bench.baselines).
* ``sample``     fastlangevin.sample() on the nn.Module: autograd gradient, fused step.
* ``cuda_graph`` sample(..., cuda_graph=True) on a GPU; on CPU "not measured (needs a GPU)".
* ``net``        the network's forward + backward to the input alone, n_steps times from the
                 same x: what no sampler can avoid.
* ``final U``    one forward pass alone (no gradient): the energy at the last walkers, which
                 sample() evaluates for its result.energy (the eager loop and TorchEBM return
                 none).

overhead % = 100 (method time - net time) / method time: the share of a chain that is not the
network (elementwise update, noise, autograd bookkeeping, Python, launches); for sample() and
cuda_graph, whose chains also run that final forward, net time includes it. (Counted as
overhead it was the larger part of sample()'s 4 to 6% at the CPU size, 10 steps: about a third
of one step's network time per chain; at 60 steps it is a sixth as large.) The issue's target:
under 5% for sample(), and cuda_graph at least 1.3x eager at batch 64, on a GPU.

Sizes [batch, steps]: on a GPU the paper's 256 x 60 and 64 x 60 (the graph comparison), nf = 64.
On CPU the paper's net (nf = 64) at 16 x 10: its forward + backward is ~17 ms per image-step on
one core of the 2-core dev box (measured), so 256 x 60 would take 4 minutes per chain.

    python -m bench.bench_conv [--quick] [--device cpu|cuda] [--sizes 256x60,64x60] [--out-json PATH]
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

try:  # run as `python -m bench.bench_conv` / imported as bench.bench_conv
    from . import common
    from .baselines import chain_baselines, failed
    from .bench_chain import measure_rows
    from .bench_langevin import _Candidate, _short
except ImportError:  # run as a file
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench import common
    from bench.baselines import chain_baselines, failed
    from bench.bench_chain import measure_rows
    from bench.bench_langevin import _Candidate, _short

import fastlangevin
from models.ebm import NijkampEBM

NAME = "conv"

STEP_SIZE = 1.0
NOISE_STD = 0.01
DTYPE = torch.float32
IMAGE = (3, 32, 32)
# [batch, steps] and the net width nf per device
GPU_SIZES: list[tuple[int, int]] = [(256, 60), (64, 60)]
CPU_SIZES: list[tuple[int, int]] = [(16, 10)]
QUICK_SIZES: list[tuple[int, int]] = [(4, 3)]
NF = {"cuda": 64, "cpu": 64, "quick": 8}
FULL = dict(warmup=0, target_s=0.0, repeats=3, max_iters=1)
QUICK = dict(warmup=0, target_s=0.0, repeats=2, max_iters=1)
SAMPLERS = ("eager", "compile", "torchebm", "sample", "cuda_graph")
WITH_FINAL_ENERGY = ("sample", "cuda_graph")  # their result carries U at the final walkers

COLUMNS = [
    ("size", "N x D x steps"),
    ("method", "method"),
    ("time_s", "time (s)", ".3f"),
    ("ms_per_step", "ms/step", ".2f"),
    ("vs_eager", "x eager", ".2f"),
    ("overhead_pct", "overhead %", ".1f"),
    ("spread_pct", "spread %", ".0f"),
    ("note", "note"),
]


def net_only(energy: torch.nn.Module, x: torch.Tensor, n_steps: int) -> None:
    """The network's share of a chain: n_steps of forward + backward to the input x [N, ...]."""
    for _ in range(n_steps):
        xr = x.detach().requires_grad_(True)
        torch.autograd.grad(energy(xr).sum(), xr)


def final_energy(energy: torch.nn.Module, x: torch.Tensor) -> None:
    """The forward pass sample() adds after its last step for result.energy (no gradient)."""
    with torch.no_grad():
        energy(x)


def _cuda_graph_candidate(energy, x0, steps, settings, dev, seeds) -> _Candidate:
    """sample(..., cuda_graph=True) where it exists: on CPU not measured; on CUDA a TypeError
    (a sample() from before the cuda_graph argument) makes it an n/a row, not a crash."""
    if dev.type != "cuda":
        return failed("cuda_graph", "not measured (needs a GPU)", settings)
    try:
        fastlangevin.sample(energy, x0, 1, STEP_SIZE, NOISE_STD, seed=0, cuda_graph=True)
    except TypeError as e:
        return failed("cuda_graph", f"not measured: sample() has no cuda_graph yet ({_short(e)})", settings)
    return _Candidate("cuda_graph", lambda: fastlangevin.sample(energy, x0, steps, STEP_SIZE, NOISE_STD,
                                                                 seed=next(seeds), cuda_graph=True),
                      settings, note="sample(..., cuda_graph=True)")


def run(
    device: str = "cpu",
    quick: bool = False,
    *,
    sizes: Optional[Sequence[Sequence[int]]] = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Time the samplers and the net alone at every [batch, steps]; returns the results payload
    (name, env, config, backends, not_run, rows as bench_chain's, size "N x 3072 x steps", plus
    overhead_pct = 100 (time - net time) / time for the samplers). Methods are timed round-robin."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda requested but torch.cuda.is_available() is False")
    env = common.env_info(dev)
    nf = NF["quick" if quick else dev.type]
    if sizes is None:
        sizes = QUICK_SIZES if quick else (GPU_SIZES if dev.type == "cuda" else CPU_SIZES)
    sizes = [tuple(int(v) for v in s) for s in sizes]
    settings = QUICK if quick else FULL
    d = IMAGE[0] * IMAGE[1] * IMAGE[2]
    rows: list[dict[str, Any]] = []
    gen = torch.Generator(device=dev).manual_seed(0)
    for n, steps in sizes:
        torch.manual_seed(0)
        energy = NijkampEBM(nf=nf, in_ch=IMAGE[0]).to(device=dev, dtype=DTYPE)
        energy.requires_grad_(False)  # sampling only, as in a trainer's negative phase
        x0 = 2 * torch.rand(n, *IMAGE, dtype=DTYPE, device=dev, generator=gen) - 1  # uniform noise init
        seeds = iter(range(1, 1 << 30))
        cands = chain_baselines(energy, x0, steps, STEP_SIZE, NOISE_STD, settings, dev, quick=quick)
        cands += [
            _Candidate("sample", lambda: fastlangevin.sample(energy, x0, steps, STEP_SIZE, NOISE_STD, seed=next(seeds)),
                       settings, note="autograd grad + fused step"),
            _cuda_graph_candidate(energy, x0, steps, settings, dev, seeds),
            _Candidate("net", lambda: net_only(energy, x0, steps), settings, note="forward + backward only"),
            _Candidate("final U", lambda: final_energy(energy, x0), settings,
                       note="one forward, no grad (sample()'s result.energy)"),
        ]
        size_rows = measure_rows(cands, (n, d, steps), dev, verbose)
        t = {r["method"]: r["time_s"] for r in size_rows}
        for r in size_rows:
            if r["method"] == "final U":  # one forward, not a chain: no per-step rate or ratio
                r["ms_per_step"] = r["vs_eager"] = r["mwalker_steps_per_s"] = None
            net_t = t["net"]
            if r["method"] in WITH_FINAL_ENERGY and r["time_s"] and net_t and t["final U"]:
                net_t += t["final U"]
                r["note"] = (r["note"] + "; " if r["note"] else "") + "net time includes the final U"
            r["overhead_pct"] = (100.0 * (r["time_s"] - net_t) / r["time_s"]
                                 if r["method"] in SAMPLERS and r["time_s"] and net_t else None)
        rows += size_rows
    return common.payload(NAME, dev, quick, env=env, sizes=sizes, settings=settings, rows=rows, not_run={},
                          dtype=str(DTYPE), step_size=STEP_SIZE, noise_std=NOISE_STD,
                          energy=f"models.NijkampEBM(nf={nf}, in_ch={IMAGE[0]}), torch.manual_seed(0) init",
                          image=list(IMAGE))


def report(payload: dict[str, Any], file=None) -> str:
    """Print env info, the results table; returns the table text."""
    cfg = payload["config"]
    return common.print_report(
        payload, f"Langevin chains on {cfg['energy'].split(',')[0]}, {cfg['dtype']}",
        f"overhead % = (time - net time) / time; x eager = eager time / method time; {cfg['timer']}",
        COLUMNS, file=file)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.bench_main(
        argv, prog="python -m bench.bench_conv",
        description="The sampler's overhead on the Nijkamp conv EBM: eager loop, sample(), CUDA graph vs the net alone.",
        run=run, report=report, sizes_help="comma-separated BATCHxSTEPS sizes, e.g. 256x60,64x60",
    )


if __name__ == "__main__":
    sys.exit(main())
