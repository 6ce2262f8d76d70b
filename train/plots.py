"""Pictures for the trainers (matplotlib, Agg backend: no display needed). Every function writes
one PNG, creating its folder, and returns its path.

    save_samples(path, x, data)                 samples next to the data, by dataset kind
    save_energy_landscape(path, energy, data)   exp(-U) on a grid (2-D) or U along e1 (gmm)
    save_traces(path, {"ess": [...], ...})      one panel per series vs iteration
    save_side_by_side(path, {"init": x0, "refined": x1}, data)
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display on the training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

PathLike = Union[str, Path]
_MAX_SCATTER = 5000  # points per scatter panel (the first ones): more only blurs the picture
_GMM_T = (-15.0, 12.0)  # the e1 range shown for the GMM (teacher modes at -10 and 6)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy()


def _save(fig, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def image_grid(x: torch.Tensor, image_shape: Sequence[int], n: int = 64) -> np.ndarray:
    """The first n images of x [N, *] (values in [-1, 1]) tiled into one [rows*H, cols*W(, C)]
    array in [0, 1], with a 1-pixel gap, for imshow."""
    c, h, w = image_shape
    x = x[:n].detach().to("cpu", torch.float64).reshape(-1, c, h, w).clamp(-1, 1)
    x = (x + 1) / 2
    k = x.shape[0]
    cols = int(math.ceil(math.sqrt(k))) if k else 1
    rows = int(math.ceil(k / cols)) if k else 1
    out = np.ones((rows * (h + 1) - 1, cols * (w + 1) - 1, c))
    for i in range(k):
        r, q = divmod(i, cols)
        out[r * (h + 1):r * (h + 1) + h, q * (w + 1):q * (w + 1) + w] = x[i].permute(1, 2, 0).numpy()
    return out[..., 0] if c == 1 else out


def _panel(ax, x: torch.Tensor, data, title: str, weights: Optional[torch.Tensor] = None, with_data: bool = True):
    """Draw samples x on one axis, by data.kind."""
    if data.kind == "gmm":
        bins = np.linspace(*_GMM_T, 109)
        w = None if weights is None else _np(weights)
        if with_data:
            ax.hist(_np(data.test[:, 0]), bins=bins, density=True, alpha=0.4, color="k", label="data")
        ax.hist(_np(x.reshape(x.shape[0], -1)[:, 0]), bins=bins, weights=w, density=True, histtype="step",
                lw=1.5, color="C0", label="samples" if weights is None else "weighted samples")
        ax.set_xlabel("x_1")
        ax.legend(fontsize=8)
    elif data.kind == "toy2d":
        lo, hi = data.box
        if with_data:
            d = _np(data.test[:_MAX_SCATTER])
            ax.scatter(d[:, 0], d[:, 1], s=1, c="0.7", label="data")
        s = _np(x[:_MAX_SCATTER])
        ax.scatter(s[:, 0], s[:, 1], s=1, c="C0", label="samples")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
    else:
        img = image_grid(x, data.image_shape)
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.axis("off")
    ax.set_title(title, fontsize=10)


def save_samples(path: PathLike, x: torch.Tensor, data, title: Optional[str] = None, *,
                 weights: Optional[torch.Tensor] = None) -> Path:
    """Samples x [N, *shape] against the data. gmm: histogram of the first coordinate over the
    data's (weights [N]: the walkers' weights, e.g. softmax of the Jarzynski log-weights);
    toy2d: the samples scattered over the data, and the data alone beside them;
    image: a grid of the first 64 samples next to one of 64 test images."""
    if data.kind == "gmm":
        fig, ax = plt.subplots(figsize=(6, 3.5))
        _panel(ax, x, data, title or "samples", weights)
    else:
        fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
        _panel(axes[0], x, data, title or "samples", weights, with_data=False)
        _panel(axes[1], data.test, data, "data", with_data=False)
    return _save(fig, path)


@torch.no_grad()
def save_energy_landscape(path: PathLike, energy, data, bounds: Optional[Sequence[float]] = None, n: int = 200,
                          title: Optional[str] = None) -> Path:
    """2-D (toy2d): the model density exp(-U) normalised on an n x n grid over bounds (default
    data.box), as an image, with test points overlaid. gmm: U(t e1) for t in [-15, 12] against
    the teacher's U_T, both shifted to min 0 (energies are defined up to a constant)."""
    from .metrics import device_dtype

    device, dtype = device_dtype(energy)
    if data.kind == "gmm":
        t = torch.linspace(*_GMM_T, 541, dtype=torch.float64)
        pts = torch.zeros(len(t), data.dim, dtype=torch.float64)
        pts[:, 0] = t
        u = _np(energy(pts.to(device=device, dtype=dtype)))
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(_np(t), u - u.min(), label="model U(t e1)")
        ut = _np(data.teacher["energy"](pts.to(data.teacher["means"].dtype)))
        ax.plot(_np(t), ut - ut.min(), "k--", label="teacher")
        ax.set_xlabel("t")
        ax.set_ylim(-1, max(60.0, float(np.percentile(ut - ut.min(), 50))))
        ax.legend(fontsize=8)
    elif data.kind == "toy2d":
        lo, hi = (data.box if bounds is None else bounds)
        c = torch.linspace(lo, hi, n, dtype=torch.float64)
        gy, gx = torch.meshgrid(c, c, indexing="ij")
        pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1).to(device=device, dtype=dtype)
        neg_u = -energy(pts).double().cpu().reshape(n, n)
        p = torch.softmax(neg_u.reshape(-1), 0).reshape(n, n) / float(c[1] - c[0]) ** 2
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.imshow(_np(p), origin="lower", extent=(lo, hi, lo, hi), cmap="viridis")
        d = _np(data.test[:1000])
        ax.scatter(d[:, 0], d[:, 1], s=0.5, c="w", alpha=0.5)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    else:
        raise ValueError(f"save_energy_landscape: needs a gmm or toy2d dataset, {data.name!r} is {data.kind!r}")
    ax.set_title(title or "energy landscape", fontsize=10)
    return _save(fig, path)


