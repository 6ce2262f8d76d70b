"""Smoke tests for the benchmark suite; collected only by ``pytest bench/`` (testpaths is tests/).

* test_quick_run: bench_langevin.run("cpu", quick=True) runs and returns positive finite
  times for eager and the cpu backend. No assertion on speed: timings on shared CI machines
  are noise, and a benchmark that fails because a neighbour was busy teaches nothing.
* test_quick_run_resample: the same for bench_resample (every scheme on the cpu backend).
* test_jarzynski_quick_run: the same for bench_jarzynski: step, weighted step and increment
  timed for eager and the cpu backend, and the weighted/step ratio reported.
* test_chain_quick_run: bench_chain at its quick size: eager, sample, chain and chain-mala
  rows with positive times and ratios.
* test_mlp_chain_quick_run: bench_mlp_chain at its quick size: the same four rows.
* test_benchmark_*: the same step under pytest-benchmark (``pytest bench/ --benchmark-only``),
  eager vs fastlangevin in one group so its table compares them; skipped without the plugin.
"""
from __future__ import annotations

import importlib.util
import math

import pytest

torch = pytest.importorskip("torch")
fastlangevin = pytest.importorskip("fastlangevin")

from bench import bench_chain, bench_jarzynski, bench_langevin, bench_mlp_chain  # noqa: E402

HAVE_PYTEST_BENCHMARK = importlib.util.find_spec("pytest_benchmark") is not None

# The pytest-benchmark size: MNIST-sized walkers, [N, D] = [4096, 784] (3.2M elements), big
# enough that per-call overhead is not the whole story, small enough for many rounds.
PB_SHAPE = (4096, 784)


def _require_cpu_backend():
    status = fastlangevin.backends()["cpu"]
    if status is not True:
        pytest.skip(f"fastlangevin cpu backend unavailable: {status}")


def test_quick_run():
    _require_cpu_backend()
    payload = bench_langevin.run("cpu", quick=True)
    assert payload["env"]["device_type"] == "cpu"
    rows = payload["rows"]
    assert rows, "no rows"
    for method in ("eager", "cpu"):
        mine = [r for r in rows if r["method"] == method]
        assert mine, f"no row for {method}: {[r['method'] for r in rows]}"
        for r in mine:
            assert r["time_s"] is not None and math.isfinite(r["time_s"]) and r["time_s"] > 0, r
            assert math.isfinite(r["gbps"]) and r["gbps"] > 0, r
            assert math.isfinite(r["vs_eager"]) and r["vs_eager"] > 0, r
    # Every other row either has a time or says why not.
    for r in rows:
        assert r["time_s"] is not None or r["note"], r


def test_quick_run_resample():
    """bench_resample.run("cpu", quick=True): every scheme on the cpu backend has a positive time
    and both ratios; the baseline row is there."""
    _require_cpu_backend()
    from bench import bench_resample

    rows = bench_resample.run("cpu", quick=True)["rows"]
    assert [r for r in rows if r["method"] == bench_resample.BASELINE and r["time_s"]], rows
    for scheme in bench_resample.SCHEMES:
        (r,) = [r for r in rows if r["scheme"] == scheme and r["method"] == "cpu"]
        assert math.isfinite(r["time_s"]) and r["time_s"] > 0, r
        assert r["vs_multinomial"] > 0 and r["vs_reference"] > 0, r
def test_jarzynski_quick_run():
    _require_cpu_backend()
    payload = bench_jarzynski.run("cpu", quick=True)
    rows = {r["method"]: r for r in payload["rows"]}
    assert set(rows) >= {"eager", "cpu"}, list(rows)
    for method in ("eager", "cpu"):
        r = rows[method]
        for key in ("step_ms", "weighted_ms", "increment_ms", "ratio", "increment_gbps"):
            assert r[key] is not None and math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert r["time_s"] == pytest.approx(r["weighted_ms"] / 1e3)
        assert r["ratio"] == pytest.approx(r["weighted_ms"] / r["step_ms"])


def test_chain_quick_run():
    _require_cpu_backend()
    payload = bench_chain.run("cpu", quick=True)
    rows = {r["method"]: r for r in payload["rows"]}
    assert set(rows) == {"eager", "sample", "chain", "chain-mala"}, list(rows)
    for r in rows.values():
        for key in ("time_s", "ms_per_step", "mwalker_steps_per_s", "vs_eager"):
            assert r[key] is not None and math.isfinite(r[key]) and r[key] > 0, (key, r)
    assert rows["eager"]["vs_eager"] == pytest.approx(1.0)


def test_mlp_chain_quick_run():
    _require_cpu_backend()
    payload = bench_mlp_chain.run("cpu", quick=True)
    rows = {r["method"]: r for r in payload["rows"]}
    assert set(rows) == {"eager", "sample", "chain", "chain-mala"}, list(rows)
    for r in rows.values():
        for key in ("time_s", "ms_per_step", "mwalker_steps_per_s", "vs_eager"):
            assert r[key] is not None and math.isfinite(r[key]) and r[key] > 0, (key, r)
    assert rows["eager"]["vs_eager"] == pytest.approx(1.0)


if not HAVE_PYTEST_BENCHMARK:
    # The plugin provides the `benchmark` fixture; without it the tests below would error at
    # setup ("fixture 'benchmark' not found"). This stand-in skips them instead. It is only
    # defined when the plugin is missing, so it never shadows the real fixture.
    @pytest.fixture
    def benchmark():
        pytest.importorskip("pytest_benchmark")


@pytest.fixture(scope="module")
def walkers():
    """x, grad, out: float32 [4096, 784] on CPU."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(PB_SHAPE, generator=gen)
    g = torch.randn(PB_SHAPE, generator=gen)
    return x, g, torch.empty_like(x)


def test_benchmark_eager(benchmark, walkers):
    x, g, _ = walkers
    benchmark.group = f"langevin_step float32 {PB_SHAPE[0]}x{PB_SHAPE[1]} cpu"
    y = benchmark(bench_langevin.eager_step, x, g, bench_langevin.STEP_SIZE, bench_langevin.NOISE_STD)
    assert y.shape == x.shape


def test_benchmark_fastlangevin_cpu(benchmark, walkers):
    _require_cpu_backend()
    x, g, out = walkers
    benchmark.group = f"langevin_step float32 {PB_SHAPE[0]}x{PB_SHAPE[1]} cpu"
    offsets = iter(range(1, 1 << 62))  # fresh noise per call, as in a sampler loop

    def step():
        return fastlangevin.langevin_step(x, g, bench_langevin.STEP_SIZE, seed=0, offset=next(offsets), out=out,
                                          backend="cpu")

    y = benchmark(step)
    assert y is out
