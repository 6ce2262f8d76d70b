"""Benchmark of the Jarzynski-weighted Langevin step against the unweighted one, float32, side by
side in one process:

* ``step``       ``fastlangevin.langevin_step(x, g, a, seed=0, offset=k, out=y, backend=name)``
* ``weighted``   that step, then ``fastlangevin.weights.jarzynski_increment(x, g, U, y, g_new,
  U_new, a, backend=name)``: the extra cost of the weights per step. Energies and gradients
  are precomputed tensors (the energy network's cost is the same with and without weights, so
  it is left out: this is the sampler's own overhead).
* ``increment``  the increment alone, for its bandwidth.

per fastlangevin backend available on the device, and ``eager``: the same composition in plain
PyTorch (``x - a*g + s*torch.randn_like(x)`` and fastlangevin.reference.jarzynski_increment_ref,
the float64 formula), and ``compile``: torch.compile of each of eager's three functions
(compile time in the note; not compiled in --quick). The headline column is weighted / step;
the target is <= 1.5.

Bytes: the increment reads x_old, g_old, x_new, g_new (16 bytes per float32 element) and the
step reads 8 and writes 4, so on a bandwidth-bound device the weighted step moves 28 / 12 = 2.3x
the bytes of the step. Where the step is compute-bound (the CPU Philox normals) the ratio is lower.

    python -m bench.bench_jarzynski [--quick] [--device cpu|cuda] [--sizes 1024x64,...] [--out-json PATH]
"""
from __future__ import annotations

import itertools
import statistics
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

try:  # run as `python -m bench.bench_jarzynski` / imported as bench.bench_jarzynski
    from . import common
    from .baselines import compiled_candidate
    from .bench_langevin import BACKEND_ORDER, FULL, QUICK, SLOW, _Candidate, _measure_interleaved, backend_plan, eager_step
except ImportError:  # run as a file: `python bench/bench_jarzynski.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench import common
    from bench.baselines import compiled_candidate
    from bench.bench_langevin import BACKEND_ORDER, FULL, QUICK, SLOW, _Candidate, _measure_interleaved, backend_plan, eager_step

import fastlangevin
from fastlangevin import reference
from fastlangevin.weights import jarzynski_increment

NAME = "jarzynski"

STEP_SIZE = 0.01
NOISE_STD = (2.0 * STEP_SIZE) ** 0.5
DTYPE = torch.float32
INCREMENT_BYTES_PER_ELEMENT = 16  # float32: read x_old, g_old, x_new, g_new
TARGET_RATIO = 1.5

# [N, D]: small low-dimensional walkers, MNIST-sized batches (784), and the Carbone et al. GMM
# (10^4 walkers in d = 50, ../shared/PAPERS.md section 1.5); on a GPU also CIFAR-sized walkers.
CPU_SIZES: list[tuple[int, int]] = [(1024, 64), (4096, 784), (10000, 50)]
GPU_SIZES: list[tuple[int, int]] = CPU_SIZES + [(4096, 3072), (65536, 784)]

COLUMNS = [
    ("size", "size"),
    ("method", "method"),
    ("step_ms", "step (ms)", ".4f"),
    ("weighted_ms", "weighted (ms)", ".4f"),
    ("ratio", "weighted/step", ".2f"),
    ("increment_ms", "increment (ms)", ".4f"),
    ("increment_gbps", "increment GB/s", ".2f"),
    ("spread_pct", "spread %", ".0f"),
    ("note", "note"),
]


def eager_weighted(x, g, u, g_new, u_new, a: float, s: float):
    """The plain-PyTorch composition: step x -> y, then the float64 reference increment."""
    y = eager_step(x, g, a, s)
    return y, reference.jarzynski_increment_ref(x, g, u, y, g_new, u_new, a, s)


def _row(size, method, times: dict[str, Optional[_Candidate]], note: str = "") -> dict[str, Any]:
    """One row per (size, method) from its three candidates (None: not timed, ``note`` says why).
    time_s is the weighted step's time: the number this benchmark is about."""
    t = {k: (statistics.median(c.times) if c is not None and c.error is None and c.times else None)
         for k, c in times.items()}
    errors = list(dict.fromkeys(c.error for c in times.values() if c is not None and c.error))  # once each
    spreads = [100.0 * (max(c.times) - min(c.times)) / statistics.median(c.times)
               for c in times.values() if c is not None and c.times]
    numel = size[0] * size[1]
    ratio = t["weighted"] / t["step"] if t["weighted"] and t["step"] else None
    return {
        "size": f"{size[0]}x{size[1]}",
        "shape": list(size),
        "numel": numel,
        "method": method,
        "time_s": t["weighted"],
        "step_ms": None if t["step"] is None else t["step"] * 1e3,
        "weighted_ms": None if t["weighted"] is None else t["weighted"] * 1e3,
        "increment_ms": None if t["increment"] is None else t["increment"] * 1e3,
        "ratio": ratio,
        "meets_target": None if ratio is None else ratio <= TARGET_RATIO,
        "increment_gbps": None if not t["increment"] else numel * INCREMENT_BYTES_PER_ELEMENT / t["increment"] / 1e9,
        "repeat_times_s": {k: list(c.times) for k, c in times.items() if c is not None and c.times},
        "spread_pct": max(spreads) if spreads else None,
        "note": "; ".join(filter(None, [note] + [f"n/a: {e}" for e in errors])),
    }


