"""The torch backends: the ops as torch operations on the input's own device (CUDA, or CPU when forced)."""
