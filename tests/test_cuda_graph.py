"""cuda_graph=True: sample() and Walkers as the replay of one captured CUDA graph.

Three layers, so that most of it runs on a machine without a GPU:

- the device-resident stream (fastlangevin.graphs.DeviceStream, randn_at, uniforms_at) draws
  exactly the Philox words, normals and uniforms of the int-offset ops, for every offset the
  loops use (MH and resampling streams, 64-bit wrap-around) -- CPU, reference and Triton
  interpreter;
- the replay path with graphs.EAGER_REPLAY = True (the captured body runs eagerly at each
  "replay": same input copies, device stream, output clones and cache as a real replay) equals
  eager mode: bit for bit on the reference and triton backends, to float32 rounding of the
  normals on the cpu backend (its C++ normals vs the reference's) -- CPU;
- real capture and replay on a GPU (`cuda` marker: skipped without one).
"""
import pytest
import torch

import fastlangevin as fl
from fastlangevin import graphs
from fastlangevin import resampling as rs
from fastlangevin.walkers import MH_STREAM, RESAMPLE_STREAM

from conftest import require

U64 = (1 << 64) - 1


def _mlp(d: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d, 16), torch.nn.SiLU(), torch.nn.Linear(16, 1))


class MLPEnergy(torch.nn.Module):
    """U(x) = mlp(x) + |x|^2 / 2 ([N, d] -> [N]): an nn.Module differentiated by autograd."""

    def __init__(self, d: int, seed: int = 0):
        super().__init__()
        self.net = _mlp(d, seed)

    def forward(self, x):
        return self.net(x).squeeze(-1) + 0.5 * (x * x).sum(1)


