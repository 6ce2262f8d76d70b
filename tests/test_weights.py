"""transition_log_ratio and jarzynski_increment: against an independent float64 formula on every
backend, their meaning (explicit Gaussian log densities, path densities), MALA detailed balance,
bad input, and torch.library.opcheck of the fused ops."""
import math

import pytest
import torch

import fastlangevin as fl  # noqa: F401  (conftest imports it; the weights ops are not exported yet)
from fastlangevin import weights as W

from conftest import CASES, require

F64 = torch.float64


def _rows(t):
    return t.double().reshape(t.shape[0], -1) if t.shape[0] else t.double().reshape(0, 0)


def _col(v, n):
    """A float or a per-walker tensor as a float64 [n] column."""
    return v.double() if torch.is_tensor(v) else torch.full((n,), float(v), dtype=F64)


def _alpha_by_hand(x, y, u, g, a, s, ref_var=None):
    """alpha(x, y), and a scale for the tolerance, from the square that defines it:
        alpha(x, y) = U(x) + (|y - x + a G|^2 - |y - x|^2) / (2 s^2)
    (the form in fastlangevin/weights.py's docstring, not the expanded one the kernels use)."""
    x, y, g, u = _rows(x), _rows(y), _rows(g), u.double()
    n = x.shape[0]
    a, s = _col(a, n)[:, None], _col(s, n)[:, None]
    if ref_var is not None:
        u = u + (x**2).sum(1) / (2 * ref_var)
        g = g + x / ref_var
    d = y - x
    alpha = u + (((d + a * g) ** 2).sum(1) - (d**2).sum(1)) / (2 * s[:, 0] ** 2)
    scale = u.abs() + (((d + a * g) ** 2).sum(1) + (d**2).sum(1)) / (2 * s[:, 0] ** 2)
    return alpha, scale


def _data(shape, dtype, seed=0):
    """x, y, grad_x, grad_y [N, ...] and energies (magnitude ~100) [N]."""
    gen = torch.Generator().manual_seed(seed)

    def r(*sh, scale=1.0):
        return (scale * torch.randn(*sh, generator=gen, dtype=F64)).to(dtype)

    x = r(*shape)
    y = (x.double() + r(*shape, scale=0.3).double()).to(dtype)
    return x, y, r(*shape, scale=3.0), r(*shape, scale=3.0), r(shape[0], scale=100.0), r(shape[0], scale=100.0)


def _per_walker(n, lo, hi, seed):
    gen = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=F64)


# (shape, step, std, ref_var, non-contiguous): step/std "t" = a per-walker tensor, None std = sqrt(2 a).
CONFIGS = [
    pytest.param((67, 5), 0.05, 0.3, None, False, id="2d-scalar"),
    pytest.param((33, 3, 7), "t", "t", None, False, id="3d-per-walker"),
    pytest.param((6, 2, 3, 4), "t", None, 2.0, False, id="4d-default-std-ref"),
    pytest.param((40, 9), 0.1, None, 0.5, True, id="2d-noncontig-ref"),
    pytest.param((5, 2500), 0.01, "t", None, False, id="long-rows"),
]

# Every backend widens the inputs exactly and sums in float64, like the by-hand formula: the
# difference is rounding of sums of ~1e3 terms, measured below 2e-15 of the summed magnitudes
# (|U| + the two squares / 2 s^2). 1e-13 of that leaves room, and is far below what float32
# accumulation would give (~1e-7).
RTOL_SCALE = 1e-13


