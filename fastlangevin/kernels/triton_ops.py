"""The Triton kernels as torch.library custom ops (namespace ``fastlangevin_triton``), so that
torch.compile can trace through them and torch.library.opcheck can check them, on GPU tensors
or, under TRITON_INTERPRET=1, on CPU tensors.

Importing this module imports triton; fastlangevin.ops imports it only when the triton backend
is asked for.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import langevin as _k
from . import resample as _r
from . import weights as _w


@torch.library.custom_op("fastlangevin_triton::philox", mutates_args=())
def philox(counter: torch.Tensor, seed: int) -> torch.Tensor:
    return _k.philox_triton(counter, seed)


@philox.register_fake
def _(counter, seed):
    return torch.empty_like(counter)


@torch.library.custom_op("fastlangevin_triton::randn_out", mutates_args=("out",))
def randn_out(out: torch.Tensor, seed: int, offset: int) -> None:
    _k.randn_out_triton(out, seed, offset)


@randn_out.register_fake
def _(out, seed, offset):
    return None


@torch.library.custom_op("fastlangevin_triton::langevin_step_out", mutates_args=("out",))
def langevin_step_out(
    x: torch.Tensor, grad: torch.Tensor, noise: Optional[torch.Tensor], step_t: Optional[torch.Tensor],
    std_t: Optional[torch.Tensor], step: float, noise_std: float, inv_ref_var: float, grad_clip: float,
    clamp_lo: float, clamp_hi: float, seed: int, offset: int, out: torch.Tensor,
) -> None:
    _k.langevin_step_out_triton(x, grad, noise, step_t, std_t, step, noise_std, inv_ref_var, grad_clip,
                                clamp_lo, clamp_hi, seed, offset, out)


@langevin_step_out.register_fake
def _(x, grad, noise, step_t, std_t, step, noise_std, inv_ref_var, grad_clip, clamp_lo, clamp_hi, seed, offset, out):
    return None


@torch.library.custom_op("fastlangevin_triton::resample_uniforms_out", mutates_args=("out",))
def resample_uniforms_out(out: torch.Tensor, seed: int, offset: int) -> None:
    _r.resample_uniforms_out_triton(out, seed, offset)


@resample_uniforms_out.register_fake
def _(out, seed, offset):
    return None


@torch.library.custom_op("fastlangevin_triton::resample", mutates_args=())
def resample(log_w: torch.Tensor, scheme: str, uniforms: Optional[torch.Tensor], seed: int, offset: int) -> torch.Tensor:
    return _r.resample_triton(log_w, scheme, uniforms, seed, offset)


@resample.register_fake
def _(log_w, scheme, uniforms, seed, offset):
    return torch.empty(log_w.shape, dtype=torch.int64, device=log_w.device)
@torch.library.custom_op("fastlangevin_triton::log_ratio_out", mutates_args=("out",))
def log_ratio_out(
    x: torch.Tensor, y: torch.Tensor, grad_x: torch.Tensor, grad_y: Optional[torch.Tensor], energy_x: torch.Tensor,
    energy_y: Optional[torch.Tensor], step_t: Optional[torch.Tensor], std_t: Optional[torch.Tensor], step: float,
    noise_std: float, inv_ref_var: float, out: torch.Tensor,
) -> None:
    _w.log_ratio_out_triton(x, y, grad_x, grad_y, energy_x, energy_y, step_t, std_t, step, noise_std, inv_ref_var, out)


@log_ratio_out.register_fake
def _(x, y, grad_x, grad_y, energy_x, energy_y, step_t, std_t, step, noise_std, inv_ref_var, out):
    return None
