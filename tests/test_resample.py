"""SMC resampling: the uniform stream (bit-exact, statistically uniform), hand-checked ancestors
with fixed uniforms, count bounds and unbiasedness per scheme, extreme log-weights, ess, bad
input, identical ancestors across backends, and torch.library.opcheck of the new ops."""
import math

import pytest
import torch

from fastlangevin import reference as ref
from fastlangevin import resampling as rs

from conftest import CASES, require

SCHEMES = ("multinomial", "stratified", "systematic", "residual")
F64 = torch.float64


def _counts(a, n):
    return torch.bincount(a.cpu(), minlength=n)


def _weights(log_w):
    return torch.softmax(log_w.double().cpu(), 0)


# ---------------------------------------------------------------------------------------------
# the uniform stream
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("seed,offset", [(0, 0), (12345, 7), (2**64 - 1, 2**63 + 5)])
def test_uniforms_bit_exact(device, backend, seed, offset):
    require(device, backend)
    n = 10001  # odd: the last Philox block gives one uniform
    u = rs.uniforms(n, seed=seed, offset=offset, device=device, backend=backend)
    assert u.dtype == F64 and u.shape == (n,) and u.device.type == device
    assert torch.equal(u.cpu(), ref.uniforms_ref(n, seed, offset))
    # uniform j is independent of n
    assert torch.equal(rs.uniforms(7, seed=seed, offset=offset, device=device, backend=backend).cpu(), u[:7].cpu())


def test_uniforms_by_hand():
    """u_0 and u_1 from the Philox words of block 0, by the formula of csrc/philox.h."""
    w = [int(v) for v in ref.philox_ref(torch.tensor([[0, 0, 9, 0]]), 5)[0]]
    want = [((w[0] >> 5) * 2**26 + (w[1] >> 6)) / 2**53, ((w[2] >> 5) * 2**26 + (w[3] >> 6)) / 2**53]
    assert ref.uniforms_ref(2, seed=5, offset=9).tolist() == want


