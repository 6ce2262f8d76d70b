"""Pure-torch reference implementations: the test oracle and the fallback backend.

Readable first, fast never. This file and ``csrc/philox.h`` are the two places where the noise
contract is written down; every kernel must reproduce what these functions compute.

Noise contract
--------------
Philox4x32-10 (Random123) with key ``(seed & 0xffffffff, seed >> 32)``. Element ``i`` of a noisy
op called with ``(seed, offset)`` uses

    counter = (lo32(i >> 2), hi32(i >> 2), lo32(offset), hi32(offset)),   lane = i & 3

and the four output words ``(w0, w1, w2, w3)`` of a counter become four normals by Box-Muller,
``(w0, w1) -> (z0, z1)`` and ``(w2, w3) -> (z2, z3)``:

    u_r = ((w_a >> 8) + 1) * 2**-24            # in (0, 1], exact in float32
    u_t = (w_b >> 8) * 2**-24                  # in [0, 1), exact in float32
    z_a = sqrt(-2 log u_r) cos(2 pi u_t)
    z_b = sqrt(-2 log u_r) sin(2 pi u_t)

The reference computes the transcendental part in float64 from the exact uniforms, so it is
the truth the float32 kernels are measured against.

Resampling uniforms (``fastlangevin.resampling.uniforms``) are a second map of the same words.
Uniform ``j`` of stream ``(seed, offset)`` uses Philox block ``j >> 1`` (the counter above with
``i >> 2`` replaced by ``j >> 1``) and the words ``(w_a, w_b) = (w0, w1)`` for even ``j``,
``(w2, w3)`` for odd ``j``:

    u_j = ((w_a >> 5) * 2**26 + (w_b >> 6)) * 2**-53      # float64 in [0, 1), 53 random bits

The integer is below 2**53, so every backend produces the same double exactly.
"""
from __future__ import annotations

import math

import torch

