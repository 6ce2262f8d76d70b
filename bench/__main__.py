"""Run every benchmark module: ``python -m bench [--quick] [--device cpu|cuda] [--only NAME ...]``.

A benchmark module (bench/<module>.py) provides:

    NAME                          short name, e.g. "langevin"
    run(device, quick) -> dict    measure; the payload has "name", "env", "rows"
    report(payload)               print env info and the results table

This runner calls each in turn, writes each payload with common.write_results (JSON and its
PNG under bench/results/), and ends with a one-line-per-module summary. The whole run is also
written as bench-<device>-<commit>.json (env, summary, every payload) with its PNG: one panel
of ratios per module, the figure README shows. A module that fails to import or run is
reported and the others still run; the exit status is 1 if any failed.
"""
from __future__ import annotations

import argparse
import math
import contextlib
import importlib
import signal
import sys
import time
import traceback
from typing import Optional, Sequence

from . import common

# Modules in run order, imported lazily so a broken or missing one does not stop the others.
BENCHES: list[str] = [
    "bench_langevin",
    "bench_resample",
    "bench_jarzynski",
    "bench_chain",
    "bench_mlp_chain",
    "bench_conv",
]


class ModuleTimeout(BaseException):
    """A module ran past its time limit. A BaseException, not an Exception: the benchmarks catch
    Exception around each row (a torch.compile failure becomes a row without a time), and a
    TimeoutError caught there let the module run on with no limit (the alarm fires once)."""


def _seconds(text: str) -> float:
    """argparse type of --module-timeout and --deadline: a finite number of seconds > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return v


@contextlib.contextmanager
def _deadline(seconds: Optional[float], what: str):
    """Raise ModuleTimeout in the main thread after ``seconds`` (SIGALRM; Unix). The signal is
    handled between Python bytecodes, so a module stops at its next Python line (a timed GPU
    loop returns to Python every iteration). None: no limit."""
    if not seconds:
        yield
        return

    def on_alarm(signum, frame):
        raise ModuleTimeout(f"{what} ran past its time limit ({seconds:.3g} s)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description="Run the fastlangevin benchmarks.")
    p.add_argument("--quick", action="store_true", help="smallest sizes, few iterations (a smoke run)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if visible, else cpu")
    p.add_argument("--only", nargs="+", metavar="MODULE", choices=BENCHES,
                   help="run only these modules, in the order given")
    p.add_argument("--module-timeout", type=_seconds, default=None, metavar="SECONDS",
                   help="stop a module that runs longer (reported FAILED: timeout) and go on with "
                        "the next, so a time-boxed run (a lent GPU) keeps every module that finished")
    p.add_argument("--deadline", type=_seconds, default=None, metavar="SECONDS",
                   help="wall-clock budget of the whole run: each module gets at most what is left "
                        "(and --module-timeout), modules after it are reported 'not run', and the "
                        "run's JSON holds the modules that finished")
    args = p.parse_args(argv)
    device = args.device or common.default_device()
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA GPU is visible")
    common.steady_allocator()

    summary, payloads = [], []
    t_start = time.perf_counter()
    for mod_name in args.only or BENCHES:
        t0 = time.perf_counter()
        entry = {"module": mod_name, "status": "ok", "rows": None, "seconds": None, "json": None}
        limit = args.module_timeout
        if args.deadline is not None:
            left = args.deadline - (t0 - t_start)
            if left < 1.0:
                entry["status"] = f"not run: --deadline {args.deadline:g} s reached"
                entry["seconds"] = 0.0
                summary.append(entry)
                continue
            limit = left if limit is None else min(limit, left)
        try:
            with _deadline(limit, mod_name):
                mod = importlib.import_module(f"{__package__}.{mod_name}")
                payload = mod.run(device, args.quick)
            mod.report(payload)
            payloads.append(payload)
            path = common.write_results(payload.get("name", getattr(mod, "NAME", mod_name)), payload)
            print(f"\nwrote {path}\n")
            rows = payload.get("rows", [])
            entry["rows"] = len(rows)
            entry["json"] = str(path.relative_to(common.REPO_ROOT)) if path.is_relative_to(common.REPO_ROOT) else str(path)
            # Rows that carry no time (compile failures, skipped backends) are worth a glance.
            missing = sum(1 for r in rows if r.get("time_s") is None)
            if missing:
                entry["status"] = f"ok ({missing} rows without a time)"
        except ModuleTimeout as e:
            entry["status"] = f"FAILED: timeout: {e}"
        except Exception as e:
            traceback.print_exc()
            entry["status"] = f"FAILED: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        entry["seconds"] = time.perf_counter() - t0
        summary.append(entry)

    print("== summary")
    common.print_table(summary, [("module", "module"), ("status", "status"), ("rows", "rows"),
                                 ("seconds", "seconds", ".1f"), ("json", "results")])
    if payloads:
        path = common.write_results("bench" + ("-quick" if args.quick else ""), {
            "name": "bench" + ("-quick" if args.quick else ""), "env": common.env_info(device),
            "summary": summary, "payloads": payloads})
        print(f"\nwrote {path} and {path.with_suffix('.png').name}")
    if not payloads:
        print("\nno module finished (nothing written)")
        return 1
    return 1 if any(e["status"].startswith("FAILED") for e in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
