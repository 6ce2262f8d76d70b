"""``python -m train compare``: comparisons end to end, each with one table.

Default: the Jarzynski paper's comparison. Runs jarzynski, pcd and cd on the paper's GMM teacher
(d = 50, masses 1/4 : 3/4) and then on scikit-learn's 8x8 digits, each in its own run folder
under --out (config.json, metrics.jsonl, metrics.json, checkpoint, pictures), and prints /
writes the table (DIR/table.md, DIR/results.json).

    --scale small   (default) a few minutes on a 2-core CPU: GMM with 2000 data points and
                    walkers, 4x the paper's learning rates and 1000 iterations; digits 1000
                    iterations. The qualitative result is the paper's.
    --scale paper   the paper's GMM settings (10^4 walkers and points, 8000 iterations) and
                    digits at 3000 iterations.

``--teaching``: the two MCMC-teaching trainers (coopvae, dualmcmc) at their default settings on
rings, 8gaussians and digits (or --data), one table of the initialiser's MMD^2 next to the
EBM-refined samples' (the papers' claim: refined < init), with the EBM's grid KL / TV (2-D) or
AIS test log-likelihood (digits); each run folder keeps its samples.png (initialiser, refined,
data side by side).

``--budget SECONDS``: every method (default: pcd, jarzynski, coopvae, dualmcmc) on every --data
set (default: digits) with the same wall-clock training budget (--time-budget; the iteration
count is whatever fits), then one table of iterations done, time, MMD^2 to held-out data and,
on images, the AIS test log-likelihood.

A run folder that already holds a finished run is reused (its metrics.json is read), so an
interrupted comparison continues where it stopped; --fresh starts over. Each folder records
the command that made it (compare.json): a folder made with other settings (another seed,
preset, scale or budget) is refused, not reused; one without compare.json (placed there by
hand) is taken as it is, with a note.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from . import harness

HELP = "comparison tables: jarzynski vs pcd vs cd as in the paper (GMM, digits), or all methods at equal time"

PAPER_METHODS = ("jarzynski", "pcd", "cd")
BUDGET_METHODS = ("pcd", "jarzynski", "coopvae", "dualmcmc")
TEACHING_METHODS = ("coopvae", "dualmcmc")
TEACHING_DATA = ("rings", "8gaussians", "digits")
SCALES = {
    "small": {
        "gmm": ["--n-train", "2000", "--n-walkers", "2000", "--lr", "0.01", "--lr-z", "0.05", "--iters", "1000"],
        "gmm_cd": ["--n-train", "2000", "--n-walkers", "2000", "--lr", "0.1", "--lr-z", "0.5", "--iters", "1000"],
        "digits": ["--iters", "1000"],
    },
    "paper": {"gmm": [], "gmm_cd": [], "digits": ["--iters", "3000"]},
}
BUDGET_ITERS = "1000000"  # "until the budget runs out"


def add_arguments(parser) -> None:
    from .__main__ import METHODS
    from .data import DATASETS

    methods = tuple(m for m in METHODS if m not in ("demo", "compare"))
    parser.add_argument("--out", default="runs/compare", help="folder for the runs and the table")
    parser.add_argument("--scale", default="small", choices=tuple(SCALES))
    parser.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help="equal wall-clock training budget per run (the all-methods table)")
    parser.add_argument("--teaching", action="store_true",
                        help="coopvae and dualmcmc at their defaults on rings, 8gaussians, digits: mmd_init vs mmd_refined")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="paper", choices=("paper", "code"))
    parser.add_argument("--data", nargs="+", default=None, choices=DATASETS,
                        help="default: gmm digits (paper table), digits (--budget)")
    parser.add_argument("--methods", nargs="+", default=None, choices=methods,
                        help=f"default: {' '.join(PAPER_METHODS)} (paper table), {' '.join(BUDGET_METHODS)} (--budget)")
    parser.add_argument("--fresh", action="store_true", help="delete earlier runs in --out first")
    parser.add_argument("--no-progress", action="store_true")


def _fmt(v, spec=".3f") -> str:
    return "" if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
    """Markdown tables of the runs' metrics.json: GMM rows and the other data sets' rows have
    their own columns."""
    lines = []
    gmm = [r for r in rows if r["data"] == "gmm"]
    if gmm:
        lines += ["| GMM (teacher 0.25 : 0.75) | mass on -10 e1 : 6 e1 | KL(teacher \\|\\| student) | "
                  "exact CE | Jarzynski CE estimate | iterations | train s |", "|---|---|---|---|---|---|---|"]
        for r in gmm:
            w = r["mode_weights"]
            lines.append(f"| {r['method']} | {w[0]:.3f} : {w[1]:.3f} | {_fmt(r['kl'])} | {_fmt(r['ce_exact_train'], '.2f')} | "
                         f"{_fmt(r.get('ce_estimate'), '.2f')} | {r['iters']} | {r['train_seconds']:.0f} |")
    for data in dict.fromkeys(r["data"] for r in rows if r["data"] != "gmm"):
        sub = [r for r in rows if r["data"] == data]
        has_ll = any("test_ll" in r for r in sub)
        has_grid = any("tv" in r for r in sub)
        has_init = any("mmd_init" in r for r in sub)
        if lines:
            lines.append("")
        head = f"| {data} |" + (" initialiser's MMD^2 | EBM samples' MMD^2 |" if has_init else " MMD^2 to test |")
        if has_ll:
            head += " AIS test log-lik. (nats/example) | diagonal Gaussian |"
        if has_grid:
            head += " KL(data \\|\\| model), grid | TV, grid |"
        n_cols = head.count("|") - head.count("\\|") + 1  # escaped pipes are text, not separators
        lines += [head + " iterations | train s |", "|---" * n_cols + "|"]
        for r in sub:
            line = f"| {r['method']} |" + (f" {_fmt(r.get('mmd_init'), '.5f')} |" if has_init else "")
            line += f" {r['mmd']:.5f} |" if has_init else f" {r['mmd']:.4f} |"
            if has_ll:
                ll = f"{r['test_ll']:.2f} ± {r['test_ll_se']:.2f}" if "test_ll" in r else ""
                line += f" {ll} | {_fmt(r.get('diag_gaussian_test_ll'), '.2f')} |"
            if has_grid:
                line += f" {_fmt(r.get('kl'))} | {_fmt(r.get('tv'))} |"
            lines.append(line + f" {r['iters']} | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def mode_weight_picture(out: Path, methods) -> Path:
    """gmm_mode_weights.png: each method's student mass on the mode at -10 e1 (the teacher's
    0.25) against the iteration, from the runs' metrics.jsonl, in one panel."""
    from . import plots

    hist = {m: harness.read_history(out / f"gmm-{m}" / "metrics.jsonl") for m in methods}
    series = {m: h["mode_weight_0"] for m, h in hist.items() if "mode_weight_0" in h}
    # each run on its own logged iterations (runs at equal time log different counts); the
    # teacher's line over the longest
    x = {m: hist[m].get("iter") for m in series}
    longest = max(x.values(), key=lambda v: len(v or []), default=None) or []
    series["teacher (0.25)"], x["teacher (0.25)"] = [0.25] * len(longest), longest
    return plots.save_traces(out / "gmm_mode_weights.png", series, x=x,
                             overlay={"student mass on the -10 e1 mode": tuple(series)},
                             title="GMM teacher 0.25 : 0.75, d = 50")


