"""Benchmarks of the deployment: run `make bench` (benchmarks/run.py); see docs/performance.md."""
