"""A standard PyTorch training loop with reidfast's fused batch-hard triplet loss: the one-line swap.

    python examples/drop_in_triplet.py [--epochs 5] [--device cpu|cuda]

The "images" are the demo's synthetic re-ID vectors (identity clusters + camera shifts), the model a small
MLP with a BNNeck-style head. Swap the marked line back to the B x B torch formula to compare.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

import reidfast
from reidfast.data import synthetic_embeddings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)

    query, gallery = synthetic_embeddings(num_ids=200, seed=0)
    train = torch.from_numpy(gallery.features[gallery.pids > 0]).to(args.device)
    train_labels = torch.from_numpy(gallery.pids[gallery.pids > 0]).to(args.device)
    num_classes = int(train_labels.max()) + 1

    backbone = nn.Sequential(nn.Linear(train.shape[1], 256), nn.ReLU(), nn.Linear(256, 128)).to(args.device)
    bnneck = nn.BatchNorm1d(128).to(args.device)
    classifier = nn.Linear(128, num_classes, bias=False).to(args.device)
    parameters = [*backbone.parameters(), *bnneck.parameters(), *classifier.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=1e-3)

    triplet = reidfast.BatchHardTripletLoss(margin=0.3)  # <- the swap: was a B x B masked max/min formula
    id_loss = reidfast.CrossEntropyLabelSmooth(num_classes, epsilon=0.1)

    def embed(x: torch.Tensor) -> torch.Tensor:
        backbone.eval(), bnneck.eval()
        with torch.no_grad():
            return bnneck(backbone(x)).cpu()

    def mean_ap() -> float:
        q = embed(torch.from_numpy(query.features).to(args.device))
        g = embed(torch.from_numpy(gallery.features).to(args.device))
        distances = reidfast.pairwise_distance(q, g).numpy()
        return reidfast.evaluate(distances, query.pids, gallery.pids, query.camids, gallery.camids).mAP

    print(f"mAP before training: {mean_ap():.1%}")
    for epoch in range(args.epochs):
        backbone.train(), bnneck.train()
        order = torch.randperm(len(train), device=args.device)
        for batch in order.split(128):
            features = backbone(train[batch])
            loss = triplet(features, train_labels[batch]) + id_loss(classifier(bnneck(features)), train_labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}  mAP {mean_ap():.1%}")


if __name__ == "__main__":
    main()
