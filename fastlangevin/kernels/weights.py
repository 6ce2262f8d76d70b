"""Triton kernel of the transition log-ratio (the arithmetic of csrc/log_ratio.h in tl.* ops).

Each program owns BLOCK_R walker rows and walks along them in BLOCK_C-column chunks with a
float64 accumulator tile, then sums the tile across columns: one row per program on a GPU for
rows of 1024 elements or more, several short rows per program otherwise (a [10000, 50] batch
would leave most lanes of a one-row program idle). Every input element is loaded once.

Triton passes Python floats to a kernel as float32, and the step, std and 1 / ref_var must enter
the float64 arithmetic exactly (a float32 step changes a / s^2 in the 8th digit). A host-side
tensor of the scalars would cost a host-to-device copy per call, so each scalar goes as two
float32 halves, hi = fp32(v), lo = fp32(v - hi), and the kernel adds them in float64: 48
significant bits, a relative error below 4e-15.
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from .langevin import f32_halves

# Elements per chunk per program. GPU: 2048 (16 per thread with 4 warps, a float64 accumulator
# each). Under TRITON_INTERPRET=1 a program is one numpy evaluation of its whole tile, so the
# tile is made large: the fewer programs, the faster (launch cost there is per program).
GPU_TILE = 2048
INTERPRETER_TILE = 65536
MAX_BLOCK_C = 1024


@triton.jit
def _log_ratio_kernel(
    p_x, p_y, p_gx, p_gy,  # [N, row_len] (p_gy unread unless TWO_SIDED)
    p_ex, p_ey,  # [N] energies, any float dtype (p_ey unread unless TWO_SIDED)
    p_step, p_std,  # [N] float64 (unread unless STEP_T / STD_T)
    p_out,  # [N] float64
    n_rows, row_len,
    a_hi, a_lo, s_hi, s_lo, r_hi, r_lo,  # step, noise std, 1 / ref_var as float32 halves
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, TWO_SIDED: tl.constexpr, HAS_REF: tl.constexpr,
    STEP_T: tl.constexpr, STD_T: tl.constexpr,
):
    """out = U(x) + sum alpha_term, or U_x(x) - U_y(y) + sum increment_term (csrc/log_ratio.h)."""
    pid = tl.program_id(0)
    o_r = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    m_r = o_r < n_rows
    zero = tl.zeros([BLOCK_R], dtype=tl.float64)
    if STEP_T:
        b_a = tl.load(p_step + o_r, mask=m_r, other=1.0).to(tl.float64)
    else:
        b_a = (zero + a_hi) + a_lo  # float64 from here on: hi + lo is exact
    if STD_T:
        b_s = tl.load(p_std + o_r, mask=m_r, other=1.0).to(tl.float64)
    else:
        b_s = (zero + s_hi) + s_lo
    inv_ref = ((zero + r_hi) + r_lo)[:, None]
    h = 0.5 * inv_ref
    c1 = (b_a / (b_s * b_s))[:, None]
    c2 = 0.5 * b_a[:, None] * c1
    acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float64)
    o_row = o_r[:, None] * row_len
    for c0 in range(0, row_len, BLOCK_C):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m = m_r[:, None] & (o_c < row_len)[None, :]
        o = o_row + o_c[None, :]
        b_x = tl.load(p_x + o, mask=m, other=0).to(tl.float64)
        b_y = tl.load(p_y + o, mask=m, other=0).to(tl.float64)
        b_gx = tl.load(p_gx + o, mask=m, other=0).to(tl.float64)
        if HAS_REF:
            b_gx = b_gx + b_x * inv_ref
        if TWO_SIDED:
            b_gy = tl.load(p_gy + o, mask=m, other=0).to(tl.float64)
            if HAS_REF:
                b_gy = b_gy + b_y * inv_ref
            b_p = b_gx + b_gy
            t = c1 * b_p
            if HAS_REF:
                t = t - h * (b_x + b_y)
            acc += (b_y - b_x) * t + c2 * (b_gx - b_gy) * b_p
        else:
            t = b_gx * (c1 * (b_y - b_x) + c2 * b_gx)
            if HAS_REF:
                t = t + h * b_x * b_x
            acc += t
    b_u = tl.load(p_ex + o_r, mask=m_r, other=0).to(tl.float64)
    if TWO_SIDED:
        b_u = b_u - tl.load(p_ey + o_r, mask=m_r, other=0).to(tl.float64)
    tl.store(p_out + o_r, b_u + tl.sum(acc, axis=1), mask=m_r)


def tiles_for(n_rows: int, row_len: int, device: torch.device, tile=None) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_C): columns = the row length rounded up to a power of two, at most
    MAX_BLOCK_C and at most ``tile``; rows = as many as fill ``tile`` elements, at most the row count
    (rounded up)."""
    tile = tile or (INTERPRETER_TILE if device.type == "cpu" else GPU_TILE)
    block_c = min(triton.next_power_of_2(max(1, row_len)), MAX_BLOCK_C, tile)
    block_r = max(1, min(tile // block_c, triton.next_power_of_2(max(1, n_rows))))
    return block_r, block_c


def log_ratio_out_triton(x, y, grad_x, grad_y, energy_x, energy_y, step_t, std_t, step, noise_std, inv_ref_var, out,
                         tile=None) -> None:
    """Launcher; arguments as in the C++ schema fastlangevin::log_ratio_out."""
    n_rows = x.shape[0]
    if n_rows == 0:
        return
    row_len = x.numel() // n_rows
    block_r, block_c = tiles_for(n_rows, row_len, x.device, tile)
    two = grad_y is not None
    fp64 = x.dtype == torch.float64
    _log_ratio_kernel[(triton.cdiv(n_rows, block_r),)](
        x, y, grad_x, grad_y if two else grad_x, energy_x, energy_y if two else energy_x,
        step_t if step_t is not None else out, std_t if std_t is not None else out, out,
        n_rows, row_len,
        *f32_halves(step, "log_ratio: step_size", fp64), *f32_halves(noise_std, "log_ratio: noise_std", fp64),
        *f32_halves(inv_ref_var, "log_ratio: 1 / ref_var", fp64),
        BLOCK_R=block_r, BLOCK_C=block_c, TWO_SIDED=two, HAS_REF=inv_ref_var != 0.0,
        STEP_T=step_t is not None, STD_T=std_t is not None,
    )