class ConvEnergy(torch.nn.Module):
    """A small conv net on [N, 1, 8, 8] images (the bench_conv shape of problem), plus a
    Gaussian term so the chain stays bounded."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.SiLU(),
                                        torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), torch.nn.SiLU())
        self.head = torch.nn.Linear(8 * 4 * 4, 1)

    def forward(self, x):
        return self.head(self.conv(x).flatten(1)).squeeze(-1) + 0.5 * (x * x).flatten(1).sum(1)


@pytest.fixture
def eager_replay(monkeypatch):
    """Run captured bodies eagerly (graphs.EAGER_REPLAY), with an empty sample() cache."""
    monkeypatch.setattr(graphs, "EAGER_REPLAY", True)
    graphs.clear_cache()
    yield
    graphs.clear_cache()


def _same(a, b, exact: bool, tol: float = 1e-5):
    if a is None or b is None:
        assert a is None and b is None
        return
    if not torch.is_tensor(a):
        assert a == b
        return
    if exact:
        assert torch.equal(a, b), (a - b).abs().max() if a.is_floating_point() else (a != b).sum()
    else:
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


SAMPLE_FIELDS = ("x", "energy", "trajectory", "acceptance", "step_size")
WALKER_FIELDS = ("x", "grad", "energy", "log_weights", "_log_z0", "n_resampled")

# (device, backend, exact): reference and triton replay the step backend's own normals; the
# cpu backend's C++ float32 normals differ from the reference's (float64, rounded) in the last
# bit, hence a tolerance there.
EMULATED = [
    pytest.param("cpu", "reference", True, id="cpu-reference"),
    pytest.param("cpu", "cpu", False, id="cpu-cpu"),
    pytest.param("cpu", "triton", True, id="cpu-triton"),
]


# --------------------------------------------------------------------------------------------
# errors (CPU)
# --------------------------------------------------------------------------------------------

def test_cpu_tensors_raise():
    e = MLPEnergy(2)
    x0 = torch.randn(8, 2)
    with pytest.raises(ValueError, match=r"^sample: cuda_graph=True needs CUDA tensors; x0 is on cpu"):
        fl.sample(e, x0, 3, 0.1, cuda_graph=True)
    with pytest.raises(ValueError, match=r"^sample: cuda_graph=True needs CUDA tensors; x0 is on cpu"):
        fl.sample(e, x0, 3, 0.1, cuda_graph=True, mh=True)
    with pytest.raises(ValueError, match=r"^Walkers: cuda_graph=True needs CUDA tensors; x0 is on cpu"):
        fl.Walkers(e, x0, 0.1, cuda_graph=True)


def test_cuda_graph_must_be_a_bool():
    e, x0 = MLPEnergy(2), torch.randn(4, 2)
    with pytest.raises(TypeError, match="sample: cuda_graph must be a bool, got int"):
        fl.sample(e, x0, 3, 0.1, cuda_graph=1)
    with pytest.raises(TypeError, match="Walkers: cuda_graph must be a bool, got str"):
        fl.Walkers(e, x0, 0.1, cuda_graph="yes")


def test_progress_refused(eager_replay):
    with pytest.raises(ValueError, match="sample: progress=True cannot be combined with cuda_graph=True"):
        fl.sample(MLPEnergy(2), torch.randn(4, 2), 3, 0.1, cuda_graph=True, progress=True)


def test_per_walker_on_another_device_refused(eager_replay):
    w = fl.Walkers(MLPEnergy(2), torch.randn(4, 2), 0.1, cuda_graph=True)
    w.per_walker["label"] = torch.arange(4, device="meta")
    with pytest.raises(ValueError, match=r"Walkers.step: per_walker\['label'\] is on meta, the walkers on cpu"):
        w.step(2)


# --------------------------------------------------------------------------------------------
# the device-resident stream draws the int-offset stream exactly (CPU)
# --------------------------------------------------------------------------------------------

SEEDS = [0, 12345, (1 << 63) + 17, U64]
OFFSETS = [0, 7, (1 << 32) + 5, (1 << 63) + 3, U64]


def _i64(v: int) -> torch.Tensor:
    return torch.tensor(v - (1 << 64) if v >= (1 << 63) else v, dtype=torch.int64)


@pytest.mark.parametrize("noise_backend", ["reference", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_randn_at_equals_randn(noise_backend, dtype):
    """randn_at with (seed, offset) in int64 tensors == randn(seed=, offset=) of the same
    backend, bit for bit; 10 elements (a partial Philox block), the extremes of both words."""
    require("cpu", noise_backend)
    for seed in SEEDS:
        for off in OFFSETS:
            got = graphs.randn_at((2, 5), _i64(seed), _i64(off), dtype, noise_backend)
            want = fl.randn((2, 5), seed=seed, offset=off, dtype=dtype, backend=noise_backend)
            assert torch.equal(got, want), (seed, off)


@pytest.mark.parametrize("noise_backend", ["reference", "triton"])
def test_uniforms_at_equals_uniforms(noise_backend):
    require("cpu", noise_backend)
    for seed in SEEDS:
        for off in OFFSETS:
            got = graphs.uniforms_at(5, _i64(seed), _i64(off), noise_backend)
            assert torch.equal(got, rs.uniforms(5, seed=seed, offset=off, backend="reference")), (seed, off)


@pytest.mark.parametrize("noise_backend", ["reference", "triton"])
def test_device_stream_offsets_are_the_loops(noise_backend):
    """Step j of a DeviceStream set to (seed, base) draws what the eager loops draw at step
    base + j: the noise at (base + j) mod 2^64, MALA's uniforms at MH_STREAM | ((base + j) mod
    2^62), the resampling's at RESAMPLE_STREAM | (base + j); including the wrap past 2^64 - 1."""
    require("cpu", noise_backend)
    x = torch.zeros(3, 2)
    for seed, base in [(3, 0), (3, 41), ((1 << 63) + 1, U64 - 1), (9, (1 << 62) - 1)]:
        st = graphs.DeviceStream(torch.device("cpu"), noise_backend).set(seed, base)
        for j in range(3):
            k = (base + j) & U64
            assert torch.equal(st.normals(x, j), fl.randn(x.shape, seed=seed, offset=k, backend=noise_backend))
            assert torch.equal(st.mh_uniforms(3, j),
                               rs.uniforms(3, seed=seed, offset=MH_STREAM | (k & (MH_STREAM - 1)), backend="reference"))
            if k < (1 << 63):  # Walkers' step counts: RESAMPLE_STREAM | k is a 64-bit word
                assert torch.equal(st.resample_uniforms(3, j),
                                   rs.uniforms(3, seed=seed, offset=RESAMPLE_STREAM | k, backend="reference"))


# --------------------------------------------------------------------------------------------
# the replay path, run eagerly (CPU)
# --------------------------------------------------------------------------------------------

SAMPLE_CASES = [
    pytest.param(dict(), id="ula"),
    pytest.param(dict(noise_std=0.2, ref_var=4.0, grad_clip=5.0, clamp=(-3.0, 3.0)), id="ula-clip-clamp"),
    pytest.param(dict(mh=True), id="mala"),
    pytest.param(dict(mh=True, adapt_steps=3), id="mala-adapt"),
]


