"""Plain numpy k-reciprocal re-ranking (Zhong et al., CVPR 2017): the ground truth for every backend.

Semantics are those of the widely used numpy code shipped as ``torchreid/utils/rerank.py``
(KaiyangZhou/deep-person-reid, from the authors' https://github.com/zhunzhong07/person-re-ranking),
step for step and in the same float32 arithmetic, so results agree with it bit for bit on inputs without
ties. With N = Q + G items:

1. join the distances into one N x N matrix ``[[q_q, q_g], [q_g.T, g_g]]``, square it (in float64 for
   float64 inputs, float32 otherwise), cast to float32, divide every column by its maximum and transpose:
   row i holds column i of the squared matrix over its maximum (the row itself when the input is
   symmetric);
2. rank every row ascending;
3. R(i, k) = the k-reciprocal neighbours of i: the j among the k+1 first of row i whose own k+1 first
   contain i;
4. expand R(i, k1) by R(c, h), h = round_half_even(k1 / 2), for each c in R(i, k1) for which
   |R(c, h) & R(i, k1)| > 2/3 |R(c, h)|;
5. V[i, j] = exp(-d[i, j]) over the expanded set, normalised to sum 1 per row;
6. when k2 != 1, replace V[i] by the mean of V over the k2 first of row i (i itself included);
7. Jaccard distance of query i to gallery g: 1 - s / (2 - s), s = sum_j min(V[i, j], V[g, j]);
8. final = jaccard * (1 - lambda) + d * lambda, query rows x gallery columns.

Where this differs from the published code (on purpose):

* Ties. The published code uses ``np.argsort``'s default, unstable sort, so the order of equal distances
  depends on the numpy version and the CPU (AVX-512 builds use a vectorised sort). Here ties are broken by
  item index, queries first (``kind="stable"``). A row without ties has one ascending order, which every
  correct sort returns, so results on tie-free inputs are unchanged.
* An item at distance 0 from every item (a column whose maximum is 0) gives 0 / 0 = NaN in the published
  code; here that column is divided by 1 instead, i.e. it stays all zeros.
* float16 inputs are squared in float32 (the published code squares in the input dtype, which overflows
  float16 for distances above 256).
"""
from __future__ import annotations

import numpy as np
import torch

from reidfast._checks import check_rerank_distances, check_rerank_features, check_rerank_parameters
from reidfast.reference.distance import pairwise_distance

__all__ = ["re_ranking", "re_ranking_features", "topk_rows"]

RERANK_METRICS = ("euclidean", "sqeuclidean", "cosine")  # every metric of pairwise_distance


