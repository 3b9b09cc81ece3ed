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
from ..reference import distance as reference_distance
from .distance import PAIRWISE_DISTANCE, cpu_gemm_kernel, row_block_size

__all__ = ["re_ranking", "re_ranking_distances"]

RE_RANKING = Op("re_ranking")
_BLOCK_ELEMENTS = 1 << 22  # default block: 4M distances (16 MiB in float32) per pass-1 block
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


def _unit_stride(array: np.ndarray) -> np.ndarray:
    return array if array.shape[1] <= 1 or array.strides[1] == array.itemsize else np.ascontiguousarray(array)


def _joint_distance_block(features: torch.Tensor, norms: torch.Tensor | None, start: int, stop: int, metric: str,
                          out: torch.Tensor, kernel: int | None) -> torch.Tensor:
    """Distances of rows start:stop of `features` (N, D) to all N rows, written into `out` (stop - start, N),
    with pairwise_distance's CPU semantics (row i's distance to itself exact, as for x against x)."""
    view = _native.view
    if kernel is None:  # BLAS GEMM + the native epilogue, which makes the self-distance exact itself
        torch.mm(features[start:stop], features.T, out=out)
        _native._C.distance_epilogue_cpu(view(out), view(norms[start:stop]), view(norms), _native.METRIC_CODES[metric],
                                         start)
        return out
    _native._C.fused_pairwise_distance_cpu(view(features[start:stop]), view(features), _native.METRIC_CODES[metric],
                                           False, view(out), kernel)
    if metric != "cosine":  # squared self-distance exactly 0 (NaN stays NaN), then the metric's clamp and root
        self_distance = out.diagonal(offset=start).mul_(0)
        if metric == "euclidean":
            self_distance.clamp_(min=reference_distance.EUCLIDEAN_CLAMP).sqrt_()
    return out


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
        kernel = cpu_gemm_kernel(features.dtype)
        norms = (features * features).sum(1) if kernel is None else None  # the BLAS path's, once, not per block
    num_all = num_query + num_gallery
    if num_query == 0 or num_gallery == 0:
        return np.empty((num_query, num_gallery), dtype=np.float32)
    width = k1 + 1
    if chunk_size is not None:
        step = int(chunk_size)
    elif kind == "distances":
        step = max(1, _BLOCK_ELEMENTS // num_all)
    else:
        # GEMM blocks of at least 256 rows: at N = 93,820, D = 512 a 44-row block ran at 109 GFLOPS, a 256-row
        # one at 130 (2 cores), and the top-k kernel shares 16-row tiles between threads.
        step = row_block_size(num_all, _BLOCK_ELEMENTS)
    ranks = torch.empty((num_all, width), dtype=torch.int64)
    # One GEMM output buffer for every block: a fresh one per block costs a page fault per 4 KiB (at MSMT17
    # scale 9 million faults, ~37 s of system time).
    gram = torch.empty((min(step, num_all), num_all), dtype=torch.float32) if kind == "features" else None
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
            block_t = _joint_distance_block(features, norms, start, stop, metric, gram[: stop - start], kernel)
            left_t, right_t = block_t[:, :num_query], block_t[:, num_query:]
            right = right_t.numpy()
        C.rerank_topk_block_cpu(view(left_t), view(right_t), width, view(row_max[start:stop]), view(ranks[start:stop]))
        if stop <= num_query:  # the normalised squared query-gallery distance, as published
            target = out[start:stop]  # in place: no (rows, G) temporaries
            np.square(right, out=target)  # in the input's precision, then rounded to float32, as published
            target /= row_max[start:stop].numpy()[:, None]
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


def _device_distance_block(x: torch.Tensor, y: torch.Tensor, metric: str) -> torch.Tensor:
    """(rows of x, rows of y) float32 distances from pairwise_distance's default backend on x's device."""
    with use_backend("auto"):  # a forced "torch" means this op only: the distances use the device's kernels
        _, implementation = PAIRWISE_DISTANCE.select(x.device, x.dtype)
    return implementation(x, y, metric)


@RE_RANKING.register("torch")
def _re_ranking_torch(kind, data, k1, k2, lambda_value, chunk_size, progress, jaccard=None):
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
            block_elements=_DEVICE_BLOCK_ELEMENTS.get(device.type, _BLOCK_ELEMENTS), jaccard=jaccard,
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
            raise ValueError(f"{name} must be {what}, got shape {value.shape}")
        if not (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)):
            raise ValueError(f"{name} must hold real numbers, got dtype {value.dtype}")
    tensor = as_tensor(value, name)[0].detach()
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be {what}, got shape {tuple(tensor.shape)}")
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ValueError(f"{name} must hold real numbers, got dtype {str(tensor.dtype).removeprefix('torch.')}")
    return tensor


