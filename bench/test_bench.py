"""Smoke tests for the benchmark suite, collected by the README's test command too (pyproject's
testpaths are tests/ and bench/).

* test_quick_run: bench_langevin.run("cpu", quick=True) runs and returns positive finite
  times for eager and the cpu backend. No assertion on speed: timings on shared CI machines
  are noise, and a benchmark that fails because a neighbour was busy teaches nothing.
* test_quick_run_resample: the same for bench_resample (every scheme on the cpu backend).
* test_jarzynski_quick_run: the same for bench_jarzynski: step, weighted step and increment
  timed for eager and the cpu backend, and the weighted/step ratio reported.
* test_chain_quick_run: bench_chain at its quick size: eager, sample, chain and chain-mala
  rows with positive times and ratios, torchebm too when it is installed, and a compile row
  that says it was skipped in --quick.
* test_mlp_chain_quick_run: bench_mlp_chain at its quick size: the same rows.
* test_conv_quick_run: bench_conv at its quick size: the samplers, the net alone and the final
  forward timed,
  overhead % for the samplers, cuda_graph "not measured (needs a GPU)" on CPU.
* test_compile_*: bench.baselines' torch.compile helpers (with the cheap "eager" dynamo
  backend, no C++ build): compile time in the note, a failure as a row note, not a crash, a
  real graph per shape past dynamo's recompile limit.
* test_write_results_*: the JSON (device, versions, commit) and its PNG under the same stem;
  ``python -m bench --quick --only bench_conv`` writes the module's and the run's files.
* test_steady_allocator_*: common.steady_allocator fixes glibc's mmap / trim thresholds (the
  eager GMM step stops page-faulting its tensors in; with FASTLANGEVIN_BENCH_MALLOC=system,
  glibc's defaults, it does) and records it in the env.
* test_benchmark_*: the same step under pytest-benchmark (``pytest bench/ --benchmark-only``),
  eager vs fastlangevin in one group so its table compares them; skipped without the plugin.
"""
from __future__ import annotations

import importlib.util
import json
import math

import pytest

torch = pytest.importorskip("torch")
fastlangevin = pytest.importorskip("fastlangevin")

from bench import baselines, bench_chain, bench_conv, bench_jarzynski, bench_langevin, bench_mlp_chain, common  # noqa: E402

HAVE_PYTEST_BENCHMARK = importlib.util.find_spec("pytest_benchmark") is not None
HAVE_TORCHEBM = importlib.util.find_spec("torchebm") is not None

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


def _positive(r, keys):
    for key in keys:
        assert r[key] is not None and math.isfinite(r[key]) and r[key] > 0, (key, r)


def _check_chain_rows(payload, fused=("chain", "chain-mala")):
    """The rows every chain benchmark has at --quick on CPU: eager first (vs_eager 1), timed
    samplers, torchebm timed when installed (else n/a saying so), compile skipped."""
    rows = {r["method"]: r for r in payload["rows"]}
    assert payload["rows"][0]["method"] == "eager"
    timed = ["eager", "sample", *fused] + (["torchebm"] if HAVE_TORCHEBM else [])
    for m in timed:
        _positive(rows[m], ("time_s", "ms_per_step", "mwalker_steps_per_s", "vs_eager"))
    assert rows["eager"]["vs_eager"] == pytest.approx(1.0)
    if not HAVE_TORCHEBM:
        assert rows["torchebm"]["time_s"] is None and "torchebm not installed" in rows["torchebm"]["note"]
    assert rows["compile"]["time_s"] is None and baselines.QUICK_SKIP in rows["compile"]["note"], rows["compile"]
    return rows


def test_chain_quick_run():
    _require_cpu_backend()
    payload = bench_chain.run("cpu", quick=True)
    rows = _check_chain_rows(payload)
    assert set(rows) == {"eager", "compile", "torchebm", "sample", "chain", "chain-mala"}, list(rows)


