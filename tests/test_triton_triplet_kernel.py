"""Triton batch-hard mining kernel against the reference triplet details (hardest positive/negative indices and
distances): batch and separate candidate sets, every metric and dtype, degenerate label sets and shapes, exact
ties (smallest index wins), strided inputs and the exact self-distance when the candidates are the anchors.

Runs on CPU tensors under TRITON_INTERPRET=1 (set by conftest.py without CUDA), on CUDA tensors otherwise.
"""
from __future__ import annotations


import pytest
import torch

pytest.importorskip("triton")

from reidfast.reference.distance import METRICS, accumulation_dtype, pairwise_distance  # noqa: E402
from reidfast.reference.triplet import batch_hard_triplet_loss  # noqa: E402
from reidfast.kernels.triton.triplet import batch_hard_mine  # noqa: E402

from conftest import TRITON_TEST_DEVICE  # noqa: E402

pytestmark = pytest.mark.triton

DEVICE = TRITON_TEST_DEVICE
if DEVICE is None:
    pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# Kernel and reference see the same (rounded) inputs and differ only in summation order: relative to the
# largest score of a batch.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5, torch.float64: 1e-12}
LABEL_KINDS = ("balanced", "unbalanced", "singletons", "one_identity")


def make_labels(kind: str, count: int, generator: torch.Generator) -> torch.Tensor:
    """balanced: P identities x K=4 (shuffled); unbalanced: random sizes; singletons: K=1, no positives;
    one_identity: no negatives."""
    if kind == "balanced":
        labels = torch.arange(count) // 4
        return labels[torch.randperm(count, generator=generator)]
    if kind == "unbalanced":
        return torch.randint(0, max(1, count // 3), (count,), generator=generator)
    if kind == "singletons":
        return torch.arange(count)
    if kind == "one_identity":
        return torch.zeros(count, dtype=torch.int64)
    raise ValueError(kind)


def reference_mining(anchors, labels, candidates=None, candidate_labels=None, anchor_index=None, metric="euclidean"):
    """(details, scores (B, C), positive mask, negative mask) from the reference; scores are squared for euclidean."""
    _, details = batch_hard_triplet_loss(
        anchors.cpu(), labels.cpu(), metric=metric, return_details=True,
        candidates=None if candidates is None else candidates.cpu(),
        candidate_labels=None if candidate_labels is None else candidate_labels.cpu(),
        anchor_index=None if anchor_index is None else anchor_index.cpu(),
    )
    if candidates is None:
        candidates, candidate_labels = anchors, labels
        anchor_index = torch.arange(anchors.shape[0])
    distances = pairwise_distance(anchors.cpu(), candidates.cpu(), metric=metric)
    scores = distances * distances if metric == "euclidean" else distances
    same_label = labels.cpu()[:, None] == candidate_labels.cpu()[None, :]
    columns = torch.arange(candidates.shape[0])
    is_positive = same_label
    if anchor_index is not None:
        is_positive = same_label & (columns[None, :] != anchor_index.cpu()[:, None])
    return details, scores, is_positive, ~same_label


def second_best_gap(scores: torch.Tensor, mask: torch.Tensor, largest: bool) -> torch.Tensor:
    """Per row, how far the best masked score is from the second best (inf with fewer than two entries)."""
    fill = -torch.inf if largest else torch.inf
    masked = scores.double().masked_fill(~mask, fill)
    if masked.shape[1] < 2:
        return torch.full((masked.shape[0],), torch.inf, dtype=torch.float64)
    top2 = masked.topk(2, dim=1, largest=largest).values
    gap = (top2[:, 0] - top2[:, 1]).abs()
    return torch.where(torch.isfinite(top2[:, 1]), gap, torch.inf)


def check_side(name, index, distance, ref_index, ref_distance, scores, mask, largest, metric, tolerance):
    """One side (positives or negatives) of the kernel's answer against the reference."""
    assert index.dtype == torch.int64
    assert torch.equal(index < 0, ref_index < 0), f"{name}: which anchors have one differs"
    assert bool((index[ref_index < 0] == -1).all()) and bool((distance[ref_index < 0] == 0).all()), \
        f"{name}: an anchor without one must get index -1 and distance 0"
    present = ref_index >= 0
    if not bool(present.any()):
        return
    rows = torch.nonzero(present).squeeze(1)
    chosen, expected = index[rows], ref_index[rows]
    assert bool(mask[rows, chosen].all()), f"{name}: picked a column outside the {name} set"
    scale = max(1.0, float(scores.double().abs().max()))
    # The chosen column is (within rounding) as extreme as the reference's choice ...
    slack = (scores[rows, chosen].double() - scores[rows, expected].double()).abs()
    assert float(slack.max()) <= tolerance * scale, \
        f"{name}: the chosen column is {float(slack.max()):.3g} from the extreme"
    # ... and is the reference's choice wherever the runner-up is clearly worse.
    clear = second_best_gap(scores, mask, largest)[rows] > 4 * tolerance * scale
    assert torch.equal(chosen[clear], expected[clear]), f"{name}: index differs where the extreme is unambiguous"
    kernel_score = distance.double()[rows]
    ref_score = ref_distance.double()[rows]
    if metric == "euclidean":
        kernel_score, ref_score = kernel_score * kernel_score, ref_score * ref_score
    error = float((kernel_score - ref_score).abs().max())
    assert error <= tolerance * scale, f"{name}: distance error {error:.3g} > {tolerance * scale:.3g}"


def check_against_reference(anchors, labels, metric, candidates=None, candidate_labels=None, anchor_index=None,
                            exact=False):
    """Run the kernel (candidates default to the anchors themselves, anchor_index to arange) and compare."""
    if candidates is None:
        kernel_candidates, kernel_labels = anchors, labels
        kernel_index = torch.arange(anchors.shape[0], device=anchors.device)
    else:
        kernel_candidates, kernel_labels = candidates, candidate_labels
        kernel_index = anchor_index
    dist_ap, dist_an, positive, negative = batch_hard_mine(
        anchors, kernel_candidates, labels, kernel_labels, kernel_index, metric)
    out_dtype = accumulation_dtype(anchors.dtype)
    assert dist_ap.dtype == out_dtype and dist_an.dtype == out_dtype
    assert dist_ap.shape == dist_an.shape == positive.shape == negative.shape == (anchors.shape[0],)
    details, scores, is_positive, is_negative = reference_mining(
        anchors, labels, candidates, candidate_labels, anchor_index, metric)
    dist_ap, dist_an, positive, negative = dist_ap.cpu(), dist_an.cpu(), positive.cpu(), negative.cpu()
    if exact:
        assert torch.equal(positive, details.hardest_positive), f"positive {positive} != {details.hardest_positive}"
        assert torch.equal(negative, details.hardest_negative), f"negative {negative} != {details.hardest_negative}"
        if metric == "euclidean":
            # torch's CPU float32 sqrt can be 1 ulp off the correctly rounded root (sqrt(190) on AVX512 builds).
            ulp = torch.finfo(out_dtype).eps
            torch.testing.assert_close(dist_ap, details.dist_ap, rtol=ulp, atol=0.0)
            torch.testing.assert_close(dist_an, details.dist_an, rtol=ulp, atol=0.0)
        else:
            assert torch.equal(dist_ap, details.dist_ap) and torch.equal(dist_an, details.dist_an)
        return
    tolerance = TOLERANCE[anchors.dtype]
    check_side("positive", positive, dist_ap, details.hardest_positive, details.dist_ap, scores, is_positive,
               True, metric, tolerance)
    check_side("negative", negative, dist_an, details.hardest_negative, details.dist_an, scores, is_negative,
               False, metric, tolerance)


# (B, D, labels): D=128 only with small B; 130 > the interpreter's 16-row and 16-column tiles several times over.
BATCH_CASES = [
    (1, 3, "balanced"),
    (2, 1, "unbalanced"),
    (7, 3, "singletons"),
    (7, 128, "balanced"),
    (64, 3, "balanced"),
    (64, 1, "unbalanced"),
    (130, 3, "unbalanced"),
    (33, 5, "one_identity"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("num_anchors,dim,label_kind", BATCH_CASES)
def test_batch_matches_reference(num_anchors, dim, label_kind, metric, dtype):
    generator = torch.Generator().manual_seed(num_anchors * 1000 + dim)
    anchors = torch.randn(num_anchors, dim, generator=generator).to(dtype).to(DEVICE)
    labels = make_labels(label_kind, num_anchors, generator).to(DEVICE)
    check_against_reference(anchors, labels, metric)


def make_candidate_set(num_anchors, num_candidates, dim, dtype, generator):
    """A candidate set (C, D) with labels; the first half of the anchors are copies of candidate rows
    (anchor_index points at them), the rest are new vectors (anchor_index -1)."""
    candidates = torch.randn(num_candidates, dim, generator=generator).to(dtype)
    candidate_labels = torch.randint(0, max(1, num_candidates // 4), (num_candidates,), generator=generator)
    present = num_anchors // 2
    columns = torch.randperm(num_candidates, generator=generator)[:present]
    anchors = torch.cat([candidates[columns], torch.randn(num_anchors - present, dim, generator=generator).to(dtype)])
    labels = torch.cat([candidate_labels[columns],
                        torch.randint(0, max(1, num_candidates // 4), (num_anchors - present,), generator=generator)])
    anchor_index = torch.cat([columns, torch.full((num_anchors - present,), -1, dtype=torch.int64)])
    return [t.to(DEVICE) for t in (anchors, labels, candidates, candidate_labels, anchor_index)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("num_anchors,num_candidates,dim", [(7, 50, 3), (20, 70, 1), (5, 40, 128)])
def test_candidate_set_matches_reference(num_anchors, num_candidates, dim, metric, dtype):
    generator = torch.Generator().manual_seed(num_candidates * 100 + dim)
    anchors, labels, candidates, candidate_labels, anchor_index = make_candidate_set(
        num_anchors, num_candidates, dim, dtype, generator)
    check_against_reference(anchors, labels, metric, candidates, candidate_labels, anchor_index)


@pytest.mark.parametrize("metric", METRICS)
def test_separate_copy_of_the_batch_matches_reference(metric):
    """Candidates equal to the anchors but another tensor: the self column excluded through anchor_index."""
    generator = torch.Generator().manual_seed(5)
    anchors = torch.randn(40, 6, generator=generator).to(DEVICE)
    labels = make_labels("balanced", 40, generator).to(DEVICE)
    check_against_reference(anchors, labels, metric, anchors.clone(), labels.clone(), torch.arange(40, device=DEVICE))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
@pytest.mark.parametrize("num_anchors,dim", [(64, 3), (130, 1), (7, 128)])
def test_integer_features_ties_go_to_the_smallest_index(num_anchors, dim, metric, dtype):
    """Integer features: every distance is exact, duplicates tie within and across tiles, indices must match."""
    generator = torch.Generator().manual_seed(num_anchors + dim)
    anchors = torch.randint(-1, 2, (num_anchors, dim), generator=generator).to(dtype).to(DEVICE)
    labels = make_labels("unbalanced", num_anchors, generator).to(DEVICE)
    check_against_reference(anchors, labels, metric, exact=True)
    candidates = torch.randint(-1, 2, (3 * num_anchors, dim), generator=generator).to(dtype).to(DEVICE)
    candidate_labels = make_labels("unbalanced", 3 * num_anchors, generator).to(DEVICE)
    anchor_index = torch.where(torch.arange(num_anchors) % 2 == 0, 2 * torch.arange(num_anchors), -1).to(DEVICE)
    present = anchor_index >= 0
    anchors[present] = candidates[anchor_index[present]]
    labels[present] = candidate_labels[anchor_index[present]]
    check_against_reference(anchors, labels, metric, candidates, candidate_labels, anchor_index, exact=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", METRICS)
def test_axis_aligned_features_ties_go_to_the_smallest_index(metric, dtype):
    """Scaled unit vectors (scales powers of two): cosine distances are exactly 0, 1 or 2 in both
    implementations, so cosine ties are exact too."""
    generator = torch.Generator().manual_seed(11)
    num_anchors, dim = 70, 4
    axes = torch.randint(0, dim, (num_anchors,), generator=generator)
    scales = 2.0 ** torch.randint(-1, 2, (num_anchors,), generator=generator).double()
    signs = torch.randint(0, 2, (num_anchors,), generator=generator) * 2.0 - 1.0
    anchors = torch.zeros(num_anchors, dim, dtype=torch.float64)
    anchors[torch.arange(num_anchors), axes] = scales * signs
    anchors = anchors.to(dtype).to(DEVICE)
    labels = make_labels("unbalanced", num_anchors, generator).to(DEVICE)
    check_against_reference(anchors, labels, metric, exact=True)


def test_hand_computed_example():
    """Points on a line 0, 1, 3, 5 with labels a a b a. Anchor 2 (b) has no positive and two negatives at
    distance 2 (columns 1 and 3): the smaller column wins."""
    anchors = torch.tensor([[0.0], [1.0], [3.0], [5.0]], device=DEVICE)
    labels = torch.tensor([0, 0, 1, 0], device=DEVICE)
    dist_ap, dist_an, positive, negative = batch_hard_mine(
        anchors, anchors, labels, labels, torch.arange(4, device=DEVICE), "euclidean")
    assert positive.tolist() == [3, 3, -1, 0]
    assert negative.tolist() == [2, 2, 1, 2]
    assert dist_ap.tolist() == [5.0, 4.0, 0.0, 5.0]
    assert dist_an.tolist() == [3.0, 2.0, 2.0, 2.0]


@pytest.mark.parametrize("metric", METRICS)
def test_empty_and_tiny_shapes(metric):
    generator = torch.Generator().manual_seed(3)
    empty = torch.zeros(0, 4, device=DEVICE)
    no_labels = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    candidates = torch.randn(5, 4, generator=generator).to(DEVICE)
    candidate_labels = torch.tensor([0, 1, 0, 2, 1], device=DEVICE)
    outputs = batch_hard_mine(empty, candidates, no_labels, candidate_labels, no_labels, metric)
    assert [tuple(t.shape) for t in outputs] == [(0,)] * 4

    anchors = torch.randn(3, 4, generator=generator).to(DEVICE)
    labels = torch.tensor([0, 1, 2], device=DEVICE)
    none = torch.full((3,), -1, dtype=torch.int64, device=DEVICE)
    dist_ap, dist_an, positive, negative = batch_hard_mine(anchors, empty, labels, no_labels, none, metric)
    assert positive.tolist() == [-1] * 3 and negative.tolist() == [-1] * 3
    assert dist_ap.tolist() == [0.0] * 3 and dist_an.tolist() == [0.0] * 3

    one = candidates[:1]
    check_against_reference(anchors, labels, metric, one, candidate_labels[:1], none)  # C = 1
    check_against_reference(anchors[:1], labels[:1], metric)  # B = C = 1: no positive, no negative


@pytest.mark.parametrize("metric", METRICS)
def test_strided_rows(metric):
    """Unit inner stride with row strides that are not D: column slices and every-other-row views."""
    generator = torch.Generator().manual_seed(9)
    wide = torch.randn(2 * 45, 13, generator=generator).to(DEVICE)
    anchors = wide[::2, 2:9]  # row stride 26, inner stride 1
    candidates = wide[1:, 3:10]  # row stride 13
    labels = make_labels("balanced", 45, generator).to(DEVICE)
    candidate_labels = make_labels("unbalanced", 89, generator).to(DEVICE)
    none = torch.full((45,), -1, dtype=torch.int64, device=DEVICE)
    check_against_reference(anchors, labels, metric, candidates, candidate_labels, none)
    check_against_reference(anchors, labels, metric)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
def test_self_distance_is_exact_when_candidates_are_the_anchors(metric):
    """Anchors = the first rows of the candidate tensor (same storage and stride), no self exclusion, each
    anchor its identity's only member: the hardest positive is the anchor itself at distance exactly 0."""
    generator = torch.Generator().manual_seed(4)
    candidates = (torch.randn(50, 37, generator=generator) * 10).to(DEVICE)
    anchors = candidates[:20]
    candidate_labels = torch.arange(50, device=DEVICE)
    none = torch.full((20,), -1, dtype=torch.int64, device=DEVICE)
    dist_ap, _, positive, _ = batch_hard_mine(
        anchors, candidates, candidate_labels[:20], candidate_labels, none, metric)
    assert positive.tolist() == list(range(20))
    expected = 1e-6 if metric == "euclidean" else 0.0  # sqrt of the 1e-12 clamp
    assert dist_ap.tolist() == [pytest.approx(expected, rel=1e-6, abs=0.0)] * 20


def test_bad_arguments_raise():
    anchors = torch.randn(4, 3, device=DEVICE)
    labels = torch.zeros(4, dtype=torch.int64, device=DEVICE)
    index = torch.arange(4, device=DEVICE)
    with pytest.raises(ValueError, match="metric"):
        batch_hard_mine(anchors, anchors, labels, labels, index, "manhattan")
    with pytest.raises(ValueError, match="candidates"):
        batch_hard_mine(anchors, anchors.double(), labels, labels, index, "euclidean")
    with pytest.raises(ValueError, match="inner stride"):
        batch_hard_mine(anchors.T.contiguous().T, anchors, labels, labels, index, "euclidean")
    with pytest.raises(ValueError, match="anchor_labels"):
        batch_hard_mine(anchors, anchors, labels.int(), labels, index, "euclidean")
