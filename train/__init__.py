"""Jobs of this project, run as ``python -m train METHOD [options]`` (see train/__main__.py).

Methods: ``pcd``, ``cd``, ``jarzynski`` (train/ebm.py, Carbone et al. 2023 and its baselines),
``coopvae`` (train/coopvae.py, Xie et al. 2021), ``dualmcmc`` (train/dualmcmc.py, Cui and Han
2023), ``compare`` (train/compare.py: the comparison tables) and ``demo`` (train/demo.py:
fastlangevin.sample() on an 8-Gaussian mixture). The shared pieces: train/harness.py (run
folder, checkpoints, resume), train/data.py, train/metrics.py, train/plots.py.
"""
