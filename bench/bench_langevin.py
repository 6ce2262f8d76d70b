"""Benchmark of one Langevin step, y = x - a * grad + s * xi, float32, side by side in one process:

* ``eager``    the plain PyTorch line ``x - a*g + s*torch.randn_like(x)``: the baseline.
* ``compile``  torch.compile of that same function (inductor: C++/OpenMP on CPU, Triton on GPU).
               Not compiled in --quick. On CPU it is slower than eager because of the noise:
               inductor draws the normals in its own generated per-element code, 8.5 ms for
               randn_like of [1024, 64] against eager's 0.70 ms (one thread, load ~4), while the
               arithmetic x - a*g compiles to eager's 0.11 ms (b4dc28c run: 0.11-0.42x eager).
* every fastlangevin backend that is available and runs on the device's tensors:
  ``fastlangevin.langevin_step(x, g, a, seed=0, offset=k, out=out, backend=name)``.

Walker tensors x, grad have shape [N, D] (N walkers of dimension D). a = 0.01, s = sqrt(2 a).

Effective bandwidth counts 12 bytes per element for every method (read x, read grad, write y):
the minimum traffic of the step, the fused kernels' actual traffic. Eager really moves more
(it writes and re-reads the noise and the intermediates), so its GB/s is the useful bandwidth,
not what the memory system did.

    python -m bench.bench_langevin [--quick] [--device cpu|cuda] [--peak-gbps G] [--out-json PATH]
"""
from __future__ import annotations

import itertools
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

try:  # run as `python -m bench.bench_langevin` / imported as bench.bench_langevin
    from . import common
except ImportError:  # run as a file: `python bench/bench_langevin.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench import common

import fastlangevin

NAME = "langevin"

STEP_SIZE = 0.01
NOISE_STD = math.sqrt(2.0 * STEP_SIZE)  # the exact ULA noise; also langevin_step's default
DTYPE = torch.float32
BYTES_PER_ELEMENT = 12  # float32: read x, read grad, write y

# [N, D]: a small batch of low-dimensional walkers, then MNIST-sized (784) batches; on a GPU
# also CIFAR-sized (3 * 32 * 32 = 3072) and a large MNIST batch, big enough (>= 200M elements,
# ~2.4 GB of traffic per step) that launch overhead is negligible and HBM bandwidth is the limit.
CPU_SIZES: list[tuple[int, int]] = [(1024, 64), (4096, 784), (16384, 784)]
GPU_SIZES: list[tuple[int, int]] = CPU_SIZES + [(65536, 3072), (262144, 784)]

# The reference backend is the pure-torch test oracle (Philox in int64 tensor ops, Box-Muller in
# float64): tens of times slower than eager. Above this many elements it would dominate the run
# time for no information, so it is timed at the small sizes only (always at the smallest).
REFERENCE_MAX_NUMEL = 1 << 20

# fastlangevin backends in the order they are reported.
BACKEND_ORDER = ("reference", "cpu", "cuda", "triton")

# Timing settings: (warmup calls, target seconds per repeat, repeats, max calls per repeat).
FULL = dict(warmup=3, target_s=0.25, repeats=5, max_iters=1000)
QUICK = dict(warmup=1, target_s=0.02, repeats=3, max_iters=50)
SLOW = dict(warmup=1, target_s=0.1, repeats=3, max_iters=10)  # the reference backend

COLUMNS_BASE = [
    ("size", "size"),
    ("method", "method"),
    ("time_ms", "time (ms)", ".4f"),
    ("melem_per_s", "Melem/s", ".1f"),
    ("gbps", "GB/s", ".2f"),
    ("vs_eager", "x eager", ".2f"),
    ("spread_pct", "spread %", ".0f"),
]


def eager_step(x: torch.Tensor, g: torch.Tensor, a: float, s: float) -> torch.Tensor:
    """The baseline: x, g [N, D] -> y [N, D] = x - a * g + s * N(0, 1) noise (torch's generator)."""
    return x - a * g + s * torch.randn_like(x)


def detect_peak_gbps(device_name: str) -> Optional[float]:
    """Spec HBM bandwidth (GB/s) of known GPUs from their torch name, else None."""
    n = device_name.upper()
    if "H200" in n:
        return 4800.0
    if "H100" in n:
        # SXM (HBM3) is 3.35 TB/s; the PCIe card has HBM2e at 2.0 TB/s and would read as 60%
        # of a peak it cannot reach.
        return 2000.0 if "PCIE" in n else 3350.0
    return None


def _short(e: BaseException) -> str:
    """First line of an exception, for a table cell (torch.compile errors run to pages)."""
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:160]}" if msg else type(e).__name__


