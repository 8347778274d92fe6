"""Benchmarks: ``make bench`` (``python -m bench.run``) and the microbenchmarks in ``micro/``."""
