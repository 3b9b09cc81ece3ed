"""A standard, readable PyTorch re-ID training loop built from reidfast's pieces (the "bag of tricks" recipe).

    python examples/train.py --data synthetic --epochs 10        # generates the synthetic dataset if missing
    python examples/train.py --data /datasets/market1501 --height 256 --width 128 --epochs 60

For checkpoints, resume, warm-up schedules and AMP use `reidfast train` / `reidfast.train.train`; this file
shows the loop itself, to copy and change.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import reidfast
from reidfast.data import ImageDataset, PKSampler, build_transforms, load_market1501, make_synthetic_reid
from reidfast.models import ReIDModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic", help="Market-1501-layout folder ('synthetic': generate one)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--p", type=int, default=8, help="identities per batch")
    parser.add_argument("--k", type=int, default=4, help="images per identity")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)

    if args.data == "synthetic" and not Path(args.data).exists():
        make_synthetic_reid(args.data, seed=0)
    dataset = load_market1501(args.data)
    print(dataset.summary())

    train_set = ImageDataset(dataset.train, build_transforms(args.height, args.width, train=True))
    sampler = PKSampler([r.pid for r in dataset.train], num_instances=args.k, batch_size=args.p * args.k, seed=0)
    loader = DataLoader(train_set, batch_size=args.p * args.k, sampler=sampler, drop_last=True)

    model = ReIDModel(dataset.num_train_pids, image_size=(args.height, args.width)).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=5e-4)
    id_loss = reidfast.CrossEntropyLabelSmooth(dataset.num_train_pids, epsilon=0.1)
    triplet_loss = reidfast.BatchHardTripletLoss(margin=0.3)  # fused mining + loss, no B x B matrix

    def evaluate() -> float:
        evaluator = reidfast.ReIDEvaluator()
        test_transform = build_transforms(args.height, args.width, train=False)
        model.eval()
        with torch.no_grad():
            for records, is_query in ((dataset.query, True), (dataset.gallery, False)):
                for images, pids, camids, _ in DataLoader(ImageDataset(records, test_transform), batch_size=128):
                    evaluator.update(model(images.to(args.device)), pids, camids, is_query)
        model.train()
        return evaluator.compute().mAP

    print(f"untrained mAP {evaluate():.1%}")
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for images, pids, _, _ in loader:
            images, pids = images.to(args.device), pids.to(args.device)
            logits, features = model(images)
            loss = id_loss(logits, pids) + triplet_loss(features, pids)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}  mAP {evaluate():.1%}")


if __name__ == "__main__":
    main()
