"""``python -m train cd``: contrastive divergence: Langevin walkers restarted from data.

The trainer is train/ebm.py's EBMTrainer (shared by cd, pcd and jarzynski); see its docstring
for the order of operations, the presets and where they follow the paper or the official code.
"""
from __future__ import annotations

from . import ebm

HELP = "contrastive divergence: Langevin walkers restarted from data"


def add_arguments(parser) -> None:
    ebm.add_arguments(parser, "cd")


def main(args) -> int:
    return ebm.main_for("cd", args)