def save_traces(path: PathLike, history: Mapping[str, Sequence[float]], *, title: Optional[str] = None,
                x=None, overlay: Mapping[str, Sequence[str]] = ()) -> Path:
    """One panel per series of `history` (name -> values per logged iteration, e.g. "ess",
    "log_z", "loss"), stacked, sharing the x axis: `x` (e.g. the logged iteration numbers), a
    mapping name -> x of each series (runs logged at different iterations), or the index. `overlay` draws several series in one panel with a legend, e.g.
    {"cross-entropy": ("ce_exact", "ce_estimate")}. Non-finite values are left as gaps."""
    overlay = {k: [n for n in v if n in history] for k, v in dict(overlay).items()}
    overlay = {k: v for k, v in overlay.items() if v}
    inside = {n for v in overlay.values() for n in v}
    panels = [(n, [n]) for n in history if n not in inside] + list(overlay.items())
    if not panels:
        raise ValueError("save_traces: history is empty")
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 1.8 * len(panels) + 0.5), sharex=True, squeeze=False)
    for ax, (label, names) in zip(axes[:, 0], panels):
        for name in names:
            v = np.asarray([float(a) for a in history[name]], dtype=np.float64)
            xn = x.get(name) if isinstance(x, Mapping) else x
            xs = np.arange(len(v)) if xn is None else np.asarray(xn, dtype=np.float64)[: len(v)]
            v = v[: len(xs)]
            ax.plot(xs, v, lw=1, label=name if len(names) > 1 else None)
        if len(names) > 1:
            ax.legend(fontsize=8)
        ax.set_ylabel(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("iteration")
    if title:
        axes[0, 0].set_title(title, fontsize=10)
    return _save(fig, path)


def save_side_by_side(path: PathLike, panels: Mapping[str, torch.Tensor], data, *, title: Optional[str] = None) -> Path:
    """Several sample sets side by side, one panel each, titled by their key (e.g. {"init": x0,
    "refined": x1, "data": data.test}): image grids, scatters (over the data in grey) or e1
    histograms (over the data's), by data.kind."""
    if not panels:
        raise ValueError("save_side_by_side: no panels")
    k = len(panels)
    fig, axes = plt.subplots(1, k, figsize=(4.5 * k, 4.5 if data.kind != "gmm" else 3.5), squeeze=False)
    for ax, (name, x) in zip(axes[0], panels.items()):
        _panel(ax, x, data, name)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
