"""fastlangevin.energies: closed-form gradients against autograd, log Z against quadrature,
numerical range, Carbone et al.'s student energy, and the closed-form protocol of sample()."""
import copy
import math

import pytest
import torch

import fastlangevin as fl
from fastlangevin.energies import DoubleWell, Gaussian, GaussianMixture


def _autograd(energy, x):
    xr = x.detach().clone().requires_grad_(True)
    u = energy(xr)
    (g,) = torch.autograd.grad(u.sum(), xr)
    return u.detach(), g


def _carbone_teacher(d=50, dtype=torch.float64):
    """Two unit-variance modes at -10 e1 and 6 e1 with masses 1/4 and 3/4 (../shared/PAPERS.md 1.5)."""
    means = torch.zeros(2, d, dtype=dtype)
    means[0, 0], means[1, 0] = -10.0, 6.0
    return GaussianMixture(means, torch.tensor([0.25, 0.75], dtype=dtype).log())


def _energies(d, dtype):
    gen = torch.Generator().manual_seed(0)
    k = 3
    means = 4 * torch.randn(k, d, generator=gen, dtype=dtype)
    lw = torch.randn(k, generator=gen, dtype=dtype)
    return {
        "gaussian": Gaussian(torch.randn(d, generator=gen, dtype=dtype), 0.5 + torch.rand(d, generator=gen, dtype=dtype)),
        "gmm-scalar": GaussianMixture(means, lw, 1.7),
        "gmm-per-component": GaussianMixture(means, lw, 0.5 + torch.rand(k, generator=gen, dtype=dtype)),
        "gmm-diagonal": GaussianMixture(means, lw, 0.5 + torch.rand(k, d, generator=gen, dtype=dtype)),
        "carbone-teacher": _carbone_teacher(d, dtype),
        "double-well": DoubleWell(d, barrier=0.7, center=1.3),
    }


