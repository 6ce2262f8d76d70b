"""CUDA-graph capture of whole sampling loops: ``sample(..., cuda_graph=True)`` and
``Walkers(..., cuda_graph=True)``.

What is captured
----------------
The whole n-step loop of one call: the energy's forward and backward (torch.autograd.grad is
capturable for graph-safe ops), the fused step, the log-weight increments, ESS, the resampling
(decided on the device: ancestors are the identity where ESS is above the threshold), MALA's
accept/reject and the non-finite watch. The loop runs once eagerly on a side stream first (the
warm-up PyTorch's CUDA-graph docs require: lazy initialisation, cuDNN autotuning, Triton
compilation), then is captured into one torch.cuda.CUDAGraph with static input buffers; each
later call copies its inputs into those buffers, replays, and clones the outputs (so results
handed to the caller are never overwritten by the next replay).

The noise under replay
----------------------
A captured kernel replays with the arguments it was captured with. Every op of
fastlangevin.ops takes ``offset`` as a kernel argument, so a captured loop would replay the
capture's noise on every call. Here the stream position lives in device memory instead: a
DeviceStream holds two 0-d int64 tensors, ``seed`` and ``base`` (the Philox offset of the
call's first step, 64-bit words in two's complement), which the host writes with ``fill_``
before each replay (an ordinary kernel on the current stream: no synchronisation). Step j of the
captured loop draws from

    noise:                  base + j                          (sample: offset + j; Walkers: steps + j)
    MALA's uniforms:        MH_STREAM | ((base + j) & (MH_STREAM - 1))
    Walkers' resampling:    RESAMPLE_STREAM | (base + j)

computed by int64 tensor ops inside the graph (j is a constant baked at capture; int64
wrap-around is the eager path's mod 2^64), i.e. exactly the offsets the eager loop passes as
ints. The normals (and resampling uniforms) are made by a kernel that reads seed and offset
from those tensors (kernels/langevin.py ``_randn_dev_kernel`` on CUDA when triton is installed,
else the pure-torch reference with tensor counter words) and handed to the step through its
``noise`` argument (the resampling through ``uniforms``). One graph therefore serves every seed
and offset, and replay draws the same Philox words as eager mode, bit for bit.

Normals equal the eager path's bit for bit when the step's backend is ``triton`` (the same
``_block_normals`` code) or ``reference`` (the same reference code); with the ``cuda`` backend
they are the Triton kernel's float32 normals, whose maps are the polynomial ones of
csrc/normal.h, equal to the CUDA kernel's up to FMA contraction (float32 rounding). float16 and
bfloat16 state gets its noise rounded to the state dtype (the ``noise`` seam has x's dtype),
where eager mode adds float32 normals.

This design needs no C++ change; its cost is one extra noise kernel per step (and a [N, ...]
noise tensor write and read). A CUDA step kernel that reads the offset from memory would save
that, and make the ``cuda`` backend's replay bit-identical too.

What the graph bakes in
-----------------------
The energy must be capturable: no host synchronisation (.item(), bool() of a tensor, printing
values), no host-to-device copies of new data, no data-dependent shapes (nonzero, boolean
masking), as for any CUDA graph; PyTorch raises during the capture otherwise, and nothing is
cached. The graph bakes in addresses, shapes, dtypes and Python scalars: the energy's
parameters and buffers are read where they were at capture, so update them in place (optimizer
steps do); a graph is
re-captured when an nn.Module energy's parameter or buffer addresses or training flag change,
but a plain function's closed-over tensors cannot be watched: replace them in place, or call
``clear_cache()``. The warm-up runs the energy once more per step of the loop at capture time
(BatchNorm running statistics, for example, see those calls).
"""
from __future__ import annotations

import collections
from typing import Callable, Optional

import torch

from . import _backend, reference
from .ops import _as_i64

# The streams of fastlangevin.reference, RESAMPLE_STREAM as an int64 word (2^63 is the sign bit).
MH_STREAM = reference.MH_STREAM
RESAMPLE_STREAM_I64 = _as_i64(reference.RESAMPLE_STREAM)

