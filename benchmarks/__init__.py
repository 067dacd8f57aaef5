"""Benchmarks for issue #7: the product against its physical limits and a baseline."""
