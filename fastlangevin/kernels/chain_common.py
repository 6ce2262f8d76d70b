"""The pieces every fused Triton chain kernel shares (kernels/mixture_chain.py: the Gaussian
mixture and the double well; kernels/mlp_chain.py: the MLP): the run's scalars, step k's
normals, and the transition of modes "ula" / "weights" / "mh" from a proposal y and its energy
and gradient. Only the energy evaluation differs between the kernels.

    y = (x - a g) + s xi_k                       xi_k: langevin_step's normals at offset + k
    "ula" (MODE 0):     x <- y
    "weights" (MODE 1): log_w += alpha(x, y) - alpha(y, x); x <- y
    "mh" (MODE 2):      x <- y where log u < alpha(x, y) - alpha(y, x), u = resample uniform n
                        of stream (seed, MH_STREAM | ((offset + k) mod 2^62))

alpha(x, y) - alpha(y, x) = (U(x) - U(y)) + sum_j (y - x)(c1 P) + c2 (g_x - g_y) P,
P = g_x + g_y, c1 = a / s^2, c2 = a^2 / (2 s^2): csrc/log_ratio.h increment_term without a
reference term (the chains' gradients already hold it), accumulated in float64 as every backend
does.

Naming as in kernels/langevin.py (p_ pointers, b_ blocks, o_ offsets, m_ masks).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..reference import MH_STREAM
from .langevin import _box_muller, _philox4x32_10
from .resample import _resample_uniforms

MH_STREAM_C = tl.constexpr(MH_STREAM)


@triton.jit
def _chain_scalars(a_hi, a_lo, s_hi, s_lo, FP64: tl.constexpr):
    """(a, s, c1, c2): the step size and noise std in the walkers' precision (float64: hi + lo,
    48 bits, kernels/langevin.py f32_halves; float32: fp32(step), the C++ kernels'
    static_cast<float>(step)) and ratio_coef(step, noise_std, 0) of csrc/log_ratio.h in float64."""
    z64 = tl.zeros([1], dtype=tl.float64)  # (z64 + v) is float64; tl.sum of the 1-tile gives a scalar
    a64 = tl.sum((z64 + a_hi) + a_lo, axis=0)
    s64 = tl.sum((z64 + s_hi) + s_lo, axis=0)
    if FP64:
        a = a64
        s = s64
    else:
        a = a_hi
        s = s_hi
    c1 = a64 / (s64 * s64)
    c2 = 0.5 * a64 * c1
    return a, s, c1, c2


@triton.jit
def _chain_state(p_x, p_g, p_u, p_acc, p_lw, n, d, seed_lo, seed_hi, off_lo, off_hi,
                 BLOCK_N: tl.constexpr, DP: tl.constexpr, MODE: tl.constexpr):
    """A program's rows (BLOCK_N walkers from program_id * BLOCK_N, d padded to DP): their
    offsets and masks, their state (x, grad [BLOCK_N, DP]; energy, accepted, log_w [BLOCK_N]:
    log_w is read in MODE 1 only), and what _step_normals needs for every element: its Philox
    block's two counter words, its lane, the stream's first offset and its key words."""
    pid = tl.program_id(0)
    o_n = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    o_d = tl.arange(0, DP)
    m_n = o_n < n
    m_d = o_d < d
    m_x = m_n[:, None] & m_d[None, :]
    o_x = o_n[:, None] * d + o_d[None, :]
    b_x = tl.load(p_x + o_x, mask=m_x, other=0)
    b_g = tl.load(p_g + o_x, mask=m_x, other=0)
    b_u = tl.load(p_u + o_n, mask=m_n, other=0)
    b_acc = tl.load(p_acc + o_n, mask=m_n, other=0)
    if MODE == 1:
        b_lw = tl.load(p_lw + o_n, mask=m_n, other=0)
    else:
        b_lw = tl.zeros([BLOCK_N], dtype=tl.float64)
    blk = o_x // 4
    c0 = (blk & 0xFFFFFFFF).to(tl.uint32)
    c1w = (blk >> 32).to(tl.uint32)
    off0 = off_lo.to(tl.uint64) + (off_hi.to(tl.uint64) << 32)
    return (o_n, o_d, m_n, m_d, m_x, o_x, b_x, b_g, b_u, b_acc, b_lw, c0, c1w, o_x % 4, off0,
            seed_lo.to(tl.uint32), seed_hi.to(tl.uint32))


@triton.jit
def _store_chain_state(p_x, p_g, p_u, p_acc, p_lw, o_n, m_n, o_x, m_x, b_x, b_g, b_u, b_acc, b_lw, n_steps,
                       MODE: tl.constexpr):
    """Write the rows' final state back (log_w in MODE 1 only); ULA and weights count every
    step as accepted (MODE 2 counted its acceptances step by step)."""
    if MODE != 2:
        b_acc = b_acc + n_steps
    if MODE == 1:
        tl.store(p_lw + o_n, b_lw, mask=m_n)
    tl.store(p_x + o_x, b_x, mask=m_x)
    tl.store(p_g + o_x, b_g, mask=m_x)
    tl.store(p_u + o_n, b_u, mask=m_n)
    tl.store(p_acc + o_n, b_acc, mask=m_n)


@triton.jit
def _step_normals(c0, c1, lane, off, k0, k1, FP64: tl.constexpr):
    """langevin_step's normals of stream (seed = (k0, k1), offset off) for the elements whose
    Philox block is (c0, c1) and lane is ``lane`` (tiles of any shape): each element computes
    its block's four words and selects its lane."""
    c2 = tl.zeros_like(c0) + (off & 0xFFFFFFFF).to(tl.uint32)
    c3 = tl.zeros_like(c0) + (off >> 32).to(tl.uint32)
    w0, w1, w2, w3 = _philox4x32_10(c0, c1, c2, c3, k0, k1)
    z0, z1 = _box_muller(w0, w1, FP64)
    z2, z3 = _box_muller(w2, w3, FP64)
    return tl.where(lane == 0, z0, tl.where(lane == 1, z1, tl.where(lane == 2, z2, z3)))


