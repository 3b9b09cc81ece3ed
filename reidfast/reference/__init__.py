"""Plain torch/numpy implementations of every op: the ground truth for tests and benchmarks, and the
fallback backend when nothing faster is available."""
