"""k-reciprocal re-ranking (Zhong et al., CVPR 2017): exact, in O(N*k1 + Q*G) memory instead of O(N^2).

The published algorithm (reidfast/reference/rerank.py, torchreid's ``re_ranking``) builds the full N x N
distance, rank and weight matrices, N = Q + G. It only ever needs, per item i (a row of its ``dist``):

* the k1+1 first items of the row's ascending order (ties by index), and the row's maximum squared distance
  (its normalisation), found here in one blockwise pass over the rows (``chunk_size`` rows at a time);
* the normalised squared distance of the pairs in the expanded k-reciprocal sets, looked up in the given
  matrices (distances path) or recomputed from the features (features path);
* the query rows of the Jaccard distance, from sparse weight rows through an inverted index.

The native backend ("cpu", csrc/cpu/rerank.cpp, OpenMP) does the top-k pass and the sparse stages in C++
with the reference's float32 arithmetic and summation order, so results agree with the reference to
float32 rounding (~1e-7; ``exp`` may differ by an ulp) and are identical in their ties (by item index).
Asymmetric q_q / g_g are handled exactly as the published code does (row i uses column i of the joint
matrix). On the features path the distances come from :func:`reidfast.pairwise_distance`'s native GEMM
instead of the reference's torch expression: identical up to float32 rounding, so only near-ties (e.g.
duplicated features, whose distances are rounding noise) can order differently.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import _native
from .._arrays import as_tensor, to_caller
from .._dispatch import Op
from ..reference import rerank as reference

__all__ = ["re_ranking", "re_ranking_distances"]

RE_RANKING = Op("re_ranking")
_BLOCK_ELEMENTS = 1 << 22  # default block: 4M distances (16 MiB in float32) per pass-1 block


@RE_RANKING.register("reference")
def _re_ranking_reference(kind, data, k1, k2, lambda_value, chunk_size, progress):
    if kind == "distances":
        return reference.re_ranking(*data, k1=k1, k2=k2, lambda_value=lambda_value)
    query, gallery, metric = data
    return reference.re_ranking_features(query, gallery, k1=k1, k2=k2, lambda_value=lambda_value, metric=metric)


def _progress_bar(total: int, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: no bar
        return None
    return tqdm(total=total, desc="re-ranking", unit="row", disable=not enabled)


def _unit_stride(array: np.ndarray) -> np.ndarray:
    return array if array.shape[1] <= 1 or array.strides[1] == array.itemsize else np.ascontiguousarray(array)


@RE_RANKING.register("cpu")
def _re_ranking_cpu(kind, data, k1, k2, lambda_value, chunk_size, progress):
    view, C = _native.view, _native._C
    if kind == "distances":
        q_g, q_q, g_g = (_unit_stride(a) for a in data)
        num_query, num_gallery = q_g.shape
        metric = "euclidean"
    else:
        query, gallery, metric = data
        num_query, num_gallery = query.shape[0], gallery.shape[0]
        features = torch.from_numpy(np.ascontiguousarray(np.concatenate([query, gallery], axis=0)))
        norms = (features * features).sum(1)  # once, not per block
    num_all = num_query + num_gallery
    if num_query == 0 or num_gallery == 0:
        return np.empty((num_query, num_gallery), dtype=np.float32)
    width = k1 + 1
    step = int(chunk_size) if chunk_size is not None else max(1, _BLOCK_ELEMENTS // num_all)
    ranks = torch.empty((num_all, width), dtype=torch.int64)
    row_max = torch.empty(num_all, dtype=torch.float32)
    out = np.empty((num_query, num_gallery), dtype=np.float32)
    bar = _progress_bar(num_all + 1, progress)

    # Pass 1: row i of the published dist is column i of the joint matrix [[q_q, q_g], [q_g.T, g_g]];
    # blocks never straddle the query/gallery boundary.
    starts = [(s, min(s + step, num_query)) for s in range(0, num_query, step)]
    starts += [(s, min(s + step, num_all)) for s in range(num_query, num_all, step)]
    for start, stop in starts:
        if kind == "distances":  # transposed views, no copy: the kernel reads them along their columns
            if stop <= num_query:
                left, right = q_q[:, start:stop].T, q_g[start:stop]
            else:
                cols = slice(start - num_query, stop - num_query)
                left, right = q_g[:, cols].T, g_g[:, cols].T
            left_t, right_t = torch.from_numpy(left), torch.from_numpy(right)
        else:
            # pairwise_distance's native CPU path (BLAS GEMM + epilogue), norms computed once
            block_t = torch.mm(features[start:stop], features.T)
            C.distance_epilogue_cpu(view(block_t), view(norms[start:stop]), view(norms), _native.METRIC_CODES[metric],
                                    start)
            left_t, right_t = block_t[:, :num_query], block_t[:, num_query:]
            right = right_t.numpy()
        C.rerank_topk_block_cpu(view(left_t), view(right_t), width, view(row_max[start:stop]), view(ranks[start:stop]))
        if stop <= num_query:  # the normalised squared query-gallery distance, as published
            out[start:stop] = np.square(right).astype(np.float32, copy=False) / row_max[start:stop].numpy()[:, None]
        if bar is not None:
            bar.update(stop - start)

    empty = torch.empty(0, dtype=torch.float32)
    out_t = torch.from_numpy(out)
    if kind == "distances":
        sources = [torch.from_numpy(a) for a in (q_g, q_q, g_g)]
        C.rerank_finish_cpu(view(ranks), view(row_max), view(empty), _native.METRIC_CODES[metric],
                            *(view(s) for s in sources), num_query, k1, k2, lambda_value, view(out_t))
    else:
        C.rerank_finish_cpu(view(ranks), view(row_max), view(features), _native.METRIC_CODES[metric],
                            view(empty), view(empty), view(empty), num_query, k1, k2, lambda_value, view(out_t))
    if bar is not None:
        bar.update(1)
        bar.close()
    return out


def _host_array(value: Any) -> tuple[Any, torch.device | None]:
    """A host array the reference checks understand, and the torch device to answer on (None: numpy)."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.dtype in (torch.bfloat16,):
            tensor = tensor.float()  # exact; the reference computes non-float64 inputs in float32 anyway
        return tensor.cpu().numpy(), value.device
    if type(value).__module__.split(".")[0] == "cupy":
        return value.get(), None
    return value, None


