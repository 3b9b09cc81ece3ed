"""Every public op called from 4 Python threads at once (different shapes, CPU backends, each thread forcing
its own with use_backend) gives exactly what it gives called alone; and use_backend, a context variable,
reaches a thread started inside it only through a copied context."""
from __future__ import annotations

import contextvars
import threading
import warnings

import numpy as np
import pytest
import torch

import reidfast
from reidfast._dispatch import requested_backend

NUM_THREADS = 4
# Per thread: (rows of x, rows of y, features, forced backend). "torch" exists only for re-ranking and
# evaluation; the other ops keep the automatic choice in that thread.
CASES = [(23, 41, 16, None), (37, 29, 33, "cpu"), (18, 52, 7, "reference"), (31, 35, 24, "torch")]
TORCH_OPS = ("re_ranking", "evaluate")


def _backend_for(op: str, backend: str | None) -> str | None:
    if backend == "torch" and op not in TORCH_OPS:
        return None
    if backend in ("cpu", None) or reidfast.backends()[backend].available:
        return backend
    return None


def run_every_op(case: tuple) -> dict[str, torch.Tensor]:
    """Each public op once on this case's inputs -> named results (tensors, compared bitwise)."""
    num_x, num_y, dim, backend = case
    generator = torch.Generator().manual_seed(num_x * 1000 + num_y)
    x = torch.randn(num_x, dim, generator=generator)
    y = torch.randn(num_y, dim, generator=generator)
    labels = torch.arange(num_x) // 4
    out: dict[str, torch.Tensor] = {}
    with reidfast.use_backend(_backend_for("distance", backend)):
        for metric in ("euclidean", "sqeuclidean", "cosine"):
            out[f"distance_{metric}"] = reidfast.pairwise_distance(x, y, metric=metric)
        out["topk_values"], out["topk_indices"] = reidfast.topk_distance(x, y, k=5)
        embeddings = x.clone().requires_grad_()
        loss = reidfast.batch_hard_triplet_loss(embeddings, labels, margin=0.3)
        loss.backward()
        out["triplet_loss"], out["triplet_grad"] = loss.detach(), embeddings.grad
        distmat, q_q, g_g = out["distance_euclidean"], reidfast.pairwise_distance(x), reidfast.pairwise_distance(y)
    with reidfast.use_backend(_backend_for("re_ranking", backend)):
        out["re_ranking"] = reidfast.re_ranking(x, y, k1=6, k2=3, lambda_value=0.3)
        out["re_ranking_distances"] = reidfast.re_ranking_distances(distmat, q_q, g_g, k1=6, k2=3)
    q_pids, g_pids = np.arange(num_x) % 7, np.arange(num_y) % 7
    q_camids, g_camids = np.zeros(num_x, dtype=np.int64), np.arange(num_y) % 3
    with reidfast.use_backend(_backend_for("evaluate", backend)), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the CMC is cut at the gallery size
        result = reidfast.evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=10)
    out["cmc"] = torch.tensor(result.cmc)
    out["map_minp"] = torch.tensor([result.mAP, result.mINP], dtype=torch.float64)
    return out


def test_every_op_from_four_threads_equals_single_threaded():
    expected = [run_every_op(case) for case in CASES]
    start = threading.Barrier(NUM_THREADS)
    results: list[list[dict] | None] = [None] * NUM_THREADS
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            start.wait(timeout=60)
            results[index] = [run_every_op(CASES[index]) for _ in range(2)]
        except BaseException as error:  # reported below, with the thread's case
            errors.append(error)
            start.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(NUM_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    assert not errors, errors
    for index, runs in enumerate(results):
        for run in runs:
            for name, want in expected[index].items():
                assert torch.equal(run[name], want), f"thread {index} (case {CASES[index]}): {name} differs"


def test_use_backend_reaches_new_threads_only_through_a_copied_context():
    """Documented in use_backend's docstring and README: a thread started inside `with use_backend(...)`
    begins with an empty context (automatic choice) unless it runs in contextvars.copy_context()."""
    seen = {}
    with reidfast.use_backend("reference"):
        plain = threading.Thread(target=lambda: seen.__setitem__("plain", requested_backend()))
        context = contextvars.copy_context()
        copied = threading.Thread(target=lambda: seen.__setitem__("copied", context.run(requested_backend)))
        for thread in (plain, copied):
            thread.start()
            thread.join()
        assert requested_backend() == "reference"
    assert seen == {"plain": None, "copied": "reference"}


@pytest.mark.parametrize("forced", ["cpu", "reference"])
def test_threads_forcing_different_backends_do_not_see_each_other(forced):
    """One thread forces a backend and waits while another forces the other one: each keeps its own."""
    other = {"cpu": "reference", "reference": "cpu"}[forced]
    inside = threading.Barrier(2)
    seen = {}

    def worker(name: str) -> None:
        with reidfast.use_backend(name):
            inside.wait(timeout=30)  # both are inside their blocks now
            seen[name] = requested_backend()
            inside.wait(timeout=30)

    threads = [threading.Thread(target=worker, args=(name,)) for name in (forced, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert seen == {forced: forced, other: other}
