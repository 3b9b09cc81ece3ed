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

The "torch" backend (reidfast/kernels/torch/rerank.py) is the same algorithm vectorised over rows in torch
ops, on the input's device (nothing is copied to the host; from features the distance blocks come from
pairwise_distance's default kernels on that device), and the CPU fallback when the native module is missing
(O(N*k1 + Q*G) memory, unlike the reference). Its inputs are validated where they live, with the
reference's messages. It sums the per-row weights (and, on CUDA, the Jaccard overlaps, with atomics) in
torch's order, so it agrees with the reference to a few ulps, not bit for bit.

The "cuda" backend, the default for CUDA tensors and cupy arrays, is that pipeline with the Jaccard stage
as a CUDA kernel (csrc/cuda/rerank.cu) that adds the overlaps in the published order without atomics:
deterministic run to run.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import _native
from .._arrays import as_tensor, check_same_device, has_nonfinite, to_caller
from .._checks import check_distance_shapes, check_rerank_distances, check_rerank_features, check_rerank_parameters
from .._dispatch import Op, use_backend
from ..reference import rerank as reference
from .distance import PAIRWISE_DISTANCE
from .rerank_sparse import BLOCK_ELEMENTS as _BLOCK_ELEMENTS
from .rerank_sparse import NativeRerank, re_ranking_topk

__all__ = ["re_ranking", "re_ranking_distances"]

RE_RANKING = Op("re_ranking")
# Backends that take tensors on the input's device (the others take host numpy arrays).
_DEVICE_RESIDENT = ("torch", "cuda")
# The torch backend's default block, in distances (about 28 bytes each at the peak of the top-k pass):
# ~110 MiB on the host, ~0.9 GiB on a GPU, where bigger blocks mean fewer kernel launches.
_DEVICE_BLOCK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 25}


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


@RE_RANKING.register("cpu")
def _re_ranking_cpu(kind, data, k1, k2, lambda_value, chunk_size, progress):
    problem = NativeRerank(kind, data, k1, chunk_size)
    num_query, num_gallery = problem.num_query, problem.num_gallery
    if num_query == 0 or num_gallery == 0:
        return np.empty((num_query, num_gallery), dtype=np.float32)
    out = np.empty((num_query, num_gallery), dtype=np.float32)
    bar = _progress_bar(problem.num_all + 1, progress)

    def normalised_distances(start: int, stop: int, right: np.ndarray) -> None:
        target = out[start:stop]  # in place: no (rows, G) temporaries
        np.square(right, out=target)  # in the input's precision, then rounded to float32, as published
        target /= problem.row_max[start:stop].numpy()[:, None]

    problem.knn_pass(normalised_distances, tick=None if bar is None else bar.update)
    problem.finish_dense(k2, lambda_value, out)
    if bar is not None:
        bar.update(1)
        bar.close()
    return out


def _re_ranking_cpu_topk(kind, data, k1, k2, lambda_value, chunk_size, progress, topk):
    """The native top-k (ops/rerank_sparse.py): never the (Q, G) output."""
    problem = NativeRerank(kind, data, k1, chunk_size)
    bar = _progress_bar(problem.num_all + 1, progress)
    try:
        return re_ranking_topk(problem, k2, lambda_value, topk, tick=None if bar is None else bar.update)
    finally:
        if bar is not None:
            bar.close()


def _re_ranking_reference_topk(kind, data, k1, k2, lambda_value, chunk_size, progress, topk):
    return reference.topk_rows(_re_ranking_reference(kind, data, k1, k2, lambda_value, chunk_size, progress), topk)


def _re_ranking_torch_topk(kind, data, k1, k2, lambda_value, chunk_size, progress, topk):
    return _re_ranking_torch(kind, data, k1, k2, lambda_value, chunk_size, progress, topk=topk)


# Backends with a top-k form (the others raise naming topk). "cuda" has none: its deterministic Jaccard kernel
# writes the dense rows (the torch backend's top-k runs on CUDA tensors too, with atomic sums).
_TOPK = {"cpu": _re_ranking_cpu_topk, "reference": _re_ranking_reference_topk, "torch": _re_ranking_torch_topk}


