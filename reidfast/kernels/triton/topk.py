"""Triton fused pairwise distance + row top-k: the k nearest rows of y for every row of x, no N x M matrix.

Distances exactly as reidfast/reference/distance.py defines them (float32 accumulation, float64 for float64
inputs; float32 products follow torch.backends.cuda.matmul.allow_tf32 like torch.mm):
    euclidean   sqrt(max(nx + ny - 2 x.y, 1e-12))     ranked on the distance itself (ties as the reference's)
    sqeuclidean max(nx + ny - 2 x.y, 0)
    cosine      1 - x.y / (max(|x|, 1e-12) max(|y|, 1e-12))   (may be slightly negative; ranked as it is)
When row i of x is row i of y in memory (reidfast._arrays.same_rows) a row's squared distance to itself is
forced to exactly 0, as in distance.py (tl.dot and tl.sum round differently). Results are sorted ascending
by (distance, column): equal distances list the smaller column first.

Kernel design. Each program owns BLOCK_N rows of x (their norms computed once) and sweeps y in BLOCK_M
column tiles (D in BLOCK_D chunks, tl.dot products, y norms fused), keeping a running, sorted (BLOCK_N, K_PAD)
top-k per row, K_PAD = next power of two >= k. Every candidate is one ordering key:

  16/32-bit inputs: one int64 key = (monotone int32 image of the float32 score) << 32 | column.
      The score's float32 bits b are mapped to s = b if b >= 0 else b ^ 0x7fffffff (the usual total order of
      IEEE floats as signed integers; -0 is first turned into +0 and every NaN into the positive quiet NaN,
      so NaN ranks after +inf as in torch.sort). Ascending int64 order is ascending (score, column), and the
      score is decoded from the key exactly, so no value travels beside it.
  float64 inputs: the score needs all 64 bits, so the key is a pair (int64 monotone image of the float64
      score, int32 column) compared lexicographically by a bitonic network written here (the same hypercube
      compare-and-swap as tl.sort, swapping both halves of the pair). Exact in float64: the order and ties
      are those of the float64 reference, not of a float32 rounding.

Merging a tile: a bitonic top-k (as tl.topk: sort runs of K_PAD, then repeatedly halve by the elementwise
minimum of an ascending and a descending run) reduces the tile's (BLOCK_N, BLOCK_M) keys to its K_PAD
smallest, sorted descending (BLOCK_M >= K_PAD always); the elementwise minimum of the ascending running list
and that descending list holds the K_PAD smallest of their union as a bitonic sequence, and one bitonic merge
(log2 K_PAD compare-and-swap rounds) sorts it again. A tile whose smallest key beats no row's current
K_PAD-th key is skipped. Masked rows/columns and the excluded self column get the largest key; columns must
be < 2**31. The network is written here rather than taken from tl.topk/tl.bitonic_merge to carry the float64
column payload and to run fast under TRITON_INTERPRET=1 (see _axis_last); compiled, it is tl.sort's network.

Non-finite inputs are the op layer's business (it rejects them); NaN scores (inf - inf from overflowing
features: distance_from_dot keeps NaN, as torch.clamp_min does) rank after +inf, as in torch.sort.
"""
from __future__ import annotations

import operator

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction, constexpr_function

from ..._native import METRIC_CODES
from .common import check_features, prune_by_dot_path, same_rows, tuning_bucket
from .distance import distance_from_dot, dot_and_norms, squared_norms

MAX_K = 128  # K_PAD keys per row live in registers; the caller handles larger k (e.g. by chunks)
_INT64_MAX = tl.constexpr(0x7FFFFFFFFFFFFFFF)  # triton.jit reads only constexpr globals
_INT32_MAX = tl.constexpr(0x7FFFFFFF)


# ----------------------------------------------------------------------------------------------------------
# Bitonic top-k and merge along the last axis of (R, C) keys, C a power of two, on the hypercube view
# [2] * log2(R * C) as in triton.language.standard (tl.topk / tl.bitonic_merge), extended with an optional
# int32 column payload (PAIRS: keys compared lexicographically as (key, col)). Compiled, an element's partner
# across a hypercube dimension is x ^ xor_sum(x) as in tl.sort (the xors fold away); the interpreter runs
# xor_sum as a per-element Python loop, so there (SWAP_BY_PERMUTE) the partner comes from permute, split
# and join instead: the same values, in a few numpy calls.


