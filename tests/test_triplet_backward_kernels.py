"""Fused, deterministic backward of batch-hard mining (Triton, and CUDA where a card is present) against the
reference gradients: autograd through reidfast/reference (the B x C distance matrix of reference/distance.py
at the mined pairs, and the whole reference loss), over shapes, metrics, margins, with and without a separate
candidate set, degenerate labels, identical and zero embeddings, half dtypes; bitwise determinism; dispatch.

Triton runs on CPU tensors under TRITON_INTERPRET=1 (set by conftest.py without CUDA): small shapes only.
"""
from __future__ import annotations

import pytest
import torch

import reidfast
from reidfast import _native
from reidfast.ops import triplet as triplet_ops
from reidfast.reference.distance import METRICS, pairwise_distance
from reidfast.reference.triplet import batch_hard_triplet_loss as reference_loss

from conftest import device_backend_params
from test_distance import assert_close

# (device, backend) for the fused backwards usable here: cpu-triton under the interpreter, cuda-* on a card.
FUSED = device_backend_params(("cuda", "triton"))
# Relative to the largest reference gradient: float32 accumulation, outputs rounded once to the input dtype.
TOLERANCE = {torch.float32: 2e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def mine(metric, anchors, labels, candidates=None, candidate_labels=None):
    """Reference mining on the anchors' device -> (positive, negative) (B,) int64, -1 where there is none."""
    _, details = reference_loss(anchors.cpu(), labels, candidates=None if candidates is None else candidates.cpu(),
                                candidate_labels=candidate_labels, return_details=True, metric=metric)
    return details.hardest_positive.to(anchors.device), details.hardest_negative.to(anchors.device)


def pair_distances(anchors, candidates, positive, negative, metric):
    """(dist_ap, dist_an) as the forward returns them (0 where there is no pair), from float64 distances rounded
    to the accumulation dtype: the backward is then checked as a function of exact inputs (a float32 forward
    distance of close pairs in D = 1 carries cancellation error that the weight w = g / d inherits)."""
    rows = anchors if candidates is None else candidates
    dtype = torch.float64 if anchors.dtype == torch.float64 else torch.float32
    if rows.shape[0] == 0:
        zeros = torch.zeros(anchors.shape[0], dtype=dtype, device=anchors.device)
        return zeros, zeros.clone()
    distances = pairwise_distance(anchors.double(), rows.double(), metric)
    return tuple(torch.where(index >= 0, distances.gather(1, index.clamp_min(0)[:, None]).squeeze(1), 0.0).to(dtype)
                 for index in (positive, negative))


def run_backward(backend, anchors, candidates, positive, negative, dist_ap, dist_an, grad_ap, grad_an, metric):
    """The backward op on one backend -> (grad_anchors, grad_candidates or None)."""
    grad_anchors, grad_candidates = triplet_ops._batch_hard_mine_backward_op(
        anchors, candidates, dist_ap, dist_an, positive, negative, grad_ap, grad_an, metric, backend)
    return grad_anchors, (None if candidates is None else grad_candidates)


def reference_gradients(anchors, candidates, positive, negative, grad_ap, grad_an, metric):
    """Float64 autograd of sum_i grad_ap[i] d(a_i, c_p(i)) + grad_an[i] d(a_i, c_n(i)) through the reference
    B x C distance matrix (pairs with index -1 contribute nothing); candidates=None: the anchors themselves."""
    a = anchors.detach().double().cpu().requires_grad_()
    c = a if candidates is None else candidates.detach().double().cpu().requires_grad_()
    positive, negative = positive.cpu(), negative.cpu()
    total = a.sum() * 0
    if c.shape[0] > 0:
        distances = pairwise_distance(a, c, metric)
        for index, grad in ((positive, grad_ap), (negative, grad_an)):
            chosen = distances.gather(1, index.clamp_min(0)[:, None]).squeeze(1)
            total = total + torch.where(index >= 0, grad.double().cpu() * chosen, 0.0).sum()
    leaves = [a] if candidates is None else [a, c]
    grads = torch.autograd.grad(total, leaves, allow_unused=True)
    grads = [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves)]
    return grads[0], (None if candidates is None else grads[1])


