"""reidfast.integrations.fastreid against faithful transcriptions of fast-reid 1.4.0's functions (and the real
package where it imports here)."""
from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import pytest
import torch

import integrations_originals as originals
import reidfast
from reidfast.integrations import fastreid as rff
from test_integrations_torchreid import AS_TYPES, ranking_problem, triplet_batch


def assert_same_ranking(result, expected):
    cmc, all_ap, all_inp = result
    expected_cmc, expected_ap, expected_inp = expected
    assert isinstance(cmc, np.ndarray) and cmc.dtype == np.float32
    np.testing.assert_array_equal(cmc, expected_cmc)
    assert isinstance(all_ap, list) and isinstance(all_inp, list)
    assert all(isinstance(v, np.float64) for v in all_ap + all_inp)
    np.testing.assert_allclose(all_ap, expected_ap, rtol=1e-12)
    np.testing.assert_allclose(all_inp, expected_inp, rtol=1e-12)


@pytest.mark.parametrize("kind", AS_TYPES)
@pytest.mark.parametrize("max_rank", [50, 5])
def test_evaluate_rank_equals_fastreid(kind, max_rank):
    distmat, q_pids, g_pids, q_camids, g_camids, *_ = ranking_problem(seed=11)
    float32 = "float32" in kind
    expected = originals.fastreid_evaluate_rank(distmat.astype(np.float32) if float32 else distmat,
                                                q_pids, g_pids, q_camids, g_camids, max_rank)
    assert len(expected[1]) == len(q_pids) - 3  # the unmatched queries are left out of the per-query lists
    assert_same_ranking(rff.evaluate_rank(AS_TYPES[kind](distmat), q_pids, g_pids, q_camids, g_camids, max_rank), expected)


def test_evaluate_rank_without_the_native_pass_evaluates_row_by_row():
    distmat, q_pids, g_pids, q_camids, g_camids, *_ = ranking_problem(seed=12)
    expected = originals.fastreid_evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)
    with reidfast.use_backend("reference"):
        assert_same_ranking(rff.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids), expected)


def test_evaluate_rank_cuhk03_returns_cmc_and_map_as_fastreid():
    distmat, q_pids, g_pids, q_camids, g_camids, *_ = ranking_problem(seed=13)
    np.random.seed(0)
    expected_cmc, expected_map = originals.fastreid_evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, 20, True)
    result = rff.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20, use_metric_cuhk03=True)
    assert len(result) == 2 and isinstance(result[1], np.float64)
    assert result[1] == pytest.approx(expected_map, rel=1e-12)
    np.testing.assert_allclose(result[0], expected_cmc, atol=0.1)  # other draws of the same distribution


def test_evaluate_rank_all_queries_unmatched_fails():
    distmat, q_pids, g_pids, q_camids, g_camids, *_ = ranking_problem(num_query=6, unmatched=6)
    with pytest.raises(ValueError):
        rff.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)


