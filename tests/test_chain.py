"""fastlangevin.chain.mixture_chain and double_well_chain: the fused chains against the reference
loop and against the step-by-step path of sample() / Walkers (same seed, same noise)."""
import copy
import math

import pytest
import torch

import fastlangevin as fl
from fastlangevin.chain import StepByStep, double_well_chain, fused_chain_of, mixture_chain
from fastlangevin.energies import DoubleWell, Gaussian, GaussianMixture, MLPEnergy

from conftest import CASES, require

BACKENDS = ["reference", "cpu"]
# The fused kernels against the reference: (device, backend) pairs of conftest.CASES but the
# reference itself. cpu-triton runs under TRITON_INTERPRET=1 (slow: its sizes are kept small).
KERNEL_CASES = [c for c in CASES if c.id != "cpu-reference"]


def _gmm(d=50, dtype=torch.float64, kind="carbone"):
    if kind == "carbone":  # the paper's GMM: unit-variance modes at -10 e1 and 6 e1, masses 1/4, 3/4
        means = torch.zeros(2, d, dtype=dtype)
        means[0, 0], means[1, 0] = -10.0, 6.0
        return GaussianMixture(means, torch.tensor([0.25, 0.75], dtype=dtype).log())
    gen = torch.Generator().manual_seed(1)
    return GaussianMixture(2 * torch.randn(3, d, generator=gen, dtype=dtype), torch.randn(3, generator=gen, dtype=dtype),
                           0.5 + torch.rand(3, d, generator=gen, dtype=dtype))


def _x0(n, d, dtype, seed=0, scale=3.0):
    return scale * torch.randn(n, d, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def _dw(d, dtype=torch.float64):
    """A double well with barrier and center away from 1 (its gradient 4 h x (x^2 - c^2) is
    steep: its walkers start at scale 1 and take steps of 0.01)."""
    return DoubleWell(d, barrier=0.8, center=1.2).to(dtype)


def _energy(kind, d, dtype):
    """(energy, x0 scale, step size) of a test case: "dw" the double well, else _gmm(d, dtype, kind)."""
    return (_dw(d, dtype), 1.0, 0.01) if kind == "dw" else (_gmm(d, dtype, kind), 3.0, 0.05)


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["ula", "weights", "mh"])
@pytest.mark.parametrize("kind,d", [("carbone", 50), ("diag", 5), ("dw", 50), ("dw", 5)])
def test_kernel_equals_reference(device, backend, dtype, mode, kind, d):
    """d = 5 and 50 are not multiples of 4: rows share Philox blocks with their neighbours and
    tiles start mid-block. 300 walkers span several CPU tiles, several Triton programs on a GPU
    (at most 128 rows each) and 38 CUDA blocks (8 walkers each); under the Triton interpreter
    the chain is shorter (8 steps, not 20) to keep the case near a second. kind "dw": the
    double-well chain (double_well_chain)."""
    require(device, backend)
    n, steps = 300, (8 if (device, backend) == ("cpu", "triton") else 20)
    e, scale, h = _energy(kind, d, dtype)
    e = e.to(device)
    x0 = _x0(n, d, dtype, scale=scale).to(device)
    # offsets wrap past 2^64 within the chain; log_w_steps checked on the weights runs
    kw = dict(seed=3, offset=(1 << 64) - 7, mode=mode, return_log_w_steps=mode == "weights")
    got = fused_chain_of(e, x0)(x0, steps, h, backend=backend, **kw)
    want = fused_chain_of(copy.deepcopy(e).cpu(), x0.cpu())(x0.cpu(), steps, h, backend="reference", **kw)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got.x.cpu(), want.x, **tol)
    torch.testing.assert_close(got.energy.cpu(), want.energy, **tol)
    torch.testing.assert_close(got.grad.cpu(), want.grad, **tol)
    assert torch.equal(got.accepted.cpu(), want.accepted)
    if mode == "mh":
        assert 0 < int(got.accepted.sum()) < n * steps  # some proposals rejected, some accepted
    else:
        assert torch.equal(got.accepted.cpu(), torch.full((n,), steps))
    if mode == "weights":
        lw_tol = dict(rtol=0, atol=1e-3 if dtype == torch.float32 else 1e-9)
        torch.testing.assert_close(got.log_w.cpu(), want.log_w, **lw_tol)
        torch.testing.assert_close(got.log_w_steps.cpu(), want.log_w_steps, **lw_tol)
        assert got.log_w.abs().max() > 1e-3  # the weights moved
    # the inputs are untouched
    assert torch.equal(x0.cpu(), _x0(n, d, dtype, scale=scale))


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["ula", "weights", "mh"])
def test_zero_weight_components(device, backend, dtype, mode):
    """mixture_chain with components of weight exactly 0 (log_coef = -inf; GaussianMixture
    refuses them, the chain op takes them), first and in the middle: the component drops out of
    U and its gradient, as in the reference and in the chain without it. A running logsumexp
    whose max is still -inf took exp(-inf - -inf) = NaN in the CUDA and Triton kernels (found by
    review; the CPU kernel selected 0)."""
    require(device, backend)
    d, n, steps = 6, 64, 5
    gen = torch.Generator().manual_seed(2)
    means = 2 * torch.randn(4, d, generator=gen, dtype=dtype)
    inv_var = 0.5 + torch.rand(4, d, generator=gen, dtype=dtype)
    log_coef = torch.tensor([0.0, 0.3, 0.0, 0.7], dtype=dtype).log()  # components 0 and 2 weigh 0
    x0 = _x0(n, d, dtype)
    kw = dict(seed=5, mode=mode)
    got = mixture_chain(x0.to(device), means.to(device), inv_var.to(device), log_coef.to(device), steps, 0.05,
                        backend=backend, **kw)
    want = mixture_chain(x0, means, inv_var, log_coef, steps, 0.05, backend="reference", **kw)
    keep = [1, 3]  # the same chain without the zero-weight components
    alone = mixture_chain(x0, means[keep], inv_var[keep], log_coef[keep], steps, 0.05, backend="reference", **kw)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    assert torch.isfinite(got.energy).all() and torch.isfinite(got.grad).all()
    for w in (want, alone):
        torch.testing.assert_close(got.x.cpu(), w.x, **tol)
        torch.testing.assert_close(got.energy.cpu(), w.energy, **tol)
        torch.testing.assert_close(got.grad.cpu(), w.grad, **tol)
        assert torch.equal(got.accepted.cpu(), w.accepted)
        if mode == "weights":
            torch.testing.assert_close(got.log_w.cpu(), w.log_w, rtol=0, atol=1e-3 if dtype == torch.float32 else 1e-9)


