"""The harness every trainer shares: command line, run folder, logging, checkpoints, resume.

A run folder DIR holds

    config.json         the resolved settings (method, data, preset, every hyperparameter)
    metrics.jsonl       one JSON line per logged iteration ({"iter": i, "loss": ..., ...})
    metrics.json        the final summary (the method's evaluation, time, iterations)
    checkpoint.pt       the whole training state; written atomically (temp file, fsync, rename)
    *.png               samples, energy landscape (2-D data), weight traces (weighted methods)

Resuming (``--resume``) restores the model, optimiser, sampler state (walkers with their Philox
offset, or the replay buffer), the trainer's torch.Generator and torch's global RNG, and cuts
metrics.jsonl back to the checkpoint, so a resumed run continues exactly where the checkpoint
left it: on CPU the final parameters equal an uninterrupted run's bit for bit (tested). Ctrl-C
(SIGINT) writes a checkpoint at the last completed iteration before exiting (status 130).
Divergence (a non-finite loss, or fastlangevin.NonFiniteError from the sampler) is reported
with its iteration; the run stops with exit status 3 and its last good checkpoint untouched.

A trainer is a class with

    Trainer(args, data, device)          build models, optimiser, sampler from args / presets
    settings() -> dict                   the resolved hyperparameters (goes to config.json)
    step(it) -> dict                     one training iteration; scalars (floats or 0-d tensors)
    log_extra() -> dict                  (optional) costlier numbers, computed on logged iterations only
    evaluate() -> dict                   the final metrics (JSON-ready)
    pictures(out, history) -> list       PNG paths; history: the logged series from metrics.jsonl
    state_dict() / load_state_dict(sd)   everything step() depends on
    bar = ("loss", "ess")                the logged keys shown on the tqdm bar
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

from fastlangevin import NonFiniteError

CHECKPOINT = "checkpoint.pt"
# Settings that must match for --resume to continue a run (the rest, e.g. --iters, may change:
# resuming with a larger --iters extends a finished run).
RESUME_KEYS = ("method", "data", "preset", "seed", "model")


class Diverged(RuntimeError):
    """Training produced a non-finite loss or energy; carries the iteration."""

    def __init__(self, it: int, reason: str):
        super().__init__(f"diverged at iteration {it}: {reason}")
        self.it, self.reason = it, reason


def add_common_arguments(parser: argparse.ArgumentParser, *, datasets, default_data: str) -> None:
    g = parser.add_argument_group("common options (every method)")
    g.add_argument("--data", default=default_data, choices=datasets, help="data set (default %(default)s)")
    g.add_argument("--data-dir", default=None, help="folder holding the mnist / cifar10 files (no download)")
    g.add_argument("--iters", type=int, default=None, help="training iterations (default: the preset's)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--preset", default="paper", choices=("paper", "code"),
                   help="paper: the paper's equations; code: the official code's departures (see docs)")
    g.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    g.add_argument("--out", required=True, help="run folder (created)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument("--log-every", type=int, default=None, help="iterations between metrics.jsonl lines")
    g.add_argument("--ckpt-every", type=int, default=None, help="iterations between checkpoints")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    g.add_argument("--no-pictures", action="store_true", help="skip the PNGs (tests)")
    # Tests use this to simulate a Ctrl-C after a given iteration (the SIGINT path, exactly).
    g.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="stop training after this much training time (then evaluate as usual); "
                        "for comparisons at equal wall-clock budget")
    g.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)


def atomic_write_bytes(path: Path, write) -> None:
    """Write through ``write(file_object)`` into a temp file beside ``path``, fsync, rename: a
    crash leaves either the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2, default=_jsonable) + "\n").encode()))


def _jsonable(v):
    if torch.is_tensor(v):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON-serialisable: {type(v).__name__}")


def _scalar(v) -> Optional[float]:
    if v is None:
        return None
    return float(v.item() if torch.is_tensor(v) else v)


def read_history(path: Path) -> dict[str, list]:
    """metrics.jsonl -> {"iter": [...], key: [...]} (missing values as NaN)."""
    rows = []
    if Path(path).exists():
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    keys = sorted({k for r in rows for k in r})
    return {k: [r.get(k, math.nan) if r.get(k) is not None else math.nan for r in rows] for k in keys}


def _truncate_jsonl(path: Path, before: int) -> None:
    """Keep only the lines of iterations < before (a resumed run re-logs the rest)."""
    if not path.exists():
        return
    with open(path) as f:
        keep = [line for line in f if line.strip() and json.loads(line)["iter"] < before]
    atomic_write_bytes(path, lambda f: f.write("".join(keep).encode()))


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible (torch.cuda.is_available() is False)")
    return torch.device(name)


