"""``python -m train demo``: fastlangevin.sample() on the 8-Gaussian mixture, with a picture.

Walkers start uniform in [-3, 3]^2 and run unadjusted Langevin on U = -log p of
models.eight_gaussians() (8 modes on a circle of radius 2, std 0.2). The final walkers are
compared with exact draws from the mixture:

    mode_tv        total variation between the fraction of walkers nearest to each mode and the
                   true weights (1/8 each): 0.5 * sum_k |occ_k - w_k|
    mean_dist_std  mean distance from a walker to its nearest mode, in units of the component std
                   (exact samples: sqrt(pi/2) = 1.25)
    within_3std    fraction of walkers within 3 std of a mode (exact: 1 - exp(-9/2) = 0.989)
    hist_tv        TV between 2-D histograms (24 x 24 bins over [-3, 3]^2, plus one bin for
                   everything outside) of the walkers and of as many exact samples
    mmd2           unbiased MMD^2 against the exact samples, sum of RBF kernels of bandwidths
                   0.1, 0.2, 0.5, 1 (the first 2048 points of each)

The same numbers for an independent exact sample of the same size (`exact` row) give the
finite-sample noise floor of mode_tv, hist_tv and mmd2. Writes DIR/samples.png and DIR/metrics.json.

What the numbers show (seed 0, 4096 walkers, step size 0.01): within a mode the walkers settle
in a few dozen steps, but moving between modes takes crossing a barrier of about 6.6 nats, so the
mode occupancy equilibrates slowly. x0 is not balanced: the basins of the axis modes cover less
of the square [-3, 3]^2 than those of the diagonal modes (the square's corners lie on the
diagonals), about 10.4% vs 14.6% of x0, a mode-occupancy TV of 0.085. After 500 steps (time 5)
the TV is still 0.058; after 2000 (time 20, the default) it is 0.028, near the 0.02 noise floor
of 4096 walkers. The other residual is ULA's own bias: on a Gaussian of std s, ULA with step a
has stationary variance s^2 / (1 - a / (2 s^2)), 14% too large at a = 0.01, s = 0.2, so the mean
distance to the nearest mode is 1.34 std rather than 1.25 (metrics.json: ula_mean_dist_std).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Union

import torch

import fastlangevin as fl
from models import GaussianMixture2D, eight_gaussians, log_density_grid

from .metrics import mmd

HELP = "fastlangevin.sample() on an 8-Gaussian mixture in 2-D; writes samples.png and metrics.json"

INIT_LIM = 3.0  # x0 ~ Uniform([-INIT_LIM, INIT_LIM]^2)
PLOT_LIM = 3.5
HIST_LIM, HIST_BINS = 3.0, 24
MMD_BANDWIDTHS = (0.1, 0.2, 0.5, 1.0)
MMD_MAX_POINTS = 2048  # MMD costs O(n^2): the first 2048 walkers and exact samples

DEFAULTS = dict(out="runs/demo", walkers=4096, steps=2000, step_size=0.01, seed=0, backend="auto", device="cpu")


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------

def ula_mean_dist_std(step_size: float, std: float = 0.2) -> float:
    """Mean distance to the mode, in std, of ULA's stationary law on one isotropic 2-D Gaussian of
    std `std`: x' = (1 - a/s^2) x + sqrt(2a) xi has variance s^2 / (1 - a/(2 s^2)) per axis, and
    the mean radius of a 2-D Gaussian is sqrt(pi/2) times its std. (Exact sampling: a -> 0.)"""
    r = step_size / (2 * std * std)
    if not 0 <= r < 1:
        return math.inf  # ULA is unstable on this Gaussian for a >= 2 s^2
    return math.sqrt(math.pi / 2) / math.sqrt(1 - r)


def _hist(x: torch.Tensor) -> torch.Tensor:
    """Normalised 2-D histogram [HIST_BINS^2 + 1] of x [N, 2]; the last bin is everything outside."""
    idx = torch.floor((x + HIST_LIM) / (2 * HIST_LIM) * HIST_BINS).long()
    inside = ((idx >= 0) & (idx < HIST_BINS)).all(dim=1)
    flat = torch.where(inside, idx[:, 1].clamp(0, HIST_BINS - 1) * HIST_BINS + idx[:, 0].clamp(0, HIST_BINS - 1),
                       HIST_BINS * HIST_BINS)
    return torch.bincount(flat, minlength=HIST_BINS * HIST_BINS + 1).double() / x.shape[0]


@torch.no_grad()
def walker_metrics(target: GaussianMixture2D, x: torch.Tensor, ref: torch.Tensor) -> dict:
    """How well walkers x [N, 2] match the target; ref [M, 2] are exact samples of it."""
    x, ref = x.detach().cpu().double(), ref.detach().cpu().double()
    tgt = copy.deepcopy(target).to("cpu", torch.float64)  # Module.to() works in place: not on the caller's
    idx, dist = tgt.nearest_mode(x)
    occ = torch.bincount(idx, minlength=tgt.n_components).double() / x.shape[0]
    w = tgt.weights
    s = tgt.stds[idx]
    finite = torch.isfinite(x).all(dim=1)
    return {
        "mode_occupancy": occ.tolist(),
        "mode_tv": 0.5 * (occ - w).abs().sum().item(),
        "mean_dist_std": (dist / s).mean().item(),
        "within_3std": (dist <= 3 * s).double().mean().item(),
        "hist_tv": 0.5 * (_hist(x) - _hist(ref)).abs().sum().item(),
        "mmd2": mmd(x[:MMD_MAX_POINTS], ref[:MMD_MAX_POINTS], bandwidths=MMD_BANDWIDTHS),
        "mean_energy": tgt(x[finite]).mean().item(),
    }


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------

def _plot(path: Path, target, x0, x, summary: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, ys, log_p = log_density_grid(target, PLOT_LIM, 300, device=target.means.device)
    dens = log_p.exp().numpy()
    extent = (-PLOT_LIM, PLOT_LIM, -PLOT_LIM, PLOT_LIM)
    levels = dens.max() * torch.tensor([0.011, 0.135, 0.6]).numpy()  # exp(-4.5), exp(-2), ~1 std
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4), constrained_layout=True)
    axes[0].imshow(dens, origin="lower", extent=extent, cmap="viridis", interpolation="bilinear")
    axes[0].set_title("target density p(x) = exp(-U(x))")
    for ax, pts, name, color in ((axes[1], x0, "initial walkers x0", "tab:orange"),
                                 (axes[2], x, "final walkers", "tab:red")):
        ax.contour(xs.numpy(), ys.numpy(), dens, levels=levels, colors="k", linewidths=0.6, alpha=0.7)
        p = pts.detach().cpu().float().numpy()
        ax.scatter(p[:, 0], p[:, 1], s=1.5, alpha=0.4, color=color, linewidths=0)
        ax.set_title(f"{name} (N={p.shape[0]})")
    for ax in axes:
        ax.set_xlim(-PLOT_LIM, PLOT_LIM)
        ax.set_ylim(-PLOT_LIM, PLOT_LIM)
        ax.set_aspect("equal")
    fig.suptitle(summary, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(rows: list[tuple[str, dict]]) -> str:
    cols = [("mode_tv", "mode TV", ".4f"), ("mean_dist_std", "dist/std", ".3f"), ("within_3std", "<=3std", ".3f"),
            ("hist_tv", "hist TV", ".4f"), ("mmd2", "MMD^2", ".2e"), ("mean_energy", "mean U", ".3f")]
    head = f"{'walkers':<18}" + "".join(f"{h:>11}" for _, h, _ in cols)
    lines = [head, "-" * len(head)]
    for name, m in rows:
        lines.append(f"{name:<18}" + "".join(f"{format(m[k], f):>11}" for k, _, f in cols))
    return "\n".join(lines)


def run_demo(
    out: Union[str, os.PathLike] = DEFAULTS["out"],
    walkers: int = DEFAULTS["walkers"],
    steps: int = DEFAULTS["steps"],
    step_size: float = DEFAULTS["step_size"],
    seed: int = DEFAULTS["seed"],
    backend: str = DEFAULTS["backend"],
    device: str = DEFAULTS["device"],
    progress: bool = True,
    verbose: bool = True,
) -> dict:
    """Run the demo; write out/samples.png and out/metrics.json; return the metrics dict."""
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    target = eight_gaussians().to(dev)

    # x0 on the CPU from a seeded generator: the same walkers whatever the device
    gen = torch.Generator().manual_seed(seed)
    x0 = ((torch.rand(walkers, 2, generator=gen) * 2 - 1) * INIT_LIM).to(dev)

    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = fl.sample(target, x0, steps, step_size, seed=seed, progress=progress, backend=backend)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0

    cpu_target = eight_gaussians(dtype=torch.float64)  # for the exact samples, metrics and picture
    ref = cpu_target.sample_exact(walkers, torch.Generator().manual_seed(seed + 1))
    ref2 = cpu_target.sample_exact(walkers, torch.Generator().manual_seed(seed + 2))
    initial = walker_metrics(cpu_target, x0, ref)
    final = walker_metrics(cpu_target, res.x, ref)
    exact = walker_metrics(cpu_target, ref2, ref)

    metrics = {
        "method": "demo",
        "target": "eight_gaussians(radius=2, std=0.2)",
        "n_walkers": walkers,
        "n_steps": steps,
        "step_size": step_size,
        "noise_std": math.sqrt(2 * step_size),
        "seed": seed,
        "backend": res.backend,
        "device": str(dev),
        "seconds": seconds,
        "steps_per_second": steps / seconds if seconds > 0 else None,
        "mode_occupancy_tv": final["mode_tv"],
        "mean_dist_std": final["mean_dist_std"],
        "ula_mean_dist_std": ula_mean_dist_std(step_size),
        "within_3std": final["within_3std"],
        "hist_tv": final["hist_tv"],
        "mmd2": final["mmd2"],
        "true_weights": cpu_target.weights.tolist(),
        "final": final,
        "initial": initial,
        "exact": exact,
        "metric_notes": {
            "mode_tv": "0.5 * sum_k |fraction of walkers nearest mode k - w_k|",
            "mean_dist_std": "mean distance to the nearest mode / component std (exact: sqrt(pi/2) = 1.253)",
            "ula_mean_dist_std": "mean_dist_std of ULA's own stationary law on one mode at this step size "
                                 "(what a fully converged run gives)",
            "within_3std": "fraction within 3 std of a mode (exact: 1 - exp(-4.5) = 0.989)",
            "hist_tv": f"TV of {HIST_BINS}x{HIST_BINS} histograms over [-{HIST_LIM}, {HIST_LIM}]^2 (+1 outside bin) "
                       "vs exact samples (seed + 1)",
            "mmd2": f"unbiased MMD^2 vs exact samples, RBF bandwidths {list(MMD_BANDWIDTHS)}, "
                    f"at most {MMD_MAX_POINTS} points",
            "exact": "the same metrics for an independent exact sample (seed + 2): the finite-sample noise floor",
            "initial": "the same metrics for x0",
        },
    }

    summary = (
        f"fastlangevin.sample on 8 Gaussians: N={walkers}, {steps} steps, step size {step_size:g}, "
        f"backend {res.backend}, {seconds:.2f} s\n"
        f"final walkers vs target: mode-occupancy TV {final['mode_tv']:.3f} (x0 {initial['mode_tv']:.3f}, exact {exact['mode_tv']:.3f}), "
        f"mean dist to mode {final['mean_dist_std']:.2f} std (x0 {initial['mean_dist_std']:.2f}, exact "
        f"{exact['mean_dist_std']:.2f})\nhist TV {final['hist_tv']:.3f} (x0 {initial['hist_tv']:.3f}, exact "
        f"{exact['hist_tv']:.3f}), MMD$^2$ {final['mmd2']:.1e} (exact {exact['mmd2']:.1e})"
    )
    _plot(out / "samples.png", cpu_target, x0, res.x, summary)
    metrics["seconds_total"] = time.perf_counter() - t_start
    with open(out / "metrics.json", "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")

    if verbose:
        print(f"\ndemo: {walkers} walkers, {steps} steps, step size {step_size:g}, backend {res.backend} "
              f"on {dev}: {seconds:.2f} s ({metrics['steps_per_second']:.0f} steps/s)\n")
        print(_table([("initial (x0)", initial), ("final", final), ("exact (noise floor)", exact)]))
        print(f"\nwrote {out / 'samples.png'} and {out / 'metrics.json'}")
    return metrics


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=DEFAULTS["out"], metavar="DIR", help="output directory (default: %(default)s)")
    p.add_argument("--walkers", type=int, default=DEFAULTS["walkers"], help="number of walkers N (default: %(default)s)")
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="Langevin steps (default: %(default)s)")
    p.add_argument("--step-size", type=float, default=DEFAULTS["step_size"],
                   help="step size a; the noise std is sqrt(2a) (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"],
                   help="seed of x0 and of the Langevin noise (default: %(default)s)")
    p.add_argument("--backend", default=DEFAULTS["backend"], choices=("auto",) + fl._backend.BACKENDS,
                   help="fastlangevin backend (default: %(default)s)")
    p.add_argument("--device", default=DEFAULTS["device"],
                   help="torch device of the walkers: cpu, cuda, ... (default: %(default)s)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")

def main(args: argparse.Namespace) -> int:
    if args.walkers < 2:
        raise SystemExit("python -m train demo: --walkers must be >= 2")
    if args.steps < 0:
        raise SystemExit("python -m train demo: --steps must be >= 0")
    run_demo(out=args.out, walkers=args.walkers, steps=args.steps, step_size=args.step_size, seed=args.seed,
             backend=args.backend, device=args.device, progress=args.progress)
    return 0
