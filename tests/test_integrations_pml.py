"""reidfast.integrations.pml against the real pytorch-metric-learning: miner indices, loss value and gradient."""
from __future__ import annotations

import sys

import pytest
import torch

from reidfast.integrations import pml as rfpml

pml = pytest.importorskip("pytorch_metric_learning", reason="pytorch-metric-learning is not installed (pip install 'reidfast[integrations]')")
from pytorch_metric_learning import distances, losses, miners, reducers  # noqa: E402

DISTANCES = {
    "default": lambda: None,  # PML's LpDistance(normalize_embeddings=True)
    "cosine": distances.CosineSimilarity,
    "lp-unnormalised": lambda: distances.LpDistance(normalize_embeddings=False),
    "lp-squared": lambda: distances.LpDistance(power=2),
}


def batch(kind: str, dtype=torch.float64, seed=0, dim=16):
    """P x K (6 x 4), unbalanced (singletons PML's miner leaves out), or integer-valued features with many
    tied distances."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "pxk":
        labels = torch.arange(6).repeat_interleave(4)
    else:
        labels = torch.tensor([0] * 6 + [1] * 2 + [2] + [3] * 5 + [4] + [5] * 3 + [6] * 2)
    labels = labels[torch.randperm(len(labels), generator=generator)]
    features = torch.randn(len(labels), dim, generator=generator, dtype=dtype)
    if kind == "ties":
        features = torch.randint(-1, 2, (len(labels), 3), generator=generator).to(dtype)
    return features, labels


def with_distance(name: str) -> dict:
    distance = DISTANCES[name]()
    return {} if distance is None else {"distance": distance}


def assert_same_triplets(result, expected):
    assert len(result) == 3
    for got, want in zip(result, expected):
        assert got.dtype == torch.int64
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["pxk", "unbalanced"])
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_miner_equals_pml(kind, distance, dtype):
    features, labels = batch(kind, dtype)
    expected = miners.BatchHardMiner(**with_distance(distance))(features, labels)
    assert_same_triplets(rfpml.BatchHardMiner(**with_distance(distance))(features, labels), expected)


def test_miner_ties_follow_pml_on_the_cpu():
    features, labels = batch("ties", torch.float32, seed=1)
    kwargs = {"distance": distances.LpDistance(normalize_embeddings=False)}
    expected = miners.BatchHardMiner(**kwargs)(features, labels)
    assert_same_triplets(rfpml.BatchHardMiner(**kwargs)(features, labels), expected)


def reference_sets(features, labels, generator):
    """PML's ref_emb conventions: a separate memory (no self exclusion), the batch itself with ref_labels *is*
    labels (self excluded by position), and batch + memory with a new labels tensor (the anchor is a candidate)."""
    memory = torch.randn(40, features.shape[1], generator=generator, dtype=features.dtype)
    memory_labels = torch.randint(0, 8, (40,), generator=generator)
    return {
        "memory": (memory, memory_labels),
        "self-same-labels": (features, labels),
        "batch-and-memory": (torch.cat([features, memory]), torch.cat([labels, memory_labels])),
    }


@pytest.mark.parametrize("reference", ["memory", "self-same-labels", "batch-and-memory"])
@pytest.mark.parametrize("distance", ["default", "cosine"])
def test_miner_and_loss_with_ref_emb_equal_pml(reference, distance):
    generator = torch.Generator().manual_seed(3)
    features, labels = batch("unbalanced", seed=3)
    ref_emb, ref_labels = reference_sets(features, labels, generator)[reference]
    expected = miners.BatchHardMiner(**with_distance(distance))(features, labels, ref_emb, ref_labels)
    assert_same_triplets(rfpml.BatchHardMiner(**with_distance(distance))(features, labels, ref_emb, ref_labels), expected)

    x1, x2 = features.clone().requires_grad_(), features.clone().requires_grad_()
    refs1 = x1 if reference == "self-same-labels" else ref_emb
    refs2 = x2 if reference == "self-same-labels" else ref_emb
    pml_loss = losses.TripletMarginLoss(margin=0.2, **with_distance(distance))
    want = pml_loss(x1, labels, miners.BatchHardMiner(**with_distance(distance))(x1, labels, refs1, ref_labels), refs1, ref_labels)
    got = rfpml.BatchHardTripletMarginLoss(margin=0.2, **with_distance(distance))(x2, labels, None, refs2, ref_labels)
    assert got.item() == pytest.approx(want.item(), rel=1e-9, abs=1e-12)
    want.backward()
    got.backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-7, atol=1e-10)


def pml_pair(margin, distance, reducer=None, smooth_loss=False):
    kwargs = with_distance(distance)
    miner = miners.BatchHardMiner(**kwargs)
    loss = losses.TripletMarginLoss(margin=margin, smooth_loss=smooth_loss, **kwargs,
                                    **({} if reducer is None else {"reducer": reducer}))
    return lambda x, y: loss(x, y, miner(x, y))


REDUCERS = {
    "default": lambda: None,
    "avg-non-zero": reducers.AvgNonZeroReducer,
    "mean": reducers.MeanReducer,
    "sum": reducers.SumReducer,
    "threshold": lambda: reducers.ThresholdReducer(low=0.6, high=0.9),
}


@pytest.mark.parametrize("kind", ["pxk", "unbalanced"])
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("reducer", REDUCERS)
def test_loss_value_and_gradient_equal_pml(kind, distance, reducer):
    features, labels = batch(kind, seed=5)
    margin = 0.6 if distance == "lp-unnormalised" else 0.2
    x1, x2 = features.clone().requires_grad_(), features.clone().requires_grad_()
    want = pml_pair(margin, distance, REDUCERS[reducer]())(x1, labels)
    reducer_kwargs = {} if REDUCERS[reducer]() is None else {"reducer": REDUCERS[reducer]()}
    got = rfpml.BatchHardTripletMarginLoss(margin=margin, **with_distance(distance), **reducer_kwargs)(x2, labels)
    assert got.item() == pytest.approx(want.item(), rel=1e-9, abs=1e-12)
    want.backward()
    got.backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-7, atol=1e-10)


def test_threshold_reducer_case_filters_on_both_sides():
    """The threshold case above must exercise both bounds (default distance): losses below low, above high, between."""
    features, labels = batch("pxk", seed=5)
    triplet = miners.BatchHardMiner()(features, labels)
    losses_kept = losses.TripletMarginLoss(margin=0.2, reducer=reducers.DoNothingReducer())(features, labels, triplet)
    values = losses_kept["loss"]["losses"]
    assert bool((values <= 0.6).any()) and bool((values >= 0.9).any()) and bool(((values > 0.6) & (values < 0.9)).any())


def test_smooth_loss_with_margin_zero_equals_pml():
    features, labels = batch("unbalanced", seed=6)
    x1, x2 = features.clone().requires_grad_(), features.clone().requires_grad_()
    want = pml_pair(0.0, "default", smooth_loss=True)(x1, labels)
    got = rfpml.BatchHardTripletMarginLoss(margin=0.0, smooth_loss=True)(x2, labels)
    assert got.item() == pytest.approx(want.item(), rel=1e-9)
    want.backward()
    got.backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-7, atol=1e-10)


def test_miner_is_a_drop_in_for_pmls_triplet_margin_loss():
    features, labels = batch("pxk", torch.float32, seed=7)
    loss = losses.TripletMarginLoss(margin=0.1)
    want = loss(features, labels, miners.BatchHardMiner()(features, labels))
    assert loss(features, labels, rfpml.BatchHardMiner()(features, labels)).item() == pytest.approx(want.item(), rel=1e-5)


def test_batch_without_triplets_gives_empty_indices_and_zero_loss():
    features = torch.randn(5, 8, requires_grad=True)
    labels = torch.arange(5)  # no positives anywhere
    assert all(t.numel() == 0 for t in rfpml.BatchHardMiner()(features, labels))
    loss = rfpml.BatchHardTripletMarginLoss()(features, labels)
    assert loss.item() == 0.0 == pml_pair(0.05, "default")(features, labels).item()
    loss.backward()
    assert torch.count_nonzero(features.grad) == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"swap": True}, "swap: expected False"),
    ({"smooth_loss": True, "margin": 0.1}, "smooth_loss: supported only with margin=0"),
    ({"margin": -0.1}, "margin: expected a finite number >= 0"),
    ({"distance": distances.DotProductSimilarity()}, "distance: expected None, LpDistance"),
    ({"distance": distances.LpDistance(p=1)}, "distance: expected None, LpDistance"),
    ({"distance": distances.LpDistance(power=3)}, "distance: expected None, LpDistance"),
    ({"reducer": reducers.DoNothingReducer()}, "reducer: expected None, AvgNonZeroReducer"),
])
def test_unsupported_options_raise_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rfpml.BatchHardTripletMarginLoss(**kwargs)


def test_bad_calls_raise_naming_the_argument():
    features, labels = batch("pxk")
    with pytest.raises(ValueError, match="indices_tuple: expected None"):
        rfpml.BatchHardTripletMarginLoss()(features, labels, miners.BatchHardMiner()(features, labels))
    with pytest.raises(ValueError, match="ref_labels: expected the labels of ref_emb"):
        rfpml.BatchHardMiner()(features, labels, features[:3])


def test_defaults_need_no_pml_import(monkeypatch):
    features, labels = batch("pxk")
    expected = miners.BatchHardMiner()(features, labels)
    monkeypatch.setitem(sys.modules, "pytorch_metric_learning", None)  # any import of it would now fail
    assert_same_triplets(rfpml.BatchHardMiner()(features, labels), expected)
    rfpml.BatchHardTripletMarginLoss(margin=0.1)(features, labels)