@pytest.mark.parametrize("device,backend,exact", EMULATED)
@pytest.mark.parametrize("kw", SAMPLE_CASES)
def test_sample_replay_equals_eager(eager_replay, monkeypatch, device, backend, exact, kw):
    """6 steps of 16 walkers in 3-D on an nn.Module energy, with the trajectory: the replay path
    equals the eager loop for two (seed, offset) pairs and two x0, served by one cached body."""
    require(device, backend)
    energy = MLPEnergy(3)
    torch.manual_seed(1)
    x0s = [torch.randn(16, 3), torch.randn(16, 3)]
    run = dict(n_steps=6, step_size=0.05, backend=backend, return_trajectory=True, **kw)
    # a high offset: across 2^64 for ULA; MALA's noise offsets must stay below 2^62 (its uniforms' stream)
    high = (1 << 62) - 6 if kw.get("mh") else (1 << 64) - 3
    for x0, seed, offset in [(x0s[0], 3, 11), (x0s[1], (1 << 64) - 2, high)]:
        got = fl.sample(energy, x0, seed=seed, offset=offset, cuda_graph=True, **run)
        monkeypatch.setattr(graphs, "EAGER_REPLAY", False)
        want = fl.sample(energy, x0, seed=seed, offset=offset, **run)
        monkeypatch.setattr(graphs, "EAGER_REPLAY", True)
        for f in SAMPLE_FIELDS:
            _same(getattr(got, f), getattr(want, f), exact)
        assert got.backend == want.backend and got.n_steps == 6
    assert len(graphs.SAMPLE_GRAPHS._d) == 1  # the second call reused the first one's body


@pytest.mark.parametrize("device,backend,exact", EMULATED[:2])
def test_sample_replay_per_walker_step(eager_replay, monkeypatch, device, backend, exact):
    """Per-walker step size and noise tensors are replay inputs: new values, same graph."""
    require(device, backend)
    energy, x0 = MLPEnergy(2), torch.randn(8, 2)
    for scale in (1.0, 0.5):
        a = torch.linspace(0.01, 0.1, 8) * scale
        s = torch.sqrt(2 * a) * 0.9
        for kw in (dict(noise_std=s), dict(mh=True)):
            got = fl.sample(energy, x0, 4, a, seed=1, backend=backend, cuda_graph=True, **kw)
            monkeypatch.setattr(graphs, "EAGER_REPLAY", False)
            want = fl.sample(energy, x0, 4, a, seed=1, backend=backend, **kw)
            monkeypatch.setattr(graphs, "EAGER_REPLAY", True)
            for f in SAMPLE_FIELDS:
                _same(getattr(got, f), getattr(want, f), exact)
    assert len(graphs.SAMPLE_GRAPHS._d) == 2  # one per kw, shared by both scales


def test_sample_recaptures_when_parameters_move(eager_replay):
    """A graph reads parameters by address: replacing one (not an in-place update) or switching
    train/eval makes a new graph; an in-place update does not."""
    energy, x0 = MLPEnergy(2), torch.randn(4, 2)
    fl.sample(energy, x0, 2, 0.1, cuda_graph=True)
    with torch.no_grad():
        energy.net[0].bias.add_(1.0)
    fl.sample(energy, x0, 2, 0.1, cuda_graph=True)
    assert len(graphs.SAMPLE_GRAPHS._d) == 1
    energy.net[0].bias = torch.nn.Parameter(energy.net[0].bias.detach().clone())
    fl.sample(energy, x0, 2, 0.1, cuda_graph=True)
    energy.eval()
    fl.sample(energy, x0, 2, 0.1, cuda_graph=True)
    assert len(graphs.SAMPLE_GRAPHS._d) == 3


def test_sample_replay_reports_non_finite(eager_replay, monkeypatch):
    """A chain that overflows: the replay raises the eager loop's NonFiniteError (first bad step,
    number of walkers), checked once after the replay."""
    def energy(x):
        return (x ** 4).sum(1)

    x0 = torch.full((5, 2), 3.0)
    x0[:2] = 0.1
    with pytest.raises(fl.NonFiniteError) as eager:
        monkeypatch.setattr(graphs, "EAGER_REPLAY", False)
        fl.sample(energy, x0, 20, 0.5, seed=0, backend="reference")
    monkeypatch.setattr(graphs, "EAGER_REPLAY", True)
    with pytest.raises(fl.NonFiniteError) as graph:
        fl.sample(energy, x0, 20, 0.5, seed=0, backend="reference", cuda_graph=True)
    assert str(graph.value) == str(eager.value)
    assert "became non-finite at step" in str(graph.value)