def test_mlp_chain_quick_run():
    _require_cpu_backend()
    payload = bench_mlp_chain.run("cpu", quick=True)
    rows = _check_chain_rows(payload)
    assert set(rows) == {"eager", "compile", "torchebm", "sample", "chain", "chain-mala"}, list(rows)


@pytest.fixture(scope="module")
def conv_payload():
    _require_cpu_backend()
    return bench_conv.run("cpu", quick=True)


def test_conv_quick_run(conv_payload):
    rows = _check_chain_rows(conv_payload, fused=("net",))
    assert set(rows) == {"eager", "compile", "torchebm", "sample", "cuda_graph", "net", "final U"}, list(rows)
    assert rows["cuda_graph"]["time_s"] is None and "not measured (needs a GPU)" in rows["cuda_graph"]["note"]
    fin = rows["final U"]
    _positive(fin, ("time_s",))
    assert fin["vs_eager"] is None and fin["ms_per_step"] is None and fin["overhead_pct"] is None
    for m in ("eager", "sample") + (("torchebm",) if HAVE_TORCHEBM else ()):
        o = rows[m]["overhead_pct"]
        assert o is not None and math.isfinite(o) and o < 100, (m, rows[m])
        # overhead = (time - net time) / time, from the rows' own times; sample()'s chain also
        # runs the final forward for result.energy, so its net time counts it
        net = rows["net"]["time_s"] + (fin["time_s"] if m == "sample" else 0.0)
        assert o == pytest.approx(100 * (1 - net / rows[m]["time_s"]))
    assert "net time includes the final U" in rows["sample"]["note"]
    assert rows["net"]["overhead_pct"] is None


def test_compile_first_call_reports_time_and_failure():
    x = torch.randn(8, 4)
    fn, note = baselines.compile_first_call(lambda t: 2 * t + 1, x, device="cpu", backend="eager")
    assert fn is not None and note.startswith("compile ") and "graph breaks" in note, note
    torch.testing.assert_close(fn(x), 2 * x + 1)

    def broken(t):
        raise ValueError("no kernel for this\nsecond line")

    fn, note = baselines.compile_first_call(broken, x, device="cpu", backend="eager")
    assert fn is None and note == "ValueError: no kernel for this", note


def _affine(t):
    return 3 * t - 1


def test_compile_first_call_past_dynamo_recompile_limit():
    """python -m bench compiles one function at up to 16 shapes; past dynamo's default limit (8)
    it would run eagerly under the name "compile". Each of 10 shapes must get its own graph."""
    for n in range(1, 11):
        fn, note = baselines.compile_first_call(_affine, torch.ones(n), device="cpu", backend="eager")
        assert fn is not None and ", 1 graphs," in note, (n, note)


def test_compiled_candidate_skipped_in_quick_is_not_timed():
    calls = []
    c = baselines.compiled_candidate("compile", lambda t: calls.append(t), (1,), lambda f: lambda: f(2),
                                     bench_chain.QUICK, "cpu", quick=True)
    other = bench_langevin._Candidate("eager", lambda: calls.append(0), bench_chain.QUICK)
    bench_langevin._measure_interleaved([c, other], torch.device("cpu"))
    assert c.error == baselines.QUICK_SKIP and c.times == [] and 1 not in calls and 2 not in calls
    assert len(other.times) == bench_chain.QUICK["repeats"]


def test_write_results_json_and_plot(conv_payload, tmp_path):
    path = common.write_results(conv_payload["name"], conv_payload, results_dir=tmp_path)
    data = json.loads(path.read_text())
    env = data["env"]
    for key in ("device_type", "device", "torch", "triton", "python", "git_commit", "timestamp_utc"):
        assert key in env, key
    assert env["device_type"] == "cpu" and env["torch"] == torch.__version__
    png = path.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert (tmp_path / f"{conv_payload['name']}-cpu-latest.png").exists()