@pytest.mark.parametrize("device,backend", CASES)
def test_uniforms_statistics(device, backend):
    """n = 2^20: mean within 5 sd (sd = sqrt(1/12 / n) = 2.8e-4); Kolmogorov-Smirnov distance
    below 1.95 / sqrt(n) (p = 0.001); the lowest of the 53 bits is a fair coin within 5 sd
    (sd = 0.5 / sqrt(n)), so a 24- or 32-bit uniform would fail."""
    require(device, backend)
    n = 1 << 20
    u = rs.uniforms(n, seed=2024, offset=1, device=device, backend=backend).cpu()
    assert 0.0 <= u.min().item() and u.max().item() < 1.0
    assert abs(u.mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    s, _ = torch.sort(u)
    i = torch.arange(1, n + 1, dtype=F64)
    ks = torch.maximum(i / n - s, s - (i - 1) / n).max().item()
    assert ks < 1.95 / math.sqrt(n), ks
    bits = (u * 2.0**53).to(torch.int64)
    assert torch.equal(bits.to(F64) * 2.0**-53, u)  # exactly 53-bit values
    assert abs((bits & 1).double().mean().item() - 0.5) < 5 * 0.5 / math.sqrt(n)


# ---------------------------------------------------------------------------------------------
# exact ancestors with fixed uniforms
# ---------------------------------------------------------------------------------------------

# w = [0.1, 0.35, 0, 0.25, 0.3] (log-weights shifted by 7: only differences matter);
# cdf = [0.1, 0.45, 0.45, 0.70, 1.0]; N w = [0.5, 1.75, 0, 1.25, 1.5]. Ancestor of p = number of
# cdf entries <= p. Every position below is >= 0.02 from a cdf entry, so rounding cannot move it.
HAND_W = [0.1, 0.35, 0.0, 0.25, 0.3]
HAND_U = [0.05, 0.5, 0.99, 0.3, 0.72]
HAND = {
    # p = u: 0.05 -> 0; 0.5 -> 3 (0.1, 0.45, 0.45 <= 0.5); 0.99 -> 4; 0.3 -> 1; 0.72 -> 4
    "multinomial": [0, 3, 4, 1, 4],
    # p = (j + u_j) / 5 = 0.01, 0.3, 0.598, 0.66, 0.944 -> 0, 1, 3, 3, 4
    "stratified": [0, 1, 3, 3, 4],
    # p = (j + 0.05) / 5 = 0.01, 0.21, 0.41, 0.61, 0.81 -> 0, 1, 1, 3, 4
    "systematic": [0, 1, 1, 3, 4],
    # floor(N w) = [0, 1, 0, 1, 1], F = 3: slots 0..2 = walkers 1, 3, 4. Residuals
    # [0.5, 0.75, 0, 0.25, 0.5] / 2 -> cdf [0.25, 0.625, 0.625, 0.75, 1]; slot 3: u_3 = 0.3 -> 1;
    # slot 4: u_4 = 0.72 -> 3
    "residual": [1, 3, 4, 1, 3],
}


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_hand_checked_ancestors(device, backend, scheme):
    require(device, backend)
    log_w = (torch.tensor(HAND_W, dtype=F64).log() + 7.0).to(device)
    u = torch.tensor(HAND_U, dtype=F64, device=device)
    a = rs.resample(log_w, scheme, seed=0, uniforms=u, backend=backend)
    assert a.dtype == torch.int64 and a.device.type == device
    assert a.cpu().tolist() == HAND[scheme]


@pytest.mark.parametrize("device,backend", CASES)
def test_position_rounding_to_one_never_picks_a_dead_walker(device, backend):
    """Stratified slot 1 of N = 2 with u = 1 - 2^-53: (1 + u) rounds to 2, p = 1.0, and all cdf
    entries are <= p. The ancestor is capped at the last positive weight (walker 0), not N - 1."""
    require(device, backend)
    log_w = torch.tensor([0.0, -math.inf], dtype=F64, device=device)
    u = torch.tensor([0.5, 1 - 2.0**-53], dtype=F64, device=device)
    for scheme in ("stratified", "multinomial", "residual", "systematic"):
        assert rs.resample(log_w, scheme, seed=0, uniforms=u, backend=backend).cpu().tolist() == [0, 0]


# ---------------------------------------------------------------------------------------------
# counts: bounds and unbiasedness
# ---------------------------------------------------------------------------------------------

def _random_log_w(n, seed, device):
    g = torch.Generator().manual_seed(seed)
    lw = 1.5 * torch.randn(n, generator=g, dtype=F64)
    lw[torch.rand(n, generator=g) < 0.1] = -math.inf  # dead walkers
    return lw.to(device)


@pytest.mark.parametrize("device,backend", CASES)
def test_count_bounds(device, backend):
    """Per walker, with l = N w_i: systematic floor(l) <= count <= ceil(l); stratified
    floor(l) - 1 <= count <= ceil(l) + 1 (the walker's cdf step contains >= floor(l) - 1 whole
    strata and meets <= ceil(l) + 1); residual count >= floor(l); dead walkers never."""
    require(device, backend)
    n = 1000
    for seed in range(3):
        log_w = _random_log_w(n, seed, device)
        l = n * _weights(log_w)
        lo, hi = torch.floor(l).long(), torch.ceil(l).long()
        c = {s: _counts(rs.resample(log_w, s, seed=seed, offset=1, backend=backend), n) for s in SCHEMES}
        assert ((c["systematic"] >= lo) & (c["systematic"] <= hi)).all()
        assert ((c["stratified"] >= lo - 1) & (c["stratified"] <= hi + 1)).all()
        assert (c["residual"] >= lo).all()
        for s in SCHEMES:
            assert c[s].sum().item() == n
            assert (c[s][l == 0] == 0).all(), s


@pytest.mark.parametrize("device,backend", CASES[:2])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_mean_counts_unbiased(device, backend, scheme):
    """Mean count over K = 400 streams equals N w_i within 5 sd, per walker (N = 40).
    sd^2 of one count: multinomial N w (1 - w); residual (N - F) q (1 - q) with q the normalised
    residual weight; systematic frac(l) (1 - frac(l)) (count is floor or ceil); stratified at most
    1/2 (at most two strata meet the walker's step partially, each a Bernoulli). The sd of the mean
    is that / sqrt(K); a floor of 0.01 covers walkers whose sd is 0. The Triton backend is covered by
    the bit-exact comparisons (test_backends_identical), which would make this test redundant at
    400 interpreter launches."""
    require(device, backend)
    n, k = 40, 400
    log_w = _random_log_w(n, 7, device)
    w = _weights(log_w)
    l = n * w
    total = torch.zeros(n, dtype=F64)
    for off in range(k):
        total += _counts(rs.resample(log_w, scheme, seed=11, offset=off, backend=backend), n).double()
    mean = total / k
    frac = l - torch.floor(l)
    if scheme == "multinomial":
        var = n * w * (1 - w)
    elif scheme == "residual":
        rest = n - torch.floor(l).sum()
        q = frac / rest
        var = rest * q * (1 - q)
    elif scheme == "systematic":
        var = frac * (1 - frac)
    else:
        var = torch.full((n,), 0.5, dtype=F64)
    sd = torch.sqrt(var / k).clamp(min=0.01)
    assert ((mean - l).abs() <= 5 * sd).all(), ((mean - l).abs() / sd).max()


# ---------------------------------------------------------------------------------------------
# extreme log-weights, ess
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device,backend", CASES)
def test_extreme_log_weights(device, backend):
    require(device, backend)
    # weights proportional to [1, 1, 0, 2]: exp(-2e4) underflows to an exact 0. Systematic with
    # u_0 = 0.5: cdf [0.25, 0.5, 0.5, 1], p = 0.125, 0.375, 0.625, 0.875 -> [0, 1, 3, 3]
    big = torch.tensor([1e4, 1e4, -1e4, 1e4 + math.log(2)], dtype=F64, device=device)
    u = torch.full((4,), 0.5, dtype=F64, device=device)
    assert rs.resample(big, "systematic", seed=0, uniforms=u, backend=backend).cpu().tolist() == [0, 1, 3, 3]
    assert rs.resample(-big, "systematic", seed=0, uniforms=u, backend=backend).cpu().tolist() == [2, 2, 2, 2]
    # all but one walker dead: every ancestor is that walker, in every scheme
    one = torch.full((5,), -math.inf, dtype=F64, device=device)
    one[2] = 3.0
    for scheme in SCHEMES:
        assert rs.resample(one, scheme, seed=1, backend=backend).cpu().tolist() == [2] * 5
        assert rs.resample(one.float(), scheme, seed=1, backend=backend).cpu().tolist() == [2] * 5
        # a single walker
        assert rs.resample(torch.tensor([-5.0], device=device), scheme, seed=1, backend=backend).cpu().tolist() == [0]
    # float32 input is the same log-weights as float64 (the arithmetic is float64 either way)
    lw32 = _random_log_w(1000, 3, device).float()
    for scheme in SCHEMES:
        assert torch.equal(rs.resample(lw32, scheme, seed=4, backend=backend),
                           rs.resample(lw32.double(), scheme, seed=4, backend=backend))


def test_ess_values():
    inf = math.inf
    # equal weights: N; weights [1, 3] / 4: 1 / (1/16 + 9/16) = 1.6; [1, 1, 0, 2] / 4:
    # 16 / (1 + 1 + 4) = 8/3 at log-weights of magnitude 1e4 (ulp 1.8e-12 there)
    torch.testing.assert_close(rs.ess(torch.zeros(1000)), torch.tensor(1000.0, dtype=F64), rtol=1e-12, atol=0)
    torch.testing.assert_close(rs.ess(torch.tensor([0.0, math.log(3)], dtype=F64)), torch.tensor(1.6, dtype=F64),
                               rtol=1e-14, atol=0)
    big = torch.tensor([1e4, 1e4, -1e4, 1e4 + math.log(2)], dtype=F64)
    torch.testing.assert_close(rs.ess(big), torch.tensor(8 / 3, dtype=F64), rtol=1e-10, atol=0)
    torch.testing.assert_close(rs.ess(-big), torch.tensor(1.0, dtype=F64), rtol=1e-14, atol=0)
    # one walker alive, a single walker, nothing alive, NaN
    assert rs.ess(torch.tensor([-inf, 3.0, -inf])).item() == 1.0
    assert rs.ess(torch.tensor([-7.0])).item() == 1.0
    e = rs.ess(torch.full((4,), -inf))
    assert e.dtype == F64 and e.shape == () and e.item() == 0.0
    assert math.isnan(rs.ess(torch.tensor([0.0, math.nan])).item())
    # exactly N for equal weights at every N (exp(2 lse - lse2) rounded to 4.999999999999999 at
    # N = 5 and so resampled every step at ess_threshold = 1), never above N (the same form gave
    # 4.0000000000014 for four log-weights of 1e4, 3.49 at 1e15), never below 1
    for n in range(1, 2001):
        assert rs.ess(torch.zeros(n)).item() == n, n
    for v in (1e4, 1e12, 1e15, -1e15):
        assert rs.ess(torch.full((4,), v, dtype=F64)).item() == 4.0, v
    g = torch.Generator().manual_seed(3)
    for scale in (1e-9, 1e-3, 1.0, 1e3):
        lw = torch.randn(20, 500, generator=g, dtype=F64) * scale
        vals = torch.stack([rs.ess(r) for r in lw])
        assert bool(((vals >= 1.0) & (vals <= 500.0)).all()), scale
    # float32 in, float64 out; errors name the op
    assert rs.ess(torch.zeros(3, dtype=torch.float32)).dtype == F64
    with pytest.raises(TypeError, match="ess: log_w must be float32 or float64"):
        rs.ess(torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"ess: log_w must have shape \[N\] with N >= 1, got \[2, 2\]"):
        rs.ess(torch.zeros(2, 2))


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------

def test_errors():
    lw = torch.zeros(4, dtype=F64)
    r = rs.resample
    with pytest.raises(ValueError, match=r"resample: log_w must have shape \[N\] with N >= 1, got \[2, 2\]"):
        r(torch.zeros(2, 2), seed=0)
    with pytest.raises(ValueError, match=r"resample: log_w must have shape \[N\] with N >= 1, got \[0\]"):
        r(torch.zeros(0), seed=0)
    with pytest.raises(TypeError, match="resample: log_w must be float32 or float64, got torch.int64"):
        r(torch.zeros(4, dtype=torch.int64), seed=0)
    with pytest.raises(TypeError, match="resample: log_w must be a torch.Tensor"):
        r([0.0, 1.0], seed=0)
    with pytest.raises(ValueError, match="resample: scheme must be one of .*, got 'bootstrap'"):
        r(lw, "bootstrap", seed=0)
    with pytest.raises(ValueError, match=r"resample: uniforms has shape \[3\], log_w has \[4\]"):
        r(lw, uniforms=torch.zeros(3, dtype=F64), seed=0)
    with pytest.raises(TypeError, match="resample: uniforms must be float64, got torch.float32"):
        r(lw, uniforms=torch.zeros(4), seed=0)
    with pytest.raises(ValueError, match="resample: uniforms is on meta, log_w is on cpu"):
        r(lw, uniforms=torch.zeros(4, dtype=F64, device="meta"), seed=0)
    for bad in (1.0, -0.1, math.nan):
        with pytest.raises(ValueError, match=r"resample: uniforms must lie in \[0, 1\); 1 of 4 entries do not"):
            r(lw, uniforms=torch.tensor([0.0, 0.5, 0.2, bad], dtype=F64), seed=0)
    with pytest.raises(ValueError, match=r"resample: seed must be in \[0, 2\*\*64\)"):
        r(lw, seed=-1)
    with pytest.raises(ValueError, match=r"resample: offset must be in \[0, 2\*\*64\)"):
        r(lw, seed=0, offset=2**64)
    with pytest.raises(TypeError, match="resample: seed must be an int"):
        r(lw, seed=0.5)
    with pytest.raises(ValueError, match="resample: log_w has 3 NaN entries"):
        r(torch.tensor([math.nan, 0.0, math.nan, math.nan]), seed=0)
    with pytest.raises(ValueError, match=r"resample: log_w has 1 \+inf entries"):
        r(torch.tensor([math.inf, 0.0]), seed=0)
    with pytest.raises(ValueError, match="resample: all log-weights are -inf"):
        r(torch.full((3,), -math.inf), seed=0)
    with pytest.raises(ValueError, match="resample: backend must be"):
        r(lw, seed=0, backend="fast")
    with pytest.raises(ValueError, match="uniforms: n must be >= 0"):
        rs.uniforms(-1, seed=0)
    with pytest.raises(TypeError, match="uniforms: n must be an int"):
        rs.uniforms(2.0, seed=0)
    with pytest.raises(ValueError, match=r"uniforms: seed must be in \[0, 2\*\*64\)"):
        rs.uniforms(2, seed=2**64)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="resample: backend 'cuda' is unavailable: "):
            r(lw, seed=0, backend="cuda")