def backend_plan(device: torch.device) -> tuple[list[str], dict[str, str]]:
    """(backends to time on ``device``, {backend: why not} for the others)."""
    status = fastlangevin.backends()
    run, skip = [], {}
    for name in BACKEND_ORDER:
        st = status.get(name, "unknown backend")
        if st is not True:
            skip[name] = f"unavailable: {st}"
        elif name == "cpu" and device.type != "cpu":
            skip[name] = "runs on CPU tensors only"
        elif name == "cuda" and device.type != "cuda":
            skip[name] = "runs on CUDA tensors only"
        elif name == "triton" and device.type == "cpu":
            # Available on CPU tensors only under TRITON_INTERPRET=1: numpy evaluation of the
            # kernel, a correctness tool, not a performance path.
            skip[name] = "on CPU tensors triton runs in the interpreter (TRITON_INTERPRET=1), not a performance path"
        else:
            run.append(name)
    return run, skip


class _Candidate:
    """One method at one size: its closure, timing settings, and the per-repeat times."""

    def __init__(self, method: str, fn: Callable[[], Any], settings: dict, note: str = ""):
        self.method, self.fn, self.settings, self.note = method, fn, settings, note
        self.iters = 0
        self.times: list[float] = []
        self.error: Optional[str] = None


def _measure_interleaved(cands: list[_Candidate], device: torch.device) -> None:
    """Warm up and calibrate each candidate, then time them round-robin: repeat r of every
    method runs before repeat r + 1 of any. On a shared machine a burst of foreign load then
    hits all methods of a size alike instead of one, and the median per method discards it;
    the ratios to eager are what this protects. Fills c.times (or c.error); a candidate whose
    error is already set (baselines.failed: not installed, skipped) is left untimed."""
    for c in cands:
        if c.error is not None:
            continue
        try:
            for _ in range(c.settings["warmup"]):
                c.fn()
            c.iters = common.calibrate_iters(
                c.fn, device=device, target_s=c.settings["target_s"], max_iters=c.settings["max_iters"]
            )
        except Exception as e:  # a backend that fails here gets an n/a row, the others go on
            c.error = _short(e)
    live = [c for c in cands if c.error is None]
    for r in range(max((c.settings["repeats"] for c in live), default=0)):
        for c in live:
            if r < c.settings["repeats"]:
                c.times.append(common.time_fn(c.fn, warmup=0, iters=c.iters, device=device, repeats=1))


def _row(size, method, t: Optional[float], *, peak: Optional[float], iters=None, times=None, note="") -> dict[str, Any]:
    """One table/JSON row; t = seconds per call (None: not timed, ``note`` says why), times =
    the per-repeat seconds it is the median of."""
    numel = size[0] * size[1]
    row: dict[str, Any] = {
        "size": f"{size[0]}x{size[1]}",
        "shape": list(size),
        "numel": numel,
        "method": method,
        "time_s": t,
        "time_ms": None if t is None else t * 1e3,
        "elements_per_s": None,
        "melem_per_s": None,
        "gbps": None,
        "pct_peak": None,
        "vs_eager": None,
        "iters": iters,
        "repeat_times_s": list(times) if times else None,
        # (max - min) / median of the repeats: a large spread flags a row measured under load.
        "spread_pct": 100.0 * (max(times) - min(times)) / t if times and t else None,
        "note": note,
    }
    if t is not None and t > 0:
        row["elements_per_s"] = numel / t
        row["melem_per_s"] = numel / t / 1e6
        row["gbps"] = numel * BYTES_PER_ELEMENT / t / 1e9
        if peak:
            row["pct_peak"] = 100.0 * row["gbps"] / peak
    return row


