"""Trainable energies for the trainers. Every energy is an nn.Module mapping x [N, *shape] to
U(x) [N] (lower is likelier), differentiable in x and in its parameters.

    from models import GMMStudent, MLPEnergy, ConvEBM, NijkampEBM, build_energy
    U = build_energy("mlp", dataset)       # defaults per dataset kind (train/data.py)
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from fastlangevin.energies import MLPEnergy as _FLMLPEnergy

_LOG_2PI = math.log(2.0 * math.pi)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """[N, *shape] -> [N, prod(shape)]."""
    return x.reshape(x.shape[0], -1)


class GMMStudent(nn.Module):
    """Carbone et al.'s student (PAPERS.md §1.5), K unit-variance Gaussian modes:

        U(x) = -log sum_i exp(-|x - a_i|^2 / 2 - z_i)

    means a [K, d] (Parameter ``means``), log-weights z [K] (property ``z``). z_0 is a buffer, not
    a Parameter: the official code gives it learning rate 0 "to avoid global blow up" (adding
    a constant to every z only rescales Z and leaves the density unchanged, so one z is
    redundant; freezing it removes the flat direction). The other K - 1 are the Parameter
    ``z_rest``. Mode i has weight softmax(-z)_i and Z = (2 pi)^{d/2} sum_i exp(-z_i) exactly.

    init="paper": a = 0.01 N(0, I) with a[0, 0] = -0.1, a[1, 0] = +0.1, z = 0 (equal weights),
    as GMM_code/GMM.py. init="randn": a ~ N(0, I), z = 0. Draws use only `generator`.
    """

    def __init__(
        self, dim: int, n_modes: int = 2, *, init: str = "paper", generator: Optional[torch.Generator] = None,
        dtype: torch.dtype = torch.float64,
    ):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"GMMStudent: dim must be an int >= 1, got {dim!r}")
        if isinstance(n_modes, bool) or not isinstance(n_modes, int) or n_modes < 1:
            raise ValueError(f"GMMStudent: n_modes must be an int >= 1, got {n_modes!r}")
        if init == "paper":
            a = 0.01 * torch.randn(n_modes, dim, generator=generator, dtype=torch.float64)
            a[0, 0] = -0.1
            if n_modes > 1:
                a[1, 0] = 0.1
        elif init == "randn":
            a = torch.randn(n_modes, dim, generator=generator, dtype=torch.float64)
        else:
            raise ValueError(f"GMMStudent: init must be 'paper' or 'randn', got {init!r}")
        self.dim, self.n_modes = dim, n_modes
        self.means = nn.Parameter(a.to(dtype))
        self.register_buffer("z0", torch.zeros(1, dtype=dtype))
        self.z_rest = nn.Parameter(torch.zeros(n_modes - 1, dtype=dtype))

    @property
    def z(self) -> torch.Tensor:
        """[K] log-weights (z_0 frozen, then z_rest)."""
        return torch.cat([self.z0, self.z_rest])

    def component_logits(self, x: torch.Tensor) -> torch.Tensor:
        """[N, K]: -|x - a_i|^2 / 2 - z_i for x [N, d] (or [N, *shape] with prod(shape) = d)."""
        x = _flat(x)
        if x.shape[1] != self.dim:
            raise ValueError(f"GMMStudent: x has {x.shape[1]} coordinates per example, the model {self.dim}")
        a = self.means.to(x.dtype)
        if x.dtype == torch.float64:
            # float64: |x - a|^2 = |x|^2 - 2 x.a + |a|^2 through one [N, d] x [d, K] matmul. The
            # cancellation costs ~1e-16 * |x|^2 ~ 1e-14 at the paper's |x| ~ 12, and it avoids the
            # [N, K, d] temporaries of the direct form: 7.5x faster forward+backward at
            # N = 10^4, d = 50 (the GMM trainer's per-iteration cost was dominated by them).
            d2 = (x * x).sum(1, keepdim=True) - 2.0 * (x @ a.t()) + (a * a).sum(1)[None]
        else:
            # float32: expanded directly (x.x - 2 x.a + a.a loses ~1e-5 * |x|^2 ~ 2e-3 nats)
            d2 = (x[:, None, :] - a[None]).pow(2).sum(-1)
        return -0.5 * d2 - self.z.to(x.dtype)[None]

    def chain_params(self) -> tuple:
        """(means [K, d], inv_var [K, d] = 1, log_coef [K] = -z), detached: this energy as
        fastlangevin.energies.GaussianMixture(means, log_weights=-z, var=1), so fastlangevin's
        closed-form protocol and fused mixture chain (Walkers.step, sample) run it without
        autograd. The trainers' parameter gradients still go through forward()."""
        a = self.means.detach()
        return a, torch.ones_like(a), -self.z.detach()

    @torch.no_grad()
    def energy_and_grad(self, x: torch.Tensor) -> tuple:
        """Closed form, no autograd: U(x) [N] and grad_x U = sum_i r_i(x) (x - a_i) [N, d]
        (float32: fastlangevin.reference.mixture_energy_ref, the fused chain's own arithmetic)."""
        if x.dtype == torch.float64:  # the matmul form of component_logits (see there): 3x faster
            logits = self.component_logits(x)
            g = _flat(x) - torch.softmax(logits, dim=1) @ self.means.detach()
            return -torch.logsumexp(logits, dim=1), g.reshape(x.shape)
        from fastlangevin.reference import mixture_energy_ref

        u, g = mixture_energy_ref(_flat(x), *self.chain_params())
        return u, g.reshape(x.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """U(x) [N]."""
        return -torch.logsumexp(self.component_logits(x), dim=1)

    def mode_weights(self) -> torch.Tensor:
        """[K] mixture weights softmax(-z), summing to 1."""
        return torch.softmax(-self.z, dim=0)

    def log_z(self) -> torch.Tensor:
        """0-d tensor: the exact log normaliser log((2 pi)^{d/2} sum_i exp(-z_i)), differentiable."""
        return 0.5 * self.dim * _LOG_2PI + torch.logsumexp(-self.z, dim=0)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """[N] normalised log-density -U(x) - log Z."""
        return -self.forward(x) - self.log_z()

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n exact draws [n, d]: mode i ~ Categorical(mode_weights), then N(a_i, I). The
        generator must live on the parameters' device."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"GMMStudent.sample: n must be an int >= 0, got {n!r}")
        w = self.mode_weights().double()
        idx = torch.multinomial(w, n, replacement=True, generator=generator) if n else w.new_zeros(0).long()
        eps = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype, device=self.means.device)
        return self.means[idx] + eps

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_modes={self.n_modes}"


