"""Post-hoc diagnostic of the 2-D teaching runs (not part of the trainers' evaluation): the
initialiser's and the refined samples' MMD^2 to held-out data at fixed bandwidths 0.1, 0.2, 0.4
(the scale of the rings' width 0.08 and the 8 Gaussians' std), next to the median-heuristic
MMD^2 the runs report, and both for a fresh exact sample of the data law (the level a perfect
sampler gets with 2000 points).

    python docs/results/teaching/fine_mmd.py RUNS_DIR     # RUNS_DIR from `python -m train compare --teaching`
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from train import coopvae, dualmcmc, metrics  # noqa: E402
from train.data import load  # noqa: E402

FINE = [0.1, 0.2, 0.4]
TRAINERS = {"coopvae": (coopvae, coopvae.CoopVAETrainer), "dualmcmc": (dualmcmc, dualmcmc.DualMCMCTrainer)}


def main() -> None:
    runs = Path(sys.argv[1])
    for d in ("rings", "8gaussians"):
        data = load(d, seed=0)
        fresh = data.teacher["sample"](2000, torch.Generator().manual_seed(12345))
        print(f"{d}: exact sample vs test: median-bandwidth {metrics.mmd(fresh, data.test):.5f}, "
              f"bandwidths 0.1-0.4 {metrics.mmd(fresh, data.test, bandwidths=FINE):.5f}")
        for method, (mod, cls) in TRAINERS.items():
            p = argparse.ArgumentParser()
            mod.add_arguments(p)
            tr = cls(p.parse_args(["--data", d, "--out", str(runs / "unused")]), data, torch.device("cpu"))
            ck = torch.load(runs / f"{d}-{method}" / "checkpoint.pt", weights_only=False)
            tr.load_state_dict(ck["trainer"])
            x0, x1 = tr.eval_samples(2000)  # the evaluation's own samples (fixed latents and stream)
            print(f"  {method}: median-bandwidth {metrics.mmd(x0, data.test):.5f} -> {metrics.mmd(x1, data.test):.5f}, "
                  f"bandwidths 0.1-0.4 {metrics.mmd(x0, data.test, bandwidths=FINE):.5f} -> "
                  f"{metrics.mmd(x1, data.test, bandwidths=FINE):.5f}")


if __name__ == "__main__":
    main()