def run(
    device: str = "cpu",
    quick: bool = False,
    *,
    sizes: Optional[Sequence[Sequence[int]]] = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Time step, weighted step and increment per method at every size on ``device``; returns the
    results payload (JSON-ready): name, env, config, backends, not_run, rows (one per
    (size, method): step_ms, weighted_ms, increment_ms, ratio = weighted / step, meets_target,
    increment_gbps, repeat_times_s, spread_pct = the largest of the three, note).

    quick: the smallest size only and few iterations. The candidates of one size are timed
    round-robin (bench_langevin._measure_interleaved), so load bursts hit all of them alike.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda requested but torch.cuda.is_available() is False")
    env = common.env_info(dev)
    if sizes is None:
        sizes = GPU_SIZES if dev.type == "cuda" else CPU_SIZES
        if quick:
            sizes = sizes[:1]
    sizes = [tuple(int(v) for v in s) for s in sizes]
    settings = QUICK if quick else FULL
    slow_settings = QUICK if quick else SLOW
    backends_run, not_run = backend_plan(dev)
    a, s = STEP_SIZE, NOISE_STD

    rows: list[dict[str, Any]] = []
    gen = torch.Generator(device=dev).manual_seed(0)
    for size in sizes:
        x, g, g_new = (torch.randn(size, dtype=DTYPE, device=dev, generator=gen) for _ in range(3))
        u, u_new = (100.0 * torch.randn(size[0], dtype=DTYPE, device=dev, generator=gen) for _ in range(2))
        y = torch.empty_like(x)
        y.copy_(x - a * g + s * torch.randn_like(x))  # a real step's end point for the increment alone
        plan: list[tuple[str, dict[str, Optional[_Candidate]], str]] = []

        def add(method, step, weighted, increment, cfg, note=""):
            plan.append((method, {"step": _Candidate("step", step, cfg), "weighted": _Candidate("weighted", weighted, cfg),
                                  "increment": _Candidate("increment", increment, cfg)}, note))

        add("eager", lambda: eager_step(x, g, a, s),
            lambda: eager_weighted(x, g, u, g_new, u_new, a, s),
            lambda: reference.jarzynski_increment_ref(x, g, u, y, g_new, u_new, a, s), settings,
            note="torch ops + float64 reference formula")
        # torch.compile of each eager composition (compiled on its first call, outside the
        # timing; compile time in the note). Skipped in --quick.
        compiled = {
            "step": compiled_candidate("step", eager_step, (x, g, a, s), lambda c: lambda: c(x, g, a, s),
                                       settings, dev, quick=quick),
            "weighted": compiled_candidate("weighted", eager_weighted, (x, g, u, g_new, u_new, a, s),
                                           lambda c: lambda: c(x, g, u, g_new, u_new, a, s), settings, dev, quick=quick),
            "increment": compiled_candidate("increment", reference.jarzynski_increment_ref, (x, g, u, y, g_new, u_new, a, s),
                                            lambda c: lambda: c(x, g, u, y, g_new, u_new, a, s), settings, dev,
                                            quick=quick),
        }
        plan.append(("compile", compiled, "; ".join(f"{k}: {c.note}" for k, c in compiled.items() if c.note)))
        for name in backends_run:
            if name == "reference" and size != sizes[0]:
                # Its step is the Philox oracle in int64 tensor ops: 2.2 s a call at 10000x50 (3 of
                # the 3.5 minutes of a full CPU run), and its ratio says nothing about the kernels.
                plan.append((name, {"step": None, "weighted": None, "increment": None},
                             "skipped: pure-torch oracle, timed at the smallest size only"))
                continue
            offsets = itertools.count(1)  # fresh noise per call, as in a sampler loop

            def step(name=name, offsets=offsets):
                return fastlangevin.langevin_step(x, g, a, seed=0, offset=next(offsets), out=y, backend=name)

            def increment(name=name):
                return jarzynski_increment(x, g, u, y, g_new, u_new, a, backend=name)

            def weighted(step=step, increment=increment):
                step()
                return increment()

            add(name, step, weighted, increment, slow_settings if name == "reference" else settings)

        cands = [c for _, trio, _ in plan for c in trio.values() if c is not None]
        _measure_interleaved(cands, dev)
        for method, trio, note in plan:
            row = _row(size, method, trio, note)
            rows.append(row)
            if verbose:
                r = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
                print(f"  {row['size']:>12}  {method:<10} weighted/step {r}  {row['note']}", file=sys.stderr, flush=True)
        del x, g, g_new, y, cands

    return common.payload(NAME, dev, quick, env=env, sizes=sizes, settings=settings, rows=rows, not_run=not_run,
                          dtype=str(DTYPE), step_size=a, noise_std=s,
                          increment_bytes_per_element=INCREMENT_BYTES_PER_ELEMENT, target_ratio=TARGET_RATIO,
                          backend_order=list(BACKEND_ORDER), reference_timing=slow_settings,
                          reference_sizes=[list(sizes[0])])


def report(payload: dict[str, Any], file=None) -> str:
    """Print env info, the results table and the backends not run; returns the table text."""
    cfg = payload["config"]
    return common.print_report(payload, f"Langevin step vs step + jarzynski_increment, {cfg['dtype']}", (f"weighted/step: target <= {cfg['target_ratio']}; increment GB/s counts "
                                f"{cfg['increment_bytes_per_element']} bytes/element (x_old, g_old, x_new, g_new); {cfg['timer']}"), COLUMNS, file=file)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.bench_main(
        argv, prog="python -m bench.bench_jarzynski",
        description="Time the Jarzynski-weighted Langevin step against the unweighted one.",
        run=run, report=report, sizes_help="comma-separated NxD sizes, e.g. 1024x64,10000x50",
    )

if __name__ == "__main__":
    sys.exit(main())
