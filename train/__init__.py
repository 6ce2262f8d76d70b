"""Jobs of this project, run as ``python -m train METHOD [options]`` (see train/__main__.py).

Methods so far: ``demo`` (train/demo.py), fastlangevin.sample() on an 8-Gaussian mixture.
"""
