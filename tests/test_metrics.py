"""train/metrics.py: each metric on cases with a known answer, and on a wrong model."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import GaussianMixture2D, GMMStudent, MLPEnergy, eight_gaussians  # noqa: E402
from train.data import load  # noqa: E402
from train.metrics import (  # noqa: E402
    ais_log_likelihood,
    diag_gaussian_log_likelihood,
    gmm_exact_ce,
    gmm_metrics,
    grid_divergences,
    mmd,
)


def _teacher_student(ds, swap=False):
    """A GMMStudent equal to the teacher (modes listed in the other order if swap)."""
    d = ds.dim
    s = GMMStudent(d, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        s.means.zero_()
        e1 = [6.0, -10.0] if swap else [-10.0, 6.0]
        s.means[:, 0] = torch.tensor(e1)
        # softmax(-z) = masses; z_0 = 0 fixed, so z_1 = log(m_0 / m_1)
        s.z_rest.fill_(math.log(0.75 / 0.25) if swap else math.log(0.25 / 0.75))
    return s


@pytest.mark.parametrize("swap", [False, True])
def test_gmm_metrics_on_the_teacher_itself(swap):
    ds = load("gmm", n_train=2000)
    m = gmm_metrics(_teacher_student(ds, swap), ds)
    json.dumps(m)  # JSON-ready
    assert m["mode_weights"] == pytest.approx([0.25, 0.75], abs=1e-12)  # in teacher order
    assert m["kl"] == pytest.approx(0.0, abs=1e-9)  # log p_T - log p_S is 0 pointwise
    assert m["ce"] == pytest.approx(m["teacher_h"], abs=1e-9)
    assert m["ce"] == pytest.approx(gmm_exact_ce(_teacher_student(ds), ds.test), abs=1e-9)


def test_gmm_metrics_initial_student_against_numpy():
    ds = load("gmm", n_train=2000)
    s = GMMStudent(50, generator=torch.Generator().manual_seed(0))  # paper init: both modes near 0
    m = gmm_metrics(s, ds)
    # both student modes are nearer to 6 e1 than to -10 e1 along e1: all mass on the second
    assert m["mode_weights"] == [0.0, 1.0]
    x = ds.test.numpy()
    a = s.means.detach().numpy()
    log_ps = logsumexp(-0.5 * ((x[:, None] - a[None]) ** 2).sum(-1), axis=1) - math.log(2) - 25 * math.log(2 * math.pi)
    mu = np.zeros((2, 50))
    mu[:, 0] = [-10, 6]
    log_pt = logsumexp(-0.5 * ((x[:, None] - mu[None]) ** 2).sum(-1) + np.log([0.25, 0.75]), axis=1) - 25 * math.log(2 * math.pi)
    assert m["kl"] == pytest.approx(float(np.mean(log_pt - log_ps)), rel=1e-10)
    assert m["ce"] == pytest.approx(float(np.mean(-log_ps)), rel=1e-10)
    assert m["kl"] > 10  # far from the teacher


def test_grid_divergences_right_and_wrong_models():
    ds = load("8gaussians")  # 2000 test points
    right = grid_divergences(eight_gaussians(), ds, n=200)
    one_blob = grid_divergences(GaussianMixture2D([[0.0, 0.0]], 1.5), ds, n=200)
    too_wide = grid_divergences(GaussianMixture2D(eight_gaussians().means, 0.35), ds, n=200)
    # Seen with seed 0: right tv 0.08 kl 0.03 (the sampling noise of 2000 points after the blur),
    # one blob tv 0.74 kl 1.66, modes at std 0.35 instead of 0.2: tv 0.30.
    assert right["tv"] < 0.15 and right["kl"] < 0.08
    assert one_blob["tv"] > 0.6 and one_blob["kl"] > 1.0
    assert too_wide["tv"] > 2 * right["tv"]
    # a function works too (the exact log-density of the rings, clamped off -inf)
    rings = load("rings")
    r = grid_divergences(lambda x: -rings.teacher["log_prob"](x), rings, n=100)
    assert r["tv"] < 0.2 and 0 <= r["kl"] < 0.1


def test_mmd_null_and_shift():
    # Unbiased MMD^2 under the null is centred on 0; over seeds 0-9 at n = 500 in 8-D its |value|
    # stayed below 0.0023 (median-heuristic kernels). A 0.5 shift of every coordinate gives 0.16.
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(500, 8, generator=g), torch.randn(500, 8, generator=g)
    assert abs(mmd(x, y)) < 0.005
    assert mmd(x, y + 0.5) > 0.05
    # chunking does not change the value; images are flattened; explicit bandwidths
    assert mmd(x, y, chunk=128) == pytest.approx(mmd(x, y), rel=1e-9, abs=1e-12)
    assert mmd(x.reshape(500, 2, 2, 2), y.reshape(500, 2, 2, 2)) == pytest.approx(mmd(x, y), abs=1e-12)
    # one bandwidth h = 1, x and y far apart: E k(x, x') = det(I + 2I)^{-1/2} = 3^{-4} in 8-D for
    # both, the cross term ~ 3^{-4} exp(-72 / 6) ~ 0, so MMD^2 ~ 2 / 81 = 0.0247
    assert mmd(x, y + 3.0, bandwidths=[1.0]) == pytest.approx(2 / 81, abs=0.003)


class _ShiftedGaussian(torch.nn.Module):
    """U(x) = |x - m|^2 / (2 v) + c: Z = exp(-c) (2 pi v)^{d/2}."""

    def __init__(self, m, v, c):
        super().__init__()
        self.m, self.v, self.c = m, v, c

    def forward(self, x):
        return ((x - self.m) ** 2).sum(1) / (2 * self.v) + self.c


def test_ais_log_likelihood_recovers_a_known_normaliser():
    # 2048 walkers, 100 sigmoid-scheduled steps of 0.1: over seeds 0-3 log Z was within 0.03 of
    # the exact value (delta-method se ~0.03); the brief's tolerance is 0.1 nats. About 1 s.
    d = 6
    e = _ShiftedGaussian(torch.full((d,), 0.5), 1.5, 3.0)
    test = torch.randn(500, d, generator=torch.Generator().manual_seed(1)) * math.sqrt(1.5) + 0.5
    r = ais_log_likelihood(e, test, n_walkers=2048, n_steps=100, step_size=0.1, seed=0)
    log_z = -3.0 + 0.5 * d * math.log(2 * math.pi * 1.5)
    exact_ll = float(-e(test).mean()) - log_z
    assert r["log_z"] == pytest.approx(log_z, abs=0.1)
    assert r["ll"] == pytest.approx(exact_ll, abs=0.1)
    assert 0 < r["log_z_se"] < 0.1 and r["se"] >= r["log_z_se"]
    json.dumps(r)


def test_ais_log_likelihood_mlp_with_reference_term():
    # MLPEnergy with a zeroed head: U = b + |x|^2 / (2 ref_var), Z = exp(-b) (2 pi ref_var)^{d/2}
    d, ref_var, b = 4, 2.0, 1.0
    e = MLPEnergy(d, hidden=8, depth=1, ref_var=ref_var)
    with torch.no_grad():
        e.net[-1].weight.zero_()
        e.net[-1].bias.fill_(b)
    test = torch.randn(300, d, generator=torch.Generator().manual_seed(2)) * math.sqrt(ref_var)
    r = ais_log_likelihood(e, test, n_walkers=2048, n_steps=100, step_size=0.1, base_std=1.4)
    exact_ll = float(-(test**2).sum(1).mean() / (2 * ref_var)) - 0.5 * d * math.log(2 * math.pi * ref_var)
    assert r["ll"] == pytest.approx(exact_ll, abs=0.1)


def test_diag_gaussian_log_likelihood():
    g = torch.Generator().manual_seed(0)
    sd = torch.tensor([0.5, 1.0, 2.0])
    train = torch.randn(20000, 3, generator=g, dtype=torch.float64) * sd + 1.0
    test = torch.randn(20000, 3, generator=g, dtype=torch.float64) * sd + 1.0
    # expected: -sum(log sd) - (3/2) log(2 pi e); the fit's and the sample mean's error ~0.01
    exact = -float(torch.log(sd).sum()) - 1.5 * math.log(2 * math.pi * math.e)
    assert diag_gaussian_log_likelihood(train, test) == pytest.approx(exact, abs=0.03)
    # a constant coordinate: the variance floor keeps it finite (log density 0.5 log(1/(2 pi 1e-6)))
    c = torch.zeros(10, 1)
    assert math.isfinite(diag_gaussian_log_likelihood(c, c))
