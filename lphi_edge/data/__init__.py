"""Synthetic data: the shapes camera task of DESIGN.md."""
