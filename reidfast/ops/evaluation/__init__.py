"""Re-ID ranking evaluation (CMC, mAP, mINP): argument checks, array conversion, backend dispatch.

Semantics are those of reidfast/reference/evaluation.py (torchreid ``eval_market1501`` / ``eval_cuhk03``,
mINP as in fast-reid), and the backends agree with it exactly: same CMC, and the same float64 mAP and
mINP bit for bit.

Backends (backends.py; defaults: cpu for host inputs, reference without the native module, torch for
CUDA/cupy inputs): cpu (csrc/cpu/evaluate.cpp: no row is sorted, each match is ranked by counting), torch
(reidfast/kernels/torch/evaluate.py: a stable sort per row on the distmat's device) and reference (numpy).

CUHK03's seeded draws (one image per identity and repeat, Q x num_repeats x identities integers) are the
reference's: the same numpy generator, the same bounds, the same order (cuhk03.py), made by the
native module with numpy's algorithm on the generator's bits when a start-up self-check agrees with
numpy, else by numpy itself. So every backend gives the reference's numbers for a seed.

Modules: result.py (RankingResult, the final aggregation), checks.py (argument checks), backends.py,
cuhk03.py (the CUHK03 sampler), pairwise_sum.py (numpy's pairwise summation over sparse vectors); the torch
backend's device code is reidfast/kernels/torch/evaluate.py.
"""
from __future__ import annotations

import warnings
from typing import Any

from .backends import EVALUATE
from .checks import check_positive_int, count_nan, validate
from .result import PROTOCOL_NAMES, PROTOCOLS, RankingResult

__all__ = ["EVALUATE", "PROTOCOLS", "PROTOCOL_NAMES", "RankingResult", "count_nan", "evaluate"]

# Names this op had when it was one module, still importable from reidfast.ops.evaluation.
from .backends import metrics_from_match_positions as _metrics_from_match_positions  # noqa: E402
from .checks import Labels as _Labels, check_positive_int as _check_positive_int, count_nan as _count_nan  # noqa: E402
from .checks import label_vector as _label_vector, validate as _validate  # noqa: E402
from .cuhk03 import Cuhk03Sampling as _Cuhk03Sampling  # noqa: E402
from .result import aggregate as _aggregate  # noqa: E402


def evaluate(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
    protocol: str = "market1501",
    seed: int | None = 0,
    *,
    num_repeats: int = 10,
) -> RankingResult:
    """CMC, mAP and mINP of a (Q, G) query-gallery distance matrix (smaller = more similar).

    distmat: (Q, G) torch (CPU or CUDA), numpy or cupy array; float (NaN raises ValueError, inf is allowed)
    or integer. q_pids, q_camids: (Q,) and g_pids, g_camids: (G,) integer labels, any array type.
    protocol: "market1501" (gallery items with the query's pid and camera are removed; ties ranked by
    gallery index) or "cuhk03" (CMC averaged over num_repeats seeded draws of one gallery image per
    identity; seed as in reidfast.reference.evaluation.evaluate_cuhk03).

    A query left without a correct match is skipped, counted in num_skipped_queries and reported by one
    warning; if every query is skipped, ValueError. Returns a RankingResult (cmc, mAP, mINP, rank1/5/10,
    summary(), to_dict()), equal to the reference evaluator's numbers on every backend (for CUHK03: the same
    seeded draws). A host distmat is evaluated by the native cpu backend; a CUDA/cupy one on its GPU by the
    torch backend, in chunks of rows; `reidfast.use_backend(...)` forces one.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: expected one of {PROTOCOLS}, got {protocol!r}")
    num_repeats = check_positive_int("num_repeats", num_repeats)
    distmat_t, labels = validate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    _, implementation = EVALUATE.select(distmat_t.device, distmat_t.dtype)
    result = implementation(distmat_t, labels, protocol, seed, num_repeats)
    if result.num_skipped_queries:
        warnings.warn(
            f"{result.num_skipped_queries} of {distmat_t.shape[0]} queries have no valid gallery match (no gallery "
            "item of their pid outside their camera) and were skipped; the metrics average the other "
            f"{result.num_valid_queries}",
            stacklevel=2,
        )
    return result
