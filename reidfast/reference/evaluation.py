"""Plain numpy re-ID ranking evaluation: the ground truth every fast evaluator is compared against.

Semantics follow torchreid's python ``eval_market1501`` / ``eval_cuhk03``
(KaiyangZhou/deep-person-reid, ``torchreid/metrics/rank.py``), with mINP added as in fast-reid
(Ye et al., "Deep Learning for Person Re-identification: A Survey and Outlook", 2021).

Per query (one row of the Q x G distance matrix):

1. rank the gallery by distance, ascending; ties are broken by gallery index (stable sort);
2. drop gallery items with the same pid AND the same camid as the query (pid 0 distractors and any
   other pid are kept: there is no junk filtering beyond this rule);
3. a query with no correct match left is skipped and counted in ``num_skipped_queries``;
4. CMC_k = 1 if a correct match is within the first k kept items; AP = mean over the correct matches
   of the precision at that match; INP = num_matches / (1-based rank of the last correct match).

Where this differs from torchreid (on purpose, documented):

* torchreid uses ``np.argsort``'s default (unstable) sort, so its tie order is unspecified; here ties
  are broken by gallery index.
* When a query's kept row is shorter than ``max_rank`` torchreid's python code builds a ragged array
  (an error in recent numpy) and its Cython code reads stale buffer values. The CMC here is padded
  with 1: a valid query's match lies inside its kept row, so every longer cut contains it.
"""
from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass

import numpy as np

from reidfast._checks import check_some_query_valid

__all__ = ["EvaluationResult", "evaluate_market1501", "evaluate_cuhk03"]


@dataclass(frozen=True, eq=False)
class EvaluationResult:
    """Ranking metrics averaged over the valid queries.

    cmc: float32 (max_rank,), cmc[k-1] = fraction of valid queries with a correct match in the top k.
    max_rank is the requested one, or num_gallery when the gallery is smaller.
    average_precision, inverse_negative_penalty: float64 (num_valid_queries,), per valid query in query order
    (torchreid's all_AP, fast-reid's all_INP); mAP and mINP are their means.
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int
    num_skipped_queries: int
    average_precision: np.ndarray
    inverse_negative_penalty: np.ndarray


def evaluate_market1501(
    distmat,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    max_rank: int = 50,
) -> EvaluationResult:
    """Market-1501 protocol: CMC, mAP and mINP of a (Q, G) distance matrix.

    distmat: (Q, G) distances, smaller = more similar. q_pids, q_camids: (Q,). g_pids, g_camids: (G,).
    Identical numbers to torchreid's python ``eval_market1501`` (and fast-reid's mINP) up to ties.
    """
    distmat, q_pids, g_pids, q_camids, g_camids, max_rank = _validate(
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank
    )
    cmc_hits = np.zeros(max_rank, dtype=np.int64)
    average_precisions: list[float] = []
    inverse_negative_penalties: list[float] = []
    num_skipped = 0
    for query_index in range(distmat.shape[0]):
        matches, _ = _kept_matches(distmat[query_index], q_pids[query_index], q_camids[query_index], g_pids, g_camids)
        if not matches.any():
            num_skipped += 1
            continue
        cmc_hits += _cmc_of_ranked_matches(matches, max_rank)
        average_precisions.append(_average_precision(matches))
        inverse_negative_penalties.append(_inverse_negative_penalty(matches))
    num_valid = len(average_precisions)
    check_some_query_valid(num_valid)
    # float64 division then rounding to float32 equals torchreid's float32 division (innocuous double rounding).
    return _result(cmc_hits / num_valid, average_precisions, inverse_negative_penalties, num_skipped)


def evaluate_cuhk03(
    distmat,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    max_rank: int = 50,
    num_repeats: int = 10,
    seed: int | None = 0,
) -> EvaluationResult:
    """CUHK03 single-shot protocol: CMC over sampled galleries with one image per identity.

    Shapes as in ``evaluate_market1501``. Per valid query, after dropping same pid + same camid items,
    one gallery image per identity is drawn uniformly ``num_repeats`` times and the CMC of each sampled
    ranking is averaged. As in torchreid's ``eval_cuhk03``, AP and INP are computed on the whole kept
    ranking, not on the samples, so they equal the Market-1501 values.

    Sampling uses ``np.random.default_rng(seed)`` (identities in ascending pid order, queries in order),
    so results are deterministic for a seed; they are not bit-identical to torchreid, which draws from
    the global ``np.random`` state with ``np.random.choice``.
    """
    distmat, q_pids, g_pids, q_camids, g_camids, max_rank = _validate(
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank
    )
    _check_positive_int("num_repeats", num_repeats)
    rng = np.random.default_rng(seed)
    cmc_sum = np.zeros(max_rank, dtype=np.float64)
    average_precisions: list[float] = []
    inverse_negative_penalties: list[float] = []
    num_skipped = 0
    for query_index in range(distmat.shape[0]):
        matches, kept_pids = _kept_matches(
            distmat[query_index], q_pids[query_index], q_camids[query_index], g_pids, g_camids
        )
        if not matches.any():
            num_skipped += 1
            continue
        sampled_positions = _sample_one_per_identity(kept_pids, num_repeats, rng)
        query_cmc_hits = np.zeros(max_rank, dtype=np.int64)
        for positions in sampled_positions:
            # positions are sorted, so the sampled ranking keeps the kept ranking's order.
            query_cmc_hits += _cmc_of_ranked_matches(matches[positions], max_rank)
        cmc_sum += query_cmc_hits / num_repeats
        average_precisions.append(_average_precision(matches))
        inverse_negative_penalties.append(_inverse_negative_penalty(matches))
    num_valid = len(average_precisions)
    check_some_query_valid(num_valid)
    return _result(cmc_sum / num_valid, average_precisions, inverse_negative_penalties, num_skipped)


def _kept_matches(
    distances: np.ndarray, query_pid, query_camid, g_pids: np.ndarray, g_camids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One query's ranking without same pid + same camid items -> (is-correct-match bool (K,), pids (K,))."""
    order = np.argsort(distances, kind="stable")
    ranked_pids = g_pids[order]
    keep = (ranked_pids != query_pid) | (g_camids[order] != query_camid)
    kept_pids = ranked_pids[keep]
    return kept_pids == query_pid, kept_pids