def _run_one(train_main, out: Path, data: str, method: str, extra: list, args) -> dict:
    run_dir = out / f"{data}-{method}"
    done = run_dir / "metrics.json"
    argv = [method, "--data", data, "--seed", str(args.seed), "--preset", args.preset, *extra, "--out", str(run_dir)]
    # The command a run folder was made by: a folder is reused (finished) or resumed (interrupted)
    # only for the same command, so a table never mixes in a run of other settings.
    # (A folder without compare.json was put there by hand, e.g. a smaller run standing in for
    # the default one: it is taken as it is, with a note.)
    made_by = run_dir / "compare.json"
    if made_by.exists():
        before = json.loads(made_by.read_text())
        if before != argv:
            raise SystemExit(f"[compare] {run_dir} holds a run made by {' '.join(before)}, not by this comparison's "
                             f"{' '.join(argv)}: pass --fresh to start over, or choose another --out")
    elif done.exists():
        print(f"[compare] {run_dir}: no compare.json (not made by compare): taking its run as it is", file=sys.stderr)
    if done.exists() and "diverged" not in (m := json.loads(done.read_text())):
        print(f"[compare] {run_dir}: finished earlier, reusing its metrics.json", file=sys.stderr)
        return m
    run_dir.mkdir(parents=True, exist_ok=True)
    harness.atomic_write_json(made_by, argv)
    if (run_dir / harness.CHECKPOINT).exists():
        argv = argv + ["--resume"]
    if args.no_progress:
        argv.append("--no-progress")
    print(f"[compare] python -m train {' '.join(argv)}", file=sys.stderr)
    status = train_main(argv)
    if status != 0:
        raise SystemExit(f"[compare] {method} on {data} exited with status {status}")
    return json.loads(done.read_text())


