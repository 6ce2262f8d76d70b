"""Walkers (Jarzynski-weighted ULA + SMC), MALA and AIS: the statistical claims of Carbone et al.
and of the Metropolis correction, with stated sample sizes and tolerances."""
import math

import pytest
import torch

import fastlangevin as fl
from fastlangevin import Walkers

from conftest import CASES, require


class ScaledGaussian:
    """U_theta(x) = |x|^2 / (2 s^2) with a parameter s that the test changes between steps."""

    def __init__(self, s=1.0):
        self.s = s

    def __call__(self, x):
        return 0.5 * (x * x).reshape(x.shape[0], -1).sum(1) / self.s**2


def _weighted_se(walkers):
    """Delta-method standard error of log mean exp(A): sqrt((N / ESS - 1) / N)."""
    n, ess = walkers.n, float(walkers.ess)
    return math.sqrt((n / ess - 1.0) / n)


@pytest.mark.parametrize("device,backend", CASES)
def test_jarzynski_moving_target(device, backend):
    """U_t = |x|^2 / (2 s_t^2) in d = 10, s_t from 1 to 2 linearly over 200 steps of size 0.05:
    too fast for the walkers to follow (unweighted <x^2> lags at ~3.4 instead of 4).

    log Z_t - log Z_0 = d log s_t, so log_z must be d log 2 = 6.931 within 3 standard errors
    (10^4 walkers, no resampling: the delta-method SE is exact to first order; ~0.03 here).
    Weighted <x^2> per coordinate must match s_t^2 = 4: its SE with ESS ~ 1000 is
    sqrt(Var(mean_d x^2) / ESS) = sqrt(3.2 / 1000) = 0.057, the bound 0.2 is 3.5 SE; the
    unweighted mean misses by ~0.6."""
    require(device, backend)
    d, n = 10, 10_000
    energy = ScaledGaussian(1.0)
    x0 = fl.randn((n, d), seed=99, offset=5, device=device)  # exact samples of U_0
    w = Walkers(energy, x0, 0.05, seed=1, resample=None, backend=backend)
    for k in range(1, 201):
        energy.s = 1.0 + k / 200
        w.step()
    want = d * math.log(2.0)
    se = _weighted_se(w)
    assert abs(float(w.log_z) - want) < 3 * se, (float(w.log_z), want, se)
    m2 = (w.x.double() ** 2).mean(dim=1)
    weighted = float(w.expectation(m2))
    unweighted = float(m2.mean())
    assert abs(weighted - 4.0) < 0.2, weighted
    assert abs(unweighted - 4.0) > 0.4, unweighted
    assert int(w.n_resampled) == 0


def test_jarzynski_moving_target_with_resampling():
    """Same experiment with systematic resampling at ESS < N/2: log_z is carried across the
    resampling events (at least one happens) and still lands within 0.1 of d log 2 (the
    resampled estimator's sd, measured over seeds 0-4, is ~0.03)."""
    d, n = 10, 10_000
    energy = ScaledGaussian(1.0)
    w = Walkers(energy, fl.randn((n, d), seed=99, offset=5), 0.05, seed=2, resample="systematic")
    for k in range(1, 201):
        energy.s = 1.0 + k / 200
        w.step()
    assert int(w.n_resampled) >= 1
    assert abs(float(w.log_z) - 10 * math.log(2.0)) < 0.1
    m2 = float(w.expectation((w.x.double() ** 2).mean(dim=1)))
    assert abs(m2 - 4.0) < 0.2


