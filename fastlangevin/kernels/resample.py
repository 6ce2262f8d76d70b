"""Triton kernels for SMC resampling: the uniform stream and the ancestor search.

The tables (softmax, cdf, residual counts) come from torch ops, the very code of
``fastlangevin.reference.resample_tables``, so the search runs on the reference's bits; one
kernel launch then makes each slot's uniform (csrc/philox.h's resample_uniform) and
binary-searches the cdf. Nothing is read back to the host: F, the last positive weight and the
validity of the weights are loaded by the kernel. Naming as in kernels/langevin.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import reference
from .langevin import _block_for, _load_words, _philox4x32_10, _words

SCHEME_IDS = {name: i for i, name in enumerate(reference.RESAMPLE_SCHEMES)}
MULTINOMIAL = tl.constexpr(SCHEME_IDS["multinomial"])
SYSTEMATIC = tl.constexpr(SCHEME_IDS["systematic"])
RESIDUAL = tl.constexpr(SCHEME_IDS["residual"])


@triton.jit
def _uniform53(wa, wb):
    """((wa >> 5) * 2^26 + (wb >> 6)) * 2^-53: exact float64 in [0, 1)."""
    bits = ((wa >> 5).to(tl.uint64) << 26) | (wb >> 6).to(tl.uint64)
    return bits.to(tl.float64) * 1.1102230246251565404e-16


@triton.jit
def _resample_uniforms(o_j, seed_lo, seed_hi, off_lo, off_hi):
    """Uniforms o_j (int64 indices) of stream (seed, offset): block j >> 1, words by j & 1."""
    blk = o_j >> 1
    c0 = (blk & 0xFFFFFFFF).to(tl.uint32)
    c1 = (blk >> 32).to(tl.uint32)
    c2 = tl.zeros_like(c0) + off_lo.to(tl.uint32)
    c3 = tl.zeros_like(c0) + off_hi.to(tl.uint32)
    w0, w1, w2, w3 = _philox4x32_10(c0, c1, c2, c3, seed_lo.to(tl.uint32), seed_hi.to(tl.uint32))
    return tl.where((o_j & 1) != 0, _uniform53(w2, w3), _uniform53(w0, w1))


@triton.jit
def _count_le(p_arr, n, b_v, n_steps, BLOCK: tl.constexpr):
    """#{i < n : arr[i] <= v} per lane (upper bound of v in the sorted arr). n_steps =
    bit_length(n) halvings empty every interval [lo, hi) of length <= n."""
    lo = tl.zeros([BLOCK], dtype=tl.int64)
    hi = lo + n
    for _ in range(n_steps):
        mid = (lo + hi) >> 1
        active = lo < hi
        b_x = tl.load(p_arr + mid, mask=active, other=0)
        right = active & (b_x <= b_v)
        lo = tl.where(right, mid + 1, lo)
        hi = tl.where(active & (b_x > b_v), mid, hi)
    return lo


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def _resample_uniforms_kernel(p_out, n, seed_lo, seed_hi, off_lo, off_hi, BLOCK: tl.constexpr):
    o_j = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(p_out + o_j, _resample_uniforms(o_j, seed_lo, seed_hi, off_lo, off_hi), mask=o_j < n)


@triton.jit
def _resample_uniforms_dev_kernel(p_out, n, p_seed, p_off, BLOCK: tl.constexpr):
    """_resample_uniforms_kernel with the seed and offset read from device memory (0-d int64)."""
    seed_lo, seed_hi = _load_words(p_seed)
    off_lo, off_hi = _load_words(p_off)
    o_j = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(p_out + o_j, _resample_uniforms(o_j, seed_lo, seed_hi, off_lo, off_hi), mask=o_j < n)


# n and n_steps too: Triton turns an int argument equal to 1 into a compile-time constant unless
# told not to, and triton 3.6 has no .to() on a constant (`n.to(tl.float64)` below: a single
# walker failed to compile for the stratified and systematic schemes; 3.8 compiles it, and the
# interpreter passes plain ints). tests/test_build.py compiles every kernel as the JIT would at 1.
@triton.jit(do_not_specialize=["n", "n_steps", "seed_lo", "seed_hi", "off_lo", "off_hi"])
def _resample_kernel(
    p_lw_max, p_cdf, p_last,  # 0-d float64, [n] float64, 0-d int64
    p_counts_cum, p_res_cdf, p_res_last,  # residual only: [n] int64, [n] float64, 0-d int64
    p_u, p_out,  # [n] float64 uniforms (if HAS_U), [n] int64 ancestors
    n, n_steps,
    seed_lo, seed_hi, off_lo, off_hi,
    BLOCK: tl.constexpr, SCHEME: tl.constexpr, HAS_U: tl.constexpr,
):
    o_j = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m_j = o_j < n
    if SCHEME == SYSTEMATIC:
        o_u = o_j * 0  # every slot uses u_0
    else:
        o_u = o_j
    if HAS_U:
        b_u = tl.load(p_u + o_u, mask=m_j, other=0.0)
    else:
        b_u = _resample_uniforms(o_u, seed_lo, seed_hi, off_lo, off_hi)
    if SCHEME == RESIDUAL:
        det = _count_le(p_counts_cum, n, o_j, n_steps, BLOCK)
        res = tl.minimum(_count_le(p_res_cdf, n, b_u, n_steps, BLOCK), tl.load(p_res_last))
        b_a = tl.where(o_j < tl.load(p_counts_cum + n - 1), det, res)
    else:
        if SCHEME == MULTINOMIAL:
            b_p = b_u
        else:  # stratified, systematic: (j + u) / n. float64 division is IEEE round-to-nearest
            # (div.rn.f64 on NVIDIA; only float32 `/` is approximate, and tl.math.div_rn is fp32-only)
            b_p = (o_j.to(tl.float64) + b_u) / n.to(tl.float64)
        b_a = tl.minimum(_count_le(p_cdf, n, b_p, n_steps, BLOCK), tl.load(p_last))
    lw_max = tl.load(p_lw_max)
    ok = tl.abs(lw_max) <= 1.7976931348623157e308  # false for NaN and +-inf
    tl.store(p_out + o_j, tl.where(ok, b_a, -1), mask=m_j)


def _block(t: torch.Tensor, n: int, block):
    """kernels/langevin.py's block, but no larger than n needs: the interpreter evaluates every
    lane, masked or not, so a 40-walker call would otherwise run its binary search on 65536."""
    return block or max(16, min(_block_for(t, None), triton.next_power_of_2(n)))


def resample_uniforms_out_triton(out: torch.Tensor, seed: int, offset: int, block=None) -> None:
    n = out.numel()
    block = _block(out, n, block)
    if n == 0:
        return
    s_lo, s_hi = _words(seed)
    o_lo, o_hi = _words(offset)
    _resample_uniforms_kernel[(triton.cdiv(n, block),)](out, n, s_lo, s_hi, o_lo, o_hi, BLOCK=block)


def resample_uniforms_dev_out_triton(out: torch.Tensor, seed_t: torch.Tensor, offset_t: torch.Tensor,
                                     block=None) -> None:
    """resample_uniforms_out_triton with the seed and offset as 0-d int64 tensors on out's device."""
    n = out.numel()
    block = _block(out, n, block)
    if n == 0:
        return
    _resample_uniforms_dev_kernel[(triton.cdiv(n, block),)](out, n, seed_t, offset_t, BLOCK=block)


def resample_triton(log_w: torch.Tensor, scheme: str, uniforms, seed: int, offset: int, block=None) -> torch.Tensor:
    """Launcher; arguments as in the C++ schema fastlangevin::resample."""
    n = log_w.shape[0]
    block = _block(log_w, n, block)
    t = reference.resample_tables(log_w, scheme)
    out = torch.empty(n, dtype=torch.int64, device=log_w.device)
    s_lo, s_hi = _words(seed)
    o_lo, o_hi = _words(offset)
    residual = scheme == "residual"
    _resample_kernel[(triton.cdiv(n, block),)](
        t["lw_max"], t["cdf"], t["last"],
        t["counts_cum"] if residual else t["last"], t["res_cdf"] if residual else t["cdf"],
        t["res_last"] if residual else t["last"],
        uniforms if uniforms is not None else t["cdf"], out,
        n, n.bit_length(),
        s_lo, s_hi, o_lo, o_hi,
        BLOCK=block, SCHEME=SCHEME_IDS[scheme], HAS_U=uniforms is not None,
    )
    return out