@pytest.mark.parametrize("device,backend", CASES)
def test_log_w_steps_are_the_per_step_weights(device, backend):
    require(device, backend)
    e = _gmm(7, torch.float64, "diag").to(device)
    x0 = _x0(64, 7, torch.float64).to(device)
    full = mixture_chain(x0, *e.chain_params(), 6, 0.05, seed=1, mode="weights", return_log_w_steps=True,
                         backend=backend)
    assert full.log_w_steps.shape == (6, 64)
    for t in (1, 4):
        part = mixture_chain(x0, *e.chain_params(), t, 0.05, seed=1, mode="weights", backend=backend)
        torch.testing.assert_close(full.log_w_steps[t - 1], part.log_w, rtol=0, atol=1e-12)
    torch.testing.assert_close(full.log_w_steps[-1], full.log_w, rtol=0, atol=0)


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mh", [False, True])
@pytest.mark.parametrize("kind", ["carbone", "dw"])
def test_sample_fused_equals_step_by_step(device, backend, dtype, mh, kind):
    """Under the Triton interpreter 64 walkers x 10 steps (200 x 25 elsewhere). kind "dw": the
    double well."""
    require(device, backend)
    n, steps = (64, 10) if (device, backend) == ("cpu", "triton") else (200, 25)
    e, scale, h = _energy(kind, 50, dtype)
    e, h = e.to(device), 2 * h
    x0 = _x0(n, 50, dtype, scale=scale).to(device)
    assert fused_chain_of(e, x0, backend) is not None  # sample() takes the fused path here
    fused = fl.sample(e, x0, steps, h, seed=5, offset=11, mh=mh, backend=backend)
    loop = fl.sample(StepByStep(e), x0, steps, h, seed=5, offset=11, mh=mh, backend=backend)
    if backend == "reference":  # the oracle chain is literally the loop's arithmetic
        assert torch.equal(fused.x, loop.x)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fused.x, loop.x, **tol)
    torch.testing.assert_close(fused.energy, loop.energy, **tol)
    if mh:
        torch.testing.assert_close(fused.acceptance, loop.acceptance, rtol=0, atol=1e-12)
        assert 0.3 < float(fused.acceptance) < 1.0
    other = fl.sample(e, x0, steps, h, seed=6, offset=11, mh=mh, backend=backend)
    assert (other.x - fused.x).abs().max() > 0.1