@pytest.mark.parametrize("device,backend", CASES)
def test_weighted_ula_fixes_the_step_size_bias(device, backend):
    """Fixed U = x^2 / 2, large step a = 0.5: ULA's stationary variance is
    2a / (1 - (1 - a)^2) = 1.333 (33% off). Started from exact N(0, 1) samples, the Jarzynski
    weights (with parameters fixed they are the MH ratios) keep the weighted ensemble exact:
    after 100 steps the weighted variance is 1 within 3%, with 2 * 10^4 walkers (ESS stays
    above N/2 here, so the sd of the weighted variance is ~1.4%)."""
    require(device, backend)
    n = 20_000
    w = Walkers(ScaledGaussian(1.0), fl.randn((n, 1), seed=7, device=device), 0.5, seed=3,
                resample="systematic", backend=backend)
    w.step(100)
    x2 = w.x.double().squeeze(1) ** 2
    weighted = float(w.expectation(x2))
    assert abs(weighted - 1.0) < 0.03, weighted
    assert abs(float(x2.mean()) - 4.0 / 3.0) < 0.05  # the unweighted walkers are ULA's


@pytest.mark.parametrize("device,backend", CASES)
def test_mala_stationary_variance(device, backend):
    """MALA at a = 0.5 on U = x^2 / 2: stationary variance 1 within 1%, where ULA's
    2a / (1 - (1 - a)^2) = 1.333 is 33% off. 10^5 walkers started from exact N(0, 1) draws
    (MALA keeps them exact; ULA relaxes to 1.333 at rate 0.25 per step), variance averaged over
    steps 10-60: one step's sample variance has sd sqrt(2 / 10^5) = 0.45% and MALA decorrelates
    within a few steps, so the average's sd is ~0.15%: the 1% bound is over 6 sd."""
    require(device, backend)
    n = 100_000
    energy = ScaledGaussian(1.0)
    x0 = fl.randn((n, 1), seed=21, device=device)
    res = fl.sample(energy, x0, 60, 0.5, seed=4, mh=True, backend=backend, return_trajectory=True)
    v = res.trajectory[10:].double().var(dim=1).mean().item()
    assert abs(v - 1.0) < 0.01, v
    assert 0.5 < float(res.acceptance) < 1.0
    ula = fl.sample(energy, x0, 60, 0.5, seed=4, backend=backend)
    assert abs(ula.x.double().var().item() - 1.0) > 0.05


def test_mala_step_size_adaptation():
    """Warm-up adaptation reaches the target acceptance 0.574 within 0.05 (2 * 10^4 walkers:
    the acceptance rate's sd per step is 0.004)."""
    res = fl.sample(ScaledGaussian(1.0), torch.zeros(20_000, 1), 300, 0.1, seed=3, mh=True, adapt_steps=150)
    assert abs(float(res.acceptance) - 0.574) < 0.05
    assert res.step_size.shape == (20_000,) and float(res.step_size[0]) > 0.5  # grew from 0.1


def test_mala_refuses_clamp_and_clip():
    e = ScaledGaussian()
    with pytest.raises(ValueError, match="sample: mh=True cannot be combined with clamp or grad_clip"):
        fl.sample(e, torch.zeros(4, 1), 3, 0.1, mh=True, clamp=(-1, 1))
    with pytest.raises(ValueError, match="sample: mh=True cannot be combined with clamp or grad_clip"):
        fl.sample(e, torch.zeros(4, 1), 3, 0.1, mh=True, grad_clip=1.0)
    with pytest.raises(ValueError, match="sample: mh=True needs noise_std > 0"):
        fl.sample(e, torch.zeros(4, 1), 3, 0.1, 0.0, mh=True)


def _gmm_energy(log_z_shift):
    """A 10-d two-component Gaussian mixture whose normaliser is exp(log_z_shift)."""
    mu = torch.zeros(2, 10)
    mu[0, 0], mu[1, 0] = 3.0, -3.0
    log_w = torch.log(torch.tensor([0.3, 0.7]))
    sig = torch.tensor([0.7, 1.2])

    def energy(x):
        m, lw, sg = mu.to(x.device), log_w.to(x.device), sig.to(x.device)
        d2 = ((x[:, None, :] - m[None]) ** 2).sum(-1)
        log_p = torch.logsumexp(lw - 0.5 * d2 / sg**2 - 10 * torch.log(sg) - 5 * math.log(2 * math.pi), dim=1)
        return -log_p - log_z_shift

    return energy


