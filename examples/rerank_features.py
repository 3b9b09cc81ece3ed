"""Re-rank saved query/gallery features and print CMC/mAP before and after.

    python examples/rerank_features.py features.npz [--k1 20 --k2 6 --lambda-value 0.3 --metric euclidean]
    python examples/rerank_features.py --synthetic            # no file: the demo's synthetic embeddings

features.npz holds query_features (Q, D), gallery_features (G, D), query_pids, gallery_pids, query_camids,
gallery_camids (e.g. np.savez("features.npz", query_features=qf, ...) after your model's inference loop).
"""
from __future__ import annotations

import argparse

import numpy as np

import reidfast

KEYS = ("query_features", "gallery_features", "query_pids", "gallery_pids", "query_camids", "gallery_camids")


def load(path: str | None) -> dict[str, np.ndarray]:
    if path is None:
        from reidfast.data import synthetic_embeddings

        query, gallery = synthetic_embeddings()
        return dict(zip(KEYS, (query.features, gallery.features, query.pids, gallery.pids, query.camids, gallery.camids)))
    with np.load(path) as data:
        missing = [key for key in KEYS if key not in data]
        if missing:
            raise SystemExit(f"{path}: missing arrays {missing}; expected {KEYS}")
        return {key: data[key] for key in KEYS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("features", nargs="?", help=".npz file with the arrays listed above")
    parser.add_argument("--synthetic", action="store_true", help="use synthetic embeddings instead of a file")
    parser.add_argument("--k1", type=int, default=20)
    parser.add_argument("--k2", type=int, default=6)
    parser.add_argument("--lambda-value", type=float, default=0.3)
    parser.add_argument("--metric", choices=("euclidean", "cosine"), default="euclidean")
    args = parser.parse_args()
    if args.features is None and not args.synthetic:
        parser.error("give a features .npz file or --synthetic")
    data = load(args.features)
    query, gallery = data["query_features"], data["gallery_features"]
    q_g = reidfast.pairwise_distance(query, gallery, metric=args.metric)
    q_q = reidfast.pairwise_distance(query, metric=args.metric)
    g_g = reidfast.pairwise_distance(gallery, metric=args.metric)
    labels = (data["query_pids"], data["gallery_pids"], data["query_camids"], data["gallery_camids"])
    before = reidfast.evaluate(q_g, *labels)
    after = reidfast.evaluate(reidfast.re_ranking_distances(q_g, q_q, g_g, args.k1, args.k2, args.lambda_value), *labels)
    for name, result in (("plain", before), ("re-ranked", after)):
        print(f"{name:>10}: rank-1 {result.cmc[0]:.1%}  rank-5 {result.cmc[4]:.1%}  mAP {result.mAP:.1%}  "
              f"mINP {result.mINP:.1%}  ({result.num_valid_queries} queries)")


if __name__ == "__main__":
    main()