def main(args) -> int:
    from .__main__ import main as train_main

    out = Path(args.out)
    if args.fresh and out.exists():
        # Only a folder this command made: --fresh with a mistyped --out must not delete anything else.
        ours = {"table.md", "results.json", "gmm_mode_weights.png"}
        foreign = [p.name for p in out.iterdir() if p.name not in ours and not (p / "compare.json").exists()
                   and not (p / "metrics.json").exists() and not (p / harness.CHECKPOINT).exists()]
        if not out.is_dir() or foreign:
            raise SystemExit(f"--fresh: {out} holds {sorted(foreign)[:5] or 'a file'}, not only comparison runs; "
                             "refusing to delete it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.teaching and args.budget is not None:
        raise SystemExit("--teaching and --budget are two different tables; pass one")
    if args.teaching:
        for data in args.data or TEACHING_DATA:
            for method in args.methods or TEACHING_METHODS:
                if method not in TEACHING_METHODS:
                    raise SystemExit(f"--teaching runs {' and '.join(TEACHING_METHODS)}, not {method!r}")
                rows.append(_run_one(train_main, out, data, method, ["--log-every", "10"], args))
    elif args.budget is not None:
        if args.budget <= 0:
            raise SystemExit(f"--budget must be > 0 seconds, got {args.budget}")
        extra = ["--iters", BUDGET_ITERS, "--time-budget", str(args.budget), "--log-every", "10",
                 "--ckpt-every", "200"]
        for data in args.data or ["digits"]:
            for method in args.methods or BUDGET_METHODS:
                rows.append(_run_one(train_main, out, data, method, extra, args))
    else:
        scale = SCALES[args.scale]
        for data in args.data or ["gmm", "digits"]:
            if data not in ("gmm", "digits"):
                raise SystemExit(f"the paper table runs on gmm and digits; use --budget for {data!r}")
            for method in args.methods or PAPER_METHODS:
                extra = scale["gmm_cd" if (data, method) == ("gmm", "cd") else data]
                rows.append(_run_one(train_main, out, data, method, extra, args))
    text = table(rows)
    (out / "table.md").write_text(text + "\n")
    if any(r["data"] == "gmm" for r in rows):
        mode_weight_picture(out, [r["method"] for r in rows if r["data"] == "gmm"])
    harness.atomic_write_json(out / "results.json", rows)
    print()
    print(text)
    return 0