@pytest.mark.parametrize("device,backend", CASES)
def test_ais_log_partition_of_a_gmm(device, backend):
    """log Z of a 10-d, 2-component mixture with a known normaliser (log Z = 2.0) within 0.1
    nats, and the reported standard error is honest (the error is within 4 of them).

    4096 walkers, 250 annealing steps of size 0.1: over seeds 0-4 at 2048 walkers the errors
    were within 0.053 with standard errors ~0.04; at 4096 the SE is ~0.028, so the 0.1 bound
    is ~3.5 SE."""
    require(device, backend)
    log_z, se = fl.log_partition(_gmm_energy(2.0), 10, n_walkers=4096, n_steps=250, step_size=0.1, seed=0,
                                 device=device, backend=backend)
    assert abs(log_z - 2.0) < 0.1, (log_z, se)
    assert 0 < se < 0.05 and abs(log_z - 2.0) < 4 * se + 1e-3


def test_state_dict_resumes_bit_for_bit():
    torch.manual_seed(0)
    x0 = torch.randn(512, 3)
    e = ScaledGaussian(1.0)
    full = Walkers(e, x0, 0.3, seed=5, resample="multinomial", ess_threshold=0.9)
    full.step(20)
    first = Walkers(e, x0, 0.3, seed=5, resample="multinomial", ess_threshold=0.9)
    first.step(10)
    state = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in first.state_dict().items()}
    resumed = Walkers(e, torch.zeros(512, 3), 0.3, seed=0, resample="multinomial", ess_threshold=0.9)
    resumed.load_state_dict(state)
    resumed.step(10)
    assert int(full.n_resampled) >= 1
    for k in ("x", "grad", "energy", "log_weights"):
        assert torch.equal(getattr(full, k), getattr(resumed, k)), k
    assert torch.equal(full.log_z, resumed.log_z) and full.steps == resumed.steps == 20


def test_resampling_moves_the_cache_with_the_walkers():
    torch.manual_seed(1)
    e = ScaledGaussian(1.3)
    w = Walkers(e, torch.randn(256, 2), 0.2, seed=1, resample=None)
    w.step(5)
    w.log_weights = torch.randn(256, dtype=torch.float64) * 3
    w.per_walker["id"] = torch.arange(256)
    x_before = w.x.clone()
    log_z_before = float(w.log_z)
    w.resample("residual")
    # the trainer's per-walker state travels with the walkers: slot j holds walker id[j]'s x
    ids = w.per_walker["id"]
    assert torch.equal(w.x, x_before[ids]) and len(set(ids.tolist())) < 256
    u_check, g_check = fl.sampler.energy_and_grad(e, w.x)
    assert torch.equal(w.energy, u_check) and torch.equal(w.grad, g_check)
    assert torch.equal(w.log_weights, torch.zeros(256, dtype=torch.float64))
    assert abs(float(w.log_z) - log_z_before) < 1e-12  # log Z carried across the resampling
    assert int(w.n_resampled) == 1


def test_resample_when_flag_decides_on_the_device():
    torch.manual_seed(2)
    w = Walkers(ScaledGaussian(), torch.randn(64, 3), 0.2, seed=3, resample=None)
    w.step(2)
    w.log_weights = torch.randn(64, dtype=torch.float64) * 2
    x0, a0 = w.x.clone(), w.log_weights.clone()
    w.resample("systematic", when=torch.tensor(False))
    assert torch.equal(w.x, x0) and torch.equal(w.log_weights, a0) and int(w.n_resampled) == 0
    forced = Walkers(ScaledGaussian(), torch.randn(64, 3), 0.2, seed=3, resample=None)
    forced.load_state_dict(w.state_dict())
    w.resample("systematic", when=torch.tensor(True))
    forced.resample("systematic")
    assert torch.equal(w.x, forced.x) and int(w.n_resampled) == 1
    assert torch.equal(w.log_weights, torch.zeros(64, dtype=torch.float64))
    with pytest.raises(TypeError, match="Walkers.resample: when must be a 0-d bool"):
        w.resample(when=torch.tensor([True]))


