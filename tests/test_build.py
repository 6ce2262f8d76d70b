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
    for op in ("philox", "randn_out", "langevin_step_out"):
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