@pytest.mark.parametrize("name", list(_energies(2, torch.float64)))
def test_closed_form_equals_autograd_float64(name):
    """At |x| up to ~30 in d = 50, float64: energy and gradient agree to 1e-12 relative."""
    energy = _energies(50, torch.float64)[name]
    x = 10 * torch.randn(512, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    u_ref, g_ref = _autograd(energy, x)
    u, g = energy.energy_and_grad(x)
    assert u.shape == (512,) and g.shape == x.shape and u.dtype == g.dtype == torch.float64
    assert not u.requires_grad and not g.requires_grad
    torch.testing.assert_close(u, u_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10 * g_ref.abs().max().item())


@pytest.mark.parametrize("name", list(_energies(2, torch.float64)))
def test_float32_stable_far_from_the_modes(name):
    """float32 walkers at |x| ~ 10 per coordinate in d = 50 (|x| ~ 70): U and grad finite and
    within float32 rounding of the float64 values (q_k ~ -1e4 there: exp alone would underflow)."""
    e64 = _energies(50, torch.float64)[name]
    e32 = copy.deepcopy(e64).float()
    x64 = 10 * torch.randn(512, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    u, g = e32.energy_and_grad(x64.float())
    u_ref, g_ref = e64.energy_and_grad(x64.float().double())
    assert u.dtype == torch.float32 and torch.isfinite(u).all() and torch.isfinite(g).all()
    torch.testing.assert_close(u.double(), u_ref, rtol=1e-5, atol=0)
    # Between two modes the responsibilities softmax(q) inherit q's float32 rounding,
    # |q| ~ 1e4 * 2^-24 ~ 6e-4 absolute, times |means_1 - means_2| / var: measured 1.5e-5 of
    # max |grad| for the mixtures, 1e-7 for the Gaussian and the double well.
    torch.testing.assert_close(g.double(), g_ref, rtol=0, atol=1e-4 * g_ref.abs().max().item())
    # the autograd forward agrees too
    torch.testing.assert_close(e32(x64.float()).double(), u_ref, rtol=1e-5, atol=0)


def _grid_log_z(energy, d, lo=-25.0, hi=25.0, n=4001):
    t = torch.linspace(lo, hi, n, dtype=torch.float64)
    if d == 1:
        u = energy(t[:, None])
        return math.log(torch.trapezoid(torch.exp(-u), t).item())
    tx, ty = torch.meshgrid(t, t, indexing="ij")
    u = energy(torch.stack([tx.reshape(-1), ty.reshape(-1)], 1)).reshape(n, n)
    return math.log(torch.trapezoid(torch.trapezoid(torch.exp(-u), t, dim=1), t).item())


@pytest.mark.parametrize("d", [1, 2])
def test_log_z_against_quadrature(d):
    gen = torch.Generator().manual_seed(3)
    cases = [
        Gaussian(torch.randn(d, generator=gen, dtype=torch.float64), torch.tensor([0.7, 2.1][:d], dtype=torch.float64)),
        GaussianMixture(3 * torch.randn(3, d, generator=gen, dtype=torch.float64),
                        torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64), torch.tensor([0.5, 1.0, 3.0])),
        GaussianMixture(3 * torch.randn(2, d, generator=gen, dtype=torch.float64),
                        torch.tensor([5.0, 0.0], dtype=torch.float64),
                        0.3 + torch.rand(2, d, generator=gen, dtype=torch.float64)),
    ]
    n = 4001 if d == 1 else 1201
    for e in cases:
        got = e.log_z().item()
        want = _grid_log_z(e, d, n=n)
        assert abs(got - want) < 1e-6, (type(e).__name__, got, want)


def test_carbone_student_is_a_unit_variance_mixture():
    """U(x) = -log sum_i exp(-|x - a_i|^2 / 2 - z_i) == GaussianMixture(a, log_weights=-z), var 1."""
    gen = torch.Generator().manual_seed(4)
    a = 5 * torch.randn(2, 50, generator=gen, dtype=torch.float64)
    z = torch.tensor([0.0, -1.3], dtype=torch.float64)
    x = 8 * torch.randn(256, 50, generator=gen, dtype=torch.float64)
    carbone = -torch.logsumexp(-0.5 * ((x[:, None, :] - a) ** 2).sum(-1) - z, dim=1)
    gmm = GaussianMixture(a, -z)
    torch.testing.assert_close(gmm(x), carbone, rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(gmm.energy_and_grad(x)[0], carbone, rtol=1e-13, atol=1e-12)
    # mixture weights are softmax(-z): the teacher's masses 1/4, 3/4 come back
    t = _carbone_teacher()
    torch.testing.assert_close(t.weights, torch.tensor([0.25, 0.75], dtype=torch.float64))


def test_parameters_learnable_and_gradients_flow():
    gmm = GaussianMixture(torch.zeros(2, 3), torch.zeros(2))
    names = {n for n, _ in gmm.named_parameters()}
    assert names == {"means", "log_weights"}
    assert {n for n, _ in GaussianMixture(torch.zeros(2, 3), learn_var=True).named_parameters()} == {
        "means", "log_weights", "log_var"}
    assert list(GaussianMixture(torch.zeros(2, 3), learnable=False).parameters()) == []
    x = torch.randn(16, 3)
    gmm(x).mean().backward()
    assert gmm.means.grad is not None and gmm.means.grad.abs().sum() > 0
    # d log Z / d log_weights = softmax(log_weights)
    gmm2 = GaussianMixture(torch.zeros(2, 3), torch.tensor([0.0, 1.0]))
    gmm2.log_z().backward()
    torch.testing.assert_close(gmm2.log_weights.grad, torch.softmax(torch.tensor([0.0, 1.0]), 0))


def test_energy_errors():
    with pytest.raises(ValueError, match=r"GaussianMixture: means has shape \[3\], expected \[K, d\]"):
        GaussianMixture(torch.zeros(3))
    with pytest.raises(ValueError, match=r"GaussianMixture: log_weights has shape \[3\], expected \[2\]"):
        GaussianMixture(torch.zeros(2, 4), torch.zeros(3))
    with pytest.raises(ValueError, match=r"GaussianMixture: var has shape \[3\], expected a scalar, \[2\] or \[2, 4\]"):
        GaussianMixture(torch.zeros(2, 4), var=torch.ones(3))
    with pytest.raises(ValueError, match="GaussianMixture: var must be finite and > 0"):
        GaussianMixture(torch.zeros(2, 4), var=-1.0)
    with pytest.raises(ValueError, match="Gaussian: give exactly one of var and log_var"):
        Gaussian(torch.zeros(4), 1.0, log_var=0.0)
    with pytest.raises(ValueError, match=r"GaussianMixture.energy_and_grad: x has shape \[5, 3\], expected \[N, 4\]"):
        GaussianMixture(torch.zeros(2, 4)).energy_and_grad(torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"DoubleWell: x has shape \[5\], expected \[N, 2\]"):
        DoubleWell(2)(torch.zeros(5))
    with pytest.raises(ValueError, match="DoubleWell: barrier must be a finite float > 0"):
        DoubleWell(2, barrier=0.0)


# --------------------------------------------------------------------------------------------
# the closed-form protocol in sample() / Walkers
# --------------------------------------------------------------------------------------------

class _ClosedOnly:
    """An energy that autograd cannot differentiate (forward detaches) but that provides the
    closed-form protocol: U = |x|^2 / 2, grad = x."""

    calls = 0

    def __call__(self, x):
        return 0.5 * (x.detach() ** 2).sum(1)

    def energy_and_grad(self, x):
        type(self).calls += 1
        return 0.5 * (x**2).sum(1), x.clone()


def test_sample_uses_the_closed_form_when_given():
    x0 = torch.randn(64, 3, generator=torch.Generator().manual_seed(5))
    e = _ClosedOnly()
    _ClosedOnly.calls = 0
    res = fl.sample(e, x0, 7, 0.1, seed=2)
    assert _ClosedOnly.calls == 7
    # the same chain with autograd on the same energy
    want = fl.sample(lambda x: 0.5 * (x**2).sum(1), x0, 7, 0.1, seed=2)
    torch.testing.assert_close(res.x, want.x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["gaussian", "gmm-diagonal", "double-well"])
def test_sample_closed_form_equals_autograd_path(name):
    """Same seed, same noise: the closed-form path and the autograd path give the same chain
    (float64, tolerance from the different order of the gradient arithmetic)."""
    e = _energies(4, torch.float64)[name]
    x0 = torch.randn(128, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    a = 1e-3 if name == "double-well" else 1e-2
    got = fl.sample(e, x0, 30, a, seed=9, backend="cpu")
    want = fl.sample(lambda x: e(x), x0, 30, a, seed=9, backend="cpu")
    torch.testing.assert_close(got.x, want.x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got.energy, want.energy, rtol=1e-9, atol=1e-9)
    assert all(p.grad is None for p in e.parameters())


def test_protocol_output_is_checked():
    class Bad:
        def __call__(self, x):
            return x.sum(1)

        def energy_and_grad(self, x):
            return x.sum(1), x[:, :1]

    with pytest.raises(ValueError, match=r"sample: energy.energy_and_grad returned a gradient of shape \[4, 1\], "
                                         r"expected x's shape \[4, 2\]"):
        fl.sample(Bad(), torch.zeros(4, 2), 1, 0.1)


def test_walkers_closed_form_equals_autograd_path():
    e = _energies(3, torch.float64)["gmm-per-component"]
    x0 = torch.randn(256, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    w1 = fl.Walkers(e, x0, 0.3, seed=3, resample="systematic", ess_threshold=0.9)
    w2 = fl.Walkers(lambda x: e(x), x0, 0.3, seed=3, resample="systematic", ess_threshold=0.9)
    w1.step(20)
    w2.step(20)
    assert int(w1.n_resampled) == int(w2.n_resampled) >= 1
    for k in ("x", "grad", "energy", "log_weights"):
        torch.testing.assert_close(getattr(w1, k), getattr(w2, k), rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------- MLPEnergy
def _mlp(d, depth, act, ref_var, dtype, hidden=16, seed=0):
    from fastlangevin.energies import MLPEnergy

    torch.manual_seed(seed)
    e = MLPEnergy(d, hidden=hidden, depth=depth, act=act, ref_var=ref_var).to(dtype)
    with torch.no_grad():  # larger than nn.Linear's init so every activation's curvature matters
        for p in e.parameters():
            p.mul_(2.0)
    return e


@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float32, 2e-5, 2e-5), (torch.float64, 1e-12, 1e-12)])
@pytest.mark.parametrize("ref_var", [None, 2.0])
@pytest.mark.parametrize("act", ["silu", "softplus", "tanh"])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_mlp_energy_and_grad_matches_autograd(depth, act, ref_var, dtype, rtol, atol):
    d = 5
    e = _mlp(d, depth, act, ref_var, dtype)
    x = 2 * torch.randn(33, d, dtype=dtype, generator=torch.Generator().manual_seed(1))
    u, g = e.energy_and_grad(x)
    u_ref, g_ref = _autograd(e, x)
    assert u.dtype == g.dtype == dtype and not u.requires_grad and not g.requires_grad
    torch.testing.assert_close(u, u_ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(g, g_ref, rtol=rtol, atol=atol)


def test_mlp_energy_shapes_state_dict_and_errors():
    from fastlangevin.energies import MLPEnergy

    e = MLPEnergy((1, 4, 4), hidden=8, depth=2, act="tanh", ref_var=1.5)
    assert list(e.state_dict()) == [f"net.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")]
    x = torch.randn(6, 1, 4, 4)
    u, g = e.energy_and_grad(x)
    assert u.shape == (6,) and g.shape == x.shape
    torch.testing.assert_close(u, e(x))
    import models  # the trainers' MLPEnergy is this class: same keys, loads the same state

    m = models.MLPEnergy((1, 4, 4), hidden=8, depth=2, act="tanh", ref_var=1.5)
    m.load_state_dict(e.state_dict())
    torch.testing.assert_close(m(x), e(x))
    assert isinstance(m, MLPEnergy)
    with pytest.raises(ValueError, match="MLPEnergy: depth"):
        MLPEnergy(2, depth=0)
    with pytest.raises(ValueError, match="MLPEnergy: hidden"):
        MLPEnergy(2, hidden=0)
    with pytest.raises(ValueError, match="MLPEnergy: act must be one of"):
        MLPEnergy(2, act="relu")
    with pytest.raises(ValueError, match="MLPEnergy: ref_var"):
        MLPEnergy(2, ref_var=0.0)
    with pytest.raises(ValueError, match=r"MLPEnergy.energy_and_grad: x has shape \[3, 5\]"):
        e.energy_and_grad(torch.randn(3, 5))


def test_float32_parameters_evaluate_float64_walkers_in_float64():
    """The module docstring's promise: a call casts the parameters to x's dtype, so float32
    parameters evaluate float64 walkers in float64. chain_params(dtype) computes inv_var and
    log_coef after the cast (it computed exp(-log_var) in float32 and cast after: errors of
    ~1e-8 in U, 6e-7 in the gradient), so the fused chain and the step-by-step path agree bit
    for bit on the reference backend, and MLPEnergy.forward runs at all (F.linear refused
    float32 weights with float64 x, after every step of a sample() had run)."""
    from fastlangevin.chain import StepByStep
    from fastlangevin.energies import MLPEnergy

    torch.manual_seed(0)
    x = (3 * torch.randn(64, 2)).double()
    gmm = GaussianMixture(torch.randn(3, 2), torch.randn(3), 0.5 + torch.rand(3, 2))
    gauss = Gaussian(torch.randn(2), torch.tensor([0.7, 1.3]))
    for e in (gmm, gauss):
        e64 = copy.deepcopy(e).double()
        u, g = e.energy_and_grad(x)
        u64, g64 = e64.energy_and_grad(x)
        assert u.dtype == g.dtype == torch.float64
        torch.testing.assert_close(u, u64, rtol=1e-15, atol=1e-15)
        torch.testing.assert_close(g, g64, rtol=1e-14, atol=1e-14)
        assert all(p.dtype == torch.float64 for p in e.chain_params(torch.float64))
        w1 = fl.Walkers(e, x, 0.05, seed=3, backend="reference")
        w2 = fl.Walkers(StepByStep(e), x, 0.05, seed=3, backend="reference")
        w1.step(20)
        w2.step(20)
        assert torch.equal(w1.x, w2.x) and torch.equal(w1.log_weights, w2.log_weights)
    mlp = MLPEnergy(2, hidden=8, depth=2)
    mlp64 = copy.deepcopy(mlp).double()
    assert mlp(x).dtype == torch.float64
    torch.testing.assert_close(mlp(x), mlp64(x), rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(mlp.energy_and_grad(x)[1], _autograd(mlp64, x)[1], rtol=1e-13, atol=1e-13)
    res = fl.sample(StepByStep(mlp), x, 5, 0.05, seed=1)  # the final energy goes through forward
    assert res.energy.dtype == torch.float64
    assert mlp(x.half()).dtype == torch.float16


def test_non_finite_means_are_refused():
    nan = float("nan")
    with pytest.raises(ValueError, match="GaussianMixture: means must be finite"):
        GaussianMixture(torch.tensor([[0.0, nan], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="Gaussian: mean must be finite"):
        Gaussian(torch.tensor([0.0, float("inf")]))