@pytest.mark.parametrize("device,backend", CASES)
def test_bad_weights_give_minus_one_from_the_ops(device, backend):
    """What GPU callers get, where no check can run without a sync: the ops below the Python
    checks return all -1 for a NaN, a +inf, or all -inf."""
    require(device, backend)
    for bad in ([0.0, math.nan, 1.0], [0.0, math.inf, 1.0], [-math.inf] * 3):
        lw = torch.tensor(bad, dtype=F64, device=device)
        for scheme in SCHEMES:
            if backend == "reference":
                a = ref.resample_ref(lw, scheme, seed=0)
            elif backend == "triton":
                a = rs._triton_ops().resample(lw, scheme, None, 0, 0)
            else:
                rs._register_fakes()
                a = torch.ops.fastlangevin.resample(lw, scheme, None, 0, 0)
            assert a.cpu().tolist() == [-1, -1, -1], (bad, scheme)


# ---------------------------------------------------------------------------------------------
# every backend, the same ancestors
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device,backend", CASES[1:])
def test_backends_identical(device, backend):
    """N = 10^4 random log-weights (10% dead, float32 and float64): the same ancestors as the
    reference, with explicit uniforms and with the Philox stream (large seed and offset)."""
    require(device, backend)
    n = 10**4
    log_w = _random_log_w(n, 5, "cpu")
    u = ref.uniforms_ref(n, 99, 3)
    for dtype in (F64, torch.float32):
        lw = log_w.to(dtype)
        for scheme in SCHEMES:
            want = ref.resample_ref(lw, scheme, uniforms=u)
            got = rs.resample(lw.to(device), scheme, seed=0, uniforms=u.to(device), backend=backend).cpu()
            assert torch.equal(got, want), (dtype, scheme, (got != want).sum().item())
            want = ref.resample_ref(lw, scheme, seed=2**64 - 2, offset=2**40 + 1)
            got = rs.resample(lw.to(device), scheme, seed=2**64 - 2, offset=2**40 + 1, backend=backend).cpu()
            assert torch.equal(got, want), (dtype, scheme, (got != want).sum().item())


# ---------------------------------------------------------------------------------------------
# torch.library.opcheck
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device,backend", [c for c in CASES if c.values[1] != "reference"])
def test_opcheck(device, backend):
    require(device, backend)
    if backend == "triton":
        ns = rs._triton_ops()
        ns = torch.ops.fastlangevin_triton
    else:
        rs._register_fakes()
        ns = torch.ops.fastlangevin
    lw = _random_log_w(37, 1, device)
    u = torch.rand(37, dtype=F64).to(device)
    cases = [("resample_uniforms_out", (torch.empty(9, dtype=F64, device=device), 5, 6)),
             ("resample", (lw, "systematic", None, 1, 2)),
             ("resample", (lw.float(), "residual", u, 1, 2))]
    if backend != "triton":  # one interpreter launch per opcheck sub-test: keep those few
        cases += [("resample", (lw, "multinomial", None, 1, 2)), ("resample", (lw, "stratified", u, 1, 2))]
    for name, args in cases:
        torch.library.opcheck(getattr(ns, name).default, args)
