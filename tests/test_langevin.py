"""langevin_step: exact arithmetic against the reference with the noise seam, seeded agreement
across backends, shapes/dtypes/layouts, bad input, and torch.library.opcheck."""
import math
import os

import pytest
import torch

import fastlangevin as fl
from fastlangevin.reference import langevin_step_ref

from conftest import CASES, require


def _data(shape, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device)
    grad = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype).to(device)
    noise = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device)
    return x, grad, noise


def _by_hand(x, grad, a, s, noise, ref_var=None, grad_clip=None, clamp=None):
    """The documented update written independently of reference.py, in float64."""
    x, grad, noise = x.double(), grad.double(), noise.double()
    if torch.is_tensor(a):
        a = a.double().reshape(-1, *[1] * (x.dim() - 1))
    if torch.is_tensor(s):
        s = s.double().reshape(-1, *[1] * (x.dim() - 1))
    g = grad if grad_clip is None else torch.clamp(grad, -grad_clip, grad_clip)
    if ref_var is not None:
        g = g + x / ref_var
    y = x - a * g + s * noise
    if clamp is not None:
        y = torch.clamp(y, *clamp)
    return y


OPTIONS = [
    dict(),
    dict(ref_var=0.016**2 * 100),
    dict(grad_clip=0.5),
    dict(clamp=(-1.0, 1.0)),
    dict(clamp=(None, 0.5)),
    dict(ref_var=2.0, grad_clip=1.0, clamp=(-2.0, 2.5)),
]

