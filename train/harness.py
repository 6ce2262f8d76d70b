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
(SIGINT), or SIGTERM, writes a checkpoint at the last completed iteration before exiting (status
130, or 143).
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
# The config.json entries that --resume lets differ from the checkpoint's: a larger --iters
# extends a finished run, --device moves it, --data-dir finds the same files elsewhere. Every
# other setting must match: the checkpoint's optimiser, buffers and models were made with the
# old values (an optimiser's state_dict even restores the old learning rate), so a new value
# would be ignored, or applied half-way, while config.json recorded it.
RESUME_MAY_CHANGE = ("iters", "device", "data_dir")


def _typed(name: str, convert, ok, what: str):
    """An argparse type: convert, then refuse values outside the domain with 'must be <what>'."""
    def parse(text: str):
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return v
    parse.__name__ = name
    return parse


POSITIVE_INT = _typed("positive_int", int, lambda v: v >= 1, "an int >= 1")
NONNEG_INT = _typed("nonneg_int", int, lambda v: v >= 0, "an int >= 0")
POSITIVE_FLOAT = _typed("positive_float", float, lambda v: math.isfinite(v) and v > 0, "a finite float > 0")
NONNEG_FLOAT = _typed("nonneg_float", float, lambda v: math.isfinite(v) and v >= 0, "a finite float >= 0")
UNIT_FLOAT = _typed("unit_float", float, lambda v: 0.0 <= v <= 1.0, "a float in [0, 1]")
# The domain of every numeric trainer option (train/ebm.py and train/teaching.py take their
# argparse types from here), so a bad value is a usage error naming the option, not a math
# domain error or a ZeroDivisionError some iterations in.
OPTION_TYPES = {
    **dict.fromkeys(("n_walkers", "batch", "k_steps", "reset_every", "ais_walkers", "ais_steps", "hidden",
                     "latent", "gen_hidden", "k_x", "k_z", "eval_n"), POSITIVE_INT),
    # neg_batch 0: every walker (the GMM presets); batch 0 (the whole set) only for train/ebm.py
    **dict.fromkeys(("burn_in", "neg_batch"), NONNEG_INT),
    **dict.fromkeys(("step_size", "lr", "lr_z", "ref_var", "step_x", "temperature", "lr_ebm", "lr_gen", "lr_inf",
                     "sigma", "step_z", "explode"), POSITIVE_FLOAT),
    **dict.fromkeys(("noise_std", "l2", "cv2", "noise_x", "kl_weight", "noise_z", "w_gen_teach", "w_inf_teach"),
                    NONNEG_FLOAT),
    **dict.fromkeys(("reinit", "ess_threshold"), UNIT_FLOAT),
}


class Diverged(RuntimeError):
    """Training produced a non-finite loss or energy; carries the iteration."""

    def __init__(self, it: int, reason: str):
        super().__init__(f"diverged at iteration {it}: {reason}")
        self.it, self.reason = it, reason


