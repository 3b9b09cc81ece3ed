"""reidfast.integrations.torchreid against faithful transcriptions of torchreid's functions (and the real package
where it imports here)."""
from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import pytest
import torch

import integrations_originals as originals
from reidfast.integrations import torchreid as rft


def ranking_problem(num_query=40, num_gallery=260, num_ids=30, dim=16, seed=0, unmatched=3):
    """Clustered features -> (distmat float64 (Q, G), q_pids, g_pids, q_camids, g_camids, q_feats, g_feats); the
    last `unmatched` queries carry identities absent from the gallery (skipped by every evaluator)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_ids + unmatched, dim))
    q_pids = rng.integers(0, num_ids, num_query)
    q_pids[num_query - unmatched:] = num_ids + np.arange(unmatched)
    g_pids = rng.integers(0, num_ids, num_gallery)
    q_camids, g_camids = rng.integers(0, 4, num_query), rng.integers(0, 4, num_gallery)
    q_feats = centers[q_pids] + rng.normal(scale=0.8, size=(num_query, dim))
    g_feats = centers[g_pids] + rng.normal(scale=0.8, size=(num_gallery, dim))
    distmat = np.sqrt(((q_feats[:, None] - g_feats[None]) ** 2).sum(-1))
    return distmat, q_pids, g_pids, q_camids, g_camids, q_feats, g_feats


AS_TYPES = {
    "numpy-float32": lambda a: a.astype(np.float32),
    "numpy-float64": lambda a: a,
    "torch-float32": lambda a: torch.from_numpy(a.astype(np.float32)),
    "torch-float64": lambda a: torch.from_numpy(a),
}


@pytest.mark.parametrize("kind", AS_TYPES)
@pytest.mark.parametrize("max_rank", [50, 7])
def test_evaluate_rank_equals_torchreid(kind, max_rank):
    distmat, q_pids, g_pids, q_camids, g_camids, *_ = ranking_problem()
    float32 = "float32" in kind
    expected_cmc, expected_map = originals.torchreid_evaluate_rank(
        distmat.astype(np.float32) if float32 else distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank
    )
    cmc, mean_ap = rft.evaluate_rank(AS_TYPES[kind](distmat), q_pids, g_pids, q_camids, g_camids, max_rank=max_rank)
    assert isinstance(cmc, np.ndarray) and cmc.dtype == np.float32 and cmc.shape == expected_cmc.shape
    assert isinstance(mean_ap, np.float64)
    np.testing.assert_array_equal(cmc, expected_cmc)
    assert mean_ap == pytest.approx(expected_map, rel=1e-12, abs=0)
    cmc[0] = 2.0  # torchreid's result is the caller's to change


def test_evaluate_rank_cuts_max_rank_to_the_gallery_size():
    """max_rank > G: torchreid cuts it to G (its kept rows must then be whole: no gallery item shares a query's
    camera, or its python code fails on a ragged array)."""
    distmat, q_pids, g_pids, q_camids, g_camids, *_ = ranking_problem(num_gallery=60)
    q_camids, g_camids = np.zeros_like(q_camids), np.ones_like(g_camids)
    expected_cmc, expected_map = originals.torchreid_evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, 1000)
    cmc, mean_ap = rft.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=1000)
    assert cmc.shape == (60,)
    np.testing.assert_array_equal(cmc, expected_cmc)
    assert mean_ap == pytest.approx(expected_map, rel=1e-12)


def test_evaluate_rank_torch_labels_and_no_warning(recwarn):
    distmat, q_pids, g_pids, q_camids, g_camids, *_ = ranking_problem(seed=3)
    expected_cmc, expected_map = originals.torchreid_evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)
    cmc, mean_ap = rft.evaluate_rank(torch.from_numpy(distmat), *(torch.from_numpy(a) for a in (q_pids, g_pids, q_camids, g_camids)))
    np.testing.assert_array_equal(cmc, expected_cmc)
    assert mean_ap == pytest.approx(expected_map, rel=1e-12)
    assert not [w for w in recwarn if "no valid gallery match" in str(w.message)]  # torchreid skips silently


def test_cuhk03_equals_torchreid_when_the_draws_cannot_differ():
    """One gallery image per identity: every draw picks it, so the sampled CMC is deterministic."""
    rng = np.random.default_rng(5)
    num_ids, dim = 50, 8
    centers = rng.normal(size=(num_ids, dim))
    g_pids = np.arange(num_ids)
    q_pids = rng.integers(0, num_ids, 30)
    q_camids, g_camids = np.zeros(30, dtype=np.int64), np.ones(num_ids, dtype=np.int64)
    distmat = np.sqrt((((centers[q_pids] + rng.normal(scale=1.0, size=(30, dim)))[:, None] - centers[None]) ** 2).sum(-1))
    expected_cmc, expected_map = originals.torchreid_evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, 20, True)
    cmc, mean_ap = rft.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20, use_metric_cuhk03=True)
    np.testing.assert_allclose(cmc, expected_cmc, rtol=1e-6)
    assert mean_ap == pytest.approx(expected_map, rel=1e-12)


def test_cuhk03_same_map_close_cmc_and_seeded_by_numpy_global_generator():
    distmat, q_pids, g_pids, q_camids, g_camids, *_ = ranking_problem(seed=7)
    np.random.seed(0)
    expected_cmc, expected_map = originals.torchreid_evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, 20, True)
    np.random.seed(1)
    cmc, mean_ap = rft.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20, use_metric_cuhk03=True)
    assert mean_ap == pytest.approx(expected_map, rel=1e-12)  # AP does not depend on the draws
    np.testing.assert_allclose(cmc, expected_cmc, atol=0.1)  # other draws of the same distribution
    np.random.seed(1)
    again, _ = rft.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20, use_metric_cuhk03=True)
    np.testing.assert_array_equal(cmc, again)


@pytest.mark.parametrize("k1, k2, lambda_value", [(20, 6, 0.3), (6, 1, 0.5), (10, 3, 0.0)])
@pytest.mark.parametrize("kind", ["numpy-float32", "numpy-float64", "torch-float32", "engine-mix"])
def test_re_ranking_equals_torchreid(kind, k1, k2, lambda_value):
    *_, q_feats, g_feats = ranking_problem(num_query=25, num_gallery=90, seed=2)
    q_g, q_q, g_g = (torch.cdist(torch.from_numpy(a), torch.from_numpy(b)).numpy() for a, b in
                     ((q_feats, g_feats), (q_feats, q_feats), (g_feats, g_feats)))
    if kind == "numpy-float32":
        q_g, q_q, g_g = (a.astype(np.float32) for a in (q_g, q_q, g_g))
    expected = originals.re_ranking(q_g, q_q, g_g, k1, k2, lambda_value)
    if kind == "torch-float32":
        args = [torch.from_numpy(a.astype(np.float32)) for a in (q_g, q_q, g_g)]
        expected = originals.re_ranking(*(a.numpy() for a in args), k1, k2, lambda_value)
    elif kind == "engine-mix":  # torchreid's engine: numpy q_g, torch q_q and g_g
        args = [q_g.astype(np.float32), torch.from_numpy(q_q.astype(np.float32)), torch.from_numpy(g_g.astype(np.float32))]
        expected = originals.re_ranking(args[0], args[1].numpy(), args[2].numpy(), k1, k2, lambda_value)
    else:
        args = [q_g, q_q, g_g]
    result = rft.re_ranking(*args, k1=k1, k2=k2, lambda_value=lambda_value)
    assert isinstance(result, np.ndarray) and result.dtype == np.float32 and result.shape == expected.shape
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compute_distance_matrix_equals_torchreid(metric, dtype):
    torch.manual_seed(0)
    x = torch.randn(30, 12, dtype=dtype, requires_grad=True)
    y = torch.randn(45, 12, dtype=dtype, requires_grad=True)
    weights = torch.rand(30, 45, dtype=dtype)
    expected = originals.torchreid_compute_distance_matrix(x, y, metric)
    result = rft.compute_distance_matrix(x, y, metric)
    assert isinstance(result, torch.Tensor) and result.dtype == dtype and result.shape == (30, 45)
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(result, expected, **tolerance)
    grads = torch.autograd.grad((result * weights).sum(), (x, y))
    expected_grads = torch.autograd.grad((expected * weights).sum(), (x, y))
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, **tolerance)


def test_compute_distance_matrix_rejects_what_torchreid_rejects():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="Unknown distance metric"):
        rft.compute_distance_matrix(x, x, "manhattan")
    with pytest.raises(ValueError, match="input2: expected a 2-D torch.Tensor"):
        rft.compute_distance_matrix(x, x.numpy())
    with pytest.raises(ValueError, match="input2: expected 4 features"):
        rft.compute_distance_matrix(x, torch.randn(3, 5))


def triplet_batch(kind: str, dtype=torch.float64, seed=0):
    """P x K (8 x 4), or unbalanced with singleton identities (whose hardest positive is the anchor itself)."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "pxk":
        labels = torch.arange(8).repeat_interleave(4)
    else:
        labels = torch.tensor([0] * 5 + [1] * 2 + [2] + [3] * 7 + [4] + [5] * 3 + [6])
    features = torch.randn(len(labels), 24, generator=generator, dtype=dtype)
    return features, labels[torch.randperm(len(labels), generator=generator)]


