"""Benchmark of SMC resampling, ancestors int64 [N] from float32 log-weights [N], side by side in
one process:

* ``torch.multinomial``  ``torch.multinomial(torch.softmax(log_w, 0), N, replacement=True)``: what
  the paper's code does, the baseline (the softmax is timed too: every method starts from
  log-weights).
* every fastlangevin backend that is available and runs on the device's tensors, for each scheme:
  ``fastlangevin.resample(log_w, scheme, seed=0, offset=k, backend=name)``; the
  ``reference`` backend is the pure-torch composition (tables, Philox uniforms, searchsorted).
* ``compile``: torch.compile of the baseline, and of each scheme's pure-torch composition with
  torch.rand uniforms (torch_resample); compile time in the note, not compiled in --quick.

Log-weights are 1.5 * N(0, 1) with 10% of the walkers dead (-inf), as after a few SMC steps.

    python -m bench.bench_resample [--quick] [--device cpu|cuda] [--sizes N,N,...] [--out-json PATH]
"""
from __future__ import annotations

import itertools
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

try:  # run as `python -m bench.bench_resample` / imported as bench.bench_resample
    from . import common
    from .baselines import compiled_candidate
    from .bench_langevin import FULL, QUICK, SLOW, _Candidate, _measure_interleaved, backend_plan
except ImportError:  # run as a file: `python bench/bench_resample.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench import common
    from bench.baselines import compiled_candidate
    from bench.bench_langevin import FULL, QUICK, SLOW, _Candidate, _measure_interleaved, backend_plan

from fastlangevin import reference
from fastlangevin import resampling as rs

NAME = "resample"

SIZES: list[int] = [10**3, 10**4, 10**5, 10**6]
SCHEMES = rs.SCHEMES
BASELINE = "torch.multinomial"

COLUMNS = [
    ("n", "N"),
    ("scheme", "scheme"),
    ("method", "method"),
    ("time_ms", "time (ms)", ".4f"),
    ("msamples_per_s", "Msamples/s", ".1f"),
    ("vs_multinomial", "x multinomial", ".2f"),
    ("vs_reference", "x reference", ".2f"),
    ("spread_pct", "spread %", ".0f"),
    ("note", "note"),
]


