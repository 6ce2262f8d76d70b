"""Generators, encoders (inference models) and the VAE for the teaching trainers (CoopVAEBM,
Dual-MCMC): train/coopvae.py and train/dualmcmc.py.

    from models import build_teaching_nets, VAE
    g, q = build_teaching_nets("mlp", dataset, latent=16)   # g: z [N, d] -> x [N, *shape]
    mu, log_std = q(x)                                       # q: x [N, *shape] -> ([N, d], [N, d])

Conventions:

- A generator maps z [N, latent] to x [N, *shape]. Its attribute ``pixel_space`` says where
  its output lives: True for the 32x32 conv nets (tanh output in the data's [-1, 1] pixel
  range, as both papers' decoders), False for the MLPs (a linear output in the trainer's model
  coordinates: the data itself for 2-D toys, the whitened pixels for images; a tanh cannot
  reach whitened pixels several standard deviations out).
- An encoder maps x to (mu, log_std) of the diagonal Gaussian q(z|x). CoopVAEBM's head is a
  log-std (``sd`` = 0.5 dense(...), used as exp(sd)); Dual-MCMC's is a log-variance: it is
  2 log_std, converted by the trainer.
- MLPs use SiLU: latent Langevin (Dual-MCMC) differentiates the generator in z, and a smooth
  drift is better there (the same reason as models/ebm.py's energies).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def _mlp(d_in: int, d_out: int, hidden: int, depth: int) -> nn.Sequential:
    layers, w = [], d_in
    for _ in range(depth):
        layers += [nn.Linear(w, hidden), nn.SiLU()]
        w = hidden
    layers.append(nn.Linear(w, d_out))
    return nn.Sequential(*layers)


class MLPGenerator(nn.Module):
    """g(z) = MLP(z) reshaped to `shape`: `depth` SiLU layers of width `hidden`, a linear output
    (in model coordinates: pixel_space = False). z [N, latent] -> x [N, *shape]."""

    pixel_space = False

    def __init__(self, latent: int, shape: Sequence[int], hidden: int = 128, depth: int = 3):
        super().__init__()
        self.latent, self.shape = int(latent), tuple(int(s) for s in shape)
        if self.latent < 1 or hidden < 1 or depth < 1:
            raise ValueError(f"MLPGenerator: need latent, hidden, depth >= 1, got {latent}, {hidden}, {depth}")
        self.net = _mlp(self.latent, math.prod(self.shape), hidden, depth)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).reshape(z.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"latent={self.latent}, shape={self.shape}"


class MLPEncoder(nn.Module):
    """q(z|x) = N(mu(x), diag(exp(2 log_std(x)))): a shared SiLU MLP trunk, then linear heads for
    mu and log_std. x [N, *shape] -> (mu [N, latent], log_std [N, latent]). The log-std head is
    0.5 * dense(...), as CoopVAEBM's encoder, and starts near 0 (unit std)."""

    def __init__(self, shape: Sequence[int], latent: int, hidden: int = 128, depth: int = 2):
        super().__init__()
        self.shape, self.latent = tuple(int(s) for s in shape), int(latent)
        d = math.prod(self.shape)
        self.trunk = _mlp(d, hidden, hidden, depth - 1) if depth > 1 else nn.Linear(d, hidden)
        self.act = nn.SiLU()
        self.mu = nn.Linear(hidden, self.latent)
        self.log_std = nn.Linear(hidden, self.latent)

    def forward(self, x: torch.Tensor):
        h = self.act(self.trunk(_flat(x)))
        return self.mu(h), 0.5 * self.log_std(h)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, latent={self.latent}"


class DCGANGenerator(nn.Module):
    """The 32x32 decoder of CoopVAEBM's CIFAR-10 code (PAPERS.md §2.5), DCGAN-style: z as a 1x1
    map -> convT4 valid 4ngf (4x4) -> convT4 s2 2ngf (8x8) -> convT4 s2 ngf (16x16), each with
    BN + LeakyReLU(0.2), -> convT4 s2 C (32x32), tanh (pixel_space = True). (The code's last
    two layers, convT3 s2 64 then convT3 s1 3, are merged into one convT4 s2: same sizes, one
    layer fewer.) z [N, latent] -> x [N, C, 32, 32]."""

    pixel_space = True

    def __init__(self, latent: int = 100, channels: int = 3, ngf: int = 64):
        super().__init__()
        self.latent, self.shape = int(latent), (channels, 32, 32)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(latent, 4 * ngf, 4, 1, 0), nn.BatchNorm2d(4 * ngf), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(4 * ngf, 2 * ngf, 4, 2, 1), nn.BatchNorm2d(2 * ngf), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(2 * ngf, ngf, 4, 2, 1), nn.BatchNorm2d(ngf), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(ngf, channels, 4, 2, 1), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.reshape(z.shape[0], self.latent, 1, 1))


