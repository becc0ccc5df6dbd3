"""Triton kernels and their launchers (no autograd here; see convnext_kernels.ops)."""
