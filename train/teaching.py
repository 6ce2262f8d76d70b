"""What the two MCMC-teaching trainers share (train/coopvae.py, train/dualmcmc.py): settings,
model coordinates (images whitened as in train/ebm.py), the EBM, the generator / encoder, the
data-space Langevin refinement on fastlangevin, evaluation (mmd_init vs mmd_refined, AIS on
images), pictures and checkpoint state.

Both methods train an EBM whose negatives are an amortised sampler's proposals refined by K
Langevin steps on the EBM; the sampler (CoopVAEBM's VAE decoder, Dual-MCMC's generator) in
turn learns from the refined samples. Their central claim, tested here: the EBM-refined
samples are closer to the data than the sampler's own (mmd_refined < mmd_init).

Energies. U(x) = c * E_net(x) + |x|^2 / (2 ref_var), lower is likelier:

- E_net is models.build_energy(model, data) without a reference term (the negative of the
  papers' f); c = 1 / T is Dual-MCMC's code temperature (1 otherwise).
- the Gaussian reference |x|^2 / (2 ref_var) is CoopVAEBM's N(x; 0, s^2 I) with s^2 = ref_var;
  Dual-MCMC's EBM has none, but we keep it (the same value) so that e^{-U} is normalisable and
  the AIS log-likelihood on digits is defined, exactly like the pcd / jarzynski EBMs.
- The reference is part of U (not passed to sample() as ref_var), so one U serves Langevin,
  the EBM loss (where it cancels in mean U(data) - mean U(samples) only up to the data's
  |x|^2 vs the samples') and AIS: they are the same density.

Random numbers: data batches, latent draws and reparameterisation noise come from the
trainer's torch.Generator (saved in the checkpoint); every Langevin step's noise is Philox
(seed, offset) with offsets that advance each iteration (saved too), so --resume is bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

import torch
from torch import nn

import fastlangevin as fl

from . import harness

LATENT_STREAM = 1 << 62   # Philox offsets of latent-space Langevin steps (data-space ones count from 0)
EVAL_STREAM = 1 << 61     # Philox offsets of the evaluation refinement


@dataclass
class Settings:
    """Resolved hyperparameters of one teaching run (config.json). None: not used by the method."""

    iters: int = 1500
    model: str = "mlp"             # the EBM (models.build_energy)
    arch: str = "mlp"              # generator / encoder (models.build_teaching_nets)
    latent: int = 4
    hidden: Optional[int] = None   # EBM MLP width (None: build_energy's default)
    gen_hidden: int = 128
    batch: int = 256               # data per iteration (= generated chains per iteration)
    k_x: int = 20                  # data-space Langevin steps on the EBM
    step_x: float = 0.005          # a (CoopVAEBM delta^2 / 2)
    noise_x: Optional[float] = None  # None: sqrt(2 a); 0: CoopVAEBM code (noise off)
    temperature: float = 1.0       # Dual-MCMC code: U = E_net / T
    ref_var: float = 16.0          # the EBM's Gaussian reference variance s^2
    lr_ebm: float = 1e-3
    lr_gen: float = 1e-3
    lr_inf: Optional[float] = None
    betas_ebm: tuple = (0.5, 0.999)
    betas_gen: tuple = (0.5, 0.999)
    weight_decay_gen: float = 0.0
    lr_decay: str = "none"         # "none" | "coop" (lr 0.98^(epoch/20)) | "dual" (0.998^floor(epoch))
    l2: float = 0.0                # weight of mean U_net^2 on data and samples (0: the papers')
    kl_weight: Optional[float] = None     # coopvae: w in rec + w KL
    k_z: Optional[int] = None              # dualmcmc: latent Langevin steps
    step_z: Optional[float] = None
    noise_z: Optional[float] = None
    sigma: Optional[float] = None          # dualmcmc: generator observation std
    z_lik_scale: Optional[float] = None    # dualmcmc: latent energy z_lik_scale |x - g(z)|^2 / sigma^2
    gen_loss_scale: Optional[float] = None  # dualmcmc: generator loss per |x - g(z)|^2
    w_gen_teach: Optional[float] = None    # dualmcmc: weight of |g(z) - x~|^2 (code Sfactor)
    w_inf_teach: Optional[float] = None    # dualmcmc: weight of -log q(z | x~) (code Ifactor)
    fine_tune: Optional[bool] = None       # dualmcmc: fresh x-chain from the updated generator for the EBM
    explode: Optional[float] = None        # dualmcmc code: stop when |EBM loss| > explode
    eval_n: int = 2000
    ais_walkers: int = 1024
    ais_steps: int = 1000
    notes: list = field(default_factory=list)


# options every teaching method takes (None: the preset's)
INT_OPTS = ("latent", "hidden", "gen_hidden", "batch", "k_x", "k_z", "eval_n", "ais_walkers", "ais_steps")
FLOAT_OPTS = ("step_x", "noise_x", "temperature", "ref_var", "lr_ebm", "lr_gen", "lr_inf", "l2", "kl_weight",
              "step_z", "noise_z", "sigma", "w_gen_teach", "w_inf_teach", "explode")


def add_arguments(parser, method: str) -> None:
    from .data import DATASETS

    harness.add_common_arguments(parser, datasets=DATASETS, default_data="8gaussians")
    g = parser.add_argument_group(f"{method} settings (default: the preset's, by data kind)")
    g.add_argument("--model", default=None, help="the EBM: mlp | conv | nijkamp")
    g.add_argument("--arch", default=None, help="generator / encoder: mlp | dcgan (32x32)")
    g.add_argument("--n-train", type=harness.POSITIVE_INT, default=None, help="training points (toys: generated)")
    for f in INT_OPTS + FLOAT_OPTS:
        g.add_argument("--" + f.replace("_", "-"), type=harness.OPTION_TYPES[f], default=None)
    g.add_argument("--lr-decay", default=None, choices=("none", "coop", "dual"))


def resolve(args, s: Settings) -> Settings:
    for f in fields(Settings):
        v = getattr(args, f.name, None)
        if v is not None and f.name != "notes":
            setattr(s, f.name, v)
    if s.iters < 1:
        raise SystemExit(f"--iters must be >= 1, got {s.iters}")
    return s


def main_for(method: str, trainer_cls, args) -> int:
    from .data import load

    def load_data(a):
        return load(a.data, seed=a.seed, data_dir=a.data_dir, n_train=a.n_train)

    return harness.run(method, trainer_cls, args, load_data=load_data)


class _Scaled(nn.Module):
    """U(x) = E_net(x) / T + |x|^2 / (2 ref_var) (see the module docstring)."""

    def __init__(self, net: nn.Module, temperature: float, ref_var: float):
        super().__init__()
        self.net, self.inv_t, self.ref_var = net, 1.0 / float(temperature), float(ref_var)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.net(x)
        if self.inv_t != 1.0:
            u = u * self.inv_t
        return u + x.reshape(x.shape[0], -1).pow(2).sum(1) / (2.0 * self.ref_var)


class TeachingTrainer:
    """The shared part; subclasses set `method`, define preset() and step()."""

    method = "teaching"
    bar = ("loss", "loss_gen")

    @classmethod
    def preset(cls, kind: str, preset_name: str) -> Settings:  # pragma: no cover - overridden
        raise NotImplementedError

    def __init__(self, args, data, device):
        from models import build_energy, build_teaching_nets

        from .ebm import whitening

        self.data, self.device = data, device
        self.s = s = resolve(args, self.preset(data.kind, args.preset))
        if data.kind == "gmm":
            raise SystemExit(f"{self.method}: the gmm teacher is for pcd / cd / jarzynski; use a toy or image data set")
        self.model_name = s.model
        self.iters = s.iters
        self.seed = args.seed
        self.dtype = data.train.dtype
        self.train = data.train.to(device)
        self.whiten = data.kind == "image"  # whitened model coordinates, as EBMTrainer (train/ebm.py)
        if self.whiten:
            self.shift, self.scale = whitening(self.train)
            self.train = (self.train - self.shift) / self.scale
        self.gen = torch.Generator().manual_seed(args.seed)
        kw = {"hidden": s.hidden} if s.hidden is not None and s.model == "mlp" else {}
        net = build_energy(s.model, data, **kw)
        # the output layer: a Linear for the MLP / conv EBMs, the Nijkamp net's final 4x4 conv
        last = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
        with torch.no_grad():  # start at the reference N(0, ref_var I) (images: the diagonal Gaussian)
            last.weight.mul_(0.1 if not self.whiten else 0.0)
            last.bias.zero_()
        self.energy = _Scaled(net, s.temperature, s.ref_var).to(device=device, dtype=self.dtype)
        self.generator, self.encoder = build_teaching_nets(s.arch, data, latent=s.latent, hidden=s.gen_hidden)
        self.generator.to(device)
        self.encoder.to(device)
        self.opt_ebm = torch.optim.Adam(self.energy.parameters(), lr=s.lr_ebm, betas=tuple(s.betas_ebm))
        self.offset = 0     # Philox offset of the next data-space Langevin step
        self.offset_z = 0   # ... of the next latent-space step (dualmcmc)
        self.build_optimizers()

    def build_optimizers(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # ---------------------------------------------------------------- helpers
    def settings(self) -> dict:
        d = asdict(self.s)
        d["noise_x_effective"] = (self.s.noise_x if self.s.noise_x is not None
                                  else math.sqrt(2 * self.s.step_x * self.s.temperature))
        return d

    def optimizers(self) -> dict:
        return {"ebm": self.opt_ebm}

    def set_lr(self, it: int) -> None:
        """The learning-rate schedule as a pure function of the iteration (so resume is exact)."""
        s = self.s
        if s.lr_decay == "none":
            return
        epoch = it * s.batch / self.train.shape[0]
        f = 0.98 ** (epoch / 20) if s.lr_decay == "coop" else 0.998 ** math.floor(epoch)
        for opt in self.optimizers().values():
            for grp in opt.param_groups:
                grp["lr"] = grp.setdefault("initial_lr", grp["lr"]) * f

    def randn(self, *shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen, dtype=self.dtype).to(self.device)

    def data_batch(self, n: int) -> torch.Tensor:
        idx = torch.randint(0, self.train.shape[0], (n,), generator=self.gen)
        return self.train[idx.to(self.device)]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The generator's output in model coordinates (whitened for images)."""
        x = self.generator(z)
        if self.whiten and getattr(self.generator, "pixel_space", False):
            x = (x.reshape(z.shape[0], *self.data.shape) - self.shift) / self.scale  # shift, scale [*shape]
        return x.reshape(z.shape[0], *self.data.shape)

    def to_data_space(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.scale + self.shift if self.whiten else y

    def refine(self, x0: torch.Tensor, offset: int) -> torch.Tensor:
        """k_x Langevin steps x <- x - step_x grad E_net + noise_x xi (plus the reference's pull)
        from x0 through fastlangevin: on U = E_net / T that is the step step_x * T (the exact
        ULA for exp(-U) when noise_x = sqrt(2 step_x T), the default); noise_x = 0: deterministic."""
        s = self.s
        return fl.sample(self.energy, x0.detach(), s.k_x, s.step_x * s.temperature, s.noise_x, seed=self.seed,
                         offset=offset).x

    def ebm_step(self, x_data: torch.Tensor, x_neg: torch.Tensor) -> torch.Tensor:
        """One Adam step on mean U(data) - mean U(negatives) (the ML gradient, both papers; with
        U = E_net / T this is the Dual-MCMC code's loss divided by its temperature)."""
        u_data, u_neg = self.energy(x_data), self.energy(x_neg.detach())
        loss = u_data.mean() - u_neg.mean()
        total = loss
        if self.s.l2:
            total = loss + self.s.l2 * ((u_data ** 2).mean() + (u_neg ** 2).mean())
        self.opt_ebm.zero_grad(set_to_none=True)
        total.backward()
        self.opt_ebm.step()
        return loss.detach()

    @staticmethod
    def check_finite(it: int, **losses) -> None:
        for k, v in losses.items():
            v = float(v.detach()) if torch.is_tensor(v) else float(v)
            if not math.isfinite(v):
                raise harness.Diverged(it, f"{k} is {v}")

    # ---------------------------------------------------------------- results
    def eval_samples(self, n: int) -> tuple:
        """(initialiser's samples, EBM-refined samples), data space, n each: fixed latent draws
        (their own generator) and the evaluation Philox stream, so evaluation consumes no
        training randomness."""
        g = torch.Generator().manual_seed(self.seed + 1_000_003)
        z = torch.randn((n, self.s.latent), generator=g, dtype=self.dtype).to(self.device)
        with torch.no_grad():
            x0 = self.decode(z)
        x1 = self.refine(x0, EVAL_STREAM)
        return self.to_data_space(x0), self.to_data_space(x1)

    def evaluate(self) -> dict:
        from . import metrics

        out = {"settings_notes": self.s.notes}
        n = self.s.eval_n if self.data.kind == "toy2d" else min(self.s.eval_n, 1000)
        x0, x1 = self.eval_samples(n)
        out["mmd_init"] = metrics.mmd(x0, self.data.test)
        out["mmd_refined"] = metrics.mmd(x1, self.data.test)
        out["mmd"] = out["mmd_refined"]
        if self.data.kind == "toy2d":
            out.update(metrics.grid_divergences(self.energy, self.data))
        else:
            test_y = (self.data.test.to(self.device) - self.shift) / self.scale
            ais = metrics.ais_log_likelihood(self.energy, test_y, n_walkers=self.s.ais_walkers,
                                             n_steps=self.s.ais_steps, base_std=math.sqrt(self.s.ref_var),
                                             seed=self.seed)
            log_det = float(self.scale.log().sum())  # log p_x = log p_y - sum_j log std_j
            out.update(test_ll=ais["ll"] - log_det, test_ll_se=ais["se"],
                       diag_gaussian_test_ll=metrics.diag_gaussian_log_likelihood(self.data.train, self.data.test))
        return out

    def pictures(self, out, history) -> list:
        from . import plots

        x0, x1 = self.eval_samples(2000 if self.data.kind == "toy2d" else 64)
        who = "decoder" if self.method == "coopvae" else "generator"
        paths = [plots.save_side_by_side(out / "samples.png",
                                         {f"{who} g(z)": x0, "EBM-refined": x1, "held-out data": self.data.test},
                                         self.data, title=f"{self.method} on {self.data.name}")]
        if self.data.kind == "toy2d":
            paths.append(plots.save_energy_landscape(out / "energy.png", self.energy, self.data))
        series = {k: history[k] for k in ("loss", "loss_gen", "loss_inf", "rec", "kl") if k in history}
        if series:
            paths.append(plots.save_traces(out / "traces.png", series, x=history.get("iter"),
                                           title=f"{self.method} on {self.data.name}"))
        return paths

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"energy": self.energy.state_dict(), "generator": self.generator.state_dict(),
                "encoder": self.encoder.state_dict(),
                "opt": {k: o.state_dict() for k, o in self.optimizers().items()},
                "gen": self.gen.get_state(), "offset": self.offset, "offset_z": self.offset_z}

    def load_state_dict(self, d: dict) -> None:
        self.energy.load_state_dict(d["energy"])
        self.generator.load_state_dict(d["generator"])
        self.encoder.load_state_dict(d["encoder"])
        for k, o in self.optimizers().items():
            o.load_state_dict(d["opt"][k])
        self.gen.set_state(d["gen"])
        self.offset, self.offset_z = int(d["offset"]), int(d["offset_z"])
