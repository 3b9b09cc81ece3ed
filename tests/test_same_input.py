"""The one "same input" rule (reidfast._arrays.same_rows): when row i of x is row i of y in memory (the same
tensor, or one a prefix view of the other), kernels make a row's distance to itself exact (0 before the
metric's clamp) and may reuse x's norms as y's. Through the public API that must give the results of
copies of the inputs (up to float32 rounding) on every backend, whichever input is the longer, and in
mining the exact self distance wherever the rule holds.
"""
from __future__ import annotations

import pytest
import torch

import reidfast
from conftest import device_backend_params

# Regression tests: the CPU kernels read x's norms from y's norm buffer whenever x was y, also when x had more
# rows than y (rows past y's end got garbage distances, NaN seen); CPU mining tested "same input" as
# rows == cols and never zeroed the self lanes.
FLOAT32_EPS = torch.finfo(torch.float32).eps


def _bank(rows: int = 40, dim: int = 256) -> torch.Tensor:
    """Features with large norms, where |x|^2 + |y|^2 - 2 x.y leaves residues well above the 1e-12 clamp."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(rows, dim, generator=generator) * 4 + 3


def _squared_distance_bound(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, M) float32 rounding bound of a squared distance: a few eps * (|x|^2 + |y|^2)."""
    x_sq, y_sq = (x.double() ** 2).sum(1), (y.double() ** 2).sum(1)
    return 8 * FLOAT32_EPS * (x_sq[:, None] + y_sq[None, :])


@pytest.mark.parametrize("rows, cols", [(30, 7), (7, 30), (30, 30)])
@pytest.mark.parametrize("device, backend", device_backend_params())
def test_distances_of_overlapping_views_equal_those_of_copies(device, backend, rows, cols):
    bank = _bank().to(device)
    x, y = bank[:rows], bank[:cols]
    with reidfast.use_backend(backend):
        shared = reidfast.pairwise_distance(x, y, metric="sqeuclidean")
        copied = reidfast.pairwise_distance(x.clone(), y.clone(), metric="sqeuclidean")
    error = (shared.double() - copied.double()).abs()
    bound = _squared_distance_bound(x, y).to(error.device)
    assert bool((error <= bound).all()), f"worst entry {error.max().item()} (bound {bound.max().item()})"


@pytest.mark.parametrize("rows, cols", [(30, 7), (7, 30)])
@pytest.mark.parametrize("device, backend", device_backend_params())
def test_neighbours_of_overlapping_views_equal_those_of_copies(device, backend, rows, cols):
    bank = _bank().to(device)
    x, y = bank[:rows], bank[:cols]
    with reidfast.use_backend(backend):
        shared, _ = reidfast.topk_distance(x, y, k=3, metric="sqeuclidean")
        copied, _ = reidfast.topk_distance(x.clone(), y.clone(), k=3, metric="sqeuclidean")
    error = (shared.double() - copied.double()).abs()
    bound = _squared_distance_bound(x, y).max().item()
    assert bool((error <= bound).all()), f"worst entry {error.max().item()} (bound {bound})"


@pytest.mark.parametrize("num_candidates", [5, 12])
@pytest.mark.parametrize("device, backend", device_backend_params())
def test_mining_gives_the_exact_self_distance_where_the_rule_holds(device, backend, num_candidates):
    """Anchors are the first rows of the candidates (no anchor_index: self is a candidate) and every label is
    distinct, so each anchor's only positive is itself: d_ap is its self distance, sqrt(1e-12) exactly."""
    bank = _bank().to(device)
    labels = torch.arange(bank.shape[0], device=device)
    with reidfast.use_backend(backend):
        _, details = reidfast.batch_hard_triplet_loss(
            bank[:5], labels[:5], candidates=bank[:num_candidates], candidate_labels=labels[:num_candidates],
            return_details=True)
    exact = torch.tensor(1e-12).sqrt().item()
    assert details.dist_ap.tolist() == [exact] * 5
