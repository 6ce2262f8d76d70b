"""``python -m train pcd``: persistent contrastive divergence (replay buffer, Du & Mordatch; GMM: persistent walkers from data).

The trainer is train/ebm.py's EBMTrainer (shared by cd, pcd and jarzynski); see its docstring
for the order of operations, the presets and where they follow the paper or the official code.
"""
from __future__ import annotations

from . import ebm

HELP = "persistent contrastive divergence (replay buffer, Du & Mordatch; GMM: persistent walkers from data)"


def add_arguments(parser) -> None:
    ebm.add_arguments(parser, "pcd")


def main(args) -> int:
    return ebm.main_for("pcd", args)