@pytest.mark.parametrize("kind", ["pxk", "unbalanced"])
@pytest.mark.parametrize("margin", [0.3, 0.0, 1.5])
def test_triplet_loss_equals_torchreid(kind, margin):
    features, labels = triplet_batch(kind)
    x1, x2 = features.clone().requires_grad_(), features.clone().requires_grad_()
    expected = originals.TorchreidTripletLoss(margin)(x1, labels)
    result = rft.TripletLoss(margin)(x2, labels)
    # A singleton's distance to itself: torchreid's rounding noise vs exactly 1e-6 here (module docstring).
    tolerance = 1e-9 if kind == "pxk" else 1e-6
    assert result.item() == pytest.approx(expected.item(), abs=tolerance)
    expected.backward()
    result.backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-7, atol=1e-9)


def test_triplet_loss_float32_and_one_identity_batch():
    features, labels = triplet_batch("pxk", torch.float32, seed=4)
    expected = originals.TorchreidTripletLoss()(features, labels)
    assert rft.TripletLoss()(features, labels).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="targets: expected at least two identities"):
        rft.TripletLoss()(features[:4], torch.zeros(4, dtype=torch.int64))


# ------------------------------------------------------------------------------------------- patch()
def test_patch_the_installed_torchreid():
    try:
        importlib.import_module("torchreid")
    except ImportError as error:
        # PyPI's torchreid 0.2.5 imports cv2, torchvision and tensorboard at package import (torchreid/__init__.py).
        pytest.skip(f"torchreid does not import here ({error}); patch() is tested on a stand-in module layout below")
    metrics = importlib.import_module("torchreid.metrics" if hasattr(sys.modules["torchreid"], "metrics") else "torchreid.reid.metrics")
    original = metrics.evaluate_rank
    with rft.patch() as handle:
        assert metrics.evaluate_rank is rft.evaluate_rank and handle.patched
    assert metrics.evaluate_rank is original


