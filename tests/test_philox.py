"""The noise stream: Philox4x32-10 known answers, bit-exact words on every backend, and
normals close to the float64 truth whatever the block size or thread count."""
import math

import pytest
import torch

import fastlangevin as fl
from fastlangevin import reference as ref

from conftest import CASES, require

# Random123's kat_vectors for philox4x32 with 10 rounds: counter (4 words), key (2 words), output.
KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("kat", KAT, ids=["zeros", "ones", "pi"])
def test_known_answers(device, backend, kat):
    require(device, backend)
    ctr, key, want = kat
    out = fl.philox(torch.tensor([ctr], device=device), key[0] | (key[1] << 32), backend=backend)
    assert out.dtype == torch.int64
    assert [int(v) for v in out[0].cpu()] == list(want)


@pytest.mark.parametrize("device,backend", CASES)
def test_words_bit_exact_on_random_counters(device, backend):
    require(device, backend)
    g = torch.Generator().manual_seed(0)
    ctr = torch.randint(0, 2**32, (5000, 4), generator=g, dtype=torch.int64)
    seed = 0xDEADBEEF_12345678
    want = ref.philox_ref(ctr, seed)
    got = fl.philox(ctr.to(device), seed, backend=backend).cpu()
    assert torch.equal(got, want)


def _f64_normals(n, seed, offset):
    return ref.randn_ref((n,), seed, offset, dtype=torch.float64)


# Float32 normals against the float64 truth from the same (exact) uniforms: the bound is
# 1e-6 * max(1, |z|). Measured on this machine over 2**20 normals: cpu 5.9e-7 abs, 2.2e-7
# relative; triton (interpreter) 3.0e-7.
def _assert_close_to_truth(z, truth):
    err = (z.double().cpu() - truth).abs()
    bound = 1e-6 * truth.abs().clamp(min=1.0)
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"normals off the float64 truth by {worst:.2f}x the 1e-6 bound"


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("seed,offset", [(0, 0), (12345, 7), (2**64 - 1, 2**63 + 5)])
def test_normals_close_to_float64(device, backend, seed, offset):
    require(device, backend)
    n = (1 << 20) + 3  # not a multiple of 4: the tail block is exercised
    z = fl.randn((n,), seed=seed, offset=offset, device=device, backend=backend)
    assert z.dtype == torch.float32 and z.shape == (n,)
    _assert_close_to_truth(z, _f64_normals(n, seed, offset))


@pytest.mark.parametrize("device,backend", CASES)
def test_float64_normals(device, backend):
    require(device, backend)
    z = fl.randn((10001,), seed=3, offset=4, dtype=torch.float64, device=device, backend=backend).cpu()
    assert z.dtype == torch.float64
    torch.testing.assert_close(z, _f64_normals(10001, 3, 4), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("device,backend", CASES)
def test_element_i_independent_of_shape(device, backend):
    """Element i gets xi_i whatever the tensor's size or shape."""
    require(device, backend)
    big = fl.randn((37, 11), seed=9, offset=2, device=device, backend=backend).reshape(-1)
    small = fl.randn((13,), seed=9, offset=2, device=device, backend=backend)
    assert torch.equal(big[:13], small)


def test_cpu_thread_count_does_not_change_stream():
    require("cpu", "cpu")
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = fl.randn((300_001,), seed=1, offset=1, backend="cpu")
        torch.set_num_threads(2)
        b = fl.randn((300_001,), seed=1, offset=1, backend="cpu")
    finally:
        torch.set_num_threads(old)
    assert torch.equal(a, b)


@pytest.mark.parametrize("device", [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.cuda)])
def test_triton_block_size_does_not_change_stream(device):
    require(device, "triton")
    from fastlangevin.kernels import langevin as k

    outs = []
    for block in (64, 1024, 8192):  # 4003 elements: 63 programs at block 64 (1 s interpreted)
        out = torch.empty(4_003, device=device)
        k.randn_out_triton(out, 5, 6, block=block)
        outs.append(out.cpu())
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])


@pytest.mark.parametrize("device,backend", CASES)
def test_dtypes_round_the_float32_normals(device, backend):
    require(device, backend)
    z32 = fl.randn((4099,), seed=1, offset=0, device=device, backend=backend)
    for dt in (torch.float16, torch.bfloat16):
        z = fl.randn((4099,), seed=1, offset=0, dtype=dt, device=device, backend=backend)
        assert z.dtype == dt
        if device == "cpu":  # the same float32 normals, rounded to nearest even (the Triton interpreter's
            # own float32 -> bfloat16 cast truncates: its launcher casts with torch instead)
            assert torch.equal(z, z32.to(dt)), dt
        else:
            assert torch.equal(z, z32.to(dt)) or (z.float() - z32).abs().max() <= 2 * torch.finfo(dt).eps * 6