MASK32 = 0xFFFFFFFF
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product a * m, a an int64 tensor of uint32 values.

    int64 cannot hold a 64-bit unsigned product, so m is split into 16-bit halves:
    a * m = (a * m_hi) << 16 + a * m_lo, each partial product below 2**48.
    """
    m_hi, m_lo = m >> 16, m & 0xFFFF
    p_hi = a * m_hi  # < 2**48
    p_lo = a * m_lo  # < 2**48
    t = ((p_hi & 0xFFFF) << 16) + p_lo  # < 2**49
    lo = t & MASK32
    hi = ((p_hi >> 16) + (t >> 32)) & MASK32
    return hi, lo


def philox_ref(counter: torch.Tensor, seed: int) -> torch.Tensor:
    """Philox4x32-10 of each row of ``counter`` ([n, 4] int64 words) under the 64-bit ``seed``.

    Returns [n, 4] int64 words in [0, 2**32). ``seed`` may also be a 0-d int64 tensor on
    counter's device (the 64-bit word in two's complement): the key words are then computed on
    the device, as CUDA-graph replay needs (fastlangevin.graphs).
    """
    if torch.is_tensor(seed):
        k0, k1 = seed & MASK32, (seed >> 32) & MASK32  # >> is arithmetic on int64: mask it
    else:
        seed = int(seed) & ((1 << 64) - 1)
        k0, k1 = seed & MASK32, seed >> 32
    c = counter.to(torch.int64) & MASK32
    c0, c1, c2, c3 = c.unbind(-1)
    for r in range(PHILOX_ROUNDS):
        if r > 0:
            k0 = (k0 + PHILOX_W0) & MASK32
            k1 = (k1 + PHILOX_W1) & MASK32
        hi0, lo0 = _mulhilo(c0, PHILOX_M0)
        hi1, lo1 = _mulhilo(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return torch.stack([c0, c1, c2, c3], dim=-1)


def stream_counters(n_blocks: int, offset: int, device=None) -> torch.Tensor:
    """The [n_blocks, 4] counters of blocks 0 .. n_blocks - 1 of a stream at ``offset`` (an int,
    or a 0-d int64 tensor on ``device`` holding the 64-bit word in two's complement)."""
    if not torch.is_tensor(offset):
        offset = int(offset) & ((1 << 64) - 1)
    blk = torch.arange(n_blocks, dtype=torch.int64, device=device)
    c = torch.empty(n_blocks, 4, dtype=torch.int64, device=device)
    c[:, 0] = blk & MASK32
    c[:, 1] = blk >> 32
    c[:, 2] = offset & MASK32
    c[:, 3] = (offset >> 32) & MASK32  # a no-op for ints; int64 tensors shift arithmetically
    return c


def box_muller_uniforms_ref(words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Radius and angle uniforms (float64, exact) of a [n, 4] word tensor: each [n, 2]."""
    w = words.view(-1, 2, 2)  # pairs (w0, w1), (w2, w3)
    scale = 2.0**-24
    u_r = ((w[..., 0] >> 8) + 1).to(torch.float64) * scale
    u_t = (w[..., 1] >> 8).to(torch.float64) * scale
    return u_r, u_t


def normals_from_words(words: torch.Tensor) -> torch.Tensor:
    """Box-Muller in float64: [n, 4] words -> [n * 4] normals, in element order."""
    u_r, u_t = box_muller_uniforms_ref(words)
    rad = torch.sqrt(-2.0 * torch.log(u_r))
    ang = (2.0 * math.pi) * u_t
    z = torch.stack([rad * torch.cos(ang), rad * torch.sin(ang)], dim=-1)  # [n, 2 pairs, 2]
    return z.reshape(-1)


def randn_ref(shape, seed: int, offset: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """The normals xi of stream (seed, offset) for a tensor of ``shape`` (element i <- xi_i)."""
    shape = torch.Size(shape)
    n = shape.numel()
    n_blocks = (n + 3) // 4
    words = philox_ref(stream_counters(n_blocks, offset, device=device), seed)
    return normals_from_words(words)[:n].reshape(shape).to(dtype)


def langevin_step_ref(
    x: torch.Tensor,
    grad: torch.Tensor,
    step_size,
    noise_std=None,
    *,
    seed: int = 0,
    offset: int = 0,
    noise: torch.Tensor | None = None,
    ref_var=None,
    grad_clip=None,
    clamp=None,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """One Langevin step, written out:

        y = clamp( x - a * ( clip(grad, -c, c) + x / ref_var ) + s * xi )

    x, grad, noise: [N, ...]; a, s: floats or [N] tensors (per walker); xi = ``noise`` or the
    normals of stream (seed, offset). Arithmetic in ``compute_dtype`` (default: float64 for
    float64 state, float32 otherwise), result in x.dtype.
    """
    if compute_dtype is None:
        compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if noise_std is None:
        noise_std = (2.0 * step_size) ** 0.5 if not torch.is_tensor(step_size) else torch.sqrt(2.0 * step_size)
    xc = x.to(compute_dtype)
    g = grad.to(compute_dtype)
    per_walker = (x.shape[0],) + (1,) * (x.dim() - 1)

    def _b(v):
        return v.to(compute_dtype).reshape(per_walker) if torch.is_tensor(v) else v

    a, s = _b(step_size), _b(noise_std)
    if grad_clip is not None:
        g = g.clamp(-grad_clip, grad_clip)
    drift = g + xc * (1.0 / ref_var) if ref_var is not None else g
    y = xc - a * drift
    noisy = torch.is_tensor(s) or s != 0.0
    if noise is not None:
        y = y + s * noise.to(compute_dtype)
    elif noisy:
        y = y + s * randn_ref(x.shape, seed, offset, dtype=torch.float64, device=x.device).to(compute_dtype)
    if clamp is not None:
        y = y.clamp(clamp[0], clamp[1])
    return y.to(x.dtype)


# --------------------------------------------------------------------------------------------
# SMC resampling
# --------------------------------------------------------------------------------------------

RESAMPLE_SCHEMES = ("multinomial", "stratified", "systematic", "residual")


def uniforms_ref(n: int, seed: int, offset: int = 0, device="cpu") -> torch.Tensor:
    """The float64 resampling uniforms u_0 .. u_{n-1} of stream (seed, offset): [n]."""
    words = philox_ref(stream_counters((n + 1) // 2, offset, device=device), seed)
    pairs = words.reshape(-1, 2)[:n]  # block b gives pairs 2b = (w0, w1) and 2b + 1 = (w2, w3)
    bits = ((pairs[:, 0] >> 5) << 26) | (pairs[:, 1] >> 6)  # < 2**53: exact in float64
    return bits.to(torch.float64) * 2.0**-53


def _capped_cdf(cum: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """min(cum, 1), and exactly 1 from entry ``last`` (the last positive weight) on."""
    idx = torch.arange(cum.shape[0], device=cum.device)
    return torch.where(idx >= last, 1.0, cum.clamp(max=1.0))


def _last_positive(v: torch.Tensor) -> torch.Tensor:
    """0-d int64: the largest i with v[i] > 0, or -1."""
    idx = torch.arange(v.shape[0], device=v.device)
    return torch.where(v > 0, idx, -1).amax()


def resample_tables(log_w: torch.Tensor, scheme: str) -> dict[str, torch.Tensor]:
    """The tables every backend searches, from float32/float64 log-weights [N] (torch ops
    only: no host sync). All float64 except the int64 indices and counts:

      lw_max  0-d   max(log_w); not finite (NaN, +inf, all -inf) means no valid weights
      cdf     [N]   w = softmax(log_w) (max-shifted: exp of log-weights minus their max),
                    cumsum(w), capped at 1, and exactly 1 from the last positive weight on
      last    0-d   index of the last positive weight; ancestors are clamped to it
    residual only:
      counts_cum [N] cumsum(floor(N w))             (its last entry is F)
      res_cdf    [N] cumsum(N w - floor(N w)) / its last entry, capped and forced like cdf
      res_last   0-d index of the last positive residual weight (-1 if F = N)

    Forcing 1 from the last positive weight (not only at N - 1) and clamping to that walker
    (not to N - 1) keeps zero-weight walkers at the end unreachable even when rounding leaves
    cumsum(w) a few ulps below 1 or a position (j + u) / N rounds up to 1.
    """
    lw = log_w.to(torch.float64)
    n = lw.shape[0]
    w = torch.softmax(lw, 0)
    last = _last_positive(w)
    t = {"lw_max": lw.amax(), "cdf": _capped_cdf(torch.cumsum(w, 0), last), "last": last}
    if scheme == "residual":
        nw = w * n
        c = torch.floor(nw)
        r = nw - c
        res_cum = torch.cumsum(r, 0)
        res_last = _last_positive(r)
        t["counts_cum"] = torch.cumsum(c.to(torch.int64), 0)
        t["res_cdf"] = _capped_cdf(res_cum / res_cum[-1], res_last)
        t["res_last"] = res_last
    return t


def resample_ref(
    log_w: torch.Tensor,
    scheme: str = "systematic",
    *,
    seed: int = 0,
    offset: int = 0,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ancestor indices, int64 [N], for log-weights [N], written out.

    u = ``uniforms`` (float64 [N]) or uniforms_ref(N, seed, offset). The ancestor of a position
    p is min(#{i : cdf_i <= p}, last) (tables from resample_tables), so a walker is picked
    only through its own step of the cdf:

      multinomial  slot j: p = u_j
      stratified   slot j: p = (j + u_j) / N
      systematic   slot j: p = (j + u_0) / N
      residual     slot j < F: walker i for C_{i-1} <= j < C_i (C = counts_cum, F = C_{N-1});
                   slot j >= F: min(#{i : res_cdf_i <= u_j}, res_last)

    All float64. Log-weights with a NaN or +inf, or all -inf, give ancestors all -1.
    """
    n = log_w.shape[0]
    t = resample_tables(log_w, scheme)
    if uniforms is None:
        uniforms = uniforms_ref(1 if scheme == "systematic" else n, seed, offset, device=log_w.device)
    u = uniforms.to(torch.float64)
    idx = torch.arange(n, device=log_w.device)
    if scheme == "residual":
        det = torch.searchsorted(t["counts_cum"], idx, right=True)
        res = torch.minimum(torch.searchsorted(t["res_cdf"], u, right=True), t["res_last"])
        a = torch.where(idx < t["counts_cum"][-1], det, res)
    else:
        if scheme == "multinomial":
            p = u
        elif scheme == "stratified":
            p = (idx.to(torch.float64) + u) / n
        elif scheme == "systematic":
            p = (idx.to(torch.float64) + u[0]) / n
        else:
            raise ValueError(f"resample_ref: scheme must be one of {RESAMPLE_SCHEMES}, got {scheme!r}")
        a = torch.minimum(torch.searchsorted(t["cdf"], p, right=True), t["last"])
    return torch.where(torch.isfinite(t["lw_max"]), a, -1)
def _rows(t: torch.Tensor) -> torch.Tensor:
    """[N, ...] -> [N, D] float64 (D = 1 for a 1-D tensor; works for N = 0)."""
    return t.to(torch.float64).reshape(t.shape[0], math.prod(t.shape[1:]))


def _per_walker64(v):
    return v.to(torch.float64) if torch.is_tensor(v) else float(v)


def transition_log_ratio_ref(x, y, energy_x, grad_x, step_size, noise_std=None, *, ref_var=None) -> torch.Tensor:
    """alpha(x, y) of the Gaussian proposal q(x -> y) = N(y; x - a g(x), s^2 I), per walker:

        alpha(x, y) = U(x) + (a / s^2) (y - x).g(x) + (a^2 / (2 s^2)) |g(x)|^2

    x, y, grad_x: [N, ...]; energy_x: [N]; a = ``step_size``, s = ``noise_std`` (default
    sqrt(2 a)): floats or [N] tensors. With ``ref_var`` r the Gaussian reference is part of the
    energy: U -> U + |x|^2 / (2 r), g -> g + x / r. Dot products over all non-batch dims, all in
    float64; returns float64 [N]. -log q(x -> y) = alpha(x, y) - U(x) + |y - x|^2 / (2 s^2) + const.
    """
    x2, y2, g = _rows(x), _rows(y), _rows(grad_x)
    u = energy_x.to(torch.float64)
    if ref_var is not None:
        u = u + (x2 * x2).sum(1) / (2.0 * ref_var)
        g = g + x2 / ref_var
    a = _per_walker64(step_size)
    s = _per_walker64(noise_std) if noise_std is not None else (2.0 * a) ** 0.5
    return u + (a / s**2) * ((y2 - x2) * g).sum(1) + (a**2 / (2.0 * s**2)) * (g * g).sum(1)


def jarzynski_increment_ref(
    x_old, grad_old, energy_old, x_new, grad_new, energy_new, step_size, noise_std=None, *, ref_var=None
) -> torch.Tensor:
    """alpha_old(x_old, x_new) - alpha_new(x_new, x_old): the Jarzynski log-weight increment
    (Carbone et al.: A_{k+1} = A_k - alpha_{k+1}(X_{k+1}, X_k) + alpha_k(X_k, X_{k+1})), with
    alpha_old from (energy_old, grad_old) and alpha_new from (energy_new, grad_new). float64 [N]."""
    fwd = transition_log_ratio_ref(x_old, x_new, energy_old, grad_old, step_size, noise_std, ref_var=ref_var)
    bwd = transition_log_ratio_ref(x_new, x_old, energy_new, grad_new, step_size, noise_std, ref_var=ref_var)
    return fwd - bwd


# --------------------------------------------------------------------------------------------
# fused chains of analytic energies
# --------------------------------------------------------------------------------------------

# The streams of one seed, kept apart by the top bits of the offset (fastlangevin.walkers and
# sample() use them; csrc/chain_run.h mh_offset is the C++ twin of the first): step k's noise is
# at offset k (< 2^62), MALA's accept/reject uniforms of step k at MH_STREAM | (k mod 2^62), the
# uniforms of the resampling after step k at RESAMPLE_STREAM | k.
MH_STREAM = 1 << 62
RESAMPLE_STREAM = 1 << 63
CHAIN_MODES = ("ula", "weights", "mh")


def mixture_energy_ref(x, means, inv_var, log_coef) -> tuple[torch.Tensor, torch.Tensor]:
    """(U [N], grad U [N, d]) of the Gaussian-mixture energy, in x's dtype:

        q_k(x) = log_coef_k - 1/2 sum_j (x_j - means_kj)^2 inv_var_kj
        U(x) = -logsumexp_k q_k(x),   grad U(x) = sum_k softmax(q)_k (x - means_k) inv_var_k

    x: [N, d]; means, inv_var: [K, d]; log_coef: [K]. This is GaussianMixture.energy_and_grad
    (which calls it) and the per-step energy of mixture_chain_ref."""
    means, inv_var, log_coef = means.to(x.dtype), inv_var.to(x.dtype), log_coef.to(x.dtype)
    diff = x.unsqueeze(1) - means  # [N, K, d]
    div = diff * inv_var
    q = log_coef - 0.5 * (diff * div).sum(dim=2)  # [N, K]
    r = torch.softmax(q, dim=1)
    return -torch.logsumexp(q, dim=1), (r.unsqueeze(2) * div).sum(dim=1)


def mixture_chain_ref(
    x, energy, grad, means, inv_var, log_coef, n_steps: int, step_size: float, noise_std: float | None = None, *,
    seed: int = 0, offset: int = 0, mode: str = "ula", log_w=None,
):
    """n_steps Langevin steps of the mixture energy (mixture_energy_ref), written as the loop
    that sample() / Walkers run step by step. Step k (noise stream offset + k):

        y = x - a grad + s xi_k                                   (langevin_step_ref)
        U_y, grad_y = mixture_energy_ref(y)
        ula:     x <- y
        weights: log_w += alpha(x, y) - alpha(y, x)  (jarzynski_increment_ref); x <- y
        mh:      x <- y where log u_k < alpha(x, y) - alpha(y, x), u_k = uniforms_ref(N, seed,
                 MH_STREAM | (offset + k mod 2^62))

    x, grad: [N, d]; energy: [N], the energy and gradient at x (the cached ones of a Walkers,
    possibly from other parameters). Returns (x, energy, grad, log_w float64 [N] or None,
    accepted int64 [N]: accepted proposals per walker (n_steps for ula/weights)).
    """
    def energy_fn(y):
        return mixture_energy_ref(y, means, inv_var, log_coef)

    return _chain_loop_ref(energy_fn, x, energy, grad, n_steps, step_size, noise_std, seed=seed, offset=offset,
                           mode=mode, log_w=log_w, op="mixture_chain_ref")


def double_well_energy_ref(x, barrier, center) -> tuple[torch.Tensor, torch.Tensor]:
    """(U [N], grad U [N, d]) of the separable double well, in x's dtype:

        w = x^2 - center^2,   U(x) = barrier sum_j w_j^2,   grad U(x) = (4 barrier) x w

    x: [N, d]; barrier, center: 0-dim tensors (any float dtype, cast to x's) or floats. This is
    DoubleWell.energy_and_grad (which calls it) and the per-step energy of double_well_chain_ref."""
    h = torch.as_tensor(barrier).detach().to(device=x.device, dtype=x.dtype)
    c2 = torch.as_tensor(center).detach().to(device=x.device, dtype=x.dtype) ** 2
    w = x * x - c2
    return h * (w * w).sum(dim=1), (4.0 * h) * x * w


def double_well_chain_ref(
    x, energy, grad, barrier, center, n_steps: int, step_size: float, noise_std: float | None = None, *,
    seed: int = 0, offset: int = 0, mode: str = "ula", log_w=None,
):
    """n_steps Langevin steps of the double well (double_well_energy_ref), the loop of
    mixture_chain_ref with the double well's closed-form energy and gradient (same noise,
    modes and uniforms). Returns (x, energy, grad, log_w float64 [N] or None, accepted int64 [N])."""
    def energy_fn(y):
        return double_well_energy_ref(y, barrier, center)

    return _chain_loop_ref(energy_fn, x, energy, grad, n_steps, step_size, noise_std, seed=seed, offset=offset,
                           mode=mode, log_w=log_w, op="double_well_chain_ref")


# --------------------------------------------------------------------------------------------
# small MLP energies (fastlangevin.energies.MLPEnergy, fastlangevin.chain.mlp_chain)
# --------------------------------------------------------------------------------------------

MLP_ACTS = ("silu", "softplus", "tanh")


def mlp_act_ref(z: torch.Tensor, act: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(act(z), act'(z)), elementwise. silu: z sigmoid(z), sigmoid(z) (1 + z (1 - sigmoid(z)));
    softplus: log(1 + e^z) (torch's, linear above z = 20), sigmoid(z); tanh: tanh(z), 1 - tanh(z)^2."""
    if act == "silu":
        s = torch.sigmoid(z)
        return z * s, s * (1.0 + z * (1.0 - s))
    if act == "softplus":
        return torch.nn.functional.softplus(z), torch.sigmoid(z)
    if act == "tanh":
        t = torch.tanh(z)
        return t, 1.0 - t * t
    raise ValueError(f"mlp_act_ref: act must be one of {MLP_ACTS}, got {act!r}")


def mlp_energy_ref(x, weights, biases, act: str, inv_ref_var: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(U [N], grad U [N, d]) of the MLP energy, in x's dtype, without autograd:

        h_0 = x,  z_l = h_{l-1} W_l^T + b_l,  h_l = act(z_l)        (l = 1 .. L hidden layers)
        U(x) = h_L w^T + b + inv_ref_var |x|^2 / 2                  (head: weights[L] = w [1, H])
        delta_L = w * act'(z_L),  delta_l = (delta_{l+1} W_{l+1}) * act'(z_l),
        grad U(x) = delta_1 W_1 + inv_ref_var x

    x: [N, d]; weights: L + 1 matrices [out, in] (nn.Linear's layout, the head last); biases:
    L + 1 vectors [out]. MLPEnergy.energy_and_grad and the per-step energy of mlp_chain_ref."""
    ws = [w.to(x.dtype) for w in weights]
    bs = [b.to(x.dtype) for b in biases]
    h, ders = x, []
    for w, b in zip(ws[:-1], bs[:-1]):
        h, dz = mlp_act_ref(torch.addmm(b, h, w.t()), act)
        ders.append(dz)
    u = torch.addmm(bs[-1], h, ws[-1].t()).squeeze(1)
    delta = ws[-1] * ders[-1]  # [N, H_L]
    for w, dz in zip(reversed(ws[1:-1]), reversed(ders[:-1])):
        delta = (delta @ w) * dz
    g = delta @ ws[0]
    if inv_ref_var:
        u = u + (0.5 * inv_ref_var) * (x * x).sum(dim=1)
        g = g + inv_ref_var * x
    return u, g


def mlp_chain_ref(
    x, energy, grad, weights, biases, act: str, inv_ref_var: float, n_steps: int, step_size: float,
    noise_std: float | None = None, *, seed: int = 0, offset: int = 0, mode: str = "ula", log_w=None,
):
    """n_steps Langevin steps of the MLP energy (mlp_energy_ref), the loop of mixture_chain_ref
    with the MLP's closed-form energy and gradient: step k (noise stream offset + k)

        y = x - a grad + s xi_k;  U_y, grad_y = mlp_energy_ref(y);  then ula / weights / mh
        exactly as mixture_chain_ref.

    Returns (x, energy, grad, log_w float64 [N] or None, accepted int64 [N])."""
    def energy_fn(y):
        return mlp_energy_ref(y, weights, biases, act, inv_ref_var)

    return _chain_loop_ref(energy_fn, x, energy, grad, n_steps, step_size, noise_std, seed=seed, offset=offset,
                           mode=mode, log_w=log_w, op="mlp_chain_ref")


def _chain_loop_ref(energy_fn, x, energy, grad, n_steps, step_size, noise_std, *, seed, offset, mode, log_w, op):
    """The step-by-step chain of any closed-form energy_fn(y) -> (U [N], grad [N, d])."""
    if mode not in CHAIN_MODES:
        raise ValueError(f"{op}: mode must be one of {CHAIN_MODES}, got {mode!r}")
    s = noise_std if noise_std is not None else (2.0 * step_size) ** 0.5
    n = x.shape[0]
    accepted = torch.zeros(n, dtype=torch.int64, device=x.device)
    if mode == "weights":
        log_w = torch.zeros(n, dtype=torch.float64, device=x.device) if log_w is None else log_w.clone()
    mask = (1 << 64) - 1
    for k in range(n_steps):
        off = (offset + k) & mask
        y = langevin_step_ref(x, grad, step_size, s, seed=seed, offset=off)
        u_y, g_y = energy_fn(y)
        if mode == "ula":
            x, energy, grad = y, u_y, g_y
            accepted += 1
            continue
        inc = jarzynski_increment_ref(x, grad, energy, y, g_y, u_y, step_size, s)
        if mode == "weights":
            log_w = log_w + inc
            x, energy, grad = y, u_y, g_y
            accepted += 1
        else:
            u = uniforms_ref(n, seed, MH_STREAM | (off & (MH_STREAM - 1)), device=x.device)
            acc = torch.log(u) < inc
            x = torch.where(acc[:, None], y, x)
            grad = torch.where(acc[:, None], g_y, grad)
            energy = torch.where(acc, u_y, energy)
            accepted += acc.to(torch.int64)
    return x, energy, grad, log_w, accepted
