"""Benchmarks for fastlangevin: ``python -m bench [--quick] [--device cpu|cuda]``."""