@constexpr_function
def _log2(value):
    result = 0
    while value > 1:
        value >>= 1
        result += 1
    return result


@constexpr_function
def _axis_last(n_dims, axis):
    """Permutation moving hypercube dimension `axis` last (undone by _axis_back). Under the interpreter the
    partner across `axis` is found by permute/split/join (builtins) instead of x ^ xor_sum(x, axis): every
    reduction with a non-standard combine function runs there as a per-element Python loop, and every
    nested jit call re-patches triton.language, so the swap is written inline."""
    return [d for d in range(n_dims) if d != axis] + [axis]


@constexpr_function
def _axis_back(n_dims, axis):
    return list(range(axis)) + [n_dims - 1] + list(range(axis, n_dims - 1))


@triton.jit
def _merge_hypercube(key, col, stage: tl.constexpr, order: tl.constexpr, PAIRS: tl.constexpr,
                     SWAP_BY_PERMUTE: tl.constexpr):
    """`stage` compare-and-swap rounds on the innermost hypercube dimensions; order 0: ascending runs of
    2**stage, 1: descending, 2: alternating. (Written inline: every nested jit call costs the interpreter
    more than the numpy work it does.)"""
    n_dims: tl.constexpr = _log2(key.numel)
    if order == 2:  # 0 on the left, 1 on the right half of dimension `stage`
        flip = tl.reshape(tl.arange(0, 2), [1] * (n_dims - stage - 1) + [2] + [1] * stage)
    else:
        flip = order
    # (no constexpr assignments in the loop: triton refuses to reassign them)
    for i in tl.static_range(stage - 1, -1, -1):
        # each element's partner across hypercube dimension n_dims - 1 - i
        if SWAP_BY_PERMUTE:
            lo, hi = tl.split(tl.permute(key, _axis_last(_log2(key.numel), n_dims - 1 - i)))
            other_key = tl.permute(tl.join(hi, lo), _axis_back(_log2(key.numel), n_dims - 1 - i))
        else:
            other_key = key ^ tl.xor_sum(key, n_dims - 1 - i, True)
        is_right = tl.reshape(tl.arange(0, 2), [1] * (n_dims - i - 1) + [2] + [1] * i)
        if PAIRS:
            if SWAP_BY_PERMUTE:
                lo, hi = tl.split(tl.permute(col, _axis_last(_log2(col.numel), n_dims - 1 - i)))
                other_col = tl.permute(tl.join(hi, lo), _axis_back(_log2(col.numel), n_dims - 1 - i))
            else:
                other_col = col ^ tl.xor_sum(col, n_dims - 1 - i, True)
            greater = (key > other_key) | ((key == other_key) & (col > other_col))
            swap = greater != (flip ^ is_right).to(tl.int1)
            col = tl.where(swap, other_col, col)
        else:
            swap = (key > other_key) != (flip ^ is_right).to(tl.int1)
        key = tl.where(swap, other_key, key)
    return key, col