def check_against_reference(backend, anchors, candidates, positive, negative, metric, seed=0):
    """The backward with random grad_ap / grad_an (not 1) against reference_gradients."""
    generator = torch.Generator().manual_seed(seed)
    device = anchors.device
    dist_ap, dist_an = pair_distances(anchors, candidates, positive, negative, metric)
    grad_ap = (torch.rand(anchors.shape[0], generator=generator, dtype=dist_ap.dtype) * 3 - 1).to(device)
    grad_an = (torch.rand(anchors.shape[0], generator=generator, dtype=dist_ap.dtype) * 3 - 1).to(device)
    ours = run_backward(backend, anchors, candidates, positive, negative, dist_ap, dist_an, grad_ap, grad_an, metric)
    expected = reference_gradients(anchors, candidates, positive, negative, grad_ap, grad_an, metric)
    tolerance = TOLERANCE[anchors.dtype]
    for name, got, want, rows in zip(("anchors", "candidates"), ours, expected, (anchors, candidates)):
        if want is None:
            assert got is None
            continue
        assert got.dtype == rows.dtype and got.shape == rows.shape and got.device == device, name
        assert torch.isfinite(got).all(), f"{name}: non-finite gradient"
        scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
        assert_close(got, want, atol=tolerance * scale, rtol=0.0)
    return ours


def mixed_labels(count: int) -> torch.Tensor:
    """Identities of sizes 1, 2, 3, ... (the first is a singleton: an anchor without a positive)."""
    return torch.repeat_interleave(torch.arange(count), torch.arange(1, count + 1))[:count]


SHAPES = [(b, d) for b in (1, 2, 7, 64) for d in (1, 3, 128)]