def _device_distance_block(x: torch.Tensor, y: torch.Tensor, metric: str) -> torch.Tensor:
    """(rows of x, rows of y) float32 distances from pairwise_distance's default backend on x's device."""
    with use_backend("auto"):  # a forced "torch" means this op only: the distances use the device's kernels
        _, implementation = PAIRWISE_DISTANCE.select(x.device, x.dtype)
    return implementation(x, y, metric)


@RE_RANKING.register("torch")
def _re_ranking_torch(kind, data, k1, k2, lambda_value, chunk_size, progress, jaccard=None, topk=None):
    """torch ops on the input's device (reidfast/kernels/torch/rerank.py): the default for CUDA/cupy inputs
    when the CUDA kernels are not built."""
    from ..kernels.torch import rerank as torch_rerank

    num_query, num_gallery = (data[0].shape if kind == "distances" else (data[0].shape[0], data[1].shape[0]))
    device = data[0].device
    bar = _progress_bar(2 * (num_query + num_gallery) + num_query, progress)
    try:
        return torch_rerank.re_ranking(
            kind, data, k1, k2, lambda_value, chunk_size, distance_block=_device_distance_block,
            progress=None if bar is None else bar.update,
            block_elements=_DEVICE_BLOCK_ELEMENTS.get(device.type, _BLOCK_ELEMENTS), jaccard=jaccard, topk=topk,
        )
    finally:
        if bar is not None:
            bar.close()


def _cuda_jaccard(csr, num_query, lambda_value, budget, out, tick):
    """Steps 7-8 by the CUDA kernel (csrc/cuda/rerank.cu): deterministic, in the published summation order."""
    from ..kernels.torch import rerank as torch_rerank

    crow, col, val = csr
    column_start, index_item, index_val = torch_rerank.gallery_inverted_index(csr, num_query)
    begin = int(crow[num_query])
    view = _native.cuda_view
    _native.cuda_kernels().rerank_jaccard_cuda(
        view(crow[: num_query + 1]), view(col[:begin]), view(val[:begin].to(torch.float32)), view(column_start),
        view(index_item), view(index_val.to(torch.float32)), lambda_value, view(out), _native.cuda_stream(out.device),
    )
    tick(num_query)


@RE_RANKING.register("cuda")
def _re_ranking_cuda(kind, data, k1, k2, lambda_value, chunk_size, progress):
    """The torch backend's device pipeline (top-k pass from the CUDA distance kernels, sparse weights, query
    expansion) with the Jaccard stage as a CUDA kernel: deterministic, the default for CUDA/cupy inputs."""
    return _re_ranking_torch(kind, data, k1, k2, lambda_value, chunk_size, progress, jaccard=_cuda_jaccard)


def _device_of(value: Any) -> torch.device:
    """The device an input lives on (numpy and other host arrays: cpu)."""
    if isinstance(value, torch.Tensor):
        return value.device
    if type(value).__module__.split(".")[0] == "cupy":
        return torch.device("cuda", value.device.id)
    return torch.device("cpu")


def _real_matrix(value: Any, name: str, what: str) -> torch.Tensor:
    """`value` as a 2-D real tensor on its own device (no copy where possible), with the reference's messages."""
    if not isinstance(value, torch.Tensor) and type(value).__module__.split(".")[0] != "cupy":
        value = np.asarray(value)
        if value.ndim != 2:
            raise ValueError(f"{name}: expected {what}, got shape {value.shape}")
        if not (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)):
            raise ValueError(f"{name}: expected real numbers, got dtype {value.dtype}")
    tensor = as_tensor(value, name)[0].detach()
    if tensor.dim() != 2:
        raise ValueError(f"{name}: expected {what}, got shape {tuple(tensor.shape)}")
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ValueError(f"{name}: expected real numbers, got dtype {str(tensor.dtype).removeprefix('torch.')}")
    return tensor


