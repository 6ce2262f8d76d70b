"""Datasets for the trainers: one call, ``load(name)``, returns train/test tensors plus what the
trainers and metrics need to know about them (shape, kind, box, teacher).

    from train.data import load, DATASETS
    ds = load("gmm")                 # Carbone et al.'s teacher, d = 50, float64
    ds.train.shape, ds.shape         # torch.Size([10000, 50]), (50,)
    ds = load("digits")              # sklearn's 8x8 digits, flat (64,), values in [-1, 1)
    ds = load("mnist", data_dir="~/data/mnist")   # never downloads: reads the idx files

Every dataset is a deterministic function of (name, seed, n_train, dim): each random piece
(train draw, test draw, dequantisation noise, split) uses its own torch.Generator seeded from
(seed, stream), so changing n_train does not change the test set, and so on.

Kinds:

- ``gmm``: the Gaussian-mixture teacher of Carbone et al. (PAPERS.md §1.5): x in R^d, d = 50,
  unit-variance modes at -10 e1 and 6 e1 with masses 1/4 and 3/4. ``teacher`` holds the exact
  density. float64 by default, as the official code (GMM_code/GMM.py) runs.
- ``toy2d``: ``8gaussians``, ``rings``, ``checkerboard`` in the plane. ``teacher`` holds their
  exact log-density and an exact sampler (for grid divergences against a large fresh sample).
- ``image``: ``digits`` (sklearn, bundled), ``mnist`` and ``cifar10`` (read from data_dir).
  Pixels are dequantised, (v + u) / levels with u ~ U[0, 1), then scaled to [-1, 1), the range
  the Langevin samplers clamp to (``box`` = (-1, 1)).
"""
from __future__ import annotations

import gzip
import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from models import GaussianMixture2D, eight_gaussians

DATASETS = ("gmm", "8gaussians", "rings", "checkerboard", "digits", "mnist", "cifar10")

_LOG_2PI = math.log(2.0 * math.pi)

# Random streams, one per random piece of a dataset (see _gen).
_TRAIN, _TEST, _DEQUANT_TRAIN, _DEQUANT_TEST, _SPLIT = range(5)


@dataclass
class Dataset:
    """A loaded dataset.

    name:        one of DATASETS.
    train:       [N, *shape] tensor. test: [M, *shape] tensor, same dtype.
    shape:       per-example shape: (50,) for gmm, (2,) for the toys, (64,) for digits (flat),
                 (1, 28, 28) for mnist, (3, 32, 32) for cifar10.
    kind:        "gmm", "toy2d" or "image".
    box:         (lo, hi) range of every coordinate of the data, for clamping and uniform-noise
                 initialisation; None for gmm (unbounded).
    image_shape: (C, H, W) for kind "image" ((1, 8, 8) for digits, whose `shape` is flat), else None.
    teacher:     the exact data law where there is one, else None.
                 gmm: {"means": [2, d], "masses": [2], "log_z": float, "energy": callable,
                 "log_prob": callable, "sample": callable}; toy2d: {"log_prob", "sample"}.
                 energy(x [N, d]) -> U_T [N] with p_T = exp(-U_T) / exp(log_z);
                 log_prob(x) -> [N] normalised log-density; sample(n, generator) -> [n, d].
    train_labels, test_labels: int64 [N] / [M] class labels where the source has them, else None.
    """

    name: str
    train: torch.Tensor
    test: torch.Tensor
    shape: tuple
    kind: str
    box: Optional[tuple[float, float]]
    image_shape: Optional[tuple] = None
    teacher: Optional[dict] = None
    train_labels: Optional[torch.Tensor] = field(default=None, repr=False)
    test_labels: Optional[torch.Tensor] = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        """Number of coordinates per example (prod(shape))."""
        return math.prod(self.shape)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, kind={self.kind!r}, train={list(self.train.shape)}, "
            f"test={list(self.test.shape)}, dtype={self.train.dtype}, box={self.box}, "
            f"image_shape={self.image_shape})"
        )


