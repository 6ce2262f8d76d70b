"""Energies with closed-form gradients: Gaussian, Gaussian mixture, double well, small MLP.

    from fastlangevin.energies import Gaussian, GaussianMixture, DoubleWell
    teacher = GaussianMixture(torch.tensor([[-10.0] + [0.0] * 49, [6.0] + [0.0] * 49]),
                              log_weights=torch.tensor([0.25, 0.75]).log())   # Carbone et al.'s GMM
    u = teacher(x)                        # [N], autograd-friendly (training)
    u, g = teacher.energy_and_grad(x)     # [N], [N, d], closed form, detached (sampling)
    teacher.log_z()                       # log of the integral of exp(-U), 0-d

Each class is an nn.Module taking walkers x [N, d] (d = the energy's dimension). ``forward``
builds U from torch ops, so gradients flow to the parameters (a learnable energy trains like
any model); ``energy_and_grad`` computes (U, grad_x U) in closed form without autograd and
returns them detached. fastlangevin.sample() and fastlangevin.Walkers use ``energy_and_grad``
whenever an energy has one (the protocol is documented in fastlangevin.sampler.energy_and_grad),
and for GaussianMixture and Gaussian they run whole chains in one fused kernel
(fastlangevin.chain.mixture_chain), for MLPEnergy (depth <= 4, hidden <= 128) in
fastlangevin.chain.mlp_chain.

Parameters are stored in the dtype they are given in; a call casts them to x's dtype, so a
float32 energy evaluates float64 walkers in float64.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import torch
from torch import nn

from . import reference

__all__ = ["Gaussian", "GaussianMixture", "DoubleWell", "MLPEnergy"]

TensorLike = Union[float, torch.Tensor]


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _check_x(op: str, x, d: int) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{op}: x must be a floating tensor, got {x.dtype}")
    if x.dim() != 2 or x.shape[1] != d:
        raise ValueError(f"{op}: x has shape {_shape(x)}, expected [N, {d}]")
    return x


def _as_float_tensor(op: str, name: str, v, dtype=None) -> torch.Tensor:
    if isinstance(v, bool):
        raise TypeError(f"{op}: {name} must be a float or a tensor, got bool")
    if isinstance(v, (int, float)):
        return torch.tensor(float(v), dtype=dtype or torch.get_default_dtype())
    if not torch.is_tensor(v):
        raise TypeError(f"{op}: {name} must be a float or a tensor, got {type(v).__name__}")
    if not v.is_floating_point():
        v = v.to(dtype or torch.get_default_dtype())
    return v.detach().clone()


def _log_var_from(op: str, var, log_var, shape_ok, what: str, dtype) -> torch.Tensor:
    """log v from exactly one of var (> 0) and log_var; shape checked by shape_ok(tensor)."""
    if (var is None) == (log_var is None):
        raise ValueError(f"{op}: give exactly one of var and log_var")
    if var is not None:
        v = _as_float_tensor(op, "var", var, dtype)
        if not bool(torch.isfinite(v).all()) or not bool((v > 0).all()):
            raise ValueError(f"{op}: var must be finite and > 0")
        lv, name = v.log(), "var"
    else:
        lv, name = _as_float_tensor(op, "log_var", log_var, dtype), "log_var"
        if not bool(torch.isfinite(lv).all()):
            raise ValueError(f"{op}: log_var must be finite")
    if not shape_ok(lv):
        raise ValueError(f"{op}: {name} has shape {_shape(lv)}, expected {what}")
    return lv.to(dtype)


class Gaussian(nn.Module):
    """Diagonal Gaussian N(mean, diag(var)) as an energy on x [N, d]:

        U(x) = 1/2 sum_j (x_j - mean_j)^2 / var_j,     grad U(x) = (x - mean) / var,
        log Z = log of the integral of exp(-U) = 1/2 sum_j log(2 pi var_j).

    Args:
        mean: [d].
        var: a float (isotropic) or [d] (diagonal), > 0; or give ``log_var`` instead.
        learnable: mean and log_var are nn.Parameters (else buffers).

    Its chain runs on the Gaussian-mixture kernel with K = 1 (``chain_params``).
    """

    def __init__(self, mean: torch.Tensor, var: Optional[TensorLike] = None, *, log_var: Optional[TensorLike] = None,
                 learnable: bool = True):
        super().__init__()
        op = "Gaussian"
        mean = _as_float_tensor(op, "mean", mean)
        if mean.dim() != 1 or mean.shape[0] == 0:
            raise ValueError(f"{op}: mean has shape {_shape(mean)}, expected [d] with d >= 1")
        if not bool(torch.isfinite(mean).all()):
            raise ValueError(f"{op}: mean must be finite")
        d = mean.shape[0]
        if var is None and log_var is None:
            var = 1.0
        lv = _log_var_from(op, var, log_var, lambda t: t.dim() == 0 or t.shape == (d,), f"a scalar or [{d}]",
                           mean.dtype)
        lv = lv.expand(d).clone()
        self.dim = d
        if learnable:
            self.mean, self.log_var = nn.Parameter(mean), nn.Parameter(lv)
        else:
            self.register_buffer("mean", mean)
            self.register_buffer("log_var", lv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """U(x) [N] from torch ops (differentiable in x and the parameters)."""
        _check_x("Gaussian", x, self.dim)
        mean, inv_var = self.mean.to(x.dtype), torch.exp(-self.log_var.to(x.dtype))
        diff = x - mean
        return 0.5 * (diff * diff * inv_var).sum(dim=1)

    @torch.no_grad()
    def energy_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(U(x) [N], (x - mean) / var [N, d]) in closed form, detached, in x's dtype."""
        _check_x("Gaussian.energy_and_grad", x, self.dim)
        mean, inv_var = self.mean.detach().to(x.dtype), torch.exp(-self.log_var.detach().to(x.dtype))
        g = (x - mean) * inv_var
        return 0.5 * (g * (x - mean)).sum(dim=1), g

    def log_z(self) -> torch.Tensor:
        """log Z = 1/2 sum_j log(2 pi var_j), 0-d (differentiable in log_var)."""
        return 0.5 * (self.log_var + math.log(2 * math.pi)).sum()

    def chain_params(self, dtype: Optional[torch.dtype] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(means [1, d], inv_var [1, d], log_coef [1]) of the mixture kernel: U is exactly the
        K = 1 mixture energy with log_coef = 0 (see GaussianMixture.chain_params). dtype: the
        walkers' (default the parameters'); the parameters are cast before exp(-log_var), as
        energy_and_grad does, so float64 walkers get a float64 inv_var from float32 parameters."""
        dtype = dtype or self.mean.dtype
        mean = self.mean.detach().to(dtype)
        return (mean.reshape(1, -1), torch.exp(-self.log_var.detach().to(dtype)).reshape(1, -1),
                mean.new_zeros(1))


class GaussianMixture(nn.Module):
    """Mixture of K diagonal Gaussians as an energy on x [N, d]:

        q_k(x) = log_weights_k - 1/2 sum_j log var_kj - 1/2 sum_j (x_j - means_kj)^2 / var_kj
        U(x)   = -logsumexp_k q_k(x)
        grad U(x) = sum_k r_k(x) (x - means_k) / var_k,      r(x) = softmax_k q_k(x)
        log Z  = logsumexp_k log_weights_k + (d / 2) log(2 pi)

    so exp(-U) / Z = sum_k pi_k N(x; means_k, diag(var_k)) with mixture weights
    pi = softmax(log_weights). logsumexp keeps U finite far from every mode (|x| ~ 10 in d = 50
    puts q_k near -1e4, which exp alone would underflow to a log of 0).

    Carbone et al.'s student energy (NeurIPS 2023, GMM experiment)
    U(x) = -log sum_i exp(-1/2 |x - a_i|^2 - z_i) is exactly this class with means = a,
    var = 1 and log_weights = -z (the additive constant is 0).

    Args:
        means: [K, d].
        log_weights: [K] (default zeros: equal weights); any real values, normalised by softmax.
        var: a float (one isotropic variance for all components), [K] (isotropic per component)
            or [K, d] (diagonal per component), > 0; or give ``log_var`` of the same shapes.
            Default 1.
        learnable: means and log_weights are nn.Parameters (else buffers).
        learn_var: log_var is an nn.Parameter too (default False: Carbone et al. fix var = 1).
    """

    def __init__(self, means: torch.Tensor, log_weights: Optional[torch.Tensor] = None,
                 var: Optional[TensorLike] = None, *, log_var: Optional[TensorLike] = None, learnable: bool = True,
                 learn_var: bool = False):
        super().__init__()
        op = "GaussianMixture"
        means = _as_float_tensor(op, "means", means)
        if means.dim() != 2 or means.shape[0] == 0 or means.shape[1] == 0:
            raise ValueError(f"{op}: means has shape {_shape(means)}, expected [K, d] with K, d >= 1")
        if not bool(torch.isfinite(means).all()):
            raise ValueError(f"{op}: means must be finite")
        k, d = means.shape
        if log_weights is None:
            log_weights = torch.zeros(k, dtype=means.dtype)
        log_weights = _as_float_tensor(op, "log_weights", log_weights, means.dtype).to(means.dtype)
        if log_weights.shape != (k,):
            raise ValueError(f"{op}: log_weights has shape {_shape(log_weights)}, expected [{k}] (one per component)")
        if not bool(torch.isfinite(log_weights).all()):
            raise ValueError(f"{op}: log_weights must be finite")
        if var is None and log_var is None:
            var = 1.0
        lv = _log_var_from(op, var, log_var, lambda t: t.dim() == 0 or t.shape in ((k,), (k, d)),
                           f"a scalar, [{k}] or [{k}, {d}]", means.dtype)
        # Stored as [K, d] whatever was given: one layout for forward, energy_and_grad and the kernel.
        lv = lv.reshape(-1, 1).expand(k, d).clone() if lv.dim() < 2 else lv
        self.dim, self.n_components = d, k
        for name, t, learn in (("means", means, learnable), ("log_weights", log_weights, learnable),
                               ("log_var", lv, learn_var)):
            if learn:
                setattr(self, name, nn.Parameter(t))
            else:
                self.register_buffer(name, t)

    @property
    def weights(self) -> torch.Tensor:
        """Mixture weights softmax(log_weights), [K]."""
        return torch.softmax(self.log_weights, dim=0)

    def _log_coef(self, dtype) -> torch.Tensor:
        """log_weights_k - 1/2 sum_j log var_kj, [K]."""
        return self.log_weights.to(dtype) - 0.5 * self.log_var.to(dtype).sum(dim=1)

    def component_log_terms(self, x: torch.Tensor) -> torch.Tensor:
        """q_k(x), [N, K] (differentiable)."""
        _check_x("GaussianMixture", x, self.dim)
        means, inv_var = self.means.to(x.dtype), torch.exp(-self.log_var.to(x.dtype))
        diff = x.unsqueeze(1) - means  # [N, K, d]
        return self._log_coef(x.dtype) - 0.5 * (diff * diff * inv_var).sum(dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """U(x) = -logsumexp_k q_k(x), [N] (differentiable in x and the parameters)."""
        return -torch.logsumexp(self.component_log_terms(x), dim=1)

    @torch.no_grad()
    def energy_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(U(x) [N], sum_k r_k (x - means_k) / var_k [N, d]) in closed form, detached, x's dtype
        (fastlangevin.reference.mixture_energy_ref: the same arithmetic as the chain oracle).
        The quadratic form is built from x - means_k, not from |x|^2 - 2 x.means_k + |means_k|^2,
        which cancels catastrophically at |x| ~ 10 in float32."""
        _check_x("GaussianMixture.energy_and_grad", x, self.dim)
        return reference.mixture_energy_ref(x, *self.chain_params(x.dtype))

    def log_z(self) -> torch.Tensor:
        """log Z = logsumexp(log_weights) + (d / 2) log(2 pi), 0-d (differentiable)."""
        return torch.logsumexp(self.log_weights, dim=0) + 0.5 * self.dim * math.log(2 * math.pi)

    def chain_params(self, dtype: Optional[torch.dtype] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(means [K, d], inv_var [K, d], log_coef [K]), detached: what the fused chain kernel
        needs, with q_k(x) = log_coef_k - 1/2 sum_j (x_j - means_kj)^2 inv_var_kj. dtype: the
        walkers' (default the parameters'); the parameters are cast first and inv_var and
        log_coef computed in it, as forward() does."""
        dtype = dtype or self.means.dtype
        return (self.means.detach().to(dtype), torch.exp(-self.log_var.detach().to(dtype)),
                self._log_coef(dtype).detach())


class DoubleWell(nn.Module):
    """Separable double well on x [N, d]:

        U(x) = barrier * sum_j (x_j^2 - center^2)^2,     grad U(x)_j = 4 barrier x_j (x_j^2 - center^2)

    Minima (U = 0) at every x in {-center, +center}^d (2^d wells), separated along each axis by
    a barrier of height barrier * center^4 at x_j = 0. No closed-form log Z (per axis it is a
    Bessel-function expression); fastlangevin.log_partition estimates it.

    Args:
        dim: d.
        barrier: > 0 (default 1).
        center: > 0, the position of the wells on each axis (default 1).
        learnable: barrier and center are nn.Parameters (else buffers).
    """

    def __init__(self, dim: int, barrier: float = 1.0, center: float = 1.0, *, learnable: bool = False):
        super().__init__()
        op = "DoubleWell"
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"{op}: dim must be an int >= 1, got {dim!r}")
        for name, v in (("barrier", barrier), ("center", center)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ValueError(f"{op}: {name} must be a finite float > 0, got {v!r}")
        self.dim = dim
        for name, v in (("barrier", barrier), ("center", center)):
            t = torch.tensor(float(v))
            if learnable:
                setattr(self, name, nn.Parameter(t))
            else:
                self.register_buffer(name, t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """U(x) [N] (differentiable in x and the parameters)."""
        _check_x("DoubleWell", x, self.dim)
        c2 = self.center.to(x.dtype) ** 2
        return self.barrier.to(x.dtype) * ((x * x - c2) ** 2).sum(dim=1)

    @torch.no_grad()
    def energy_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(U(x) [N], 4 barrier x (x^2 - center^2) [N, d]) in closed form, detached, x's dtype."""
        _check_x("DoubleWell.energy_and_grad", x, self.dim)
        return reference.double_well_energy_ref(x, self.barrier, self.center)

    def double_well_chain_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(barrier, center), detached 0-dim tensors: what the fused double-well chain
        (fastlangevin.chain.double_well_chain) needs."""
        return self.barrier.detach(), self.center.detach()


_MLP_ACTS = {"silu": nn.SiLU, "softplus": nn.Softplus, "tanh": nn.Tanh}


class MLPEnergy(nn.Module):
    """A small MLP energy on x [N, *shape] (flattened to [N, d]):

        h_0 = x,  h_l = act(h_{l-1} W_l^T + b_l)   (l = 1 .. depth, width hidden)
        U(x) = h_depth w^T + b + |x|^2 / (2 ref_var)     (the last term only with ref_var)

    act: "silu", "softplus" or "tanh" (smooth: Langevin needs a continuous drift; ReLU's
    gradient is piecewise constant). With ref_var, e^{-U} is normalisable whenever the MLP grows
    slower than quadratically (silu / softplus are linear at infinity, tanh is bounded): AIS
    log-likelihoods need that.

    Parameters: an nn.Sequential ``net`` of [Linear(d, hidden), act] * depth + [Linear(hidden, 1)],
    so state_dict keys are net.0.weight, net.0.bias, ..., net.{2 depth}.weight/bias, the same as
    models.MLPEnergy (which is this class). ``energy_and_grad`` is the closed-form backward to
    the input (fastlangevin.reference.mlp_energy_ref, no autograd, any size); with
    depth <= 4 and hidden <= 128, sample() and Walkers run whole chains in one fused kernel
    (fastlangevin.chain.mlp_chain; ``mlp_chain_params``). Larger MLPs run step by step.

    Args:
        dim: d, or the per-example shape (its product is used).
        hidden: width >= 1 (default 128); depth: hidden layers >= 1 (default 3).
    """

    def __init__(self, dim, hidden: int = 128, depth: int = 3, act: str = "silu", ref_var: Optional[float] = None):
        super().__init__()
        op = "MLPEnergy"
        try:
            d = int(dim) if isinstance(dim, numbers.Integral) and not isinstance(dim, bool) else math.prod(dim)
        except TypeError:
            raise ValueError(f"{op}: dim must be an int or a shape tuple of ints, got {dim!r}") from None
        for name, v in (("dim", d), ("hidden", hidden), ("depth", depth)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{op}: {name} must be an int >= 1, got {v!r}")
        if act not in _MLP_ACTS:
            raise ValueError(f"{op}: act must be one of {sorted(_MLP_ACTS)} (smooth, for Langevin), got {act!r}")
        if ref_var is not None and not (isinstance(ref_var, (int, float)) and not isinstance(ref_var, bool)
                                        and math.isfinite(ref_var) and ref_var > 0):
            raise ValueError(f"{op}: ref_var must be None or a finite float > 0, got {ref_var!r}")
        layers, width = [], d
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), _MLP_ACTS[act]()]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.dim, self.hidden, self.depth, self.act, self.ref_var = d, hidden, depth, act, ref_var

    def _flat(self, op: str, x) -> torch.Tensor:
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise TypeError(f"{op}: x must be a floating torch.Tensor, got "
                            f"{x.dtype if torch.is_tensor(x) else type(x).__name__}")
        if x.dim() < 1 or x[0].numel() != self.dim:
            raise ValueError(f"{op}: x has shape {_shape(x)}, expected [N, ...] with {self.dim} values per walker")
        return x.reshape(x.shape[0], self.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """U(x) [N] from torch ops (differentiable in x and the parameters)."""
        xf = self._flat("MLPEnergy", x)
        if all(p.dtype == xf.dtype for p in self.parameters()):
            h = self.net(xf)
        else:  # the parameters cast to x's dtype (differentiably), as every energy here does
            h = xf
            for m in self.net:
                h = (nn.functional.linear(h, m.weight.to(xf.dtype), m.bias.to(xf.dtype)) if isinstance(m, nn.Linear)
                     else m(h))
        u = h.squeeze(1)
        if self.ref_var is not None:
            u = u + xf.pow(2).sum(1) / (2.0 * self.ref_var)
        return u

    @property
    def inv_ref_var(self) -> float:
        """1 / ref_var, 0.0 without a reference term."""
        return 0.0 if self.ref_var is None else 1.0 / float(self.ref_var)

    def linears(self) -> list:
        """The depth + 1 nn.Linear layers of ``net`` (the head last)."""
        return [m for m in self.net if isinstance(m, nn.Linear)]

    @torch.no_grad()
    def energy_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(U(x) [N], grad_x U [N, *shape]) in closed form (hand-written backward to the input,
        fastlangevin.reference.mlp_energy_ref), detached, in x's dtype."""
        xf = self._flat("MLPEnergy.energy_and_grad", x)
        ws, bs, act, inv_ref = self.mlp_chain_params()
        u, g = reference.mlp_energy_ref(xf, ws, bs, act, inv_ref)
        return u, g.reshape(x.shape)

    def mlp_chain_params(self) -> tuple[list, list, str, float]:
        """(weights, biases, act, inv_ref_var), detached: what fastlangevin.chain.mlp_chain needs.
        weights: depth + 1 matrices [out, in] (the head [1, hidden] last); biases: [out] each."""
        lin = self.linears()
        return [m.weight.detach() for m in lin], [m.bias.detach() for m in lin], self.act, self.inv_ref_var

    def extra_repr(self) -> str:
        return f"dim={self.dim}, ref_var={self.ref_var}"
