"""train/data.py: every dataset's shapes, ranges, determinism, and the file readers (on tiny
synthetic MNIST / CIFAR-10 files written here; nothing is downloaded)."""
import gzip
import math
import pickle
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.data import DATASETS, Dataset, load, read_idx  # noqa: E402


def test_unknown_name_lists_the_names():
    with pytest.raises(ValueError) as e:
        load("nope")
    for name in DATASETS:
        assert name in str(e.value)


def test_gmm_teacher_and_counts():
    ds = load("gmm")
    assert isinstance(ds, Dataset) and ds.dim == 50
    assert ds.kind == "gmm" and ds.shape == (50,) and ds.box is None and ds.image_shape is None
    assert ds.train.shape == (10_000, 50) and ds.test.shape == (10_000, 50)
    assert ds.train.dtype == torch.float64  # default for gmm, as the official code
    # exactly floor(N / 4) points in the first mode (at -10 e1): the modes are 16 std apart, so
    # the sign of x_1 - (-2) classifies every point.
    assert int((ds.train[:, 0] < -2).sum()) == 2500
    assert int((ds.test[:, 0] < -2).sum()) == 2500
    t = ds.teacher
    assert t["means"][:, 0].tolist() == [-10.0, 6.0] and float(t["means"][:, 1:].abs().max()) == 0
    assert t["masses"].tolist() == [0.25, 0.75]
    assert t["log_z"] == pytest.approx(25 * math.log(2 * math.pi))
    # the teacher's entropy: modes 16 std apart barely overlap, so H = H(masses) + (d/2) log(2 pi e);
    # the sample mean of -log p_T over 10^4 points has std sqrt(d/2)/100 = 0.05.
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) + 25 * math.log(2 * math.pi * math.e)
    assert float(-t["log_prob"](ds.test).mean()) == pytest.approx(h, abs=0.25)
    # train and test are independent draws, and the data is a function of the seed
    assert not torch.equal(ds.train, ds.test)
    assert torch.equal(load("gmm", n_train=100).train, load("gmm", n_train=100).train)
    assert not torch.equal(load("gmm", n_train=100).train, load("gmm", n_train=100, seed=1).train)


def test_gmm_overrides():
    ds = load("gmm", dim=3, n_train=101, dtype=torch.float32)
    assert ds.train.shape == (101, 3) and ds.test.shape == (101, 3) and ds.shape == (3,)
    assert ds.train.dtype == torch.float32 and int((ds.train[:, 0] < -2).sum()) == 25
    with pytest.raises(ValueError, match="dim"):
        load("digits", dim=3)


@pytest.mark.parametrize("name", ["8gaussians", "rings", "checkerboard"])
def test_toys(name):
    ds = load(name)
    assert ds.kind == "toy2d" and ds.shape == (2,) and ds.train.shape == (10_000, 2)
    assert ds.test.shape == (2000, 2) and ds.train.dtype == torch.float32
    lo, hi = ds.box
    assert float(ds.train.min()) > lo and float(ds.train.max()) < hi
    # the exact log-density is finite on the data and normalised: a grid integral over the box
    lp = ds.teacher["log_prob"](ds.train)
    assert bool(torch.isfinite(lp).all())
    n = 400
    g = torch.linspace(lo, hi, n, dtype=torch.float64)
    pts = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    mass = ds.teacher["log_prob"](pts).exp().sum() * (g[1] - g[0]) ** 2
    assert float(mass) == pytest.approx(1.0, abs=0.03)
    assert torch.equal(load(name, n_train=50).train, load(name, n_train=50).train)


def test_toy_shapes_match_their_definitions():
    r = load("rings").train.norm(dim=1)
    # every point lies within 4 std (0.32) of one of the radii 0.75, 1.5, 2.25, 3
    radii = torch.tensor([0.75, 1.5, 2.25, 3.0])
    assert float((r[:, None] - radii).abs().min(dim=1).values.max()) < 0.4
    c = torch.floor(load("checkerboard").train / 2)
    assert bool((torch.remainder(c[:, 0] - c[:, 1], 2) == 0).all())  # only the black squares
    x = load("8gaussians").train
    assert float(x.norm(dim=1).mean()) == pytest.approx(2.0, abs=0.05)


def test_digits():
    ds = load("digits")
    assert ds.kind == "image" and ds.shape == (64,) and ds.image_shape == (1, 8, 8)
    assert ds.train.shape == (1497, 64) and ds.test.shape == (300, 64) and ds.box == (-1.0, 1.0)
    assert float(ds.train.min()) >= -1 and float(ds.train.max()) < 1
    # dequantised: (v + u) / 17 * 2 - 1, so floor((x + 1) / 2 * 17) recovers the integer pixel
    v = torch.floor((ds.train.double() + 1) / 2 * 17)
    assert float(v.min()) == 0 and float(v.max()) == 16
    assert ds.train_labels.shape == (1497,) and ds.test_labels.shape == (300,)
    assert torch.equal(ds.train, load("digits").train)
    assert not torch.equal(ds.train, load("digits", seed=1).train)
    assert load("digits", n_train=100).train.shape == (100, 64)


