"""EBM trainers on fastlangevin: persistent / plain contrastive divergence and Jarzynski-weighted
training (Carbone et al., NeurIPS 2023). ``python -m train {pcd,cd,jarzynski} --help``.

All three fit U_theta (x [N, *shape] -> [N], lower is likelier) by stochastic gradient descent on
the cross-entropy H(theta) = log Z_theta + E_data[U_theta], whose gradient is
E_data[dU/dtheta] - E_{rho_theta}[dU/dtheta]. They differ in how the second expectation is
estimated:

    cd         walkers restart from data (every `reset_every` iterations) and take K steps
    pcd        persistent walkers / a replay buffer (Du & Mordatch 2019: a fraction `reinit`
               re-initialised from uniform noise each iteration), K steps per iteration
    jarzynski  fastlangevin.Walkers: weighted ULA, E_rho ~ sum_i softmax(A)_i dU/dtheta(X_i),
               resampling when the weights degenerate; the weights also give log Z_theta / Z_0
               and so an estimate of the cross-entropy itself, logged as it trains

Every Langevin step goes through fastlangevin (sample() for cd/pcd, Walkers for jarzynski).

Order of one Jarzynski iteration (the paper's Algorithm 1, as the official GMM script does it):
  1. p = softmax(A_k) from the walkers' log-weights
  2. theta_{k+1} = theta_k - lr * grad[ mean U(data) - sum_i p_i U(X_k^i) ]
  3. Walkers.step(K): moves X_k with the cached drift grad U_{theta_k}(X_k), evaluates
     (U, grad U) at X_{k+1} under theta_{k+1} and adds the Jarzynski increment to A (one energy
     evaluation per step; the official code spends three)
  4. log the cross-entropy estimate  log Z_0 + log mean exp(A) + mean U_{theta_{k+1}}(data)
  5. resample when the trigger fires (preset paper: ESS < ess_threshold * N after the update;
     preset code: the GMM script's CV^2 = E[w^2]/E[w]^2 - 1 > c read from the weights *before*
     the update, i.e. ESS < N / (1 + c) one step late), multinomial as in every official run.

Presets (``--preset``), per data kind; each differing default is marked below:
  gmm (Carbone et al. GMM_code/GMM.py, float64): d = 50, 10^4 walkers and data points, h = 0.1,
      noise sqrt(2h) in both presets, plain gradient descent with lr 0.0025 for the means and
      0.0125 for the mode log-weights (the first frozen), 8000 iterations, one ULA step per
      iteration; the full data set in every gradient. CD: 10x the learning rates, walkers reset
      to data every 4 iterations. PCD and CD walkers start from resampled data; Jarzynski walkers
      from the initial student. paper vs code: only the resampling trigger (above).
  toy2d / image: an MLP (or conv) EBM with a Gaussian reference term |x|^2 / (2 ref_var) so that
      e^{-U} is normalisable (AIS log-likelihoods need it), Adam with betas (0, 0.999) as in the
      official MNIST/CIFAR code; toy2d: an L2 penalty 0.01 (U^2 on data and walkers, as there);
      image: none (the reference term bounds the energies), whitened pixel coordinates, lr 1e-4
      and 10 Langevin steps per update (see EBMTrainer.__init__ and preset()).
      paper: noise sqrt(2h) and the weight formula with it. code: the official image code's
      decoupled noise (1% of sqrt(2h), see CODE_NOISE_FRACTION) with the weight formula corrected for
      the true kernel variance (Walkers uses s^2 in alpha; the official code kept 4h, PAPERS.md
      section 1.7), and its ESS trigger (std(w / mean w) > 1.5, i.e. ESS < N / (1 + 1.5^2)).
      pcd: a replay buffer (images 10x the batch, toys 4x), 5% re-initialised from noise (toys:
      uniform in the data box; whitened images: the reference N(0, I)), K steps clamped to the box
      (Du & Mordatch); cd: K steps from a fresh data batch.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

import torch

import fastlangevin as fl

from . import harness


@dataclass
class Settings:
    """Resolved hyperparameters of one run (config.json). None means "not used by this method"."""

    iters: int = 2000
    model: str = "mlp"
    n_walkers: int = 1000          # jarzynski walkers / pcd buffer / cd chains
    batch: int = 256               # data per gradient (0: the whole training set)
    neg_batch: int = 256           # pcd: buffer entries moved and used per iteration
    k_steps: int = 1               # Langevin steps per parameter update
    step_size: float = 0.01        # h
    noise_std: Optional[float] = None  # None: sqrt(2h), the exact ULA
    optimizer: str = "adam"        # "sgd" | "adam"
    lr: float = 1e-3
    lr_z: Optional[float] = None   # gmm: the mode log-weights' learning rate
    betas: tuple = (0.0, 0.999)
    l2: float = 0.0                # weight of mean U^2 on data and walkers
    grad_clip_params: Optional[float] = None
    reinit: float = 0.0            # pcd: fraction of the moved walkers re-initialised from noise
    clamp: bool = False            # pcd/cd: clamp walkers to the data box
    reset_every: int = 1           # cd: walkers restart from data every this many iterations
    burn_in: int = 0               # jarzynski: unweighted ULA steps from noise before training
    trigger: str = "ess"           # jarzynski: "ess" (ESS < thr N after the update) | "cv2_lag"
    ess_threshold: float = 0.5
    cv2: float = 0.4               # trigger cv2_lag: resample when CV^2 > cv2
    scheme: str = "multinomial"
    ais_walkers: int = 512
    ais_steps: int = 1000
    ref_var: Optional[float] = None  # the model's Gaussian reference term (toy2d / image)
    hidden: Optional[int] = None   # mlp width (None: models.build_energy's default)
    notes: list = field(default_factory=list)


# "code" preset (toy2d / image): the official image code's noise, as a fraction of the exact ULA
# noise sqrt(2h): MNIST 1e-4 at h = 5e-5 (sqrt(2h) = 0.01) and CIFAR-10 0.01 at h = 1 (1.41) are
# 1.0% and 0.7% of it. With the weights corrected for that variance, the (a / s^2)(y - x).g term is
# ~10^4 times larger than with s^2 = 2a, so the weights degenerate within a step or two and the
# run resamples almost every iteration: the price of the official code's near-deterministic moves
# once its weights are made correct (PAPERS.md section 1.7).
CODE_NOISE_FRACTION = 0.01


def preset(method: str, kind: str, preset_name: str) -> Settings:
    """The defaults of `method` on data of `kind` under `preset_name` (see the module docstring)."""
    s = Settings()
    if kind == "gmm":
        s = Settings(iters=8000, model="gmm_student", n_walkers=10_000, batch=0, neg_batch=0, k_steps=1,
                     step_size=0.1, optimizer="sgd", lr=0.0025, lr_z=0.0125, scheme="multinomial",
                     trigger="ess" if preset_name == "paper" else "cv2_lag", ess_threshold=0.5, cv2=0.4)
        if method == "cd":
            s.lr, s.lr_z, s.reset_every = 10 * s.lr, 10 * s.lr_z, 4
            s.notes.append("cd: 10x the learning rates and a reset to data every 4 iterations (GMM.py)")
        return s
    if kind == "toy2d":
        s = Settings(iters=3000, model="mlp", n_walkers=2000, batch=500, neg_batch=500, k_steps=5, step_size=0.005,
                     lr=1e-3, l2=0.01, ref_var=16.0, burn_in=500, ais_walkers=1024, ais_steps=500)
    else:  # image
        s = Settings(iters=2000, model="mlp", n_walkers=500, batch=250, neg_batch=250, k_steps=10, step_size=1e-2,
                     lr=1e-4, l2=0.0, ref_var=1.0, hidden=128, burn_in=0, ais_walkers=1024, ais_steps=2000)
    if method == "pcd":
        s.reinit, s.clamp = 0.05, True
        s.n_walkers = 10 * s.neg_batch
        if kind == "toy2d":
            # 10 steps of 0.01 per visit and a 4x buffer: with 5 steps of 0.005 and a 10x buffer,
            # re-initialised entries took ~800 iterations to leave the box's corners and 10% of
            # the final buffer still sat there (8gaussians: MMD^2 0.027 -> 0.0000 with these)
            s.k_steps, s.step_size, s.n_walkers = 10, 0.01, 4 * s.neg_batch
    if method == "cd":
        s.n_walkers, s.clamp = s.neg_batch, True
    if method == "jarzynski" and preset_name == "code":
        s.noise_std = CODE_NOISE_FRACTION * math.sqrt(2 * s.step_size)
        s.trigger, s.ess_threshold = "ess", 1.0 / (1.0 + 1.5 ** 2)
        s.notes.append("code: decoupled noise with the weight formula corrected for its variance; "
                       "resampling when std(w/mean w) > 1.5")
    return s


def add_arguments(parser, method: str) -> None:
    from .data import DATASETS

    harness.add_common_arguments(parser, datasets=DATASETS, default_data="gmm")
    g = parser.add_argument_group(f"{method} settings (default: the preset's, by data kind)")
    g.add_argument("--model", default=None, help="gmm_student | mlp | conv | nijkamp")
    g.add_argument("--n-train", type=harness.POSITIVE_INT, default=None,
                   help="training points (gmm / toys: generated)")
    for f in ("n_walkers", "batch", "neg_batch", "k_steps", "burn_in", "reset_every", "ais_walkers", "ais_steps",
              "hidden", "step_size", "noise_std", "lr", "lr_z", "l2", "reinit", "ess_threshold", "cv2", "ref_var"):
        # batch 0: the whole set (the GMM presets); the teaching trainers need a batch >= 1
        kind = harness.NONNEG_INT if f == "batch" else harness.OPTION_TYPES[f]
        g.add_argument("--" + f.replace("_", "-"), type=kind, default=None)
    g.add_argument("--scheme", default=None, choices=fl.walkers.SCHEMES)
    g.add_argument("--trigger", default=None, choices=("ess", "cv2_lag"))


def resolve(args, method: str, kind: str) -> Settings:
    s = preset(method, kind, args.preset)
    for f in fields(Settings):
        v = getattr(args, f.name, None)
        if v is not None and f.name not in ("notes",):
            setattr(s, f.name, v)
    if s.iters < 1:
        raise SystemExit(f"--iters must be >= 1, got {s.iters}")
    return s


def whitening(train: torch.Tensor) -> tuple:
    """(shift, scale) [*shape]: the per-pixel mean and std (floored at 1e-3) of the training set,
    for the whitened model coordinates y = (x - shift) / scale of image data (see EBMTrainer;
    the teaching trainers use the same map)."""
    return train.mean(0), train.std(0).clamp_min(1e-3)


def whitened_box(box, shift: torch.Tensor, scale: torch.Tensor):
    """One scalar box (lo, hi) in whitened coordinates containing every pixel's image of the data
    box (None stays None)."""
    if box is None:
        return None
    lo, hi = box
    return (float(((lo - shift) / scale).min()), float(((hi - shift) / scale).max()))


# --------------------------------------------------------------------------------------------
# the shared trainer
# --------------------------------------------------------------------------------------------

class EBMTrainer:
    """cd / pcd / jarzynski on one energy model; see the module docstring."""

    bar = ("loss", "ess")

    def __init__(self, args, data, device, method: str):
        from models import build_energy

        self.method, self.data, self.device = method, data, device
        self.s = resolve(args, method, data.kind)
        self.model_name = self.s.model
        self.iters = self.s.iters
        self.seed = args.seed
        self.dtype = data.train.dtype
        self.train = data.train.to(device)
        # Images are modelled in whitened coordinates y = (x - mean) / std (per pixel, from the
        # training set). Dequantised 8x8 digits have pixels whose spread is 0.03 (always-blank
        # borders, uniform over one grey level) next to pixels with spread 0.7: one Langevin step
        # size cannot serve both, and AIS from an isotropic Gaussian to such a target is poor.
        # In y every pixel has unit variance, the model with its last layer zeroed is N(0, I) =
        # exactly the diagonal-Gaussian fit, and log-likelihoods map back with the Jacobian:
        # log p_x(x) = log p_y(y) - sum_j log std_j. Samples are mapped back for pictures and MMD.
        self.whiten = data.kind == "image"
        if self.whiten:
            self.shift, self.scale = whitening(self.train)
            self.train = (self.train - self.shift) / self.scale
        self.gen = torch.Generator().manual_seed(args.seed)  # data batches, noise inits (CPU: portable)
        kw = {"ref_var": self.s.ref_var} if self.s.ref_var is not None and self.s.model in ("mlp", "conv") else {}
        if self.s.hidden is not None and self.s.model == "mlp":
            kw["hidden"] = self.s.hidden
        self.energy = build_energy(self.s.model, data, **kw).to(device=device, dtype=self.dtype)
        if self.whiten:
            last = [m for m in self.energy.modules() if isinstance(m, torch.nn.Linear)][-1]
            with torch.no_grad():  # start at the reference N(0, I): the diagonal-Gaussian fit
                last.weight.zero_()
                last.bias.zero_()
        self.opt = self._optimizer()
        self.log_z0 = self._initial_log_z()
        self.box = whitened_box(data.box, self.shift, self.scale) if self.whiten else data.box
        n = self.s.n_walkers
        if method == "jarzynski":
            x0 = self._initial_walkers(n)
            if self.s.burn_in:
                x0 = fl.sample(self.energy, x0, self.s.burn_in, self.s.step_size, self.s.noise_std,
                               seed=args.seed, offset=1 << 61).x
            self.walkers = fl.Walkers(
                self.energy, x0, self.s.step_size, self.s.noise_std, seed=args.seed,
                resample=self.s.scheme if self.s.trigger == "ess" else None, ess_threshold=self.s.ess_threshold,
            )
        else:
            if data.kind == "gmm" or method == "cd":
                self.x = self._data_batch(n)  # GMM.py: PCD and CD walkers start from resampled data
            else:  # Du & Mordatch: the buffer starts as noise (uniform in the box; images: see _fresh)
                self.x = self._fresh(n)
            self.offset = 0                    # Philox offset of the next Langevin step

    # ---------------------------------------------------------------- construction helpers
    def _optimizer(self):
        named = dict(self.energy.named_parameters())
        if self.s.lr_z is not None and "means" not in named:
            raise SystemExit(f"--lr-z is the learning rate of a Gaussian mixture's mode log-weights (model "
                             f"gmm_student); model {self.s.model} has no means")
        if self.s.lr_z is not None:  # gmm: means at lr, mode log-weights at lr_z
            groups = [{"params": [p for k, p in named.items() if k == "means"], "lr": self.s.lr},
                      {"params": [p for k, p in named.items() if k != "means"], "lr": self.s.lr_z}]
        else:
            groups = [{"params": list(named.values()), "lr": self.s.lr}]
        if self.s.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.s.lr)
        return torch.optim.Adam(groups, lr=self.s.lr, betas=tuple(self.s.betas))

    def _initial_log_z(self) -> Optional[float]:
        lz = getattr(self.energy, "log_z", None)
        return float(lz().detach()) if callable(lz) else None

    def _initial_walkers(self, n: int) -> torch.Tensor:
        if hasattr(self.energy, "sample"):  # gmm: exact draws from the initial student
            return self.energy.sample(n, generator=self.gen).to(self.device, self.dtype)
        if self.whiten:  # images: the initial model is exactly the reference N(0, ref_var I)
            return self._reference_noise(n)
        return self._noise(n)

    def _reference_noise(self, n: int) -> torch.Tensor:
        """n draws [n, *shape] of N(0, ref_var I), the energy's Gaussian reference term."""
        z = torch.randn((n, *self.data.shape), generator=self.gen, dtype=self.dtype)
        return (math.sqrt(self.s.ref_var or 1.0) * z).to(self.device)

    def _noise(self, n: int) -> torch.Tensor:
        lo, hi = self.data.box
        u = torch.rand((n, *self.data.shape), generator=self.gen, dtype=self.dtype)
        x = (lo + (hi - lo) * u).to(self.device)
        return (x - self.shift) / self.scale if self.whiten else x

    def to_data_space(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.scale + self.shift if self.whiten else y

    def _fresh(self, n: int) -> torch.Tensor:
        """PCD's (re-)initialisation noise: uniform in the data box (Du & Mordatch) for 2-D data;
        for whitened images the reference N(0, I), since uniform noise in the pixel box lands
        tens of standard deviations out in whitened coordinates (energies ~ 10^3)."""
        return self._reference_noise(n) if self.whiten else self._noise(n)

    def _data_batch(self, n: int) -> torch.Tensor:
        if n == 0:  # the whole training set (gmm: every gradient uses all 10^4 points, as GMM.py)
            return self.train
        idx = torch.randint(0, self.train.shape[0], (n,), generator=self.gen)
        return self.train[idx.to(self.device)]

    def settings(self) -> dict:
        d = asdict(self.s)
        d["noise_std_effective"] = self.s.noise_std if self.s.noise_std is not None else math.sqrt(2 * self.s.step_size)
        return d

    # ---------------------------------------------------------------- one iteration
    def _param_step(self, x_data, x_neg, w=None) -> torch.Tensor:
        u_data = self.energy(x_data)
        u_neg = self.energy(x_neg)
        neg = u_neg.mean() if w is None else (w.to(u_neg.dtype) * u_neg).sum()
        loss = u_data.mean() - neg
        if self.s.l2:
            reg = (u_data ** 2).mean() + ((u_neg ** 2).mean() if w is None else (w.to(u_neg.dtype) * u_neg ** 2).sum())
            loss_total = loss + self.s.l2 * reg
        else:
            loss_total = loss
        self.opt.zero_grad(set_to_none=True)
        loss_total.backward()
        if self.s.grad_clip_params:
            torch.nn.utils.clip_grad_norm_(self.energy.parameters(), self.s.grad_clip_params)
        self.opt.step()
        return loss.detach()

    def step(self, it: int) -> dict:
        x_data = self._data_batch(self.s.batch)
        if self.method == "jarzynski":
            return self._step_jarzynski(x_data)
        return self._step_contrastive(it, x_data)

    def _step_jarzynski(self, x_data) -> dict:
        w = self.walkers
        p = w.weights  # softmax(A_k), float64
        loss = self._param_step(x_data, w.x, p)
        lagged = None
        if self.s.trigger == "cv2_lag":  # GMM.py: CV^2 of the weights before this update > c
            lagged = w.ess < w.n / (1.0 + self.s.cv2)
        w.step(self.s.k_steps)
        if lagged is not None:
            w.resample(self.s.scheme, when=lagged)
        return {"loss": loss, "ess": w.ess / w.n, "log_z": w.log_z, "n_resampled": w.n_resampled,
                "logw_spread": w.log_weights.max() - w.log_weights.min()}

    def _step_contrastive(self, it: int, x_data) -> dict:
        s = self.s
        if self.method == "cd" and it % s.reset_every == 0:
            self.x = self._data_batch(s.n_walkers)
        if self.method == "pcd" and s.neg_batch and s.neg_batch < self.x.shape[0]:
            idx = torch.randint(0, self.x.shape[0], (s.neg_batch,), generator=self.gen).to(self.device)
        else:
            idx = None
        x = self.x if idx is None else self.x[idx]
        if self.method == "pcd" and s.reinit:
            fresh = torch.rand(x.shape[0], generator=self.gen) < s.reinit
            x = torch.where(fresh.to(self.device).view(-1, *([1] * (x.dim() - 1))), self._fresh(x.shape[0]), x)
        clamp = tuple(self.box) if s.clamp and self.box is not None else None
        x = fl.sample(self.energy, x, s.k_steps, s.step_size, s.noise_std, seed=self.seed, offset=self.offset,
                      clamp=clamp).x
        self.offset += s.k_steps
        if idx is None:
            self.x = x
        else:
            self.x = self.x.index_copy(0, idx, x)
        loss = self._param_step(x_data, x)
        return {"loss": loss}

    def log_extra(self) -> dict:
        """Costlier numbers for the logged iterations only (the harness calls it there)."""
        out = {}
        if self.data.kind == "gmm":
            with torch.no_grad():
                mw = self.energy.mode_weights()
                u_data = self.energy(self.train).mean()
                out["ce_exact"] = float(self.energy.log_z() + u_data)
                if self.method == "jarzynski":
                    out["ce_estimate"] = float(self.log_z0 + self.walkers.log_z + u_data)
            out.update(mode_weight_0=float(mw[0]), mode_weight_1=float(mw[1]))
        return out

    # ---------------------------------------------------------------- results
    def samples(self, n: Optional[int] = None) -> torch.Tensor:
        """Unweighted samples of the model: pcd/cd walkers, or jarzynski walkers resampled by
        their weights (multinomial, a fixed Philox stream so evaluation draws no global RNG)."""
        if self.method != "jarzynski":
            x = self.x
        else:
            anc = fl.resample(self.walkers.log_weights, "multinomial", seed=self.seed, offset=(1 << 60) | self.walkers.steps)
            x = self.walkers.x[anc]
        x = self.to_data_space(x)
        return x if n is None else x[:n]

    def evaluate(self) -> dict:
        from . import metrics

        out = {"settings_notes": self.s.notes}
        if self.data.kind == "gmm":
            out.update(metrics.gmm_metrics(self.energy, self.data))
            extra = self.log_extra()
            out["ce_exact_train"] = extra["ce_exact"]
            out["ce_estimate"] = extra.get("ce_estimate")
        elif self.data.kind == "toy2d":
            out.update(metrics.grid_divergences(self.energy, self.data))
            out["mmd"] = metrics.mmd(self.samples(2000), self.data.test)
        else:
            test_y = (self.data.test.to(self.device) - self.shift) / self.scale
            ais = metrics.ais_log_likelihood(self.energy, test_y, n_walkers=self.s.ais_walkers,
                                             n_steps=self.s.ais_steps, seed=self.seed)
            log_det = float(self.scale.log().sum())  # log p_x = log p_y - sum_j log std_j
            out.update(test_ll=ais["ll"] - log_det, test_ll_se=ais["se"],
                       diag_gaussian_test_ll=metrics.diag_gaussian_log_likelihood(self.data.train, self.data.test))
            out["mmd"] = metrics.mmd(self.samples(1000), self.data.test)
        if self.method == "jarzynski":
            out.update(ess=float(self.walkers.ess) / self.walkers.n, n_resampled=int(self.walkers.n_resampled))
        return out

    def pictures(self, out, history) -> list:
        from . import plots

        paths = [plots.save_samples(out / "samples.png", self.samples(), self.data,
                                    title=f"{self.method} on {self.data.name}")]
        if self.data.kind in ("toy2d", "gmm"):
            paths.append(plots.save_energy_landscape(out / "energy.png", self.energy, self.data))
        series = {k: history[k] for k in ("loss", "ess", "log_z", "logw_spread", "ce_exact", "ce_estimate",
                                          "mode_weight_0") if k in history}
        if series:
            paths.append(plots.save_traces(out / "traces.png", series, x=history.get("iter"),
                                           overlay={"cross-entropy": ("ce_exact", "ce_estimate")},
                                           title=f"{self.method} on {self.data.name}"))
        return paths

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        d = {"energy": self.energy.state_dict(), "opt": self.opt.state_dict(), "gen": self.gen.get_state()}
        if self.method == "jarzynski":
            d["walkers"] = self.walkers.state_dict()
        else:
            d["x"], d["offset"] = self.x, self.offset
        return d

    def load_state_dict(self, d: dict) -> None:
        self.energy.load_state_dict(d["energy"])
        self.opt.load_state_dict(d["opt"])
        self.gen.set_state(d["gen"])
        if self.method == "jarzynski":
            self.walkers.load_state_dict(d["walkers"])
        else:
            self.x, self.offset = d["x"].to(self.device), int(d["offset"])


def main_for(method: str, args) -> int:
    from .data import load

    def load_data(a):
        return load(a.data, seed=a.seed, data_dir=a.data_dir, n_train=a.n_train)

    return harness.run(method, lambda a, d, dev: EBMTrainer(a, d, dev, method), args, load_data=load_data)