def run(method: str, trainer_cls, args, *, load_data) -> int:
    """Train ``trainer_cls`` as described in the module docstring. Returns the exit status."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, jsonl = out / CHECKPOINT, out / "metrics.jsonl"
    device = _device(args.device)
    torch.manual_seed(args.seed)
    data = load_data(args)
    trainer = trainer_cls(args, data, device)
    config = {"method": method, "data": args.data, "preset": args.preset, "seed": args.seed,
              "model": getattr(trainer, "model_name", None), "device": args.device,
              "iters": trainer.iters, **trainer.settings()}

    start, elapsed = 0, 0.0
    if args.resume:
        if not ckpt_path.exists():
            raise SystemExit(f"--resume: no checkpoint at {ckpt_path}")
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        for k in RESUME_KEYS:
            if ck["config"].get(k) != config.get(k):
                raise SystemExit(f"--resume: {k} is {config.get(k)!r} but the checkpoint in {out} was "
                                 f"made with {ck['config'].get(k)!r}")
        trainer.load_state_dict(ck["trainer"])
        torch.set_rng_state(ck["torch_rng"])
        start, elapsed = ck["iter"], ck["elapsed"]
        _truncate_jsonl(jsonl, start)
        print(f"resuming {out} at iteration {start}", file=sys.stderr)
    else:
        if ckpt_path.exists():
            raise SystemExit(f"{out} already holds a run ({CHECKPOINT}); pass --resume to continue it "
                             "or choose another --out")
        if jsonl.exists():
            jsonl.unlink()
    atomic_write_json(out / "config.json", config)

    def save(it: int) -> None:
        state = {"iter": it, "elapsed": elapsed + (time.perf_counter() - t0), "config": config,
                 "trainer": trainer.state_dict(), "torch_rng": torch.get_rng_state()}
        atomic_write_bytes(ckpt_path, lambda f: torch.save(state, f))

    log_every = args.log_every or max(1, trainer.iters // 200)
    ckpt_every = args.ckpt_every or max(1, trainer.iters // 10)
    bar_keys = getattr(trainer, "bar", ("loss",))
    t0 = time.perf_counter()
    iters = range(start, trainer.iters)
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(iters, desc=f"{method} {args.data}", unit="it", initial=start, total=trainer.iters)
        iters = bar
    stop = _StopFlag()
    budget = getattr(args, "time_budget", None)
    done = trainer.iters
    try:
        with stop, open(jsonl, "a") as log:
            for it in iters:
                try:
                    m = trainer.step(it)
                except NonFiniteError as e:
                    raise Diverged(it, str(e)) from e
                loss = _scalar(m.get("loss"))
                if loss is not None and not math.isfinite(loss):
                    raise Diverged(it, f"loss is {loss}")
                if it % log_every == 0 or it == trainer.iters - 1:
                    extra = trainer.log_extra() if hasattr(trainer, "log_extra") else {}
                    row = {"iter": it, **{k: _scalar(v) for k, v in {**m, **extra}.items()}}
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    if bar is not None:
                        bar.set_postfix({k: f"{row[k]:.4g}" for k in bar_keys if row.get(k) is not None})
                if args.stop_after is not None and it + 1 >= args.stop_after:
                    stop.set()  # the test hook: exactly the Ctrl-C path below
                if stop.requested:
                    save(it + 1)
                    print(f"\ninterrupted: checkpoint at iteration {it + 1} in {ckpt_path}; "
                          "continue with --resume", file=sys.stderr)
                    return 130
                if (it + 1) % ckpt_every == 0:
                    save(it + 1)
                if budget is not None and elapsed + (time.perf_counter() - t0) >= budget:
                    done = it + 1
                    break
    except Diverged as e:
        last = torch.load(ckpt_path, weights_only=False)["iter"] if ckpt_path.exists() else None
        atomic_write_json(out / "metrics.json", {"diverged": {"iter": e.it, "reason": e.reason},
                                                 "last_checkpoint_iter": last})
        print(f"\n{method}: training {e}; the last good checkpoint (iteration {last}) is kept in {ckpt_path}",
              file=sys.stderr)
        return 3
    finally:
        if bar is not None:
            bar.close()
    save(done)
    train_seconds = elapsed + (time.perf_counter() - t0)
    metrics = {"method": method, "data": args.data, "preset": args.preset, "iters": done,
               "train_seconds": round(train_seconds, 2), **trainer.evaluate()}
    atomic_write_json(out / "metrics.json", metrics)
    if not args.no_pictures:
        metrics["pictures"] = [str(p) for p in trainer.pictures(out, read_history(jsonl))]
        atomic_write_json(out / "metrics.json", metrics)
    print(json.dumps({k: v for k, v in metrics.items() if k != "pictures"}, default=_jsonable))
    return 0


class _StopFlag:
    """While active, the first Ctrl-C only asks the loop to stop after the iteration in progress
    (which then writes a checkpoint: a half-done iteration is never saved); a second Ctrl-C
    interrupts at once, as usual."""

    def __init__(self):
        self.requested = False

    def set(self) -> None:
        self.requested = True

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping after this iteration and writing a checkpoint (again to abort now)",
              file=sys.stderr)

    def __enter__(self):
        self._old = None
        try:
            self._old = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: leave the default handler
            pass
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False
