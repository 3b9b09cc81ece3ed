"""A torchreid-style evaluation (engine._evaluate's steps), switched to reidfast by changing one import.

    python examples/torchreid_style_eval.py [--rerank] [--dist-metric euclidean|cosine] [--num-ids 300]

The features are the demo's synthetic re-ID embeddings (pass --features file.npz with query_features,
gallery_features, query_pids, gallery_pids, query_camids, gallery_camids for your own). The marked import is
the whole switch; `reidfast.integrations.torchreid.patch()` does the same inside an installed torchreid, so
its own engine.test() runs on reidfast unchanged.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

# from torchreid import metrics; from torchreid.utils import re_ranking        # before
from reidfast.integrations import torchreid as metrics                           # after: the one-line switch
from reidfast.data import synthetic_embeddings

re_ranking = metrics.re_ranking


def load(args):
    if args.features:
        data = np.load(args.features)
        return (torch.from_numpy(data["query_features"]), torch.from_numpy(data["gallery_features"]),
                data["query_pids"], data["gallery_pids"], data["query_camids"], data["gallery_camids"])
    query, gallery = synthetic_embeddings(num_ids=args.num_ids, seed=args.seed)
    return (torch.from_numpy(query.features), torch.from_numpy(gallery.features),
            query.pids, gallery.pids, query.camids, gallery.camids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", help=".npz with query/gallery features, pids and camids")
    parser.add_argument("--num-ids", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dist-metric", choices=["euclidean", "cosine"], default="euclidean")
    parser.add_argument("--rerank", action="store_true")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 5, 10, 20])
    args = parser.parse_args()

    qf, gf, q_pids, g_pids, q_camids, g_camids = load(args)
    print(f"Done, obtained {qf.size(0)}-by-{qf.size(1)} query and {gf.size(0)}-by-{gf.size(1)} gallery matrices")
    distmat = metrics.compute_distance_matrix(qf, gf, args.dist_metric)
    distmat = distmat.numpy()
    if args.rerank:
        print("Applying person re-ranking ...")
        distmat_qq = metrics.compute_distance_matrix(qf, qf, args.dist_metric)
        distmat_gg = metrics.compute_distance_matrix(gf, gf, args.dist_metric)
        distmat = re_ranking(distmat, distmat_qq, distmat_gg)
    print("Computing CMC and mAP ...")
    cmc, mAP = metrics.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)
    print("** Results **")
    print(f"mAP: {mAP:.4%}")
    print("CMC curve")
    for r in args.ranks:
        print(f"Rank-{r:<3}: {cmc[r - 1]:.4%}")


if __name__ == "__main__":
    main()