def test_log_weight_numerics():
    e = ScaledGaussian()
    w = Walkers(e, torch.zeros(4, 1), 0.1, resample=None)
    w.log_weights = torch.tensor([1e4, -1e4, 1e4, 1e4], dtype=torch.float64)
    assert torch.allclose(w.weights, torch.tensor([1 / 3, 0, 1 / 3, 1 / 3], dtype=torch.float64))
    assert abs(float(w.ess) - 3.0) < 1e-9  # 2 * 1e4 in float64 has an ulp of 3.6e-12
    assert abs(float(w.log_z) - (1e4 + math.log(3) - math.log(4))) < 1e-9
    w.log_weights = torch.tensor([-math.inf, 2.0, -math.inf, -math.inf], dtype=torch.float64)
    w.x = torch.arange(4.0).reshape(4, 1)
    assert float(w.ess) == 1.0
    w.resample("systematic")
    assert torch.equal(w.x, torch.ones(4, 1))  # every walker descends from walker 1
    one = Walkers(e, torch.zeros(1, 3), 0.1, resample="systematic")
    one.step(3)
    assert float(one.ess) == 1.0 and torch.isfinite(one.log_z)


def test_refresh_adds_the_energy_change():
    e = ScaledGaussian(1.0)
    x0 = torch.randn(64, 2)
    w = Walkers(e, x0, 0.1, resample=None)
    e.s = 2.0
    w.refresh()
    want = (0.5 * (x0.double() ** 2).sum(1)) * (1 - 1 / 4)
    torch.testing.assert_close(w.log_weights, want.to(torch.float64), rtol=1e-6, atol=1e-6)


def test_non_finite_energy_names_the_step():
    class Blows:
        def __init__(self):
            self.calls = 0

        def __call__(self, x):
            self.calls += 1
            u = 0.5 * (x * x).sum(1)
            if self.calls == 4:  # construction is call 1, step k is call k + 2
                u = u + torch.where(torch.arange(x.shape[0]) < 3, torch.nan, 0.0)
            return u

    w = Walkers(Blows(), torch.zeros(16, 2), 0.1, resample="systematic")
    with pytest.raises(fl.NonFiniteError, match="Walkers: energy, gradient or log-weight became non-finite at step 2 for 3 walker"):
        w.step(5)


def test_walkers_errors():
    e = ScaledGaussian()
    with pytest.raises(ValueError, match="Walkers: resample must be one of"):
        Walkers(e, torch.zeros(4, 1), 0.1, resample="stochastic")
    with pytest.raises(ValueError, match="Walkers: ess_threshold must be in"):
        Walkers(e, torch.zeros(4, 1), 0.1, ess_threshold=2.0)
    with pytest.raises(ValueError, match="Walkers: noise_std must be finite and > 0"):
        Walkers(e, torch.zeros(4, 1), 0.1, 0.0)  # weights need a proposal density
    with pytest.raises(ValueError, match="Walkers: step_size must be finite and > 0"):
        Walkers(e, torch.zeros(4, 1), -0.1)


@pytest.mark.cuda
def test_walkers_step_never_syncs_with_the_host():
    """With the non-finite check deferred, a weighted step with resampling performs no device
    synchronisation (torch's sync debug mode turns any into an error)."""
    require("cuda", "cuda")
    e = ScaledGaussian(1.0)
    w = Walkers(e, torch.randn(4096, 8, device="cuda"), 0.3, seed=0, resample="systematic", ess_threshold=0.99,
                check_every=10**9)
    w.step(2)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        w.step(5)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(w.n_resampled) >= 1


