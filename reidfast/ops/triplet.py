"""Fused batch-hard triplet loss: mining kernels per backend, closed-form O(B*D) backward, the loss on top.

The mining op `reidfast::batch_hard_mine` returns, per anchor, the distance to and index of its hardest
positive and hardest negative (semantics: reidfast/reference/triplet.py). Its backward uses only those
indices: each anchor's gradient flows to itself and its two chosen candidates, O(B*D) work, no GEMM.
The loss, reduction and details are a few O(B) torch ops on top.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from .. import _native
from .._checks import validate_triplet_arguments
from .._dispatch import Op
from ..reference import distance as reference_distance
from ..reference import triplet as reference
from ..reference.triplet import TripletDetails
from .distance import _normalize_backward, _unit_inner_stride, convert_pair, cpu_gemm_kernel

BATCH_HARD_MINE = Op("batch_hard_triplet_loss")
_CPU_BLOCK_ELEMENTS = 1 << 22  # dot products per CPU block: 16 MiB of float32, whatever the batch size


def _empty_result(num_anchors: int, dtype: torch.dtype, device: torch.device):
    zeros = torch.zeros(num_anchors, dtype=dtype, device=device)
    none = torch.full((num_anchors,), reference.NO_INDEX, dtype=torch.int64, device=device)
    return zeros, zeros.clone(), none, none.clone()


@BATCH_HARD_MINE.register("reference")
def _mine_reference(anchors, candidates, anchor_labels, candidate_labels, anchor_index, metric):
    distances = reference_distance.pairwise_distance(anchors, candidates, metric)
    positive, negative = reference.hardest_pairs(distances, anchor_labels, candidate_labels, anchor_index)
    if candidates.shape[0] == 0:
        return _empty_result(anchors.shape[0], distances.dtype, anchors.device)
    dist_ap = torch.where(positive >= 0, distances.gather(1, positive.clamp_min(0)[:, None]).squeeze(1), 0.0)
    dist_an = torch.where(negative >= 0, distances.gather(1, negative.clamp_min(0)[:, None]).squeeze(1), 0.0)
    return dist_ap, dist_an, positive, negative


@BATCH_HARD_MINE.register("cpu")
def _mine_cpu(anchors, candidates, anchor_labels, candidate_labels, anchor_index, metric):
    """The fused SIMD kernel (cpu_gemm_kernel: no block of distances in memory), else BLAS GEMM on blocks of
    anchors (torch.mm) with one native pass mining each block."""
    kernel = cpu_gemm_kernel(anchors.dtype)
    if kernel is not None:
        return _mine_cpu_fused(anchors, candidates, anchor_labels, candidate_labels, anchor_index, metric, kernel)
    dtype = reference_distance.accumulation_dtype(anchors.dtype)
    anchors, candidates = anchors.to(dtype), candidates.to(dtype)
    num_anchors, num_candidates = anchors.shape[0], candidates.shape[0]
    if num_candidates == 0:
        return _empty_result(num_anchors, dtype, anchors.device)
    anchor_norms = (anchors * anchors).sum(1)
    candidate_norms = anchor_norms if candidates is anchors else (candidates * candidates).sum(1)
    labels_a, labels_c, self_index = (t.to(torch.int64).contiguous() for t in (anchor_labels, candidate_labels, anchor_index))
    dist_ap, dist_an = torch.empty(num_anchors, dtype=dtype), torch.empty(num_anchors, dtype=dtype)
    positive, negative = torch.empty(num_anchors, dtype=torch.int64), torch.empty(num_anchors, dtype=torch.int64)
    block = max(1, min(num_anchors, _CPU_BLOCK_ELEMENTS // num_candidates))
    view = _native.view
    for start in range(0, num_anchors, block):
        rows = slice(start, min(start + block, num_anchors))
        gram = anchors[rows] @ candidates.T
        _native._C.batch_hard_mine_block_cpu(
            view(gram), view(anchor_norms[rows]), view(candidate_norms), view(labels_a[rows]), view(labels_c),
            view(self_index[rows]), _native.METRIC_CODES[metric],
            view(dist_ap[rows]), view(dist_an[rows]), view(positive[rows]), view(negative[rows]),
        )
    return dist_ap, dist_an, positive, negative


def _mine_cpu_fused(anchors, candidates, anchor_labels, candidate_labels, anchor_index, metric, kernel):
    """One native call: packing (float16/bfloat16 converted there), SIMD product and mining on each tile."""
    num_anchors = anchors.shape[0]
    if candidates.shape[0] == 0:
        return _empty_result(num_anchors, torch.float32, anchors.device)
    anchors, candidates = convert_pair(anchors, candidates, _unit_inner_stride)
    dist_ap, dist_an = torch.empty(num_anchors), torch.empty(num_anchors)
    positive = torch.empty(num_anchors, dtype=torch.int64)
    negative = torch.empty(num_anchors, dtype=torch.int64)
    view = _native.view
    _native._C.fused_batch_hard_mine_cpu(
        view(anchors), view(candidates), view(anchor_labels.to(torch.int64).contiguous()),
        view(candidate_labels.to(torch.int64).contiguous()), view(anchor_index.to(torch.int64).contiguous()),
        _native.METRIC_CODES[metric], view(dist_ap), view(dist_an), view(positive), view(negative), kernel,
    )
    return dist_ap, dist_an, positive, negative


@BATCH_HARD_MINE.register("triton")
def _mine_triton(anchors, candidates, anchor_labels, candidate_labels, anchor_index, metric):
    from ..kernels.triton import triplet as triton_triplet

    return triton_triplet.batch_hard_mine(
        _unit_inner_stride(anchors), _unit_inner_stride(candidates), anchor_labels.to(torch.int64).contiguous(),
        candidate_labels.to(torch.int64).contiguous(), anchor_index.to(torch.int64).contiguous(), metric,
    )


@BATCH_HARD_MINE.register("cuda")
def _mine_cuda(anchors, candidates, anchor_labels, candidate_labels, anchor_index, metric):
    anchors, candidates = _unit_inner_stride(anchors), _unit_inner_stride(candidates)
    num_anchors, device = anchors.shape[0], anchors.device
    dtype = reference_distance.accumulation_dtype(anchors.dtype)
    dist_ap = torch.empty(num_anchors, dtype=dtype, device=device)
    dist_an = torch.empty(num_anchors, dtype=dtype, device=device)
    positive = torch.empty(num_anchors, dtype=torch.int64, device=device)
    negative = torch.empty(num_anchors, dtype=torch.int64, device=device)
    kernels = _native.cuda_kernels()
    workspace = torch.empty(
        kernels.batch_hard_mine_workspace_bytes(num_anchors, candidates.shape[0]), dtype=torch.uint8, device=device
    )
    view = _native.cuda_view
    kernels.batch_hard_mine_cuda(
        view(anchors), view(candidates), view(anchor_labels.to(torch.int64).contiguous()),
        view(candidate_labels.to(torch.int64).contiguous()), view(anchor_index.to(torch.int64).contiguous()),
        _native.METRIC_CODES[metric], view(dist_ap), view(dist_an), view(positive), view(negative), view(workspace),
        _native.cuda_stream(device),
    )
    return dist_ap, dist_an, positive, negative


@torch.library.custom_op("reidfast::batch_hard_mine", mutates_args=())
def _batch_hard_mine_op(
    anchors: torch.Tensor, candidates: Optional[torch.Tensor], anchor_labels: torch.Tensor,
    candidate_labels: Optional[torch.Tensor], anchor_index: torch.Tensor, metric: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """candidates=None: the anchors scored against themselves (one input, so one gradient buffer)."""
    if candidates is None:
        candidates, candidate_labels = anchors, anchor_labels
    _, implementation = BATCH_HARD_MINE.select(anchors.device, anchors.dtype)
    with torch.autocast(anchors.device.type, enabled=False):  # AMP policy: accumulate in float32, see README
        return implementation(anchors, candidates, anchor_labels, candidate_labels, anchor_index, metric)


@_batch_hard_mine_op.register_fake
def _(anchors, candidates, anchor_labels, candidate_labels, anchor_index, metric):
    num_anchors = anchors.shape[0]
    dtype = reference_distance.accumulation_dtype(anchors.dtype)
    distances = anchors.new_empty((num_anchors,), dtype=dtype)
    indices = anchors.new_empty((num_anchors,), dtype=torch.int64)
    return distances, distances.clone(), indices, indices.clone()


def _pair_weight(grad: torch.Tensor, distances: torch.Tensor, index: torch.Tensor, metric: str) -> torch.Tensor:
    """w (B,) with d(grad * d(a, c))/da = w (a - c) for the euclidean metrics; 0 where there is no pair."""
    if metric == "euclidean":  # d sqrt(s)/da = (a - c) / d, and 0 where the 1e-12 clamp is active
        clamp = torch.tensor(reference_distance.EUCLIDEAN_CLAMP, dtype=distances.dtype).sqrt()
        weight = torch.where(distances > clamp, grad / distances, torch.zeros_like(grad))
    else:  # sqeuclidean: d |a - c|^2 / da = 2 (a - c)
        weight = 2.0 * grad
    return torch.where(index >= 0, weight, torch.zeros_like(weight))


def _cosine_pair_gradients(anchors, others, grad):
    """d(grad . (1 - a_hat . o_hat)) / da and / do for rows of pairs (B, D)."""
    anchor_len = anchors.norm(dim=1, keepdim=True)
    other_len = others.norm(dim=1, keepdim=True)
    anchor_hat = anchors / anchor_len.clamp_min(reference_distance.COSINE_EPS)
    other_hat = others / other_len.clamp_min(reference_distance.COSINE_EPS)
    return (_normalize_backward(-grad[:, None] * other_hat, anchor_hat, anchor_len),
            _normalize_backward(-grad[:, None] * anchor_hat, other_hat, other_len))


def _hardest_pair_inverse(positive: torch.Tensor, negative: torch.Tensor, num_rows: int):
    """Which anchors chose each candidate row, as a CSR: entries e in [0, 2B) (e < B: anchor e's hardest
    positive, else anchor e - B's hardest negative) stably sorted by their row, so row j's entries
    entry_order[entry_offsets[j]:entry_offsets[j + 1]] come in increasing e, a fixed summation order.
    -> (entry_order (2B,), entry_offsets (num_rows + 1,)) int64. O(B log B) on the device, no atomics."""
    rows_chosen = torch.cat([positive, negative])
    sorted_rows, entry_order = torch.sort(rows_chosen, stable=True)  # -1 (no pair) sorts first: skipped
    row_starts = torch.arange(num_rows + 1, dtype=torch.int64, device=rows_chosen.device)
    return entry_order, torch.searchsorted(sorted_rows, row_starts)


def _backward_triton(anchors, candidates, dist_ap, dist_an, positive, negative, grad_ap, grad_an, metric):
    from ..kernels.triton import triplet_backward

    rows = anchors if candidates is None else candidates
    entry_order, entry_offsets = _hardest_pair_inverse(positive, negative, rows.shape[0])
    return triplet_backward.batch_hard_mine_backward(
        anchors, candidates, dist_ap, dist_an, positive, negative, grad_ap, grad_an, metric, entry_order, entry_offsets
    )


def _backward_cuda(anchors, candidates, dist_ap, dist_an, positive, negative, grad_ap, grad_an, metric):
    same_rows = candidates is None
    rows = anchors if same_rows else candidates
    (num_anchors, dim), device = anchors.shape, anchors.device
    entry_order, entry_offsets = _hardest_pair_inverse(positive, negative, rows.shape[0])
    kernels = _native.cuda_kernels()
    per_anchor = kernels.batch_hard_backward_coefficients_per_anchor  # scratch layout: csrc/cuda/triplet.h
    coefficients = torch.empty(per_anchor * num_anchors, dtype=dist_ap.dtype, device=device)
    grad_anchors = torch.empty((num_anchors, dim), dtype=anchors.dtype, device=device)
    grad_rows = grad_anchors if same_rows else torch.empty((rows.shape[0], dim), dtype=rows.dtype, device=device)
    view = _native.cuda_view
    kernels.batch_hard_backward_cuda(
        view(anchors), view(rows), view(positive), view(negative), view(dist_ap), view(dist_an), view(grad_ap),
        view(grad_an), _native.METRIC_CODES[metric], same_rows, view(entry_order), view(entry_offsets),
        view(coefficients), view(grad_anchors), view(grad_rows), _native.cuda_stream(device),
    )
    return grad_anchors, None if same_rows else grad_rows


_FUSED_BACKWARDS = {"cuda": _backward_cuda, "triton": _backward_triton}


@torch.library.custom_op("reidfast::batch_hard_mine_backward", mutates_args=())
def _batch_hard_mine_backward_op(
    anchors_in: torch.Tensor, candidates_in: Optional[torch.Tensor], dist_ap: torch.Tensor, dist_an: torch.Tensor,
    positive: torch.Tensor, negative: torch.Tensor, grad_ap: torch.Tensor, grad_an: torch.Tensor, metric: str,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_anchors (B, D), grad_candidates (C, D); (0, D) when candidates_in is None): O(B*D), no GEMM.

    backend: the one the forward ran on. cuda/triton: fused kernels, deterministic (no atomics: an inverse
    index of the mined pairs, summed in a fixed order); cpu: the native kernel (euclidean metrics); otherwise
    (and cosine on cpu) torch ops.
    """
    dtype = dist_ap.dtype
    if backend in _FUSED_BACKWARDS:
        grad_anchors, grad_candidates = _FUSED_BACKWARDS[backend](
            _unit_inner_stride(anchors_in), None if candidates_in is None else _unit_inner_stride(candidates_in),
            dist_ap.contiguous(), dist_an.contiguous(), positive.contiguous(), negative.contiguous(),
            grad_ap.to(dtype).contiguous(), grad_an.to(dtype).contiguous(), metric,
        )
        if candidates_in is None:
            return grad_anchors, anchors_in.new_empty((0, anchors_in.shape[1]))
        return grad_anchors, grad_candidates
    anchors = _unit_inner_stride(anchors_in.to(dtype))
    candidates = anchors if candidates_in is None else _unit_inner_stride(candidates_in.to(dtype))
    # The native CPU kernel writes every element (zeroing each feature slice in the thread that owns it);
    # the torch-ops paths accumulate into zeros.
    native = backend == "cpu" and metric != "cosine" and candidates.shape[0] > 0
    new_gradient = torch.empty_like if native else torch.zeros_like
    grad_anchors = new_gradient(anchors)
    grad_candidates = grad_anchors if candidates_in is None else new_gradient(candidates)
    grads = (grad_ap.to(dtype), grad_an.to(dtype))
    if candidates.shape[0] == 0:
        pass
    elif metric == "cosine":
        for grad, index in zip(grads, (positive, negative)):
            grad = torch.where(index >= 0, grad, torch.zeros_like(grad))
            safe_index = index.clamp_min(0)
            to_anchor, to_other = _cosine_pair_gradients(anchors, candidates[safe_index], grad)
            grad_anchors += to_anchor
            grad_candidates.index_add_(0, safe_index, to_other)
    else:
        weights = [_pair_weight(g, d, i, metric) for g, d, i in zip(grads, (dist_ap, dist_an), (positive, negative))]
        if native:
            view = _native.view
            _native._C.batch_hard_backward_cpu(
                view(anchors), view(candidates), view(positive.contiguous()), view(negative.contiguous()),
                view(weights[0].contiguous()), view(weights[1].contiguous()), view(grad_anchors), view(grad_candidates),
            )
        else:
            for weight, index in zip(weights, (positive, negative)):
                safe_index = index.clamp_min(0)
                step = weight[:, None] * (anchors - candidates[safe_index])
                grad_anchors += step
                grad_candidates.index_add_(0, safe_index, step, alpha=-1)
    grad_anchors = grad_anchors.to(anchors_in.dtype)
    if candidates_in is None:
        return grad_anchors, anchors_in.new_empty((0, anchors_in.shape[1]))
    return grad_anchors, grad_candidates.to(candidates_in.dtype)


@_batch_hard_mine_backward_op.register_fake
def _(anchors_in, candidates_in, dist_ap, dist_an, positive, negative, grad_ap, grad_an, metric, backend):
    grad_candidates = anchors_in.new_empty((0, anchors_in.shape[1])) if candidates_in is None else torch.empty_like(candidates_in)
    return torch.empty_like(anchors_in), grad_candidates


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
    anchors, candidates, _, _, _, metric = inputs
    dist_ap, dist_an, positive, negative = output
    ctx.has_candidates = candidates is not None
    ctx.save_for_backward(anchors, candidates if candidates is not None else anchors, dist_ap, dist_an, positive, negative)
    ctx.metric = metric
    # The backward follows the forward's backend: use_backend(...) around the forward then governs both, and
    # autograd may run the backward on another thread (CUDA), where the forced backend is not visible.
    ctx.backend = BATCH_HARD_MINE.select(anchors.device, anchors.dtype)[0]


def _backward(ctx: Any, grad_ap, grad_an, _grad_pos, _grad_neg):
    anchors, candidates, dist_ap, dist_an, positive, negative = ctx.saved_tensors
    grad_ap = torch.zeros_like(dist_ap) if grad_ap is None else grad_ap
    grad_an = torch.zeros_like(dist_an) if grad_an is None else grad_an
    grad_anchors, grad_candidates = _batch_hard_mine_backward_op(
        anchors, candidates if ctx.has_candidates else None, dist_ap, dist_an, positive, negative, grad_ap, grad_an,
        ctx.metric, ctx.backend,
    )
    return grad_anchors, (grad_candidates if ctx.has_candidates else None), None, None, None, None


_batch_hard_mine_op.register_autograd(_backward, setup_context=_setup_context)


def batch_hard_triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float | str = 0.3,
    metric: str = "euclidean",
    normalize: bool = False,
    reduction: str = "mean",
    candidates: torch.Tensor | None = None,
    candidate_labels: torch.Tensor | None = None,
    anchor_index: torch.Tensor | None = None,
    return_details: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, TripletDetails]:
    """Fused batch-hard triplet loss (Hermans et al. 2017; reid-strong-baseline's TripletLoss on P x K batches).

    embeddings (B, D) float32/float16/bfloat16/float64, labels (B,) integer. For each anchor: the hardest
    positive (largest distance, same label, self excluded) and hardest negative (smallest distance, other
    label), found without a B x B matrix; loss = relu(d_ap - d_an + margin), or softplus(d_ap - d_an) for
    margin="soft". Anchors without a positive or a negative are left out of the reduction ("mean" divides by
    the number of valid anchors; a batch with none gives 0 with a zero gradient). metric: "euclidean",
    "sqeuclidean" or "cosine"; normalize=True L2-normalises first. candidates (C, D) / candidate_labels (C,):
    score the anchors against another set (cross-batch memory, gathered embeddings); anchor_index (B,) gives
    each anchor's own column there (-1: absent). Returns a float32 scalar (float64 for float64 input), (B,)
    for reduction="none", and with return_details=True also a TripletDetails (indices, d_ap, d_an, valid,
    num_valid, fraction_active).
    """
    candidates, candidate_labels, anchor_index, against_batch = validate_triplet_arguments(
        embeddings, labels, margin, metric, reduction, candidates, candidate_labels, anchor_index
    )
    dtype = torch.promote_types(embeddings.dtype, candidates.dtype)
    anchors = embeddings.to(dtype)
    others = anchors if against_batch else candidates.to(dtype)
    if normalize:
        anchors = F.normalize(anchors, dim=1, eps=reference.NORMALIZE_EPS)
        others = anchors if against_batch else F.normalize(others, dim=1, eps=reference.NORMALIZE_EPS)
    dist_ap, dist_an, positive, negative = _batch_hard_mine_op(
        anchors, None if against_batch else others, labels, None if against_batch else candidate_labels,
        anchor_index, metric,
    )
    valid = (positive >= 0) & (negative >= 0)
    gap = dist_ap - dist_an
    terms = F.softplus(gap) if margin == reference.SOFT_MARGIN else F.relu(gap + margin)
    loss_per_anchor = torch.where(valid, terms, torch.zeros_like(terms))
    if reduction == "none":
        loss = loss_per_anchor
    elif reduction == "sum":
        loss = loss_per_anchor.sum()
    else:  # no host sync: the count stays on the device
        loss = loss_per_anchor.sum() / valid.sum().clamp_min(1).to(loss_per_anchor.dtype)
    if not return_details:
        return loss
    active = valid if margin == reference.SOFT_MARGIN else valid & (gap + margin > 0)
    num_valid, num_active = torch.stack([valid.sum(), active.sum()]).tolist()  # one host sync for both counts
    details = TripletDetails(
        loss_per_anchor=loss_per_anchor.detach(),
        dist_ap=dist_ap.detach(),
        dist_an=dist_an.detach(),
        hardest_positive=positive,
        hardest_negative=negative,
        valid=valid,
        num_valid=num_valid,
        fraction_active=num_active / num_valid if num_valid else 0.0,
    )
    return loss, details