@triton.jit
def _topk_smallest(key, col, K: tl.constexpr, ORDER: tl.constexpr, PAIRS: tl.constexpr, SWAP_BY_PERMUTE: tl.constexpr):
    """The K smallest entries of each row of (R, C) keys (and their cols), sorted ascending (ORDER 0) or
    descending (ORDER 1) -> (R, K). Bitonic top-k: sort runs of K, then repeatedly halve by elementwise min
    of an ascending and a descending run and re-merge."""
    ROWS: tl.constexpr = key.shape[0]
    log_n: tl.constexpr = _log2(key.shape[1])
    log_k: tl.constexpr = _log2(K)
    if log_k == 0:
        smallest = tl.min(key, 1, keep_dims=True)
        if PAIRS:
            col = tl.min(tl.where(key == smallest, col, _INT32_MAX), 1, keep_dims=True)
        key = smallest
    else:
        n_dims: tl.constexpr = _log2(key.numel)
        key = tl.reshape(key, [2] * n_dims)
        if PAIRS:
            col = tl.reshape(col, [2] * n_dims)
        for i in tl.static_range(1, log_k + 1):
            key, col = _merge_hypercube(key, col, i, 2 if i < log_n else ORDER, PAIRS, SWAP_BY_PERMUTE)
        for i in tl.static_range(log_k + 1, log_n + 1):
            # halve: keep the smaller of each two entries across the dimension above the runs of K
            if PAIRS:
                if SWAP_BY_PERMUTE:
                    lo, hi = tl.split(tl.permute(key, _axis_last(_log2(key.numel), _log2(key.numel) - 1 - log_k)))
                    other_key = tl.permute(tl.join(hi, lo), _axis_back(_log2(key.numel), _log2(key.numel) - 1 - log_k))
                    lo, hi = tl.split(tl.permute(col, _axis_last(_log2(col.numel), _log2(col.numel) - 1 - log_k)))
                    other_col = tl.permute(tl.join(hi, lo), _axis_back(_log2(col.numel), _log2(col.numel) - 1 - log_k))
                else:
                    other_key = key ^ tl.xor_sum(key, _log2(key.numel) - 1 - log_k, True)
                    other_col = col ^ tl.xor_sum(col, _log2(col.numel) - 1 - log_k, True)
                take_other = (other_key < key) | ((other_key == key) & (other_col < col))
                # both entries across the axis now hold the same pair
                col = tl.min(tl.where(take_other, other_col, col), _log2(col.numel) - 1 - log_k)
                key = tl.min(tl.where(take_other, other_key, key), _log2(key.numel) - 1 - log_k)
            else:
                key = tl.min(key, _log2(key.numel) - 1 - log_k)
            key, col = _merge_hypercube(key, col, log_k, 2 if i < log_n else ORDER, PAIRS, SWAP_BY_PERMUTE)
        key = tl.reshape(key, [ROWS, K])
        if PAIRS:
            col = tl.reshape(col, [ROWS, K])
    return key, col


@triton.jit
def _bitonic_sort_rows(key, col, PAIRS: tl.constexpr, SWAP_BY_PERMUTE: tl.constexpr):
    """Sort each row of (R, K) entries that form a bitonic sequence, ascending."""
    ROWS: tl.constexpr = key.shape[0]
    K: tl.constexpr = key.shape[1]
    n_dims: tl.constexpr = _log2(key.numel)
    key = tl.reshape(key, [2] * n_dims)
    if PAIRS:
        col = tl.reshape(col, [2] * n_dims)
    key, col = _merge_hypercube(key, col, _log2(K), 0, PAIRS, SWAP_BY_PERMUTE)
    key = tl.reshape(key, [ROWS, K])
    if PAIRS:
        col = tl.reshape(col, [ROWS, K])
    return key, col


# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _float32_keys(score, cols, valid):
    """One int64 key per entry: the monotone int32 image of the float32 score << 32 | column; the largest
    key where not valid."""
    bits = score.to(tl.int32, bitcast=True)
    bits = tl.where(score != score, 0x7FC00000, bits)  # every NaN -> the positive quiet NaN: after +inf
    bits = tl.where(bits >= 0, bits, bits ^ _INT32_MAX)
    key = (bits.to(tl.int64) << 32) | cols.to(tl.int64)[None, :]
    return tl.where(valid, key, _INT64_MAX)


@triton.jit
def _float64_keys(score, cols, valid):
    """(monotone int64 image of the float64 score, int32 column) per entry; the largest pair where not valid."""
    bits = score.to(tl.int64, bitcast=True)
    bits = tl.where(score != score, 0x7FF8000000000000, bits)
    bits = tl.where(bits >= 0, bits, bits ^ _INT64_MAX)
    return tl.where(valid, bits, _INT64_MAX), tl.where(valid, cols[None, :], _INT32_MAX)


