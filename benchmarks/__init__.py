"""Benchmarks: the product against its physical limits and a baseline."""
