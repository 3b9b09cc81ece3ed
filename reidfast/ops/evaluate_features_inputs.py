"""evaluate_features' inputs: the argument checks (rf.evaluate's rules, plus features) and the validated bundle
the backends take."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .._arrays import as_tensor, check_features, check_same_device
from ..reference import distance as reference_distance
from ..reference import evaluation as reference_evaluation
from . import evaluation as _evaluation
from .evaluate_features_shard import Shard, join_shards


@dataclass(frozen=True)
class _Inputs:
    query: torch.Tensor  # (Q, D) floating, one device with gallery
    gallery: torch.Tensor  # (G, D)
    labels: _evaluation._Labels  # int64 host labels, effective max_rank
    metric: str
    distance_dtype: torch.dtype  # float32, or float64 for float64 features
    shard: "Shard | None" = None  # with group=: this rank's part of the gallery; labels are then global


def _check_features(values: Any, name: str, allow_empty: bool = False) -> torch.Tensor:
    """The features as a tensor, checked by the one feature check; allow_empty: no rows (a gallery shard)."""
    tensor = as_tensor(values, name)[0].detach()
    if allow_empty and tensor.dim() == 2 and tensor.shape[0] == 0 and tensor.shape[1] > 0:
        check_features(tensor, name, allow_empty=True)
    else:
        check_features(tensor, name, allow_nonfinite=False)
    return tensor


def _labels(values: Any, name: str, length: int, feats_name: str) -> torch.Tensor:
    tensor, _ = as_tensor(values, name)
    if tensor.dim() == 1 and tensor.shape[0] != length:
        raise ValueError(f"{name}: expected length {length} (rows of {feats_name}), got {tensor.shape[0]}")
    return _evaluation._label_vector(tensor, name, length, f"rows of {feats_name}")


def _validate(query_feats, gallery_feats, q_pids, g_pids, q_camids, g_camids, metric, max_rank, group) -> _Inputs:
    if metric not in reference_distance.METRICS:
        raise ValueError(f"metric: expected one of {reference_distance.METRICS}, got {metric!r}")
    query = _check_features(query_feats, "query_feats")
    gallery = _check_features(gallery_feats, "gallery_feats", allow_empty=group is not None)
    check_same_device(query_feats=query, gallery_feats=gallery)
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"gallery_feats: expected {query.shape[1]} features per row to match query_feats, got shape {tuple(gallery.shape)}"
        )
    if query.dtype != gallery.dtype:
        common = torch.promote_types(query.dtype, gallery.dtype)
        query, gallery = query.to(common), gallery.to(common)
    num_query, num_gallery = query.shape[0], gallery.shape[0]
    labels = dict(
        q_pids=_labels(q_pids, "q_pids", num_query, "query_feats"),
        g_pids=_labels(g_pids, "g_pids", num_gallery, "gallery_feats"),
        q_camids=_labels(q_camids, "q_camids", num_query, "query_feats"),
        g_camids=_labels(g_camids, "g_camids", num_gallery, "gallery_feats"),
    )
    max_rank = _evaluation._check_positive_int("max_rank", max_rank)
    shard = None
    if group is not None:
        shard, labels = join_shards(group, query, labels)
        num_gallery = labels["g_pids"].shape[0]
        if num_gallery == 0:
            raise ValueError("gallery_feats: every rank's gallery shard is empty; expected at least one gallery row")
    max_rank = reference_evaluation.cut_max_rank(max_rank, num_gallery)
    distance_dtype = reference_distance.accumulation_dtype(query.dtype)
    return _Inputs(query, gallery, _evaluation._Labels(max_rank=max_rank, **labels), metric, distance_dtype, shard)
