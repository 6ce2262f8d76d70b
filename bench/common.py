"""Shared helpers for the benchmark modules: environment record, timer, JSON results, tables.

Nothing here imports fastlangevin at module level (payload() asks it for its backends); the
helpers only need torch (and git, optionally).
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------------------------

def default_device() -> str:
    """"cuda" when a CUDA GPU is visible, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------------------------
# the CPU allocator
# --------------------------------------------------------------------------------------------

# glibc's malloc serves a CPU tensor above its mmap threshold (128 KiB at first, raised by the
# frees it sees, up to 32 MiB) with a fresh mmap, and hands a freed heap top back to the kernel
# above its trim threshold; a loop that allocates a few [10^4, 50] tensors per step then pays
# page faults on every step, how many depending on what the process allocated and freed before
# (an earlier bench module, the warm-up). Measured on the 2-core Zen 4 box, the Carbone GMM's
# eager autograd loop (10^4 x 50, float32), 5 x 200 steps per process, two processes each:
# 6.1 to 8.0 ms a step with glibc's defaults, 4.4 to 5.5 with both thresholds fixed as below,
# 15 to 19 with only the trim threshold set (the mmap threshold then stays at 128 KiB), 6 to 11
# with only the mmap one. In five bench runs of commits ee478aa / 2b384c5 the eager loop
# drifted from 4.2 to 8.3 ms a step between processes, and every "x eager" ratio with it. So
# the bench fixes both thresholds for every method of a run: the baselines stop paying a
# history-dependent cost (the fused paths allocate almost nothing per step; their times do not
# move).
# FASTLANGEVIN_BENCH_MALLOC=system keeps glibc's defaults, to measure what a default process sees.
STEADY_MMAP_THRESHOLD = 32 << 20  # glibc's maximum (HEAP_MAX_SIZE / 2 on 64-bit)
STEADY_TRIM_THRESHOLD = 1 << 30
_allocator = "system default"


def glibc_linux() -> bool:
    """Whether this process runs on Linux with glibc (where mallopt exists)."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def steady_allocator() -> str:
    """Fix glibc malloc's mmap and trim thresholds for this process (see above) unless
    FASTLANGEVIN_BENCH_MALLOC=system; returns (and env_info records) what the allocator is."""
    global _allocator
    if os.environ.get("FASTLANGEVIN_BENCH_MALLOC", "").strip().lower() == "system":
        _allocator = "system default (FASTLANGEVIN_BENCH_MALLOC=system)"
        return _allocator
    if not glibc_linux():
        return _allocator
    import ctypes

    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return _allocator
    if (mallopt(m_mmap_threshold, STEADY_MMAP_THRESHOLD) != 1
            or mallopt(m_trim_threshold, STEADY_TRIM_THRESHOLD) != 1):
        raise RuntimeError("bench: glibc mallopt refused the mmap / trim thresholds")
    _allocator = (f"glibc, mmap threshold {STEADY_MMAP_THRESHOLD >> 20} MiB, "
                  f"trim threshold {STEADY_TRIM_THRESHOLD >> 20} MiB")
    return _allocator


def _cpu_model() -> str:
    """The "model name" line of /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _git(*args: str) -> Optional[str]:
    try:
        r = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def git_commit() -> Optional[str]:
    """Short HEAD hash, with "-dirty" when the work tree has changes (untracked files count:
    a new kernel file not yet added changes what runs). Outside a git checkout:
    $FASTLANGEVIN_COMMIT if set (.ci/gpu sets it from the tree it was sent), else None.

    bench/results/ is left out of the check: the JSON files a run writes there are not code,
    and counting them would mark every run after the first as dirty.
    """
    head = _git("rev-parse", "--short", "HEAD")
    if not head:
        # A copy of the tree without .git (the GPU machine of .ci/gpu): the caller names it.
        return os.environ.get("FASTLANGEVIN_COMMIT") or None
    status = _git("status", "--porcelain", "--", ".", ":(exclude)bench/results")
    dirty = status is not None and status.strip() != ""
    return head.strip() + ("-dirty" if dirty else "")


