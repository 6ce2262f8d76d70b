"""Analytic toy energies in 2-D, for demos and for checking samplers against known targets."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import nn

_LOG_2PI = math.log(2.0 * math.pi)


class GaussianMixture2D(nn.Module):
    """A mixture of K isotropic 2-D Gaussians as an energy, lower is likelier:

        U(x) = -log p(x) = -logsumexp_k( log w_k - |x - mu_k|^2 / (2 s_k^2) - 2 log s_k - log(2 pi) )

    so exp(-U) is the normalised mixture density (the `- 2 log s_k - log 2 pi` terms are the
    2-D Gaussian normaliser 1 / (2 pi s_k^2)).

    means: [K, 2] component means mu_k. stds: [K] (or a float, shared) component std s_k > 0.
    log_weights: [K] log mixture weights, or None for equal weights; they are normalised with
    log_softmax, so any finite logits will do. The buffers take the dtype of `means` if it is a
    floating tensor, else the default dtype.

    forward(x): x [N, 2] -> U(x) [N], differentiable in x (autograd). The parameters are
    buffers, not nn.Parameters: the target is fixed, and they follow .to(device / dtype).
    """

    def __init__(
        self,
        means: Union[torch.Tensor, Sequence[Sequence[float]]],
        stds: Union[float, torch.Tensor, Sequence[float]],
        log_weights: Optional[Union[torch.Tensor, Sequence[float]]] = None,
    ):
        super().__init__()
        means = torch.as_tensor(means)
        if not means.is_floating_point():
            means = means.to(torch.get_default_dtype())
        if means.dim() != 2 or means.shape[1] != 2 or means.shape[0] == 0:
            raise ValueError(f"GaussianMixture2D: means must have shape [K, 2] with K >= 1, got {list(means.shape)}")
        k = means.shape[0]
        stds = torch.as_tensor(stds, dtype=means.dtype)
        if stds.dim() == 0:
            stds = stds.expand(k).clone()
        if stds.shape != (k,):
            raise ValueError(f"GaussianMixture2D: stds must be a float or have shape [{k}], got {list(stds.shape)}")
        if not bool((torch.isfinite(stds) & (stds > 0)).all()):
            raise ValueError("GaussianMixture2D: stds must be finite and > 0")
        if log_weights is None:
            log_weights = torch.zeros(k, dtype=means.dtype)
        log_weights = torch.as_tensor(log_weights, dtype=means.dtype)
        if log_weights.shape != (k,):
            raise ValueError(
                f"GaussianMixture2D: log_weights must have shape [{k}], got {list(log_weights.shape)}"
            )
        if not bool(torch.isfinite(log_weights).all()):
            raise ValueError("GaussianMixture2D: log_weights must be finite")
        self.register_buffer("means", means)
        self.register_buffer("stds", stds)
        self.register_buffer("log_weights", torch.log_softmax(log_weights, dim=0))

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def weights(self) -> torch.Tensor:
        """[K] mixture weights w_k (sum to 1)."""
        return self.log_weights.exp()

    def component_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """[N, K]: log w_k + log N(x; mu_k, s_k^2 I) for x [N, 2]."""
        if x.dim() != 2 or x.shape[1] != 2:
            raise ValueError(f"GaussianMixture2D: x must have shape [N, 2], got {list(x.shape)}")
        means = self.means.to(x.dtype)
        s = self.stds.to(x.dtype)
        d2 = (x[:, None, :] - means[None, :, :]).pow(2).sum(-1)  # [N, K]
        return self.log_weights.to(x.dtype) - d2 / (2 * s * s) - 2 * torch.log(s) - _LOG_2PI

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """U(x) [N] for x [N, 2]."""
        return -torch.logsumexp(self.component_log_probs(x), dim=1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) = -U(x), [N]."""
        return -self.forward(x)

    def nearest_mode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(index [N] int64, distance [N]) of the closest mean to each row of x [N, 2]."""
        d = torch.cdist(x, self.means.to(x.dtype))  # [N, K]
        dist, idx = d.min(dim=1)
        return idx, dist

    @torch.no_grad()
    def sample_exact(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n exact draws [n, 2] from the mixture: k ~ Categorical(w), x = mu_k + s_k * eps with
        eps ~ N(0, I). Uses only `generator` (on the buffers' device), not the global RNG."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"sample_exact: n must be an int >= 0, got {n!r}")
        device = self.means.device
        if n == 0:
            return torch.empty(0, 2, dtype=self.means.dtype, device=device)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, 2, generator=generator, dtype=self.means.dtype, device=device)
        return self.means[k] + self.stds[k, None] * eps

    def extra_repr(self) -> str:
        return f"n_components={self.n_components}"


def eight_gaussians(radius: float = 2.0, std: float = 0.2, dtype: Optional[torch.dtype] = None) -> GaussianMixture2D:
    """The classic '8 Gaussians' target: 8 equal-weight modes at angles 2 pi k / 8 on a circle of
    radius `radius` (mode k at radius * (cos, sin)(pi k / 4)), each with std `std`. Buffers in
    `dtype` (default: torch's default dtype)."""
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)
    return GaussianMixture2D(means.to(dtype or torch.get_default_dtype()), std)


@torch.no_grad()
def log_density_grid(
    energy, lim: Union[float, tuple[float, float]], n: int, *, device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The density exp(-U) of any energy, normalised numerically on an n x n grid.

    lim: half-width L (the grid spans [-L, L]^2) or a (lo, hi) pair for both axes. Returns
    (xs [n], ys [n], log_p [n, n]) with log_p[i, j] = log density at (xs[j], ys[i]) (row i is
    y, the layout plt.imshow / contour expect), normalised so that
    sum(exp(log_p)) * dx * dy = 1 over the grid: for an analytic normalised energy this
    matches -U up to the mass outside the grid; for an EBM it supplies the unknown log Z.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"log_density_grid: n must be an int >= 2, got {n!r}")
    lo, hi = (-float(lim), float(lim)) if isinstance(lim, (int, float)) else (float(lim[0]), float(lim[1]))
    if not hi > lo:
        raise ValueError(f"log_density_grid: need lo < hi, got ({lo}, {hi})")
    xs = torch.linspace(lo, hi, n, device=device, dtype=dtype)
    ys = torch.linspace(lo, hi, n, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    neg_u = -energy(pts).reshape(n, n).to(torch.float64)
    cell = ((hi - lo) / (n - 1)) ** 2
    log_p = neg_u - torch.logsumexp(neg_u.reshape(-1), dim=0) - math.log(cell)
    return xs, ys, log_p.to(dtype)