class _SlopeBlowup:
    """U(x) = sum_j |x_j| (finite wherever x is), except that at call `at` walker 3 also gets a
    1e200 x_0 term. Its energy and gradient stay finite throughout (float64), but the increments
    overflow: at that step |grad_new|^2 = inf makes its log-weight -inf (a legitimate zero
    weight), and at the next one |grad_old|^2 = inf adds +inf to it: NaN, with no non-finite
    energy or gradient anywhere to report it."""

    def __init__(self, at):
        self.calls, self.at = 0, at

    def __call__(self, x):
        self.calls += 1
        u = x.abs().sum(1)
        if self.calls == self.at:
            slope = torch.zeros(x.shape[0], dtype=torch.float64)
            slope[3] = 1e200
            u = u + slope * x[:, 0]
        return u


def test_non_finite_log_weight_names_the_step():
    """A log-weight that turns NaN or +inf while energies and gradients stay finite (the
    increment overflows) is reported with its step, not resampled onto."""
    w = Walkers(_SlopeBlowup(4), torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)),
                0.1, resample="systematic")
    with pytest.raises(fl.NonFiniteError,
                       match="Walkers: energy, gradient or log-weight became non-finite at step 3 for 1 walker"):
        w.step(5)


def test_refused_resampling_keeps_walkers_in_place(monkeypatch):
    """The GPU contract of resample() for NaN/+inf log-weights is ancestors all -1 (no host read).
    Simulated here on CPU: a forced resample() gathers nothing (no index error / device assert),
    the walkers and their cached state stay where they were, and the deferred watch names the
    step where the log-weight went bad at the next check."""
    from fastlangevin import walkers as wmod

    x0 = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w = Walkers(_SlopeBlowup(4), x0, 0.1, resample=None, check_every=1000)
    w.step(5)  # the log-weight of walker 3 went NaN at step 3; no host check yet
    assert torch.isnan(w.log_weights[3]) and torch.isfinite(w.energy).all() and torch.isfinite(w.grad).all()
    x, g, u = w.x.clone(), w.grad.clone(), w.energy.clone()
    monkeypatch.setattr(wmod._resample, "resample", lambda log_w, *a, **k: torch.full_like(log_w, -1, dtype=torch.int64))
    w.resample()
    assert torch.equal(w.x, x) and torch.equal(w.grad, g) and torch.equal(w.energy, u)
    with pytest.raises(fl.NonFiniteError, match="log-weight became non-finite at step 3 for 1 walker"):
        w.check()


def test_non_finite_initial_state_is_an_error():
    """A NaN in x0, or an energy that is +inf at x0, is the error NonFiniteError at construction
    (the watch noted it as 'step -1' and then took -1 for 'nothing seen'), never a walker that a
    later resampling copies."""
    x0 = torch.tensor([[float("nan"), 0.0], [0.0, 0.0], [1.0, 1.0]])
    with pytest.raises(fl.NonFiniteError, match=r"Walkers: energy or gradient became non-finite in the "
                                                r"initial state \(x0\) for 1 walker"):
        Walkers(ScaledGaussian(), x0, 0.1)

    def inf_at_origin(x):
        return torch.where(x[:, 0] == 0.0, math.inf, 0.0) + 0.5 * (x * x).sum(1)

    with pytest.raises(fl.NonFiniteError, match=r"in the initial state \(x0\) for 2 walker"):
        Walkers(inf_at_origin, x0.nan_to_num(0.0), 0.1)