def env_info(device: Union[str, torch.device, None] = None) -> dict[str, Any]:
    """What the numbers were measured on.

    device: the device the benchmark runs on (default: cuda if visible, else cpu). It picks
    which name is recorded, so a ``--device cpu`` run on a GPU machine names the CPU.
    """
    dev = torch.device(device if device is not None else default_device())
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        # os.cpu_count() counts logical CPUs; the thread count torch uses is recorded separately.
        name = f"{_cpu_model()} ({os.cpu_count()} cores)"
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # ImportError, or a broken install that fails while importing
        triton_version = None
    return {
        "device_type": dev.type,
        "device": name,
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "torch_threads": torch.get_num_threads(),
        "malloc": _allocator,
        # CPU timings on a shared machine are only as good as its idleness: a busy core stalls
        # every OpenMP barrier of a multi-threaded kernel. Recorded so such runs can be spotted.
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def print_env(env: dict[str, Any], file=None) -> None:
    file = file or sys.stdout
    width = max(len(k) for k in env)
    for k, v in env.items():
        print(f"  {k.ljust(width)}  {v}", file=file)


def device_tag(env: dict[str, Any]) -> str:
    """"cpu", or a filename slug of the GPU name ("NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3")."""
    if env.get("device_type", "cpu") == "cpu":
        return "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", str(env.get("device", "gpu")).lower()).strip("-")
    return slug or "gpu"


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(
    fn: Callable[[], Any],
    *,
    warmup: int,
    iters: int,
    device: Union[str, torch.device],
    repeats: int = 5,
) -> float:
    """Median over ``repeats`` of the mean seconds per call of ``fn()`` over ``iters`` calls.

    ``warmup`` untimed calls come first (allocator, caches, lazy init, autotuning). On CUDA a
    repeat is timed with a pair of CUDA events around the ``iters`` launches, so the host launch
    loop overlaps the GPU work as it does in a real sampler loop; on CPU with
    time.perf_counter. The median of repeats discards one-off hiccups (another process, a page
    fault storm) that a single long measurement would average in.
    """
    device = torch.device(device)
    iters, repeats = max(1, int(iters)), max(1, int(repeats))
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / iters)  # elapsed_time is in ms
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            times.append((time.perf_counter() - t0) / iters)
    return statistics.median(times)


def calibrate_iters(
    fn: Callable[[], Any],
    *,
    device: Union[str, torch.device],
    target_s: float,
    max_iters: int = 1000,
) -> int:
    """Calls per repeat so that one repeat lasts about ``target_s``: one timed call (after the
    caller's warmup) sets the count. Sizes span 4 orders of magnitude, so a fixed count would
    either make small sizes noise-dominated or large ones take minutes."""
    device = torch.device(device)
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    dt = max(time.perf_counter() - t0, 1e-7)
    return max(1, min(max_iters, int(target_s / dt)))


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------

