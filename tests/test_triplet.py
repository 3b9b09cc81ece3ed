"""Fused batch-hard triplet loss: every backend against the reference, gradients, compile, never NaN, errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import reidfast
from reidfast.reference.triplet import batch_hard_triplet_loss as reference_loss

from conftest import device_backend_params
from test_distance import accumulation_eps, assert_close, assert_within

METRICS = ("euclidean", "sqeuclidean", "cosine")
MARGINS = (0.3, "soft")


def labels_for(batch: int, kind: str, generator: torch.Generator) -> torch.Tensor:
    if kind == "pk":  # P x K with K = 4 (the last identity may be short)
        return torch.arange(batch) // 4
    # unbalanced: long-tailed identity sizes, some identities with a single image
    return torch.randint(0, max(1, batch // 3), (batch,), generator=generator) ** 2 % max(1, batch // 2 + 1)


def run_loss(backend, embeddings, labels, **kwargs):
    with reidfast.use_backend(backend):
        return reidfast.batch_hard_triplet_loss(embeddings, labels, return_details=True, **kwargs)


GRADIENT_ACCUMULATION_ULPS = 1024


def gradient_term_scale(embeddings: torch.Tensor, metric: str, weight: float, normalize: bool = False) -> torch.Tensor:
    """(B, 1): the size of one term weight * dd/dx of a row's gradient, whatever the terms' signs: 1 for
    euclidean (a unit vector), 2 (|x| + max |x|) for sqeuclidean, 1 / |x| for cosine and after normalize."""
    norms = embeddings.detach().double().cpu().norm(dim=1, keepdim=True)
    if metric == "cosine" or normalize:
        scale = 1.0 / norms.clamp_min(1e-12)
        return weight * (2.0 * scale if (normalize and metric == "sqeuclidean") else scale)
    if metric == "sqeuclidean":
        return weight * 2.0 * (norms + norms.max())
    return torch.full_like(norms, weight)


def gradient_error_bound(expected: torch.Tensor, term_scale: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Per-entry bound on |backend - reference| for a triplet-loss gradient (B, D), relative to its terms.

    An entry sums a few terms w dd/dx (as anchor, as someone's positive, as someone's negative), each with a
    float32 relative error of about eps (|a|^2 + |c|^2) / d^2: the cancellation in d^2 of close pairs; up
    to 2^10 eps on the test sets here. Terms may cancel (with D = 1 an entry of 5e-7 can be the sum of two
    terms near 1; a cosine gradient at D = 1 is 0 up to rounding), so the bound is relative to |g| + max |g|
    + the row's term scale (gradient_term_scale), plus one rounding to the gradient's dtype (half-precision
    gradients are rounded once by a backend and once per input copy by the reference)."""
    relative = GRADIENT_ACCUMULATION_ULPS * accumulation_eps(expected) + torch.finfo(expected.dtype).eps
    expected = expected.detach().double().cpu()
    return relative * (expected.abs() + expected.abs().max() + term_scale)


def assert_gradient_close(actual: torch.Tensor, expected: torch.Tensor, term_scale: torch.Tensor | float = 0.0,
                          what: str = "gradient") -> None:
    """A gradient against the reference's within gradient_error_bound (computed in the reference's dtype)."""
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert_within(actual, expected, gradient_error_bound(expected, term_scale), what)


def compare_with_reference(backend, embeddings, labels, atol, **kwargs):
    """Loss, distances, gradients and (away from near-ties) indices against the reference."""
    ours_input = embeddings.detach().clone().requires_grad_()
    ref_input = embeddings.detach().clone().requires_grad_()
    loss, details = run_loss(backend, ours_input, labels, **kwargs)
    ref, ref_details = reference_loss(ref_input, labels, return_details=True, **kwargs)
    assert loss.dtype == ref.dtype
    assert_close(loss, ref, atol=atol)
    assert_close(details.dist_ap, ref_details.dist_ap, atol=atol)
    assert_close(details.dist_an, ref_details.dist_an, atol=atol)
    assert torch.equal(details.valid.cpu(), ref_details.valid.cpu())
    assert details.num_valid == ref_details.num_valid and type(details.num_valid) is int
    # Host numbers (one sync for both); an anchor with d_ap - d_an + margin within rounding of 0 may flip.
    assert type(details.fraction_active) is float
    assert abs(details.fraction_active - ref_details.fraction_active) * max(ref_details.num_valid, 1) <= 1
    # An index may differ only where another candidate is equally hard within rounding: then the chosen
    # candidate's reference distance must equal the reference extreme.
    assert torch.equal(details.hardest_positive >= 0, ref_details.hardest_positive >= 0)
    assert torch.equal(details.hardest_negative >= 0, ref_details.hardest_negative >= 0)
    grad_out = 1.7  # not 1: the loss is scaled downstream
    (loss.sum() * grad_out).backward()
    (ref.sum() * grad_out).backward()
    count = max(ref_details.num_valid, 1) if kwargs.get("reduction", "mean") == "mean" else 1
    term_scale = gradient_term_scale(embeddings, kwargs.get("metric", "euclidean"), grad_out / count,
                                     kwargs.get("normalize", False))
    assert_gradient_close(ours_input.grad, ref_input.grad, term_scale)
    return details, ref_details


