"""Triton kernel of the fused MLP chain, ULA mode (fastlangevin.chain.mlp_chain, backend "triton").

One program owns BLOCK_N walkers for all n_steps: their x [BLOCK_N, DP], grad and energy stay
in registers, and each step is the forward pass and the backward pass to the input as tl.dot
products with the packed, zero-padded weights (read from global memory / L2 every step; Triton
gives no explicit shared-memory control, the compiler stages dot operands itself). Noise:
element n * d + j of step k is the normal langevin_step adds at offset + k (Philox counter
(n * d + j) // 4, lane (n * d + j) % 4; the four normals of a block are all computed and the
lane selected, 4x the Philox work of the step kernel, negligible next to the matmuls).

tl.dot runs with input_precision="ieee": the default TF32 on NVIDIA GPUs would cost ~1e-3
relative error in the gradient. float32 only; the chain state never leaves the program, so
the weights / MALA modes of the CPU kernel (which need per-walker reductions of both states)
are left to the C++ kernel for now. Tested under TRITON_INTERPRET=1 against the reference;
not yet timed on a GPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .langevin import _box_muller, _philox4x32_10, _words

ACTS = ("silu", "softplus", "tanh")


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


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi", "n_steps"])
def _mlp_chain_kernel(
    p_x, p_u, p_g,                 # [N, d], [N], [N, d] float32: state, updated in place
    p_fwd, p_bwd, p_b, p_head,     # packed weights (see mlp_chain_triton)
    n, d, n_steps, step, noise_std, inv_ref, head_bias,
    seed_lo, seed_hi, off_lo, off_hi,
    BLOCK_N: tl.constexpr, DP: tl.constexpr, HP: tl.constexpr, DEPTH: tl.constexpr, ACT: tl.constexpr,
):
    pid = tl.program_id(0)
    o_n = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    o_d = tl.arange(0, DP)
    o_h = tl.arange(0, HP)
    m_n = o_n < n
    m_x = m_n[:, None] & (o_d[None, :] < d)
    o_x = o_n[:, None] * d + o_d[None, :]
    b_x = tl.load(p_x + o_x, mask=m_x, other=0.0)
    b_g = tl.load(p_g + o_x, mask=m_x, other=0.0)
    b_u = tl.load(p_u + o_n, mask=m_n, other=0.0)
    blk = o_x // 4
    lane = o_x % 4
    c0 = (blk & 0xFFFFFFFF).to(tl.uint32)
    c1 = (blk >> 32).to(tl.uint32)
    off0 = off_lo.to(tl.uint64) + (off_hi.to(tl.uint64) << 32)
    k0 = seed_lo.to(tl.uint32)
    k1 = seed_hi.to(tl.uint32)
    # fwd: DEPTH blocks, layer 0 [DP, HP] at 0, layer l >= 1 [HP, HP] at DP*HP + (l-1)*HP*HP
    # (bwd the same sizes, transposed); biases [DEPTH, HP]; head [HP].
    for k in range(n_steps):
        off = off0 + k  # wraps mod 2^64 like sample()'s offsets
        c2 = tl.zeros([BLOCK_N, DP], dtype=tl.uint32) + (off & 0xFFFFFFFF).to(tl.uint32)
        c3 = tl.zeros([BLOCK_N, DP], dtype=tl.uint32) + (off >> 32).to(tl.uint32)
        w0, w1, w2, w3 = _philox4x32_10(c0, c1, c2, c3, k0, k1)
        z0, z1 = _box_muller(w0, w1, False)
        z2, z3 = _box_muller(w2, w3, False)
        xi = tl.where(lane == 0, z0, tl.where(lane == 1, z1, tl.where(lane == 2, z2, z3)))
        b_x = tl.where(m_x, (b_x - step * b_g) + noise_std * xi, 0.0)  # langevin_step's order
        # forward
        h1, d1 = _layer(b_x, p_fwd, p_b, o_d, o_h, DP, HP, ACT)
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
        b_u = tl.sum(h * b_head[None, :], axis=1) + head_bias + 0.5 * inv_ref * tl.sum(b_x * b_x, axis=1)
        # backward to the input
        delta = b_head[None, :] * dl
        if DEPTH >= 4:
            delta = _back(delta, p_bwd + DP * HP + 2 * HP * HP, o_h, o_h, HP, HP) * d3
        if DEPTH >= 3:
            delta = _back(delta, p_bwd + DP * HP + HP * HP, o_h, o_h, HP, HP) * d2
        if DEPTH >= 2:
            delta = _back(delta, p_bwd + DP * HP, o_h, o_h, HP, HP) * d1
        b_g = _back(delta, p_bwd, o_h, o_d, DP, HP) + inv_ref * b_x
    tl.store(p_x + o_x, b_x, mask=m_x)
    tl.store(p_g + o_x, b_g, mask=m_x)
    tl.store(p_u + o_n, b_u, mask=m_n)


def _pow2(v: int) -> int:
    return max(16, triton.next_power_of_2(int(v)))  # tl.dot needs every dimension >= 16


def pack_weights(weights, biases, dp: int, hp: int):
    """(fwd, bwd, bias, head, head_bias) flat float32 buffers, zero-padded to dp / hp."""
    depth = len(weights) - 1
    dev = weights[0].device
    fwd, bwd = [], []
    for i, w in enumerate(weights[:-1]):
        ip = dp if i == 0 else hp
        wt = torch.zeros(ip, hp, dtype=torch.float32, device=dev)
        wt[: w.shape[1], : w.shape[0]] = w.t()
        fwd.append(wt.reshape(-1))
        wb = torch.zeros(hp, ip, dtype=torch.float32, device=dev)
        wb[: w.shape[0], : w.shape[1]] = w
        bwd.append(wb.reshape(-1))
    bias = torch.zeros(depth, hp, dtype=torch.float32, device=dev)
    for i, b in enumerate(biases[:-1]):
        bias[i, : b.shape[0]] = b
    head = torch.zeros(hp, dtype=torch.float32, device=dev)
    head[: weights[-1].shape[1]] = weights[-1][0]
    return torch.cat(fwd), torch.cat(bwd), bias.reshape(-1), head, float(biases[-1][0])


def mlp_chain_triton(x, energy, grad, weights, biases, act: str, inv_ref_var: float, n_steps: int, step: float,
                     noise_std: float, seed: int, offset: int, block_n: int = 16) -> None:
    """n_steps ULA steps in place on x [N, d], energy [N], grad [N, d] (float32, contiguous);
    weights / biases as fastlangevin.chain.mlp_chain's (float32)."""
    n, d = x.shape
    if n == 0 or n_steps == 0:
        return
    dp, hp = _pow2(d), _pow2(weights[0].shape[0])
    fwd, bwd, bias, head, head_bias = pack_weights(weights, biases, dp, hp)
    s_lo, s_hi = _words(seed)
    o_lo, o_hi = _words(offset)
    _mlp_chain_kernel[(triton.cdiv(n, block_n),)](
        x, energy, grad, fwd, bwd, bias, head, n, d, n_steps, float(step), float(noise_std), float(inv_ref_var),
        head_bias, s_lo, s_hi, o_lo, o_hi,
        BLOCK_N=block_n, DP=dp, HP=hp, DEPTH=len(weights) - 1, ACT=ACTS.index(act),
    )
