"""sample(): stationary statistics, reproducibility across backends, no autograd leaks, errors."""
import math

import pytest
import torch

import fastlangevin as fl

from conftest import CASES, require


def _gauss_energy(s2):
    return lambda x: 0.5 * (x * x).sum(dim=1) / s2


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("s2,a,noise_std", [(1.0, 0.1, None), (4.0, 0.5, 0.3)])
def test_ula_stationary_variance(device, backend, s2, a, noise_std):
    """ULA on U = x^2 / (2 s^2) is the AR(1) x' = (1 - a/s^2) x + sigma xi with stationary variance
    sigma^2 / (1 - (1 - a/s^2)^2), which differs from s^2 (the discretisation bias).

    10^5 walkers; after 150 burn-in steps (contraction 0.9^150 < 1e-6), the variance is
    averaged over 200 more steps. Walker variances are chi^2-distributed (relative sd
    sqrt(2/N) = 0.45% per step) and 200 steps with autocorrelation rho^(2k) give about 10
    effective independent snapshots, so the sd of the average is about 0.15%: a 1% bound is
    over 6 sd, and a bias of 1% in the step's noise variance would already break it."""
    require(device, backend)
    if device == "cpu" and backend == "triton" and s2 != 1.0:
        pytest.skip("the Triton interpreter takes ~1 min per run; one parametrisation covers it")
    n = 100_000
    sigma2 = 2 * a if noise_std is None else noise_std**2
    rho = 1 - a / s2
    want = sigma2 / (1 - rho**2)
    x0 = torch.zeros(n, 1, device=device)
    res = fl.sample(_gauss_energy(s2), x0, 150, a, noise_std, seed=11, backend=backend)
    res = fl.sample(_gauss_energy(s2), res.x, 200, a, noise_std, seed=11, offset=150, backend=backend,
                    return_trajectory=True)
    v = res.trajectory[1:].double().var(dim=1).mean().item()
    assert abs(v / want - 1) < 0.01, f"stationary variance {v:.5f}, exact ULA {want:.5f}"
    assert abs(res.trajectory[1:].double().mean().item()) < 0.01  # sd of the mean ~ 1e-3
    # the discretisation bias is real and resolved: the target variance s^2 is more than 1% off
    if noise_std is None:
        assert abs(v / s2 - 1) > 0.02


@pytest.mark.parametrize("device,backend", CASES)
def test_same_seed_same_samples_on_every_backend(device, backend):
    require(device, backend)
    torch.manual_seed(0)
    x0 = torch.randn(256, 3)
    energy = lambda x: ((x * x).sum(1) - 1.0) ** 2  # noqa: E731  a ring, non-Gaussian
    want = fl.sample(energy, x0, 50, 0.01, seed=3, backend="reference")
    got = fl.sample(energy, x0.to(device), 50, 0.01, seed=3, backend=backend)
    again = fl.sample(energy, x0.to(device), 50, 0.01, seed=3, backend=backend)
    assert torch.equal(got.x, again.x)
    # float32 rounding differences between backends grow only mildly over 50 contracting steps
    torch.testing.assert_close(got.x.cpu(), want.x, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.energy.cpu(), want.energy, rtol=1e-5, atol=1e-5)
    other = fl.sample(energy, x0.to(device), 50, 0.01, seed=4, backend=backend)
    assert (other.x.cpu() - want.x).abs().max() > 0.1


def test_offset_continues_a_chain_exactly():
    torch.manual_seed(1)
    x0 = torch.randn(64, 2)
    energy = _gauss_energy(1.0)
    full = fl.sample(energy, x0, 30, 0.05, seed=7)
    half = fl.sample(energy, x0, 10, 0.05, seed=7)
    rest = fl.sample(energy, half.x, 20, 0.05, seed=7, offset=10)
    assert torch.equal(full.x, rest.x)