ORIGINAL_NAMES = {  # module -> attributes that torchreid 1.4 defines or re-exports there
    "metrics": ["evaluate_rank", "compute_distance_matrix"],
    "metrics.rank": ["evaluate_rank"],
    "metrics.distance": ["compute_distance_matrix"],
    "utils": ["re_ranking"],
    "utils.rerank": ["re_ranking"],
    "losses": ["TripletLoss"],
    "losses.hard_mine_triplet_loss": ["TripletLoss"],
    "engine.engine": ["re_ranking"],
}


def install_stand_in(monkeypatch, prefix: str) -> dict[str, types.ModuleType]:
    """Module objects with torchreid's attribute layout under `prefix` ("torchreid" or "torchreid.reid"), each
    attribute a distinct sentinel; registered in sys.modules (monkeypatch undoes it)."""
    modules = {"torchreid": types.ModuleType("torchreid")}
    if prefix != "torchreid":
        modules[prefix] = types.ModuleType(prefix)
    for suffix, names in ORIGINAL_NAMES.items():
        module = modules.setdefault(f"{prefix}.{suffix}", types.ModuleType(f"{prefix}.{suffix}"))
        for name in names:
            setattr(module, name, object())
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return modules


@pytest.mark.parametrize("prefix", ["torchreid", "torchreid.reid"])
def test_patch_and_undo_on_a_stand_in_module_layout(monkeypatch, prefix):
    modules = install_stand_in(monkeypatch, prefix)
    before = {(m, n): getattr(modules[f"{prefix}.{m}"], n) for m, names in ORIGINAL_NAMES.items() for n in names}
    handle = rft.patch()
    replacements = {"evaluate_rank": rft.evaluate_rank, "compute_distance_matrix": rft.compute_distance_matrix,
                    "re_ranking": rft.re_ranking, "TripletLoss": rft.TripletLoss}
    for (module, name) in before:
        assert getattr(modules[f"{prefix}.{module}"], name) is replacements[name], (module, name)
    assert len(handle.patched) == len(before)
    handle.undo()
    for (module, name), original in before.items():
        assert getattr(modules[f"{prefix}.{module}"], name) is original
    handle.undo()  # a second undo changes nothing
    assert modules[f"{prefix}.metrics"].evaluate_rank is before[("metrics", "evaluate_rank")]


def test_patch_without_torchreid_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchreid", None)  # makes `import torchreid` raise ImportError
    with pytest.raises(ImportError, match="torchreid is not importable"):
        rft.patch()