def _gen(seed: int, stream: int) -> torch.Generator:
    """An independent generator per (seed, stream): SeedSequence mixes the pair, so seed 1 stream 0
    and seed 0 stream 1 do not collide as seed + stream would."""
    state = np.random.SeedSequence([int(seed), int(stream)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def load(
    name: str,
    *,
    seed: int = 0,
    data_dir: Optional[Union[str, os.PathLike]] = None,
    n_train: Optional[int] = None,
    dim: Optional[int] = None,
    dtype: Optional[torch.dtype] = None,
    n_test: Optional[int] = None,
) -> Dataset:
    """Load dataset `name` (one of DATASETS), deterministically given `seed`.

    n_train: number of training examples (gmm and toys: how many to draw, default 10^4; images:
             keep the first n_train of the fixed training split). n_test likewise for the test
             set (gmm: default = n_train, toys: 2000, images: the whole test split).
    dim:     gmm only, the dimension d (default 50).
    dtype:   default torch.float32, except gmm: float64 (the official GMM code runs float64;
             the energies at |x| ~ 10 in d = 50 are ~1e3, where float32 loses the exact-CE
             digits). An explicit dtype always wins.
    data_dir: folder holding the mnist / cifar10 files (never downloaded).
    """
    if name not in DATASETS:
        raise ValueError(f"load: unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    if dim is not None and name != "gmm":
        raise ValueError(f"load: dim is only for 'gmm' (the others have a fixed shape), got dim={dim} for {name!r}")
    for arg, v in (("n_train", n_train), ("n_test", n_test), ("dim", dim)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"load: {arg} must be an int >= 1, got {v!r}")
    if name == "gmm":
        return _gmm(seed, n_train, n_test, dim or 50, dtype or torch.float64)
    dtype = dtype or torch.float32
    if name in ("8gaussians", "rings", "checkerboard"):
        return _toy(name, seed, n_train or 10_000, n_test or 2000, dtype)
    if name == "digits":
        return _digits(seed, n_train, n_test, dtype)
    if name == "mnist":
        return _mnist(seed, data_dir, n_train, n_test, dtype)
    return _cifar10(seed, data_dir, n_train, n_test, dtype)


# --------------------------------------------------------------------------------------------
# gmm: Carbone et al.'s teacher
# --------------------------------------------------------------------------------------------

GMM_TEACHER_E1 = (-10.0, 6.0)  # mode positions along e1
GMM_TEACHER_MASSES = (0.25, 0.75)


def gmm_teacher_energy(x: torch.Tensor, means: torch.Tensor, masses: torch.Tensor) -> torch.Tensor:
    """U_T(x) = -log sum_i m_i exp(-|x - mu_i|^2 / 2), [N] for x [N, d]; the teacher density is
    exp(-U_T) / (2 pi)^{d/2} (the masses sum to 1). logsumexp keeps it finite at |x| ~ 10."""
    d2 = (x[:, None, :] - means.to(x)[None]).pow(2).sum(-1)  # [N, K]
    return -torch.logsumexp(torch.log(masses.to(x))[None] - 0.5 * d2, dim=1)


def gmm_sample(
    n: int, means: torch.Tensor, masses: torch.Tensor, generator: Optional[torch.Generator] = None,
    *, exact_counts: bool = True,
) -> torch.Tensor:
    """n draws [n, d] from the teacher. exact_counts=True (the official code's way): exactly
    floor(n * m_0) from the first mode, the rest from the second (K = 2), then shuffled;
    False: modes drawn i.i.d. from the masses."""
    k, d = means.shape
    if exact_counts:
        if k != 2:
            raise ValueError("gmm_sample: exact_counts needs K = 2 modes")
        n0 = int(math.floor(n * float(masses[0])))
        idx = torch.cat([torch.zeros(n0, dtype=torch.long), torch.ones(n - n0, dtype=torch.long)])
        idx = idx[torch.randperm(n, generator=generator)]
    else:
        idx = torch.multinomial(masses.double(), n, replacement=True, generator=generator)
    eps = torch.randn(n, d, generator=generator, dtype=torch.float64)
    return (means.double()[idx] + eps).to(means.dtype)


def _gmm(seed: int, n_train: Optional[int], n_test: Optional[int], d: int, dtype: torch.dtype) -> Dataset:
    n_train = n_train or 10_000
    n_test = n_test or n_train  # "another independent draw of the same size"
    means = torch.zeros(2, d, dtype=dtype)
    means[:, 0] = torch.tensor(GMM_TEACHER_E1, dtype=dtype)
    masses = torch.tensor(GMM_TEACHER_MASSES, dtype=dtype)
    # The test set is drawn the same way (exactly floor(M/4) in the first mode): a stratified
    # draw, which lowers the variance of the KL / CE estimates on it without biasing them
    # (mode membership of the teacher is exactly what we want the estimates to weight by).
    train = gmm_sample(n_train, means, masses, _gen(seed, _TRAIN))
    test = gmm_sample(n_test, means, masses, _gen(seed, _TEST))
    log_z = 0.5 * d * _LOG_2PI

    def energy(x):
        return gmm_teacher_energy(x.reshape(x.shape[0], -1), means, masses)

    def log_prob(x):
        return -energy(x) - log_z

    def sample(n, generator=None):
        return gmm_sample(n, means, masses, generator, exact_counts=False)

    teacher = dict(means=means, masses=masses, log_z=log_z, energy=energy, log_prob=log_prob, sample=sample)
    return Dataset("gmm", train, test, (d,), "gmm", None, None, teacher)


# --------------------------------------------------------------------------------------------
# 2-D toys (after FFJORD's toy_data.py)
# --------------------------------------------------------------------------------------------

TOY_BOX = (-4.0, 4.0)  # FFJORD plots its toys on [-4, 4]^2; every toy below lies inside it
RINGS_RADII = (0.75, 1.5, 2.25, 3.0)  # FFJORD: radii 0.25..1 (x 3.0), equal counts per ring
RINGS_STD = 0.08


def _eight_gaussians_target() -> GaussianMixture2D:
    # models/toy.py's target (radius 2, std 0.2). FFJORD's version has radius 4 / sqrt(2) = 2.83
    # and std 0.5 / sqrt(2) = 0.35, the same shape scaled by 1.41; we keep the demo's scale so
    # that the trainers and the sampler demo share one target.
    return eight_gaussians(dtype=torch.float64)


def _rings_log_prob(x: torch.Tensor) -> torch.Tensor:
    """Exact log-density [N] of the rings law: a ring of radius R blurred by N(0, s^2 I) has
    density exp(-(r^2 + R^2) / (2 s^2)) I0(r R / s^2) / (2 pi s^2); the rings have equal weight.
    i0e(z) = exp(-z) I0(z) keeps it finite: log I0(z) = log i0e(z) + z."""
    r = x.double().norm(dim=1, keepdim=True)  # [N, 1]
    radii = torch.tensor(RINGS_RADII, dtype=torch.float64)[None]  # [1, 4]
    s2 = RINGS_STD**2
    z = r * radii / s2
    comp = -((r - radii) ** 2) / (2 * s2) + torch.log(torch.special.i0e(z)) - math.log(2 * math.pi * s2)
    return (torch.logsumexp(comp, dim=1) - math.log(len(RINGS_RADII))).to(x.dtype)


def _rings_sample(n: int, generator=None, dtype=torch.float32) -> torch.Tensor:
    # FFJORD puts equal counts on the four rings at equally spaced angles; we draw ring and angle
    # at random (the same law, i.i.d. points, so histograms and the exact density agree).
    k = torch.randint(len(RINGS_RADII), (n,), generator=generator)
    ang = torch.rand(n, generator=generator, dtype=torch.float64) * (2 * math.pi)
    rad = torch.tensor(RINGS_RADII, dtype=torch.float64)[k]
    x = torch.stack([rad * torch.cos(ang), rad * torch.sin(ang)], dim=1)
    return (x + RINGS_STD * torch.randn(n, 2, generator=generator, dtype=torch.float64)).to(dtype)


def _checkerboard_sample(n: int, generator=None, dtype=torch.float32) -> torch.Tensor:
    # FFJORD: x1 ~ U[-2, 2), x2 ~ U[0, 1) - 2 * Bernoulli + (floor(x1) mod 2), then everything x 2:
    # uniform on the 8 "black" unit-2 squares of a 4 x 4 board on [-4, 4]^2.
    x1 = torch.rand(n, generator=generator, dtype=torch.float64) * 4 - 2
    x2 = torch.rand(n, generator=generator, dtype=torch.float64) - torch.randint(2, (n,), generator=generator) * 2
    x2 = x2 + torch.remainder(torch.floor(x1), 2)
    return (torch.stack([x1, x2], dim=1) * 2).to(dtype)


def _checkerboard_log_prob(x: torch.Tensor) -> torch.Tensor:
    """log(1/32) on the black squares (8 squares of area 4), -inf elsewhere."""
    c = torch.floor(x.double() / 2)  # cell indices in -2..1
    inside = ((x >= -4) & (x < 4)).all(dim=1)
    black = torch.remainder(c[:, 0] - c[:, 1], 2) == 0  # FFJORD's x2 cell has the parity of x1's
    out = torch.full((x.shape[0],), -math.inf, dtype=torch.float64)
    out[inside & black] = -math.log(32.0)
    return out.to(x.dtype)


def _toy(name: str, seed: int, n_train: int, n_test: int, dtype: torch.dtype) -> Dataset:
    if name == "8gaussians":
        target = _eight_gaussians_target()

        def sample(n, generator=None):
            return target.sample_exact(n, generator).to(dtype)

        def log_prob(x):
            return target.log_prob(x.double()).to(x.dtype)

    elif name == "rings":
        def sample(n, generator=None):
            return _rings_sample(n, generator, dtype)

        log_prob = _rings_log_prob
    else:
        def sample(n, generator=None):
            return _checkerboard_sample(n, generator, dtype)

        log_prob = _checkerboard_log_prob
    train = sample(n_train, _gen(seed, _TRAIN))
    test = sample(n_test, _gen(seed, _TEST))
    return Dataset(name, train, test, (2,), "toy2d", TOY_BOX, None, dict(log_prob=log_prob, sample=sample))


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------

def _dequantise(v: np.ndarray, levels: int, generator: torch.Generator, dtype) -> torch.Tensor:
    """Integer pixels v in 0..levels-1 -> (v + u) / levels * 2 - 1 in [-1, 1), u ~ U[0, 1)."""
    t = torch.from_numpy(np.ascontiguousarray(v)).to(torch.float64)
    u = torch.rand(t.shape, generator=generator, dtype=torch.float64)
    # the cast to float32 rounds values within 2^-25 of 1 up to 1.0 (14 of 4e6 pixels at 255):
    # clamp to the largest value below 1 of the target dtype, so the interval stays half-open
    below_one = torch.nextafter(torch.ones((), dtype=dtype), torch.zeros((), dtype=dtype)).item()
    return ((t + u) / levels * 2 - 1).to(dtype).clamp_(max=below_one)


def _digits(seed: int, n_train: Optional[int], n_test: Optional[int], dtype) -> Dataset:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    d = load_digits()
    images = d.images.astype(np.int64)  # [1797, 8, 8], values 0..16 (17 levels)
    labels = torch.from_numpy(d.target.astype(np.int64))
    n = images.shape[0]
    perm = torch.randperm(n, generator=_gen(seed, _SPLIT))
    n_te = 300  # a fixed 1497 / 300 split
    te, tr = perm[:n_te], perm[n_te:]
    x = images.reshape(n, 64)
    train = _dequantise(x[tr.numpy()], 17, _gen(seed, _DEQUANT_TRAIN), dtype)
    test = _dequantise(x[te.numpy()], 17, _gen(seed, _DEQUANT_TEST), dtype)
    ytr, yte = labels[tr], labels[te]
    train, ytr = train[:n_train], ytr[:n_train]
    test, yte = test[:n_test], yte[:n_test]
    return Dataset("digits", train, test, (64,), "image", (-1.0, 1.0), (1, 8, 8), None, ytr, yte)


def _find(folder: Path, fname: str, what: str, where_to_get: str) -> Path:
    """folder/fname or folder/fname.gz, else FileNotFoundError naming both and where to get them."""
    for p in (folder / fname, folder / (fname + ".gz")):
        if p.is_file():
            return p
    raise FileNotFoundError(
        f"{what}: expected {folder / fname} (or {fname}.gz) and found neither; "
        f"download it from {where_to_get} and pass --data-dir (load(..., data_dir=...)). "
        "Nothing is downloaded automatically."
    )


def _data_dir(name: str, data_dir, files: str, where_to_get: str) -> Path:
    if data_dir is None:
        raise FileNotFoundError(
            f"{name}: no data_dir given; expected a folder holding {files}; download them from "
            f"{where_to_get} and pass --data-dir (load(..., data_dir=...)). Nothing is downloaded automatically."
        )
    return Path(data_dir).expanduser()


MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/ (or http://yann.lecun.com/exdb/mnist/)"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (unpack it in data_dir)"


def read_idx(path: Union[str, Path]) -> np.ndarray:
    """An IDX file (MNIST's format; gzipped if the name ends in .gz) as a numpy array.
    Header: two zero bytes, a type code (0x08 = uint8), the number of dimensions, then each
    dimension as a big-endian uint32."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # not gzip (BadGzipFile is an OSError), truncated gzip
        raise ValueError(f"read_idx: {path} cannot be read ({type(e).__name__}: {e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"read_idx: {path} is not a uint8 IDX file (header {raw[:4]!r})")
    nd = raw[3]
    if len(raw) < 4 + 4 * nd:
        raise ValueError(f"read_idx: {path} ends inside its header ({len(raw)} bytes, {nd} dimensions)")
    dims = np.frombuffer(raw, dtype=">u4", count=nd, offset=4).astype(np.int64)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * nd)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"read_idx: {path} holds {data.size} values, its header says {tuple(dims)}")
    return data.reshape(tuple(dims)).copy()  # frombuffer views are read-only


def _mnist(seed: int, data_dir, n_train, n_test, dtype) -> Dataset:
    folder = _data_dir("mnist", data_dir, "train-images-idx3-ubyte and t10k-images-idx3-ubyte (optionally .gz)", MNIST_URL)
    xs, ys = [], []
    for prefix in ("train", "t10k"):
        xs.append(read_idx(_find(folder, f"{prefix}-images-idx3-ubyte", "mnist", MNIST_URL)))
        lab = [folder / f"{prefix}-labels-idx1-ubyte", folder / f"{prefix}-labels-idx1-ubyte.gz"]
        lab = [p for p in lab if p.is_file()]  # labels are optional (unconditional training)
        ys.append(torch.from_numpy(read_idx(lab[0]).astype(np.int64)) if lab else None)
    (xtr, xte), (ytr, yte) = xs, ys
    for prefix, x, y in (("train", xtr, ytr), ("t10k", xte, yte)):
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise ValueError(f"mnist: {folder}/{prefix}-images-idx3-ubyte holds shape {x.shape}, expected [N, 28, 28]")
        if y is not None and (y.dim() != 1 or y.shape[0] != x.shape[0]):
            raise ValueError(f"mnist: {folder}/{prefix}-labels-idx1-ubyte holds {tuple(y.shape)} labels for "
                             f"{x.shape[0]} images")
    xtr, xte = xtr[:n_train, None], xte[:n_test, None]  # [N, 1, 28, 28]
    train = _dequantise(xtr, 256, _gen(seed, _DEQUANT_TRAIN), dtype)
    test = _dequantise(xte, 256, _gen(seed, _DEQUANT_TEST), dtype)
    ytr = ytr[:n_train] if ytr is not None else None
    yte = yte[:n_test] if yte is not None else None
    shape = tuple(train.shape[1:])
    return Dataset("mnist", train, test, shape, "image", (-1.0, 1.0), shape, None, ytr, yte)


def _cifar10(seed: int, data_dir, n_train, n_test, dtype) -> Dataset:
    root = _data_dir("cifar10", data_dir, "cifar-10-batches-py/data_batch_1..5 and test_batch", CIFAR_URL)
    folder = root / "cifar-10-batches-py"

    def batch(fname):
        p = folder / fname
        if not p.is_file():
            raise FileNotFoundError(
                f"cifar10: expected {p} and did not find it; download {CIFAR_URL}, "
                "and pass its parent folder as --data-dir (load(..., data_dir=...)). Nothing is downloaded automatically."
            )
        try:
            with open(p, "rb") as f:
                d = pickle.load(f, encoding="bytes")  # the python-version pickles have bytes keys
            data, labels = np.asarray(d[b"data"], dtype=np.uint8), np.asarray(d[b"labels"], dtype=np.int64)
        except Exception as e:  # truncated or foreign pickles: UnpicklingError, EOFError, KeyError, ...
            raise ValueError(f"cifar10: {p} is not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
            raise ValueError(f"cifar10: {p} holds data {data.shape} and labels {labels.shape}, expected "
                             "[N, 3072] and [N]")
        return data.reshape(-1, 3, 32, 32), labels  # rows are R, G, B planes

    parts = [batch(f"data_batch_{i}") for i in range(1, 6)]
    xtr = np.concatenate([p[0] for p in parts])[:n_train]
    ytr = torch.from_numpy(np.concatenate([p[1] for p in parts])[:n_train])
    xte, yte = batch("test_batch")
    xte, yte = xte[:n_test], torch.from_numpy(yte[:n_test])
    train = _dequantise(xtr, 256, _gen(seed, _DEQUANT_TRAIN), dtype)
    test = _dequantise(xte, 256, _gen(seed, _DEQUANT_TEST), dtype)
    return Dataset("cifar10", train, test, (3, 32, 32), "image", (-1.0, 1.0), (3, 32, 32), None, ytr, yte)