def _walkers_pair(backend, scheme, device="cpu", energy=None, x0=None, **kw):
    energy = energy if energy is not None else MLPEnergy(2, seed=3).to(device)
    if x0 is None:
        torch.manual_seed(2)
        x0 = (torch.randn(32, 2) * 2).to(device)
    opts = dict(seed=5, backend=backend, resample=scheme, ess_threshold=0.9, **kw)
    eager = fl.Walkers(energy, x0, 0.2, **opts)
    graph = fl.Walkers(energy, x0, 0.2, cuda_graph=True, **opts)
    for w in (eager, graph):
        w.per_walker["label"] = torch.arange(32, device=x0.device)
    return energy, eager, graph


def _walkers_run(energy, eager, graph, exact, calls=(3, 3, 1, 3), tol=1e-5):
    """step(n) for each n, the energy's parameters updated in place between calls (training)
    followed by refresh(); the state compared after every call."""
    for n in calls:
        eager.step(n)
        graph.step(n)
        for f in WALKER_FIELDS:
            _same(getattr(graph, f), getattr(eager, f), exact, tol)
        assert torch.equal(graph.per_walker["label"], eager.per_walker["label"])
        assert graph.steps == eager.steps
        with torch.no_grad():
            for p in energy.parameters():
                p.mul_(0.97)
        eager.refresh()
        graph.refresh()
    assert int(eager.n_resampled) > 0  # the ESS trigger fired: resampling inside the replay


@pytest.mark.parametrize("device,backend,exact", EMULATED)
@pytest.mark.parametrize("scheme", ["systematic", "multinomial"])
def test_walkers_replay_equals_eager(eager_replay, device, backend, exact, scheme):
    """32 weighted walkers, ESS-triggered resampling, 4 step() calls: the replay path keeps the
    eager object's walkers, cache, weights, log Z offset, resampling count and per_walker."""
    require(device, backend)
    energy, eager, graph = _walkers_pair(backend, scheme)
    _walkers_run(energy, eager, graph, exact)
    assert len(graph._graphs._d) == 2  # step(3) and step(1)


def test_walkers_replay_unweighted_and_state_dict(eager_replay):
    """weights=False (plain ULA through the same path), then a state_dict round trip into a
    graph Walkers continues bit for bit."""
    energy, eager, graph = _walkers_pair("reference", None, weights=False)
    eager.step(4)
    graph.step(4)
    for f in WALKER_FIELDS:
        _same(getattr(graph, f), getattr(eager, f), True)
    other = fl.Walkers(energy, torch.zeros(32, 2), 0.2, seed=0, backend="reference", resample=None, weights=False,
                       cuda_graph=True)
    other.per_walker["label"] = torch.zeros(32, dtype=torch.int64)
    other.load_state_dict(eager.state_dict())
    eager.step(3)
    other.step(3)
    for f in WALKER_FIELDS:
        _same(getattr(other, f), getattr(eager, f), True)


# --------------------------------------------------------------------------------------------
# real capture and replay (GPU; unexecuted where no GPU is lent)
# --------------------------------------------------------------------------------------------

# (backend, exact): the triton and reference steps replay their own normals; the cuda step gets
# the Triton kernel's float32 normals (csrc/normal.h's polynomial maps; FMA contraction may
# differ), hence a tolerance.
GPU_CASES = [
    pytest.param("cuda", False, id="cuda", marks=pytest.mark.cuda),
    pytest.param("triton", True, id="triton", marks=pytest.mark.cuda),
    pytest.param("reference", True, id="reference", marks=pytest.mark.cuda),
]


@pytest.mark.parametrize("backend,exact", GPU_CASES)
@pytest.mark.parametrize("mh", [False, True], ids=["ula", "mala"])
@pytest.mark.parametrize("conv", [False, True], ids=["mlp", "conv"])
def test_sample_graph_equals_eager_gpu(backend, exact, mh, conv, monkeypatch):
    """sample(..., cuda_graph=True) on an nn.Module energy (MLP on [64, 3] or conv net on
    [32, 1, 8, 8]), 20 steps: three calls (two offsets, a new x0) replay one graph and each
    equals the eager loop at the same (seed, offset). cuDNN is made deterministic: some of its
    backward-data algorithms accumulate with atomics, which would differ run to run, graph or
    not."""
    require("cuda", backend)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    dev = torch.device("cuda")
    graphs.clear_cache()
    energy = (ConvEnergy() if conv else MLPEnergy(3)).to(dev)
    shape = (32, 1, 8, 8) if conv else (64, 3)
    torch.manual_seed(0)
    x0a, x0b = torch.randn(shape, device=dev), torch.randn(shape, device=dev)
    run = dict(n_steps=20, step_size=0.01, backend=backend, mh=mh, return_trajectory=True)
    high = (1 << 62) - 20 if mh else (1 << 64) - 5  # MALA: noise offsets below 2^62, its uniforms' stream
    for x0, seed, offset in [(x0a, 1, 0), (x0a, 1, 20), (x0b, 7, high)]:
        got = fl.sample(energy, x0, seed=seed, offset=offset, cuda_graph=True, **run)
        want = fl.sample(energy, x0, seed=seed, offset=offset, **run)
        for f in SAMPLE_FIELDS:
            _same(getattr(got, f), getattr(want, f), exact, tol=1e-4)
    assert len(graphs.SAMPLE_GRAPHS._d) == 1
    graphs.clear_cache()