def test_write_results_without_matplotlib(conv_payload, tmp_path, monkeypatch):
    """A python without matplotlib (a bare GPU machine, .ci/gpu) still gets its JSON; no PNG."""
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    path = common.write_results(conv_payload["name"], conv_payload, results_dir=tmp_path)
    assert json.loads(path.read_text())["rows"] == json.loads(json.dumps(common.json_safe(conv_payload)))["rows"]
    assert not path.with_suffix(".png").exists()


def test_runner_writes_module_and_run_files(tmp_path, monkeypatch):
    _require_cpu_backend()
    from bench import __main__ as runner

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    assert runner.main(["--quick", "--device", "cpu", "--only", "bench_conv"]) == 0
    names = {p.name for p in tmp_path.iterdir()}
    commit = common.git_commit() or "unknown"
    for stem in (f"conv-quick-cpu-{commit}", f"bench-quick-cpu-{commit}"):
        assert {stem + ".json", stem + ".png"} <= names, names
    run = json.loads((tmp_path / f"bench-quick-cpu-{commit}.json").read_text())
    assert [p["name"] for p in run["payloads"]] == ["conv-quick"]
    untimed = 2 if HAVE_TORCHEBM else 3  # compile (--quick), cuda_graph (CPU), torchebm if missing
    assert run["summary"][0]["status"] == f"ok ({untimed} rows without a time)", run["summary"]