# Test seam: True runs every captured body eagerly at each "replay" instead of capturing it,
# and lets cuda_graph=True through on any device. The tests set it to run the exact replay path
# (input copies, device-resident stream, output clones, caching) on CPU; never set it otherwise.
EAGER_REPLAY = False


def check_cuda_graph(op: str, cuda_graph, x: torch.Tensor, name: str = "x0") -> bool:
    """cuda_graph is a bool, and True only for CUDA tensors: on CPU it is an error rather than a
    silent fallback, so a benchmark that asks for graphs never times the eager loop by mistake."""
    if not isinstance(cuda_graph, bool):
        raise TypeError(f"{op}: cuda_graph must be a bool, got {type(cuda_graph).__name__}")
    if cuda_graph and x.device.type != "cuda" and not EAGER_REPLAY:
        raise ValueError(f"{op}: cuda_graph=True needs CUDA tensors; {name} is on {x.device} "
                         "(CUDA graphs exist only on CUDA devices: pass cuda_graph=False on CPU)")
    return cuda_graph


# --------------------------------------------------------------------------------------------
# the Philox stream at a device-resident position
# --------------------------------------------------------------------------------------------

def noise_backend_for(backend: str) -> str:
    """The noise maker for a loop whose steps run on `backend`: the step backend's own normals
    where that is possible (triton, reference: replay then equals eager bit for bit), else
    "auto"."""
    return backend if backend in ("triton", "reference") else "auto"


def _use_triton(device: torch.device) -> bool:
    return device.type == "cuda" and _backend._status("triton", _backend.triton_interpret()) is True


def randn_at(shape, seed_t: torch.Tensor, offset_t: torch.Tensor, dtype: torch.dtype,
             noise_backend: str = "auto") -> torch.Tensor:
    """fastlangevin.randn(shape, seed=seed, offset=offset, dtype=dtype) with seed and offset
    read from 0-d int64 tensors (two's complement words) on the result's device: [*shape].

    noise_backend: "triton" (the kernel ``_randn_dev_kernel``: GPU, or CPU under
    TRITON_INTERPRET=1), "reference" (pure torch) or "auto" (triton on CUDA when available)."""
    device = offset_t.device
    if noise_backend == "auto":
        noise_backend = "triton" if _use_triton(device) else "reference"
    if noise_backend == "reference":
        return reference.randn_ref(shape, seed_t, offset_t, dtype=torch.float64, device=device).to(dtype)
    from .kernels.langevin import randn_dev_out_triton

    out = torch.empty(shape, dtype=dtype, device=device)
    randn_dev_out_triton(out, seed_t, offset_t)
    return out


def uniforms_at(n: int, seed_t: torch.Tensor, offset_t: torch.Tensor, noise_backend: str = "auto") -> torch.Tensor:
    """fastlangevin.resampling.uniforms(n, seed=seed, offset=offset) with seed and offset read
    from 0-d int64 tensors on the result's device: float64 [n], bit-identical on every backend."""
    device = offset_t.device
    if noise_backend == "auto":
        noise_backend = "triton" if _use_triton(device) else "reference"
    if noise_backend == "reference":
        return reference.uniforms_ref(n, seed_t, offset_t, device=device)
    from .kernels.resample import resample_uniforms_dev_out_triton

    out = torch.empty(n, dtype=torch.float64, device=device)
    resample_uniforms_dev_out_triton(out, seed_t, offset_t)
    return out