@triton.jit
def _chain_transition(b_x, b_g, b_u, b_y, g_y, u_y, b_lw, b_acc, o_n, m_n, p_steps, o_st, n, off, c1, c2,
                      seed_lo, seed_hi, MODE: tl.constexpr, STEPS: tl.constexpr):
    """Step k's update of the rows' state (x [BLOCK_N, DP], grad, energy [BLOCK_N]) from the
    proposal (y, grad_y, energy_y) by MODE (see the module docstring): returns the new (x, grad,
    energy, log_w, accepted, o_st). MODE 1 with STEPS stores log_w at p_steps + o_st (the rows'
    int64 offsets into log_w_steps[k]) and advances o_st by n. ULA does not count accepted
    proposals here (the kernel adds n_steps at the end)."""
    if MODE == 0:
        b_x = b_y
        b_g = g_y
        b_u = u_y
    else:
        x64 = b_x.to(tl.float64)
        y64 = b_y.to(tl.float64)
        gx64 = b_g.to(tl.float64)
        gy64 = g_y.to(tl.float64)
        pp = gx64 + gy64
        inc = (b_u.to(tl.float64) - u_y.to(tl.float64)) + \
            tl.sum((y64 - x64) * (c1 * pp) + c2 * (gx64 - gy64) * pp, axis=1)
        if MODE == 1:
            b_lw = b_lw + inc
            if STEPS:
                tl.store(p_steps + o_st, b_lw, mask=m_n)
                o_st += n
            b_x = b_y
            b_g = g_y
            b_u = u_y
        else:
            mh = MH_STREAM_C | (off & (MH_STREAM_C - 1))
            u01 = _resample_uniforms(o_n, seed_lo, seed_hi, mh & 0xFFFFFFFF, mh >> 32)
            take = tl.log(u01) < inc  # NaN ratios reject, as in sample()'s MALA
            b_x = tl.where(take[:, None], b_y, b_x)
            b_g = tl.where(take[:, None], g_y, b_g)
            b_u = tl.where(take, u_y, b_u)
            b_acc = b_acc + take.to(tl.int64)
    return b_x, b_g, b_u, b_lw, b_acc, o_st
