"""``python -m train jarzynski``: Jarzynski-weighted ULA training with SMC resampling (Carbone et al., NeurIPS 2023).

The trainer is train/ebm.py's EBMTrainer (shared by cd, pcd and jarzynski); see its docstring
for the order of operations, the presets and where they follow the paper or the official code.
"""
from __future__ import annotations

from . import ebm

HELP = "Jarzynski-weighted ULA training with SMC resampling (Carbone et al., NeurIPS 2023)"


def add_arguments(parser) -> None:
    ebm.add_arguments(parser, "jarzynski")


def main(args) -> int:
    return ebm.main_for("jarzynski", args)