def _cmc_of_ranked_matches(matches: np.ndarray, max_rank: int) -> np.ndarray:
    """0/1 int64 (max_rank,): 1 from the first correct match on; padded with 1 past the ranking's end."""
    cmc = np.ones(max_rank, dtype=np.int64)
    head = np.minimum(np.cumsum(matches[:max_rank]), 1)
    cmc[: head.size] = head
    return cmc


def _average_precision(matches: np.ndarray) -> float:
    """torchreid's AP: sum_i (hits up to i / (i + 1)) * match_i / num_matches over the whole ranking."""
    hits = np.cumsum(matches)
    # Summing the full-length vector (zeros included) keeps numpy's pairwise summation order, and so
    # the exact float64 result, identical to torchreid's.
    precision_at_match = hits / np.arange(1.0, matches.size + 1.0) * matches
    return float(precision_at_match.sum() / hits[-1])


def _inverse_negative_penalty(matches: np.ndarray) -> float:
    """fast-reid's INP: num_matches / (1-based rank of the last correct match)."""
    last_match = int(np.flatnonzero(matches)[-1])
    return float(np.count_nonzero(matches) / (last_match + 1.0))


def _sample_one_per_identity(kept_pids: np.ndarray, num_repeats: int, rng: np.random.Generator) -> np.ndarray:
    """(num_repeats, num_identities) sorted positions into kept_pids, one uniformly drawn per identity."""
    _, identity_of_position, images_per_identity = np.unique(kept_pids, return_inverse=True, return_counts=True)
    positions_by_identity = np.argsort(identity_of_position, kind="stable")
    first_slot = np.cumsum(images_per_identity) - images_per_identity
    offsets = rng.integers(0, images_per_identity, size=(num_repeats, images_per_identity.size))
    return np.sort(positions_by_identity[first_slot + offsets], axis=1)


def _result(
    mean_cmc: np.ndarray, average_precisions: list[float], inverse_negative_penalties: list[float], num_skipped: int
) -> EvaluationResult:
    cmc = mean_cmc.astype(np.float32)
    per_query_ap = np.array(average_precisions, dtype=np.float64)
    per_query_inp = np.array(inverse_negative_penalties, dtype=np.float64)
    for array in (cmc, per_query_ap, per_query_inp):
        array.setflags(write=False)
    return EvaluationResult(
        cmc=cmc,
        mAP=float(np.mean(average_precisions)),
        mINP=float(np.mean(inverse_negative_penalties)),
        num_valid_queries=len(average_precisions),
        num_skipped_queries=num_skipped,
        average_precision=per_query_ap,
        inverse_negative_penalty=per_query_inp,
    )


def cut_max_rank(max_rank: int, num_gallery: int) -> int:
    """max_rank, or the gallery size when the gallery is smaller (with a warning that the CMC is cut there).
    Called from an argument check that the public function calls: the warning points at the user's line."""
    if num_gallery < max_rank:
        warnings.warn(
            f"number of gallery samples ({num_gallery}) is smaller than max_rank ({max_rank}); "
            f"the CMC is cut at rank {num_gallery}",
            stacklevel=4,
        )
        return num_gallery
    return max_rank


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value}")


def _as_label_vector(name: str, values, expected_length: int, length_source: str) -> np.ndarray:
    """Integer-like labels (ints, or floats with integral values) -> int64 (N,)."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of labels, got shape {array.shape}")
    if array.shape[0] != expected_length:
        raise ValueError(f"{name}: expected length {expected_length} (distmat's {length_source}), got {array.shape[0]}")
    if array.dtype.kind in "iu":
        return array.astype(np.int64, copy=False)
    if array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
        return array.astype(np.int64)
    raise ValueError(f"{name}: expected integer labels, got dtype {array.dtype}" + (
        " with non-integral values" if array.dtype.kind == "f" else ""
    ))


def _validate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Check shapes and dtypes; returns numpy arrays and the effective max_rank (<= num_gallery)."""
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat: expected a 2-D (num_query, num_gallery) array, got shape {distmat.shape}")
    if distmat.dtype.kind not in "fiu":
        raise ValueError(f"distmat: expected real distances, got dtype {distmat.dtype}")
    num_query, num_gallery = distmat.shape
    if num_query == 0 or num_gallery == 0:
        raise ValueError(f"distmat: expected at least one query row and one gallery column, got shape {distmat.shape}")
    if distmat.dtype.kind == "f" and np.isnan(distmat).any():
        raise ValueError("distmat: expected comparable distances (inf is allowed), got NaN")
    q_pids = _as_label_vector("q_pids", q_pids, num_query, "rows (queries)")
    q_camids = _as_label_vector("q_camids", q_camids, num_query, "rows (queries)")
    g_pids = _as_label_vector("g_pids", g_pids, num_gallery, "columns (gallery items)")
    g_camids = _as_label_vector("g_camids", g_camids, num_gallery, "columns (gallery items)")
    _check_positive_int("max_rank", max_rank)
    max_rank = cut_max_rank(int(max_rank), num_gallery)
    return distmat, q_pids, g_pids, q_camids, g_camids, max_rank
