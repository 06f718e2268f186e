"""Evaluation: benchmarks and the accuracy cost of exported engines."""
