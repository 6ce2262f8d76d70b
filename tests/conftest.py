"""Test configuration.

TRITON_INTERPRET=1 must be set before triton is imported for Triton kernels to run on CPU
tensors; this file is imported before any test module, so it is the place. With a GPU present
the Triton backend runs compiled on CUDA tensors instead (its tests carry the `cuda` marker).
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fastlangevin  # noqa: E402

HAS_CUDA = torch.cuda.is_available()

# (device, backend) pairs every op-level test runs on.
CASES = [
    pytest.param("cpu", "reference", id="cpu-reference"),
    pytest.param("cpu", "cpu", id="cpu-cpu"),
    pytest.param("cpu", "triton", id="cpu-triton"),
    pytest.param("cuda", "cuda", id="cuda-cuda", marks=pytest.mark.cuda),
    pytest.param("cuda", "triton", id="cuda-triton", marks=pytest.mark.cuda),
]


def require(device: str, backend: str) -> None:
    """Skip (GPU cases without a GPU, Triton without triton installed) or fail (a backend that
    this build promises but does not deliver)."""
    if device == "cuda" and not HAS_CUDA:
        pytest.skip("no CUDA GPU")
    if device == "cpu" and backend == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton runs compiled on the GPU here; its interpreter cases run where no GPU is visible")
    status = fastlangevin.backends()[backend]
    if status is True:
        return
    if backend == "triton" and "not installed" in status:
        pytest.skip(status)
    if backend in ("cpu", "cuda") and os.environ.get("FASTLANGEVIN_NO_EXT") == "1":
        pytest.skip(status)
    pytest.fail(f"backend {backend} unavailable: {status}")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def state_tensors(sd):
    """Every tensor of a (nested) state dict, in a fixed order (dict keys sorted), for comparing
    two checkpoints bit for bit."""
    if torch.is_tensor(sd):
        yield sd
    elif isinstance(sd, dict):
        for k in sorted(sd, key=str):
            yield from state_tensors(sd[k])
    elif isinstance(sd, (list, tuple)):
        for v in sd:
            yield from state_tensors(v)
