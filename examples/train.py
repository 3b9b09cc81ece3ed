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
from reidfast.data.transforms import BatchAugment, decode_images
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

    # The training images decoded once into a uint8 tensor on the device and augmented a whole batch at a time
    # (flip, pad + crop, normalise, random erasing: build_transforms(train=True)'s pipeline, without a
    # DataLoader). Datasets too big for memory: ImageDataset(records, build_transforms(...)) in a DataLoader.
    images = decode_images([r.path for r in dataset.train], args.height, args.width).to(args.device)
    pids = torch.tensor([r.pid for r in dataset.train], device=args.device)
    augment = BatchAugment(padding=10)
    generator = torch.Generator().manual_seed(0)  # the augmentation draws (a few numbers per image, on the CPU)
    batch_size = args.p * args.k
    sampler = PKSampler([r.pid for r in dataset.train], num_instances=args.k, batch_size=batch_size, seed=0)

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
                for batch, batch_pids, camids, _ in DataLoader(ImageDataset(records, test_transform), batch_size=128):
                    evaluator.update(model(batch.to(args.device)), batch_pids, camids, is_query)
        model.train()
        return evaluator.compute().mAP

    print(f"untrained mAP {evaluate():.1%}")
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), device=args.device)  # P x K batches, back to back
        for start in range(0, len(order) - batch_size + 1, batch_size):
            chosen = order[start:start + batch_size]
            logits, features = model(augment(images[chosen], generator))
            loss = id_loss(logits, pids[chosen]) + triplet_loss(features, pids[chosen])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}  mAP {evaluate():.1%}")


if __name__ == "__main__":
    main()
