"""models/ebm.py: the trainable energies (shapes, the GMM student's exact formulas, factory)."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.special import logsumexp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import ConvEBM, GMMStudent, MLPEnergy, NijkampEBM, build_energy  # noqa: E402
from train.data import load  # noqa: E402


def _student(dim=50, k=2, seed=0):
    s = GMMStudent(dim, k, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():  # move away from the symmetric init so every term matters
        s.means.mul_(30).add_(torch.randn(k, dim, generator=torch.Generator().manual_seed(1)))
        s.z_rest.copy_(torch.linspace(-1.5, 2.0, k - 1))
    return s


def test_gmm_student_paper_init():
    s = GMMStudent(50, generator=torch.Generator().manual_seed(0))
    assert s.means.dtype == torch.float64 and s.means.shape == (2, 50)
    assert s.means[0, 0].item() == -0.1 and s.means[1, 0].item() == 0.1
    assert float(s.means.detach()[:, 1:].abs().max()) < 0.05  # 0.01 N(0, 1): 5 std
    assert s.z.tolist() == [0.0, 0.0] and s.mode_weights().tolist() == [0.5, 0.5]
    assert [n for n, _ in s.named_parameters()] == ["means", "z_rest"]


def test_gmm_student_energy_matches_numpy_float64():
    s = _student(dim=50, k=3)
    x = torch.randn(64, 50, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 10
    u = s(x)
    assert u.shape == (64,) and u.dtype == torch.float64
    a, z, xn = s.means.detach().numpy(), s.z.detach().numpy(), x.numpy()
    logits = -0.5 * ((xn[:, None, :] - a[None]) ** 2).sum(-1) - z[None]
    np.testing.assert_allclose(u.detach().numpy(), -logsumexp(logits, axis=1), rtol=1e-12, atol=1e-9)
    # |x| ~ 70 here: the exponents are ~ -1e3 to -1e4, finite thanks to logsumexp
    assert bool(torch.isfinite(u).all())
    # differentiable in x and in the parameters
    xr = x.clone().requires_grad_(True)
    s(xr).sum().backward()
    assert xr.grad is not None and s.means.grad is not None and s.z_rest.grad is not None


@pytest.mark.parametrize("dim", [1, 2])
def test_gmm_student_log_z_by_quadrature(dim):
    s = GMMStudent(dim, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        s.means.copy_(torch.tensor([[-1.5, 0.3], [2.0, -0.7]])[:, :dim])
        s.z_rest.fill_(0.8)

    def p(*xs):
        with torch.no_grad():
            return math.exp(-float(s(torch.tensor([xs], dtype=torch.float64))))

    if dim == 1:
        z, _ = integrate.quad(p, -12, 12, epsabs=1e-12)
    else:  # a fine grid (trapezoid = Riemann sum here: the integrand is ~0 at the edges)
        g = torch.linspace(-10, 10, 801, dtype=torch.float64)
        pts = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
        with torch.no_grad():
            z = float(torch.exp(-s(pts)).sum()) * float(g[1] - g[0]) ** 2
    assert float(s.log_z().detach()) == pytest.approx(math.log(z), abs=1e-6)
    assert s.log_z().dim() == 0


def test_gmm_student_z0_frozen_under_optimizer():
    s = _student(dim=5, k=3)
    opt = torch.optim.SGD(s.parameters(), lr=0.1)
    x = torch.randn(32, 5, dtype=torch.float64)
    z_before = s.z.detach().clone()
    (s(x).mean() + s.log_z()).backward()  # the cross-entropy: its z-gradient is nonzero
    opt.step()
    z_after = s.z.detach()
    assert z_after[0] == z_before[0] == 0.0
    assert bool((z_after[1:] != z_before[1:]).all())


def test_gmm_student_mode_weights_and_sample():
    s = GMMStudent(50, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        s.means[:, 0] = torch.tensor([-10.0, 6.0])
        s.z_rest.fill_(-math.log(3.0))  # weights softmax(-z) = (1/4, 3/4)
    w = s.mode_weights().detach()
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-15)
    assert w.tolist() == pytest.approx([0.25, 0.75], abs=1e-12)
    n = 20_000
    x = s.sample(n, torch.Generator().manual_seed(3))
    assert x.shape == (n, 50) and x.dtype == torch.float64
    frac = float((x[:, 0] < -2).double().mean())
    se = math.sqrt(0.25 * 0.75 / n)  # 0.0031
    assert abs(frac - 0.25) < 4 * se
    # within a mode: N(a_i, I); check the second mode's mean and per-coordinate variance
    x1 = x[x[:, 0] > -2]
    assert float((x1.mean(0) - s.means[1].detach()).abs().max()) < 4 / math.sqrt(len(x1)) * 1.5
    assert float(x1.var(0).mean()) == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("act", ["silu", "softplus", "tanh"])
def test_mlp_energy_shapes(act):
    e = MLPEnergy((1, 4, 4), hidden=16, depth=2, act=act, ref_var=2.0)
    x = torch.randn(7, 1, 4, 4)
    u = e(x)
    assert u.shape == (7,) and u.dtype == torch.float32
    assert torch.allclose(e(x.reshape(7, 16)), u)
    with torch.no_grad():  # the reference term is exactly |x|^2 / (2 ref_var)
        e.net[-1].weight.zero_()
        e.net[-1].bias.zero_()
    assert torch.allclose(e(x), x.reshape(7, -1).pow(2).sum(1) / 4.0)


def test_mlp_energy_rejects_nonsmooth_activation():
    with pytest.raises(ValueError, match="smooth"):
        MLPEnergy(2, act="relu")
    with pytest.raises(ValueError, match="ref_var"):
        MLPEnergy(2, ref_var=-1.0)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
def test_conv_ebm_shapes(shape):
    e = ConvEBM(shape, ref_var=1.0)
    x = torch.randn(3, *shape, requires_grad=True)
    u = e(x)
    assert u.shape == (3,)
    (g,) = torch.autograd.grad(u.sum(), x)
    assert g.shape == x.shape
    assert torch.allclose(e(x.detach().reshape(3, -1)), u.detach())


def test_nijkamp_ebm_shapes():
    e = NijkampEBM(nf=8, in_ch=3)
    convs = [m for m in e.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (3, 8, 3, 1), (8, 16, 4, 2), (16, 32, 4, 2), (32, 64, 4, 2), (64, 1, 4, 1)]
    x = torch.randn(2, 3, 32, 32)
    assert e(x).shape == (2,) and torch.allclose(e(x.reshape(2, -1)), e(x))


def test_build_energy_defaults():
    gmm = load("gmm", n_train=10, dim=4)
    s = build_energy("gmm_student", gmm)
    assert isinstance(s, GMMStudent) and s.means.dtype == torch.float64 and s(gmm.train).shape == (10,)
    toy = load("8gaussians", n_train=10)
    m = build_energy("mlp", toy, hidden=8)
    assert m(toy.train).shape == (10,) and m.net[0].out_features == 8
    dig = load("digits", n_train=10)
    c = build_energy("conv", dig)
    assert c(dig.train).shape == (10,)
    assert build_energy("mlp", dig)(dig.train).shape == (10,)
    with pytest.raises(ValueError, match="32x32"):
        build_energy("nijkamp", dig)
    with pytest.raises(ValueError, match="image"):
        build_energy("conv", toy)
    with pytest.raises(ValueError, match="available"):
        build_energy("nope", toy)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_gmm_student_closed_form_matches_autograd_and_the_library_mixture(dtype, tol):
    """GMMStudent's closed-form (U, grad U) equals autograd of its forward, and the student is
    fastlangevin.energies.GaussianMixture(means, log_weights=-z, var=1) (which lets Walkers run
    it as a fused chain)."""
    import fastlangevin as fl

    g = torch.Generator().manual_seed(3)
    m = GMMStudent(50, init="randn", generator=g, dtype=dtype)
    with torch.no_grad():
        m.z_rest.fill_(0.7)
    x = (3 * torch.randn(64, 50, generator=g, dtype=torch.float64)).to(dtype)
    x[:, 0] -= 8
    u, grad = m.energy_and_grad(x)
    xr = x.clone().requires_grad_(True)
    u_ad = m(xr)
    (g_ad,) = torch.autograd.grad(u_ad.sum(), xr)
    scale = float(g_ad.abs().max())
    assert torch.allclose(u, u_ad.detach(), rtol=tol, atol=tol * 100) and (grad - g_ad).abs().max() <= tol * scale
    lib = fl.energies.GaussianMixture(m.means.detach(), log_weights=-m.z.detach(), var=1.0)
    u_lib, g_lib = lib.energy_and_grad(x)
    assert (u - u_lib).abs().max() <= tol * 100 and (grad - g_lib).abs().max() <= tol * scale
    assert abs(float(lib.log_z().detach()) - float(m.log_z().detach())) < 1e-9
