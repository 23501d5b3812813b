"""Benchmark harness of Chrono Flight: `python -m bench.run` (see bench/run.py)."""
