"""The result of rf.evaluate (RankingResult) and the host step every fast backend ends with: per-query
results -> means over the valid queries, in the reference's arithmetic (bit-identical)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..._checks import check_some_query_valid
from ...reference import evaluation as reference

PROTOCOLS = ("market1501", "cuhk03")
PROTOCOL_NAMES = {"market1501": "Market-1501", "cuhk03": "CUHK03 single-shot"}


@dataclass(frozen=True, eq=False)
class RankingResult:
    """Ranking metrics averaged over the valid queries.

    cmc: float32 (max_rank,), cmc[k-1] = fraction of valid queries with a correct match in the top k
    (max_rank is cut to num_gallery when the gallery is smaller). mAP, mINP: float in [0, 1].
    A query is valid when a gallery item of its pid remains after removing its pid's same-camera items.
    average_precision, inverse_negative_penalty: float64 (num_valid_queries,), each valid query's AP and INP in
    query order (torchreid's all_AP, fast-reid's all_INP); mAP and mINP are their means.
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int
    num_skipped_queries: int
    num_gallery: int
    protocol: str = "market1501"
    backend: str = "reference"
    average_precision: np.ndarray | None = None
    inverse_negative_penalty: np.ndarray | None = None

    def cmc_at(self, k: int) -> float:
        """CMC at rank k (1-based); nan when k is past max_rank, 1.0 past the end of a fully ranked gallery."""
        if k < 1:
            raise ValueError(f"k: expected an integer >= 1, got {k}")
        if k <= self.cmc.size:
            return float(self.cmc[k - 1])
        # Every valid query's first match lies within the gallery, so the CMC is 1 past its end.
        return float(self.cmc[-1]) if self.cmc.size == self.num_gallery else math.nan

    @property
    def rank1(self) -> float:
        return self.cmc_at(1)

    @property
    def rank5(self) -> float:
        return self.cmc_at(5)

    @property
    def rank10(self) -> float:
        return self.cmc_at(10)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (JSON-ready): mAP, mINP, rank1/5/10, cmc list, query counts, protocol, backend."""
        return {
            "mAP": self.mAP,
            "mINP": self.mINP,
            "rank1": self.rank1,
            "rank5": self.rank5,
            "rank10": self.rank10,
            "cmc": [float(v) for v in self.cmc],
            "num_valid_queries": self.num_valid_queries,
            "num_skipped_queries": self.num_skipped_queries,
            "num_gallery": self.num_gallery,
            "protocol": self.protocol,
            "backend": self.backend,
        }

    def summary(self, title: str | None = None) -> str:
        """A small text table of mAP, mINP and CMC at ranks 1, 5, 10 and 20, in percent."""
        title = title or f"{PROTOCOL_NAMES.get(self.protocol, self.protocol)} ({self.backend})"
        rows = [("mAP", self.mAP), ("mINP", self.mINP)]
        rows += [(f"Rank-{k}", self.cmc_at(k)) for k in (1, 5, 10, 20)]
        lines = [title, f"  queries: {self.num_valid_queries} valid, {self.num_skipped_queries} skipped"]
        lines += [f"  {name:<8}{'n/a' if math.isnan(value) else f'{100 * value:6.2f}%':>8}" for name, value in rows]
        return "\n".join(lines)

    __str__ = summary


def aggregate(
    first_match_rank: np.ndarray,
    average_precision: np.ndarray,
    inverse_negative_penalty: np.ndarray,
    max_rank: int,
    num_gallery: int,
    backend: str,
    sampling: Any = None,
) -> RankingResult:
    """Per-query results -> means over the valid queries, in the reference's arithmetic (bit-identical).

    sampling: the CUHK03 draws with their accumulated CMC (None: Market-1501, CMC from first_match_rank).
    """
    valid = first_match_rank > 0
    num_valid = int(valid.sum())
    check_some_query_valid(num_valid)
    if sampling is None:
        first_ranks = np.minimum(first_match_rank[valid], max_rank + 1)
        cmc_hits = np.cumsum(np.bincount(first_ranks, minlength=max_rank + 2)[1 : max_rank + 1])
        cmc = (cmc_hits / num_valid).astype(np.float32)
    else:
        cmc = (sampling.cmc_sum / num_valid).astype(np.float32)
    per_query_ap, per_query_inp = average_precision[valid], inverse_negative_penalty[valid]  # copies
    for array in (cmc, per_query_ap, per_query_inp):
        array.setflags(write=False)
    return RankingResult(
        cmc=cmc,
        mAP=float(np.mean(per_query_ap)),
        mINP=float(np.mean(per_query_inp)),
        num_valid_queries=num_valid,
        num_skipped_queries=int(first_match_rank.size - num_valid),
        num_gallery=num_gallery,
        protocol="market1501" if sampling is None else "cuhk03",
        backend=backend,
        average_precision=per_query_ap,
        inverse_negative_penalty=per_query_inp,
    )


def from_reference(result: reference.EvaluationResult, num_gallery: int, protocol: str, backend: str) -> RankingResult:
    return RankingResult(
        cmc=result.cmc,
        mAP=result.mAP,
        mINP=result.mINP,
        num_valid_queries=result.num_valid_queries,
        num_skipped_queries=result.num_skipped_queries,
        num_gallery=num_gallery,
        protocol=protocol,
        backend=backend,
        average_precision=result.average_precision,
        inverse_negative_penalty=result.inverse_negative_penalty,
    )