def test_gradient_comparison_fails_on_a_planted_wrong_gradient():
    """Cosine at B=257, D=128: the whole reference gradient is below 1e-3, so the old absolute 2e-3 passed a
    zero gradient. The helper passes the native CPU gradient and fails on zeros and on its largest entry off
    by 1%."""
    generator = torch.Generator().manual_seed(257 * 31 + 128)
    embeddings = torch.randn(257, 128, generator=generator)
    labels = labels_for(257, "pk", generator)
    ref_input = embeddings.clone().requires_grad_()
    loss, details = reference_loss(ref_input, labels, metric="cosine", return_details=True)
    loss.backward()
    expected = ref_input.grad
    assert 0 < float(expected.abs().max()) < 2e-3
    term_scale = gradient_term_scale(embeddings, "cosine", 1.0 / details.num_valid)
    assert_gradient_close(expected.clone(), expected, term_scale)
    if reidfast.backends()["cpu"].available:
        ours = embeddings.clone().requires_grad_()
        run_loss("cpu", ours, labels, metric="cosine")[0].backward()
        assert_gradient_close(ours.grad, expected, term_scale)
    with pytest.raises(AssertionError, match="per-entry bound"):
        assert_gradient_close(torch.zeros_like(expected), expected, term_scale)
    row, column = divmod(int(expected.abs().argmax()), expected.shape[1])
    planted = expected.clone()
    planted[row, column] *= 1.01
    with pytest.raises(AssertionError, match=rf"worst at \({row}, {column}\)"):
        assert_gradient_close(planted, expected, term_scale)


