"""Tests of the reference batch-hard triplet loss (reidfast/reference/triplet.py)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from reidfast.reference.triplet import TripletDetails, batch_hard_triplet_loss

METRICS = ("euclidean", "sqeuclidean", "cosine")


def softplus(value: float) -> float:
    return math.log1p(math.exp(value))


def line(*points: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """1-D embeddings (N, 1) from points on a line."""
    return torch.tensor(points, dtype=dtype)[:, None]


def long(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


# ---------------------------------------------------------------------------------------------------------
# Hand-computed cases
#
# Points 0, 1, 3, 6 with labels a, a, b, b (euclidean = |x - y|):
#   anchor 0 (x=0): positive 1 (d=1), negatives 2 (3), 3 (6) -> d_an=3 at 2; 1 - 3 + 0.3 = -1.7 -> 0
#   anchor 1 (x=1): positive 0 (d=1), negatives 2 (2), 3 (5) -> d_an=2 at 2; 1 - 2 + 0.3 = -0.7 -> 0
#   anchor 2 (x=3): positive 3 (d=3), negatives 0 (3), 1 (2) -> d_an=2 at 1; 3 - 2 + 0.3 = 1.3
#   anchor 3 (x=6): positive 2 (d=3), negatives 0 (6), 1 (5) -> d_an=5 at 1; 3 - 5 + 0.3 = -1.7 -> 0
# ---------------------------------------------------------------------------------------------------------
LINE_POINTS = (0.0, 1.0, 3.0, 6.0)
LINE_LABELS = (0, 0, 1, 1)
LINE_DIST_AP = [1.0, 1.0, 3.0, 3.0]
LINE_DIST_AN = [3.0, 2.0, 2.0, 5.0]
LINE_POSITIVE = [1, 0, 3, 2]
LINE_NEGATIVE = [2, 2, 1, 1]


def test_line_margin_details():
    loss, details = batch_hard_triplet_loss(line(*LINE_POINTS), long(*LINE_LABELS), margin=0.3, return_details=True)
    assert isinstance(details, TripletDetails)
    assert details.dist_ap.tolist() == pytest.approx(LINE_DIST_AP)
    assert details.dist_an.tolist() == pytest.approx(LINE_DIST_AN)
    assert details.hardest_positive.tolist() == LINE_POSITIVE
    assert details.hardest_negative.tolist() == LINE_NEGATIVE
    assert details.hardest_positive.dtype == torch.int64 and details.hardest_negative.dtype == torch.int64
    assert details.valid.tolist() == [True] * 4
    assert details.num_valid == 4
    assert details.fraction_active == pytest.approx(0.25)
    assert details.loss_per_anchor.tolist() == pytest.approx([0.0, 0.0, 1.3, 0.0])
    assert loss.item() == pytest.approx(1.3 / 4)


@pytest.mark.parametrize(
    "reduction, expected",
    [("mean", 1.3 / 4), ("sum", 1.3), ("none", [0.0, 0.0, 1.3, 0.0])],
)
def test_line_margin_reductions(reduction, expected):
    loss = batch_hard_triplet_loss(line(*LINE_POINTS), long(*LINE_LABELS), margin=0.3, reduction=reduction)
    if reduction == "none":
        assert loss.shape == (4,)
        assert loss.tolist() == pytest.approx(expected)
    else:
        assert loss.dim() == 0
        assert loss.item() == pytest.approx(expected)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_line_soft_margin(reduction):
    # softplus(d_ap - d_an): differences -2, -1, 1, -2
    per_anchor = [softplus(-2.0), softplus(-1.0), softplus(1.0), softplus(-2.0)]
    loss, details = batch_hard_triplet_loss(
        line(*LINE_POINTS), long(*LINE_LABELS), margin="soft", reduction=reduction, return_details=True
    )
    expected = {"mean": sum(per_anchor) / 4, "sum": sum(per_anchor), "none": per_anchor}[reduction]
    if reduction == "none":
        assert loss.tolist() == pytest.approx(expected)
    else:
        assert loss.item() == pytest.approx(expected)
    assert details.loss_per_anchor.tolist() == pytest.approx(per_anchor)
    assert details.fraction_active == 1.0  # soft margin: every valid anchor counts as active


def test_line_sqeuclidean_and_margin_zero():
    # squared distances: d_ap = 1, 1, 9, 9 ; d_an = 9, 4, 4, 25 -> only anchor 2 is active (9 - 4 = 5)
    loss, details = batch_hard_triplet_loss(
        line(*LINE_POINTS), long(*LINE_LABELS), margin=0, metric="sqeuclidean", return_details=True
    )
    assert details.dist_ap.tolist() == pytest.approx([1.0, 1.0, 9.0, 9.0])
    assert details.dist_an.tolist() == pytest.approx([9.0, 4.0, 4.0, 25.0])
    assert loss.item() == pytest.approx(5.0 / 4)


def test_margin_boundary_is_not_active():
    # anchor 0: d_ap = 1, d_an = 1 -> with margin 0 the term is exactly 0: valid but not active.
    loss, details = batch_hard_triplet_loss(line(0.0, 1.0, -1.0), long(0, 0, 1), margin=0.0, return_details=True)
    assert details.valid.tolist() == [True, True, False]
    assert details.loss_per_anchor.tolist() == pytest.approx([0.0, 0.0, 0.0])
    assert details.fraction_active == 0.0


def test_anchor_without_positive_is_left_out():
    # Points 0, 1, 3, 6, 10 with labels a, a, b, b, c: anchor 4 (x=10) is the only "c" -> invalid.
    # Anchors 0..3 as in the line case except anchor 3 (x=6): nearest negative is now 4 (x=10, d=4).
    # Anchor 4: no positive; negatives at distances 10, 9, 7, 4 -> hardest 3.
    loss, details = batch_hard_triplet_loss(
        line(0.0, 1.0, 3.0, 6.0, 10.0), long(0, 0, 1, 1, 2), margin=0.3, return_details=True
    )
    assert details.valid.tolist() == [True, True, True, True, False]
    assert details.num_valid == 4
    assert details.hardest_positive.tolist() == [1, 0, 3, 2, -1]
    assert details.hardest_negative.tolist() == [2, 2, 1, 4, 3]
    assert details.dist_ap.tolist() == pytest.approx([1.0, 1.0, 3.0, 3.0, 0.0])
    assert details.dist_an.tolist() == pytest.approx([3.0, 2.0, 2.0, 4.0, 4.0])
    assert details.loss_per_anchor.tolist() == pytest.approx([0.0, 0.0, 1.3, 0.0, 0.0])
    assert loss.item() == pytest.approx(1.3 / 4)  # divided by the 4 valid anchors, not by 5
    assert details.fraction_active == pytest.approx(0.25)


def test_invalid_anchor_gets_no_gradient():
    embeddings = line(0.0, 1.0, 3.0, 6.0, 10.0).requires_grad_()
    # margin 10 makes every valid anchor active, so a leak into anchor 4 would show.
    batch_hard_triplet_loss(embeddings, long(0, 0, 1, 1, 2), margin=10.0, reduction="sum").backward()
    # Anchor 4 only appears as anchor 3's hardest negative: d(6, 10) = 4 enters with sign -1 -> grad -1 * (+1).
    assert embeddings.grad[4].item() == pytest.approx(-1.0)


@pytest.mark.parametrize("margin", [0.3, "soft"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_single_identity_gives_zero_loss_and_zero_gradient(margin, reduction):
    embeddings = torch.randn(5, 3, generator=torch.Generator().manual_seed(0)).requires_grad_()
    loss, details = batch_hard_triplet_loss(
        embeddings, long(7, 7, 7, 7, 7), margin=margin, reduction=reduction, return_details=True
    )
    assert details.num_valid == 0
    assert details.valid.tolist() == [False] * 5
    assert details.hardest_negative.tolist() == [-1] * 5
    assert details.dist_an.tolist() == [0.0] * 5
    assert details.loss_per_anchor.tolist() == [0.0] * 5
    assert details.fraction_active == 0.0
    assert torch.all(loss == 0)
    assert loss.requires_grad
    loss.sum().backward()
    assert embeddings.grad is not None
    assert torch.equal(embeddings.grad, torch.zeros_like(embeddings))


def test_all_singletons_give_zero_loss():
    embeddings = torch.randn(4, 2, generator=torch.Generator().manual_seed(1)).requires_grad_()
    loss, details = batch_hard_triplet_loss(embeddings, long(0, 1, 2, 3), return_details=True)
    assert details.hardest_positive.tolist() == [-1] * 4
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(embeddings.grad, torch.zeros_like(embeddings))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("normalize", [False, True])
def test_identical_embeddings_are_finite(metric, normalize):
    embeddings = torch.full((4, 8), 0.7).requires_grad_()
    loss = batch_hard_triplet_loss(embeddings, long(0, 0, 1, 1), margin=0.3, metric=metric, normalize=normalize)
    # every distance is (numerically) ~0, so each term is the margin
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(0.3, abs=1e-3)
    loss.backward()
    assert torch.isfinite(embeddings.grad).all()


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("margin", [0.3, "soft"])
def test_zero_vectors_with_cosine(normalize, margin):
    embeddings = torch.zeros(4, 3, requires_grad=True)
    loss, details = batch_hard_triplet_loss(
        embeddings, long(0, 0, 1, 1), margin=margin, metric="cosine", normalize=normalize, return_details=True
    )
    # a zero vector is at cosine distance 1 from everything
    assert details.dist_ap.tolist() == pytest.approx([1.0] * 4)
    assert details.dist_an.tolist() == pytest.approx([1.0] * 4)
    expected = 0.3 if margin == 0.3 else math.log(2.0)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert torch.isfinite(embeddings.grad).all()


def test_ties_pick_the_smallest_candidate_index():
    # anchor 0 at x=0: positives at +2 (index 1) and -2 (index 2), negatives at +1 (index 3) and -1 (index 4)
    _, details = batch_hard_triplet_loss(line(0.0, 2.0, -2.0, 1.0, -1.0), long(0, 0, 0, 1, 1), return_details=True)
    assert details.hardest_positive[0].item() == 1
    assert details.hardest_negative[0].item() == 3
    # anchor 3 at x=1: negatives 0 (1), 1 (1), 2 (3) -> tie between 0 and 1; positive 4 only
    assert details.hardest_negative[3].item() == 0
    # same points, candidate order reversed: the smallest index still wins
    _, details = batch_hard_triplet_loss(line(-1.0, 1.0, -2.0, 2.0, 0.0), long(1, 1, 0, 0, 0), return_details=True)
    assert details.hardest_positive[4].item() == 2
    assert details.hardest_negative[4].item() == 0


def test_ties_with_many_equal_candidates():
    # anchor 0 at the origin, 4 positives and 4 negatives on the axes: all positives tie, all negatives tie.
    axes = torch.tensor([[1.0, 0.0], [0.0, -1.0], [-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    embeddings = torch.cat([torch.zeros(1, 2, dtype=torch.float64), 3 * axes, axes])
    labels = torch.tensor([0] * 5 + [1] * 4)
    _, details = batch_hard_triplet_loss(embeddings, labels, metric="sqeuclidean", return_details=True)
    assert details.hardest_positive[0].item() == 1
    assert details.hardest_negative[0].item() == 5
    # anchor 5 at (1, 0): negatives 0 (d=1) is nearest; positives 6, 8 at sqeuclidean 2 and 7 at 4 -> 7
    assert details.hardest_positive[5].item() == 7


# ---------------------------------------------------------------------------------------------------------
# Independent formulation: python loops over every triplet (a, p, n), distances by explicit float64 differences
# ---------------------------------------------------------------------------------------------------------
def brute_force_distance(x: list[float], y: list[float], metric: str) -> float:
    if metric == "cosine":
        x_norm = max(math.sqrt(sum(v * v for v in x)), 1e-12)
        y_norm = max(math.sqrt(sum(v * v for v in y)), 1e-12)
        return 1.0 - sum((a / x_norm) * (b / y_norm) for a, b in zip(x, y))
    squared = sum((a - b) * (a - b) for a, b in zip(x, y))
    return squared if metric == "sqeuclidean" else math.sqrt(max(squared, 1e-12))


def brute_force_triplet(anchors, labels, candidates, candidate_labels, anchor_index, margin, metric, normalize):
    """Per anchor: (loss, d_ap, d_an, hardest positive, hardest negative, valid) from plain python loops."""

    def unit(row):
        norm = max(math.sqrt(sum(v * v for v in row)), 1e-12)
        return [v / norm for v in row]

    anchors = [[float(v) for v in row] for row in anchors.tolist()]
    candidates = [[float(v) for v in row] for row in candidates.tolist()]
    if normalize:
        anchors, candidates = [unit(r) for r in anchors], [unit(r) for r in candidates]
    labels, candidate_labels = labels.tolist(), candidate_labels.tolist()
    results = []
    for a, anchor in enumerate(anchors):
        distances = [brute_force_distance(anchor, c, metric) for c in candidates]
        positives = [j for j in range(len(candidates)) if candidate_labels[j] == labels[a] and j != anchor_index[a]]
        negatives = [j for j in range(len(candidates)) if candidate_labels[j] != labels[a] and j != anchor_index[a]]
        # strict comparisons, scanning in index order: the first of equal extremes is kept
        hardest_positive = -1
        for p in positives:
            if hardest_positive < 0 or distances[p] > distances[hardest_positive]:
                hardest_positive = p
        hardest_negative = -1
        for n in negatives:
            if hardest_negative < 0 or distances[n] < distances[hardest_negative]:
                hardest_negative = n
        # the loss as the worst of all triplets (relu and softplus are increasing)
        loss = None
        for p in positives:
            for n in negatives:
                difference = distances[p] - distances[n]
                term = softplus(difference) if margin == "soft" else max(difference + margin, 0.0)
                loss = term if loss is None else max(loss, term)
        valid = loss is not None
        results.append(
            (
                loss if valid else 0.0,
                distances[hardest_positive] if hardest_positive >= 0 else 0.0,
                distances[hardest_negative] if hardest_negative >= 0 else 0.0,
                hardest_positive,
                hardest_negative,
                valid,
            )
        )
    return results


def random_labels(generator: torch.Generator, size: int, balanced: bool) -> torch.Tensor:
    if balanced:
        num_ids, per_id = size // 4, 4
        labels = torch.arange(num_ids).repeat_interleave(per_id)
        return labels[torch.randperm(size, generator=generator)]
    # unbalanced: some identities with one sample, some with many
    return torch.randint(0, max(size // 3, 2), (size,), generator=generator)


def compare_with_brute_force(loss, details, expected, margin, reduction, abs_tol, check_indices=True):
    expected_loss = [r[0] for r in expected]
    expected_valid = [r[5] for r in expected]
    assert details.valid.tolist() == expected_valid
    assert details.num_valid == sum(expected_valid)
    assert details.loss_per_anchor.tolist() == pytest.approx(expected_loss, abs=abs_tol)
    assert details.dist_ap.tolist() == pytest.approx([r[1] for r in expected], abs=abs_tol)
    assert details.dist_an.tolist() == pytest.approx([r[2] for r in expected], abs=abs_tol)
    if check_indices:
        assert details.hardest_positive.tolist() == [r[3] for r in expected]
        assert details.hardest_negative.tolist() == [r[4] for r in expected]
    num_valid = max(sum(expected_valid), 1)
    if reduction == "mean":
        assert loss.item() == pytest.approx(sum(expected_loss) / num_valid, abs=abs_tol)
    elif reduction == "sum":
        assert loss.item() == pytest.approx(sum(expected_loss), abs=abs_tol * len(expected_loss))
    else:
        assert loss.tolist() == pytest.approx(expected_loss, abs=abs_tol)
    if margin != "soft" and sum(expected_valid):
        active = sum(1 for r in expected if r[5] and r[0] > 0)
        assert details.fraction_active == pytest.approx(active / sum(expected_valid))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("margin", [0.3, 1.0, "soft"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("balanced", [True, False])
def test_matches_brute_force_float64(seed, metric, margin, normalize, balanced):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(12, 5, generator=generator, dtype=torch.float64)
    labels = random_labels(generator, 12, balanced)
    reduction = ("mean", "sum", "none")[seed % 3]
    loss, details = batch_hard_triplet_loss(
        embeddings, labels, margin=margin, metric=metric, normalize=normalize, reduction=reduction, return_details=True
    )
    assert loss.dtype == torch.float64
    expected = brute_force_triplet(embeddings, labels, embeddings, labels, list(range(12)), margin, metric, normalize)
    compare_with_brute_force(loss, details, expected, margin, reduction, abs_tol=1e-9)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("margin", [0.3, "soft"])
def test_matches_brute_force_float32(seed, metric, margin):
    generator = torch.Generator().manual_seed(100 + seed)
    embeddings = torch.randn(16, 8, generator=generator)
    labels = random_labels(generator, 16, balanced=seed % 2 == 0)
    loss, details = batch_hard_triplet_loss(embeddings, labels, margin=margin, metric=metric, return_details=True)
    assert loss.dtype == torch.float32
    expected = brute_force_triplet(embeddings, labels, embeddings, labels, list(range(16)), margin, metric, False)
    # float32 rounding may flip a near tie; the values stay close regardless
    compare_with_brute_force(loss, details, expected, margin, "mean", abs_tol=1e-4, check_indices=False)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
def test_exact_ties_match_brute_force(seed, metric):
    # small integer coordinates: many exactly equal distances, computed exactly by both formulations
    generator = torch.Generator().manual_seed(200 + seed)
    embeddings = torch.randint(-2, 3, (14, 2), generator=generator).to(torch.float64)
    labels = random_labels(generator, 14, balanced=False)
    loss, details = batch_hard_triplet_loss(embeddings, labels, margin=0.5, metric=metric, return_details=True)
    expected = brute_force_triplet(embeddings, labels, embeddings, labels, list(range(14)), 0.5, metric, False)
    compare_with_brute_force(loss, details, expected, 0.5, "mean", abs_tol=1e-9)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("margin", [0.3, "soft"])
@pytest.mark.parametrize("normalize", [False, True])
def test_candidates_with_anchor_index_match_brute_force(seed, metric, margin, normalize):
    # cross-batch memory: candidates = [memory; batch]; the batch rows are the anchors themselves,
    # except a few anchors marked absent (-1), which then meet themselves as an ordinary positive.
    generator = torch.Generator().manual_seed(300 + seed)
    batch = torch.randn(8, 4, generator=generator, dtype=torch.float64)
    batch_labels = random_labels(generator, 8, balanced=seed % 2 == 0)
    memory = torch.randn(10, 4, generator=generator, dtype=torch.float64)
    memory_labels = torch.randint(0, 4, (10,), generator=generator)
    candidates = torch.cat([memory, batch])
    candidate_labels = torch.cat([memory_labels, batch_labels])
    anchor_index = torch.arange(10, 18)
    anchor_index[torch.tensor([1, 5])] = -1
    loss, details = batch_hard_triplet_loss(
        batch, batch_labels, margin=margin, metric=metric, normalize=normalize, candidates=candidates,
        candidate_labels=candidate_labels, anchor_index=anchor_index, reduction="none", return_details=True,
    )
    expected = brute_force_triplet(
        batch, batch_labels, candidates, candidate_labels, anchor_index.tolist(), margin, metric, normalize
    )
    compare_with_brute_force(loss, details, expected, margin, "none", abs_tol=1e-9)
    # an absent anchor is its own (near-zero distance) positive only if it has no farther one
    assert details.hardest_positive[1].item() != -1


@pytest.mark.parametrize("seed", range(3))
def test_candidates_without_anchor_index_exclude_nothing(seed):
    generator = torch.Generator().manual_seed(400 + seed)
    batch = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    labels = long(0, 0, 1, 1, 2, 2)
    candidates = torch.randn(9, 3, generator=generator, dtype=torch.float64)
    candidate_labels = torch.randint(0, 3, (9,), generator=generator)
    loss, details = batch_hard_triplet_loss(
        batch, labels, candidates=candidates, candidate_labels=candidate_labels, return_details=True
    )
    expected = brute_force_triplet(batch, labels, candidates, candidate_labels, [-1] * 6, 0.3, "euclidean", False)
    compare_with_brute_force(loss, details, expected, 0.3, "mean", abs_tol=1e-9)


def test_candidates_equal_to_batch_differ_from_self_scoring_only_by_self_exclusion():
    generator = torch.Generator().manual_seed(5)
    embeddings = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    labels = long(0, 0, 1, 1, 2, 2, 3, 3)
    _, own = batch_hard_triplet_loss(embeddings, labels, return_details=True)
    _, explicit = batch_hard_triplet_loss(
        embeddings, labels, candidates=embeddings, candidate_labels=labels, anchor_index=torch.arange(8),
        return_details=True,
    )
    assert torch.equal(own.hardest_positive, explicit.hardest_positive)
    assert torch.allclose(own.loss_per_anchor, explicit.loss_per_anchor)
    # explicit candidates without anchor_index: self is a candidate positive (at ~1e-6, never the farthest)
    _, no_exclusion = batch_hard_triplet_loss(
        embeddings, labels, candidates=embeddings, candidate_labels=labels, return_details=True
    )
    assert torch.equal(own.hardest_positive, no_exclusion.hardest_positive)
    # with one sample per identity only self remains a positive
    singletons = torch.arange(8)
    _, own = batch_hard_triplet_loss(embeddings, singletons, return_details=True)
    _, no_exclusion = batch_hard_triplet_loss(
        embeddings, singletons, candidates=embeddings, candidate_labels=singletons, return_details=True
    )
    assert own.num_valid == 0
    assert no_exclusion.hardest_positive.tolist() == list(range(8))


# ---------------------------------------------------------------------------------------------------------
# reid-strong-baseline TripletLoss (layers/triplet_loss.py), written out
# ---------------------------------------------------------------------------------------------------------
def strong_baseline_normalize(x: torch.Tensor) -> torch.Tensor:
    return 1.0 * x / (torch.norm(x, 2, -1, keepdim=True).expand_as(x) + 1e-12)


def strong_baseline_euclidean_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    m, n = x.size(0), y.size(0)
    xx = torch.pow(x, 2).sum(1, keepdim=True).expand(m, n)
    yy = torch.pow(y, 2).sum(1, keepdim=True).expand(n, m).t()
    dist = xx + yy
    dist = torch.addmm(dist, x, y.t(), beta=1, alpha=-2)
    return dist.clamp(min=1e-12).sqrt()


def strong_baseline_hard_example_mining(dist_mat: torch.Tensor, labels: torch.Tensor):
    n = dist_mat.size(0)
    is_pos = labels.expand(n, n).eq(labels.expand(n, n).t())
    is_neg = labels.expand(n, n).ne(labels.expand(n, n).t())
    dist_ap, _ = torch.max(dist_mat[is_pos].contiguous().view(n, -1), 1, keepdim=True)
    dist_an, _ = torch.min(dist_mat[is_neg].contiguous().view(n, -1), 1, keepdim=True)
    return dist_ap.squeeze(1), dist_an.squeeze(1)


def strong_baseline_triplet_loss(global_feat, labels, margin, normalize_feature):
    if normalize_feature:
        global_feat = strong_baseline_normalize(global_feat)
    dist_mat = strong_baseline_euclidean_dist(global_feat, global_feat)
    dist_ap, dist_an = strong_baseline_hard_example_mining(dist_mat, labels)
    y = torch.ones_like(dist_an)
    if margin is not None:
        return nn.MarginRankingLoss(margin=margin)(dist_an, dist_ap, y)
    return nn.SoftMarginLoss()(dist_an - dist_ap, y)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("num_ids, per_id", [(4, 2), (4, 4), (8, 4), (3, 6)])
@pytest.mark.parametrize("margin", [0.3, 1.5, None])
@pytest.mark.parametrize("normalize", [False, True])
def test_equals_reid_strong_baseline(seed, num_ids, per_id, margin, normalize):
    generator = torch.Generator().manual_seed(500 + seed)
    embeddings = torch.randn(num_ids * per_id, 16, generator=generator)
    labels = torch.arange(num_ids).repeat_interleave(per_id)
    labels = labels[torch.randperm(labels.numel(), generator=generator)]
    ours_embeddings = embeddings.clone().requires_grad_()
    theirs_embeddings = embeddings.clone().requires_grad_()
    ours = batch_hard_triplet_loss(
        ours_embeddings, labels, margin="soft" if margin is None else margin, normalize=normalize
    )
    theirs = strong_baseline_triplet_loss(theirs_embeddings, labels, margin, normalize)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)
    ours.backward()
    theirs.backward()
    assert torch.allclose(ours_embeddings.grad, theirs_embeddings.grad, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------------------
def well_separated_inputs(num_candidates_extra: int, metric: str, margin, normalize: bool):
    """float64 inputs whose mining has no near ties and whose relu terms are away from the kink."""
    labels = long(0, 0, 1, 1, 2, 2)
    for seed in range(200):
        generator = torch.Generator().manual_seed(seed)
        embeddings = torch.randn(6, 3, generator=generator, dtype=torch.float64)
        extra = torch.randn(num_candidates_extra, 3, generator=generator, dtype=torch.float64)
        extra_labels = torch.randint(0, 3, (num_candidates_extra,), generator=generator)
        candidates = torch.cat([embeddings, extra])
        candidate_labels = torch.cat([labels, extra_labels])
        rows = [r.tolist() for r in (torch.nn.functional.normalize(candidates, dim=1) if normalize else candidates)]
        distances = [[brute_force_distance(rows[a], c, metric) for c in rows] for a in range(6)]
        separated = True
        for a in range(6):
            positives = sorted(distances[a][j] for j in range(len(rows)) if j != a and candidate_labels[j] == labels[a])
            negatives = sorted(distances[a][j] for j in range(len(rows)) if candidate_labels[j] != labels[a])
            gaps = [positives[-1] - positives[-2]] if len(positives) > 1 else []
            gaps += [negatives[1] - negatives[0]] if len(negatives) > 1 else []
            if margin != "soft":
                gaps.append(abs(positives[-1] - negatives[0] + margin))
            if min(gaps) < 1e-3:
                separated = False
        if separated:
            return embeddings, labels, candidates, candidate_labels
    raise AssertionError("no well separated seed found")


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("margin", [0.3, "soft"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck(metric, margin, normalize, reduction):
    embeddings, labels, _, _ = well_separated_inputs(0, metric, margin, normalize)
    embeddings.requires_grad_()

    def loss_fn(x):
        return batch_hard_triplet_loss(x, labels, margin=margin, metric=metric, normalize=normalize, reduction=reduction)

    assert torch.autograd.gradcheck(loss_fn, (embeddings,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("margin", [0.3, "soft"])
def test_gradcheck_with_candidates(metric, margin):
    embeddings, labels, candidates, candidate_labels = well_separated_inputs(5, metric, margin, False)
    anchor_index = torch.arange(6)
    extra = candidates[6:].clone().requires_grad_()
    embeddings.requires_grad_()

    def loss_fn(x, memory):
        # the anchors are also the first six candidates, as after an all-gather with gradients
        return batch_hard_triplet_loss(
            x, labels, margin=margin, metric=metric, candidates=torch.cat([x, memory]),
            candidate_labels=candidate_labels, anchor_index=anchor_index,
        )

    assert torch.autograd.gradcheck(loss_fn, (embeddings, extra), eps=1e-6, atol=1e-6)


def test_gradient_is_nonzero_and_scales_with_grad_output():
    embeddings, labels, _, _ = well_separated_inputs(0, "euclidean", 2.0, False)
    first = embeddings.clone().requires_grad_()
    batch_hard_triplet_loss(first, labels, margin=2.0).backward()
    second = embeddings.clone().requires_grad_()
    (batch_hard_triplet_loss(second, labels, margin=2.0) * 2.0).backward()
    assert first.grad.abs().sum() > 0
    assert torch.allclose(second.grad, 2.0 * first.grad)
    # a per-anchor grad_output weights each anchor's term
    weights = torch.arange(1.0, 7.0, dtype=torch.float64)
    third = embeddings.clone().requires_grad_()
    batch_hard_triplet_loss(third, labels, margin=2.0, reduction="none").backward(weights)
    fourth = embeddings.clone().requires_grad_()
    (batch_hard_triplet_loss(fourth, labels, margin=2.0, reduction="none") * weights).sum().backward()
    assert torch.allclose(third.grad, fourth.grad)
    assert not torch.allclose(third.grad, 6 * first.grad)


def test_gradient_on_the_line():
    # margin 0.3 on LINE_POINTS: only anchor 2 is active: loss = (|x2 - x3| - |x2 - x1| + 0.3) / 4
    # d/dx2 = (-1 - 1) / 4, d/dx3 = +1 / 4, d/dx1 = +1 / 4, d/dx0 = 0
    embeddings = line(*LINE_POINTS).requires_grad_()
    batch_hard_triplet_loss(embeddings, long(*LINE_LABELS), margin=0.3).backward()
    assert embeddings.grad[:, 0].tolist() == pytest.approx([0.0, 0.25, -0.5, 0.25])


# ---------------------------------------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "dtype, expected", [(torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                        (torch.float32, torch.float32), (torch.float64, torch.float64)]
)
def test_output_dtype(dtype, expected):
    embeddings = line(*LINE_POINTS, dtype=dtype)
    loss, details = batch_hard_triplet_loss(embeddings, long(*LINE_LABELS), return_details=True)
    assert loss.dtype == expected
    assert details.dist_ap.dtype == expected
    assert loss.item() == pytest.approx(1.3 / 4, rel=1e-6)


def test_int32_labels_are_accepted():
    loss = batch_hard_triplet_loss(line(*LINE_POINTS), torch.tensor(LINE_LABELS, dtype=torch.int32))
    assert loss.item() == pytest.approx(1.3 / 4)


# ---------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------
EMB = line(*LINE_POINTS)
LAB = long(*LINE_LABELS)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(embeddings=torch.zeros(4)), "embeddings: expected a 2-D"),
        (dict(embeddings=torch.zeros(4, 1, 1)), "embeddings: expected a 2-D"),
        (dict(embeddings=torch.zeros(4, 1, dtype=torch.int64)), "embeddings: expected a floating-point dtype"),
        (dict(embeddings=[[0.0], [1.0], [3.0], [6.0]]), "embeddings: expected a torch.Tensor"),
        (dict(embeddings=torch.tensor([[0.0], [float("nan")], [3.0], [6.0]])), "embeddings: expected finite values"),
        (dict(embeddings=torch.tensor([[0.0], [float("inf")], [3.0], [6.0]])), "embeddings: expected finite values"),
        (dict(labels=LAB[:, None]), "labels: expected a 1-D integer"),
        (dict(labels=LAB.float()), "labels: expected a 1-D integer"),
        (dict(labels=LAB.bool()), "labels: expected a 1-D integer"),
        (dict(labels=LAB[:3]), "labels: expected length 4, got 3"),
        (dict(labels=torch.zeros(4, dtype=torch.int64, device="meta")), "labels: expected a tensor on cpu.*got meta"),
        (dict(candidates=EMB), "candidate_labels: expected a tensor, since candidates is given"),
        (dict(candidate_labels=LAB), "candidates: expected a tensor, since candidate_labels is given"),
        (dict(candidates=torch.zeros(5, 2), candidate_labels=torch.zeros(5, dtype=torch.int64)),
         "candidates: expected dimension 1 .the embeddings.., got 2"),
        (dict(candidates=torch.zeros(5), candidate_labels=torch.zeros(5, dtype=torch.int64)), "candidates: expected a 2-D"),
        (dict(candidates=torch.zeros(5, 1, dtype=torch.int32), candidate_labels=torch.zeros(5, dtype=torch.int64)),
         "candidates: expected a floating-point dtype"),
        (dict(candidates=torch.full((5, 1), float("nan")), candidate_labels=torch.zeros(5, dtype=torch.int64)),
         "candidates: expected finite values"),
        (dict(candidates=torch.zeros(5, 1, device="meta"), candidate_labels=torch.zeros(5, dtype=torch.int64)),
         "candidates: expected a tensor on cpu.*got meta"),
        (dict(candidates=torch.zeros(5, 1), candidate_labels=torch.zeros(4, dtype=torch.int64)),
         "candidate_labels: expected length 5, got 4"),
        (dict(candidates=torch.zeros(5, 1), candidate_labels=torch.zeros(5)), "candidate_labels: expected a 1-D integer"),
        (dict(candidates=torch.zeros(5, 1), candidate_labels=torch.zeros(5, dtype=torch.int64, device="meta")),
         "candidate_labels: expected a tensor on cpu.*got meta"),
        (dict(margin=-0.1), "margin: expected"),
        (dict(margin="hard"), "margin: expected"),
        (dict(margin=None), "margin: expected"),
        (dict(margin=True), "margin: expected"),
        (dict(margin=float("nan")), "margin: expected"),
        (dict(margin=float("inf")), "margin: expected"),
        (dict(metric="manhattan"), "metric: expected one of"),
        (dict(reduction="avg"), "reduction: expected one of"),
        (dict(anchor_index=torch.arange(4.0)), "anchor_index: expected a 1-D integer"),
        (dict(anchor_index=torch.arange(3)), "anchor_index: expected length 4, got 3"),
        (dict(anchor_index=long(0, 1, 2, 4)), r"anchor_index: expected values in \[-1, 4\)"),
        (dict(anchor_index=long(0, 1, 2, -2)), r"anchor_index: expected values in \[-1, 4\)"),
        (dict(anchor_index=long(0, 2, 2, 3)), "anchor_index: expected candidates with the anchor.s label"),
        (dict(anchor_index=long(2, -1, -1, -1)), "anchor_index: expected candidates with the anchor.s label"),
    ],
)
def test_validation_errors(kwargs, message):
    arguments = dict(embeddings=EMB, labels=LAB)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        batch_hard_triplet_loss(**arguments)


def test_valid_anchor_index_variants_are_accepted():
    # with candidates=None an explicit anchor_index overrides the default arange(B); -1 keeps self a positive
    _, details = batch_hard_triplet_loss(EMB, LAB, anchor_index=long(-1, -1, -1, -1), return_details=True)
    # anchor 0 at x=0: positives are itself (d~0) and 1 (d=1) -> 1 is still the farthest
    assert details.hardest_positive.tolist() == LINE_POSITIVE
    # singletons: only self remains, so the anchors stay valid
    _, details = batch_hard_triplet_loss(EMB, long(0, 1, 2, 3), anchor_index=long(-1, -1, -1, -1), return_details=True)
    assert details.hardest_positive.tolist() == [0, 1, 2, 3]
    assert details.num_valid == 4


def test_empty_candidates_give_zero_loss():
    embeddings = EMB.clone().requires_grad_()
    loss, details = batch_hard_triplet_loss(
        embeddings, LAB, candidates=torch.zeros(0, 1), candidate_labels=torch.zeros(0, dtype=torch.int64),
        return_details=True,
    )
    assert loss.item() == 0.0
    assert details.num_valid == 0
    assert details.hardest_negative.tolist() == [-1] * 4
    loss.backward()
    assert torch.equal(embeddings.grad, torch.zeros_like(embeddings))