def re_ranking(
    q_g_dist: np.ndarray,
    q_q_dist: np.ndarray,
    g_g_dist: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """k-reciprocal re-ranked query-gallery distances (torchreid ``re_ranking`` signature).

    Args:
        q_g_dist: (Q, G) query-gallery distances (Euclidean in the paper; squared inside).
        q_q_dist: (Q, Q) query-query distances.
        g_g_dist: (G, G) gallery-gallery distances.
        k1: size of the k-reciprocal neighbourhood, 1 <= k1 < Q + G (paper: 20).
        k2: size of the local query expansion, 1 <= k2 <= k1 (paper: 6); 1 means no expansion.
        lambda_value: weight of the original distance, in [0, 1] (paper: 0.3).

    Returns:
        (Q, G) float32 array: jaccard * (1 - lambda_value) + normalised squared distance * lambda_value,
        in [0, 1] up to float32 rounding (an overlap that rounds above 1 gives about -2e-7).
    """
    q_g, q_q, g_g = check_rerank_distances(q_g_dist, q_q_dist, g_g_dist)
    num_query, num_gallery = q_g.shape
    num_all = num_query + num_gallery
    k1, k2, lambda_value = check_rerank_parameters(k1, k2, lambda_value, num_all)

    # Step 1: joint N x N matrix, squared in the input precision, then float32; column-max normalised and
    # transposed, exactly as published (for asymmetric input row i uses column i's maximum).
    joint = np.concatenate(
        [np.concatenate([q_q, q_g], axis=1), np.concatenate([q_g.T, g_g], axis=1)], axis=0
    )
    squared = np.power(joint, 2).astype(np.float32)
    column_max = squared.max(axis=0)
    column_max[column_max == 0] = 1  # an all-zero column stays zero instead of 0 / 0 = NaN
    dist = np.ascontiguousarray((squared / column_max).T)
    del joint, squared

    # Step 2: rank each row once; equal distances are ordered by item index (see the module docstring).
    initial_rank = np.argsort(dist, axis=1, kind="stable")

    def k_reciprocal_neighbours(i: int, k: int) -> np.ndarray:
        """Indices j among the k+1 first of row i whose own k+1 first contain i, in row i's rank order."""
        forward = initial_rank[i, : k + 1]
        backward = initial_rank[forward, : k + 1]
        return forward[(backward == i).any(axis=1)]

    # np.around rounds half to even: k1 = 1 -> 0, 5 -> 2, 7 -> 4, 21 -> 10.
    half_k1 = int(np.around(k1 / 2.0))
    half_reciprocal = [k_reciprocal_neighbours(j, half_k1) for j in range(num_all)]

    # Steps 3-5: expanded k-reciprocal sets and their exp(-d) weights, normalised per row.
    weights = np.zeros((num_all, num_all), dtype=np.float32)
    for i in range(num_all):
        reciprocal = k_reciprocal_neighbours(i, k1)
        expansion = [reciprocal]
        for candidate in reciprocal:
            candidate_reciprocal = half_reciprocal[candidate]
            overlap = np.intersect1d(candidate_reciprocal, reciprocal).size
            # Compared against R(i, k1) itself, not the growing expansion.
            if overlap > 2.0 / 3.0 * candidate_reciprocal.size:
                expansion.append(candidate_reciprocal)
        expanded = np.unique(np.concatenate(expansion))
        row_weight = np.exp(-dist[i, expanded])
        weights[i, expanded] = row_weight / np.sum(row_weight)

    # Step 6: local query expansion, over all rows (gallery rows enter the Jaccard distance too).
    if k2 != 1:
        expanded_weights = np.zeros_like(weights)
        for i in range(num_all):
            expanded_weights[i] = np.mean(weights[initial_rank[i, :k2]], axis=0)
        weights = expanded_weights
    del initial_rank

    # Step 7: Jaccard distance of each query to each gallery item. Accumulating min(V[i, j], V[g, j])
    # over the query's non-zero j in increasing j, in float32, keeps the published rounding.
    gallery_weights_by_item = np.ascontiguousarray(weights[num_query:].T)  # (N, G)
    jaccard = np.empty((num_query, num_gallery), dtype=np.float32)
    for i in range(num_query):
        shared = np.zeros(num_gallery, dtype=np.float32)
        for j in np.flatnonzero(weights[i]):
            shared += np.minimum(weights[i, j], gallery_weights_by_item[j])
        jaccard[i] = 1 - shared / (2.0 - shared)

    # Step 8: blend with the normalised squared distance.
    original = dist[:num_query, num_query:]
    final = jaccard * (1 - lambda_value) + original * lambda_value
    return np.ascontiguousarray(final, dtype=np.float32)


def re_ranking_features(
    query_features: np.ndarray,
    gallery_features: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    metric: str = "euclidean",
) -> np.ndarray:
    """Re-ranked distances from features: (Q, D) queries, (G, D) gallery -> (Q, G) float32.

    The three distance matrices come from :func:`reidfast.reference.distance.pairwise_distance` in
    float32 and go to :func:`re_ranking`, which squares them. ``metric="cosine"`` (1 - cos) and
    ``"sqeuclidean"`` feed their distances in as they are, so they are squared too, as when torchreid's code is
    given such a distmat.
    """
    if metric not in RERANK_METRICS:
        raise ValueError(f"metric: expected one of {RERANK_METRICS}, got {metric!r}")
    query = check_rerank_features(query_features, "query_features")
    gallery = check_rerank_features(gallery_features, "gallery_features")
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"gallery_features: expected the same feature dimension as query_features ({query.shape[1]}), "
            f"got {gallery.shape[1]}"
        )
    query_t, gallery_t = torch.from_numpy(query), torch.from_numpy(gallery)
    with torch.no_grad():
        q_g = pairwise_distance(query_t, gallery_t, metric=metric).numpy()
        q_q = pairwise_distance(query_t, query_t, metric=metric).numpy()
        g_g = pairwise_distance(gallery_t, gallery_t, metric=metric).numpy()
    return re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lambda_value)


def topk_rows(distances: np.ndarray, topk: int) -> tuple[np.ndarray, np.ndarray]:
    """The `topk` smallest entries of each row of a (Q, G) matrix, ascending, ties by column index (a stable
    sort of the whole row): (values (Q, topk) float32, indices (Q, topk) int64)."""
    order = np.argsort(distances, axis=1, kind="stable")[:, :topk].astype(np.int64)
    return np.take_along_axis(distances, order, axis=1).astype(np.float32), order