# float32: a few ulps of |y| <= ~20 (grad ~ 3, steps up to 0.5); float64: 1e-12.
TOL = {torch.float32: dict(rtol=1e-6, atol=2e-6), torch.float64: dict(rtol=1e-12, atol=1e-12)}


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(o) or "plain")
def test_explicit_noise_matches_formula(device, backend, dtype, opts):
    require(device, backend)
    x, grad, noise = _data((67, 5), dtype, device)
    a, s = 0.05, 0.3
    y = fl.langevin_step(x, grad, a, s, noise=noise, backend=backend, **opts)
    assert y.dtype == dtype and y.shape == x.shape and y.device == x.device
    want = _by_hand(x.cpu(), grad.cpu(), a, s, noise.cpu(), **opts).to(dtype)
    torch.testing.assert_close(y.cpu(), want, **TOL[dtype])


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_per_walker_step_and_std(device, backend, dtype):
    require(device, backend)
    x, grad, noise = _data((33, 3, 7), dtype, device)  # row length 21: rows straddle Philox blocks
    gen = torch.Generator().manual_seed(1)
    a = (0.01 + 0.2 * torch.rand(33, generator=gen, dtype=torch.float64)).to(dtype).to(device)
    s = (0.5 * torch.rand(33, generator=gen, dtype=torch.float64)).to(dtype).to(device)
    for std in (s, 0.2, None):
        y = fl.langevin_step(x, grad, a, std, noise=noise, backend=backend, grad_clip=2.0)
        s_used = torch.sqrt(2 * a) if std is None else std
        want = _by_hand(x.cpu(), grad.cpu(), a.cpu(), s_used.cpu() if torch.is_tensor(s_used) else s_used,
                        noise.cpu(), grad_clip=2.0).to(dtype)
        torch.testing.assert_close(y.cpu(), want, **TOL[dtype])
    # a scalar step with a per-walker std, seeded: the noise is the seeded stream
    y = fl.langevin_step(x, grad, 0.1, s, seed=4, offset=9, backend=backend)
    xi = fl.randn(x.shape, seed=4, offset=9, dtype=torch.float64)
    torch.testing.assert_close(y.cpu(), _by_hand(x.cpu(), grad.cpu(), 0.1, s.cpu(), xi).to(dtype),
                               **TOL[dtype])


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("shape", [(1000,), (64, 3), (16, 3, 8, 8), (5, 1, 2, 3, 4)])
def test_seeded_step_equals_reference_within_1e6(device, backend, shape):
    """With (seed, offset), every backend adds the same normals: results within 1e-6."""
    require(device, backend)
    x, grad, _ = _data(shape, device=device)
    y = fl.langevin_step(x, grad, 0.01, seed=77, offset=3, backend=backend)
    want = langevin_step_ref(x.cpu(), grad.cpu(), 0.01, seed=77, offset=3, compute_dtype=torch.float64)
    assert (y.cpu() - want).abs().max().item() <= 1e-6
    # and the noise really is randn(x.shape, seed, offset)
    xi = fl.randn(shape, seed=77, offset=3, dtype=torch.float64)
    torch.testing.assert_close(y.cpu().double(), x.cpu().double() - 0.01 * grad.cpu().double() + math.sqrt(0.02) * xi,
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("device,backend", CASES)
def test_noise_free_step(device, backend):
    """noise_std = 0 is CoopVAEBM's training step: no randomness at all."""
    require(device, backend)
    x, grad, _ = _data((50, 4), device=device)
    y = fl.langevin_step(x, grad, 0.1, 0.0, ref_var=4.0, seed=1, backend=backend)
    torch.testing.assert_close(y.cpu(), _by_hand(x.cpu(), grad.cpu(), 0.1, 0.0, torch.zeros(50, 4), ref_var=4.0).float(),
                               **TOL[torch.float32])
    y2 = fl.langevin_step(x, grad, 0.1, 0.0, ref_var=4.0, seed=2, backend=backend)
    assert torch.equal(y, y2)


@pytest.mark.parametrize("device,backend", CASES)
def test_layouts_inplace_and_out(device, backend):
    require(device, backend)
    x, grad, noise = _data((40, 6), device=device)
    want = fl.langevin_step(x, grad, 0.05, 0.2, seed=5, offset=1, backend=backend)
    # non-contiguous inputs: same logical values, same element order for the noise
    xt = x.t().contiguous().t()
    gt = grad.t().contiguous().t()
    assert not xt.is_contiguous()
    assert torch.equal(fl.langevin_step(xt, gt, 0.05, 0.2, seed=5, offset=1, backend=backend), want)
    # in place
    xi = x.clone()
    r = fl.langevin_step(xi, grad, 0.05, 0.2, seed=5, offset=1, out=xi, backend=backend)
    assert r.data_ptr() == xi.data_ptr() and torch.equal(xi, want)
    # out aliasing the gradient (a caller recycling grad's buffer) and the explicit noise
    gi = grad.clone()
    r = fl.langevin_step(x, gi, 0.05, 0.2, seed=5, offset=1, out=gi, backend=backend)
    assert r.data_ptr() == gi.data_ptr() and torch.equal(gi, want)
    want_n = fl.langevin_step(x, grad, 0.05, 0.2, noise=noise, backend=backend)
    ni = noise.clone()
    r = fl.langevin_step(x, grad, 0.05, 0.2, noise=ni, out=ni, backend=backend)
    assert r.data_ptr() == ni.data_ptr() and torch.equal(ni, want_n)
    # out overlapping x one walker further on (x = buf[:-1], out = buf[1:]): written straight
    # into, walker i's result would overwrite walker i + 1 before it is read
    buf = torch.cat([x, x[:1]])
    o = buf[1:]
    r = fl.langevin_step(buf[:-1], grad, 0.05, 0.2, seed=5, offset=1, out=o, backend=backend)
    assert r is o and torch.equal(buf[1:], want) and torch.equal(buf[0], x[0])
    # in place (out = x itself) with a gradient that overlaps x at a shift (grad = buf[:-1])
    buf = torch.cat([x[:1], x])
    want_g = fl.langevin_step(buf[1:].clone(), buf[:-1].clone(), 0.05, 0.2, seed=5, offset=1, backend=backend)
    xv = buf[1:]
    r = fl.langevin_step(xv, buf[:-1], 0.05, 0.2, seed=5, offset=1, out=xv, backend=backend)
    assert r is xv and torch.equal(buf[1:], want_g) and torch.equal(buf[0], x[0])
    # a non-contiguous out
    o = torch.full((6, 40), float("nan"), device=device).t()  # NaN: an unwritten element fails loudly
    r = fl.langevin_step(x, grad, 0.05, 0.2, seed=5, offset=1, out=o, backend=backend)
    assert r is o and torch.equal(o, want)
    # a strided view as x (every other walker)
    xs, gs = x[::2], grad[::2]
    ws = langevin_step_ref(xs.cpu(), gs.cpu(), 0.05, 0.2, seed=5, offset=1)
    torch.testing.assert_close(fl.langevin_step(xs, gs, 0.05, 0.2, seed=5, offset=1, backend=backend).cpu(), ws,
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device,backend", CASES)
def test_empty_and_single_walker(device, backend):
    require(device, backend)
    x = torch.empty(0, 3, device=device)
    assert fl.langevin_step(x, x, 0.1, backend=backend).shape == (0, 3)
    x, grad, _ = _data((1, 2), device=device)
    y = fl.langevin_step(x, grad, 0.1, seed=0, backend=backend)
    torch.testing.assert_close(y.cpu(), langevin_step_ref(x.cpu(), grad.cpu(), 0.1, seed=0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device,backend", [c for c in CASES if c.values[1] != "reference"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_state_float32_arithmetic(device, backend, dtype):
    """16-bit state: loaded, stepped in float32, rounded once on store."""
    require(device, backend)
    x, grad, noise = _data((64, 16), dtype, device)
    y = fl.langevin_step(x, grad, 0.05, 0.3, noise=noise, backend=backend, clamp=(-2, 2))
    want = _by_hand(x.cpu().float(), grad.cpu().float(), 0.05, 0.3, noise.cpu().float(), clamp=(-2, 2)).float()
    assert y.dtype == dtype
    # one rounding to the 16-bit format: half an ulp of |y| <= 2
    assert ((y.cpu().float() - want).abs() <= torch.finfo(dtype).eps * want.abs().clamp(min=1)).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_state_same_bits_on_every_cpu_backend(dtype):
    """16-bit state rounds to nearest even on every backend: the reference, the C++ kernel and
    the Triton interpreter (whose own float32 -> bfloat16 cast truncated: 14 of 24 elements 1 ulp
    toward zero) give the same bits, with the Philox noise and with the noise seam."""
    x, grad, noise = _data((64, 16), dtype, "cpu")
    backends = ["reference", "cpu"] + (["triton"] if os.environ.get("TRITON_INTERPRET") == "1" else [])
    for kw in (dict(seed=3), dict(noise=noise)):
        ys = [fl.langevin_step(x, grad, 0.05, 0.3, backend=b, clamp=(-2, 2), **kw) for b in backends]
        for b, y in zip(backends[1:], ys[1:]):
            assert torch.equal(y, ys[0]), (b, kw.keys())


def test_triton_float64_scalars_out_of_range_are_refused():
    """The Triton kernels carry a float64 scalar as two float32 halves (48 bits): a step size of
    1e39 became inf and one of 1e-280 became 0, silently, where reference and cpu agree on the
    float64 answer. Such values are refused naming the argument; float32 walkers (which use
    fp32(v), as the C++ kernels do) and the ordinary range are unaffected."""
    require("cpu", "triton")
    x = torch.ones(4, 3, dtype=torch.float64)
    for kw, name in ((dict(step_size=1e39), "step_size"), (dict(step_size=1e-280), "step_size"),
                     (dict(step_size=0.1, grad_clip=1e39), "grad_clip"),
                     (dict(step_size=0.1, clamp=(-1e39, 1e39)), "clamp lo")):
        with pytest.raises(ValueError, match=rf"langevin_step: {name} = .* is outside the magnitudes the triton "
                                             r"backend carries"):
            fl.langevin_step(x, x, seed=0, backend="triton", **kw)
        y = fl.langevin_step(x, x, seed=0, backend="cpu", **kw)
        assert bool(torch.isfinite(y).all())
    x32 = x.float()
    torch.testing.assert_close(fl.langevin_step(x32, x32, 1e-30, seed=0, backend="triton"),
                               fl.langevin_step(x32, x32, 1e-30, seed=0, backend="cpu"), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fl.langevin_step(x, x, 1e-30, seed=0, backend="triton"),
                               fl.langevin_step(x, x, 1e-30, seed=0, backend="cpu"), rtol=1e-14, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# bad input: every error names the op and the argument
# ---------------------------------------------------------------------------------------------

def test_errors():
    x = torch.zeros(64, 2)
    g = torch.zeros(64, 2)
    step = fl.langevin_step
    with pytest.raises(ValueError, match=r"langevin_step: grad has shape \[64, 3\], x has \[64, 2\]"):
        step(x, torch.zeros(64, 3), 0.1)
    with pytest.raises(TypeError, match="langevin_step: x must be a floating tensor"):
        step(torch.zeros(64, 2, dtype=torch.int64), g, 0.1)
    with pytest.raises(TypeError, match="langevin_step: grad has dtype torch.float64, x has torch.float32"):
        step(x, g.double(), 0.1)
    with pytest.raises(ValueError, match="langevin_step: grad is on meta, x is on cpu"):
        step(x, torch.zeros(64, 2, device="meta"), 0.1)
    with pytest.raises(ValueError, match="langevin_step: noise has shape"):
        step(x, g, 0.1, noise=torch.zeros(64))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="langevin_step: step_size must be finite and > 0"):
            step(x, g, bad)
    with pytest.raises(ValueError, match="langevin_step: noise_std must be finite and >= 0"):
        step(x, g, 0.1, -0.1)
    with pytest.raises(ValueError, match=r"langevin_step: step_size must be a float or a per-walker tensor \[64\]"):
        step(x, g, torch.full((63,), 0.1))
    with pytest.raises(ValueError, match="langevin_step: step_size must be finite and > 0; 1 of 64"):
        step(x, g, torch.cat([torch.full((63,), 0.1), torch.zeros(1)]))
    with pytest.raises(ValueError, match="langevin_step: clamp has lo > hi"):
        step(x, g, 0.1, clamp=(1.0, -1.0))
    with pytest.raises(TypeError, match="langevin_step: clamp must be a pair"):
        step(x, g, 0.1, clamp=1.0)
    with pytest.raises(ValueError, match="langevin_step: grad_clip must be > 0"):
        step(x, g, 0.1, grad_clip=0.0)
    with pytest.raises(ValueError, match="langevin_step: ref_var must be finite and > 0"):
        step(x, g, 0.1, ref_var=-1.0)
    with pytest.raises(TypeError, match="langevin_step: step_size must be a float or a tensor"):
        step(x, g, "0.1")
    with pytest.raises(ValueError, match="langevin_step: x must have shape"):
        step(torch.zeros(()), torch.zeros(()), 0.1)
    with pytest.raises(ValueError, match="langevin_step: backend must be"):
        step(x, g, 0.1, backend="fast")
    with pytest.raises(ValueError, match="langevin_step: out has shape"):
        step(x, g, 0.1, out=torch.zeros(64, 3))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="langevin_step: backend 'cuda' is unavailable: "):
            step(x, g, 0.1, backend="cuda")


@pytest.mark.cuda
def test_direct_op_call_with_mixed_devices():
    """torch.ops.fastlangevin.langevin_step_out called directly (no Python checks): the
    dispatcher sends any call with a CUDA argument to the CUDA kernel, whose launcher must refuse
    host tensors instead of dereferencing them on the device."""
    require("cuda", "cuda")
    x = torch.zeros(64, 2, device="cuda")
    inf = float("inf")
    op = torch.ops.fastlangevin.langevin_step_out
    match = r"langevin_step: grad, out, noise, step_size and noise_std must be on x's device \(cuda:0\)"
    cpu_a = torch.full((64,), 0.1)
    with pytest.raises(RuntimeError, match=match + ", got a tensor on cpu"):
        op(x, torch.zeros_like(x), None, cpu_a, None, 0.0, 0.4, 0.0, inf, -inf, inf, 1, 2, torch.empty_like(x))
    with pytest.raises(RuntimeError, match=match + ", got a tensor on cpu"):
        op(x, torch.zeros_like(x), None, None, None, 0.1, 0.4, 0.0, inf, -inf, inf, 1, 2, torch.empty(64, 2))
    with pytest.raises(RuntimeError, match=r"langevin_step: .* must be on x's device \(cpu\), got a tensor on cuda:0"):
        xc = torch.zeros(64, 2)
        op(xc, torch.zeros_like(xc), None, None, None, 0.1, 0.4, 0.0, inf, -inf, inf, 1, 2, x.clone())


# ---------------------------------------------------------------------------------------------
# torch.library.opcheck: schema, fake (meta) kernels, autograd registration, and
# torch.compile-readiness of every custom op
# ---------------------------------------------------------------------------------------------

def _opcheck_cases(device):
    x, grad, noise = _data((8, 5), device=device)
    inf = float("inf")
    a = torch.full((8,), 0.1, device=device)
    return [
        ("philox", (torch.randint(0, 2**32, (9, 4), dtype=torch.int64).to(device), 123)),
        ("randn_out", (torch.empty(7, 3, device=device), 5, 6)),
        ("langevin_step_out", (x, grad, None, None, None, 0.1, 0.4, 0.0, inf, -inf, inf, 1, 2, torch.empty_like(x))),
        ("langevin_step_out", (x, grad, noise, a, a, 0.0, 0.0, 0.5, 1.0, -1.0, 1.0, 1, 2, torch.empty_like(x))),
    ]


@pytest.mark.parametrize("device,backend", [c for c in CASES if c.values[1] != "reference"])
def test_opcheck(device, backend):
    require(device, backend)
    if backend == "triton":
        from fastlangevin.kernels import triton_ops  # noqa: F401  (registers the ops)

        ns = torch.ops.fastlangevin_triton
    else:
        fl.ops._register_fakes()
        ns = torch.ops.fastlangevin
    for name, args in _opcheck_cases(device):
        torch.library.opcheck(getattr(ns, name).default, args)
