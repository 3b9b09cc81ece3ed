"""Re-ID ranking metrics (CMC rank-1/5/10, mAP, mINP) as a torchmetrics ``Metric``: DDP-synced, Lightning-ready.

    from reidfast.integrations.torchmetrics import ReIDMetric
    metric = ReIDMetric()                                   # in a LightningModule's __init__
    metric.update(features, pids, camids, is_query)         # each validation step
    self.log_dict(metric.compute())                         # {"rank1", "rank5", "rank10", "mAP", "mINP"}

Needs the torchmetrics package (`pip install "reidfast[integrations]"`). The numbers are ReIDEvaluator's on the
rows of every process: torchmetrics gathers the states ("cat") across processes before compute().
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

try:
    from torchmetrics import Metric
    from torchmetrics.utilities import dim_zero_cat
except ImportError as error:  # pragma: no cover - exercised only without torchmetrics
    raise ImportError(
        f"reidfast.integrations.torchmetrics needs the torchmetrics package ({error}); "
        "pip install torchmetrics, or 'reidfast[integrations]'"
    ) from error

from ..evaluation import EvaluatorResult, ReIDEvaluator

__all__ = ["ReIDMetric"]

_SCALARS = ("rank1", "rank5", "rank10", "mAP", "mINP")


class ReIDMetric(Metric):
    """CMC/mAP/mINP of queries ranked against a gallery, equal to ``reidfast.ReIDEvaluator`` on the same rows.

    Args: those of ReIDEvaluator (metric, rerank, k1, k2, lambda_value, max_rank, protocol, seed), plus
    torchmetrics' Metric keyword arguments (dist_sync_fn, process_group, ...).
    update(features (B, D) float, pids (B,), camids (B,), is_query: bool or (B,) bool); compute() -> dict of
    0-d float tensors: rank1, rank5, rank10, mAP, mINP (and reranked_* with rerank=True). The full
    EvaluatorResult of the last compute() is kept in ``self.result``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        metric: str = "euclidean",
        rerank: bool = False,
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
        max_rank: int = 50,
        protocol: str = "market1501",
        seed: int | None = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Built once so that bad options fail here, not at the end of an epoch.
        self._evaluator_options = dict(metric=metric, rerank=rerank, k1=k1, k2=k2, lambda_value=lambda_value,
                                       max_rank=max_rank, protocol=protocol, seed=seed, device=None, distributed=False)
        ReIDEvaluator(**self._evaluator_options)
        self.result: EvaluatorResult | None = None
        for name in ("features", "pids", "camids", "is_query"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, features: Any, pids: Any, camids: Any, is_query: Any) -> None:
        features = torch.as_tensor(features).detach()
        if features.dim() != 2 or not features.is_floating_point():
            raise ValueError(f"features: expected a 2-D (batch, dim) float tensor, got shape {tuple(features.shape)} and dtype {features.dtype}")
        batch, device = features.shape[0], features.device
        if isinstance(is_query, (bool, np.bool_)):
            is_query = torch.full((batch,), bool(is_query), device=device)
        columns = {name: torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v).to(device)
                   for name, v in (("pids", pids), ("camids", camids), ("is_query", is_query))}
        for name, column in columns.items():
            if column.shape != (batch,):
                raise ValueError(f"{name}: expected shape ({batch},) like features' rows, got {tuple(column.shape)}")
        if columns["is_query"].dtype != torch.bool:
            raise ValueError(f"is_query: expected a bool or a ({batch},) bool tensor, got dtype {columns['is_query'].dtype}")
        self.features.append(features)
        self.pids.append(columns["pids"].to(torch.int64))
        self.camids.append(columns["camids"].to(torch.int64))
        self.is_query.append(columns["is_query"])

    def compute(self) -> dict[str, torch.Tensor]:
        evaluator = ReIDEvaluator(**self._evaluator_options)
        if len(self.features):  # after a sync the states are tensors, before it lists
            evaluator.update(dim_zero_cat(self.features), dim_zero_cat(self.pids).cpu(), dim_zero_cat(self.camids).cpu(),
                             dim_zero_cat(self.is_query).cpu())
        self.result = evaluator.compute()
        values = {name: getattr(self.result.ranking, name) for name in _SCALARS}
        if self.result.reranked is not None:
            values.update({f"reranked_{name}": getattr(self.result.reranked, name) for name in _SCALARS})
        return {name: torch.tensor(value, dtype=torch.float32) for name, value in values.items()}
