"""Triton kernel of the fused MLP chain (fastlangevin.chain.mlp_chain, backend "triton"):
ULA, Jarzynski weights and MALA, float32 and float64, in one launch.

One program owns BLOCK_N walkers for all n_steps: their x [BLOCK_N, DP], grad and energy stay
in registers, and each step is the forward pass and the backward pass to the input (_mlp_eval)
as tl.dot products with the packed, zero-padded weights (read from global memory / L2 every
step; Triton gives no explicit shared-memory control, the compiler stages dot operands itself).
The rest of a step is the mixture chain's (kernels/chain_common.py): the proposal
y = (x - a g) + s xi_k with langevin_step's normals at offset + k (Philox counter
(n * d + j) // 4, lane (n * d + j) % 4; the four normals of a block are all computed and the
lane selected, 4x the Philox work of the step kernel, negligible next to the matmuls), then
mode "ula" (x <- y), "weights" (log_w += alpha(x, y) - alpha(y, x), accumulated in float64,
log_w after each step stored to log_w_steps when asked) or "mh" (x <- y where log u < that
ratio, u = resample uniform n of stream (seed, MH_STREAM | ((offset + k) mod 2^62))), exactly
as the CPU kernel (csrc/cpu/mlp_chain_cpu.cpp) and reference.mlp_chain_ref.

tl.dot runs with input_precision="ieee": the default TF32 on NVIDIA GPUs would cost ~1e-3
relative error in the gradient. float64 walkers run float64 dots (Triton lowers them to the
f64 MMA, mma.sync m8n8k4, on sm_80+, and to numpy under the interpreter); their step size and
noise std enter as float32 halves (kernels/langevin.py f32_halves), the head bias and
inv_ref_var in the head buffer in x's dtype. Tested under TRITON_INTERPRET=1 against the
reference and the CPU kernel, compiled for sm_90 by tests/test_build.py; not yet run or timed
on a GPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .chain_common import _chain_scalars, _chain_state, _chain_transition, _step_normals, _store_chain_state
from .langevin import _words, f32_halves

ACTS = ("silu", "softplus", "tanh")

# num_stages=1: no software pipelining of the n_steps loop. Each step depends on the one before,
# so there is nothing to overlap, and the default (3 on sm_90) multi-buffers every weight tile:
# compiled for sm_90 (triton 3.8, BLOCK_N 16, weights mode) the dynamic shared memory at the
# default was 567 KB for float32 [DP 16, HP 128, depth 3] and 2.1 MB for float64 [128, 128, 4],
# far over the H100 / H200's 227 KB (OutOfResources at launch: the default MLPEnergy did not
# run); with 1 stage, 74 KB and 148 KB (weights mode with the log-weight store, the variant that
# keeps its weight loads in the loop; for the others see HOIST_MAX_BYTES). tests/test_build.py
# checks every mode at the largest admitted sizes.
LAUNCH_OPTIONS = dict(num_warps=4, num_stages=1)

# Whether the weights may stay in shared memory for the whole chain (HOIST). Triton hoists the
# weight loads out of the n_steps loop wherever it may (every mode but weights-with-log_w_steps,
# whose stores might alias the weights), which puts every layer's forward and backward tile in
# shared memory at once: compiled for sm_90 (triton 3.8, one stage) the default MLPEnergy
# (d = 2, hidden 128, depth 3, float32) then needed 286,720 B, over the H100 / H200's 232,448 B
# a block, and [128, 128, 4] float64 1.06 MB: OutOfResources at launch. Above HOIST_MAX_BYTES
# of packed weights (fwd + bwd) the kernel reloads them every step instead (from L2 / L1; the
# loop-variant offset k * zero, zero = 0 at run time, keeps the compiler from hoisting), which
# takes at most 74 KB (float32) / 148 KB (float64) of shared memory at the largest admitted
# size. The limit keeps a hoisted block to under half an SM's 228 KB, so two blocks can share
# an SM: a fit, measured from the compiled kernels' metadata (tests/test_build.py), not a speed
# measured on a GPU (none has been lent yet).
HOIST_MAX_BYTES = 96 * 1024


def hoist_weights(dp: int, hp: int, depth: int, elem_bytes: int) -> bool:
    """Whether the packed weights of an MLP with padded input dp, hidden hp and `depth` hidden
    layers (forward and backward copies, elem_bytes each) stay in shared memory (HOIST_MAX_BYTES)."""
    return 2 * (dp * hp + (depth - 1) * hp * hp) * elem_bytes <= HOIST_MAX_BYTES


@triton.jit
def _act(z, ACT: tl.constexpr):
    """(act(z), act'(z)) as fastlangevin.reference.mlp_act_ref."""
    if ACT == 0:
        s = 1.0 / (1.0 + tl.exp(-z))
        return z * s, s * (1.0 + z * (1.0 - s))
    elif ACT == 1:
        e = tl.exp(-tl.abs(z))
        a = tl.maximum(z, 0.0) + tl.log(1.0 + e)
        return a, tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    else:
        e = tl.exp(-2.0 * tl.abs(z))
        t = (1.0 - e) / (1.0 + e)
        t = tl.where(z < 0, -t, t)
        return t, 1.0 - t * t


@triton.jit
def _layer(h, p_w, p_b, o_k, o_h, K: tl.constexpr, HP: tl.constexpr, ACT: tl.constexpr):
    """act(h W^T + b) and act'(.) for h [BLOCK_N, K], W^T packed [K, HP] at p_w."""
    b_w = tl.load(p_w + o_k[:, None] * HP + o_h[None, :])
    z = tl.dot(h, b_w, input_precision="ieee") + tl.load(p_b + o_h)[None, :]
    return _act(z, ACT)


@triton.jit
def _back(delta, p_w, o_h, o_k, K: tl.constexpr, HP: tl.constexpr):
    """delta [BLOCK_N, HP] times W packed [HP, K] at p_w."""
    b_w = tl.load(p_w + o_h[:, None] * K + o_k[None, :])
    return tl.dot(delta, b_w, input_precision="ieee")


@triton.jit
def _mlp_eval(b_v, p_fwd, p_bwd, p_b, p_head, o_d, o_h, DP: tl.constexpr, HP: tl.constexpr, DEPTH: tl.constexpr,
              ACT: tl.constexpr):
    """(U [BLOCK_N], grad U [BLOCK_N, DP]) of the MLP at b_v [BLOCK_N, DP] (padded columns 0).
    fwd: DEPTH blocks, layer 0 [DP, HP] at 0, layer l >= 1 [HP, HP] at DP*HP + (l-1)*HP*HP
    (bwd the same sizes, transposed); biases [DEPTH, HP]; head [HP + 2]: the head row, its bias
    and inv_ref_var (in the walkers' dtype, so float64 walkers get them unrounded)."""
    # forward
    h1, d1 = _layer(b_v, p_fwd, p_b, o_d, o_h, DP, HP, ACT)
    h, dl = h1, d1
    if DEPTH >= 2:
        h2, d2 = _layer(h1, p_fwd + DP * HP, p_b + HP, o_h, o_h, HP, HP, ACT)
        h, dl = h2, d2
    if DEPTH >= 3:
        h3, d3 = _layer(h2, p_fwd + DP * HP + HP * HP, p_b + 2 * HP, o_h, o_h, HP, HP, ACT)
        h, dl = h3, d3
    if DEPTH >= 4:
        h4, d4 = _layer(h3, p_fwd + DP * HP + 2 * HP * HP, p_b + 3 * HP, o_h, o_h, HP, HP, ACT)
        h, dl = h4, d4
    b_head = tl.load(p_head + o_h)
    head_bias = tl.load(p_head + HP)
    inv_ref = tl.load(p_head + HP + 1)
    b_u = tl.sum(h * b_head[None, :], axis=1) + head_bias + 0.5 * inv_ref * tl.sum(b_v * b_v, axis=1)
    # backward to the input
    delta = b_head[None, :] * dl
    if DEPTH >= 4:
        delta = _back(delta, p_bwd + DP * HP + 2 * HP * HP, o_h, o_h, HP, HP) * d3
    if DEPTH >= 3:
        delta = _back(delta, p_bwd + DP * HP + HP * HP, o_h, o_h, HP, HP) * d2
    if DEPTH >= 2:
        delta = _back(delta, p_bwd + DP * HP, o_h, o_h, HP, HP) * d1
    return b_u, _back(delta, p_bwd, o_h, o_d, DP, HP) + inv_ref * b_v


# n and d too: specialised at 1 (one walker, or a 1-d energy), triton 3.6's ptxas segfaults on the
# float64 ULA and MALA variants (seen compiling for sm_90; 3.8 compiles them). Not specialising
# them also spares a compile per shape class (n, d divisible by 16 or not); loads are masked by
# DP / BLOCK_N either way.
@triton.jit(do_not_specialize=["n", "d", "seed_lo", "seed_hi", "off_lo", "off_hi", "n_steps", "zero"])
def _mlp_chain_kernel(
    p_x, p_u, p_g,                 # [N, d], [N], [N, d] (x's dtype): state, updated in place
    p_fwd, p_bwd, p_b, p_head,     # packed weights (x's dtype; see _mlp_eval and pack_weights)
    p_lw, p_steps, p_acc,          # [N] float64 (MODE 1), [n_steps, N] float64 (STEPS), [N] int64
    n, d, n_steps, zero,           # zero: 0 (see HOIST_MAX_BYTES)
    a_hi, a_lo, s_hi, s_lo,        # step size and noise std as float32 halves
    seed_lo, seed_hi, off_lo, off_hi,
    BLOCK_N: tl.constexpr, DP: tl.constexpr, HP: tl.constexpr, DEPTH: tl.constexpr, ACT: tl.constexpr,
    MODE: tl.constexpr, FP64: tl.constexpr, STEPS: tl.constexpr, HOIST: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if FP64 else tl.float32
    a, s, c1, c2 = _chain_scalars(a_hi, a_lo, s_hi, s_lo, FP64)
    (o_n, o_d, m_n, m_d, m_x, o_x, b_x, b_g, b_u, b_acc, b_lw, c0, c1w, lane, off0, k0, k1) = _chain_state(
        p_x, p_g, p_u, p_acc, p_lw, n, d, seed_lo, seed_hi, off_lo, off_hi, BLOCK_N, DP, MODE)
    o_h = tl.arange(0, HP)
    o_st = o_n  # int64 offsets of log_w_steps[k]
    for k in range(n_steps):
        off = off0 + k  # wraps mod 2^64 like sample()'s offsets
        xi = _step_normals(c0, c1w, lane, off, k0, k1, FP64)
        b_y = tl.where(m_x, (b_x - a * b_g) + s * xi, 0.0).to(ACC)  # langevin_step's order
        # not HOIST: kz is 0 but loop-variant, so the weight loads stay in the loop
        kz = 0 if HOIST else k * zero
        u_y, g_y = _mlp_eval(b_y, p_fwd + kz, p_bwd + kz, p_b + kz, p_head + kz, o_d, o_h, DP, HP, DEPTH, ACT)
        b_x, b_g, b_u, b_lw, b_acc, o_st = _chain_transition(b_x, b_g, b_u, b_y, g_y, u_y, b_lw, b_acc, o_n, m_n,
                                                             p_steps, o_st, n, off, c1, c2, seed_lo, seed_hi, MODE,
                                                             STEPS)
    _store_chain_state(p_x, p_g, p_u, p_acc, p_lw, o_n, m_n, o_x, m_x, b_x, b_g, b_u, b_acc, b_lw, n_steps, MODE)


def _pow2(v: int) -> int:
    return max(16, triton.next_power_of_2(int(v)))  # tl.dot needs every dimension >= 16


def pack_weights(weights, biases, dp: int, hp: int):
    """(fwd, bwd, bias, head) flat buffers in weights' dtype, zero-padded to dp / hp; head
    holds [hp] head weights, then the head bias (inv_ref_var's slot is left for the launcher)."""
    depth = len(weights) - 1
    dev, dt = weights[0].device, weights[0].dtype
    fwd, bwd = [], []
    for i, w in enumerate(weights[:-1]):
        ip = dp if i == 0 else hp
        wt = torch.zeros(ip, hp, dtype=dt, device=dev)
        wt[: w.shape[1], : w.shape[0]] = w.t()
        fwd.append(wt.reshape(-1))
        wb = torch.zeros(hp, ip, dtype=dt, device=dev)
        wb[: w.shape[0], : w.shape[1]] = w
        bwd.append(wb.reshape(-1))
    bias = torch.zeros(depth, hp, dtype=dt, device=dev)
    for i, b in enumerate(biases[:-1]):
        bias[i, : b.shape[0]] = b
    head = torch.zeros(hp + 2, dtype=dt, device=dev)
    head[: weights[-1].shape[1]] = weights[-1][0]
    head[hp] = biases[-1][0]
    return torch.cat(fwd), torch.cat(bwd), bias.reshape(-1), head


def mlp_chain_triton(x, energy, grad, weights, biases, act: str, inv_ref_var: float, n_steps: int, step: float,
                     noise_std: float, seed: int, offset: int, mode: int, log_w, log_w_steps, accepted,
                     block_n: int = 16) -> None:
    """Launcher; arguments as in the C++ schema fastlangevin::mlp_chain (x [N, d], energy [N],
    grad [N, d], updated in place, float32 or float64, contiguous; weights / biases as
    fastlangevin.chain.mlp_chain's, in x's dtype; act a name of ACTS; mode 0 ULA, 1 weights,
    2 MALA; log_w float64 [N] for mode 1; log_w_steps float64 [n_steps, N] or None; accepted
    int64 [N], incremented)."""
    n, d = x.shape
    if n == 0 or n_steps == 0:
        return
    dp, hp = _pow2(d), _pow2(weights[0].shape[0])
    fwd, bwd, bias, head = pack_weights(weights, biases, dp, hp)
    head[hp + 1] = inv_ref_var
    s_lo, s_hi = _words(seed)
    o_lo, o_hi = _words(offset)
    lw = log_w if log_w is not None else accepted  # never read unless MODE == 1 / STEPS
    steps = log_w_steps if log_w_steps is not None else accepted
    _mlp_chain_kernel[(triton.cdiv(n, block_n),)](
        x, energy, grad, fwd, bwd, bias, head, lw, steps, accepted, n, d, n_steps, 0,
        *f32_halves(step, "mlp_chain: step_size", x.dtype == torch.float64),
        *f32_halves(noise_std, "mlp_chain: noise_std", x.dtype == torch.float64), s_lo, s_hi, o_lo, o_hi,
        BLOCK_N=block_n, DP=dp, HP=hp, DEPTH=len(weights) - 1, ACT=ACTS.index(act), MODE=int(mode),
        FP64=x.dtype == torch.float64, STEPS=log_w_steps is not None and int(mode) == 1,
        HOIST=hoist_weights(dp, hp, len(weights) - 1, x.element_size()), **LAUNCH_OPTIONS,
    )
