"""Energies for fastlangevin demos and trainers.

    from models import eight_gaussians
    target = eight_gaussians()          # GaussianMixture2D: x [N, 2] -> U(x) [N]
    x = target.sample_exact(1000, torch.Generator().manual_seed(0))

    from models import build_energy     # trainable EBMs (models/ebm.py)
    U = build_energy("mlp", dataset)    # x [N, *shape] -> U [N]

    from models import build_teaching_nets   # generators / encoders (models/teaching.py)
    g, q = build_teaching_nets("mlp", dataset, latent=16)
"""
from .ebm import ENERGIES, ConvEBM, GMMStudent, MLPEnergy, NijkampEBM, build_energy
from .teaching import (TEACHING_ARCHS, VAE, DCGANEncoder, DCGANGenerator, MLPEncoder, MLPGenerator,
                       build_teaching_nets, gaussian_kl, gaussian_nll)
from .toy import GaussianMixture2D, eight_gaussians, log_density_grid

__all__ = [
    "GaussianMixture2D",
    "eight_gaussians",
    "log_density_grid",
    "GMMStudent",
    "MLPEnergy",
    "ConvEBM",
    "NijkampEBM",
    "build_energy",
    "ENERGIES",
    "MLPGenerator",
    "MLPEncoder",
    "DCGANGenerator",
    "DCGANEncoder",
    "VAE",
    "gaussian_kl",
    "gaussian_nll",
    "build_teaching_nets",
    "TEACHING_ARCHS",
]