def _run(kind, data, k1, k2, lambda_value, device, chunk_size, progress):
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer))
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer (rows per block) or None, got {chunk_size!r}")
    _, implementation = RE_RANKING.select(device if device is not None else torch.device("cpu"))
    with torch.no_grad():
        return implementation(kind, data, k1, k2, lambda_value, chunk_size, progress)


def _answer(result: np.ndarray, library: str, device: torch.device | None) -> Any:
    tensor = torch.from_numpy(np.ascontiguousarray(result, dtype=np.float32))
    if device is not None and device.type != "cpu":
        tensor = tensor.to(device)
    return to_caller(tensor, library)


def _library(value: Any, name: str) -> str:
    try:
        return as_tensor(value, name)[1]
    except ValueError:
        return "numpy"


def re_ranking_distances(
    q_g_dist: Any,
    q_q_dist: Any,
    g_g_dist: Any,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    chunk_size: int | None = None,
    progress: bool = False,
) -> Any:
    """k-reciprocal re-ranked (Q, G) distances from Euclidean distances (torchreid ``re_ranking`` signature).

    Args:
        q_g_dist, q_q_dist, g_g_dist: (Q, G), (Q, Q), (G, G) distances (numpy, torch or cupy; squared inside).
        k1: k-reciprocal neighbourhood, 1 <= k1 < Q + G. k2: query expansion, 1 <= k2 <= k1 (1: none).
        lambda_value: weight of the original distance, in [0, 1].
        chunk_size: rows per block of the top-k pass (bounds peak memory; default ~4M distances a block).
        progress: show a tqdm bar.

    Returns:
        (Q, G) float32 in the type (and device) of ``q_g_dist``; equal to
        :func:`reidfast.reference.rerank.re_ranking` up to float32 rounding, ties broken by item index.
    """
    library = _library(q_g_dist, "q_g_dist")
    q_g, device = _host_array(q_g_dist)
    q_q, _ = _host_array(q_q_dist)
    g_g, _ = _host_array(g_g_dist)
    q_g, q_q, g_g = reference._check_distances(q_g, q_q, g_g)
    k1, k2, lambda_value = reference._check_parameters(k1, k2, lambda_value, q_g.shape[0] + q_g.shape[1])
    if np.float64 in (q_g.dtype, q_q.dtype, g_g.dtype):  # the published np.concatenate promotes to float64
        q_g, q_q, g_g = (a.astype(np.float64, copy=False) for a in (q_g, q_q, g_g))
    result = _run("distances", (q_g, q_q, g_g), k1, k2, lambda_value, device, chunk_size, progress)
    return _answer(result, library, device)


def re_ranking(
    query_features: Any,
    gallery_features: Any,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    metric: str = "euclidean",
    *,
    chunk_size: int | None = None,
    progress: bool = False,
) -> Any:
    """k-reciprocal re-ranked (Q, G) distances from (Q, D) query and (G, D) gallery features.

    Euclidean (or cosine: 1 - cos) distances in float32, then as :func:`re_ranking_distances`, without ever
    holding the N x N matrices: the distances are computed ``chunk_size`` rows at a time. Returns float32 in
    the caller's array type; equal to :func:`reidfast.reference.rerank.re_ranking_features` up to float32
    rounding (near-tied distances, e.g. duplicated features, may order differently).
    """
    if metric not in reference.RERANK_METRICS:
        raise ValueError(f"metric must be one of {reference.RERANK_METRICS}, got {metric!r}")
    library = _library(query_features, "query_features")
    query_host, device = _host_array(query_features)
    gallery_host, _ = _host_array(gallery_features)
    query = reference._check_features(query_host, "query_features")
    gallery = reference._check_features(gallery_host, "gallery_features")
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(
            "query_features and gallery_features must have the same feature dimension, "
            f"got {query.shape[1]} and {gallery.shape[1]}"
        )
    k1, k2, lambda_value = reference._check_parameters(k1, k2, lambda_value, query.shape[0] + gallery.shape[0])
    result = _run("features", (query, gallery, metric), k1, k2, lambda_value, device, chunk_size, progress)
    return _answer(result, library, device)