CASES = [(b, d) for b in (1, 2, 7, 64, 257) for d in (1, 3, 128)] + [(64, 2048)]


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("label_kind", ["pk", "unbalanced"])
@pytest.mark.parametrize("batch,dim", CASES, ids=lambda v: str(v))
def test_backend_matches_reference(device, backend, metric, label_kind, batch, dim):
    if backend == "triton" and device == "cpu" and (batch > 64 or dim > 128 or (batch == 64 and dim != 3)):
        # The interpreter's cost grows with B * B: a 64-row case took 20-40 s under load, whatever D. (64, 3)
        # covers a full 64-row tile, (7, 128) four BLOCK_D chunks and (7, 1) D = 1;
        # tests/test_triton_triplet_kernel.py has the kernel's own cases.
        pytest.skip("the Triton interpreter is slow: small shapes only on CPU")
    generator = torch.Generator().manual_seed(batch * 31 + dim)
    embeddings = torch.randn(batch, dim, generator=generator).to(device)
    labels = labels_for(batch, label_kind, generator).to(device)
    for margin in MARGINS:
        compare_with_reference(backend, embeddings, labels, atol=2e-4, margin=margin, metric=metric)


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("metric", METRICS)
def test_dtypes(device, backend, dtype, metric):
    generator = torch.Generator().manual_seed(5)
    embeddings = torch.randn(40, 24, generator=generator).to(device=device, dtype=dtype)
    labels = (torch.arange(40) // 5).to(device)
    _, details = run_loss(backend, embeddings, labels, metric=metric)
    assert details.dist_ap.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    atol = 1e-9 if dtype == torch.float64 else 2e-4
    compare_with_reference(backend, embeddings, labels, atol=atol, metric=metric)


@pytest.mark.parametrize("device,backend", device_backend_params())
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions_and_normalize(device, backend, reduction):
    generator = torch.Generator().manual_seed(2)
    embeddings = torch.randn(30, 16, generator=generator).to(device) * 3
    labels = torch.tensor([0] * 6 + [1] * 6 + [2] * 5 + [3] * 1 + [4] * 12).to(device)  # pid 3: no positive
    for normalize in (False, True):
        compare_with_reference(backend, embeddings, labels, atol=2e-4, reduction=reduction, normalize=normalize)


@pytest.mark.parametrize("device,backend", device_backend_params())
def test_exact_ties_pick_the_smallest_index(device, backend):
    # Integer coordinates: many exactly equal distances, computed exactly in float32.
    generator = torch.Generator().manual_seed(7)
    embeddings = torch.randint(-2, 3, (48, 3), generator=generator).float().to(device)
    labels = (torch.arange(48) % 6).to(device)
    for metric in ("sqeuclidean", "euclidean"):
        details, ref_details = compare_with_reference(backend, embeddings, labels, atol=1e-5, metric=metric)
        assert torch.equal(details.hardest_positive.cpu(), ref_details.hardest_positive.cpu())
        assert torch.equal(details.hardest_negative.cpu(), ref_details.hardest_negative.cpu())


@pytest.mark.parametrize("device,backend", device_backend_params())
def test_candidates_and_anchor_index(device, backend):
    generator = torch.Generator().manual_seed(11)
    anchors = torch.randn(10, 8, generator=generator).to(device)
    memory = torch.randn(50, 8, generator=generator).to(device)
    labels = torch.arange(10).to(device) % 4
    memory_labels = (torch.arange(50) % 5).to(device)
    memory[:10] = anchors  # the anchors are in the memory bank at columns 0..9 ...
    memory_labels[:10] = labels
    anchor_index = torch.arange(10).to(device)
    anchor_index[7:] = -1  # ... but three anchors are declared absent (self may then count as positive)
    kwargs = dict(candidates=memory, candidate_labels=memory_labels, anchor_index=anchor_index)
    for metric in METRICS:
        compare_with_reference(backend, anchors, labels, atol=2e-4, metric=metric, **kwargs)


@pytest.mark.parametrize("device,backend", device_backend_params())
def test_equals_reid_strong_baseline_on_pk_batches(device, backend):
    """reid-strong-baseline TripletLoss: euclidean_dist + hard_example_mining + MarginRankingLoss, written out."""
    generator = torch.Generator().manual_seed(3)
    num_ids, per_id = 8, 4
    embeddings = torch.randn(num_ids * per_id, 32, generator=generator).to(device)
    labels = (torch.arange(num_ids * per_id) // per_id).to(device)
    x = embeddings.double()
    dist = (x.pow(2).sum(1, keepdim=True) + x.pow(2).sum(1)[None] - 2 * x @ x.T).clamp(min=1e-12).sqrt()
    is_pos = labels[:, None] == labels[None, :]
    dist_ap = dist[is_pos].view(len(x), -1).max(1).values
    dist_an = dist[~is_pos].view(len(x), -1).min(1).values
    expected = F.margin_ranking_loss(dist_an, dist_ap, torch.ones_like(dist_an), margin=0.3)
    expected_soft = F.soft_margin_loss(dist_an - dist_ap, torch.ones_like(dist_an))
    with reidfast.use_backend(backend):
        assert_close(reidfast.BatchHardTripletLoss(margin=0.3)(embeddings, labels), expected, atol=1e-5)
        assert_close(reidfast.BatchHardTripletLoss(margin="soft")(embeddings, labels), expected_soft, atol=1e-5)


@pytest.mark.parametrize("device,backend", [p for p in device_backend_params() if p.values[1] != "triton"])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("margin", MARGINS)
def test_gradcheck_float64(device, backend, metric, margin):
    generator = torch.Generator().manual_seed(4)
    # Spread points: no near-ties, so the mining is locally constant and the loss differentiable.
    embeddings = (torch.randn(12, 5, generator=generator, dtype=torch.float64) * 2).to(device).requires_grad_()
    labels = (torch.arange(12) // 3).to(device)
    with reidfast.use_backend(backend):
        assert torch.autograd.gradcheck(
            lambda e: reidfast.batch_hard_triplet_loss(e, labels, margin=margin, metric=metric, reduction="none"),
            (embeddings,),
        )


@pytest.mark.parametrize("device,backend", device_backend_params())
def test_never_nan(device, backend):
    cases = {
        "identical": (torch.ones(8, 6), torch.arange(8) // 2),
        "zeros": (torch.zeros(8, 6), torch.arange(8) // 2),
        "k_equals_one": (torch.randn(6, 4), torch.arange(6)),
        "one_identity": (torch.randn(6, 4), torch.zeros(6, dtype=torch.int64)),
        "single_anchor": (torch.randn(1, 4), torch.zeros(1, dtype=torch.int64)),
    }
    for name, (embeddings, labels) in cases.items():
        for metric in METRICS:
            for normalize in (False, True):
                leaf = embeddings.to(device).requires_grad_()
                loss = run_loss(backend, leaf, labels.to(device), metric=metric, normalize=normalize)[0]
                loss.backward()
                assert torch.isfinite(loss).all() and torch.isfinite(leaf.grad).all(), (name, metric, normalize)
                if name in ("k_equals_one", "one_identity", "single_anchor"):
                    assert float(loss.detach()) == 0.0 and float(leaf.grad.abs().sum()) == 0.0, name
    big = torch.full((8, 512), 300.0, dtype=torch.float16)  # |x|^2 far beyond float16's range
    big[::2] *= -1
    loss = run_loss(backend, big.to(device), (torch.arange(8) // 2).to(device))[0]
    assert torch.isfinite(loss)


def test_torch_compile_model_and_loss_without_graph_breaks():
    model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    criterion = reidfast.BatchHardTripletLoss(margin=0.3)

    def step(inputs, labels):
        return criterion(model(inputs), labels)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    inputs = torch.randn(16, 10)
    labels = torch.arange(16) // 4
    loss = compiled(inputs, labels)
    loss.backward()
    compiled_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    expected = reference_loss(model(inputs), labels)
    expected.backward()
    assert_close(loss, expected, atol=1e-5)
    for got, want in zip(compiled_grads, (p.grad for p in model.parameters())):
        assert_close(got, want, atol=1e-5)


def test_autocast_policy_computes_in_float32():
    model = torch.nn.Linear(8, 8)
    inputs, labels = torch.randn(12, 8), torch.arange(12) // 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embeddings = model(inputs)
        loss = reidfast.batch_hard_triplet_loss(embeddings, labels)
    assert embeddings.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert model.weight.grad is not None and torch.isfinite(model.weight.grad).all()


def test_cross_entropy_label_smooth_matches_formula():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=generator, requires_grad=True)
    targets = torch.tensor([0, 1, 4, 2, 2, 3])
    loss = reidfast.CrossEntropyLabelSmooth(num_classes=5, epsilon=0.1)(logits, targets)
    assert_close(loss, F.cross_entropy(logits, targets, label_smoothing=0.1), atol=1e-6)
    assert_close(reidfast.CrossEntropyLabelSmooth(5, epsilon=0.0)(logits, targets), F.cross_entropy(logits, targets), atol=1e-6)
    with pytest.raises(ValueError, match="targets: expected class indices"):
        reidfast.CrossEntropyLabelSmooth(5)(logits, torch.tensor([0, 1, 5, 2, 2, 3]))
    with pytest.raises(ValueError, match="logits: expected shape"):
        reidfast.CrossEntropyLabelSmooth(4)(logits, targets)
    with pytest.raises(ValueError, match="epsilon"):
        reidfast.CrossEntropyLabelSmooth(4, epsilon=1.0)


@pytest.mark.parametrize(
    "embeddings,labels,kwargs,message",
    [
        (torch.randn(4), torch.zeros(4, dtype=torch.int64), {}, "embeddings: expected a 2-D"),
        (torch.ones(4, 2, dtype=torch.int64), torch.zeros(4, dtype=torch.int64), {}, "embeddings: expected a floating"),
        (torch.randn(4, 2), torch.zeros(3, dtype=torch.int64), {}, "labels: expected length 4, got 3"),
        (torch.randn(4, 2), torch.zeros(4), {}, "labels: expected a 1-D integer tensor"),
        (torch.tensor([[0.0, float("nan")]] * 2), torch.zeros(2, dtype=torch.int64), {}, "embeddings: expected finite values"),
        (torch.randn(4, 2), torch.zeros(4, dtype=torch.int64), {"margin": -1.0}, "margin"),
        (torch.randn(4, 2), torch.zeros(4, dtype=torch.int64), {"margin": "hard"}, "margin"),
        (torch.randn(4, 2), torch.zeros(4, dtype=torch.int64), {"metric": "l1"}, "metric: expected one of"),
        (torch.randn(4, 2), torch.zeros(4, dtype=torch.int64), {"reduction": "max"}, "reduction: expected one of"),
        (torch.randn(4, 2), torch.zeros(4, dtype=torch.int64), {"candidates": torch.randn(3, 2)},
         "candidate_labels: expected a tensor, since"),
        (torch.randn(4, 2), torch.zeros(4, dtype=torch.int64),
         {"candidates": torch.randn(3, 5), "candidate_labels": torch.zeros(3, dtype=torch.int64)},
         "candidates: expected dimension 2 .the embeddings.., got 5"),
        (torch.randn(4, 2), torch.zeros(4, dtype=torch.int64),
         {"candidates": torch.randn(3, 2), "candidate_labels": torch.zeros(3, dtype=torch.int64),
          "anchor_index": torch.tensor([0, 1, 2, 3])}, "anchor_index: expected values in"),
        (torch.randn(2, 2), torch.tensor([0, 1]),
         {"candidates": torch.randn(3, 2), "candidate_labels": torch.tensor([1, 1, 1]),
          "anchor_index": torch.tensor([0, -1])}, "label differs"),
    ],
)
def test_bad_input_names_the_argument(embeddings, labels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        reidfast.batch_hard_triplet_loss(embeddings, labels, **kwargs)


def test_mixed_devices_rejected():
    with pytest.raises(ValueError, match="labels: expected a tensor on cpu.*got meta"):
        reidfast.batch_hard_triplet_loss(torch.randn(4, 2), torch.zeros(4, dtype=torch.int64, device="meta"))