# ------------------------------------------------------------------ files on disk (synthetic)

def _write_idx(path: Path, arr: np.ndarray, gz: bool = False):
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    raw = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def test_mnist_from_tiny_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    xtr = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    xte = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte", xtr)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", xte, gz=True)  # .gz is read too
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(5))
    assert np.array_equal(read_idx(tmp_path / "train-images-idx3-ubyte"), xtr)
    ds = load("mnist", data_dir=tmp_path)
    assert ds.shape == (1, 28, 28) and ds.image_shape == (1, 28, 28) and ds.kind == "image"
    assert ds.train.shape == (5, 1, 28, 28) and ds.test.shape == (3, 1, 28, 28)
    # the integer pixels survive the dequantisation: floor((x + 1) / 2 * 256) == v
    v = torch.floor((ds.train.double() + 1) / 2 * 256).to(torch.uint8)
    assert np.array_equal(v[:, 0].numpy(), xtr)
    assert ds.train_labels.tolist() == [0, 1, 2, 3, 4] and ds.test_labels is None


def test_mnist_missing_files_say_what_and_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="data-dir"):
        load("mnist")
    with pytest.raises(FileNotFoundError) as e:
        load("mnist", data_dir=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "train-images-idx3-ubyte") in msg and "download" in msg


def test_cifar10_from_tiny_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        batches[name] = x
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": x, b"labels": [1, 7]}, f)
    ds = load("cifar10", data_dir=tmp_path)
    assert ds.shape == (3, 32, 32) and ds.train.shape == (10, 3, 32, 32) and ds.test.shape == (2, 3, 32, 32)
    v = torch.floor((ds.train.double() + 1) / 2 * 256).to(torch.uint8)
    assert np.array_equal(v[0].reshape(-1).numpy(), batches["data_batch_1"][0])  # CHW row layout
    assert ds.train_labels.tolist() == [1, 7] * 5
    (folder / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        load("cifar10", data_dir=tmp_path)


def test_damaged_image_files_are_named(tmp_path):
    """A damaged file is an error naming it (they were numpy's 'buffer is smaller than requested
    size', gzip's 'Not a gzipped file', a bare EOFError, UnpicklingError or KeyError), and
    MNIST labels that do not match the images are refused (4 images with 3 labels loaded)."""
    xtr = np.zeros((4, 28, 28), dtype=np.uint8)
    good = tmp_path / "good"
    good.mkdir()
    _write_idx(good / "train-images-idx3-ubyte", xtr)
    _write_idx(good / "t10k-images-idx3-ubyte", xtr[:2])
    cases = {
        "header": lambda d: (d / "train-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3, 0, 0])),
        "gz": lambda d: ((d / "train-images-idx3-ubyte").unlink(), (d / "train-images-idx3-ubyte.gz").write_bytes(b"no")),
        "truncated gz": lambda d: ((d / "train-images-idx3-ubyte").unlink(), _write_idx(d / "train-images-idx3-ubyte", xtr, gz=True),
                                   (d / "train-images-idx3-ubyte.gz").write_bytes((d / "train-images-idx3-ubyte.gz").read_bytes()[:40])),
        "labels": lambda d: _write_idx(d / "train-labels-idx1-ubyte", np.arange(3)),
        "1-d images": lambda d: _write_idx(d / "train-images-idx3-ubyte", np.zeros(4)),
    }
    for name, damage in cases.items():
        d = tmp_path / name.replace(" ", "_")
        shutil.copytree(good, d)
        damage(d)
        with pytest.raises(ValueError, match=rf"{re.escape(str(d))}/train-"):
            load("mnist", data_dir=d)
    folder = tmp_path / "c" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, content in enumerate((b"\x80\x04garbage", pickle.dumps({b"labels": [1]}),
                                 pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [1, 2]}))):
        (folder / "data_batch_1").write_bytes(content)
        with pytest.raises(ValueError, match=r"cifar10: .*data_batch_1 "):
            load("cifar10", data_dir=tmp_path / "c")


def test_dequantised_pixels_stay_below_one():
    """(255 + u) / 128 - 1 rounds to 1.0 in float32 for u within 2^-18 of 1: [-1, 1) is promised."""
    from train.data import _dequantise

    g = torch.Generator().manual_seed(0)
    v = _dequantise(np.full((4_000_000,), 255, dtype=np.uint8), 256, g, torch.float32)
    assert float(v.max()) < 1.0 and float(v.min()) >= 255 / 128 - 1