def _check(got, want, scale):
    assert got.dtype == F64 and got.shape == want.shape
    err = (got.cpu() - want).abs()
    assert (err <= RTOL_SCALE * scale).all(), (err / scale).max().item()


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,step,std,ref_var,noncontig", CONFIGS)
def test_matches_formula(device, backend, dtype, shape, step, std, ref_var, noncontig):
    require(device, backend)
    x, y, gx, gy, ux, uy = _data(shape, dtype)
    n = shape[0]
    a = _per_walker(n, 0.01, 0.2, 1) if step == "t" else step
    s = _per_walker(n, 0.1, 0.5, 2) if std == "t" else std
    s_used = s if s is not None else (torch.sqrt(2 * a) if torch.is_tensor(a) else math.sqrt(2 * a))
    if noncontig:  # the same values in a transposed layout
        x, y, gx, gy = (t.t().contiguous().t() for t in (x, y, gx, gy))
        assert not x.is_contiguous()
    dev = lambda t: t.to(device) if torch.is_tensor(t) else t  # noqa: E731
    x_, y_, gx_, gy_, ux_, uy_, a_, s_ = map(dev, (x, y, gx, gy, ux, uy, a, s))

    got = W.transition_log_ratio(x_, y_, ux_, gx_, a_, s_, ref_var=ref_var, backend=backend)
    want, scale = _alpha_by_hand(x, y, ux, gx, a, s_used, ref_var)
    _check(got, want, scale)

    got = W.jarzynski_increment(x_, gx_, ux_, y_, gy_, uy_, a_, s_, ref_var=ref_var, backend=backend)
    back, scale_b = _alpha_by_hand(y, x, uy, gy, a, s_used, ref_var)
    _check(got, want - back, scale + scale_b)


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("energy_dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_half_inputs_widened(device, backend, dtype, energy_dtype):
    """16-bit walkers, and energies of any float dtype next to them, are read exactly (the
    kernels read each energy dtype in place) and reduced in float64."""
    require(device, backend)
    x, y, gx, gy, ux, uy = _data((24, 10), dtype)
    ux, uy = ux.to(energy_dtype), uy.to(energy_dtype)
    a = _per_walker(24, 0.01, 0.1, 3)
    got = W.jarzynski_increment(*(t.to(device) for t in (x, gx, ux, y, gy, uy, a)), 0.3, backend=backend)
    fwd, sf = _alpha_by_hand(x, y, ux, gx, a, 0.3)
    bwd, sb = _alpha_by_hand(y, x, uy, gy, a, 0.3)
    _check(got, fwd - bwd, sf + sb)


@pytest.mark.parametrize("device,backend", CASES)
def test_empty_and_zero_size_rows(device, backend):
    require(device, backend)
    e = torch.empty(0, 3, device=device)
    u0 = torch.empty(0, device=device)
    for r in (W.transition_log_ratio(e, e, u0, e, 0.1, backend=backend),
              W.jarzynski_increment(e, e, u0, e, e, u0, 0.1, backend=backend)):
        assert r.shape == (0,) and r.dtype == F64
    z = torch.empty(4, 0, device=device)
    ux = torch.tensor([1.0, -2.0, 3.5, 250.25], device=device)
    uy = torch.tensor([0.5, 2.0, -1.0, 0.0], device=device)
    # No coordinates: alpha is the energy alone, the increment the energy difference.
    assert torch.equal(W.transition_log_ratio(z, z, ux, z, 0.1, ref_var=1.0, backend=backend).cpu(), ux.cpu().double())
    assert torch.equal(W.jarzynski_increment(z, z, ux, z, z, uy, 0.1, backend=backend).cpu(),
                       (ux - uy).cpu().double())


def test_triton_tiles_do_not_change_the_result():
    """Several rows per program and several column chunks per row give the same numbers."""
    require("cpu", "triton")
    from fastlangevin.kernels import weights as KW

    x, y, gx, gy, ux, uy = _data((7, 300), torch.float32)
    a = _per_walker(7, 0.01, 0.1, 4)
    outs = []
    for tile in (65536, 64):  # one program, one chunk per row / 1 row x 64 columns, 5 chunks per row
        out = torch.empty(7, dtype=F64)
        KW.log_ratio_out_triton(x, y, gx, gy, ux, uy, a, None, 0.0, 0.4, 0.25, out, tile=tile)
        outs.append(out)
    assert KW.tiles_for(7, 300, x.device, 64) == (1, 64)
    fwd, sf = _alpha_by_hand(x, y, ux, gx, a, 0.4, 4.0)
    bwd, sb = _alpha_by_hand(y, x, uy, gy, a, 0.4, 4.0)
    for out in outs:
        _check(out, fwd - bwd, sf + sb)


# ---------------------------------------------------------------------------------------------
# meaning: explicit log densities
# ---------------------------------------------------------------------------------------------

def _quartic(x, theta=(1.0, 2.0, 0.3)):
    """A non-Gaussian energy per walker and its gradient: sum c4 x^4 / 4 - c2 x^2 / 2 + c1 x."""
    c4, c2, c1 = theta
    u = (c4 * x**4 / 4 - c2 * x**2 / 2 + c1 * x).reshape(x.shape[0], -1).sum(1)
    return u, c4 * x**3 - c2 * x + c1


def _log_q(x, y, g, a, s, ref_var):
    """log q(x -> y) = log N(y; x - a G(x), s^2 I), summed over the non-batch dims."""
    drift = g + x / ref_var if ref_var is not None else g
    col = lambda v: v.reshape(-1, *[1] * (x.dim() - 1)) if torch.is_tensor(v) else v  # noqa: E731
    lp = torch.distributions.Normal(x - col(a) * drift, col(s)).log_prob(y)
    return lp.reshape(x.shape[0], -1).sum(1)


def _log_pi(x, u, ref_var):
    """Unnormalised log density of the energy (plus the Gaussian reference when ref_var is set)."""
    return -u - ((x**2).reshape(x.shape[0], -1).sum(1) / (2 * ref_var) if ref_var is not None else 0.0)


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("ref_var", [None, 3.0])
def test_mala_log_ratio_from_gaussian_densities(device, backend, ref_var):
    """alpha(x, y) - alpha(y, x) = [log pi(y) + log q(y -> x)] - [log pi(x) + log q(x -> y)]."""
    require(device, backend)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(50, 3, 2, generator=gen, dtype=F64)
    a = _per_walker(50, 0.01, 0.2, 6)
    s = 0.7 * torch.sqrt(2 * a)  # any std, not only the ULA one
    ux, gx = _quartic(x)
    y = x - a[:, None, None] * (gx + (x / ref_var if ref_var else 0)) + s[:, None, None] * torch.randn(
        x.shape, generator=gen, dtype=F64)
    uy, gy = _quartic(y)
    want = (_log_pi(y, uy, ref_var) + _log_q(y, x, gy, a, s, ref_var)) - (
        _log_pi(x, ux, ref_var) + _log_q(x, y, gx, a, s, ref_var))
    d = lambda *ts: [t.to(device) for t in ts]  # noqa: E731
    two_alphas = (W.transition_log_ratio(*d(x, y, ux, gx, a, s), ref_var=ref_var, backend=backend)
                  - W.transition_log_ratio(*d(y, x, uy, gy, a, s), ref_var=ref_var, backend=backend))
    fused = W.jarzynski_increment(*d(x, gx, ux, y, gy, uy, a, s), ref_var=ref_var, backend=backend)
    assert want.abs().max() > 1.0  # the test has something to measure
    assert (two_alphas.cpu() - want).abs().max() <= 1e-10
    assert (fused.cpu() - want).abs().max() <= 1e-10


@pytest.mark.parametrize("device,backend", CASES)
def test_jarzynski_increment_is_the_path_density_log_ratio(device, backend):
    """With (U, grad) of theta_k at x_old and of theta_{k+1} at x_new, the increment is
    log[e^{-U_{k+1}(X_{k+1})} p_{k+1}(X_{k+1} -> X_k)] - log[e^{-U_k(X_k)} p_k(X_k -> X_{k+1})]
    (../shared/PAPERS.md section 1.2), here with the ULA noise sqrt(2 h) and a reference term."""
    require(device, backend)
    gen = torch.Generator().manual_seed(7)
    theta_k, theta_k1 = (1.0, 2.0, 0.3), (0.9, 2.2, 0.1)
    h, ref_var = 0.05, 4.0
    s = math.sqrt(2 * h)
    x_old = torch.randn(40, 6, generator=gen, dtype=F64)
    u_old, g_old = _quartic(x_old, theta_k)
    x_new = x_old - h * (g_old + x_old / ref_var) + s * torch.randn(x_old.shape, generator=gen, dtype=F64)
    u_new, g_new = _quartic(x_new, theta_k1)  # the next step's drift, under the updated parameters
    want = (_log_pi(x_new, u_new, ref_var) + _log_q(x_new, x_old, g_new, h, s, ref_var)) - (
        _log_pi(x_old, u_old, ref_var) + _log_q(x_old, x_new, g_old, h, s, ref_var))
    got = W.jarzynski_increment(*(t.to(device) for t in (x_old, g_old, u_old, x_new, g_new, u_new)), h,
                                ref_var=ref_var, backend=backend)
    assert (got.cpu() - want).abs().max() <= 1e-10
    # and it is not the same-parameter (MALA) ratio: the parameter change is visible
    u_same, g_same = _quartic(x_new, theta_k)
    mala = W.jarzynski_increment(*(t.to(device) for t in (x_old, g_old, u_old, x_new, g_same, u_same)), h,
                                 ref_var=ref_var, backend=backend)
    assert (mala.cpu() - want).abs().min() > 1e-3


@pytest.mark.parametrize("device,backend", [c for c in CASES if c.values[1] in ("cpu", "cuda")])
def test_mala_detailed_balance_on_a_gaussian(device, backend):
    """MALA with these ratios keeps N(0, 1) (U = x^2 / 2) where ULA does not.

    Step a = 0.2: ULA's stationary variance is 1 / (1 - a / 2) = 1.111 (11% off); MALA's is 1.
    10^5 walkers from N(0, 4), 200 steps, the variance averaged over the last 150 (the start is
    forgotten by a factor 0.64 per step): x^2 decorrelates in a few steps, so the standard error
    is about 0.1% and 1% is a wide margin. Measured (seed 0, cpu): MALA 1.0004, ULA 1.1117.
    The loop is plain torch around the fused op; the compiled backends only (the reference op,
    checked above to 1e-13, costs 35 ms a call at this size). One torch thread: on the shared
    2-core dev box the loop took 1 s or 15 s with two, depending on whether another process held
    a core (every OpenMP barrier of its ~2000 small ops waits for the descheduled thread).
    """
    require(device, backend)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _mala_vs_ula(device, backend)
    finally:
        torch.set_num_threads(threads)


def _mala_vs_ula(device, backend):
    a, n, steps, burn = 0.2, 100_000, 200, 50
    c = math.sqrt(2 * a)
    gen = torch.Generator().manual_seed(0)
    x = (2.0 * torch.randn(n, generator=gen, dtype=F64)).to(device)  # [N]: one coordinate per walker
    u = 0.5 * x * x
    x_ula = x.clone()
    var_mala, var_ula = [], []
    for k in range(steps):
        xi = torch.randn(n, generator=gen).to(device, F64)
        log_unif = torch.rand(n, generator=gen).log_().to(device, F64)
        y = torch.add((1 - a) * x, xi, alpha=c)  # x - a grad U(x) + sqrt(2 a) xi
        u_y = 0.5 * y * y
        accept = log_unif < W.jarzynski_increment(x, x, u, y, y, u_y, a, backend=backend)  # grad U = x
        x, u = torch.where(accept, y, x), torch.where(accept, u_y, u)
        x_ula = torch.add((1 - a) * x_ula, xi, alpha=c)
        if k >= burn:
            var_mala.append(x.var().item())
            var_ula.append(x_ula.var().item())
    v_mala, v_ula = sum(var_mala) / len(var_mala), sum(var_ula) / len(var_ula)
    assert abs(v_mala - 1.0) < 0.01, v_mala
    assert abs(v_ula - 1.0) > 0.05 and abs(v_ula - 1.0 / (1.0 - a / 2)) < 0.01, v_ula


# ---------------------------------------------------------------------------------------------
# bad input: every error names the op and the argument
# ---------------------------------------------------------------------------------------------

def test_errors():
    x = torch.zeros(8, 3)
    u = torch.zeros(8)
    tlr, inc = W.transition_log_ratio, W.jarzynski_increment
    with pytest.raises(ValueError, match=r"transition_log_ratio: y has shape \[8, 4\], x has \[8, 3\]"):
        tlr(x, torch.zeros(8, 4), u, x, 0.1)
    with pytest.raises(TypeError, match="transition_log_ratio: grad_x has dtype torch.float64, x has torch.float32"):
        tlr(x, x, u, x.double(), 0.1)
    with pytest.raises(TypeError, match="transition_log_ratio: x must be a floating tensor"):
        tlr(x.long(), x.long(), u, x.long(), 0.1)
    with pytest.raises(ValueError, match="transition_log_ratio: x must have shape"):
        tlr(torch.zeros(()), torch.zeros(()), torch.zeros(()), torch.zeros(()), 0.1)
    with pytest.raises(ValueError, match=r"transition_log_ratio: energy_x must have shape \[8\]"):
        tlr(x, x, torch.zeros(8, 1), x, 0.1)
    with pytest.raises(TypeError, match="transition_log_ratio: energy_x must be a floating tensor"):
        tlr(x, x, torch.zeros(8, dtype=torch.int64), x, 0.1)
    with pytest.raises(ValueError, match="transition_log_ratio: energy_x is on meta, x is on cpu"):
        tlr(x, x, torch.zeros(8, device="meta"), x, 0.1)
    for bad in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="transition_log_ratio: step_size must be finite and > 0"):
            tlr(x, x, u, x, bad)
        with pytest.raises(ValueError, match="transition_log_ratio: noise_std must be finite and > 0"):
            tlr(x, x, u, x, 0.1, bad)  # s = 0 included: the proposal has no density
    with pytest.raises(ValueError, match="transition_log_ratio: noise_std must be finite and > 0; 1 of 8"):
        tlr(x, x, u, x, 0.1, torch.tensor([0.3] * 7 + [0.0]))
    with pytest.raises(ValueError, match=r"transition_log_ratio: step_size must be a float or a per-walker tensor \[8\]"):
        tlr(x, x, u, x, torch.full((7,), 0.1))
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="transition_log_ratio: ref_var must be finite and > 0"):
            tlr(x, x, u, x, 0.1, ref_var=bad)
    with pytest.raises(ValueError, match="transition_log_ratio: backend must be"):
        tlr(x, x, u, x, 0.1, backend="fast")
    with pytest.raises(ValueError, match=r"jarzynski_increment: grad_new has shape \[8, 2\], x_old has \[8, 3\]"):
        inc(x, x, u, x, torch.zeros(8, 2), u, 0.1)
    with pytest.raises(TypeError, match="jarzynski_increment: x_new has dtype torch.float64, x_old has torch.float32"):
        inc(x, x, u, x.double(), x, u, 0.1)
    with pytest.raises(ValueError, match=r"jarzynski_increment: energy_new must have shape \[8\]"):
        inc(x, x, u, x, x, torch.zeros(9), 0.1)
    with pytest.raises(ValueError, match="jarzynski_increment: step_size must be finite and > 0"):
        inc(x, x, u, x, x, u, -1.0)
    with pytest.raises(ValueError, match="jarzynski_increment: ref_var must be finite and > 0"):
        inc(x, x, u, x, x, u, 0.1, ref_var=float("inf"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="jarzynski_increment: backend 'cuda' is unavailable: "):
            inc(x, x, u, x, x, u, 0.1, backend="cuda")


# ---------------------------------------------------------------------------------------------
# torch.library.opcheck of the fused ops (C++ and Triton)
# ---------------------------------------------------------------------------------------------

def _opcheck_cases(device):
    x, y, gx, gy, ux, uy = (t.to(device) for t in _data((8, 5), torch.float32))
    a = torch.full((8,), 0.1, dtype=F64, device=device)
    out = lambda: torch.empty(8, dtype=F64, device=device)  # noqa: E731
    return [
        (x, y, gx, None, ux, None, None, None, 0.1, 0.4, 0.0, out()),
        (x, y, gx, gy, ux, uy.double(), a, a, 0.0, 0.0, 0.5, out()),
    ]


@pytest.mark.parametrize("device,backend", [c for c in CASES if c.values[1] != "reference"])
def test_opcheck(device, backend):
    require(device, backend)
    if backend == "triton":
        from fastlangevin.kernels import triton_ops

        op = triton_ops.log_ratio_out._opoverload
    else:
        W._register_fakes()
        op = torch.ops.fastlangevin.log_ratio_out.default
    for args in _opcheck_cases(device):
        torch.library.opcheck(op, args)