def test_normal_statistics():
    """2**22 normals from the CPU kernel: mean, variance, tails and a KS test.

    Standard errors at n = 2**22: mean 4.9e-4, variance 6.9e-4; bounds are 5 standard errors.
    The KS statistic bound 1.63 / sqrt(n) = 8.0e-4 is its 1% critical value."""
    require("cpu", "cpu")
    n = 1 << 22
    z = fl.randn((n,), seed=2024, offset=0).double()
    assert abs(z.mean().item()) < 5 * 4.9e-4
    assert abs(z.var().item() - 1.0) < 5 * 6.9e-4
    # P(|z| > 3) = 2.70e-3 -> expected 11325, sd 106
    assert abs((z.abs() > 3).sum().item() - 11325) < 5 * 106
    zs, _ = torch.sort(z)
    cdf = 0.5 * (1 + torch.erf(zs / math.sqrt(2)))
    i = torch.arange(1, n + 1, dtype=torch.float64)
    d = torch.maximum(i / n - cdf, cdf - (i - 1) / n).max().item()
    assert d < 1.63 / math.sqrt(n)
    assert z.abs().max().item() <= math.sqrt(48 * math.log(2)) + 1e-6  # the documented 5.77 cap


def test_streams_at_different_offsets_and_seeds_are_uncorrelated():
    """n = 2**20 pairs: the correlation of independent streams has sd 1/sqrt(n) ~ 9.8e-4."""
    require("cpu", "cpu")
    n = 1 << 20
    a = fl.randn((n,), seed=1, offset=0).double()
    for b in (fl.randn((n,), seed=1, offset=1), fl.randn((n,), seed=2, offset=0),
              fl.randn((n,), seed=1, offset=1 << 32)):
        r = torch.corrcoef(torch.stack([a, b.double()]))[0, 1].item()
        assert abs(r) < 5 / math.sqrt(n)
    # a shifted copy of the same stream would show up as a perfect correlation at some lag;
    # seed + 1 vs offset + 1 must not be the same stream (the design's reason to keep the
    # offset in the counter, not in the seed)
    assert not torch.equal(fl.randn((64,), seed=1, offset=1), fl.randn((64,), seed=2, offset=0))


def test_high_counter_word_is_used():
    """Element indices >= 2**34 put a non-zero value in counter word 1."""
    ctr = ref.stream_counters(1, offset=3)
    ctr_hi = ctr.clone()
    ctr_hi[0, 1] = 1  # block 2**32, i.e. element 2**34
    assert not torch.equal(ref.philox_ref(ctr, 0), ref.philox_ref(ctr_hi, 0))


@pytest.mark.parametrize("bad,err", [(-1, ValueError), (2**64, ValueError), (1.5, TypeError), ("0", TypeError)])
def test_bad_seed(bad, err):
    with pytest.raises(err, match="randn: seed"):
        fl.randn((3,), seed=bad)
    with pytest.raises(err, match="philox: seed"):
        fl.philox(torch.zeros(1, 4, dtype=torch.int64), bad)


def test_bad_counter():
    with pytest.raises(TypeError, match="philox: counter must be int64"):
        fl.philox(torch.zeros(2, 4, dtype=torch.int32), 0)
    with pytest.raises(ValueError, match=r"philox: counter must have shape \[n, 4\], got \[2, 3\]"):
        fl.philox(torch.zeros(2, 3, dtype=torch.int64), 0)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_bad_shape(backend):
    """The same error on every backend (the reference one returned an empty [0, 3] for (-1, 3),
    the cpu one raised torch's own message, naming no op)."""
    require("cpu", backend)
    with pytest.raises(ValueError, match=r"randn: shape must have sizes >= 0, got \(-1, 3\)"):
        fl.randn((-1, 3), seed=0, backend=backend)
    with pytest.raises(TypeError, match=r"randn: shape must be an int or a sequence of ints, got \(2.5,\)"):
        fl.randn((2.5,), seed=0, backend=backend)
    assert fl.randn((0, 3), seed=0, backend=backend).shape == (0, 3)


def test_bad_dtype_and_backend():
    with pytest.raises(TypeError, match="randn: dtype"):
        fl.randn((3,), seed=0, dtype=torch.int32)
    with pytest.raises(ValueError, match="randn: backend must be"):
        fl.randn((3,), seed=0, backend="numpy")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="randn: backend 'cuda' is unavailable"):
            fl.randn((3,), seed=0, backend="cuda")