def run(
    device: str = "cpu",
    quick: bool = False,
    *,
    peak_gbps: Optional[float] = None,
    sizes: Optional[Sequence[Sequence[int]]] = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Time every method at every size on ``device``; returns the results payload (JSON-ready).

    quick: the smallest size only and few iterations (a smoke run, seconds). peak_gbps: HBM
    peak for the % of peak column; None detects it from the GPU name (H100, H200), and CPU runs
    have none. sizes: [N, D] pairs overriding the defaults. verbose: print each row as measured.

    Payload keys: name, env, config, backends (fastlangevin.backends()), not_run
    ({backend: reason}), rows (one dict per (size, method): time_s, time_ms, elements_per_s,
    gbps, vs_eager = eager time / this time, pct_peak, iters, repeat_times_s, spread_pct, note).
    Methods of one size are timed round-robin (see _measure_interleaved).
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda requested but torch.cuda.is_available() is False")
    env = common.env_info(dev)
    if peak_gbps is None and dev.type == "cuda":
        peak_gbps = detect_peak_gbps(env["device"])
    if sizes is None:
        sizes = GPU_SIZES if dev.type == "cuda" else CPU_SIZES
        if quick:
            sizes = sizes[:1]
    sizes = [tuple(int(v) for v in s) for s in sizes]
    settings = QUICK if quick else FULL
    slow_settings = QUICK if quick else SLOW
    backends_run, not_run = backend_plan(dev)

    from bench.baselines import compiled_candidate  # here: baselines imports this module

    rows: list[dict[str, Any]] = []

    def emit(row):
        rows.append(row)
        if verbose:  # progress for long runs, on stderr so stdout stays the report
            t = "-" if row["time_ms"] is None else f"{row['time_ms']:.4f} ms"
            print(f"  {row['size']:>12}  {row['method']:<10} {t}  {row['note']}", file=sys.stderr, flush=True)

    gen = torch.Generator(device=dev).manual_seed(0)
    for size in sizes:
        x = torch.randn(size, dtype=DTYPE, device=dev, generator=gen)
        g = torch.randn(size, dtype=DTYPE, device=dev, generator=gen)
        out = torch.empty_like(x)
        cands: list[_Candidate] = []
        fixed_rows: dict[str, dict[str, Any]] = {}  # methods with no time at this size, by name

        # eager: allocates its result (and the noise) per call, as the one-liner does in user code.
        cands.append(_Candidate("eager", lambda: eager_step(x, g, STEP_SIZE, NOISE_STD), settings))

        # torch.compile of eager_step, compiled per size (dynamic=False) on its first call,
        # outside the timing; the compile time goes in the row's note. Skipped in --quick.
        cands.append(compiled_candidate("compile", eager_step, (x, g, STEP_SIZE, NOISE_STD),
                                        lambda c: lambda: c(x, g, STEP_SIZE, NOISE_STD), settings, dev, quick=quick))

        for name in backends_run:
            if name == "reference" and size[0] * size[1] > REFERENCE_MAX_NUMEL and size != sizes[0]:
                fixed_rows[name] = _row(size, name, None, peak=peak_gbps,
                                        note=f"skipped: pure-torch oracle, > {REFERENCE_MAX_NUMEL} elements")
                continue
            # offset advances per call as in a sampler loop: every call draws fresh noise, and
            # no backend can reuse work across calls.
            offsets = itertools.count(1)

            def step(name=name, offsets=offsets):
                return fastlangevin.langevin_step(x, g, STEP_SIZE, seed=0, offset=next(offsets), out=out, backend=name)

            cands.append(_Candidate(name, step, slow_settings if name == "reference" else settings))

        _measure_interleaved(cands, dev)

        size_rows = {}
        for c in cands:
            if c.error is not None:
                size_rows[c.method] = _row(size, c.method, None, peak=peak_gbps, note=f"n/a: {c.error}")
            else:
                size_rows[c.method] = _row(size, c.method, statistics.median(c.times), peak=peak_gbps,
                                           iters=c.iters, times=c.times, note=c.note)
        size_rows.update(fixed_rows)
        eager_t = size_rows["eager"]["time_s"]
        for method in ["eager", "compile", *backends_run]:
            r = size_rows.get(method)
            if r is None:
                continue
            if r["time_s"] and eager_t:
                r["vs_eager"] = eager_t / r["time_s"]
            emit(r)
        del x, g, out, cands

    return common.payload(NAME, dev, quick, env=env, sizes=sizes, settings=settings, rows=rows, not_run=not_run,
                          dtype=str(DTYPE), step_size=STEP_SIZE, noise_std=NOISE_STD,
                          bytes_per_element=BYTES_PER_ELEMENT, peak_gbps=peak_gbps, reference_timing=slow_settings,
                          reference_max_numel=REFERENCE_MAX_NUMEL)


def columns(payload: dict[str, Any]) -> list:
    cols = list(COLUMNS_BASE)
    if payload["config"].get("peak_gbps"):
        cols.append(("pct_peak", f"% of {payload['config']['peak_gbps']:.0f} GB/s", ".1f"))
    cols.append(("note", "note"))
    return cols


def report(payload: dict[str, Any], file=None) -> str:
    """Print env info, the results table and the backends not run; returns the table text."""
    cfg = payload["config"]
    return common.print_report(payload, f"y = x - a*grad + sqrt(2a)*xi, {cfg['dtype']}", (f"GB/s counts {cfg['bytes_per_element']} bytes/element (read x, read grad, write y); "
                                f"x eager = eager time / method time; {cfg['timer']}"), columns(payload), file=file)


def main(argv: Optional[Sequence[str]] = None) -> int:
    def extra(p):
        p.add_argument("--peak-gbps", type=float, default=None,
                       help="HBM peak for the %% of peak column (default: 3350 for H100, 4800 for H200, else none)")

    return common.bench_main(
        argv, prog="python -m bench.bench_langevin",
        description="Time one float32 Langevin step: eager vs torch.compile vs each fastlangevin backend.",
        run=run, report=report, sizes_help="comma-separated NxD sizes, e.g. 1024x64,4096x784", extra_args=extra,
    )

if __name__ == "__main__":
    sys.exit(main())
