"""fastlangevin: fused Langevin sampling for energy-based models.

    import fastlangevin as fl
    fl.backends()                         # {'reference': True, 'cpu': True, 'cuda': '...why not', ...}
    xi = fl.randn((4, 3), seed=0, offset=7)   # the normals a step with (seed=0, offset=7) adds
    y = fl.langevin_step(x, grad, 0.01)   # x - 0.01 * grad + sqrt(0.02) * xi
    res = fl.sample(energy, x0, n_steps=500, step_size=1e-2, seed=0)   # res.x, res.energy
"""
from ._backend import backends
from .ops import langevin_step, philox, randn
from .sampler import NonFiniteError, SampleResult, sample

__version__ = "0.1.0"

__all__ = [
    "backends",
    "philox",
    "randn",
    "langevin_step",
    "sample",
    "SampleResult",
    "NonFiniteError",
    "__version__",
]