def test_re_ranking_is_fastreids():
    *_, q_feats, g_feats = ranking_problem(num_query=20, num_gallery=70, seed=4)
    q_g, q_q, g_g = (torch.cdist(torch.from_numpy(a), torch.from_numpy(b)).numpy().astype(np.float32)
                     for a, b in ((q_feats, g_feats), (q_feats, q_feats), (g_feats, g_feats)))
    np.testing.assert_allclose(rff.re_ranking(q_g, q_q, g_g), originals.re_ranking(q_g, q_q, g_g), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hard_mining", [True, False])
@pytest.mark.parametrize("norm_feat", [False, True])
@pytest.mark.parametrize("margin", [0.3, 0.0])
@pytest.mark.parametrize("kind", ["pxk", "unbalanced"])
def test_triplet_loss_equals_fastreid(kind, margin, norm_feat, hard_mining):
    features, labels = triplet_batch(kind, seed=3)
    x1, x2 = features.clone().requires_grad_(), features.clone().requires_grad_()
    expected = originals.fastreid_triplet_loss(x1, labels, margin, norm_feat, hard_mining)
    result = rff.triplet_loss(x2, labels, margin, norm_feat, hard_mining)
    assert result.shape == () and result.dtype == expected.dtype
    # A singleton's distance to itself: fast-reid's rounding noise vs exactly 1e-6 (or 0) here.
    tolerance = 1e-9 if kind == "pxk" else 1e-6
    assert result.item() == pytest.approx(expected.item(), abs=tolerance)
    expected.backward()
    result.backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("norm_feat", [False, True])
def test_triplet_loss_without_negatives_is_zero_as_fastreid(norm_feat):
    features = torch.randn(6, 8, dtype=torch.float64)
    labels = torch.zeros(6, dtype=torch.int64)
    expected = originals.fastreid_triplet_loss(features, labels, 0.3, norm_feat, True)
    assert rff.triplet_loss(features, labels, 0.3, norm_feat, True).item() == pytest.approx(expected.item(), abs=1e-6)


def test_soft_margin_overflow_falls_back_to_margin_0_3_as_fastreid():
    features, labels = triplet_batch("pxk", torch.float32, seed=5)
    features = features * 40.0  # distances of hundreds: exp(d_ap - d_an) overflows float32 for some anchor
    expected = originals.fastreid_triplet_loss(features, labels, 0.0, False, True)
    assert expected.item() != float("inf")
    result = rff.triplet_loss(features, labels, 0.0, False, True)
    assert result.item() == pytest.approx(expected.item(), rel=1e-4)
    hinge = originals.fastreid_triplet_loss(features, labels, 0.3, False, True)
    assert expected.item() == pytest.approx(hinge.item(), rel=1e-6)  # the fallback did happen in the original


# ------------------------------------------------------------------------------------------- patch()
def test_patch_the_installed_fastreid():
    try:
        importlib.import_module("fastreid.evaluation.rank")
    except ImportError as error:
        # fastreid 1.4.0 pins torch==1.13.1/torchvision==0.14.1, needs termcolor/cv2/yacs, and its
        # fastreid.evaluation package imports collections.Mapping (gone since Python 3.10).
        pytest.skip(f"fastreid does not import here ({error}); patch() is tested on a stand-in module layout below")
    module = sys.modules["fastreid.evaluation.rank"]
    original = module.evaluate_rank
    with rff.patch():
        assert module.evaluate_rank is rff.evaluate_rank
    assert module.evaluate_rank is original


LAYOUT = {  # fast-reid 1.4.0 module -> attributes defined or bound there
    "fastreid.evaluation.rank": ["evaluate_rank"],
    "fastreid.evaluation.rerank": ["re_ranking"],
    "fastreid.modeling.losses.triplet_loss": ["triplet_loss"],
    "fastreid.modeling.losses": ["triplet_loss"],
    "fastreid.modeling.meta_arch.baseline": ["triplet_loss"],
}


def test_patch_and_undo_on_a_stand_in_module_layout(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastreid", types.ModuleType("fastreid"))
    modules = {}
    for name, attributes in LAYOUT.items():
        modules[name] = types.ModuleType(name)
        for attribute in attributes:
            setattr(modules[name], attribute, object())
        monkeypatch.setitem(sys.modules, name, modules[name])
    before = {(m, a): getattr(modules[m], a) for m, attributes in LAYOUT.items() for a in attributes}
    replacements = {"evaluate_rank": rff.evaluate_rank, "re_ranking": rff.re_ranking, "triplet_loss": rff.triplet_loss}
    with rff.patch() as handle:
        for module, attribute in before:
            assert getattr(modules[module], attribute) is replacements[attribute], module
        assert sorted(handle.patched) == sorted(f"{m}.{a}" for m, a in before)
    for (module, attribute), original in before.items():
        assert getattr(modules[module], attribute) is original


def test_patch_without_fastreid_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastreid", None)
    with pytest.raises(ImportError, match="fastreid is not importable"):
        rff.patch()
