"""Triton kernels of fusedrnn, installed as ``fusedrnn.kernels`` (never a top-level module)."""
