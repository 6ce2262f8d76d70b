"""Triton kernel of the fused Gaussian-mixture chain (fastlangevin.chain.mixture_chain, backend
"triton"): ULA, Jarzynski weights and MALA, float32 and float64, in one launch. With the
constexpr ENERGY = 1 the same kernel runs the double-well chain (fastlangevin.chain.
double_well_chain): only the energy evaluation (_double_well_eval) differs.

One program owns BLOCK_N walkers for all n_steps. Their x [BLOCK_N, DP], grad [BLOCK_N, DP]
and energy [BLOCK_N] stay in registers (DP = d rounded up to a power of two; padded columns
hold zeros and meet zero means / inverse variances, so they add nothing). Step k:

    y = (x - a g) + s xi_k                         xi_k: langevin_step's normals at offset + k
    q_c(y) = log_coef_c - 1/2 sum_j (y_j - means_cj)^2 inv_var_cj
    U(y) = -logsumexp_c q_c(y),  grad U(y) = sum_c softmax(q(y))_c (y - means_c) inv_var_c
    then "ula" (MODE 0), "weights" (MODE 1) or "mh" (MODE 2): kernels/chain_common.py
    _chain_transition, which the MLP chain (kernels/mlp_chain.py) shares with this kernel
    (alpha(x, y) - alpha(y, x) in float64, csrc/log_ratio.h; MALA uniform n of stream
    (seed, MH_STREAM | ((offset + k) mod 2^62))).

The K components are visited once per step with an online logsumexp (running max, rescaled sum
and rescaled gradient accumulator), so no [BLOCK_N, K] tile is needed and K is a runtime loop
bound; the C++ kernels take the max first and differ from this in the last bits only. The
parameters are re-read every step (they are small and stay in L1/L2; Triton gives no explicit
shared-memory control). The log-weight increment is accumulated in float64, as every backend does.

Noise: element n * d + j of step k is Philox block (n * d + j) // 4, lane (n * d + j) % 4 of
stream (seed, offset + k). The rows of a program are padded to DP columns, so the tile is not
the contiguous element range that langevin_step's interleave produces: each element computes
its block's words and selects its lane (up to 4x the Philox work of the step kernel; the
component loop dominates for K >= 2). Scalars enter as float32 halves (kernels/langevin.py
f32_halves) so float64 walkers get their step and noise std to 48 bits.

Naming as in kernels/langevin.py (p_ pointers, b_ blocks, o_ offsets, m_ masks).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .chain_common import _chain_scalars, _chain_state, _chain_transition, _step_normals, _store_chain_state
from .langevin import _words, f32_halves

# Elements of the walker tile per program on a GPU: 2048 (16 per thread with 4 warps) keeps x,
# grad, y, grad_y, the gradient accumulator and the noise in registers. Untuned: no GPU has run
# this kernel yet. Under TRITON_INTERPRET=1 a program is one numpy evaluation of its tile, so
# the tile is large there (fewer programs, less interpreter overhead per step).
GPU_TILE = 2048
INTERPRETER_TILE = 65536
MAX_BLOCK_N = 128


@triton.jit
def _mixture_eval(b_v, p_means, p_iv, p_coef, o_d, m_d, d, n_comp, BLOCK_N: tl.constexpr, DP: tl.constexpr,
                  ACC: tl.constexpr):
    """(U [BLOCK_N], grad U [BLOCK_N, DP]) of the mixture at b_v [BLOCK_N, DP], online logsumexp."""
    b_max = tl.full([BLOCK_N], float("-inf"), dtype=ACC)
    b_sum = tl.zeros([BLOCK_N], dtype=ACC)
    b_gacc = tl.zeros([BLOCK_N, DP], dtype=ACC)
    for c in range(n_comp):
        b_m = tl.load(p_means + c * d + o_d, mask=m_d, other=0).to(ACC)
        b_iv = tl.load(p_iv + c * d + o_d, mask=m_d, other=0).to(ACC)
        coef = tl.load(p_coef + c).to(ACC)
        diff = b_v - b_m[None, :]
        div = diff * b_iv[None, :]
        q = coef - 0.5 * tl.sum(diff * div, axis=1)
        new_max = tl.maximum(b_max, q)
        # shift by 0 while the max is still -inf (the first component, or leading components of
        # zero weight, log_coef = -inf): exp(-inf - 0) = 0 where exp(-inf - -inf) would be NaN
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        scale = tl.exp(b_max - shift)
        w = tl.exp(q - shift)
        b_sum = b_sum * scale + w
        b_gacc = b_gacc * scale[:, None] + w[:, None] * div
        b_max = new_max
    return -(b_max + tl.log(b_sum)), b_gacc * (1.0 / b_sum)[:, None]


@triton.jit
def _double_well_eval(b_v, p_par, m_d, ACC: tl.constexpr):
    """(U [BLOCK_N], grad U [BLOCK_N, DP]) of the double well at b_v [BLOCK_N, DP]: p_par holds
    (barrier, center); w = v^2 - center^2 (0 in the padded columns), U = barrier sum_j w_j^2,
    grad U = ((4 barrier) v) w, DoubleWell.energy_and_grad's order."""
    h = tl.load(p_par).to(ACC)
    c = tl.load(p_par + 1).to(ACC)
    w = tl.where(m_d[None, :], b_v * b_v - c * c, 0.0).to(ACC)
    return h * tl.sum(w * w, axis=1), ((4.0 * h) * b_v) * w


