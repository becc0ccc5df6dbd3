"""Benchmarks and the kernel report. Run from the repository root: python -m benchmarks.<name>."""
