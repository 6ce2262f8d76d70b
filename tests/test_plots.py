"""train/plots.py: every picture function writes a non-empty PNG for every dataset kind it takes."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import GMMStudent, MLPEnergy, eight_gaussians  # noqa: E402
from train.data import load  # noqa: E402
from train.plots import (  # noqa: E402
    image_grid,
    save_energy_landscape,
    save_samples,
    save_side_by_side,
    save_traces,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _ok(p):
    p = Path(p)
    assert p.is_file() and p.stat().st_size > 1000 and p.read_bytes()[:8] == PNG
    return p


@pytest.fixture(scope="module")
def sets():
    return {
        "gmm": load("gmm", n_train=500, dim=5),
        "toy2d": load("8gaussians", n_train=500, n_test=500),
        "image": load("digits", n_train=100),
    }


@pytest.mark.parametrize("kind", ["gmm", "toy2d", "image"])
def test_save_samples_and_side_by_side(tmp_path, sets, kind):
    ds = sets[kind]
    x = ds.train[:200] + 0.1 * torch.randn_like(ds.train[:200])
    _ok(save_samples(tmp_path / "a" / "samples.png", x, ds, title="t"))
    _ok(save_side_by_side(tmp_path / "side.png", {"init": x, "refined": ds.train[:200]}, ds, title="t"))
    if kind == "gmm":  # weighted walkers
        w = torch.softmax(torch.randn(200, dtype=torch.float64), 0)
        _ok(save_samples(tmp_path / "weighted.png", x, ds, weights=w))


def test_save_energy_landscape(tmp_path, sets):
    _ok(save_energy_landscape(tmp_path / "toy.png", eight_gaussians(), sets["toy2d"], n=50))
    _ok(save_energy_landscape(tmp_path / "mlp.png", MLPEnergy(2, hidden=8, depth=1), sets["toy2d"], n=50))
    _ok(save_energy_landscape(tmp_path / "gmm.png", GMMStudent(5), sets["gmm"]))
    with pytest.raises(ValueError):
        save_energy_landscape(tmp_path / "x.png", MLPEnergy(64), sets["image"])


def test_save_traces(tmp_path):
    h = {"ess": [100, 80, 60, 100], "log_z": [0.0, 0.1, float("nan"), 0.3], "loss": []}
    _ok(save_traces(tmp_path / "traces.png", h, title="run"))
    h2 = {"ce_exact": [3.0, 2.0, 1.5], "ce_estimate": [3.1, 2.2, 1.4], "ess": [1.0, 0.8, 0.9]}
    import matplotlib.pyplot as plt

    n_before = len(plt.get_fignums())
    _ok(save_traces(tmp_path / "ce.png", h2, x=[0, 10, 20], overlay={"cross-entropy": ("ce_exact", "ce_estimate")}))
    assert len(plt.get_fignums()) == n_before  # the figure is closed after saving
    with pytest.raises(ValueError, match="save_traces: history is empty"):
        save_traces(tmp_path / "none.png", {})


def test_image_grid_layout():
    x = torch.full((5, 64), -1.0)
    x[1] = 1.0
    g = image_grid(x, (1, 8, 8))
    assert g.shape == (2 * 9 - 1, 3 * 9 - 1)  # 5 images -> 2 rows of 3 tiles, 1-pixel gaps
    assert g[0, 0] == 0.0 and g[0, 9] == 1.0  # -1 -> black, +1 -> white; tile 1 is white


def test_traces_of_runs_logged_at_different_iterations(tmp_path):
    """compare --budget on gmm: the runs log different numbers of rows in equal time, and one x
    for all (the first run's 38 iterations against another's 77 rows) was a ValueError after all
    the training, before results.json was written. x may map each series to its own iterations."""
    from train import compare, plots

    p = plots.save_traces(tmp_path / "t.png", {"a": [1.0, 2.0, 3.0], "b": [1.0] * 6},
                          x={"a": [0, 10, 20], "b": [0, 4, 8, 12, 16, 20]}, overlay={"both": ("a", "b")})
    assert p.stat().st_size > 1000
    for m, n in (("pcd", 38), ("jarzynski", 77)):
        d = tmp_path / f"gmm-{m}"
        d.mkdir()
        (d / "metrics.jsonl").write_text("".join(f'{{"iter": {i}, "mode_weight_0": 0.1}}\n' for i in range(n)))
    assert compare.mode_weight_picture(tmp_path, ["pcd", "jarzynski"]).stat().st_size > 1000