@triton.jit(do_not_specialize=["n", "d", "n_comp", "n_steps", "seed_lo", "seed_hi", "off_lo", "off_hi"])
def _mixture_chain_kernel(
    p_x, p_u, p_g,              # [N, d], [N], [N, d] (x's dtype): state, updated in place
    p_means, p_iv, p_coef,      # [K, d], [K, d], [K] (x's dtype); ENERGY 1: p_means = (barrier, center)
    p_lw, p_steps, p_acc,       # [N] float64 (MODE 1), [n_steps, N] float64 (STEPS), [N] int64
    n, d, n_comp, n_steps,
    a_hi, a_lo, s_hi, s_lo,     # step size and noise std as float32 halves
    seed_lo, seed_hi, off_lo, off_hi,
    BLOCK_N: tl.constexpr, DP: tl.constexpr, MODE: tl.constexpr, FP64: tl.constexpr, STEPS: tl.constexpr,
    ENERGY: tl.constexpr = 0,   # 0: the Gaussian mixture, 1: the double well (fastlangevin.chain.double_well_chain)
):
    ACC: tl.constexpr = tl.float64 if FP64 else tl.float32
    a, s, c1, c2 = _chain_scalars(a_hi, a_lo, s_hi, s_lo, FP64)

    (o_n, o_d, m_n, m_d, m_x, o_x, b_x, b_g, b_u, b_acc, b_lw, c0, c1w, lane, off0, k0, k1) = _chain_state(
        p_x, p_g, p_u, p_acc, p_lw, n, d, seed_lo, seed_hi, off_lo, off_hi, BLOCK_N, DP, MODE)
    o_st = o_n  # int64 offsets of log_w_steps[k] (k * n overflows int32 for large runs)
    for k in range(n_steps):
        off = off0 + k  # wraps mod 2^64 like sample()'s offsets
        xi = _step_normals(c0, c1w, lane, off, k0, k1, FP64)
        b_y = tl.where(m_x, (b_x - a * b_g) + s * xi, 0.0).to(ACC)  # langevin_step's order
        if ENERGY == 0:
            u_y, g_y = _mixture_eval(b_y, p_means, p_iv, p_coef, o_d, m_d, d, n_comp, BLOCK_N, DP, ACC)
        else:
            u_y, g_y = _double_well_eval(b_y, p_means, m_d, ACC)
        b_x, b_g, b_u, b_lw, b_acc, o_st = _chain_transition(b_x, b_g, b_u, b_y, g_y, u_y, b_lw, b_acc, o_n, m_n,
                                                             p_steps, o_st, n, off, c1, c2, seed_lo, seed_hi, MODE,
                                                             STEPS)
    _store_chain_state(p_x, p_g, p_u, p_acc, p_lw, o_n, m_n, o_x, m_x, b_x, b_g, b_u, b_acc, b_lw, n_steps, MODE)


def block_rows(n: int, d: int, device: torch.device, tile=None) -> tuple[int, int]:
    """(BLOCK_N, DP): DP = d rounded up to a power of two; BLOCK_N = the power of two of rows
    that fills ``tile`` elements, at least 1, at most MAX_BLOCK_N on a GPU and at most the row
    count (rounded up)."""
    dp = triton.next_power_of_2(max(1, d))
    if device.type == "cpu":
        tile, cap = tile or INTERPRETER_TILE, INTERPRETER_TILE
    else:
        tile, cap = tile or GPU_TILE, MAX_BLOCK_N
    rows = max(1, min(tile // dp, cap, triton.next_power_of_2(max(1, n))))
    return 1 << (rows.bit_length() - 1), dp


def mixture_chain_triton(x, energy, grad, means, inv_var, log_coef, n_steps: int, step: float, noise_std: float,
                         seed: int, offset: int, mode: int, log_w, log_w_steps, accepted, tile=None, kind: int = 0) -> None:
    """Launcher; arguments as in the C++ schema fastlangevin::mixture_chain (x [N, d], energy [N],
    grad [N, d], updated in place, float32 or float64, contiguous; means, inv_var [K, d] and
    log_coef [K] in x's dtype; mode 0 ULA, 1 weights, 2 MALA; log_w float64 [N] for mode 1;
    log_w_steps float64 [n_steps, N] or None; accepted int64 [N], incremented). kind 1: the
    double well, means = params [2] (barrier, center) and inv_var, log_coef unused
    (double_well_chain_triton)."""
    n, d = x.shape
    if n == 0 or n_steps == 0:
        return
    block_n, dp = block_rows(n, d, x.device, tile)
    s_lo, s_hi = _words(seed)
    o_lo, o_hi = _words(offset)
    lw = log_w if log_w is not None else accepted  # never read unless MODE == 1 / STEPS
    steps = log_w_steps if log_w_steps is not None else accepted
    _mixture_chain_kernel[(triton.cdiv(n, block_n),)](
        x, energy, grad, means, inv_var, log_coef, lw, steps, accepted,
        n, d, means.shape[0], n_steps, *f32_halves(step, "mixture_chain: step_size", x.dtype == torch.float64),
        *f32_halves(noise_std, "mixture_chain: noise_std", x.dtype == torch.float64),
        s_lo, s_hi, o_lo, o_hi,
        BLOCK_N=block_n, DP=dp, MODE=int(mode), FP64=x.dtype == torch.float64,
        STEPS=log_w_steps is not None and int(mode) == 1, ENERGY=kind,
    )


def double_well_chain_triton(x, energy, grad, params, n_steps: int, step: float, noise_std: float, seed: int,
                             offset: int, mode: int, log_w, log_w_steps, accepted, tile=None) -> None:
    """Launcher of the double-well chain (fastlangevin.chain.double_well_chain, backend "triton"):
    the mixture chain's kernel with ENERGY = 1; params [2] = (barrier, center) in x's dtype, the
    other arguments as in mixture_chain_triton."""
    mixture_chain_triton(x, energy, grad, params, params, params, n_steps, step, noise_std, seed, offset, mode, log_w,
                         log_w_steps, accepted, tile=tile, kind=1)
