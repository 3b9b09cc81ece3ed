"""A pytorch-metric-learning training loop, switched to reidfast's fused batch-hard mining in one line.

    python examples/pml_training.py [--use pml|reidfast-miner|reidfast-loss] [--epochs 3] [--device cpu|cuda]

pml:            PML's BatchHardMiner feeding its TripletMarginLoss (the code you have);
reidfast-miner: the same loop with `miner = rfpml.BatchHardMiner()`: the same triplets, no B x B matrix;
reidfast-loss:  miner and loss fused into one op, `loss_fn = rfpml.BatchHardTripletMarginLoss(margin=...)`.
All three train the same model to the same numbers (same triplets, same loss value and gradient). The data
are the demo's synthetic re-ID vectors, the model a small MLP. Needs pytorch-metric-learning.
"""
from __future__ import annotations

import argparse

import torch
from pytorch_metric_learning import losses, miners
from torch import nn

import reidfast
from reidfast.data import synthetic_embeddings
from reidfast.integrations import pml as rfpml

MARGIN = 0.2


def make_loss(use: str):
    """-> loss(embeddings, labels): the only place the three variants differ."""
    if use == "reidfast-loss":
        return rfpml.BatchHardTripletMarginLoss(margin=MARGIN)        # miner + loss, one fused op
    miner = rfpml.BatchHardMiner() if use == "reidfast-miner" else miners.BatchHardMiner()  # <- the switch
    loss_fn = losses.TripletMarginLoss(margin=MARGIN)
    return lambda embeddings, labels: loss_fn(embeddings, labels, miner(embeddings, labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--use", choices=["pml", "reidfast-miner", "reidfast-loss"], default="reidfast-miner")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-ids", type=int, default=150)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)

    query, gallery = synthetic_embeddings(num_ids=args.num_ids, seed=0)
    train = torch.from_numpy(gallery.features[gallery.pids > 0]).to(args.device)
    train_labels = torch.from_numpy(gallery.pids[gallery.pids > 0]).to(args.device)
    model = nn.Sequential(nn.Linear(train.shape[1], 256), nn.ReLU(), nn.Linear(256, 64)).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = make_loss(args.use)

    def mean_ap() -> float:
        model.eval()
        with torch.no_grad():
            q, g = (model(torch.from_numpy(s.features).to(args.device)).cpu() for s in (query, gallery))
        model.train()
        return reidfast.evaluate(reidfast.pairwise_distance(q, g), query.pids, gallery.pids, query.camids, gallery.camids).mAP

    print(f"mAP before training: {mean_ap():.4%}")
    for epoch in range(args.epochs):
        order = torch.randperm(len(train), device=args.device)
        total = 0.0
        for batch in order.split(128):
            loss = loss_fn(model(train[batch]), train_labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        print(f"epoch {epoch + 1}: loss {total:.6f}  mAP {mean_ap():.4%}")


if __name__ == "__main__":
    main()
