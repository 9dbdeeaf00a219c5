"""Benchmarks: programs that print and save their figures (see docs/benchmarks.md)."""
