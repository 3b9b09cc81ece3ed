"""`reidfast demo`: rank a synthetic re-ID embedding set end to end with what the library has today.

Synthetic embeddings: each identity has a centre in feature space, each camera a shared offset (the domain
shift between cameras), each image its own noise. Queries are one image per test identity; the gallery
holds that identity's other images (some from the query's camera, which the Market-1501 protocol drops)
and distractors (pid 0). The demo ranks the gallery with `reidfast.pairwise_distance`, evaluates with the
Market-1501 protocol (`reidfast.evaluate`), re-ranks with k-reciprocal encoding and evaluates again.

(The image-based demo, with the synthetic image dataset, model training and pictures, replaces this when
those parts land.)
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import reidfast
from reidfast.ops.evaluation import RankingResult


@dataclass
class EmbeddingSplit:
    features: np.ndarray  # (num_images, dim) float32
    pids: np.ndarray  # (num_images,) int64, 0 = distractor
    camids: np.ndarray  # (num_images,) int64


def synthetic_embeddings(
    num_ids: int = 300, num_cameras: int = 6, dim: int = 128, num_distractors: int = 500, seed: int = 0,
    camera_shift: float = 0.6, noise: float = 0.8,
) -> tuple[EmbeddingSplit, EmbeddingSplit]:
    """(query, gallery) embeddings with identity clusters, camera offsets and long-tailed image counts."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_ids, dim)) / np.sqrt(dim)
    camera_offsets = camera_shift * rng.standard_normal((num_cameras, dim)) / np.sqrt(dim)
    images_per_id = np.minimum(5 + rng.zipf(1.6, num_ids), 40)  # long-tailed
    query, gallery = [], []
    for pid, count in enumerate(images_per_id, start=1):
        cameras = rng.integers(0, num_cameras, count)
        features = centres[pid - 1] + camera_offsets[cameras] + noise * rng.standard_normal((count, dim)) / np.sqrt(dim)
        query.append((features[:1], pid, cameras[:1]))
        gallery.append((features[1:], pid, cameras[1:]))
    distractor_cameras = rng.integers(0, num_cameras, num_distractors)
    distractors = rng.standard_normal((num_distractors, dim)) / np.sqrt(dim) + camera_offsets[distractor_cameras]
    gallery.append((distractors, 0, distractor_cameras))

    def stack(parts) -> EmbeddingSplit:
        features = np.concatenate([f for f, _, _ in parts]).astype(np.float32)
        pids = np.concatenate([np.full(len(f), pid, dtype=np.int64) for f, pid, _ in parts])
        camids = np.concatenate([c for _, _, c in parts]).astype(np.int64)
        return EmbeddingSplit(features, pids, camids)

    return stack(query), stack(gallery)


def _row(name: str, result: RankingResult, seconds: float) -> str:
    cmc = result.cmc
    return (f"| {name:<24} | {cmc[0]:6.1%} | {cmc[4]:6.1%} | {cmc[9]:6.1%} | {result.mAP:6.1%} | "
            f"{result.mINP:6.1%} | {seconds * 1e3:9.1f} |")


def run_demo(seed: int = 0, num_ids: int = 300, out: Path | None = None, overwrite: bool = False) -> dict:
    """Run the demo, print a table, optionally write the metrics as JSON to `out`; returns the metrics."""
    if out is not None and out.exists() and not overwrite:
        raise FileExistsError(f"--out: {out} exists; pass --overwrite to replace it")
    query, gallery = synthetic_embeddings(num_ids=num_ids, seed=seed)
    print(f"synthetic re-ID embeddings: {len(query.pids)} queries, {len(gallery.pids)} gallery images "
          f"({int((gallery.pids == 0).sum())} distractors), dim {query.features.shape[1]}, seed {seed}")
    backend, _ = reidfast.ops.distance.PAIRWISE_DISTANCE.select(torch.device("cpu"))

    start = time.perf_counter()
    q_g = reidfast.pairwise_distance(query.features, gallery.features)
    q_q = reidfast.pairwise_distance(query.features)
    g_g = reidfast.pairwise_distance(gallery.features)
    distance_seconds = time.perf_counter() - start
    start = time.perf_counter()
    plain = reidfast.evaluate(q_g, query.pids, gallery.pids, query.camids, gallery.camids)
    evaluation_seconds = time.perf_counter() - start
    start = time.perf_counter()
    reranked_distances = reidfast.re_ranking_distances(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3)
    rerank_seconds = time.perf_counter() - start
    reranked = reidfast.evaluate(reranked_distances, query.pids, gallery.pids, query.camids, gallery.camids)

    print(f"\ndistances: {distance_seconds * 1e3:.1f} ms on the '{backend}' backend; evaluation "
          f"{evaluation_seconds * 1e3:.1f} ms ('{plain.backend}'); re-ranking {rerank_seconds * 1e3:.1f} ms\n")
    print("| ranking                  | rank-1 | rank-5 | rank-10|   mAP  |  mINP  | time (ms) |")
    print("|--------------------------|-------:|-------:|-------:|-------:|-------:|----------:|")
    print(_row("euclidean distance", plain, distance_seconds + evaluation_seconds))
    print(_row("+ k-reciprocal re-rank", reranked, rerank_seconds))
    metrics = {
        "seed": seed, "num_query": int(len(query.pids)), "num_gallery": int(len(gallery.pids)),
        "distance_backend": backend,
        "plain": {"rank1": float(plain.cmc[0]), "mAP": plain.mAP, "mINP": plain.mINP},
        "reranked": {"rank1": float(reranked.cmc[0]), "mAP": reranked.mAP, "mINP": reranked.mINP},
        "seconds": {"distance": distance_seconds, "evaluation": evaluation_seconds, "rerank": rerank_seconds},
    }
    if out is not None:
        temporary = out.with_name(out.name + ".tmp")
        temporary.write_text(json.dumps(metrics, indent=2))
        temporary.replace(out)
        print(f"\nmetrics written to {out}")
    return metrics
