"""Backends (numpy in, numpy out) and the one generation loop they all share."""