class DCGANEncoder(nn.Module):
    """The 32x32 encoder / inference model (CoopVAEBM's CIFAR-10 encoder; Dual-MCMC's inference
    net has the same shape with wider layers): conv3x3 nf -> conv4x4 s2 2nf -> 4nf -> 8nf with
    LeakyReLU(0.2) (32 -> 16 -> 8 -> 4), flatten, linear heads mu and 0.5 * (.) log-std.
    x [N, C, 32, 32] (or flat) -> (mu [N, latent], log_std [N, latent])."""

    def __init__(self, latent: int = 100, channels: int = 3, nf: int = 64):
        super().__init__()
        self.latent, self.shape = int(latent), (channels, 32, 32)
        self.net = nn.Sequential(
            nn.Conv2d(channels, nf, 3, 1, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(nf, 2 * nf, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * nf, 4 * nf, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * nf, 8 * nf, 4, 2, 1), nn.LeakyReLU(0.2),
        )
        self.mu = nn.Linear(8 * nf * 16, self.latent)
        self.log_std = nn.Linear(8 * nf * 16, self.latent)

    def forward(self, x: torch.Tensor):
        h = self.net(x.reshape(x.shape[0], *self.shape)).flatten(1)
        return self.mu(h), 0.5 * self.log_std(h)


def gaussian_kl(mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(2 log_std)) || N(0, I)) per example [N]: -1/2 sum(1 + 2 ls - mu^2 - e^{2 ls})."""
    return -0.5 * (1 + 2 * log_std - mu.pow(2) - torch.exp(2 * log_std)).sum(1)


def gaussian_nll(z: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """-log N(z; mu, exp(2 log_std)) per example [N], without the constant d/2 log 2 pi."""
    return (log_std + 0.5 * (z - mu).pow(2) * torch.exp(-2 * log_std)).sum(1)


class VAE(nn.Module):
    """An encoder q(z|x) and a decoder g(z) (CoopVAEBM's amortised sampler). ``loss`` is the
    negative ELBO with a Gaussian observation model written as CoopVAEBM's code does:

        mean_i [ |g(z_i) - x_i|^2 (summed over coordinates) + kl_weight * KL(q(z|x_i) || N(0, I)) ]

    with z_i = mu + eps_i exp(log_std) (reparameterised; eps [N, latent] supplied by the caller,
    so the trainer owns the random stream); kl_weight = 2 sigma^2 for observation noise sigma.
    ``decode`` maps z to the decoder's output (see the module docstring for its space)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.latent = decoder.latent

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def loss(self, x: torch.Tensor, eps: torch.Tensor, kl_weight: float, decode=None):
        """(loss, mean reconstruction error, mean KL): 0-d tensors. decode: optional map from z to
        the coordinates of x (default self.decoder)."""
        mu, log_std = self.encoder(x)
        z = mu + eps * torch.exp(log_std)
        xr = (decode or self.decoder)(z)
        rec = _flat(xr - x).pow(2).sum(1)
        kl = gaussian_kl(mu, log_std)
        return (rec + kl_weight * kl).mean(), rec.mean().detach(), kl.mean().detach()


TEACHING_ARCHS = ("mlp", "dcgan")


def build_teaching_nets(arch: str, dataset, *, latent: int, hidden: int = 128, depth: int = 3):
    """(generator, encoder) for `dataset` (a train.data.Dataset), in its dtype.

    mlp:   MLPGenerator(latent, dataset.shape, hidden, depth), MLPEncoder(dataset.shape, latent,
           hidden, depth - 1) (2-D toys, digits, any flat data).
    dcgan: DCGANGenerator / DCGANEncoder (32x32 images only, e.g. cifar10).
    """
    dtype = dataset.train.dtype
    if arch == "mlp":
        g = MLPGenerator(latent, dataset.shape, hidden, depth)
        q = MLPEncoder(dataset.shape, latent, hidden, max(1, depth - 1))
    elif arch == "dcgan":
        if dataset.image_shape is None or tuple(dataset.image_shape[1:]) != (32, 32):
            raise ValueError(f"build_teaching_nets: 'dcgan' needs 32x32 images, {dataset.name!r} has "
                             f"{dataset.image_shape}")
        c = dataset.image_shape[0]
        g, q = DCGANGenerator(latent, c), DCGANEncoder(latent, c)
    else:
        raise ValueError(f"build_teaching_nets: unknown arch {arch!r}; available: {', '.join(TEACHING_ARCHS)}")
    return g.to(dtype), q.to(dtype)
