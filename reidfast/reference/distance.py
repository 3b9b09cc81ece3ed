"""Plain torch pairwise distances: the ground truth for every distance backend.

Semantics (shared/DESIGN.md):
    euclidean   = sqrt(max(|x|^2 + |y|^2 - 2 x.y, 1e-12))
    sqeuclidean = max(|x|^2 + |y|^2 - 2 x.y, 0)
    cosine      = 1 - x_hat . y_hat, x_hat = x / max(|x|, 1e-12) (a zero vector is at distance 1 from all)
Half-precision inputs are accumulated in float32; float64 stays float64.
"""
from __future__ import annotations

import torch

METRICS = ("euclidean", "sqeuclidean", "cosine")
EUCLIDEAN_CLAMP = 1e-12
COSINE_EPS = 1e-12


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def pairwise_distance(x: torch.Tensor, y: torch.Tensor | None = None, metric: str = "euclidean") -> torch.Tensor:
    """Distances between the rows of x (N, D) and y (M, D) -> (N, M), float32 (float64 for float64 inputs).

    Differentiable through autograd; y=None means y = x.
    """
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    y = x if y is None else y
    dtype = accumulation_dtype(torch.promote_types(x.dtype, y.dtype))
    x, y = x.to(dtype), y.to(dtype)
    if metric == "cosine":
        x_hat = x / x.norm(dim=1, keepdim=True).clamp_min(COSINE_EPS)
        y_hat = y / y.norm(dim=1, keepdim=True).clamp_min(COSINE_EPS)
        return 1.0 - x_hat @ y_hat.T
    squared = (x * x).sum(1, keepdim=True) + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    if metric == "sqeuclidean":
        return squared.clamp_min(0.0)
    return squared.clamp_min(EUCLIDEAN_CLAMP).sqrt()


def pairwise_distance_bruteforce(x: torch.Tensor, y: torch.Tensor | None = None, metric: str = "euclidean") -> torch.Tensor:
    """The same distances by explicit differences in float64: an independent check of the formula above."""
    y = x if y is None else y
    x64, y64 = x.double(), y.double()
    if metric == "cosine":
        x_hat = x64 / x64.norm(dim=1, keepdim=True).clamp_min(COSINE_EPS)
        y_hat = y64 / y64.norm(dim=1, keepdim=True).clamp_min(COSINE_EPS)
        return 1.0 - (x_hat[:, None, :] * y_hat[None, :, :]).sum(-1)
    diff = x64[:, None, :] - y64[None, :, :]
    squared = (diff * diff).sum(-1)
    if metric == "sqeuclidean":
        return squared
    return squared.clamp_min(EUCLIDEAN_CLAMP).sqrt()


def topk_distance(
    x: torch.Tensor, y: torch.Tensor | None = None, k: int = 1, metric: str = "euclidean", exclude_self: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest rows of y for every row of x -> (values (N, k), indices (N, k) int64), ascending by
    (distance, column): equal distances list the smaller column first. exclude_self (y=None only) skips
    each row's own column. Materialises the full (N, M) matrix: a reference, not a scalable path."""
    distances = pairwise_distance(x, y, metric)
    if exclude_self:
        distances.fill_diagonal_(float("inf"))
    order = torch.sort(distances, dim=1, stable=True).indices[:, :k]
    return distances.gather(1, order), order
