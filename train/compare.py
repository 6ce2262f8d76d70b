"""``python -m train compare``: the Jarzynski paper's comparison, end to end, with one table.

Runs jarzynski, pcd and cd on the paper's GMM teacher (d = 50, masses 1/4 : 3/4) and then on
scikit-learn's 8x8 digits, each in its own run folder under --out (config.json, metrics.jsonl,
metrics.json, checkpoint, pictures), and prints / writes the table (DIR/table.md,
DIR/results.json).

    --scale small   (default) a few minutes on a 2-core CPU: GMM with 2000 data points and
                    walkers, 4x the paper's learning rates and 1000 iterations; digits 1000
                    iterations. The qualitative result is the paper's.
    --scale paper   the paper's GMM settings (10^4 walkers and points, 8000 iterations) and
                    digits at 3000 iterations: about half an hour on the same CPU.

A run folder that already holds a finished run is reused (its metrics.json is read), so an
interrupted comparison continues where it stopped; --fresh starts over.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from . import harness

HELP = "the paper's comparison: jarzynski vs pcd vs cd on the GMM teacher and on digits, one table"

METHODS = ("jarzynski", "pcd", "cd")
SCALES = {
    "small": {
        "gmm": ["--n-train", "2000", "--n-walkers", "2000", "--lr", "0.01", "--lr-z", "0.05", "--iters", "1000"],
        "gmm_cd": ["--n-train", "2000", "--n-walkers", "2000", "--lr", "0.1", "--lr-z", "0.5", "--iters", "1000"],
        "digits": ["--iters", "1000"],
    },
    "paper": {"gmm": [], "gmm_cd": [], "digits": ["--iters", "3000"]},
}


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="runs/compare", help="folder for the runs and the table")
    parser.add_argument("--scale", default="small", choices=tuple(SCALES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="paper", choices=("paper", "code"))
    parser.add_argument("--data", nargs="+", default=["gmm", "digits"], choices=("gmm", "digits"))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--fresh", action="store_true", help="delete earlier runs in --out first")
    parser.add_argument("--no-progress", action="store_true")


def _fmt(v, spec=".3f") -> str:
    return "" if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
    """Markdown table of the runs' metrics.json (GMM rows and digits rows use their own columns)."""
    lines = []
    gmm = [r for r in rows if r["data"] == "gmm"]
    if gmm:
        lines += ["| GMM (teacher 0.25 : 0.75) | mass on -10 e1 : 6 e1 | KL(teacher \\|\\| student) | "
                  "exact CE | Jarzynski CE estimate | train s |", "|---|---|---|---|---|---|"]
        for r in gmm:
            w = r["mode_weights"]
            lines.append(f"| {r['method']} | {w[0]:.3f} : {w[1]:.3f} | {_fmt(r['kl'])} | {_fmt(r['ce_exact_train'], '.2f')} | "
                         f"{_fmt(r.get('ce_estimate'), '.2f')} | {r['train_seconds']:.0f} |")
    dig = [r for r in rows if r["data"] == "digits"]
    if dig:
        if lines:
            lines.append("")
        lines += ["| digits (8x8, 64-d, [-1, 1]) | AIS test log-lik. (nats/image) | diagonal Gaussian | "
                  "MMD^2 to test | train s |", "|---|---|---|---|---|"]
        for r in dig:
            lines.append(f"| {r['method']} | {r['test_ll']:.2f} ± {r['test_ll_se']:.2f} | {r['diag_gaussian_test_ll']:.2f} | "
                         f"{r['mmd']:.4f} | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def main(args) -> int:
    from .__main__ import main as train_main

    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    scale = SCALES[args.scale]
    rows = []
    for data in args.data:
        for method in args.methods:
            run_dir = out / f"{data}-{method}"
            done = run_dir / "metrics.json"
            if done.exists() and "diverged" not in (m := json.loads(done.read_text())):
                rows.append(m)
                print(f"[compare] {run_dir}: finished earlier, reusing its metrics.json", file=sys.stderr)
                continue
            extra = scale["gmm_cd" if (data, method) == ("gmm", "cd") else data]
            argv = [method, "--data", data, "--seed", str(args.seed), "--preset", args.preset, *extra,
                    "--out", str(run_dir)]
            if (run_dir / harness.CHECKPOINT).exists():
                argv.append("--resume")
            if args.no_progress:
                argv.append("--no-progress")
            print(f"[compare] python -m train {' '.join(argv)}", file=sys.stderr)
            status = train_main(argv)
            if status != 0:
                print(f"[compare] {method} on {data} exited with status {status}", file=sys.stderr)
                return status
            rows.append(json.loads(done.read_text()))
    text = table(rows)
    (out / "table.md").write_text(text + "\n")
    harness.atomic_write_json(out / "results.json", rows)
    print()
    print(text)
    return 0