def test_state_after_a_non_finite_step_is_the_last_good_one():
    """On the step loop, the step that goes non-finite changes nothing: x, energy, grad and the
    log-weights all stay at the last good step (the log-weights used to take the bad step's
    increment first), so a state_dict() saved after the error is one consistent state."""
    class NanOnThirdStep:
        calls = 0

        def __call__(self, x):
            self.calls += 1
            u = 0.5 * (x * x).sum(1)
            return torch.where(torch.arange(x.shape[0]) == 0, math.nan, 0.0) + u if self.calls == 4 else u

    w = Walkers(NanOnThirdStep(), torch.randn(8, 2), 0.1, seed=1, resample=None)
    w.step(2)
    before = {k: v.clone() for k, v in w.state_dict().items() if torch.is_tensor(v)}
    with pytest.raises(fl.NonFiniteError, match=r"log-weight became non-finite at step 2 for 1 walker"):
        w.step()
    assert w.steps == 2
    after = w.state_dict()
    for name, v in before.items():
        assert torch.equal(after[name], v), name
    assert bool((w.log_weights != 0).all())  # the weights did move in the two good steps


def test_load_state_dict_refuses_what_cannot_resume():
    x0 = torch.randn(16, 3)
    w = Walkers(ScaledGaussian(), x0, 0.1, seed=1)
    w.step(2)
    state = w.state_dict()
    other = Walkers(ScaledGaussian(), x0.double(), 0.1, seed=1)
    with pytest.raises(TypeError, match=r"Walkers.load_state_dict: x is torch.float32, these walkers are torch.float64"):
        other.load_state_dict(state)
    with pytest.raises(KeyError, match=r"Walkers.load_state_dict: the state lacks \['steps'\]"):
        w.load_state_dict({k: v for k, v in state.items() if k != "steps"})
    with pytest.raises(ValueError, match=r"per_walker\['id'\] must be a tensor \[N = 16, ...\], got \[15\]"):
        w.load_state_dict(dict(state, per_walker={"id": torch.arange(15)}))
    w.per_walker["id"] = torch.arange(15)  # set by hand: named at the next gather, not deep in index_select
    with pytest.raises(ValueError, match=r"Walkers.gather: per_walker\['id'\] must be a tensor \[N = 16"):
        w.resample()


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_check_every_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match=f"Walkers: check_every must be None or an int >= 1, got {bad!r}"):
        Walkers(ScaledGaussian(), torch.zeros(4, 2), 0.1, check_every=bad)
    with pytest.raises(ValueError, match=f"sample: check_every must be None or an int >= 1, got {bad!r}"):
        fl.sample(ScaledGaussian(), torch.zeros(4, 2), 3, 0.1, check_every=bad)


def test_log_partition_names_a_wrong_energy_shape():
    """An energy returning [N, 1] is reported as such, by log_partition (it used to broadcast
    with the base term to [N, N] and surface as a Walkers error about a shape never returned)."""
    with pytest.raises(ValueError, match=r"log_partition: energy returned shape \[8, 1\], expected \[8\]"):
        fl.log_partition(lambda x: (x * x).sum(1, keepdim=True), 3, n_walkers=8, n_steps=5)


def test_per_walker_step_is_copied_and_numpy_scalars_are_floats():
    """A per-walker step tensor is the walkers' own copy, as x0 is (the caller's later in-place
    write used to change a running chain's step, past the checks); a numpy float32 step size is
    a float like a numpy float64 one (it was refused as 'not a float')."""
    import numpy as np

    a = torch.full((8,), 0.1)
    x0 = torch.randn(8, 2)
    w = Walkers(ScaledGaussian(), x0, a, seed=2)
    ref = Walkers(ScaledGaussian(), x0, 0.1, seed=2)
    a.fill_(-1.0)
    w.step(3)
    ref.step(3)
    assert torch.equal(w.x, ref.x)
    for v in (np.float32(0.1), np.float64(0.1)):
        w2 = Walkers(ScaledGaussian(), x0, v, seed=2)
        w2.step(3)
        torch.testing.assert_close(w2.x, ref.x, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="Walkers: ess_threshold must be in"):
        Walkers(ScaledGaussian(), x0, 0.1, ess_threshold=True)
