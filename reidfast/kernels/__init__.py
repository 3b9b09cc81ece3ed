"""Kernel launchers. Triton kernels live in reidfast.kernels.triton and are imported lazily."""