def _device_distances(q_g_dist: Any, q_q_dist: Any, g_g_dist: Any) -> tuple[torch.Tensor, ...]:
    """check_rerank_distances on the inputs' device: float32 (all float64 if one is), finite, shapes."""
    tensors = {}
    for name, value in (("q_g_dist", q_g_dist), ("q_q_dist", q_q_dist), ("g_g_dist", g_g_dist)):
        tensor = _real_matrix(value, name, "a 2-D distance matrix")
        tensor = tensor.to(torch.float64 if tensor.dtype == torch.float64 else torch.float32)
        if has_nonfinite(tensor):
            raise ValueError(f"{name}: expected finite values (re-ranking needs them), got NaN or Inf")
        tensors[name] = tensor
    check_same_device(**tensors)
    q_g, q_q, g_g = tensors["q_g_dist"], tensors["q_q_dist"], tensors["g_g_dist"]
    check_distance_shapes(q_g, q_q, g_g)
    num_query, num_gallery = q_g.shape
    if torch.float64 in (q_g.dtype, q_q.dtype, g_g.dtype):  # the published np.concatenate promotes to float64
        q_g, q_q, g_g = (t.to(torch.float64) for t in (q_g, q_q, g_g))
    return q_g, q_q, g_g


def _device_features(value: Any, name: str) -> torch.Tensor:
    """check_rerank_features on the input's device: a contiguous float32 (N, D) tensor of finite numbers."""
    tensor = _real_matrix(value, name, "a 2-D (N, D) feature matrix").to(torch.float32).contiguous()
    if has_nonfinite(tensor):
        raise ValueError(f"{name}: expected finite values, got NaN or Inf")
    return tensor


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


def _check_chunk_size(chunk_size: Any) -> int | None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer))
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size: expected a positive integer (rows per block) or None, got {chunk_size!r}")
    return None if chunk_size is None else int(chunk_size)


def _check_topk(topk: Any, num_gallery: int) -> int | None:
    if topk is None:
        return None
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or not 1 <= topk <= num_gallery:
        raise ValueError(f"topk: expected an integer 1 <= topk <= {num_gallery} (the gallery size) or None, got {topk!r}")
    return int(topk)


def _run(implementation, kind, data, k1, k2, lambda_value, chunk_size, progress, topk=None, backend=None):
    chunk_size = _check_chunk_size(chunk_size)
    with torch.no_grad():
        if topk is None:
            return implementation(kind, data, k1, k2, lambda_value, chunk_size, progress)
        if backend not in _TOPK:
            raise ValueError(
                f"topk: the {backend!r} re-ranking backend has no top-k form (backends with one: "
                f"{', '.join(sorted(_TOPK))}); pass host arrays or call without topk for the dense matrix"
            )
        return _TOPK[backend](kind, data, k1, k2, lambda_value, chunk_size, progress, topk)


def _answer(result: Any, library: str, device: torch.device | None, dtype: type = np.float32) -> Any:
    if isinstance(result, tuple):  # top-k: (values, indices)
        values, indices = result
        return _answer(values, library, device), _answer(indices, library, device, np.int64)
    tensor = torch.from_numpy(np.ascontiguousarray(result, dtype=dtype))
    if device is not None and device.type != "cpu":
        tensor = tensor.to(device)
    return to_caller(tensor, library)