def add_common_arguments(parser: argparse.ArgumentParser, *, datasets, default_data: str) -> None:
    g = parser.add_argument_group("common options (every method)")
    g.add_argument("--data", default=default_data, choices=datasets, help="data set (default %(default)s)")
    g.add_argument("--data-dir", default=None, help="folder holding the mnist / cifar10 files (no download)")
    g.add_argument("--iters", type=POSITIVE_INT, default=None, help="training iterations (default: the preset's)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--preset", default="paper", choices=("paper", "code"),
                   help="paper: the paper's equations; code: the official code's departures (see docs)")
    g.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    g.add_argument("--out", required=True, help="run folder (created)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument("--log-every", type=POSITIVE_INT, default=None, help="iterations between metrics.jsonl lines")
    g.add_argument("--ckpt-every", type=POSITIVE_INT, default=None, help="iterations between checkpoints")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    g.add_argument("--no-pictures", action="store_true", help="skip the PNGs (tests)")
    # Tests use this to simulate a Ctrl-C after a given iteration (the SIGINT path, exactly).
    g.add_argument("--time-budget", type=POSITIVE_FLOAT, default=None, metavar="SECONDS",
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
    # the rename itself is durable only once the folder's entry is on disk
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        rows = [row for _, row in _json_rows(path)]
    keys = sorted({k for r in rows for k in r})
    return {k: [r.get(k, math.nan) if r.get(k) is not None else math.nan for r in rows] for k in keys}


def _json_rows(path: Path) -> list[tuple[str, dict]]:
    """The (line, row) pairs of metrics.jsonl. The file is appended line by line without an
    fsync, so a crash can leave a torn last line: that one is dropped (with a note), so a
    resume is never locked out by it; a bad line before the last is corruption, an error."""
    with open(path) as f:
        lines = [line if line.endswith("\n") else line + "\n" for line in f if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append((line, json.loads(line)))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise SystemExit(f"{path}: line {i + 1} is not JSON (the file is damaged)") from None
            print(f"{path}: dropping a torn last line (a crash while logging)", file=sys.stderr)
    return rows


def _truncate_jsonl(path: Path, before: int) -> None:
    """Keep only the lines of iterations < before (a resumed run re-logs the rest)."""
    if not path.exists():
        return
    keep = [line for line, row in _json_rows(path) if row["iter"] < before]
    atomic_write_bytes(path, lambda f: f.write("".join(keep).encode()))


def _load_checkpoint(path: Path) -> dict:
    """The checkpoint as saved (on the CPU: its RNG states must stay CPU ByteTensors, and each
    trainer's load_state_dict copies tensors to its own device), or a clear exit."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a torn, truncated or foreign file: torch raises pickle, zip or OS errors
        raise SystemExit(f"--resume: cannot read the checkpoint {path} ({type(e).__name__}: {e}); it is damaged "
                         "or not a checkpoint of this harness: start a new --out") from None
    if not (isinstance(ck, dict) and {"iter", "elapsed", "config", "trainer", "torch_rng"} <= set(ck)):
        raise SystemExit(f"--resume: {path} is not a checkpoint of this harness (keys missing): start a new --out")
    return ck


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible (torch.cuda.is_available() is False)")
    return torch.device(name)


def run(method: str, trainer_cls, args, *, load_data) -> int:
    """Train ``trainer_cls`` as described in the module docstring. Returns the exit status."""
    out = Path(args.out)
    ckpt_path, jsonl = out / CHECKPOINT, out / "metrics.jsonl"
    if args.resume and not ckpt_path.exists():
        raise SystemExit(f"--resume: no checkpoint at {ckpt_path}")
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out {out} is a file, not a run folder")
    device = _device(args.device)
    torch.manual_seed(args.seed)
    try:
        data = load_data(args)
    except (FileNotFoundError, OSError) as e:  # absent or unreadable data files
        raise SystemExit(f"--data {args.data}: {e}") from None
    except ValueError as e:
        if args.data not in ("mnist", "cifar10"):  # the local-file loaders' damaged-file errors name the file
            raise
        raise SystemExit(f"--data {args.data}: {e}") from None
    trainer = trainer_cls(args, data, device)
    out.mkdir(parents=True, exist_ok=True)  # only once the data and the trainer exist
    config = {"method": method, "data": args.data, "preset": args.preset, "seed": args.seed,
              "model": getattr(trainer, "model_name", None), "device": args.device,
              "iters": trainer.iters, "n_train": getattr(args, "n_train", None),
              "data_dir": getattr(args, "data_dir", None), **trainer.settings()}

    start, elapsed = 0, 0.0
    if args.resume:
        if not ckpt_path.exists():
            raise SystemExit(f"--resume: no checkpoint at {ckpt_path}")
        ck = _load_checkpoint(ckpt_path)
        old = json.loads(json.dumps(ck["config"], default=_jsonable))
        new = json.loads(json.dumps(config, default=_jsonable))
        differ = [k for k in sorted(set(old) | set(new)) if k not in RESUME_MAY_CHANGE and old.get(k) != new.get(k)]
        if differ:
            listed = "; ".join(f"{k} {new.get(k)!r} (checkpoint: {old.get(k)!r})" for k in differ)
            raise SystemExit(f"--resume: settings differ from the checkpoint's in {out}: {listed}. A resumed run "
                             "continues with the settings it was made with (only --iters, --device and --data-dir "
                             "may change): drop those options, or start a new --out")
        if ck["iter"] > trainer.iters:
            raise SystemExit(f"--resume: the checkpoint in {out} is at iteration {ck['iter']}, past --iters "
                             f"{trainer.iters}: give --iters {ck['iter']} or more")
        trainer.load_state_dict(ck["trainer"])
        torch.set_rng_state(ck["torch_rng"])
        start, elapsed = ck["iter"], ck["elapsed"]
        _truncate_jsonl(jsonl, start)
        if start < trainer.iters:  # an extension: the old summary no longer describes the run
            (out / "metrics.json").unlink(missing_ok=True)
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
                    return stop.status
                if (it + 1) % ckpt_every == 0:
                    save(it + 1)
                if budget is not None and elapsed + (time.perf_counter() - t0) >= budget:
                    done = it + 1
                    break
    except Diverged as e:
        last = torch.load(ckpt_path, map_location="cpu", weights_only=False)["iter"] if ckpt_path.exists() else None
        atomic_write_json(out / "metrics.json", {"diverged": {"iter": e.it, "reason": e.reason},
                                                 "last_checkpoint_iter": last})
        kept = (f"the last good checkpoint (iteration {last}) is kept in {ckpt_path}" if last is not None
                else "no checkpoint had been written yet")
        print(f"\n{method}: training {e}; {kept}", file=sys.stderr)
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
    """While active, the first Ctrl-C (SIGINT) or SIGTERM (what a batch scheduler or `kill` sends
    before it kills) only asks the loop to stop after the iteration in progress (which then
    writes a checkpoint: a half-done iteration is never saved); a second one interrupts at
    once, as usual. ``status``: the exit status of the stop, 128 + the signal (130 for SIGINT,
    also for the --stop-after test hook; 143 for SIGTERM)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.status = 128 + signal.SIGINT

    def set(self) -> None:
        self.requested = True

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.status = 128 + signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{name}: stopping after this iteration and writing a checkpoint (again to abort now)",
              file=sys.stderr)

    def __enter__(self):
        self._old = {}
        for sig in self.SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: leave the default handlers
                break
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False