_ACTS = {"silu": nn.SiLU, "softplus": nn.Softplus, "tanh": nn.Tanh}


def _act(act: str) -> nn.Module:
    # Langevin needs grad_x U, and the weights need it smooth: ReLU's piecewise-constant
    # gradient gives a discontinuous drift (JEM#4's advice too: prefer Swish).
    if act not in _ACTS:
        raise ValueError(f"activation must be one of {sorted(_ACTS)} (smooth, for Langevin), got {act!r}")
    return _ACTS[act]()


def _ref_term(x: torch.Tensor, ref_var: Optional[float]) -> torch.Tensor:
    """|x|^2 / (2 ref_var) per example [N] (0 if ref_var is None)."""
    if ref_var is None:
        return x.new_zeros(x.shape[0])
    return _flat(x).pow(2).sum(1) / (2.0 * ref_var)


def _check_ref_var(name: str, ref_var):
    if ref_var is not None and not (isinstance(ref_var, (int, float)) and math.isfinite(ref_var) and ref_var > 0):
        raise ValueError(f"{name}: ref_var must be None or a finite float > 0, got {ref_var!r}")


class MLPEnergy(_FLMLPEnergy):
    """U(x) = MLP(flat x) + |x|^2 / (2 ref_var): `depth` hidden layers of width `hidden`, smooth
    activation `act` ("silu", "softplus", "tanh"), a linear head to one scalar. With ref_var set,
    e^{-U} is normalisable whenever the MLP is bounded below (tanh) or grows slower than
    quadratically (silu/softplus are linear at infinity): needed for AIS log-likelihoods.

    dim: int, or the per-example shape (its product is used). x [N, *shape] -> U [N].

    This is fastlangevin.energies.MLPEnergy (same ``net`` and state_dict keys): it has the
    closed-form ``energy_and_grad``, and with depth <= 4 and hidden <= 128 fastlangevin.sample()
    and Walkers run its chains fused (fastlangevin.chain.mlp_chain).
    """