def test_sample_gaussian_fused_equals_autograd():
    """Gaussian runs as the K = 1 mixture; against the autograd loop on the same energy."""
    require("cpu", "cpu")
    e = Gaussian(torch.linspace(-1, 1, 9, dtype=torch.float64), torch.linspace(0.5, 2, 9, dtype=torch.float64))
    x0 = _x0(128, 9, torch.float64)
    fused = fl.sample(e, x0, 40, 0.05, seed=2)
    loop = fl.sample(lambda x: e(x), x0, 40, 0.05, seed=2)
    torch.testing.assert_close(fused.x, loop.x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fused.energy, loop.energy, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("weights,resample", [(False, None), (True, None), (True, "systematic"), (True, "multinomial")])
@pytest.mark.parametrize("kind", ["diag", "dw"])
def test_walkers_fused_equals_step_by_step(device, backend, weights, resample, kind):
    """Walkers.step(n) fused (speculate-and-replay around resampling) against the loop: same
    resampling steps, same walkers and weights. ess_threshold 0.95 makes resampling fire
    several times within the 70 steps (asserted), including inside one speculative chunk.
    Under the Triton interpreter (seconds per case) only the weights + systematic case runs,
    12 + 12 steps (resampling still fires 3 times): the other cases differ from it in the
    resampling scheme, or run the chain modes that test_kernel_equals_reference covers. kind
    "dw": the double well, its barrier raised between the calls."""
    require(device, backend)
    interp = (device, backend) == ("cpu", "triton")
    if interp and (weights, resample) != (True, "systematic"):
        pytest.skip("interpreter: the weights + systematic case stands for the others (time)")
    s1, s2 = (12, 12) if interp else (30, 40)
    e, scale, h = _energy(kind, 6, torch.float64)
    e = e.to(device)
    x0 = _x0(256, 6, torch.float64, scale=scale).to(device)
    kw = dict(seed=4, weights=weights, resample=resample, ess_threshold=0.95, backend=backend)
    w1, w2 = fl.Walkers(e, x0, h, **kw), fl.Walkers(StepByStep(e), x0, h, **kw)
    w1.step(s1)
    w2.step(s1)
    # a parameter change between calls: the first step's increment uses the cached old energy
    with torch.no_grad():
        if kind == "dw":
            e.barrier.mul_(1.25)
        else:
            e.means.add_(0.1)
    w1.step(s2)
    w2.step(s2)
    assert w1.steps == w2.steps == s1 + s2
    assert int(w1.n_resampled) == int(w2.n_resampled)
    if resample is not None:
        assert int(w1.n_resampled) >= 3
    for k in ("x", "grad", "energy", "log_weights"):
        torch.testing.assert_close(getattr(w1, k), getattr(w2, k), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(w1.log_z, w2.log_z, rtol=1e-9, atol=1e-9)


def test_chain_errors():
    e = _gmm(4, torch.float32, "diag")
    x = torch.zeros(8, 4)
    p = e.chain_params()
    with pytest.raises(ValueError, match=r"mixture_chain: means has shape \[3, 4\], expected \[K, 5\]"):
        mixture_chain(torch.zeros(8, 5), *p, 3, 0.1)
    with pytest.raises(ValueError, match=r"mixture_chain: log_coef has shape \[2\], expected \[3\]"):
        mixture_chain(x, p[0], p[1], p[2][:2], 3, 0.1)
    with pytest.raises(ValueError, match="mixture_chain: mode must be one of"):
        mixture_chain(x, *p, 3, 0.1, mode="hmc")
    with pytest.raises(TypeError, match="mixture_chain: step_size must be a float"):
        mixture_chain(x, *p, 3, torch.full((8,), 0.1))
    with pytest.raises(ValueError, match="mixture_chain: noise_std must be finite and > 0"):
        mixture_chain(x, *p, 3, 0.1, 0.0, mode="mh")
    with pytest.raises(ValueError, match="mixture_chain: give both energy and grad"):
        mixture_chain(x, *p, 3, 0.1, energy=torch.zeros(8))
    with pytest.raises(TypeError, match="mixture_chain: x must be float32 or float64"):
        mixture_chain(x.half(), *p, 3, 0.1)
    with pytest.raises(ValueError, match="double_well_chain: barrier must be a finite float > 0 or a tensor"):
        double_well_chain(x, -1.0, 1.0, 3, 0.1)
    with pytest.raises(ValueError, match=r"double_well_chain: center must be a float or a one-element tensor"):
        double_well_chain(x, 1.0, torch.ones(2), 3, 0.1)
    with pytest.raises(ValueError, match="double_well_chain: mode must be one of"):
        double_well_chain(x, 1.0, 1.0, 3, 0.1, mode="hmc")
    with pytest.raises(TypeError, match="double_well_chain: x must be float32 or float64"):
        double_well_chain(x.half(), 1.0, 1.0, 3, 0.1)
    # the backend rule of sample() / Walkers: mixture chains on every backend (CUDA up to d = 512),
    # MLP chains on cpu, reference and triton, and on "cuda" as the Triton kernel for CUDA walkers
    for be in ("cpu", "reference", "triton", "cuda"):
        assert fused_chain_of(e, x, be) is not None
        assert fused_chain_of(_dw(4, torch.float32), x, be) is not None
    assert fused_chain_of(GaussianMixture(torch.zeros(2, 513), torch.zeros(2)), torch.zeros(3, 513), "cuda") is None
    assert fused_chain_of(DoubleWell(513), torch.zeros(3, 513), "cuda") is None
    assert fused_chain_of(DoubleWell(5), x, "cpu") is None  # another dimension: step by step (which raises)
    mlp = MLPEnergy(4, hidden=8, depth=1)
    assert fused_chain_of(mlp, x, "cpu") is not None
    assert fused_chain_of(mlp, x, "triton") is not None
    assert fused_chain_of(mlp, x, "cuda") is None  # CPU walkers never run on "cuda"


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_sample_non_finite_in_fused_chain(backend):
    """A fused chain that ends non-finite is replayed step by step, so the error names the first
    bad step, as the step-by-step path's does: a Gaussian of variance 1e-3 at step size 1 in
    float32 multiplies x by -999 a step, |x|^2 / 2e-3 overflows at step 6."""
    require("cpu", backend)
    e = Gaussian(torch.zeros(3), 1e-3)
    msgs = []
    for en in (e, StepByStep(e)):
        with pytest.raises(fl.NonFiniteError) as info:
            fl.sample(en, torch.ones(4, 3), 50, 1.0, backend=backend)
        msgs.append(str(info.value))
    assert msgs[0] == msgs[1]
    assert "sample: energy or gradient became non-finite at step 6 for 4 walker(s)" in msgs[0]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_mala_rejects_non_finite_proposals_on_both_paths(backend):
    """MALA: a proposal whose energy overflows to +inf (walkers at 1e4 in a float32 double well,
    step 0.5: the proposal lands near -2e12, U ~ 1e49) has acceptance probability 0. The fused
    chain rejects it; so does the step-by-step path, whose watch looks at the chain's states
    (finite throughout), not at the proposals: same walkers, same acceptance, no error."""
    require("cpu", backend)
    torch.manual_seed(0)
    x0 = torch.randn(4, 2)
    x0[2:] = 1e4
    e = DoubleWell(2)
    fused = fl.sample(e, x0, 10, 0.5, mh=True, seed=2, backend=backend)
    loop = fl.sample(StepByStep(e), x0, 10, 0.5, mh=True, seed=2, backend=backend)
    assert torch.equal(fused.x[2:], x0[2:]) and torch.equal(loop.x[2:], x0[2:])  # every proposal rejected
    torch.testing.assert_close(fused.x, loop.x, rtol=1e-6, atol=1e-6)
    assert float(fused.acceptance) == float(loop.acceptance) <= 0.5


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_walkers_non_finite_in_fused_chain_names_the_step(backend):
    """Walkers.step(n) on a fused chain: a chunk that ends non-finite is replayed by the step loop
    from its start: the error names the first bad step (4 here: the walker at 3.5 in a double
    well at step 0.05 overflows float32 there) and the walkers stay at the last good step,
    exactly as with the step-by-step energy."""
    require("cpu", backend)
    x0 = torch.tensor([[0.0], [0.5], [-0.5], [3.5]])
    e = DoubleWell(1)
    got = []
    for en in (e, StepByStep(e)):
        w = fl.Walkers(en, x0, 0.05, seed=0, backend=backend)
        with pytest.raises(fl.NonFiniteError) as info:
            w.step(20)
        got.append((str(info.value), w.steps, w.x.clone(), w.log_weights.clone()))
    assert got[0][0] == got[1][0]
    assert "at step 4 for 1 walker(s)" in got[0][0]
    assert got[0][1] == got[1][1] == 4
    assert torch.equal(got[0][2], got[1][2]) and bool(torch.isfinite(got[0][2]).all())
    assert torch.equal(got[0][3], got[1][3]) and bool(torch.isfinite(got[0][3]).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_double_well_chain_opcheck(dtype):
    """torch.library.opcheck of fastlangevin::double_well_chain (schema, fake kernel, aliasing),
    modes ULA and weights (with log_w_steps)."""
    require("cpu", "cpu")
    from fastlangevin.chain import _register_fakes

    _register_fakes()
    e = _dw(5, dtype)
    x = _x0(13, 5, dtype, scale=1.0)
    u, g = e.energy_and_grad(x)
    params = torch.stack(e.double_well_chain_params()).to(dtype)
    op = torch.ops.fastlangevin.double_well_chain.default
    acc = torch.zeros(13, dtype=torch.int64)
    torch.library.opcheck(op, (x.clone(), u.clone(), g.clone(), params, 3, 0.01, 0.14, 1, 2, 0, None, None, acc.clone()))
    lw, steps = torch.zeros(13, dtype=torch.float64), torch.zeros(3, 13, dtype=torch.float64)
    torch.library.opcheck(op, (x.clone(), u.clone(), g.clone(), params, 3, 0.01, 0.14, 1, 2, 1, lw, steps, acc.clone()))


def test_step_by_step_wrapper_hides_the_chain_protocol_only():
    """fastlangevin.chain.StepByStep: no fused chain for the wrapped energy, the closed form kept
    where the energy has one, autograd where it has none; the same parameters."""
    g = _gmm(d=3)
    x0 = torch.randn(5, 3, dtype=torch.float64)
    assert fused_chain_of(g, x0) is not None and fused_chain_of(StepByStep(g), x0) is None
    u, gr = StepByStep(g).energy_and_grad(x0)
    u0, g0 = g.energy_and_grad(x0)
    assert torch.equal(u, u0) and torch.equal(gr, g0)
    plain = StepByStep(lambda x: 0.5 * (x * x).sum(1))
    assert not hasattr(plain, "energy_and_grad")
    r = fl.sample(plain, x0, 3, 0.1, seed=1)
    want = fl.sample(lambda x: 0.5 * (x * x).sum(1), x0, 3, 0.1, seed=1)
    assert torch.equal(r.x, want.x)
    assert list(StepByStep(g).parameters()) == list(g.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mixture_chain_nan_stays_nan(dtype):
    """A NaN parameter, or walkers at +-inf (every q_k is -inf), make the mixture energy NaN in the
    reference; the C++ kernel's bit-arithmetic log turned its NaN normaliser into a finite
    number (U = -87.7 in float32), a plausible energy that every non-finite check passed."""
    require("cpu", "cpu")
    means = torch.tensor([[0.0, 1.0], [2.0, -1.0]], dtype=dtype)
    inv_var, coef = torch.ones(2, 2, dtype=dtype), torch.zeros(2, dtype=dtype)
    x = torch.zeros(13, 2, dtype=dtype)
    x[3, 0] = math.inf
    x[4, 1] = -math.inf
    cases = {"nan log_coef": (x[:1], means, inv_var, torch.tensor([math.nan, 0.0], dtype=dtype)),
             "nan mean": (x[:1], torch.tensor([[0.0, math.nan], [2.0, -1.0]], dtype=dtype), inv_var, coef),
             "inf walkers": (x, means, inv_var, coef)}
    for name, (xx, m, iv, c) in cases.items():
        ref = mixture_chain(xx, m, iv, c, 1, 0.1, seed=1, backend="reference")
        got = mixture_chain(xx, m, iv, c, 1, 0.1, seed=1, backend="cpu")
        assert torch.equal(torch.isnan(got.energy), torch.isnan(ref.energy)), (name, got.energy, ref.energy)
        assert bool(torch.isnan(got.energy).any()), name


def test_chains_refuse_walkers_of_dimension_zero():
    """d = 0 was a SIGFPE in the C++ chains (the tile size is elements / d): a clear error from the
    Python op and a guard in the kernel for direct callers; sample() takes the loop."""
    require("cpu", "cpu")
    x = torch.zeros(4, 0)
    z = torch.zeros(2, 0)
    with pytest.raises(ValueError, match=r"mixture_chain: x must have shape \[N, d\] with d >= 1, got \[4, 0\]"):
        mixture_chain(x, z, z, torch.zeros(2), 3, 0.1)
    with pytest.raises(ValueError, match=r"double_well_chain: x must have shape \[N, d\] with d >= 1"):
        double_well_chain(x, 1.0, 1.0, 3, 0.1)
    with pytest.raises(RuntimeError, match=r"mixture_chain: x must be \[N, d\] with d >= 1"):
        torch.ops.fastlangevin.mixture_chain(x, torch.zeros(4), torch.zeros(4, 0), z, z, torch.zeros(2), 3, 0.1, 0.4,
                                             0, 0, 0, None, None, torch.zeros(4, dtype=torch.int64))