def _device_distances(q_g_dist: Any, q_q_dist: Any, g_g_dist: Any) -> tuple[torch.Tensor, ...]:
    """check_rerank_distances on the inputs' device: float32 (all float64 if one is), finite, shapes."""
    tensors = {}
    for name, value in (("q_g_dist", q_g_dist), ("q_q_dist", q_q_dist), ("g_g_dist", g_g_dist)):
        tensor = _real_matrix(value, name, "a 2-D distance matrix")
        tensor = tensor.to(torch.float64 if tensor.dtype == torch.float64 else torch.float32)
        if has_nonfinite(tensor):
            raise ValueError(f"{name} contains NaN or Inf; re-ranking needs finite distances")
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
        raise ValueError(f"{name} contains NaN or Inf")
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


def _run(implementation, kind, data, k1, k2, lambda_value, chunk_size, progress):
    chunk_size = _check_chunk_size(chunk_size)
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
    backend, implementation = RE_RANKING.select(_device_of(q_g_dist))
    if backend in _DEVICE_RESIDENT:
        q_g, q_q, g_g = _device_distances(q_g_dist, q_q_dist, g_g_dist)
        k1, k2, lambda_value = check_rerank_parameters(k1, k2, lambda_value, q_g.shape[0] + q_g.shape[1])
        result = _run(implementation, "distances", (q_g, q_q, g_g), k1, k2, lambda_value, chunk_size, progress)
        return to_caller(result, library)
    q_g, device = _host_array(q_g_dist)
    q_q, _ = _host_array(q_q_dist)
    g_g, _ = _host_array(g_g_dist)
    q_g, q_q, g_g = check_rerank_distances(q_g, q_q, g_g)
    k1, k2, lambda_value = check_rerank_parameters(k1, k2, lambda_value, q_g.shape[0] + q_g.shape[1])
    if np.float64 in (q_g.dtype, q_q.dtype, g_g.dtype):  # the published np.concatenate promotes to float64
        q_g, q_q, g_g = (a.astype(np.float64, copy=False) for a in (q_g, q_q, g_g))
    result = _run(implementation, "distances", (q_g, q_q, g_g), k1, k2, lambda_value, chunk_size, progress)
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

    Distances of any metric pairwise_distance takes ("euclidean", "sqeuclidean", "cosine": 1 - cos; all three
    are then squared, as published) in float32, then as :func:`re_ranking_distances`, without ever
    holding the N x N matrices: the distances are computed ``chunk_size`` rows at a time. Returns float32 in
    the caller's array type; equal to :func:`reidfast.reference.rerank.re_ranking_features` up to float32
    rounding (near-tied distances, e.g. duplicated features, may order differently).
    """
    if metric not in reference.RERANK_METRICS:
        raise ValueError(f"metric must be one of {reference.RERANK_METRICS}, got {metric!r}")
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
            "query_features and gallery_features must have the same feature dimension, "
            f"got {query.shape[1]} and {gallery.shape[1]}"
        )
    k1, k2, lambda_value = check_rerank_parameters(k1, k2, lambda_value, query.shape[0] + gallery.shape[0])
    if backend in _DEVICE_RESIDENT:
        check_same_device(query_features=query, gallery_features=gallery)
        result = _run(implementation, "features", (query, gallery, metric), k1, k2, lambda_value, chunk_size, progress)
        return to_caller(result, library)
    result = _run(implementation, "features", (query, gallery, metric), k1, k2, lambda_value, chunk_size, progress)
    return _answer(result, library, device)