def log_weights(n: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """float32 [n]: 1.5 * N(0, 1), 10% of the walkers at -inf."""
    g = torch.Generator().manual_seed(seed)
    lw = 1.5 * torch.randn(n, generator=g)
    lw[torch.rand(n, generator=g) < 0.1] = -math.inf
    return lw.to(device)


def torch_multinomial(log_w: torch.Tensor) -> torch.Tensor:
    """The baseline: log-weights [N] -> N ancestors drawn with replacement by torch's generator."""
    return torch.multinomial(torch.softmax(log_w, 0), log_w.shape[0], replacement=True)


def torch_resample(log_w: torch.Tensor, scheme: str) -> torch.Tensor:
    """The reference backend's composition with torch's own uniforms: log-weights [N] ->
    ancestors int64 [N] (resample_ref with torch.rand float64 uniforms, [1] for systematic).
    What torch.compile is given: the reference backend's Philox in int64 tensor ops takes a
    Python int offset, which dynamo specialises on (a recompile per call)."""
    n = 1 if scheme == "systematic" else log_w.shape[0]
    return reference.resample_ref(log_w, scheme, uniforms=torch.rand(n, dtype=torch.float64, device=log_w.device))


def _row(n: int, scheme: str, method: str, t: Optional[float], *, iters=None, times=None, note="") -> dict[str, Any]:
    """One table/JSON row; t = seconds per call (None: not timed, ``note`` says why)."""
    return {
        "n": n,
        "scheme": scheme,
        "method": method,
        "time_s": t,
        "time_ms": None if t is None else t * 1e3,
        "msamples_per_s": None if not t else n / t / 1e6,
        "vs_multinomial": None,
        "vs_reference": None,
        "iters": iters,
        "repeat_times_s": list(times) if times else None,
        "spread_pct": 100.0 * (max(times) - min(times)) / t if times and t else None,
        "note": note,
    }


def run(
    device: str = "cpu",
    quick: bool = False,
    *,
    sizes: Optional[Sequence[int]] = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Time the baseline and every (scheme, backend) at every N on ``device``; returns the results
    payload (JSON-ready).

    quick: the smallest N only and few iterations (a smoke run, seconds). sizes: N values
    overriding the defaults. verbose: print each row as measured (stderr).

    Payload keys: name, env, config, backends, not_run ({backend: reason}), rows (one dict per
    (N, scheme, method): time_s, time_ms, msamples_per_s, vs_multinomial = baseline time / this
    time, vs_reference = the reference backend's time for the scheme / this time, iters,
    repeat_times_s, spread_pct, note). Methods of one N are timed round-robin.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda requested but torch.cuda.is_available() is False")
    env = common.env_info(dev)
    if sizes is None:
        sizes = SIZES[:1] if quick else SIZES
    sizes = [int(n) for n in sizes]
    settings = QUICK if quick else FULL
    slow_settings = QUICK if quick else SLOW
    backends_run, not_run = backend_plan(dev)

    rows: list[dict[str, Any]] = []
    for n in sizes:
        lw = log_weights(n, dev)
        # torch.compile rows at the largest N only (compile time in the note; not compiled in
        # --quick): at every N they were 20 compiles, most of this module's 50 s on the 2-core
        # CPU, and the GPU run has minutes in all. The largest N is the one the targets name.
        skip = None if n == max(sizes) else f"compiled at N = {max(sizes)} only (compile time)"
        cands = [_Candidate((BASELINE, BASELINE), lambda: torch_multinomial(lw), settings),
                 compiled_candidate((BASELINE, "compile"), torch_multinomial, (lw,), lambda c: lambda: c(lw),
                                    settings, dev, quick=quick, skip=skip)]
        for scheme in SCHEMES:
            cands.append(compiled_candidate((scheme, "compile"), torch_resample, (lw, scheme),
                                            lambda c, scheme=scheme: lambda: c(lw, scheme), settings, dev,
                                            quick=quick, note="torch_resample", skip=skip))
            for name in backends_run:
                offsets = itertools.count(1)  # fresh uniforms per call, as in an SMC loop

                def call(name=name, scheme=scheme, offsets=offsets):
                    return rs.resample(lw, scheme, seed=0, offset=next(offsets), backend=name)

                cands.append(_Candidate((scheme, name), call, slow_settings if name == "reference" else settings))
        _measure_interleaved(cands, dev)

        by_key = {}
        for c in cands:
            scheme, method = c.method
            if c.error is not None:
                r = _row(n, scheme, method, None, note=f"n/a: {c.error}")
            else:
                r = _row(n, scheme, method, statistics.median(c.times), iters=c.iters, times=c.times, note=c.note)
            by_key[c.method] = r
        base_t = by_key[(BASELINE, BASELINE)]["time_s"]
        for (scheme, method), r in by_key.items():
            ref_t = by_key.get((scheme, "reference"), {}).get("time_s")
            if r["time_s"]:
                r["vs_multinomial"] = base_t / r["time_s"] if base_t else None
                r["vs_reference"] = ref_t / r["time_s"] if ref_t else None
            rows.append(r)
            if verbose:
                t = "-" if r["time_ms"] is None else f"{r['time_ms']:.4f} ms"
                print(f"  {n:>8}  {scheme:<17} {method:<17} {t}  {r['note']}", file=sys.stderr, flush=True)
        del lw, cands

    return common.payload(NAME, dev, quick, env=env, sizes=sizes, settings=settings, rows=rows,
                          not_run=not_run, dtype="torch.float32", schemes=list(SCHEMES),
                          reference_timing=slow_settings)


def report(payload: dict[str, Any], file=None) -> str:
    """Print env info, the results table and the backends not run; returns the table text."""
    cfg = payload["config"]
    return common.print_report(payload, f"ancestors int64 [N] from {cfg['dtype']} log-weights [N]", (f"x multinomial = {BASELINE} time / method time; x reference = reference backend time (same scheme) "
                                f"/ method time; {cfg['timer']}"), COLUMNS, file=file)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.bench_main(
        argv, prog="python -m bench.bench_resample",
        description="Time SMC resampling: torch.multinomial vs each scheme on each fastlangevin backend.",
        run=run, report=report, sizes_help="comma-separated N values, e.g. 1000,1000000",
        parse_sizes_fn=lambda t: [int(float(v)) for v in t.split(",")] if t else None,
    )

if __name__ == "__main__":
    sys.exit(main())