@pytest.mark.parametrize("device,backend", FUSED)
@pytest.mark.parametrize("with_candidates", [False, True], ids=["self", "candidates"])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("batch,dim", SHAPES, ids=str)
def test_backward_matches_reference(device, backend, batch, dim, metric, with_candidates):
    generator = torch.Generator().manual_seed(batch * 131 + dim)
    anchors = torch.randn(batch, dim, generator=generator)
    labels = mixed_labels(batch)
    candidates = candidate_labels = None
    if with_candidates:
        candidates = torch.randn(batch + 9, dim, generator=generator)
        candidate_labels = torch.randint(0, max(1, batch // 2), (batch + 9,), generator=generator)
    anchors, candidates = anchors.to(device), None if candidates is None else candidates.to(device)
    positive, negative = mine(metric, anchors, labels, candidates, candidate_labels)
    check_against_reference(backend, anchors, candidates, positive, negative, metric, seed=batch)


@pytest.mark.parametrize("device,backend", FUSED)
@pytest.mark.parametrize("metric", METRICS)
def test_many_anchors_choosing_the_same_rows(device, backend, metric):
    """Arbitrary (not mined) pair indices with heavy repeats: long inverse-index rows, and pairs whose anchor is
    also the chosen row (self case). The backward does not care how the pairs were found."""
    generator = torch.Generator().manual_seed(17)
    anchors = torch.randn(40, 20, generator=generator).to(device)
    candidates = torch.randn(5, 20, generator=generator).to(device)
    for rows in (None, candidates):
        num_rows = anchors.shape[0] if rows is None else rows.shape[0]
        positive = torch.randint(-1, min(num_rows, 3), (40,), generator=generator).to(device)
        negative = torch.randint(-1, num_rows, (40,), generator=generator).to(device)
        check_against_reference(backend, anchors, rows, positive, negative, metric)


@pytest.mark.parametrize("device,backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("metric", METRICS)
def test_dtypes(device, backend, dtype, metric):
    generator = torch.Generator().manual_seed(3)
    anchors = torch.randn(24, 40, generator=generator).to(dtype)
    candidates = torch.randn(30, 40, generator=generator).to(dtype)
    labels, candidate_labels = torch.arange(24) // 4, torch.arange(30) % 8
    anchors, candidates = anchors.to(device), candidates.to(device)
    for rows, rows_labels in ((None, None), (candidates, candidate_labels)):
        positive, negative = mine(metric, anchors, labels, rows, rows_labels)
        check_against_reference(backend, anchors, rows, positive, negative, metric)


@pytest.mark.parametrize("device,backend", FUSED)
@pytest.mark.parametrize("metric", METRICS)
def test_pairs_without_index_contribute_nothing(device, backend, metric):
    """Index -1 (no positive / no negative): nothing flows from that side, whatever grad_ap / grad_an say;
    with no pair at all (a single anchor, an empty candidate set) the gradient is exactly zero."""
    generator = torch.Generator().manual_seed(5)
    embeddings = torch.randn(6, 4, generator=generator).to(device)
    cases = {
        "k_equals_one": (embeddings, torch.arange(6), None, None),  # no positives
        "one_identity": (embeddings, torch.zeros(6, dtype=torch.int64), None, None),  # no negatives
        "single_anchor": (embeddings[:1], torch.zeros(1, dtype=torch.int64), None, None),
        "no_candidates": (embeddings, torch.arange(6), embeddings[:0], torch.zeros(0, dtype=torch.int64)),
    }
    for name, (anchors, labels, candidates, candidate_labels) in cases.items():
        positive, negative = mine(metric, anchors, labels, candidates, candidate_labels)
        assert not bool(((positive >= 0) & (negative >= 0)).any()), name
        check_against_reference(backend, anchors, candidates, positive, negative, metric)
        if name in ("single_anchor", "no_candidates"):
            dist_ap, dist_an = pair_distances(anchors, candidates, positive, negative, metric)
            big = torch.full_like(dist_ap, 2.5)
            grads = run_backward(backend, anchors, candidates, positive, negative, dist_ap, dist_an, big, big, metric)
            for grad in grads:
                assert grad is None or grad.numel() == 0 or float(grad.abs().max()) == 0.0, name


@pytest.mark.parametrize("device,backend", FUSED)
@pytest.mark.parametrize("metric", METRICS)
def test_no_valid_anchor_gives_zero_loss_gradient(device, backend, metric):
    """K = 1 identities or a single identity: no valid anchor, loss 0 and an exactly zero gradient."""
    generator = torch.Generator().manual_seed(6)
    for labels in (torch.arange(7), torch.zeros(7, dtype=torch.int64)):
        embeddings = torch.randn(7, 3, generator=generator).to(device).requires_grad_()
        with reidfast.use_backend(backend):
            loss = reidfast.batch_hard_triplet_loss(embeddings, labels.to(device), metric=metric)
        (loss * 3.0).backward()
        assert float(loss.detach()) == 0.0 and float(embeddings.grad.abs().max()) == 0.0


@pytest.mark.parametrize("device,backend", FUSED)
@pytest.mark.parametrize("margin", [0.3, "soft"])
@pytest.mark.parametrize("with_candidates", [False, True], ids=["self", "candidates"])
@pytest.mark.parametrize("metric", METRICS)
def test_loss_gradients_match_reference(device, backend, metric, with_candidates, margin):
    """The whole loss under use_backend: forward and backward on that backend, grad_output 1.7, against
    autograd through the reference loss."""
    generator = torch.Generator().manual_seed(11)
    embeddings = torch.randn(30, 16, generator=generator)
    labels = torch.randint(0, 7, (30,), generator=generator)
    kwargs = dict(margin=margin, metric=metric)
    memory = torch.randn(45, 16, generator=generator) if with_candidates else None
    ours = [embeddings.clone().to(device).requires_grad_()]
    theirs = [embeddings.clone().requires_grad_()]
    if with_candidates:
        ours.append(memory.clone().to(device).requires_grad_())
        theirs.append(memory.clone().requires_grad_())
        memory_labels = torch.randint(0, 7, (45,), generator=generator)
        kwargs_ours = dict(kwargs, candidates=ours[1], candidate_labels=memory_labels.to(device))
        kwargs_theirs = dict(kwargs, candidates=theirs[1], candidate_labels=memory_labels)
    else:
        kwargs_ours = kwargs_theirs = kwargs
    with reidfast.use_backend(backend):
        loss = reidfast.batch_hard_triplet_loss(ours[0], labels.to(device), **kwargs_ours)
    expected = reference_loss(theirs[0], labels, **kwargs_theirs)
    (loss * 1.7).backward()  # outside the block: the backward follows the forward's backend
    (expected * 1.7).backward()
    assert_close(loss, expected, atol=1e-5)
    for got, want in zip(ours, theirs):
        assert_close(got.grad, want.grad, atol=2e-5 * max(1.0, float(want.grad.abs().max())), rtol=0.0)


@pytest.mark.parametrize("device,backend", FUSED)
def test_identical_and_zero_embeddings_never_nan(device, backend):
    some = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    cases = {"identical": torch.ones(8, 6), "zeros": torch.zeros(8, 6), "half_zeros": torch.cat([torch.zeros(4, 6), some])}
    labels = torch.arange(8) // 2
    for name, embeddings in cases.items():
        for metric in METRICS:
            for with_candidates in (False, True):
                ours, theirs = embeddings.clone().to(device).requires_grad_(), embeddings.clone().requires_grad_()
                kwargs_ours, kwargs_theirs = dict(metric=metric), dict(metric=metric)
                if with_candidates:
                    kwargs_ours.update(candidates=ours.detach() * 0.5, candidate_labels=labels.to(device))
                    kwargs_theirs.update(candidates=theirs.detach() * 0.5, candidate_labels=labels)
                with reidfast.use_backend(backend):
                    loss = reidfast.batch_hard_triplet_loss(ours, labels.to(device), **kwargs_ours)
                loss.backward()
                reference_loss(theirs, labels, **kwargs_theirs).backward()
                assert torch.isfinite(ours.grad).all(), (name, metric, with_candidates)
                # rtol: a zero vector under cosine has gradients ~1e11 (1 / eps), equal to float32 rounding
                assert_close(ours.grad, theirs.grad, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("device,backend", FUSED)
@pytest.mark.parametrize("metric", METRICS)
def test_bitwise_deterministic(device, backend, metric):
    """Two calls give identical bits: many anchors share their hardest negatives (a few candidates close to
    everyone), so a row's sum has many terms, which float atomics would add in a varying order."""
    generator = torch.Generator().manual_seed(23)
    anchors = torch.randn(64, 48, generator=generator).to(device)
    candidates = torch.cat([torch.randn(3, 48, generator=generator) * 0.01, torch.randn(60, 48, generator=generator)])
    labels = torch.arange(64) % 8
    candidate_labels = torch.arange(63) % 9
    for rows, rows_labels in ((None, None), (candidates.to(device), candidate_labels)):
        positive, negative = mine(metric, anchors, labels, rows, rows_labels)
        pairs = (positive, negative) + pair_distances(anchors, rows, positive, negative, metric)
        grad_ap = torch.linspace(-1, 2, 64, device=device)
        grad_an = torch.linspace(2, -1, 64, device=device)
        first = run_backward(backend, anchors, rows, *pairs, grad_ap, grad_an, metric)
        second = run_backward(backend, anchors, rows, *pairs, grad_ap, grad_an, metric)
        for a, b in zip(first, second):
            assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("device,backend", FUSED)
def test_backward_follows_the_forward_backend(device, backend, monkeypatch):
    """The fused backward runs when its backend ran the forward (even with backward() outside use_backend),
    and not for the default CPU backend."""
    calls = []
    fused = dict(triplet_ops._FUSED_BACKWARDS)
    monkeypatch.setitem(triplet_ops._FUSED_BACKWARDS, backend,
                        lambda *args: calls.append(backend) or fused[backend](*args))
    embeddings = torch.randn(12, 5, device=device, requires_grad=True)
    labels = (torch.arange(12) // 3).to(device)
    with reidfast.use_backend(backend):
        loss = reidfast.batch_hard_triplet_loss(embeddings, labels)
    loss.backward()
    assert calls == [backend]
    if device == "cpu":
        reidfast.batch_hard_triplet_loss(embeddings, labels).backward()  # default: the native CPU backward
        assert calls == [backend]


@pytest.mark.parametrize("device,backend", [p for p in FUSED if p.values[1] == "triton"])
def test_triton_launcher_rejects_bad_arguments(device, backend):
    from reidfast.kernels.triton.triplet_backward import batch_hard_mine_backward

    anchors = torch.randn(4, 3, device=device)
    index = torch.zeros(4, dtype=torch.int64, device=device)
    values = torch.zeros(4, device=device)
    order, offsets = triplet_ops._hardest_pair_inverse(index, index, 4)
    good = [anchors, None, values, values, index, index, values, values, "euclidean", order, offsets]
    bad = {
        8: ("manhattan", "metric"),
        6: (values.double(), "grad_ap"),
        4: (index.int(), "positive_index"),
        0: (anchors.T.contiguous().T, "inner stride"),
        10: (offsets[:-1], "entry_offsets"),
        1: (anchors.double(), "candidates"),
    }
    batch_hard_mine_backward(*good)
    for position, (value, message) in bad.items():
        arguments = list(good)
        arguments[position] = value
        with pytest.raises(ValueError, match=message):
            batch_hard_mine_backward(*arguments)


def test_inverse_index_is_a_stable_csr():
    positive = torch.tensor([2, -1, 0, 2])
    negative = torch.tensor([0, 1, -1, 2])
    order, offsets = triplet_ops._hardest_pair_inverse(positive, negative, 4)
    # entries: positives 0..3 (rows 2, -, 0, 2), negatives 4..7 (rows 0, 1, -, 2)
    assert offsets.tolist() == [2, 4, 5, 8, 8]
    assert order[2:].tolist() == [2, 4, 5, 0, 3, 7]


@pytest.mark.skipif(not (_native.available() and _native.has_cuda_kernels()), reason="native module built without CUDA")
def test_cuda_binding_validates_before_any_cuda_call():
    """The CUDA backward's argument checks run on the host, before any CUDA call (so also without a card):
    views that claim device memory, never dereferenced, with one argument wrong at a time."""
    addresses = iter(range(1 << 20, 1 << 30, 1 << 12))  # distinct fake device addresses

    def device_view(shape, dtype, device=0):
        strides = [1] * len(shape)
        for axis in range(len(shape) - 2, -1, -1):
            strides[axis] = strides[axis + 1] * shape[axis + 1]
        return _native._C.ArrayView(next(addresses), _native.DTYPE_CODES[dtype], list(shape), strides, device)

    batch, count, dim = 4, 6, 3
    anchors, candidates = device_view((batch, dim), torch.float32), device_view((count, dim), torch.float32)
    index, values = device_view((batch,), torch.int64), device_view((batch,), torch.float32)
    arguments = dict(
        anchors=anchors, candidates=candidates, positive_index=index, negative_index=index, dist_ap=values,
        dist_an=values, grad_ap=values, grad_an=values, metric=0, candidates_are_anchors=False,
        entry_order=device_view((2 * batch,), torch.int64), entry_offsets=device_view((count + 1,), torch.int64),
        coefficients=device_view((_native._C.batch_hard_backward_coefficients_per_anchor * batch,), torch.float32),
        grad_anchors=device_view((batch, dim), torch.float32), grad_candidates=device_view((count, dim), torch.float32),
        stream=0,
    )
    wrong = {
        "grad_ap": (device_view((batch,), torch.float64), "grad_ap: expected dtype float32"),
        "entry_offsets": (device_view((count,), torch.int64), "entry_offsets: expected length 7"),
        "coefficients": (device_view((batch,), torch.float32), "coefficients: expected length 28"),
        "candidates": (device_view((count, dim + 1), torch.float32), "candidates: expected float32 rows of 3"),
        "grad_candidates": (device_view((count + 1, dim), torch.float32), "grad_anchors, grad_candidates"),
        "positive_index": (_native._C.ArrayView(4096, 5, [batch], [1], -1), "positive_index: expected CUDA memory"),
        "candidates_are_anchors": (True, "candidates_are_anchors: expected candidates and grad_candidates"),
        "metric": (7, "unknown metric code"),
    }
    for name, (value, message) in wrong.items():
        with pytest.raises(ValueError, match=message):
            _native._C.batch_hard_backward_cuda(**dict(arguments, **{name: value}))


_COMPILE_SCRIPT = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from reidfast.kernels.triton import triplet_backward as kernels

def pointers(names, kind):
    return {name: kind for name in names}

for dtype, metric, flag in [("fp32", 2, True), ("bf16", 0, False), ("fp16", 1, True), ("fp64", 2, False)]:
    acc = "fp64" if dtype == "fp64" else "fp32"
    fp64 = dtype == "fp64"
    scalars = {"num_anchors": "i32", "dim": "i32", "anchor_row_stride": "i32"}
    pair = {**pointers(("anchors_ptr", "candidates_ptr"), "*" + dtype),
            **pointers(("positive_ptr", "negative_ptr"), "*i64"),
            **pointers(("dist_ap_ptr", "dist_an_ptr", "grad_ap_ptr", "grad_an_ptr", "coefficients_ptr"), "*" + acc),
            "grad_anchors_ptr": "*" + dtype, **scalars, "candidate_row_stride": "i32", "grad_row_stride": "i32"}
    pair_constants = dict(METRIC=metric, FP64=fp64, WRITE_ANCHOR_GRAD=flag, BLOCK_B=32, BLOCK_D=128)
    rows = {**pointers(("anchors_ptr", "rows_ptr"), "*" + dtype), **pointers(("positive_ptr", "negative_ptr"), "*i64"),
            "coefficients_ptr": "*" + acc, **pointers(("entry_order_ptr", "entry_offsets_ptr"), "*i64"),
            "grad_ptr": "*" + dtype, **scalars, "row_stride": "i32", "grad_row_stride": "i32"}
    rows_constants = dict(METRIC=metric, FP64=fp64, ANCHOR_PART=flag, BLOCK_E=4, BLOCK_D=256)
    for kernel, signature, constants in ((kernels._pair_coefficients_kernel, pair, pair_constants),
                                         (kernels._chosen_rows_kernel, rows, rows_constants)):
        signature.update({name: "constexpr" for name in constants})
        compiled = triton.compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], (kernel, dtype, metric, flag)
print("compiled")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a card the kernels run (and compile) in the tests above")
def test_triton_kernels_compile_for_sm90_without_a_card():
    """The tests here run the kernels in the interpreter; this compiles them as a card would (to sm_90 cubin,
    in a process without TRITON_INTERPRET), so a construct the compiler rejects is caught without a GPU."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia")
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environment.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    result = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=environment, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]


@pytest.mark.skipif(not reidfast.backends()["cpu"].available, reason="native CPU backend not built")
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
@pytest.mark.parametrize("with_candidates", [False, True], ids=["self", "candidates"])
def test_cpu_backward_gather_with_long_rows_and_any_thread_count(metric, with_candidates):
    """The native CPU backward (gather form, csrc/cpu/triplet.cpp): a row chosen by more anchors than one stage
    of its combination holds (32 terms), pairs without index, and identical bits on 1 and 2 threads."""
    generator = torch.Generator().manual_seed(29)
    anchors = torch.randn(150, 40, generator=generator)
    candidates = torch.randn(20, 40, generator=generator) if with_candidates else None
    num_rows = 20 if with_candidates else 150
    positive = torch.randint(-1, num_rows, (150,), generator=generator)
    negative = torch.randint(-1, num_rows, (150,), generator=generator)
    negative[:100] = 3  # row 3: 100 incoming pairs, over three stages
    positive[positive == torch.arange(150)] = -1  # (the self case is in test_many_anchors_choosing_the_same_rows)
    check_against_reference("cpu", anchors, candidates, positive, negative, metric, seed=5)
    dist_ap, dist_an = pair_distances(anchors, candidates, positive, negative, metric)
    grads = (torch.linspace(-1, 2, 150), torch.linspace(2, -1, 150))
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append(run_backward("cpu", anchors, candidates, positive, negative, dist_ap, dist_an, *grads, metric))
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results):
        assert (one is None and two is None) or torch.equal(one, two)