def test_runner_deadline_and_module_timeout(tmp_path, monkeypatch, capsys, conv_payload):
    """A time-boxed run (.ci/gpu): a module past its limit is stopped and reported, the next
    module still runs and is written, and modules past the deadline are 'not run'."""
    import re
    import time
    import types

    from bench import __main__ as runner

    with pytest.raises(runner.ModuleTimeout, match="slow ran past its time limit"):
        with runner._deadline(0.2, "slow"):
            time.sleep(5)
    with runner._deadline(None, "unlimited"):
        pass

    def swallows(dev, quick):
        """Overruns inside `except Exception`, as the benchmarks' rows do (a compile failure
        becomes a row without a time): a TimeoutError was caught there and the module ran on."""
        for _ in range(20):
            try:
                time.sleep(0.5)
            except Exception:
                pass

    # Two stand-in modules: one that overruns, one that returns a real (conv) payload at once.
    fakes = {"bench_slow": types.SimpleNamespace(NAME="slow", run=swallows, report=lambda p: None),
             "bench_fast": types.SimpleNamespace(NAME="conv-quick", run=lambda dev, quick: conv_payload,
                                                 report=lambda p: None)}
    monkeypatch.setattr(runner, "BENCHES", runner.BENCHES + list(fakes))
    real_import = runner.importlib.import_module
    monkeypatch.setattr(runner.importlib, "import_module",
                        lambda name, *a: fakes.get(name.rsplit(".", 1)[-1]) or real_import(name, *a))
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    argv = ["--quick", "--device", "cpu", "--module-timeout", "0.5", "--only", "bench_slow", "bench_fast"]
    t0 = time.perf_counter()
    assert runner.main(argv) == 1  # a module failed (timed out)
    assert time.perf_counter() - t0 < 8
    run = json.loads((tmp_path / f"bench-quick-cpu-{common.git_commit() or 'unknown'}.json").read_text())
    status = {e["module"]: e["status"] for e in run["summary"]}
    assert status["bench_slow"] == "FAILED: timeout: bench_slow ran past its time limit (0.5 s)", status
    assert status["bench_fast"].startswith("ok"), status
    assert [p["name"] for p in run["payloads"]] == [conv_payload["name"]]

    capsys.readouterr()
    assert runner.main(["--quick", "--device", "cpu", "--deadline", "0.5", "--only", "bench_fast"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"bench_fast +not run: --deadline 0.5 s reached", out), out
    assert "no module finished (nothing written)" in out
    for opt, bad in (("--deadline", "0"), ("--deadline", "nan"), ("--module-timeout", "-3")):
        with pytest.raises(SystemExit) as info:
            runner.main(["--quick", opt, bad])
        assert info.value.code == 2
        assert f"argument {opt}: must be a number of seconds > 0, got {bad}" in capsys.readouterr().err

# Minor page faults per step of the bench's eager GMM loop (the autograd step on 10^4 x 50
# walkers), in a fresh process so that only this loop's own allocations count: 10 steps of
# warm-up, then 60 steps counted one by one: how many of them faulted more than 100 pages in (a
# [10^4, 50] float32 tensor is 489 pages), and the counts.
_EAGER_FAULTS_SCRIPT = r"""
import resource, torch
from bench import common
common.steady_allocator()
from bench.baselines import autograd_step
from bench.bench_chain import NOISE_STD, STEP_SIZE, carbone_gmm, gmm_energy
torch.manual_seed(0)
gmm = carbone_gmm(50)
energy = lambda v: gmm_energy(v, gmm.means, -gmm.log_weights)
x = torch.randn(10000, 50)
for _ in range(10):
    x = autograd_step(energy, x, STEP_SIZE, NOISE_STD)
faults = []
for _ in range(60):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = autograd_step(energy, x, STEP_SIZE, NOISE_STD)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(common.steady_allocator(), sum(f > 100 for f in faults), faults, sep="\n")
"""


def _eager_faults_per_step(malloc_env: str):
    """(the allocator label, the steps that faulted > 100 pages in, the 60 counts), measured in
    a fresh process."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, FASTLANGEVIN_BENCH_MALLOC=malloc_env)
    r = subprocess.run([sys.executable, "-c", _EAGER_FAULTS_SCRIPT], env=env, capture_output=True, text=True,
                       cwd=common.REPO_ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    label, faulting, faults = r.stdout.strip().splitlines()[-3:]
    return label, int(faulting), faults


def test_steady_allocator_stops_eager_page_faults():
    if not common.glibc_linux():
        pytest.skip("glibc's mallopt is Linux/glibc only")
    assert common.steady_allocator() == "glibc, mmap threshold 32 MiB, trim threshold 1024 MiB"
    assert common.env_info("cpu")["malloc"] == common.steady_allocator()
    # Steps of 60 that faulted more than 100 pages in, ten processes each on the dev box: 0 to 3
    # with the steady thresholds (the heap still grows now and then), 14 to 42 with glibc's
    # defaults (the tensors' pages mapped in anew).
    label, steady, counts = _eager_faults_per_step("")
    assert label == "glibc, mmap threshold 32 MiB, trim threshold 1024 MiB"
    assert steady <= 6, counts
    label, default, counts = _eager_faults_per_step("system")
    assert label == "system default (FASTLANGEVIN_BENCH_MALLOC=system)"
    assert default >= 10, counts


def test_steady_allocator_system_opt_out(monkeypatch):
    monkeypatch.setenv("FASTLANGEVIN_BENCH_MALLOC", "system")
    try:
        assert common.steady_allocator() == "system default (FASTLANGEVIN_BENCH_MALLOC=system)"
        assert common.env_info("cpu")["malloc"] == "system default (FASTLANGEVIN_BENCH_MALLOC=system)"
    finally:
        monkeypatch.delenv("FASTLANGEVIN_BENCH_MALLOC")
        common.steady_allocator()  # what the label says again (the thresholds themselves stay set)


if not HAVE_PYTEST_BENCHMARK:
    # The plugin provides the `benchmark` fixture; without it the tests below would error at
    # setup ("fixture 'benchmark' not found"). This stand-in skips them instead. It is only
    # defined when the plugin is missing, so it never shadows the real fixture.
    @pytest.fixture
    def benchmark():
        pytest.importorskip("pytest_benchmark")


@pytest.fixture(scope="module")
def walkers():
    """x, grad, out: float32 [4096, 784] on CPU, under the bench's steady allocator (as
    ``python -m bench`` runs: eager's fresh [4096, 784] tensors are not page-faulted in anew)."""
    common.steady_allocator()
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