@pytest.mark.cuda
def test_sample_graph_mala_adapt_gpu():
    """MALA with step-size adaptation (device-side log-scale) and a per-walker step tensor."""
    require("cuda", "triton")
    dev = torch.device("cuda")
    graphs.clear_cache()
    energy = MLPEnergy(3).to(dev)
    x0 = torch.randn(64, 3, device=dev)
    a = torch.linspace(0.005, 0.05, 64, device=dev)
    run = dict(n_steps=30, step_size=a, backend="triton", mh=True, adapt_steps=10, seed=4, offset=100)
    got = fl.sample(energy, x0, cuda_graph=True, **run)
    want = fl.sample(energy, x0, **run)
    for f in SAMPLE_FIELDS:
        _same(getattr(got, f), getattr(want, f), True)
    graphs.clear_cache()


@pytest.mark.parametrize("backend,exact", GPU_CASES)
@pytest.mark.parametrize("scheme", ["systematic", "multinomial", "residual"])
def test_walkers_graph_equals_eager_gpu(backend, exact, scheme):
    """Walkers(..., cuda_graph=True): weights, ESS-triggered resampling on the device, four
    step() calls (two graphs: step(3), step(1)), in-place parameter updates and refresh()
    between them; the state equals the eager object's after every call."""
    require("cuda", backend)
    energy, eager, graph = _walkers_pair(backend, scheme, device="cuda")
    _walkers_run(energy, eager, graph, exact, tol=1e-4)
    assert len(graph._graphs._d) == 2


@pytest.mark.cuda
def test_walkers_graph_non_finite_gpu():
    """A NaN energy inside a replay is reported after the replay that crosses check_every."""
    require("cuda", "cuda")
    dev = torch.device("cuda")

    def energy(x):
        return torch.where(x[:, 0] > 1e3, torch.nan, (x * x).sum(1))

    # weights=False: a NaN log-weight would make the GPU resampling's ancestors -1, and the
    # gather a device-side assert (see fastlangevin.resampling), ending the CUDA context
    w = fl.Walkers(energy, torch.zeros(8, 2, device=dev), 0.01, weights=False, resample=None, cuda_graph=True,
                   check_every=4)
    w.step(2)  # steps 0, 1: finite, and no check yet
    w.x[0, 0] = 2e3  # walker 0's next proposal lands where the energy is NaN
    msg = r"Walkers: energy or gradient became non-finite at step 2 for 1 walker"
    with pytest.raises(fl.NonFiniteError, match=msg):
        w.step(2)  # steps 2, 3: crosses check_every = 4


def test_sample_graph_key_takes_the_checked_clamp(eager_replay):
    """clamp as a list pair is accepted eagerly, so the graph path must take it too (its cache
    key held the raw list: TypeError unhashable, before any capture, so on a GPU as well), and
    bounds given as 0-d tensors are keyed by value (a fresh tensor per call recaptured)."""
    e = lambda x: 0.5 * (x * x).sum(1)  # noqa: E731
    x0 = torch.randn(8, 2)
    want = fl.sample(e, x0, 3, 0.1, clamp=(-1.0, 1.0), backend="reference")
    got = fl.sample(e, x0, 3, 0.1, clamp=[-1.0, 1.0], backend="reference", cuda_graph=True)
    assert torch.equal(got.x, want.x)
    n = len(graphs.SAMPLE_GRAPHS._d)
    for _ in range(3):
        fl.sample(e, x0, 3, 0.1, clamp=(torch.tensor(-1.0), 1.0), backend="reference", cuda_graph=True)
    assert len(graphs.SAMPLE_GRAPHS._d) == n  # the same (lo, hi) floats: the same graph


def test_graph_key_sees_a_submodule_switching_mode():
    """A captured graph bakes each module's training flag (dropout, batch norm): switching one
    submodule to eval() must miss the cache, not replay the training-mode graph (the key read
    the top module's flag only)."""
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
    k_train = graphs.energy_key(net)
    net[1].eval()
    assert net.training and graphs.energy_key(net) != k_train
    net[1].train()
    assert graphs.energy_key(net) == k_train