_ISA_SCRIPT = r"""
import sys, torch, fastlangevin as fl
from fastlangevin.energies import GaussianMixture, MLPEnergy
torch.manual_seed(0)
out = {}
for seed, offset in [(1, 1), ((1 << 40) + 3, (1 << 33) + 7), (5, (1 << 63) + 9)]:
    out[f"randn32-{seed}-{offset}"] = fl.randn((300_001,), seed=seed, offset=offset, backend="cpu")
    out[f"randn64-{seed}-{offset}"] = fl.randn((20_003,), seed=seed, offset=offset, dtype=torch.float64,
                                                backend="cpu")
x = torch.randn(300, 50)
m = torch.zeros(2, 50); m[0, 0], m[1, 0] = -3.0, 3.0
gmm = GaussianMixture(m, torch.tensor([0.3, 0.7]).log(), learnable=False)
out["mixture"] = fl.sample(gmm, x, 20, 0.05, seed=3).x
# three components (the run-time K loop, not the K = 2 one), float64, MALA, 37 walkers (a part block)
gmm = GaussianMixture(2 * torch.randn(3, 7, dtype=torch.float64), torch.randn(3, dtype=torch.float64),
                      0.5 + torch.rand(3, 7, dtype=torch.float64), learnable=False)
out["mixture3"] = fl.sample(gmm, x[:37, :7].double(), 10, 0.05, seed=7, mh=True).x
mlp = MLPEnergy(50, hidden=32, depth=2)
out["mlp"] = fl.sample(mlp, x, 10, 0.01, seed=4).x
# widths that leave the AVX-512 micro-kernel a one-vector tail block (padded d = 16 floats,
# hidden 24 = 16 + 8 doubles), 83 walkers (a last 12-row block with 11 rows), MALA, float64
mlp = MLPEnergy(5, hidden=24, depth=3).double()
out["mlp64"] = fl.sample(mlp, x[:83, :5].double(), 10, 0.05, seed=5, mh=True).x
mlp = MLPEnergy(2, hidden=7, depth=4, act="tanh")
out["mlp-tail"] = fl.sample(mlp, x[:83, :2], 10, 0.05, seed=6).x
# the double well at widths with a d-tail (15, 65) and without (64), energies and weights too
# (its clones' energies differed by an ulp at these widths until its sums were explicit vectors)
from fastlangevin.chain import double_well_chain
for dt, d in ((torch.float32, 15), (torch.float32, 64), (torch.float32, 65), (torch.float64, 63)):
    r = double_well_chain(torch.randn(13, d, dtype=dt), 1.0, 1.0, 3, 0.01, seed=1, backend="cpu", mode="weights")
    out[f"dw-{dt}-{d}"] = torch.cat([r.x.flatten().double(), r.energy.double(), r.log_w.double()])
g, y, gy = torch.randn(300, 50), torch.randn(300, 50), torch.randn(300, 50)
u, uy = torch.randn(300), torch.randn(300)
out["increment"] = fl.jarzynski_increment(x, g, u, y, gy, uy, 0.01, 0.2, backend="cpu")
torch.save(out, sys.argv[1])
"""


def _run_isa(isa, tmp_path):
    import os
    import subprocess
    import sys
    path = tmp_path / f"{isa}.pt"
    env = dict(os.environ, FASTLANGEVIN_CPU_ISA=isa, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", _ISA_SCRIPT, str(path)], env=env, capture_output=True, text=True)
    return r, path


def test_cpu_isa_paths_agree(tmp_path):
    """The CPU kernels' run-time ISA choice (csrc/cpu/isa_cpu.h; FASTLANGEVIN_CPU_ISA caps it):
    the AVX2 and AVX-512 clones agree bit for bit (same operations, same FMA contraction); the
    generic clone has no FMA, so it rounds differently: normals within 2.4e-7 (the float32
    Box-Muller's own error bound is 1e-6 |z|), chains and increments within float tolerance.
    Seeds and offsets above 2^32 exercise the high key and counter words that the AVX-512
    generator folds into its lane-invariant round 0. On a CPU without AVX-512 (or AVX2) the cap
    cannot raise the level, so the comparison degenerates to equal paths and still holds."""
    require("cpu", "cpu")
    res = {}
    for isa in ("avx512", "avx2", "generic"):
        r, path = _run_isa(isa, tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        res[isa] = torch.load(path)
    for k, v in res["avx512"].items():
        assert torch.equal(v, res["avx2"][k]), k
        if k.startswith("randn64"):
            torch.testing.assert_close(res["generic"][k], v, rtol=0, atol=1e-14, msg=k)
        elif k.startswith("randn32"):
            torch.testing.assert_close(res["generic"][k], v, rtol=0, atol=2.4e-7 * 4, msg=k)
        else:
            torch.testing.assert_close(res["generic"][k], v, rtol=1e-4, atol=1e-4, msg=k)
    # and the auto choice of this process is one of them, bit for bit
    z = fl.randn((300_001,), seed=1, offset=1, backend="cpu")
    assert torch.equal(z, res["avx512"]["randn32-1-1"])


def test_cpu_isa_bad_value(tmp_path):
    require("cpu", "cpu")
    import os
    import subprocess
    import sys
    env = dict(os.environ, FASTLANGEVIN_CPU_ISA="sse9")
    r = subprocess.run([sys.executable, "-c", "import fastlangevin as fl; fl.randn((4,), seed=1, backend='cpu')"],
                       env=env, capture_output=True, text=True)
    assert r.returncode != 0
    assert "FASTLANGEVIN_CPU_ISA must be generic, avx2 or avx512, got 'sse9'" in r.stderr