def json_safe(obj):
    """NaN/inf are not JSON; write them as null so any JSON reader can load the file."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (torch.dtype, torch.device, torch.Size)):
        return str(obj)
    return obj


def write_results(name: str, payload: dict[str, Any], results_dir: Union[str, Path, None] = None) -> Path:
    """Write ``payload`` as JSON to ``<results_dir>/<name>-<devicetag>-<commit>.json`` and a copy
    to ``<name>-<devicetag>-latest.json`` (a stable path to diff against); returns the first.
    plot_ratios draws its figure beside each, same stem, .png (one panel per payload in
    ``payload["payloads"]`` when there is that key, as in ``python -m bench``'s summary), where
    matplotlib is installed.

    The device tag and commit come from ``payload["env"]`` (see env_info); commit "unknown"
    when git was unavailable. results_dir defaults to bench/results.
    """
    env = payload.get("env") or env_info()
    out_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = device_tag(env)
    commit = env.get("git_commit") or "unknown"
    text = json.dumps(json_safe(payload), indent=2, allow_nan=False) + "\n"
    path = out_dir / f"{name}-{tag}-{commit}.json"
    path.write_text(text)
    (out_dir / f"{name}-{tag}-latest.json").write_text(text)
    # The figure of the same numbers, next to its JSON under the same stem. Without matplotlib
    # (a bare GPU machine's python, .ci/gpu) the JSON stands alone: draw it later with
    # plot_ratios from the JSON.
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"matplotlib is not installed: {path.with_suffix('.png').name} not drawn", file=sys.stderr)
        return path
    plot_ratios(payload.get("payloads") or [payload], path.with_suffix(".png"), env)
    shutil.copyfile(path.with_suffix(".png"), out_dir / f"{name}-{tag}-latest.png")
    return path


def parse_sizes(text: Optional[str]) -> Optional[list[tuple[int, ...]]]:
    """``--sizes`` of a benchmark CLI: "1024x64,4096x784" -> [(1024, 64), (4096, 784)]; None stays None."""
    if not text:
        return None
    return [tuple(int(v) for v in s.lower().split("x")) for s in text.split(",")]


def save_cli_results(payload: dict[str, Any], out_json: Optional[str] = None) -> Path:
    """What a benchmark CLI does after its report: write_results, plus a copy at ``out_json``."""
    path = write_results(payload["name"], payload)
    print(f"\nwrote {path}")
    if out_json:
        Path(out_json).write_text(json.dumps(json_safe(payload), indent=2, allow_nan=False) + "\n")
        print(f"wrote {out_json}")
    return path


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------

Column = Union[str, tuple]


def _fmt(v, fmt: Optional[str]) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return "-"
    if fmt and isinstance(v, (int, float)) and not isinstance(v, bool):
        return format(v, fmt)
    return str(v)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column], file=None) -> str:
    """Print ``rows`` (dicts) as an aligned text table; returns the text.

    columns: each a key, or (key, header) or (key, header, format_spec) with format_spec as in
    format(v, spec), applied to numbers. Missing/None/non-finite values print as "-". Numeric
    columns are right-aligned, others left-aligned.
    """
    cols = []
    for c in columns:
        if isinstance(c, str):
            cols.append((c, c, None))
        else:
            key, header, *rest = c
            cols.append((key, header, rest[0] if rest else None))
    cells = [[_fmt(r.get(k), f) for k, _, f in cols] for r in rows]
    numeric = [
        all(isinstance(r.get(k), (int, float)) or r.get(k) is None for r in rows) and any(r.get(k) is not None for r in rows)
        for k, _, _ in cols
    ]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, (_, h, _) in enumerate(cols)]

    def line(vals):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric)).rstrip()

    out = [line([h for _, h, _ in cols]), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in cells]
    text = "\n".join(out)
    print(text, file=file or sys.stdout)
    return text


def print_report(payload: dict[str, Any], title: str, legend: str, columns: Sequence[Column], file=None) -> str:
    """The shared report layout of every bench module: a title line, the environment, a legend
    line saying how to read the columns, the table, and the backends that did not run.
    Returns the table text."""
    file = file or sys.stdout
    print(f"== {payload['name']}: {title}, device {payload['config']['device']}", file=file)
    print_env(payload["env"], file=file)
    print(f"  {legend}", file=file)
    print(file=file)
    text = print_table(payload["rows"], columns, file=file)
    if payload.get("not_run"):
        print("not run:", file=file)
        for k, why in payload["not_run"].items():
            print(f"  {k}: {why}", file=file)
    return text


def bench_main(argv, *, prog: str, description: str, run, report, sizes_help: str, parse_sizes_fn=None,
               extra_args=None) -> int:
    """The command line every bench module shares: --quick, --device, --sizes, --out-json (plus
    ``extra_args(parser)`` for its own), then run -> report -> write the JSON.

    run(device, quick, sizes=..., verbose=True, **extra) must return the payload; extra holds
    the options extra_args added, by their dest names."""
    import argparse

    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--quick", action="store_true", help="smallest size, few iterations (a smoke run)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if visible, else cpu")
    p.add_argument("--sizes", default=None, help=sizes_help)
    p.add_argument("--out-json", default=None, metavar="PATH",
                   help="also write the results JSON here (it always goes to bench/results/)")
    own = set()
    if extra_args is not None:
        before = {a.dest for a in p._actions}
        extra_args(p)
        own = {a.dest for a in p._actions} - before
    args = p.parse_args(argv)
    device = args.device or default_device()
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU is visible")
    steady_allocator()
    sizes = (parse_sizes_fn or parse_sizes)(args.sizes)
    payload = run(device, args.quick, sizes=sizes, verbose=True, **{k: getattr(args, k) for k in own})
    report(payload)
    save_cli_results(payload, args.out_json)
    return 0


def timer_note(device: torch.device) -> str:
    """How time_fn's numbers were taken, for a payload's config (one wording for every bench)."""
    return "median over repeats (interleaved across methods) of mean per-call time; " + (
        "CUDA events" if device.type == "cuda" else "time.perf_counter")


# --------------------------------------------------------------------------------------------
# plot
# --------------------------------------------------------------------------------------------

# The ratio each benchmark plots, first found in its rows: speed-up over its baseline, or for
# bench_jarzynski the weighted / step time ratio (lower is better there).
RATIO_KEYS = (("vs_eager", "x eager (eager time / method time)"),
              ("vs_multinomial", "x torch.multinomial (its time / method time)"),
              ("ratio", "weighted step / step time (lower is better)"))


def _row_label(r: dict[str, Any]) -> str:
    return "  ".join(str(r[k]) for k in ("size", "n", "scheme", "method") if r.get(k) is not None)


def plot_ratios(payloads: Sequence[dict[str, Any]], path: Union[str, Path], env: Optional[dict[str, Any]] = None) -> Path:
    """Draw the ratios of ``payloads`` (bench module payloads) as horizontal bars, one panel per
    payload, one bar per row (its size and method), log x axis with a line at 1, to ``path``
    (PNG). Rows without the ratio (not run, not measured) are listed with "n/a" and no bar;
    nothing is drawn for them. The title names the device, torch version and commit.
    Matplotlib's Agg canvas, without pyplot: no display and no global figure state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    env = env or payloads[0].get("env") or {}
    panels = []
    for p in payloads:
        rows = p.get("rows") or []
        key, label = next(((k, lab) for k, lab in RATIO_KEYS if any(r.get(k) is not None for r in rows)),
                          ("vs_eager", RATIO_KEYS[0][1]))
        panels.append((p.get("name", "?"), key, label, rows))
    heights = [max(1.5, 0.22 * len(rows) + 0.9) for *_, rows in panels]
    fig = Figure(figsize=(9, sum(heights) + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (name, key, label, rows) in zip(axes, panels):
        ys = list(range(len(rows)))[::-1]
        vals = [r.get(key) for r in rows]
        good = [(y, v) for y, v in zip(ys, vals) if v is not None and math.isfinite(v) and v > 0]
        if good:
            ax.barh([y for y, _ in good], [v for _, v in good], color="tab:blue", height=0.7)
            for y, v in good:
                ax.text(v, y, f" {v:.2f}", va="center", fontsize=7)
            lo = min(min(v for _, v in good), 1.0)
            hi = max(max(v for _, v in good), 1.0)
            ax.set_xscale("log")
            ax.set_xlim(lo / 1.5, hi * 2.0)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        for y, v in zip(ys, vals):
            if not (v is not None and math.isfinite(v) and v > 0):
                ax.text(0.01, y, "n/a (see JSON note)", transform=ax.get_yaxis_transform(), va="center",
                        fontsize=7, color="gray")
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set_yticks(ys)
        ax.set_yticklabels([_row_label(r) for r in rows], fontsize=7)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_title(name, fontsize=9, loc="left")
        ax.set_xlabel(label, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"fastlangevin bench: {env.get('device', '?')}, torch {env.get('torch', '?')}, "
                 f"commit {env.get('git_commit') or 'unknown'}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def payload(name: str, dev: torch.device, quick: bool, *, env: dict[str, Any], sizes, settings: dict,
            rows: list, not_run: dict[str, str], **config: Any) -> dict[str, Any]:
    """The results payload every bench module's run() returns: name (+ "-quick"), env, config
    (device, quick, the module's own entries in order, sizes, timing, timer), the
    fastlangevin backends, not_run and rows."""
    import fastlangevin

    return {
        "name": name + ("-quick" if quick else ""),
        "env": env,
        "config": {"device": str(dev), "quick": quick, **config,
                   "sizes": [list(s) if isinstance(s, (list, tuple)) else s for s in sizes],
                   "timing": settings, "timer": timer_note(dev)},
        "backends": fastlangevin.backends(),
        "not_run": not_run,
        "rows": rows,
    }