def _to_caller(result: Any, library: str) -> Any:
    """A device-resident backend's result (a tensor, or top-k's (values, indices)) in the caller's type."""
    return tuple(to_caller(t, library) for t in result) if isinstance(result, tuple) else to_caller(result, library)


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
    topk: int | None = None,
) -> Any:
    """k-reciprocal re-ranked (Q, G) distances from Euclidean distances (torchreid ``re_ranking`` signature).

    Args:
        q_g_dist, q_q_dist, g_g_dist: (Q, G), (Q, Q), (G, G) distances (numpy, torch or cupy; squared inside).
        k1: k-reciprocal neighbourhood, 1 <= k1 < Q + G. k2: query expansion, 1 <= k2 <= k1 (1: none).
        lambda_value: weight of the original distance, in [0, 1].
        chunk_size: rows per block of the top-k pass (bounds peak memory; default ~4M distances a block).
        progress: show a tqdm bar.
        topk: return only each row's ``topk`` smallest re-ranked distances (see :func:`re_ranking`).

    Returns:
        (Q, G) float32 in the type (and device) of ``q_g_dist``; equal to
        :func:`reidfast.reference.rerank.re_ranking` up to float32 rounding, ties broken by item index.
        With topk: (values (Q, topk) float32, indices (Q, topk) int64).
    """
    library = _library(q_g_dist, "q_g_dist")
    backend, implementation = RE_RANKING.select(_device_of(q_g_dist))
    if backend in _DEVICE_RESIDENT:
        q_g, q_q, g_g = _device_distances(q_g_dist, q_q_dist, g_g_dist)
        k1, k2, lambda_value = check_rerank_parameters(k1, k2, lambda_value, q_g.shape[0] + q_g.shape[1])
        topk = _check_topk(topk, q_g.shape[1])
        result = _run(implementation, "distances", (q_g, q_q, g_g), k1, k2, lambda_value, chunk_size, progress, topk,
                      backend)
        return _to_caller(result, library)
    q_g, device = _host_array(q_g_dist)
    q_q, _ = _host_array(q_q_dist)
    g_g, _ = _host_array(g_g_dist)
    q_g, q_q, g_g = check_rerank_distances(q_g, q_q, g_g)
    k1, k2, lambda_value = check_rerank_parameters(k1, k2, lambda_value, q_g.shape[0] + q_g.shape[1])
    topk = _check_topk(topk, q_g.shape[1])
    if np.float64 in (q_g.dtype, q_q.dtype, g_g.dtype):  # the published np.concatenate promotes to float64
        q_g, q_q, g_g = (a.astype(np.float64, copy=False) for a in (q_g, q_q, g_g))
    result = _run(implementation, "distances", (q_g, q_q, g_g), k1, k2, lambda_value, chunk_size, progress, topk,
                  backend)
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
    topk: int | None = None,
) -> Any:
    """k-reciprocal re-ranked (Q, G) distances from (Q, D) query and (G, D) gallery features.

    Distances of any metric pairwise_distance takes ("euclidean", "sqeuclidean", "cosine": 1 - cos; all three
    are then squared, as published) in float32, then as :func:`re_ranking_distances`, without ever
    holding the N x N matrices: the distances are computed ``chunk_size`` rows at a time. Returns float32 in
    the caller's array type; equal to :func:`reidfast.reference.rerank.re_ranking_features` up to float32
    rounding (near-tied distances, e.g. duplicated features, may order differently).

    topk=K returns (values (Q, K) float32, indices (Q, K) int64): each row's K smallest re-ranked distances,
    ascending, ties by gallery index, bit for bit those of the same backend's dense rows (cpu, reference and
    torch backends; on CUDA the torch backend's atomic sums vary in the last ulp run to run; the cuda backend
    raises). Memory O(N * k1 + Q * K + overlap), never (Q, G): an item
    sharing no k-reciprocal neighbour with the query scores (1 - lambda) + lambda * d^2 / max, a function of
    its distance alone, so only the few overlapping items need their Jaccard term (ops/rerank_sparse.py);
    the query rows' distances are computed twice (about Q / N more distance work).
    """
    if metric not in reference.RERANK_METRICS:
        raise ValueError(f"metric: expected one of {reference.RERANK_METRICS}, got {metric!r}")
    library = _library(query_features, "query_features")
    backend, implementation = RE_RANKING.select(_device_of(query_features))
    if backend in _DEVICE_RESIDENT:
        query = _device_features(query_features, "query_features")
        gallery = _device_features(gallery_features, "gallery_features")
        device = None
    else:
        query_host, device = _host_array(query_features)
        gallery_host, _ = _host_array(gallery_features)
        query = check_rerank_features(query_host, "query_features")
        gallery = check_rerank_features(gallery_host, "gallery_features")
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"gallery_features: expected the same feature dimension as query_features ({query.shape[1]}), "
            f"got {gallery.shape[1]}"
        )
    k1, k2, lambda_value = check_rerank_parameters(k1, k2, lambda_value, query.shape[0] + gallery.shape[0])
    topk = _check_topk(topk, gallery.shape[0])
    data = (query, gallery, metric)
    if backend in _DEVICE_RESIDENT:
        check_same_device(query_features=query, gallery_features=gallery)
        result = _run(implementation, "features", data, k1, k2, lambda_value, chunk_size, progress, topk, backend)
        return _to_caller(result, library)
    result = _run(implementation, "features", data, k1, k2, lambda_value, chunk_size, progress, topk, backend)
    return _answer(result, library, device)
