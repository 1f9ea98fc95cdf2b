"""Micro-benchmarks; run a module with `python -m benchmarks.<name>` from the repository root."""
