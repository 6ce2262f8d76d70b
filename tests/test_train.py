"""Trainers I (pcd, cd, jarzynski) end to end on reduced settings, and the harness's guarantees:
run-folder contents, exact resume, the Ctrl-C checkpoint, divergence handling."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import state_tensors
from train import harness
from train.__main__ import main as train_main

ROOT = Path(__file__).resolve().parents[1]

# Reduced GMM (the paper's teacher in d = 50, modes at -10 e1 and 6 e1 with masses 1/4, 3/4):
# 1000 data points and walkers, 4x the paper's learning rates, 600 iterations instead of 8000.
# At these settings the paper's picture already holds (seed 0; see test_gmm_* for the numbers).
GMM_SMALL = ["--data", "gmm", "--n-train", "1000", "--n-walkers", "1000", "--lr", "0.01", "--lr-z", "0.05",
             "--iters", "600", "--no-progress", "--no-pictures"]


def _run(args) -> int:
    return train_main([str(a) for a in args])


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def gmm_runs(tmp_path_factory):
    out = {}
    for method in ("jarzynski", "pcd"):
        d = tmp_path_factory.mktemp(method)
        assert _run([method, *GMM_SMALL, "--out", d]) == 0
        out[method] = d
    return out


def test_gmm_jarzynski_recovers_the_mode_weights(gmm_runs):
    """The paper's central result: Jarzynski training finds the 1/4 : 3/4 split (tolerance 0.05),
    and its running estimate of the cross-entropy tracks the exact one."""
    m = _metrics(gmm_runs["jarzynski"])
    w = m["mode_weights"]
    assert abs(w[0] - 0.25) < 0.05 and abs(w[1] - 0.75) < 0.05, w
    assert set(["mode_weights", "kl", "ce_estimate"]) <= set(m)
    assert abs(m["ce_estimate"] - m["ce_exact_train"]) < 1.0, (m["ce_estimate"], m["ce_exact_train"])
    # the means are still travelling at 600 iterations (e1 ~ -7.7 of -10), so KL is not yet ~0;
    # it is compared with PCD's in the next test
    assert 0 < m["kl"] < 1.0


def test_gmm_pcd_from_data_loses_the_small_mode(gmm_runs):
    """PCD walkers started from data cannot move mass between the modes: the student's weight on
    the mode at -10 e1 collapses (the paper's script ends at 0.0 : 1.0)."""
    m = _metrics(gmm_runs["pcd"])
    assert m["mode_weights"][0] < 0.15, m["mode_weights"]
    assert m["ce_estimate"] is None and m["kl"] > _metrics(gmm_runs["jarzynski"])["kl"] + 0.1


def test_run_folder_contents(gmm_runs):
    d = gmm_runs["jarzynski"]
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["method"] == "jarzynski" and cfg["data"] == "gmm" and cfg["preset"] == "paper"
    assert cfg["step_size"] == 0.1 and cfg["lr"] == 0.01 and cfg["iters"] == 600
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["iter"] == 0 and rows[-1]["iter"] == 599
    assert all(k in rows[-1] for k in ("loss", "ess", "log_z", "ce_estimate", "ce_exact", "mode_weight_0"))
    assert (d / harness.CHECKPOINT).exists()


@pytest.mark.parametrize("method", ["jarzynski", "pcd", "cd"])
def test_interrupt_and_resume_is_bit_for_bit(tmp_path, method):
    """A run stopped by Ctrl-C (the --stop-after hook takes exactly the SIGINT path) writes a
    checkpoint; --resume then ends with the same parameters, walkers and log as one straight run."""
    small = ["--data", "8gaussians", "--n-train", "500", "--iters", "30", "--batch", "64", "--neg-batch", "64",
             "--n-walkers", "128", "--k-steps", "2", "--burn-in", "5", "--log-every", "1", "--ckpt-every", "7",
             "--no-progress", "--no-pictures"]
    straight, parts = tmp_path / "straight", tmp_path / "parts"
    assert _run([method, *small, "--out", straight]) == 0
    assert _run([method, *small, "--out", parts, "--stop-after", "12"]) == 130
    assert torch.load(parts / harness.CHECKPOINT, weights_only=False)["iter"] == 12
    with pytest.raises(SystemExit, match="already holds a run"):
        _run([method, *small, "--out", parts])
    assert _run([method, *small, "--out", parts, "--resume"]) == 0
    a = torch.load(straight / harness.CHECKPOINT, weights_only=False)["trainer"]
    b = torch.load(parts / harness.CHECKPOINT, weights_only=False)["trainer"]
    ta, tb = list(state_tensors(a)), list(state_tensors(b))
    assert len(ta) == len(tb) > 3
    assert all(torch.equal(x, y) for x, y in zip(ta, tb))
    strip = lambda p: [{k: v for k, v in json.loads(l).items()} for l in (p / "metrics.jsonl").read_text().splitlines()]
    assert strip(straight) == strip(parts)


def test_resume_refuses_a_different_run(tmp_path):
    """--resume continues a run with the settings it was made with: any other setting that
    differs is refused before anything is loaded (an optimiser's state_dict restores the old
    learning rate, so --lr was silently ignored while config.json recorded the new one; a wider
    --hidden was a raw size-mismatch traceback). --iters may grow, never shrink below the
    checkpoint (a smaller one stamped the later state with the smaller iteration)."""
    args = ["pcd", "--data", "8gaussians", "--n-train", "200", "--iters", "3", "--neg-batch", "32", "--batch", "32",
            "--no-progress", "--no-pictures", "--out", tmp_path]
    assert _run(args) == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["n_train"] == 200 and config["data_dir"] is None  # every resolved setting, the data's too
    for extra, listed in ((["--seed", "1"], "seed 1 (checkpoint: 0)"), (["--lr", "0.5"], "lr 0.5 (checkpoint: 0.001)"),
                          (["--n-train", "300"], "n_train 300 (checkpoint: 200)"),
                          (["--hidden", "16"], "hidden 16 (checkpoint: "),
                          (["--lr", "0.5", "--k-steps", "3"], "k_steps 3 (checkpoint: 10); lr 0.5")):
        with pytest.raises(SystemExit, match=r"--resume: settings differ from the checkpoint's in .*: " + re.escape(listed)):
            _run(args + ["--resume", *extra])
    with pytest.raises(SystemExit, match=r"the checkpoint in .* is at iteration 3, past --iters 2: give --iters 3 or more"):
        _run(args[:args.index("--iters")] + ["--iters", "2"] + args[args.index("--iters") + 2:] + ["--resume"])
    assert torch.load(tmp_path / harness.CHECKPOINT, weights_only=False)["iter"] == 3  # untouched
    assert _run(args + ["--resume", "--data-dir", str(tmp_path)]) == 0  # --data-dir may change (toys ignore it)


def test_resume_survives_a_torn_log_line_and_names_a_damaged_checkpoint(tmp_path):
    """metrics.jsonl is appended without an fsync: a crash can leave half a line, which --resume
    drops instead of dying on a JSONDecodeError. A checkpoint that is not one (truncated, empty,
    foreign) is a clear exit naming the file, not a pickle or zip traceback."""
    args = ["pcd", "--data", "8gaussians", "--n-train", "200", "--iters", "6", "--neg-batch", "32", "--batch", "32",
            "--log-every", "1", "--no-progress", "--no-pictures"]
    straight, parts = tmp_path / "straight", tmp_path / "parts"
    assert _run(args + ["--out", straight]) == 0
    assert _run(args + ["--out", parts, "--stop-after", "3"]) == 130
    with open(parts / "metrics.jsonl", "a") as f:
        f.write('{"iter": 3, "loss": 0.12')  # torn
    assert _run(args + ["--out", parts, "--resume"]) == 0
    assert (parts / "metrics.jsonl").read_text() == (straight / "metrics.jsonl").read_text()
    ck = parts / harness.CHECKPOINT
    data = ck.read_bytes()
    for damaged in (data[: len(data) // 2], b"", b"not a checkpoint"):
        ck.write_bytes(damaged)
        with pytest.raises(SystemExit, match=r"--resume: cannot read the checkpoint .*checkpoint.pt .*damaged"):
            _run(args + ["--out", parts, "--resume"])
    torch.save({"something": 1}, ck)
    with pytest.raises(SystemExit, match=r"is not a checkpoint of this harness"):
        _run(args + ["--out", parts, "--resume"])


@pytest.mark.parametrize("method,option,value,what", [
    ("pcd", "--step-size", "-0.1", "a finite float > 0"), ("pcd", "--batch", "-3", "an int >= 0"),
    ("pcd", "--log-every", "-1", "an int >= 1"), ("pcd", "--ckpt-every", "0", "an int >= 1"),
    ("pcd", "--time-budget", "-1", "a finite float > 0"), ("pcd", "--reinit", "2", "a float in [0, 1]"),
    ("jarzynski", "--n-walkers", "0", "an int >= 1"), ("coopvae", "--temperature", "0", "a finite float > 0"),
    ("dualmcmc", "--sigma", "0", "a finite float > 0"), ("coopvae", "--batch", "0", "an int >= 1"),
    ("coopvae", "--eval-n", "-5", "an int >= 1"), ("dualmcmc", "--step-x", "nan", "a finite float > 0"),
])
def test_bad_option_values_are_usage_errors(method, option, value, what, capsys):
    """Each numeric option's domain is checked by argparse, naming the option: these used to be a
    math domain error, a negative-dimension RuntimeError, a ZeroDivisionError, a silent
    every-iteration log, or (--eval-n) an error after all of the training."""
    with pytest.raises(SystemExit) as info:
        _run([method, option, value, "--out", "unused"])
    assert info.value.code == 2
    assert f"argument {option}: must be {what}, got {value}" in capsys.readouterr().err


def test_lr_z_needs_the_mixture_model(tmp_path):
    """--lr-z is the GMM student's mode log-weights' learning rate; on another model it became
    the learning rate of every parameter."""
    with pytest.raises(SystemExit, match="--lr-z is the learning rate of a Gaussian mixture's mode log-weights"):
        _run(["pcd", "--data", "8gaussians", "--n-train", "200", "--iters", "2", "--lr-z", "0.5", "--no-progress",
              "--no-pictures", "--out", tmp_path])


def test_divergence_is_reported_and_keeps_the_last_checkpoint(tmp_path):
    """A step size far too large makes the walkers' energies blow up: the run stops with status 3,
    metrics.json names the iteration, and the checkpoint from before it is intact."""
    args = ["jarzynski", "--data", "8gaussians", "--n-train", "200", "--iters", "50", "--n-walkers", "64",
            "--batch", "32", "--burn-in", "0", "--ckpt-every", "2", "--no-progress", "--no-pictures",
            "--lr", "3.0", "--step-size", "50", "--out", tmp_path]
    assert _run(args) == 3
    m = _metrics(tmp_path)
    assert m["diverged"]["iter"] >= 0
    assert "non-finite" in m["diverged"]["reason"] or "loss is nan" in m["diverged"]["reason"], m["diverged"]
    ck = torch.load(tmp_path / harness.CHECKPOINT, weights_only=False) if (tmp_path / harness.CHECKPOINT).exists() else None
    assert (ck is None and m["last_checkpoint_iter"] is None) or ck["iter"] == m["last_checkpoint_iter"] <= m["diverged"]["iter"]
    if ck is not None:
        assert all(torch.isfinite(t).all() for t in state_tensors(ck["trainer"]["energy"]))


def test_atomic_write_leaves_no_partial_file(tmp_path):
    p = tmp_path / "f.bin"
    harness.atomic_write_bytes(p, lambda f: f.write(b"old"))

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        harness.atomic_write_bytes(p, boom)
    assert p.read_bytes() == b"old"
    assert [q.name for q in tmp_path.iterdir()] == ["f.bin"]  # the temp file is cleaned up


def test_cli_lists_the_methods():
    r = subprocess.run([sys.executable, "-m", "train", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0
    for m in ("pcd", "cd", "jarzynski"):
        assert f"  {m}" in r.stdout


@pytest.mark.parametrize("method", ["pcd", "jarzynski"])
def test_digits_trains_and_beats_a_diagonal_gaussian(tmp_path, method):
    """Reduced digits run (400 iterations of a 64-128-128-128-1 MLP EBM with a Gaussian reference,
    500 walkers / a 2500-entry buffer): training stays finite and the AIS test log-likelihood
    (1024 walkers, 1000 annealing steps) beats the diagonal-Gaussian fit of the same data by more
    than 3 nats per image and by more than 2 of its standard errors."""
    assert _run([method, "--data", "digits", "--iters", "400", "--ais-steps", "1000", "--no-progress",
                 "--no-pictures", "--out", tmp_path]) == 0
    m = _metrics(tmp_path)
    gain = m["test_ll"] - m["diag_gaussian_test_ll"]
    assert gain > 3.0 and gain > 2 * m["test_ll_se"], m
    assert 0 <= m["mmd"] < 0.1


def test_compare_reuses_finished_runs_and_prints_the_table(gmm_runs, tmp_path, capsys):
    import shutil

    for method, d in gmm_runs.items():
        shutil.copytree(d, tmp_path / f"gmm-{method}")
    assert _run(["compare", "--data", "gmm", "--methods", "jarzynski", "pcd", "--out", tmp_path]) == 0
    text = (tmp_path / "table.md").read_text()
    assert text in capsys.readouterr().out
    jar = _metrics(gmm_runs["jarzynski"])
    w = jar["mode_weights"]
    assert f"| jarzynski | {w[0]:.3f} : {w[1]:.3f} | {jar['kl']:.3f} |" in text
    assert len(json.loads((tmp_path / "results.json").read_text())) == 2
    assert (tmp_path / "gmm_mode_weights.png").stat().st_size > 5000


def test_time_budget_stops_training_and_still_evaluates(tmp_path):
    assert _run(["pcd", "--data", "8gaussians", "--n-train", "200", "--iters", "1000", "--neg-batch", "32",
                 "--batch", "32", "--time-budget", "1e-9", "--no-progress", "--no-pictures", "--out", tmp_path]) == 0
    m = _metrics(tmp_path)
    assert m["iters"] == 1 and "kl" in m and "tv" in m
    assert torch.load(tmp_path / harness.CHECKPOINT, weights_only=False)["iter"] == 1


def test_presets_differ_where_the_official_code_departs():
    from train.ebm import preset

    paper, code = preset("jarzynski", "gmm", "paper"), preset("jarzynski", "gmm", "code")
    # GMM: same dynamics (noise sqrt(2h), h = 0.1, the paper's learning rates), different trigger
    assert (paper.step_size, paper.noise_std, paper.lr, paper.lr_z) == (code.step_size, code.noise_std, 0.0025, 0.0125)
    assert paper.trigger == "ess" and code.trigger == "cv2_lag" and paper.scheme == code.scheme == "multinomial"
    # images: decoupled noise, 1% of sqrt(2h), and std(w / mean w) > 1.5 as the trigger
    p_img, c_img = preset("jarzynski", "image", "paper"), preset("jarzynski", "image", "code")
    assert p_img.noise_std is None and abs(c_img.noise_std - 0.01 * (2 * c_img.step_size) ** 0.5) < 1e-15
    assert abs(c_img.ess_threshold - 1 / (1 + 1.5 ** 2)) < 1e-15
    cd = preset("cd", "gmm", "paper")
    assert (cd.lr, cd.lr_z, cd.reset_every) == (0.025, 0.125, 4)


def test_code_preset_runs_with_its_corrected_weights(tmp_path):
    """The code preset's decoupled noise still gives finite weights and a finite log Z estimate
    (the weights use s^2, not 4h), and it resamples far more often than the paper preset."""
    counts = {}
    for p in ("paper", "code"):
        out = tmp_path / p
        assert _run(["jarzynski", "--data", "digits", "--preset", p, "--iters", "30", "--k-steps", "2",
                     "--ais-steps", "50", "--ais-walkers", "64", "--no-progress", "--no-pictures", "--out", out]) == 0
        rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
        assert all(math.isfinite(r["log_z"]) for r in rows)
        counts[p] = rows[-1]["n_resampled"]
    assert counts["code"] > counts["paper"] + 10, counts


def test_compare_at_equal_budget(tmp_path, capsys):
    """--budget runs every method with the same --time-budget and tabulates MMD (and AIS LL on
    images) next to the iterations each managed in that time. Run again with other settings on
    the same --out, it refuses the folders its first run made (it used to print the old table
    as the new result)."""
    assert _run(["compare", "--budget", "2", "--data", "8gaussians", "--methods", "pcd", "jarzynski",
                 "--no-progress", "--out", tmp_path]) == 0
    with pytest.raises(SystemExit, match=r"\[compare\] .*8gaussians-pcd holds a run made by pcd .*--seed 0 .*not by "
                                         r"this comparison's pcd .*--seed 3 .*pass --fresh"):
        _run(["compare", "--budget", "2", "--seed", "3", "--data", "8gaussians", "--methods", "pcd",
              "--no-progress", "--out", tmp_path])
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in rows] == ["pcd", "jarzynski"]
    for r in rows:
        assert 1 <= r["iters"] < 1_000_000 and r["train_seconds"] >= 2.0 and r["mmd"] >= -0.01
        row = f"| {r['method']} | {r['mmd']:.4f} | {r['kl']:.3f} | {r['tv']:.3f} | {r['iters']} |"
        assert row in (tmp_path / "table.md").read_text()
    assert (tmp_path / "table.md").read_text() in capsys.readouterr().out


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_real_ctrl_c_writes_a_checkpoint_and_resumes(tmp_path, sig):
    """SIGINT (Ctrl-C) or SIGTERM (a scheduler's or kill's warning; it used to kill the run and
    lose up to --ckpt-every iterations) to a running `python -m train` process: it finishes the
    iteration in progress, writes a checkpoint, exits 128 + the signal, and --resume continues
    from there."""
    import os
    import signal
    import time

    args = [sys.executable, "-m", "train", "pcd", "--data", "8gaussians", "--n-train", "200", "--iters", "100000",
            "--neg-batch", "32", "--batch", "32", "--log-every", "1", "--no-progress", "--no-pictures",
            "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    jsonl = tmp_path / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not jsonl.exists() or len(jsonl.read_text().splitlines()) < 5):
        time.sleep(0.2)
    p.send_signal(getattr(signal, sig))
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + getattr(signal, sig), err
    it = torch.load(tmp_path / harness.CHECKPOINT, weights_only=False)["iter"]
    assert it >= 5 and "continue with --resume" in err
    logged = [json.loads(l)["iter"] for l in jsonl.read_text().splitlines()]
    assert logged == list(range(it))  # every completed iteration logged, none past the checkpoint
    more = [a if a != "100000" else str(it + 3) for a in args[3:]]
    assert _run(more + ["--resume"]) == 0
    assert _metrics(tmp_path)["iters"] == it + 3


def test_compare_teaching_table(tmp_path, capsys):
    """--teaching tabulates each teaching run's initialiser MMD^2 next to its refined samples'
    (finished runs in --out are reused, so tiny real runs stand in for the default ones)."""
    for method in ("coopvae", "dualmcmc"):
        extra = ["--k-z", "2"] if method == "dualmcmc" else []
        assert _run([method, "--data", "8gaussians", "--n-train", "300", "--iters", "5", "--batch", "32", "--k-x", "3",
                     "--eval-n", "100", *extra, "--no-progress", "--no-pictures",
                     "--out", tmp_path / f"8gaussians-{method}"]) == 0
    assert _run(["compare", "--teaching", "--data", "8gaussians", "--no-progress", "--out", tmp_path]) == 0
    text = (tmp_path / "table.md").read_text()
    assert text in capsys.readouterr().out
    assert "initialiser's MMD^2 | EBM samples' MMD^2 |" in text
    for method in ("coopvae", "dualmcmc"):
        m = _metrics(tmp_path / f"8gaussians-{method}")
        assert f"| {method} | {m['mmd_init']:.5f} | {m['mmd_refined']:.5f} | {m['kl']:.3f} | {m['tv']:.3f} | 5 |" in text
    with pytest.raises(SystemExit, match="two different tables"):
        _run(["compare", "--teaching", "--budget", "1", "--out", tmp_path])


def test_missing_data_is_a_one_line_exit_and_creates_nothing(tmp_path):
    """Absent MNIST files: the loader's message (what, where, how to get them) as the exit
    message, not a FileNotFoundError traceback, and no run folder left behind."""
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match=r"--data mnist: mnist: expected .*nowhere.*train-images-idx3-ubyte"):
        _run(["pcd", "--data", "mnist", "--data-dir", tmp_path / "nowhere", "--iters", "1", "--out", out])
    assert not out.exists()


def test_compare_fresh_deletes_only_a_comparison_folder(tmp_path):
    """--fresh deletes --out only when it holds nothing but comparison runs and tables: with a
    mistyped --out it would have removed any folder."""
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("precious")
    with pytest.raises(SystemExit, match=r"--fresh: .* holds \['thesis'\], not only comparison runs; refusing"):
        _run(["compare", "--fresh", "--data", "gmm", "--out", tmp_path])
    assert (tmp_path / "thesis" / "chapter1.tex").read_text() == "precious"
