"""fastlangevin.chain.mlp_chain: the fused MLP chain against the reference loop and against the
step-by-step path of sample() / Walkers (same seed, same noise), opcheck, and bad input."""
import pytest
import torch

import fastlangevin as fl
from fastlangevin.chain import StepByStep, fused_chain_of, mlp_chain
from fastlangevin.energies import MLPEnergy

from conftest import CASES, require

BACKENDS = ["reference", "cpu"]
INTERP = ("cpu", "triton")  # the Triton interpreter: slow, its cases run at small sizes


def _mlp(d, hidden=24, depth=3, act="silu", ref_var=None, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    e = MLPEnergy(d, hidden=hidden, depth=depth, act=act, ref_var=ref_var).to(dtype)
    with torch.no_grad():  # a landscape with some curvature (nn.Linear's init is nearly linear)
        for p in e.parameters():
            p.mul_(2.5)
    return e


def _x0(n, d, dtype, seed=0):
    return 2 * torch.randn(n, d, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def _tol(dtype):
    return dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["ula", "weights", "mh"])
@pytest.mark.parametrize("act,depth,hidden,d,ref_var", [
    ("silu", 3, 24, 5, None),      # widths not multiples of the 16 / 8 vector lanes
    ("softplus", 1, 128, 64, 2.0),  # the digits shape, widest layer
    ("tanh", 4, 7, 2, 1.0),         # 2-D toy, deepest
])
def test_cpu_kernel_equals_reference(dtype, mode, act, depth, hidden, d, ref_var):
    """83 walkers: 36-row tiles and a last 12-row block with 11 rows (the micro-kernels run 6 rows in
    ymm, 12 in zmm); the widths leave the 2-vector blocks one-vector tails."""
    require("cpu", "cpu")
    e = _mlp(d, hidden, depth, act, ref_var, dtype)
    x0 = _x0(83, d, dtype)
    ws, bs, a, inv_ref = e.mlp_chain_params()
    kw = dict(inv_ref_var=inv_ref, seed=3, offset=(1 << 64) - 4, mode=mode)  # offsets wrap past 2^64
    h = 0.5 if mode == "mh" else 0.05  # large enough for MALA to reject some proposals
    got = mlp_chain(x0, ws, bs, a, 12, h, backend="cpu", **kw)
    want = mlp_chain(x0, ws, bs, a, 12, h, backend="reference", **kw)
    torch.testing.assert_close(got.x, want.x, **_tol(dtype))
    torch.testing.assert_close(got.energy, want.energy, **_tol(dtype))
    torch.testing.assert_close(got.grad, want.grad, **_tol(dtype))
    assert torch.equal(got.accepted, want.accepted)
    if mode == "mh":
        assert 0 < int(got.accepted.sum()) < 83 * 12  # some proposals rejected, some accepted
    else:
        assert torch.equal(got.accepted, torch.full((83,), 12))
    if mode == "weights":
        torch.testing.assert_close(got.log_w, want.log_w, rtol=0, atol=1e-3 if dtype == torch.float32 else 1e-9)
        assert got.log_w.abs().max() > 1e-3  # the weights moved
    assert torch.equal(x0, _x0(83, d, dtype))  # the inputs are untouched
    # the final energy and gradient are the energy's own closed form at the final state
    u, g = e.energy_and_grad(got.x)
    torch.testing.assert_close(got.energy, u, **_tol(dtype))
    torch.testing.assert_close(got.grad, g, **_tol(dtype))


def test_reference_chain_is_the_autograd_loop():
    """The oracle against sample() on a plain function of the same MLP (autograd gradients)."""
    e = _mlp(4, 16, 2, "tanh", 3.0)
    x0 = _x0(50, 4, torch.float64)
    fused = fl.sample(e, x0, 15, 0.05, seed=9, backend="reference")
    loop = fl.sample(lambda x: e(x), x0, 15, 0.05, seed=9, backend="reference")
    torch.testing.assert_close(fused.x, loop.x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fused.energy, loop.energy, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mh", [False, True])
def test_sample_fused_equals_step_by_step(device, backend, dtype, mh):
    """On every backend, CUDA walkers included (backend "cuda" runs the Triton MLP kernel).
    Under the Triton interpreter 16 walkers of d = 6, hidden 16, 5 steps (70 x 10, hidden 32,
    20 steps elsewhere)."""
    require(device, backend)
    interp = (device, backend) == INTERP
    n, d, hidden, steps = (16, 6, 16, 5) if interp else (70, 10, 32, 20)
    e = _mlp(d, hidden, 3, "silu", None, dtype).to(device)
    x0 = _x0(n, d, dtype).to(device)
    assert fused_chain_of(e, x0, backend) is not None and fused_chain_of(StepByStep(e), x0) is None
    h = 0.5 if mh else 0.05
    fused = fl.sample(e, x0, steps, h, seed=5, offset=11, mh=mh, backend=backend)
    loop = fl.sample(StepByStep(e), x0, steps, h, seed=5, offset=11, mh=mh, backend=backend)
    if backend == "reference":  # the oracle chain is literally the loop's arithmetic
        assert torch.equal(fused.x, loop.x)
    torch.testing.assert_close(fused.x, loop.x, **_tol(dtype))
    torch.testing.assert_close(fused.energy, loop.energy, **_tol(dtype))
    if mh:
        torch.testing.assert_close(fused.acceptance, loop.acceptance, rtol=0, atol=1e-12)
        assert 0.3 < float(fused.acceptance) < 1.0
    other = fl.sample(e, x0, steps, h, seed=6, offset=11, mh=mh, backend=backend)
    assert (other.x - fused.x).abs().max() > 0.05


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("mode", ["ula", "weights", "mh"])
def test_triton_weights_reloaded_each_step_equal_hoisted(device, mode, monkeypatch):
    """The Triton kernel's two ways with the weights (kernels/mlp_chain.py HOIST_MAX_BYTES): kept
    in shared memory for the whole chain (small MLPs) or reloaded every step (larger ones, whose
    hoisted weights overflow a block's shared memory). The same arithmetic: equal results, and
    equal to the reference chain. 16 walkers of d = 5, hidden 16, 4 steps, float64."""
    require(device, "triton")
    from fastlangevin.kernels import mlp_chain as kernel
    e = _mlp(5, 16, 3, "tanh", 2.0, torch.float64).to(device)
    x0 = _x0(16, 5, torch.float64).to(device)
    ws, bs, act, inv_ref = e.mlp_chain_params()
    kw = dict(inv_ref_var=inv_ref, seed=3, offset=2, mode=mode)
    assert kernel.hoist_weights(16, 16, 3, 8)
    hoisted = mlp_chain(x0, ws, bs, act, 4, 0.2, backend="triton", **kw)
    monkeypatch.setattr(kernel, "HOIST_MAX_BYTES", 0)
    assert not kernel.hoist_weights(16, 16, 3, 8)
    reloaded = mlp_chain(x0, ws, bs, act, 4, 0.2, backend="triton", **kw)
    ref = mlp_chain(x0.cpu(), [w.cpu() for w in ws], [b.cpu() for b in bs], act, 4, 0.2, backend="reference", **kw)
    for f in ("x", "energy", "grad", "log_w", "accepted"):
        a, b, r = getattr(hoisted, f), getattr(reloaded, f), getattr(ref, f)
        if a is None:
            assert b is None and r is None, f
            continue
        assert torch.equal(a, b), f
        torch.testing.assert_close(a.cpu(), r, rtol=1e-10, atol=1e-10)
    assert (hoisted.x - x0).abs().max() > 0.05


@pytest.mark.cuda
@pytest.mark.parametrize("d", [2, 64])
@pytest.mark.parametrize("mode", ["ula", "weights", "mh"])
def test_triton_chain_at_full_width_on_a_gpu(d, mode):
    """hidden 128, depth 3 (the default MLPEnergy at d = 2, the digits energy at d = 64): the
    sizes whose hoisted weights overflowed a block's shared memory (OutOfResources at launch), so
    the kernel reloads them per step. Against the C++ chain: 64 walkers, 5 steps of 0.5 (MALA
    accepts 84% to 90% of them on the CPU), float64."""
    require("cuda", "triton")
    e = _mlp(d, 128, 3, "silu", None, torch.float64)
    x0 = _x0(64, d, torch.float64)
    ws, bs, act, inv_ref = e.mlp_chain_params()
    kw = dict(inv_ref_var=inv_ref, seed=1, offset=0, mode=mode)
    cpu = mlp_chain(x0, ws, bs, act, 5, 0.5, backend="cpu", **kw)
    gpu = mlp_chain(x0.cuda(), [w.cuda() for w in ws], [b.cuda() for b in bs], act, 5, 0.5, backend="triton", **kw)
    torch.testing.assert_close(gpu.x.cpu(), cpu.x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gpu.energy.cpu(), cpu.energy, rtol=1e-9, atol=1e-9)
    if mode == "weights":
        torch.testing.assert_close(gpu.log_w.cpu(), cpu.log_w, rtol=1e-9, atol=1e-9)
    assert torch.equal(gpu.accepted.cpu(), cpu.accepted)


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("weights,resample", [(False, None), (True, "systematic")])
def test_walkers_fused_equals_step_by_step(device, backend, weights, resample):
    """Walkers.step(n) fused (speculate-and-replay around resampling) against the loop, with a
    parameter change between calls (the first increment uses the cached old energy). Under the
    Triton interpreter 32 walkers, 6 + 8 steps (resampling still fires twice)."""
    require(device, backend)
    interp = (device, backend) == INTERP
    n, s1, s2 = (32, 6, 8) if interp else (96, 15, 20)
    e = _mlp(6, 16, 2, "softplus", 2.0).to(device)
    x0 = _x0(n, 6, torch.float64).to(device)
    kw = dict(seed=4, weights=weights, resample=resample, ess_threshold=0.95, backend=backend)
    w1, w2 = fl.Walkers(e, x0, 0.3, **kw), fl.Walkers(StepByStep(e), x0, 0.3, **kw)
    assert w1._fused_params() is not None and w2._fused_params() is None
    w1.step(s1)
    w2.step(s1)
    with torch.no_grad():
        e.net[0].bias.add_(0.2)
    w1.step(s2)
    w2.step(s2)
    assert w1.steps == w2.steps == s1 + s2
    assert int(w1.n_resampled) == int(w2.n_resampled)
    if resample is not None:
        assert int(w1.n_resampled) >= 2
    for k in ("x", "grad", "energy", "log_weights"):
        torch.testing.assert_close(getattr(w1, k), getattr(w2, k), rtol=1e-9, atol=1e-9)


def test_large_mlp_runs_step_by_step():
    """hidden > 128 or depth > 4: no fused chain, sample() runs its closed form step by step."""
    x0 = _x0(8, 3, torch.float64)
    for e in (_mlp(3, 130, 1), _mlp(3, 8, 5)):
        assert fused_chain_of(e, x0) is None
        res = fl.sample(e, x0, 3, 0.01, seed=1)
        loop = fl.sample(lambda x, e=e: e(x), x0, 3, 0.01, seed=1)
        torch.testing.assert_close(res.x, loop.x, rtol=1e-10, atol=1e-10)
    # a shape mismatch (image-shaped walkers) also falls back
    assert fused_chain_of(_mlp(4, 8, 1), torch.zeros(2, 1, 2, 2, dtype=torch.float64)) is None


def test_opcheck():
    require("cpu", "cpu")
    from fastlangevin.chain import _register_fakes

    _register_fakes()
    e = _mlp(5, 9, 2, "tanh", 2.0, torch.float32)
    ws, bs, _, inv_ref = e.mlp_chain_params()
    x = _x0(13, 5, torch.float32)
    u, g = e.energy_and_grad(x)
    op = torch.ops.fastlangevin.mlp_chain.default
    acc = torch.zeros(13, dtype=torch.int64)
    torch.library.opcheck(op, (x.clone(), u.clone(), g.clone(), ws, bs, 2, inv_ref, 3, 0.05, 0.3, 1, 2, 0, None, None,
                               acc.clone()))
    lw, steps = torch.zeros(13, dtype=torch.float64), torch.zeros(3, 13, dtype=torch.float64)
    torch.library.opcheck(op, (x.clone(), u.clone(), g.clone(), ws, bs, 2, inv_ref, 3, 0.05, 0.3, 1, 2, 1, lw, steps,
                               acc.clone()))


def test_mlp_chain_errors():
    e = _mlp(4, 8, 2, "silu", None, torch.float32)
    ws, bs, act, _ = e.mlp_chain_params()
    x = torch.zeros(8, 4)
    with pytest.raises(ValueError, match=r"mlp_chain: weights\[0\] has shape \[8, 4\], expected \[8, 5\]"):
        mlp_chain(torch.zeros(8, 5), ws, bs, act, 3, 0.1)
    with pytest.raises(ValueError, match=r"mlp_chain: biases\[1\] has shape \[3\], expected \[8\]"):
        mlp_chain(x, ws, [bs[0], bs[1][:3], bs[2]], act, 3, 0.1)
    with pytest.raises(ValueError, match="mlp_chain: weights must hold 2 to 5 matrices"):
        mlp_chain(x, ws[:1], bs[:1], act, 3, 0.1)
    with pytest.raises(ValueError,
                       match=r"mlp_chain: weights\[0\] has shape \[130, 4\], expected \[H, 4\] with 1 <= H <= 128"):
        big = _mlp(4, 130, 1, dtype=torch.float32).mlp_chain_params()
        mlp_chain(x, big[0], big[1], act, 3, 0.1)
    with pytest.raises(ValueError, match="mlp_chain: act must be one of"):
        mlp_chain(x, ws, bs, "relu", 3, 0.1)
    with pytest.raises(ValueError, match="mlp_chain: mode must be one of"):
        mlp_chain(x, ws, bs, act, 3, 0.1, mode="hmc")
    with pytest.raises(ValueError, match="mlp_chain: inv_ref_var must be a finite float >= 0"):
        mlp_chain(x, ws, bs, act, 3, 0.1, inv_ref_var=-1.0)
    with pytest.raises(TypeError, match="mlp_chain: step_size must be a float"):
        mlp_chain(x, ws, bs, act, 3, torch.full((8,), 0.1))
    with pytest.raises(ValueError, match="mlp_chain: noise_std must be finite and > 0"):
        mlp_chain(x, ws, bs, act, 3, 0.1, 0.0, mode="mh")
    with pytest.raises(ValueError, match="mlp_chain: give both energy and grad"):
        mlp_chain(x, ws, bs, act, 3, 0.1, energy=torch.zeros(8))
    with pytest.raises(TypeError, match="mlp_chain: x must be float32 or float64"):
        mlp_chain(x.half(), ws, bs, act, 3, 0.1)
    with pytest.raises(ValueError, match="mlp_chain: log_w and return_log_w_steps belong to mode 'weights'"):
        mlp_chain(x, ws, bs, act, 3, 0.1, return_log_w_steps=True)
    if fl.backends()["cuda"] is True:  # no CUDA C++ MLP kernel: "auto" picks triton, "cuda" is refused
        with pytest.raises(ValueError, match="mlp_chain: backend 'cuda' has no fused MLP chain kernel"):
            mlp_chain(x.cuda(), [w.cuda() for w in ws], [b.cuda() for b in bs], act, 3, 0.1, backend="cuda")
    # the C++ op's own guards, for direct callers
    require("cpu", "cpu")
    acc = torch.zeros(8, dtype=torch.int64)
    with pytest.raises(RuntimeError, match=r"mlp_chain: weights\[1\] must be \[8, 8\]"):
        torch.ops.fastlangevin.mlp_chain(x, torch.zeros(8), x.clone(), [ws[0], ws[0], ws[2]], bs, 0, 0.0, 1, 0.1, 0.1,
                                         0, 0, 0, None, None, acc)


def test_log_w_steps_are_the_per_step_weights():
    require("cpu", "cpu")
    e = _mlp(3, 8, 2, "silu")
    x0 = _x0(40, 3, torch.float64)
    ws, bs, act, inv_ref = e.mlp_chain_params()
    for be in BACKENDS:
        full = mlp_chain(x0, ws, bs, act, 5, 0.05, seed=1, mode="weights", return_log_w_steps=True, backend=be)
        assert full.log_w_steps.shape == (5, 40)
        for t in (1, 3):
            part = mlp_chain(x0, ws, bs, act, t, 0.05, seed=1, mode="weights", backend=be)
            torch.testing.assert_close(full.log_w_steps[t - 1], part.log_w, rtol=0, atol=1e-12)
        torch.testing.assert_close(full.log_w_steps[-1], full.log_w, rtol=0, atol=0)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_triton_ula_equals_reference(device):
    """The Triton kernel (the CPU interpreter here; compiled where a GPU is visible) at tiny
    sizes: 37 walkers = 3 programs of 16, widths padded to 16, depth 1 / 3 / 4, offsets wrapping
    past 2^64."""
    require(device, "triton")
    for act, depth, hidden, d, ref_var in (("silu", 3, 24, 5, None), ("tanh", 4, 7, 2, 1.0),
                                           ("softplus", 1, 20, 17, 2.0)):
        e = _mlp(d, hidden, depth, act, ref_var, torch.float32).to(device)
        x0 = _x0(37, d, torch.float32).to(device)
        ws, bs, a, inv_ref = e.mlp_chain_params()
        kw = dict(inv_ref_var=inv_ref, seed=3, offset=(1 << 64) - 2)
        got = mlp_chain(x0, ws, bs, a, 4, 0.05, backend="triton", **kw)
        want = mlp_chain(x0, ws, bs, a, 4, 0.05, backend="reference", **kw)
        for k in ("x", "energy", "grad"):
            torch.testing.assert_close(getattr(got, k), getattr(want, k), rtol=1e-4, atol=1e-4)
        assert torch.equal(got.accepted.cpu(), torch.full((37,), 4))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["weights", "mh"])
def test_triton_modes_equal_reference_and_cpu(device, dtype, mode):
    """Jarzynski weights (log_w and log_w_steps) and MALA (the same accept/reject decisions,
    hence the same accepted counts) of the Triton kernel against the reference and the CPU
    kernel: 19 walkers = 2 programs of 16, the last partial; d = 5 and 17 (padded to 16 / 32),
    depth 3 / 1; 4 steps, offsets wrapping past 2^64."""
    require(device, "triton")
    for act, depth, hidden, d, ref_var in (("silu", 3, 16, 5, 2.0), ("tanh", 1, 20, 17, None)):
        e = _mlp(d, hidden, depth, act, ref_var, dtype)
        x0 = _x0(19, d, dtype)
        ws, bs, a, inv_ref = e.mlp_chain_params()
        lw0 = torch.linspace(-1, 1, 19, dtype=torch.float64) if mode == "weights" else None  # a running log_w
        kw = dict(inv_ref_var=inv_ref, seed=3, offset=(1 << 64) - 2, mode=mode, log_w=lw0,
                  return_log_w_steps=mode == "weights")
        h = 0.5 if mode == "mh" else 0.05  # large enough for MALA to reject some proposals
        got = mlp_chain(x0.to(device), [w.to(device) for w in ws], [b.to(device) for b in bs], a, 4, h,
                        backend="triton", **{**kw, "log_w": None if lw0 is None else lw0.to(device)})
        wants = [mlp_chain(x0, ws, bs, a, 4, h, backend="reference", **kw)]
        if fl.backends()["cpu"] is True:
            wants.append(mlp_chain(x0, ws, bs, a, 4, h, backend="cpu", **kw))
        for want in wants:
            for k in ("x", "energy", "grad"):
                torch.testing.assert_close(getattr(got, k).cpu(), getattr(want, k), **_tol(dtype))
            assert torch.equal(got.accepted.cpu(), want.accepted)
            if mode == "weights":
                lw_tol = dict(rtol=0, atol=1e-4 if dtype == torch.float32 else 1e-10)
                torch.testing.assert_close(got.log_w.cpu(), want.log_w, **lw_tol)
                torch.testing.assert_close(got.log_w_steps.cpu(), want.log_w_steps, **lw_tol)
        if mode == "mh":
            assert 0 < int(got.accepted.sum()) < 19 * 4  # some proposals rejected, some accepted
            assert got.log_w is None and got.log_w_steps is None
        else:
            assert torch.equal(got.accepted.cpu(), torch.full((19,), 4))
            assert got.log_w_steps.shape == (4, 19)
            assert (got.log_w.cpu() - lw0).abs().max() > 1e-3  # the weights moved from their start
            torch.testing.assert_close(got.log_w_steps[-1], got.log_w, rtol=0, atol=0)
        assert torch.equal(x0, _x0(19, d, dtype))  # the inputs are untouched


def test_cuda_backend_runs_the_triton_kernel():
    """There is no CUDA C++ MLP kernel: sample() / Walkers on backend "cuda" get fused_chain_of's
    runner (for CUDA walkers only), which runs backend "cuda" as "triton". The runner's mapping
    checked on CPU tensors under the interpreter (the cuda-marked sample / Walkers cases run it
    on a GPU)."""
    require("cpu", "triton")
    e = _mlp(3, 16, 2, "tanh", 1.0, torch.float32)
    x0 = _x0(16, 3, torch.float32)
    ws, bs, act, inv_ref = e.mlp_chain_params()
    assert fused_chain_of(e, x0, "cuda") is None  # CPU walkers never run on "cuda"
    got = fused_chain_of(e, x0)(x0, 3, 0.3, seed=2, mode="mh", backend="cuda")
    want = mlp_chain(x0, ws, bs, act, 3, 0.3, inv_ref_var=inv_ref, seed=2, mode="mh", backend="triton")
    for k in ("x", "energy", "grad", "accepted"):
        assert torch.equal(getattr(got, k), getattr(want, k)), k


@pytest.mark.cuda
def test_wide_walkers_on_a_gpu_run_step_by_step():
    """On CUDA tensors the Triton MLP kernel takes d <= TRITON_MLP_MAX_D (its state tiles live in
    registers; d = 256 in float64 would need 296 KB of shared memory): wider walkers get no fused
    chain, and sample() runs them step by step, equal to the plain loop; the kernel called
    directly says why."""
    from fastlangevin.chain import TRITON_MLP_MAX_D

    require("cuda", "triton")
    d = TRITON_MLP_MAX_D + 1
    e = _mlp(d, 16, 2).cuda()
    x0 = _x0(8, d, torch.float64).cuda()
    assert fused_chain_of(e, x0) is None and fused_chain_of(e, x0, "cuda") is None
    res = fl.sample(e, x0, 3, 0.01, seed=1)
    loop = fl.sample(lambda x: e(x), x0, 3, 0.01, seed=1)
    torch.testing.assert_close(res.x, loop.x, rtol=1e-10, atol=1e-10)
    ws, bs, act, inv_ref = e.mlp_chain_params()
    with pytest.raises(ValueError, match=rf"mlp_chain: the Triton kernel runs CUDA walkers of dimension d <= "
                                         rf"{TRITON_MLP_MAX_D} .* got d = {d}"):
        mlp_chain(x0, ws, bs, act, 3, 0.01, backend="triton")
    small = _mlp(TRITON_MLP_MAX_D, 16, 2).cuda()
    assert fused_chain_of(small, _x0(8, TRITON_MLP_MAX_D, torch.float64).cuda()) is not None