@triton.jit
def _merge_float32_tile(best_key, key, K_PAD: tl.constexpr, SWAP_BY_PERMUTE: tl.constexpr):
    """The running ascending top-K_PAD keys per row merged with a tile's keys (skipped when the tile's
    smallest key beats no row's K_PAD-th)."""
    threshold = tl.max(best_key, axis=1)
    if tl.max((tl.min(key, axis=1) < threshold).to(tl.int32), axis=0) > 0:
        tile_best, _ = _topk_smallest(key, key, K_PAD, 1, False, SWAP_BY_PERMUTE)  # descending
        # ascending running vs descending tile: the minimum is bitonic and holds the K_PAD smallest of the union
        best_key, _ = _bitonic_sort_rows(tl.minimum(best_key, tile_best), best_key, False, SWAP_BY_PERMUTE)
    return best_key


@triton.jit
def _merge_float64_tile(best_key, best_col, key, col, K_PAD: tl.constexpr, SWAP_BY_PERMUTE: tl.constexpr):
    """_merge_float32_tile for (key, column) pairs compared lexicographically."""
    threshold = tl.max(best_key, axis=1)
    if tl.max((tl.min(key, axis=1) <= threshold).to(tl.int32), axis=0) > 0:
        tile_key, tile_col = _topk_smallest(key, col, K_PAD, 1, True, SWAP_BY_PERMUTE)  # descending
        take_tile = (tile_key < best_key) | ((tile_key == best_key) & (tile_col < best_col))
        best_key, best_col = _bitonic_sort_rows(tl.where(take_tile, tile_key, best_key),
                                                tl.where(take_tile, tile_col, best_col), True, SWAP_BY_PERMUTE)
    return best_key, best_col


@triton.jit
def _store_topk(values_ptr, indices_ptr, best_key, best_col, rows, n, k, FP64: tl.constexpr, K_PAD: tl.constexpr):
    """Decode the sorted keys into values and columns and store the first k of each row."""
    if FP64:
        bits = tl.where(best_key >= 0, best_key, best_key ^ _INT64_MAX)
        value = bits.to(tl.float64, bitcast=True)
        index = best_col.to(tl.int64)
    else:
        bits = (best_key >> 32).to(tl.int32)
        bits = tl.where(bits >= 0, bits, bits ^ _INT32_MAX)
        value = bits.to(tl.float32, bitcast=True)
        index = best_key & _INT32_MAX
    slots = tl.arange(0, K_PAD)
    out_offsets = rows.to(tl.int64)[:, None] * k + slots[None, :]
    out_mask = (rows < n)[:, None] & (slots < k)[None, :]
    tl.store(values_ptr + out_offsets, value.to(values_ptr.dtype.element_ty), mask=out_mask)
    tl.store(indices_ptr + out_offsets, index, mask=out_mask)


