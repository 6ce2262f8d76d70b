"""The build: what got compiled, and that the package works without the extension or triton."""
import os
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch

import fastlangevin as fl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_backends_report_true_or_a_reason():
    b = fl.backends()
    assert set(b) == {"reference", "cpu", "cuda", "triton"}
    assert b["reference"] is True
    for name, status in b.items():
        assert status is True or (isinstance(status, str) and len(status) > 10), (name, status)


@pytest.mark.skipif(os.environ.get("FASTLANGEVIN_EXPECT_CUDA_BUILD") != "1",
                    reason="set FASTLANGEVIN_EXPECT_CUDA_BUILD=1 where the build ran with FORCE_CUDA=1 (CI does)")
def test_cuda_kernels_compiled_and_linked():
    """CI builds with FORCE_CUDA=1 on a machine without a GPU: the CUDA kernels must be in the
    shared object and registered with the dispatcher, for every op."""
    assert fl._backend.extension_loaded()  # loads fastlangevin._C (lazy), so the ops exist when run alone
    for op in ("philox", "randn_out", "langevin_step_out", "mixture_chain", "double_well_chain"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastlangevin::{op}", "CUDA"), op
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastlangevin::{op}", "CPU"), op


def test_import_without_extension_and_triton():
    """With fastlangevin._C and triton unimportable, the package still imports, says why each
    backend is missing, and the reference backend does the work."""
    code = textwrap.dedent(
        """
        import sys
        import torch
        # a None entry in sys.modules makes `import name` raise ImportError
        sys.modules["fastlangevin._C"] = None
        sys.modules["triton"] = None
        import fastlangevin as fl
        b = fl.backends()
        assert b["reference"] is True, b
        assert "not built" in b["cpu"], b
        assert "triton is not installed" in b["triton"], b
        x = torch.zeros(4, 2); g = torch.ones(4, 2)
        y = fl.langevin_step(x, g, 0.1, 0.0)
        assert torch.allclose(y, torch.full((4, 2), -0.1)), y
        r = fl.sample(lambda x: 0.5 * (x * x).sum(1), x, 3, 0.1, seed=0)
        assert r.backend == "reference", r.backend
        try:
            fl.langevin_step(x, g, 0.1, backend="cpu")
        except ValueError as e:
            assert "backend 'cpu' is unavailable" in str(e), e
        else:
            raise AssertionError("expected ValueError")
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_pure_python_wheel(tmp_path):
    """FASTLANGEVIN_NO_EXT=1 builds a pure-Python wheel: the package without the _C object."""
    env = dict(os.environ, FASTLANGEVIN_NO_EXT="1")
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(tmp_path), ROOT],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    wheels = list(tmp_path.glob("fastlangevin-*.whl"))
    assert len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "fastlangevin/ops.py" in names and "fastlangevin/kernels/langevin.py" in names
    assert not [n for n in names if n.endswith(".so")], names
    assert "py3-none-any" in wheels[0].name


def test_triton_kernels_compile_for_a_gpu():
    """Every Triton kernel compiles (Triton front end, LLVM, ptxas: a cubin) for sm_90 on a
    machine without a GPU. The interpreter cases cannot see what only the compiler rejects: module
    globals annotated `X: tl.constexpr = v` (not `tl.constexpr(v)`) ran under TRITON_INTERPRET=1
    but made every Philox kernel fail to compile. In a subprocess: TRITON_INTERPRET=1 turns
    @triton.jit functions into interpreter objects at import."""
    pytest.importorskip("triton")
    code = textwrap.dedent(
        """
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from fastlangevin.kernels import langevin as L, mixture_chain as C, mlp_chain as M, resample as R
        from fastlangevin.kernels import weights as W

        F64 = {"p_lw_max", "p_cdf", "p_res_cdf", "p_lw", "p_steps", "p_step", "p_std"}
        I64 = {"p_last", "p_counts_cum", "p_res_last", "p_counter", "p_acc", "p_seed", "p_off"}
        FLOATS = {"step", "noise_std", "inv_ref", "clip", "lo", "hi", "step_l", "noise_std_l", "inv_ref_l", "clip_l",
                  "lo_l", "hi_l", "a_hi", "a_lo", "s_hi", "s_lo", "r_hi", "r_lo", "head_bias"}

        import sys

        SHARD, NSHARD = int(sys.argv[1]), int(sys.argv[2])
        CALLS = [0, 0]  # compile_ calls, and those that this shard compiled

        def compile_(fn, consts, ptr="*fp32", options=None, at_one=True, **over):
            CALLS[0] += 1
            if (CALLS[0] - 1) % NSHARD != SHARD:
                return None
            CALLS[1] += 1
            sig = {}
            for p in fn.params:
                n = p.name
                if n in consts:
                    sig[n] = "constexpr"
                elif n in over:
                    sig[n] = over[n]
                elif n.startswith("p_"):
                    sig[n] = "*fp64" if n in F64 else "*i64" if n in I64 else ptr
                elif n in FLOATS:
                    sig[n] = "fp32"
                else:
                    sig[n] = "i64" if ("seed" in n or "off" in n) else "i32"
            k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                               options=options or {})
            assert "cubin" in k.asm, fn
            # The JIT turns an int argument equal to 1 into a constant unless the kernel lists it
            # in do_not_specialize; a constant has no .to() (a single walker broke resampling).
            # Each variant once more, every such argument at 1, as the JIT would compile it (all
            # variants: only the stratified and systematic resampling variants failed).
            ones = {p.name: 1 for p in fn.params if sig[p.name] in ("i32", "i64") and not p.do_not_specialize}
            if ones and at_one:
                sig1 = {n: "constexpr" if n in ones else t for n, t in sig.items()}
                k1 = triton.compile(ASTSource(fn=fn, signature=sig1, constexprs={**consts, **ones}),
                                    target=GPUTarget("cuda", 90, 32), options=options or {})
                assert "cubin" in k1.asm, (fn, ones)
            return k

        compile_(L._philox_kernel, dict(BLOCK=256))
        for fp64 in (False, True):
            ptr = "*fp64" if fp64 else "*fp32"
            compile_(L._randn_kernel, dict(BLOCK=1024, FP64=fp64), ptr)
            compile_(L._langevin_step_kernel, dict(BLOCK=1024, FP64=fp64, RNG=True, HAS_NOISE=False, STEP_T=False,
                                                   STD_T=False, HAS_REF=True, HAS_CLIP=True, HAS_CLAMP=True), ptr)
            # what the cuda_graph=True loops launch (fastlangevin.graphs): the normals with the
            # stream position in device memory, then the step on them with per-walker step and
            # noise tensors
            compile_(L._randn_dev_kernel, dict(BLOCK=1024, FP64=fp64), ptr)
            compile_(L._langevin_step_kernel, dict(BLOCK=1024, FP64=fp64, RNG=False, HAS_NOISE=True, STEP_T=True,
                                                   STD_T=True, HAS_REF=False, HAS_CLIP=False, HAS_CLAMP=False), ptr)
            for mode in ((0, 1, 2) if not fp64 else (1, 2)):  # float64 ULA: a subset of the weights code
                for kind in (0, 1):  # the mixture and the double well (ENERGY)
                    compile_(C._mixture_chain_kernel, dict(BLOCK_N=32, DP=64, MODE=mode, FP64=fp64, STEPS=mode == 1,
                                                           ENERGY=kind), ptr)
        compile_(R._resample_uniforms_kernel, dict(BLOCK=256), p_out="*fp64")
        compile_(R._resample_uniforms_dev_kernel, dict(BLOCK=256), p_out="*fp64")
        for scheme in range(4):
            compile_(R._resample_kernel, dict(BLOCK=256, SCHEME=scheme, HAS_U=False), p_u="*fp64", p_out="*i64")
        compile_(W._log_ratio_kernel, dict(BLOCK_R=4, BLOCK_C=512, TWO_SIDED=True, HAS_REF=True, STEP_T=False,
                                           STD_T=False), p_out="*fp64")
        # the MLP chain: every mode in float32 and float64 (a float64 tl.dot lowers to the f64 MMA,
        # mma.sync m8n8k4, on sm_80+), then the other depths with every activation
        # the MLP chain with its launch options (one pipeline stage) and the launcher's choice of
        # HOIST (M.hoist_weights), which keep every size it takes on a GPU (d, hidden <= 128,
        # depth 4) inside the H100 / H200's 232,448 B of shared memory a block: the default 3
        # stages needed up to 2.1 MB, and weights hoisted out of the step loop 286,720 B for the
        # default MLPEnergy (d = 2, hidden 128) in ULA / MALA: OutOfResources at launch
        mlp = lambda ptr, dp=16, hp=32, depth=3, at_one=True, **c: compile_(
            M._mlp_chain_kernel, dict(BLOCK_N=16, DP=dp, HP=hp, DEPTH=depth, **c,
                                      HOIST=M.hoist_weights(dp, hp, depth, 8 if ptr == "*fp64" else 4)),
            ptr, options=M.LAUNCH_OPTIONS, at_one=at_one)
        for fp64 in (False, True):
            for mode in (0, 1, 2):
                mlp("*fp64" if fp64 else "*fp32", ACT=mode, MODE=mode, FP64=fp64, STEPS=mode == 1)
        for depth, act in ((1, 1), (2, 2), (4, 0)):
            mlp("*fp32", depth=depth, ACT=act, MODE=1, FP64=False, STEPS=True)
        from fastlangevin.chain import MLP_MAX_DEPTH, MLP_MAX_HIDDEN, TRITON_MLP_MAX_D
        # the default MLPEnergy's size, the largest hoisted one and the largest, in both dtypes.
        # One mode each (Jarzynski weights with the per-step log-weights, the most state): a
        # size's shared memory does not depend on the mode (measured on triton 3.6, every mode:
        # 74,240 B in float32 for (16, 128, 3) and (128, 128, 4); float64 132,096 B, 148,480 B,
        # and 40,960 B for (64, 64, 3)), and every mode compiled at the small size above. All
        # four modes at these sizes made this test about 12 minutes long on the 2-core (Zen 3) box
        # with a cold Triton cache, past its 10-minute timeout (float32 (128, 128, 4) alone 93 to
        # 113 s a mode); now 161 s, in two processes.
        sizes = ((16, MLP_MAX_HIDDEN, 3), (64, 64, 3), (TRITON_MLP_MAX_D, MLP_MAX_HIDDEN, MLP_MAX_DEPTH))
        assert M.hoist_weights(64, 64, 3, 4) and not M.hoist_weights(16, MLP_MAX_HIDDEN, 3, 4)
        for dp, hp, depth in sizes:
            for fp64 in (False, True):
                k = mlp("*fp64" if fp64 else "*fp32", dp=dp, hp=hp, depth=depth, at_one=False,
                        ACT=0, MODE=1, FP64=fp64, STEPS=True)
                assert k is None or k.metadata.shared <= 232448, (dp, hp, depth, fp64, k.metadata.shared)
        print("ok", CALLS[0], CALLS[1])
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # Two processes, every other compile each (Triton compiles on one core; the box has two).
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i), "2"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=600) + (p.returncode,))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    done = []
    for stdout, stderr, rc in outs:
        last = stdout.strip().splitlines()[-1].split() if stdout.strip() else []
        assert rc == 0 and last[:1] == ["ok"], stderr[-3000:]
        done.append((int(last[1]), int(last[2])))
    assert done[0][0] == done[1][0] and sum(d[1] for d in done) == done[0][0], done  # every kernel compiled once