class ConvEBM(nn.Module):
    """A small conv EBM for (C, H, W) images such as (1, 8, 8) digits and (1, 28, 28) MNIST, after
    the MNIST CNNModel of Carbone et al. (not equal to it: that one's head is Linear 256 -> 64 -> 1,
    see PAPERS.md 1.5): conv3x3 (C -> 16), then stride-2 conv4x4 layers 16 -> 32 -> 64 -> 64 while
    the side is above 4 (8x8: one, to 4x4 and a 512-wide head; 28x28: three, 28 -> 14 -> 7 -> 3, a
    576-wide head), SiLU between, then Linear(flat -> 64), SiLU, Linear(64 -> 1). Accepts [N, C, H, W] or flat [N, C*H*W].
    Optional ref_var adds |x|^2 / (2 ref_var).
    """

    def __init__(self, image_shape: Sequence[int], *, ref_var: Optional[float] = None, act: str = "silu"):
        super().__init__()
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3:
            raise ValueError(f"ConvEBM: image_shape must be (C, H, W), got {image_shape}")
        _check_ref_var("ConvEBM", ref_var)
        c, h, w = image_shape
        chans = [16, 32, 64, 64]
        layers = [nn.Conv2d(c, chans[0], 3, 1, 1), _act(act)]
        side, i = min(h, w), 0
        while side > 4 and i < 3:
            layers += [nn.Conv2d(chans[i], chans[i + 1], 4, 2, 1), _act(act)]
            side, i = side // 2, i + 1
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.features(torch.zeros(1, *image_shape)).numel()
        self.head = nn.Sequential(nn.Linear(flat, 64), _act(act), nn.Linear(64, 1))
        self.image_shape, self.ref_var = image_shape, ref_var

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = x.reshape(x.shape[0], *self.image_shape)
        return self.head(self.features(img).flatten(1)).squeeze(1) + _ref_term(x, self.ref_var)

    def extra_repr(self) -> str:
        return f"image_shape={self.image_shape}, ref_var={self.ref_var}"


class NijkampEBM(nn.Module):
    """The 5-conv Nijkamp-style EBM for 32x32 images (Carbone et al.'s CIFAR-10 `Paper_net`):
    conv3x3 s1 p1 (in -> nf), LeakyReLU(0.2), conv4x4 s2 p1 nf -> 2nf, LeakyReLU,
    conv4x4 s2 p1 2nf -> 4nf, LeakyReLU, conv4x4 s2 p1 4nf -> 8nf, LeakyReLU,
    conv4x4 s1 p0 8nf -> 1 (32 -> 32 -> 16 -> 8 -> 4 -> 1). x [N, in_ch, 32, 32] (or flat) -> [N].
    (LeakyReLU as in the reference code, though its gradient is not smooth.)
    """

    def __init__(self, nf: int = 64, in_ch: int = 3):
        super().__init__()
        self.in_ch = in_ch
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, nf, 3, 1, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(nf, 2 * nf, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * nf, 4 * nf, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * nf, 8 * nf, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(8 * nf, 1, 4, 1, 0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], self.in_ch, 32, 32)).reshape(x.shape[0])


ENERGIES = ("gmm_student", "mlp", "conv", "nijkamp")


def build_energy(name: str, dataset, **kw) -> nn.Module:
    """An energy for `dataset` (a train.data.Dataset), in the dataset's dtype.

    gmm_student: GMMStudent(dataset.dim, **kw) (default: 2 modes, init "paper").
    mlp:         MLPEnergy(dataset.dim, ...): toy2d hidden 128 depth 3; image / gmm hidden 256
                 depth 3; silu.
    conv:        ConvEBM(dataset.image_shape, **kw) (kind "image" only).
    nijkamp:     NijkampEBM(in_ch=C, **kw) (32x32 images only).
    Keyword arguments override the defaults.
    """
    kind = getattr(dataset, "kind", None)
    dtype = dataset.train.dtype
    if name == "gmm_student":
        kw.setdefault("dtype", dtype)
        return GMMStudent(dataset.dim, **kw)
    if name == "mlp":
        kw = {"hidden": 128 if kind == "toy2d" else 256, "depth": 3, **kw}
        return MLPEnergy(dataset.dim, **kw).to(dtype)
    if name in ("conv", "nijkamp"):
        if dataset.image_shape is None:
            raise ValueError(f"build_energy: {name!r} needs an image dataset, {dataset.name!r} is {kind!r}")
        if name == "conv":
            return ConvEBM(dataset.image_shape, **kw).to(dtype)
        c, h, w = dataset.image_shape
        if (h, w) != (32, 32):
            raise ValueError(f"build_energy: 'nijkamp' needs 32x32 images, {dataset.name!r} has {h}x{w}")
        return NijkampEBM(in_ch=c, **kw).to(dtype)
    raise ValueError(f"build_energy: unknown energy {name!r}; available: {', '.join(ENERGIES)}")
