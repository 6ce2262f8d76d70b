"""Evaluation metrics for the trainers. Every function returns plain Python floats / lists
(JSON-ready).

    gmm_metrics(student, data)                  mode weights, KL(teacher || student), exact CE
    grid_divergences(energy, data, bounds)      KL(data || model) and TV on a 2-D grid
    mmd(x, y)                                   unbiased MMD^2, sum of RBF kernels
    ais_log_likelihood(energy, test)            test log-likelihood with AIS (fastlangevin.log_partition)
    diag_gaussian_log_likelihood(train, test)   the diagonal-Gaussian baseline for it
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

import fastlangevin as fl

_LOG_2PI = math.log(2.0 * math.pi)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def device_dtype(module, default: tuple = (torch.device("cpu"), torch.float64)) -> tuple:
    """(device, dtype) of a module's first floating parameter or buffer; `default` for a plain
    function or a module without any. Metrics evaluate the energy where it lives and bring the
    results back to the CPU, so a model on the GPU works with CPU data."""
    for t in list(getattr(module, "parameters", lambda: [])()) + list(getattr(module, "buffers", lambda: [])()):
        if t.is_floating_point():
            return t.device, t.dtype
    return default


@torch.no_grad()
def _energy_batched(energy, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """U(x) [N] on the CPU in batches, no autograd graph; x is moved to the energy's device and
    dtype (those of x for a plain function)."""
    device, dtype = device_dtype(energy, (x.device, x.dtype))
    return torch.cat([energy(x[i:i + batch_size].to(device=device, dtype=dtype)).cpu()
                      for i in range(0, x.shape[0], batch_size)])


# --------------------------------------------------------------------------------------------
# GMM (Carbone et al.)
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def gmm_exact_ce(student, x: torch.Tensor) -> float:
    """The exact cross-entropy of the student on samples x [N, d]: log Z_S + mean U_S(x), in nats
    (the GMM student knows its log Z exactly: GMMStudent.log_z)."""
    return float(student.log_z()) + float(_energy_batched(student, x).double().mean())


@torch.no_grad()
def gmm_metrics(student, data) -> dict:
    """Carbone et al.'s GMM numbers for a GMMStudent against data.teacher (train.data.load("gmm")):

    mode_weights  [mass on the teacher's first mode (-10 e1), mass on its second (6 e1)]: each
                  student mode is matched to the teacher mode nearest to it in the first
                  coordinate and its weight counted there (with K = 2 students that have
                  separated, one mode each; if both sit near one teacher mode, [0, 1] or [1, 0]
                  says the other mode was missed).
    means_e1      [K] the student means' first coordinates; weights: [K] student mode weights.
    kl            KL(teacher || student) = E_T[log p_T - log p_S], estimated on data.test
                  (both log-densities exact; the only error is the Monte Carlo average: with
                  10^4 test points its standard error is reported as kl_se).
    ce            the exact cross-entropy log Z_S + mean_test U_S (= kl + teacher entropy).
    teacher_h     mean_test(-log p_T), the teacher entropy estimate (the CE's floor).
    log_z         log Z_S.
    """
    t = data.teacher
    x = data.test
    log_pt = t["log_prob"](x).double()
    u_s = _energy_batched(student, x).double()  # on the CPU, whatever the student's device
    log_z = float(student.log_z())
    diff = log_pt + u_s + log_z  # log p_T - log p_S
    w = student.mode_weights().double()
    w = w.cpu()
    s_e1 = student.means[:, 0].double().cpu()
    t_e1 = t["means"][:, 0].double().cpu()
    nearest = (s_e1[:, None] - t_e1[None]).abs().argmin(dim=1)  # [K] teacher index per student mode
    mass = torch.zeros(len(t_e1), dtype=torch.float64).index_add_(0, nearest, w)
    return dict(
        mode_weights=mass.tolist(),
        means_e1=s_e1.tolist(),
        weights=w.tolist(),
        kl=float(diff.mean()),
        kl_se=float(diff.std() / math.sqrt(len(diff))),
        ce=log_z + float(u_s.mean()),
        teacher_h=float(-log_pt.mean()),
        log_z=log_z,
    )


# --------------------------------------------------------------------------------------------
# 2-D grids
# --------------------------------------------------------------------------------------------

def _gauss_blur(p: torch.Tensor, sigma_cells: float) -> torch.Tensor:
    """Separable Gaussian blur of an [n, n] array (zero padding), kernel truncated at 4 sigma."""
    if sigma_cells <= 0:
        return p
    r = max(1, int(math.ceil(4 * sigma_cells)))
    t = torch.arange(-r, r + 1, dtype=p.dtype)
    k = torch.exp(-0.5 * (t / sigma_cells) ** 2)
    k = (k / k.sum()).reshape(1, 1, -1)
    q = torch.nn.functional.conv1d(p.reshape(-1, 1, p.shape[1]), k, padding=r).reshape(p.shape)
    q = torch.nn.functional.conv1d(q.t().reshape(-1, 1, p.shape[0]), k, padding=r).reshape(p.shape[1], p.shape[0]).t()
    return q


@torch.no_grad()
def grid_divergences(
    energy, data, bounds: Optional[Sequence[float]] = None, n: int = 200, *, x: Optional[torch.Tensor] = None,
    smooth: Optional[float] = None, eps: float = 1e-10,
) -> dict:
    """KL(data || model) and TV distance between a 2-D energy's density and the data, on a grid.

    bounds: (lo, hi) for both axes (default data.box). The grid has n x n cells of side
    h = (hi - lo) / n; the model density is exp(-U) at the cell centres, normalised on the grid
    (this supplies the unknown log Z; mass outside the square is ignored). The data
    density is the histogram of `x` (default data.test) on the same cells. With 2000 points on
    40000 cells a raw histogram is mostly empty, so BOTH densities are smoothed by the same
    Gaussian blur of std `smooth` (default (hi - lo) / 80, 0.1 on [-4, 4]): the blur's bias
    then largely cancels when the model is right, and what remains is the sampling noise of x.
    The blurred model mass is floored at eps per cell before the KL (a model that puts zero mass
    where data lies has infinite KL; the floor caps it). Returns dict(kl=..., tv=...).
    """
    lo, hi = (data.box if bounds is None else bounds)
    lo, hi = float(lo), float(hi)
    x = data.test if x is None else x
    h = (hi - lo) / n
    # model: exp(-U) at the cell centres lo + (i + 1/2) h, normalised over the grid (in float64
    # after the energy call, which runs in the energy's own dtype and device)
    device, dtype = device_dtype(energy)
    c = lo + (torch.arange(n, dtype=torch.float64) + 0.5) * h
    gy, gx = torch.meshgrid(c, c, indexing="ij")  # row = y, column = x
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1).to(device=device, dtype=dtype)
    neg_u = -_energy_batched(energy, pts, 8192).double()
    pm = torch.softmax(neg_u, 0).reshape(n, n)  # cell masses
    xd = _flat(x).double().cpu()
    idx = torch.floor((xd - lo) / h).long()
    inside = ((idx >= 0) & (idx < n)).all(dim=1)
    idx = idx[inside]
    pd = torch.zeros(n * n, dtype=torch.float64).index_add_(
        0, idx[:, 1] * n + idx[:, 0], torch.ones(len(idx), dtype=torch.float64)).reshape(n, n)
    sigma = ((hi - lo) / 80 if smooth is None else smooth) / h
    pd = _gauss_blur(pd / pd.sum().clamp_min(1), sigma)
    pm = _gauss_blur(pm, sigma)
    pd, pm = pd / pd.sum(), pm / pm.sum()
    pm = pm.clamp_min(eps)
    nz = pd > 0
    kl = float((pd[nz] * (pd[nz].log() - pm[nz].log())).sum())
    tv = 0.5 * float((pd - pm).abs().sum())
    return dict(kl=kl, tv=tv, outside=float(1 - inside.double().mean()))


# --------------------------------------------------------------------------------------------
# MMD
# --------------------------------------------------------------------------------------------

def _sqdist_blocks(a: torch.Tensor, b: torch.Tensor, chunk: int, symmetric: bool = False):
    """Yield (weight, D) with D the squared distances between a block of a and one of b
    (|a|^2 + |b|^2 - 2 a.b in float64: faster than cdist, and float64 keeps the cancellation
    harmless). symmetric (a is b): only blocks j >= i, the off-diagonal ones with weight 2."""
    na, nb = a.pow(2).sum(1), b.pow(2).sum(1)
    for i in range(0, a.shape[0], chunk):
        for j in range(i if symmetric else 0, b.shape[0], chunk):
            d = na[i:i + chunk, None] + nb[None, j:j + chunk] - 2 * a[i:i + chunk] @ b[j:j + chunk].T
            yield (2.0 if symmetric and j != i else 1.0), d.clamp_min_(0)


@torch.no_grad()
def median_bandwidth(x: torch.Tensor, y: torch.Tensor, *, max_points: int = 1000) -> float:
    """Median pairwise distance of the pooled sample (the first max_points of each)."""
    z = torch.cat([_flat(x)[:max_points], _flat(y)[:max_points]]).double()
    d = torch.cdist(z, z)
    iu = torch.triu_indices(len(z), len(z), 1)
    return float(d[iu[0], iu[1]].median())


@torch.no_grad()
def mmd(x: torch.Tensor, y: torch.Tensor, *, bandwidths: Optional[Sequence[float]] = None, chunk: int = 1024) -> float:
    """Unbiased MMD^2 between samples x [N, ...] and y [M, ...] (flattened, N, M >= 2) with the
    kernel k(a, b) = sum_h exp(-|a - b|^2 / (2 h^2)). Default bandwidths: the median pairwise
    distance of the pooled sample (median heuristic) times 0.5, 1, 2. Computed in float64 in
    chunk x chunk blocks, so memory stays O(chunk^2) whatever N (2000 x 2000 x 64: about 1 s on
    2 CPU cores).
    Unbiased: the diagonal terms k(x_i, x_i) are left out, so the estimate can be slightly
    negative when the two laws are equal."""
    x, y = _flat(x).double(), _flat(y).double()
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"mmd: need x [N, D], y [M, D] with N, M >= 2, got {list(x.shape)}, {list(y.shape)}")
    if bandwidths is None:
        med = median_bandwidth(x, y)
        bandwidths = [0.5 * med, med, 2 * med]
    inv = [1.0 / (2.0 * float(h) ** 2) for h in bandwidths]

    def ksum(a, b, symmetric=False):
        s = 0.0
        for wt, d in _sqdist_blocks(a, b, chunk, symmetric):
            s += wt * float(sum(torch.exp(-c * d).sum() for c in inv))
        return s

    k = len(inv)  # k(a, a) = len(bandwidths): remove the diagonals exactly
    kxx = (ksum(x, x, True) - n * k) / (n * (n - 1))
    kyy = (ksum(y, y, True) - m * k) / (m * (m - 1))
    kxy = ksum(x, y) / (n * m)
    return kxx + kyy - 2 * kxy


# --------------------------------------------------------------------------------------------
# log-likelihoods
# --------------------------------------------------------------------------------------------

def ais_log_likelihood(
    energy, test: torch.Tensor, *, n_walkers: int = 512, n_steps: int = 1000, step_size: float = 0.01,
    base_std: float = 1.0, seed: int = 0, schedule: str = "sigmoid", backend: str = "auto", batch_size: int = 4096,
) -> dict:
    """Test log-likelihood (nats per example) of an energy: ll = -mean U(test) - log Z with log Z
    from AIS (fastlangevin.log_partition: Jarzynski-weighted ULA from N(0, base_std^2 I)).

    The energy must be normalisable (e.g. MLPEnergy / ConvEBM with ref_var). base_std should
    be about the data's scale: AIS's variance grows fast when the base and the target differ.
    Returns dict(ll, se, log_z, log_z_se, mean_energy): se combines log Z's delta-method standard
    error with the standard error of mean U(test). log Z is biased low in expectation (Jensen),
    so ll is biased high by O(se^2); compare models at equal AIS settings.
    """
    shape = tuple(test.shape[1:])
    device, dtype = device_dtype(energy, (test.device, test.dtype))  # AIS runs where the energy lives
    log_z, log_z_se = fl.log_partition(
        energy, shape, base_std=base_std, n_walkers=n_walkers, n_steps=n_steps, step_size=step_size,
        schedule=schedule, seed=seed, device=device, dtype=dtype, backend=backend,
    )
    u = _energy_batched(energy, test, batch_size).double()
    mean_u = float(u.mean())
    u_se = float(u.std() / math.sqrt(len(u))) if len(u) > 1 else 0.0
    return dict(ll=-mean_u - log_z, se=math.sqrt(log_z_se**2 + u_se**2), log_z=log_z, log_z_se=log_z_se,
                mean_energy=mean_u)


def diag_gaussian_log_likelihood(train: torch.Tensor, test: torch.Tensor, *, var_floor: float = 1e-6) -> float:
    """Mean test log-likelihood (nats per example) of a diagonal Gaussian fitted by maximum
    likelihood on train (per-coordinate mean and biased variance, floored at var_floor so that
    a constant pixel does not give an infinite density). The baseline any EBM should beat."""
    tr, te = _flat(train).double(), _flat(test).double()
    mu = tr.mean(0)
    var = tr.var(0, unbiased=False).clamp_min(var_floor)
    ll = -0.5 * ((te - mu) ** 2 / var + torch.log(var) + _LOG_2PI).sum(1)
    return float(ll.mean())