class _MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.SiLU(), torch.nn.Linear(32, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


def test_no_graph_leak_and_no_parameter_grads():
    torch.manual_seed(0)
    model = _MLP()
    x0 = torch.randn(128, 2, requires_grad=True)
    res = fl.sample(model, x0, 5, 0.01, seed=0, return_trajectory=True)
    assert not res.x.requires_grad and res.x.grad_fn is None
    assert not res.energy.requires_grad and res.energy.grad_fn is None
    assert res.trajectory.shape == (6, 128, 2) and not res.trajectory.requires_grad
    assert torch.equal(res.trajectory[0], x0.detach())
    assert all(p.grad is None for p in model.parameters())
    assert x0.grad is None
    # the result does not alias the input
    assert res.x.data_ptr() != x0.data_ptr()
    # and works under no_grad too (the energy still gets its input gradient)
    with torch.no_grad():
        res2 = fl.sample(model, x0, 5, 0.01, seed=0)
    assert torch.equal(res.x, res2.x)


def test_energy_errors():
    x0 = torch.zeros(10, 2)
    with pytest.raises(ValueError, match=r"sample: energy returned shape \[10, 1\], expected \[10\]"):
        fl.sample(lambda x: x.sum(1, keepdim=True), x0, 2, 0.1)
    with pytest.raises(TypeError, match="sample: energy must return a tensor"):
        fl.sample(lambda x: 1.0, x0, 2, 0.1)
    with pytest.raises(ValueError, match="sample: the energy's output does not depend on x"):
        fl.sample(lambda x: x.detach().sum(1), x0, 2, 0.1)

    class Detaches(torch.nn.Module):  # needs grad through its parameter only: x is not in the graph
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def forward(self, x):
            return self.lin(x.detach()).squeeze(1) + 0.5 * (x.detach() ** 2).sum(1)

    for mh in (False, True):  # used to run as plain diffusion (a zero drift), silently
        with pytest.raises(ValueError, match=r"sample: the energy's output does not depend on x through autograd "
                                             r"\(it depends on the energy's parameters only"):
            fl.sample(Detaches(), x0, 2, 0.1, mh=mh)
    with pytest.raises(TypeError, match="sample: energy must be callable"):
        fl.sample(3, x0, 2, 0.1)
    with pytest.raises(ValueError, match="sample: step_size must be finite and > 0"):
        fl.sample(lambda x: x.sum(1), x0, 2, -0.1)
    with pytest.raises(ValueError, match="sample: n_steps must be an int >= 0"):
        fl.sample(lambda x: x.sum(1), x0, -1, 0.1)
    with pytest.raises(ValueError, match="sample: clamp has lo > hi"):
        fl.sample(lambda x: x.sum(1), x0, 1, 0.1, clamp=(1, 0))
    with pytest.raises(TypeError, match="sample: x0 must be a floating tensor"):
        fl.sample(lambda x: x.sum(1), torch.zeros(10, 2, dtype=torch.int32), 1, 0.1)


@pytest.mark.parametrize("check_every", [1, 7])
def test_non_finite_is_reported_with_step_and_count(check_every):
    """U = x^4 with a step far too large explodes; the error names the first bad step and how
    many walkers were hit at that step."""
    x0 = torch.tensor([[0.5], [0.6], [3.0], [4.0]])
    energy = lambda x: (x**4).sum(1)  # noqa: E731
    # walkers at 3 and 4 overflow within a few steps of size 0.5; the two small ones stay finite
    with pytest.raises(fl.NonFiniteError, match=r"sample: energy or gradient became non-finite at step (\d+) for 2 walker"):
        fl.sample(energy, x0, 40, 0.5, 0.0, check_every=check_every)
    # find the step independently
    x = x0.clone()
    k = 0
    while True:
        u = (x**4).sum(1)
        g = 4 * x**3
        if not (torch.isfinite(u).all() and torch.isfinite(g).all()):
            break
        x = x - 0.5 * g
        k += 1
    with pytest.raises(fl.NonFiniteError, match=f"at step {k} for 2 walker"):
        fl.sample(energy, x0, 40, 0.5, 0.0, check_every=check_every)


def test_progress_bar_runs(capsys):
    res = fl.sample(_gauss_energy(1.0), torch.zeros(8, 1), 3, 0.1, progress=True)
    assert res.n_steps == 3
    assert "sample" in capsys.readouterr().err


def test_per_walker_step_size_in_sample():
    """Two groups of walkers with different step sizes reach their own stationary variances."""
    n = 20_000
    a = torch.cat([torch.full((n,), 0.1), torch.full((n,), 0.5)])
    res = fl.sample(_gauss_energy(1.0), torch.zeros(2 * n, 1), 200, a, seed=2)
    v1, v2 = res.x[:n].var().item(), res.x[n:].var().item()
    # exact: 2a / (1 - (1 - a)^2): 1.0526 and 1.3333; sd of one sample variance ~ 1%
    assert abs(v1 / (0.2 / (1 - 0.81)) - 1) < 0.05
    assert abs(v2 / (1.0 / (1 - 0.25)) - 1) < 0.05


def test_mala_offsets_stay_below_the_uniforms_stream():
    """MALA's accept/reject uniforms of step k are the stream at offset 2^62 | k: a noise offset
    of 2^62 or more would be the same Philox words (the radius uniform of the noise equalled
    the acceptance uniform, and the chain collapsed: acceptance 0.045, variance 0.023 for a
    unit Gaussian). So sample(mh=True) refuses offset + n_steps > 2^62; the last allowed chain
    runs, and ULA (no uniforms) keeps every 64-bit offset."""
    e = lambda x: 0.5 * (x * x).sum(1)  # noqa: E731
    x0 = torch.zeros(16, 2)
    for off in (1 << 62, (1 << 62) - 2, (1 << 63) + 5):
        with pytest.raises(ValueError, match=rf"sample: with mh=True the steps' noise offsets .* must stay below "
                                             rf"2\^62, got offset={off}, n_steps=3"):
            fl.sample(e, x0, 3, 0.5, mh=True, offset=off)
    ok = fl.sample(e, x0, 3, 0.5, mh=True, offset=(1 << 62) - 3)
    assert ok.x.shape == x0.shape and 0.0 < float(ok.acceptance) <= 1.0
    fl.sample(e, x0, 3, 0.5, offset=(1 << 64) - 2)  # ULA across 2^64: allowed


def test_mala_options_without_mh_are_refused():
    """adapt_steps and target_accept only mean something for MALA: with mh=False they were ignored,
    even invalid values (adapt_steps=-3, target_accept=5)."""
    e = lambda x: 0.5 * (x * x).sum(1)  # noqa: E731
    for kw in (dict(adapt_steps=3), dict(adapt_steps=-3), dict(target_accept=5.0), dict(target_accept=0.3)):
        with pytest.raises(ValueError, match="sample: adapt_steps and target_accept tune MALA's acceptance rate: "
                                             "they need mh=True"):
            fl.sample(e, torch.zeros(4, 2), 5, 0.1, **kw)


def test_closed_form_gradient_of_another_dtype_is_named():
    """A closed-form energy_and_grad whose gradient is float64 for float32 walkers is an error of
    the energy, named as such (it surfaced as a langevin_step dtype error)."""
    class Closed:
        def __call__(self, x):
            return 0.5 * (x * x).sum(1)

        def energy_and_grad(self, x):
            return self(x), x.double()

    with pytest.raises(TypeError, match=r"sample: energy.energy_and_grad returned a torch.float64 gradient on cpu, "
                                        r"expected x's torch.float32 on cpu"):
        fl.sample(Closed(), torch.zeros(4, 2), 2, 0.1)


def test_counts_accept_numpy_integers():
    """n_steps and the other counts are ints, numpy integers included (np.int64(3) was refused),
    never bools or floats."""
    import numpy as np

    from fastlangevin.energies import MLPEnergy

    e = lambda x: 0.5 * (x * x).sum(1)  # noqa: E731
    x0 = torch.zeros(4, 2)
    assert fl.sample(e, x0, np.int64(3), 0.1, seed=1).n_steps == 3
    assert torch.equal(fl.sample(e, x0, np.int64(3), 0.1, seed=1).x, fl.sample(e, x0, 3, 0.1, seed=1).x)
    w = fl.Walkers(e, x0, 0.1)
    w.step(np.int32(2))
    assert w.steps == 2 and type(w.steps) is int
    assert MLPEnergy(np.int64(3)).dim == 3
    for bad in (True, -1, 2.0):
        with pytest.raises(ValueError, match="sample: n_steps must be an int >= 0"):
            fl.sample(e, x0, bad, 0.1)
    with pytest.raises(ValueError, match="log_partition: n_walkers must be an int >= 1, got True"):
        fl.log_partition(e, 2, n_walkers=True)
    with pytest.raises(ValueError, match="log_partition: dim must be a positive int or a shape tuple, got 2.0"):
        fl.log_partition(e, 2.0)
    with pytest.raises(ValueError, match="MLPEnergy: dim must be an int or a shape tuple of ints, got 2.0"):
        MLPEnergy(2.0)
