"""CUHK03 single-shot sampling: the reference's seeded draws of one gallery image per identity and repeat,
made in the reference's order (so every backend gives the reference's numbers for a seed), by the native
module with numpy's algorithm on the generator's bits when a self-check agrees with numpy, else by numpy."""
from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch

from ... import _native
from .checks import Labels

CUHK03_DRAW_BLOCK_BYTES = 64 << 20  # host memory for one block of queries' CUHK03 draws (and their bounds)


class Cuhk03Sampling:
    """The reference's seeded single-shot sampling (reidfast.reference.evaluation.evaluate_cuhk03), in its order.

    For each valid query, in query order, the reference draws rng.integers(0, counts, size=(R, J)): for each
    repeat and each gallery identity (ascending pid) which of its kept images (in ranking order) is taken;
    counts are the identities' image counts, the query's own being its number of matches. Those bounds need
    no ranking, so the same draws on the same generator give the same offsets here, block after block of
    queries. The native module makes them with numpy's own algorithm on the generator's bits (several times
    faster than numpy's per-element broadcasting) once native_draws_match_numpy has checked that it
    reproduces this numpy; otherwise one flat Generator.integers call per block does (the same sequence).
    """

    def __init__(self, labels: Labels, num_repeats: int, seed: Any) -> None:
        g_pids = labels.g_pids.numpy()
        self.identities, identity, self.images_per_identity = np.unique(g_pids, return_inverse=True, return_counts=True)
        self.images_per_identity = self.images_per_identity.astype(np.int64)
        self.identity = torch.from_numpy(identity.reshape(-1).astype(np.int64))  # (G,) identity index per item
        self.num_identities = int(self.identities.size)
        self.num_repeats = num_repeats
        self.num_matches = num_matches(labels)
        q_pids = labels.q_pids.numpy()
        self.query_identity = np.minimum(np.searchsorted(self.identities, q_pids), self.num_identities - 1).astype(np.int64)
        self.rows_per_block = max(1, CUHK03_DRAW_BLOCK_BYTES // (2 * 8 * num_repeats * self.num_identities))
        self.max_rank = labels.max_rank
        self.cmc_sum = np.zeros(labels.max_rank, dtype=np.float64)
        self._rng = np.random.default_rng(seed)
        self.native_draws = native_draws_match_numpy(type(self._rng.bit_generator))
        self._next_query = 0
        self._buffer = np.empty(0, dtype=np.int64)  # reused block after block: no page faults per block

    def valid_rows(self, start: int, end: int) -> np.ndarray:
        """Rows of queries start:end that have a valid match, relative to start."""
        return np.flatnonzero(self.num_matches[start:end] > 0)

    def draw(self, start: int, end: int) -> np.ndarray:
        """Offsets (end - start, R, J) int64 of queries start:end (the next ones), valid until the next call;
        the rows of skipped queries hold no draws (stale values)."""
        if start != self._next_query:
            raise RuntimeError(f"CUHK03 draws must follow the query order: expected query {self._next_query}, got {start}")
        self._next_query = end
        shape = (end - start, self.num_repeats, self.num_identities)
        if self._buffer.size < math.prod(shape):
            self._buffer = np.empty(math.prod(shape), dtype=np.int64)
        offsets = self._buffer[: math.prod(shape)].reshape(shape)
        own_identity, num_matches = self.query_identity[start:end], self.num_matches[start:end]
        if self.native_draws:
            native_draw(self._rng, self.images_per_identity, own_identity, num_matches, offsets)
            return offsets
        valid_rows = self.valid_rows(start, end)
        bounds = np.broadcast_to(self.images_per_identity, (valid_rows.size, self.num_repeats, self.num_identities)).copy()
        bounds[np.arange(valid_rows.size), :, own_identity[valid_rows]] = num_matches[valid_rows, None]
        offsets[valid_rows] = self._rng.integers(0, bounds)  # C order: the reference's per-query draws, in order
        return offsets

    def add_sampled_ranks(self, sampled_rank: np.ndarray) -> None:
        """Accumulate the CMC of the next valid queries' sampled ranks (V, R), as the reference does."""
        num_queries = sampled_rank.shape[0]
        width = self.max_rank + 2  # ranks past max_rank go to the last column
        flat = np.arange(num_queries)[:, None] * width + np.minimum(sampled_rank, self.max_rank + 1)
        hits = np.bincount(flat.ravel(), minlength=num_queries * width).reshape(num_queries, width)
        query_cmc = np.cumsum(hits, axis=1)[:, 1 : self.max_rank + 1] / self.num_repeats
        # The reference adds each query's CMC to a float64 running sum in query order; cumsum does the same.
        self.cmc_sum = np.cumsum(np.vstack([self.cmc_sum[None], query_cmc]), axis=0)[-1]


def native_draw(
    rng: np.random.Generator, images_per_identity: np.ndarray, own_identity: np.ndarray, num_matches: np.ndarray,
    offsets: np.ndarray,
) -> None:
    """The native module's copy of the draws (csrc/cpu/evaluate.cpp, cuhk03_draw_offsets) on rng's bits."""
    bit_generator = rng.bit_generator
    arrays = (images_per_identity, own_identity, num_matches, offsets)
    with bit_generator.lock:  # as numpy's own methods do
        _native._C.cuhk03_draw_offsets_cpu(
            bit_generator.ctypes.bit_generator.value, *(_native.view(torch.from_numpy(a)) for a in arrays)
        )


@functools.lru_cache(maxsize=None)
def native_draws_match_numpy(bit_generator_type: type) -> bool:
    """Whether the native draws equal Generator.integers here: the same values and the same bits consumed (the
    next draws agree), on bounds that take no bits (1), rarely reject (small) and reject often (2^31 + 1)."""
    if not _native.available():
        return False
    try:
        generators = [np.random.Generator(bit_generator_type(20240611)) for _ in range(2)]
    except Exception:  # a bit generator that cannot be seeded this way: use numpy's draws
        return False
    images_per_identity = np.array([1, 2, 3, 7, 751, 2**31 + 1, 2**32 - 1, 1, 5], dtype=np.int64)
    own_identity = np.array([4, 0, 8], dtype=np.int64)
    num_matches = np.array([2, 0, 6], dtype=np.int64)
    offsets = np.zeros((3, 40, images_per_identity.size), dtype=np.int64)
    native_draw(generators[0], images_per_identity, own_identity, num_matches, offsets)
    expected = np.zeros_like(offsets)
    for q in np.flatnonzero(num_matches):
        bounds = images_per_identity.copy()
        bounds[own_identity[q]] = num_matches[q]
        expected[q] = generators[1].integers(0, bounds, size=offsets.shape[1:])
    same_state_after = np.array_equal(generators[0].integers(0, 2**62, 4), generators[1].integers(0, 2**62, 4))
    return bool(np.array_equal(offsets, expected)) and same_state_after


def num_matches(labels: Labels) -> np.ndarray:
    """(Q,) int64: gallery items of the query's pid in another camera (0: the query is skipped)."""
    q_pids, g_pids, q_camids, g_camids = (t.numpy() for t in (labels.q_pids, labels.g_pids, labels.q_camids, labels.g_camids))
    cameras, g_camera = np.unique(g_camids, return_inverse=True)
    pids, g_pid, images_per_pid = np.unique(g_pids, return_inverse=True, return_counts=True)
    pairs, images_per_pair = np.unique(g_pid.reshape(-1) * cameras.size + g_camera.reshape(-1), return_counts=True)
    q_pid = np.minimum(np.searchsorted(pids, q_pids), pids.size - 1)
    q_camera = np.minimum(np.searchsorted(cameras, q_camids), cameras.size - 1)
    pid_found = pids[q_pid] == q_pids
    q_pair = q_pid * cameras.size + q_camera
    pair_slot = np.minimum(np.searchsorted(pairs, q_pair), pairs.size - 1)
    pair_found = pid_found & (cameras[q_camera] == q_camids) & (pairs[pair_slot] == q_pair)
    same_pid = np.where(pid_found, images_per_pid[q_pid], 0)
    return same_pid - np.where(pair_found, images_per_pair[pair_slot], 0)