class DeviceStream:
    """The Philox stream position of a captured loop, in device memory (see the module
    docstring). ``set(seed, offset)`` before each replay; step j of the loop draws at base + j.

    noise_backend: how the normals are made ("auto": the Triton kernel on CUDA when triton is
    available, else the pure-torch reference; "triton" or "reference" to force one)."""

    def __init__(self, device: torch.device, noise_backend: str = "auto"):
        self.seed = torch.zeros((), dtype=torch.int64, device=device)
        self.base = torch.zeros((), dtype=torch.int64, device=device)
        self.noise_backend = noise_backend

    def set(self, seed: int, offset: int) -> "DeviceStream":
        self.seed.fill_(_as_i64(seed))
        self.base.fill_(_as_i64(offset & ((1 << 64) - 1)))
        return self

    def offset(self, j: int) -> torch.Tensor:
        """0-d int64: base + j (mod 2^64), the offset of step j."""
        return self.base + j

    def normals(self, x: torch.Tensor, j: int) -> torch.Tensor:
        """The normals step j adds to x: randn(x.shape, seed, offset=base + j), x's dtype."""
        return randn_at(x.shape, self.seed, self.offset(j), x.dtype, self.noise_backend)

    def mh_uniforms(self, n: int, j: int) -> torch.Tensor:
        """MALA's accept/reject uniforms of step j: stream MH_STREAM | ((base + j) mod 2^62)."""
        off = torch.bitwise_or(torch.bitwise_and(self.offset(j), MH_STREAM - 1), MH_STREAM)
        return uniforms_at(n, self.seed, off, self.noise_backend)

    def resample_uniforms(self, n: int, j: int) -> torch.Tensor:
        """The uniforms of the resampling after step j: stream RESAMPLE_STREAM | (base + j)."""
        off = torch.bitwise_or(self.offset(j), RESAMPLE_STREAM_I64)
        return uniforms_at(n, self.seed, off, self.noise_backend)


# --------------------------------------------------------------------------------------------
# capture and replay
# --------------------------------------------------------------------------------------------

class CapturedLoop:
    """``body(inputs) -> outputs`` (dicts of tensors; outputs may also hold Python values)
    captured in one CUDA graph. ``body`` must not write its inputs in place: the warm-up runs
    it on the live buffers."""

    def __init__(self, body: Callable[[dict], dict], inputs: dict, stream: DeviceStream):
        self.inputs, self.stream = inputs, stream
        self.body = body if EAGER_REPLAY else None
        if self.body is not None:
            return
        device = stream.base.device
        with torch.cuda.device(device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                body(inputs)  # warm-up: one eager run of the whole loop
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.outputs = body(inputs)

    def run(self, values: dict, seed: int, offset: int) -> dict:
        """Copy ``values`` into the static inputs, set the stream, replay; the outputs cloned."""
        for k, v in values.items():
            self.inputs[k].copy_(v)
        self.stream.set(seed, offset)
        if self.body is not None:  # EAGER_REPLAY
            self.outputs = self.body(self.inputs)
        else:
            self.graph.replay()
        return {k: v.clone() if torch.is_tensor(v) else v for k, v in self.outputs.items()}


def energy_key(energy) -> tuple:
    """What a captured graph assumes about the energy beyond its identity: for an nn.Module the
    training flags of all its modules (a submodule's own .eval(), e.g. a BatchNorm's, changes
    the captured computation as much as the top one's) and the addresses of its parameters and
    buffers."""
    if isinstance(energy, torch.nn.Module):
        return (tuple(m.training for m in energy.modules()), tuple(t.data_ptr() for t in energy.parameters()),
                tuple(t.data_ptr() for t in energy.buffers()))
    return ()


class GraphCache:
    """A few captured loops by key (least recently used evicted: each holds its own memory)."""

    def __init__(self, size: int = 4):
        self.size = size
        self._d: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()

    def get(self, energy, key: tuple) -> Optional[CapturedLoop]:
        hit = self._d.get(key)
        if hit is None or hit[0] is not energy:  # id() reuse after the energy was freed
            return None
        self._d.move_to_end(key)
        return hit[1]

    def put(self, energy, key: tuple, loop: CapturedLoop) -> None:
        self._d[key] = (energy, loop)
        self._d.move_to_end(key)
        while len(self._d) > self.size:
            self._d.popitem(last=False)

    def clear(self) -> None:
        self._d.clear()


SAMPLE_GRAPHS = GraphCache()


def clear_cache() -> None:
    """Drop sample()'s captured graphs (and the energies they hold on to). Walkers keep theirs
    on the object."""
    SAMPLE_GRAPHS.clear()