@triton.jit
def _topk_distance_kernel(
    x_ptr, y_ptr, values_ptr, indices_ptr, n, m, dim, k, x_row_stride, y_row_stride,
    tune_n, tune_m, tune_dim,  # unused by the kernel: the autotuning key (common.tuning_bucket of n, m, dim)
    METRIC: tl.constexpr, SAME_INPUT: tl.constexpr, EXCLUDE_SELF: tl.constexpr, FP64: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, SWAP_BY_PERMUTE: tl.constexpr, K_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n
    x_offsets = rows.to(tl.int64) * x_row_stride  # int64: row * stride can pass 2**31
    x_norm = squared_norms(x_ptr, x_offsets, row_ok, dim, FP64, BLOCK_D)  # once per program, not per tile

    # running top-K_PAD per row, sorted ascending; "no candidate" is the largest key
    best_key = tl.full((BLOCK_N, K_PAD), _INT64_MAX, dtype=tl.int64)
    best_col = tl.full((BLOCK_N, K_PAD), _INT32_MAX, dtype=tl.int32)  # float64 only (dead code otherwise)
    for column_start in range(0, m, BLOCK_M):
        cols = column_start + tl.arange(0, BLOCK_M)
        col_ok = cols < m
        acc, _, y_norm = dot_and_norms(x_ptr, y_ptr, x_offsets, cols.to(tl.int64) * y_row_stride, row_ok, col_ok,
                                       dim, FP64, INPUT_PRECISION, False, BLOCK_D)
        # score: the distance itself, so equal float32 distances tie exactly as the reference's do
        score = distance_from_dot(acc, x_norm, y_norm, rows, cols, METRIC, SAME_INPUT, FP64)
        score = tl.where(score == 0.0, 0.0, score)  # -0 -> +0: equal scores must give equal keys
        valid = row_ok[:, None] & col_ok[None, :]
        if EXCLUDE_SELF:
            valid = valid & (rows[:, None] != cols[None, :])
        if FP64:
            key, col = _float64_keys(score, cols, valid)
            best_key, best_col = _merge_float64_tile(best_key, best_col, key, col, K_PAD, SWAP_BY_PERMUTE)
        else:
            best_key = _merge_float32_tile(best_key, _float32_keys(score, cols, valid), K_PAD, SWAP_BY_PERMUTE)
    _store_topk(values_ptr, indices_ptr, best_key, best_col, rows, n, k, FP64, K_PAD)


# Under TRITON_INTERPRET=1 triton.jit returns an interpreter object: autotuning there is slow and pointless.
_COMPILED = isinstance(_topk_distance_kernel, JITFunction)
_INTERPRETER_BLOCK = dict(BLOCK_N=16, BLOCK_M=16, BLOCK_D=16)
# how the bitonic network finds partners: permute/split/join under the interpreter, xor_sum compiled (tests
# flip it to run the compiled formulation in the interpreter too)
_SWAP_BY_PERMUTE = not _COMPILED
_TUNED: dict[int, object] = {}


def _interpreter_blocks(k_pad: int) -> dict:
    return dict(_INTERPRETER_BLOCK, BLOCK_M=max(_INTERPRETER_BLOCK["BLOCK_M"], k_pad))


def _fp64_blocks(k_pad: int) -> dict:
    # float64 has no tensor-core dot: the (BLOCK_N, BLOCK_M, BLOCK_D) broadcast product must stay small
    block_m = max(16, k_pad)
    return dict(BLOCK_N=16, BLOCK_M=block_m, BLOCK_D=max(1, 4096 // (16 * block_m)), num_warps=4)


# Candidate configs (BLOCK_N, BLOCK_M, BLOCK_D, warps, stages), the dot paths (common.dot_path) on which they
# compile for sm_90 without spills or local memory, and the largest K_PAD they do so at (BLOCK_M grows to
# K_PAD; tests/test_triton_compile.py, benchmarks/RESULTS.md "Triton kernel resources"). Dropped for
# spilling: (32, 64, 32; 4 warps) and (128, 64, 32; 8 warps) (TF32 at K_PAD 16 and 64); 64 rows at
# K_PAD 128 (TF32 and FMA); on the FMA path (float32 at IEEE precision) BLOCK_M = 128 at 64 rows, and
# BLOCK_D = 64.
_CANDIDATES = (
    (64, 64, 32, 8, 3, ("mma", "fma"), 64),
    (64, 128, 32, 8, 3, ("mma",), 64),
    (32, 128, 32, 8, 3, ("mma", "fma"), MAX_K),
    (64, 64, 64, 8, 2, ("mma",), 64),
)


def configs_by_path(k_pad: int) -> dict[str, list]:
    """The tuning space of one K_PAD per dot path (BLOCK_M >= K_PAD, the per-program keys bounded)."""
    by_path: dict[str, list] = {"mma": [], "fma": []}
    seen: dict[tuple, triton.Config] = {}
    for block_n, block_m, block_d, warps, stages, paths, max_k_pad in _CANDIDATES:
        block_m = max(block_m, k_pad)
        if k_pad > max_k_pad or block_n * (block_m + k_pad) > 16384:  # int64 keys held per program
            continue
        shape = (block_n, block_m, block_d, warps, stages)
        config = seen.setdefault(shape, triton.Config({"BLOCK_N": block_n, "BLOCK_M": block_m, "BLOCK_D": block_d},
                                                      num_warps=warps, num_stages=stages))
        for path in paths:
            if all(config is not other for other in by_path[path]):
                by_path[path].append(config)
    return by_path


def _tuned_kernel(k_pad: int):
    """The autotuned kernel for one K_PAD: each call tunes over its dot path's configs (configs_by_path)."""
    if k_pad not in _TUNED:
        by_path = configs_by_path(k_pad)
        configs = list({id(config): config for path in by_path.values() for config in path}.values())
        # the autotuner adds the argument dtypes to the key itself; K_PAD is this kernel's; INPUT_PRECISION
        # picks the dot path
        _TUNED[k_pad] = triton.autotune(configs=configs, key=["tune_n", "tune_m", "tune_dim", "INPUT_PRECISION"],
                                        prune_configs_by={"early_config_prune": prune_by_dot_path(by_path, "x_ptr")},
                                        )(_topk_distance_kernel)
    return _TUNED[k_pad]


def topk_distance(
    x: torch.Tensor, y: torch.Tensor, k: int, metric: str = "euclidean", exclude_self: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest rows of y (M, D) for every row of x (N, D), without an N x M matrix.

    x, y: one floating dtype (float32, float16, bfloat16, float64), unit inner stride, any row stride, one
    device. exclude_self: x and y are the same rows, and column i is skipped for row i. 1 <= k <= MAX_K and
    k <= M - exclude_self (larger k is the caller's business).
    Returns (values (N, k) float32 (float64 for float64 inputs), indices (N, k) int64), each row sorted
    ascending by (distance, column).
    """
    original_k = k
    if not isinstance(metric, str) or metric not in METRIC_CODES:
        raise ValueError(f"metric: expected one of {tuple(METRIC_CODES)}, got {metric!r}")
    check_features("x", x)
    check_features("y", y)
    if y.dtype != x.dtype or y.device != x.device or y.shape[1] != x.shape[1]:
        raise ValueError(f"y: expected the dtype, device and feature dimension of x ({x.dtype} on {x.device}, "
                         f"{x.shape[1]} features), got {y.dtype} on {y.device}, {y.shape[1]} features")
    num_rows, dim = x.shape
    num_cols = y.shape[0]
    if num_cols >= 2**31:
        raise ValueError(f"y: expected fewer than 2**31 rows, got {num_cols}")
    exclude_self = bool(exclude_self)
    limit = min(MAX_K, num_cols - int(exclude_self))
    try:
        k = operator.index(k) if not isinstance(k, bool) else None
    except TypeError:
        k = None
    if k is None or not 1 <= k <= limit:
        raise ValueError(f"k: expected an integer in [1, {limit}] (MAX_K={MAX_K}, M={num_cols}, "
                         f"exclude_self={exclude_self}), got {original_k!r}")

    fp64 = x.dtype == torch.float64
    values = torch.empty((num_rows, k), dtype=torch.float64 if fp64 else torch.float32, device=x.device)
    indices = torch.empty((num_rows, k), dtype=torch.int64, device=x.device)
    if num_rows == 0:
        return values, indices

    k_pad = triton.next_power_of_2(k)
    precision = "tf32" if (x.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32) else "ieee"
    same_input = same_rows(x, y)
    arguments = (values, indices, num_rows, num_cols, dim, k, x.stride(0), y.stride(0),
                 tuning_bucket(num_rows), tuning_bucket(num_cols), tuning_bucket(dim))
    flags = dict(METRIC=METRIC_CODES[metric], SAME_INPUT=same_input, EXCLUDE_SELF=exclude_self, FP64=fp64,
                 INPUT_PRECISION=precision, SWAP_BY_PERMUTE=_SWAP_BY_PERMUTE, K_PAD=k_pad)
    if not _COMPILED or fp64:
        blocks = _interpreter_blocks(k_pad) if not _COMPILED else _fp64_blocks(k_pad)
        grid = (triton.cdiv(num_rows, blocks["BLOCK_N"]),)
        _topk_distance_kernel[grid](x, y, *arguments, **flags, **blocks)
    else:
        grid = lambda meta: (triton.cdiv(num_rows, meta["BLOCK_N"]),)  # noqa: E731
        _tuned_kernel(k_pad)[grid](x, y, *arguments, **flags)
    return values, indices
