"""fastlangevin: fused Langevin sampling for energy-based models.

    import fastlangevin as fl
    fl.backends()                         # {'reference': True, 'cpu': True, 'cuda': '...why not', ...}
    xi = fl.randn((4, 3), seed=0, offset=7)   # the normals a step with (seed=0, offset=7) adds
    y = fl.langevin_step(x, grad, 0.01)   # x - 0.01 * grad + sqrt(0.02) * xi
    res = fl.sample(energy, x0, n_steps=500, step_size=1e-2, seed=0)   # res.x, res.energy
    w = fl.Walkers(energy, x0, 1e-2)      # Jarzynski-weighted walkers with SMC resampling
    log_z, se = fl.log_partition(energy, dim=10)                        # AIS
    gmm = fl.energies.GaussianMixture(means, log_weights)  # closed-form energies, fused chains
"""
from . import energies
from ._backend import backends
from .ais import log_partition
from .ops import langevin_step, philox, randn
from .resampling import ess, resample
from .sampler import NonFiniteError, SampleResult, sample
from .walkers import Walkers
from .weights import jarzynski_increment, transition_log_ratio

__version__ = "0.1.0"

__all__ = [
    "backends",
    "energies",
    "philox",
    "randn",
    "langevin_step",
    "sample",
    "SampleResult",
    "NonFiniteError",
    "Walkers",
    "ess",
    "resample",
    "transition_log_ratio",
    "jarzynski_increment",
    "log_partition",
    "__version__",
]
