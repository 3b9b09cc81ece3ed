"""Triton kernels (optional dependency; import a submodule only after checking reidfast.backends())."""
