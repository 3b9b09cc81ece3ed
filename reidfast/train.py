"""The re-ID training loop: a readable, standard PyTorch loop built from the library's pieces.

    from reidfast.data import load_market1501
    from reidfast.train import TrainConfig, train
    result = train(load_market1501("data/market1501"), TrainConfig(epochs=60), "runs/market")
    print(result["final"]["ranking"]["mAP"])

What it does (the "bag of tricks" baseline, Luo et al. 2019):

* model: `reidfast.models.ReIDModel` (ResNet-style backbone, BNNeck); pass `model=` to bring your own.
* data: P x K batches (`PKSampler`), train augmentations from `build_transforms`.
* loss: ID cross entropy with label smoothing on the BNNeck logits + `BatchHardTripletLoss` on the features
  before BN; the fraction of active triplets (loss > 0) is shown in the progress bar.
* optimiser: Adam; per-epoch schedule = linear warm-up over `warmup_epochs`, then x`gamma` at each of
  `milestones` (one `torch.optim.lr_scheduler.LambdaLR`).
* AMP (float16 autocast + GradScaler) on CUDA only, when `amp=True`.
* evaluation every `eval_every` epochs (and after the last one) with `ReIDEvaluator` on query + gallery.
* `out_dir/checkpoint.pt` (model, optimiser, scheduler, scaler, epoch, RNG states, history) and
  `out_dir/metrics.json` written after every epoch, atomically (temp file + os.replace).
* existing `checkpoint.pt`/`metrics.json` in `out_dir` are never overwritten unless `overwrite=True`
  (or when resuming from that same `out_dir/checkpoint.pt`, which continues the same run).
* deterministic for a seed: `torch.manual_seed`, a seeded sampler, and a seeded DataLoader generator (it
  seeds the augmentation RNG of worker processes). Resuming restores the RNG states, so the resumed run
  takes the same steps, with the same losses, as an uninterrupted one (on the same machine and backend).

Multi-GPU (DDP via torchrun) is not implemented in this loop yet. The pieces are ready for it:
`DistributedPKSampler` (per-rank disjoint identities), `BatchHardTripletLoss(gather_distributed=True)`
and `ReIDEvaluator(distributed=True)`; wrap the model in `DistributedDataParallel` and write
checkpoints from rank 0 only.
"""
from __future__ import annotations

import bisect
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from .data import ImageDataset, PKSampler, ReIDDataset, build_transforms, load_market1501
from .evaluation import ReIDEvaluator
from .losses import BatchHardTripletLoss, CrossEntropyLabelSmooth
from .models import ReIDModel

__all__ = ["TrainConfig", "train", "build_model", "evaluate_model", "CHECKPOINT_NAME", "METRICS_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class TrainConfig:
    """Training settings (BoT defaults, scaled for the built-in compact model). Validated on creation.

    epochs: passes over the P x K sampler. batch_p identities x batch_k images per batch (both >= 2: the
    triplet loss needs positives and negatives). lr, weight_decay: Adam. warmup_epochs: linear warm-up from
    lr * warmup_factor to lr. milestones, gamma: step decay (epoch numbers, increasing). margin: triplet
    margin (float >= 0 or "soft"). label_smoothing: epsilon of the ID loss (0 = plain cross entropy).
    triplet_weight: weight of the triplet loss. eval_every: evaluate every N epochs (0: only after the
    last). rerank: also report re-ranked metrics in evaluations. seed. device: "auto" | "cpu" | "cuda" |
    "cuda:N". amp: mixed precision (CUDA only; ignored on CPU). num_workers: DataLoader workers.
    height, width: input image size. padding (pixels of pad + random crop; None: height / 25.6, i.e. 10 at
    256 x 128), flip_p, erasing_p: train augmentations (build_transforms). model_width, model_layers, last_stride: the built-in ReIDModel.
    progress: show tqdm bars.
    """

    epochs: int = 60
    batch_p: int = 16
    batch_k: int = 4
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    warmup_epochs: int = 10
    warmup_factor: float = 0.01
    milestones: tuple[int, ...] = (40, 70)
    gamma: float = 0.1
    margin: float | str = 0.3
    label_smoothing: float = 0.1
    triplet_weight: float = 1.0
    eval_every: int = 10
    rerank: bool = False
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    num_workers: int = 0
    height: int = 256
    width: int = 128
    padding: int | None = None
    flip_p: float = 0.5
    erasing_p: float = 0.5
    model_width: int = 32
    model_layers: tuple[int, ...] = (1, 1, 1, 1)
    last_stride: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        self.milestones = tuple(self.milestones)
        self.model_layers = tuple(self.model_layers)
        problems = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        need(_is_int(self.epochs) and self.epochs >= 1, f"epochs must be an integer >= 1, got {self.epochs!r}")
        need(_is_int(self.batch_p) and self.batch_p >= 2,
             f"batch_p must be an integer >= 2 (the triplet loss needs negatives), got {self.batch_p!r}")
        need(_is_int(self.batch_k) and self.batch_k >= 2,
             f"batch_k must be an integer >= 2 (the triplet loss needs positives), got {self.batch_k!r}")
        need(_is_number(self.lr) and self.lr > 0, f"lr must be a positive number, got {self.lr!r}")
        need(_is_number(self.weight_decay) and self.weight_decay >= 0,
             f"weight_decay must be >= 0, got {self.weight_decay!r}")
        need(_is_int(self.warmup_epochs) and self.warmup_epochs >= 0,
             f"warmup_epochs must be an integer >= 0, got {self.warmup_epochs!r}")
        need(_is_number(self.warmup_factor) and 0 < self.warmup_factor <= 1,
             f"warmup_factor must lie in (0, 1], got {self.warmup_factor!r}")
        need(all(_is_int(m) and m >= 1 for m in self.milestones)
             and list(self.milestones) == sorted(set(self.milestones)),
             f"milestones must be strictly increasing positive integers, got {self.milestones!r}")
        need(_is_number(self.gamma) and 0 < self.gamma <= 1, f"gamma must lie in (0, 1], got {self.gamma!r}")
        need(self.margin == "soft" or (_is_number(self.margin) and self.margin >= 0),
             f"margin must be a number >= 0 or 'soft', got {self.margin!r}")
        need(_is_number(self.label_smoothing) and 0 <= self.label_smoothing < 1,
             f"label_smoothing must lie in [0, 1), got {self.label_smoothing!r}")
        need(_is_number(self.triplet_weight) and self.triplet_weight >= 0,
             f"triplet_weight must be >= 0, got {self.triplet_weight!r}")
        need(_is_int(self.eval_every) and self.eval_every >= 0,
             f"eval_every must be an integer >= 0, got {self.eval_every!r}")
        need(_is_int(self.seed), f"seed must be an integer, got {self.seed!r}")
        need(isinstance(self.device, str) and (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")),
             f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        need(_is_int(self.num_workers) and self.num_workers >= 0,
             f"num_workers must be an integer >= 0, got {self.num_workers!r}")
        need(_is_int(self.height) and self.height >= 16 and _is_int(self.width) and self.width >= 8,
             f"height and width (image size) must be integers >= 16 and >= 8, got ({self.height!r}, {self.width!r})")
        need(self.padding is None or (_is_int(self.padding) and self.padding >= 0),
             f"padding must be None or an integer >= 0, got {self.padding!r}")
        need(_is_number(self.flip_p) and 0 <= self.flip_p <= 1, f"flip_p must lie in [0, 1], got {self.flip_p!r}")
        need(_is_number(self.erasing_p) and 0 <= self.erasing_p <= 1,
             f"erasing_p must lie in [0, 1], got {self.erasing_p!r}")
        need(_is_int(self.model_width) and self.model_width >= 1,
             f"model_width must be an integer >= 1, got {self.model_width!r}")
        need(bool(self.model_layers) and all(_is_int(n) and n >= 1 for n in self.model_layers),
             f"model_layers must be positive block counts, got {self.model_layers!r}")
        need(self.last_stride in (1, 2), f"last_stride must be 1 or 2, got {self.last_stride!r}")
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["milestones"], out["model_layers"] = list(self.milestones), list(self.model_layers)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {unknown}")
        return cls(**values)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available (torch {torch.__version__}); "
                           "use device='cpu' or 'auto'")
    return device


def build_model(num_classes: int, config: TrainConfig) -> ReIDModel:
    """The built-in ReIDModel for `config` (seed the RNG first for reproducible weights)."""
    return ReIDModel(num_classes, width=config.model_width, layers=config.model_layers,
                     last_stride=config.last_stride, image_size=(config.height, config.width))


class _WarmupMultiStep:
    """lr factor for epoch e: linear warm-up from warmup_factor to 1 over warmup_epochs, x gamma per milestone."""

    def __init__(self, warmup_epochs: int, warmup_factor: float, milestones: tuple[int, ...], gamma: float):
        self.warmup_epochs, self.warmup_factor = warmup_epochs, warmup_factor
        self.milestones, self.gamma = milestones, gamma

    def __call__(self, epoch: int) -> float:
        factor = self.gamma ** bisect.bisect_right(self.milestones, epoch)
        if epoch < self.warmup_epochs:
            alpha = epoch / self.warmup_epochs
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return factor


def _loader_generator(seed: int, epoch: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed * 1_000_003 + epoch + 7919)
    return generator


@torch.no_grad()
def evaluate_model(model: nn.Module, dataset: ReIDDataset, config: TrainConfig, rerank: bool | None = None,
                   verification: bool = False, batch_size: int = 128):
    """Embed query + gallery with `model` (eval mode) and rank them with ReIDEvaluator -> EvaluatorResult.

    Restores the model's train/eval mode afterwards and leaves the global RNG untouched.
    """
    if not dataset.query or not dataset.gallery:
        raise ValueError(f"evaluate_model: dataset {dataset.name!r} needs query and gallery images, has "
                         f"{len(dataset.query)} queries and {len(dataset.gallery)} gallery images")
    device = next(model.parameters()).device
    transform = build_transforms(config.height, config.width, train=False)
    evaluator = ReIDEvaluator(rerank=config.rerank if rerank is None else rerank, verification=verification)
    was_training = model.training
    model.eval()
    try:
        for records, is_query in ((dataset.query, True), (dataset.gallery, False)):
            loader = DataLoader(ImageDataset(records, transform), batch_size=batch_size, shuffle=False,
                                num_workers=config.num_workers, generator=_loader_generator(config.seed, -1))
            for images, pids, camids, _ in loader:
                with torch.autocast(device.type, enabled=config.amp and device.type == "cuda"):
                    features = model(images.to(device, non_blocking=True))
                evaluator.update(features.float(), pids, camids, is_query)
    finally:
        model.train(was_training)
    return evaluator.compute()


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _to_python(value: Any) -> Any:
    """JSON-ready copy: numpy arrays/scalars and tuples become lists/floats."""
    if isinstance(value, dict):
        return {str(k): _to_python(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_python(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def train(dataset: ReIDDataset | str | os.PathLike, config: TrainConfig | None = None,
          out_dir: str | os.PathLike = "runs/reidfast", resume: str | os.PathLike | None = None,
          overwrite: bool = False, log: Callable[[str], None] | None = print,
          model: nn.Module | None = None) -> dict[str, Any]:
    """Train a re-ID model on `dataset` (a ReIDDataset, or a Market-1501-layout folder); see the module doc.

    resume: a checkpoint.pt written by train(); training continues after its epoch (up to config.epochs).
    model: optional nn.Module with ReIDModel's interface (train mode -> (logits, features), eval mode ->
    embeddings), e.g. `ReIDModel(n, backbone=my_backbone)`; default `build_model(n, config)`.
    Returns the metrics written to out_dir/metrics.json ("config", "num_classes", "history": one entry per
    epoch with losses, lr, fraction of active triplets, per-step losses and evaluation when run, "final":
    the last evaluation) plus "model": the trained model (not in the JSON).
    """
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    log = log or (lambda message: None)
    if not isinstance(dataset, ReIDDataset):
        dataset = load_market1501(dataset)
    if not dataset.train:
        raise ValueError(f"dataset {dataset.name!r} has no training images")
    train_pids = [r.pid for r in dataset.train]
    num_classes = max(train_pids) + 1
    if min(train_pids) < 0 or len(set(train_pids)) != num_classes:
        raise ValueError("training pids must be relabelled to 0..P-1 (the dataset loaders do this)")
    if num_classes < config.batch_p:
        raise ValueError(f"batch_p={config.batch_p} identities per batch, but the training set has only "
                         f"{num_classes} identities")

    out_dir = Path(out_dir)
    checkpoint_path, metrics_path = out_dir / CHECKPOINT_NAME, out_dir / METRICS_NAME
    resuming_in_place = resume is not None and Path(resume).resolve() == checkpoint_path.resolve()
    existing = [p for p in (checkpoint_path, metrics_path) if p.exists()]
    if existing and not overwrite and not resuming_in_place:
        raise FileExistsError(f"{', '.join(str(p) for p in existing)} already exist; pass overwrite=True "
                              f"(--overwrite) to replace them, resume={str(checkpoint_path)!r} to continue "
                              "that run, or choose another output folder")
    device = _resolve_device(config.device)
    use_amp = config.amp and device.type == "cuda"

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model = build_model(num_classes, config) if model is None else model
    model.to(device)
    id_criterion: nn.Module = (CrossEntropyLabelSmooth(num_classes, config.label_smoothing)
                               if config.label_smoothing > 0 else nn.CrossEntropyLoss())
    triplet_criterion = BatchHardTripletLoss(margin=config.margin)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                 weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _WarmupMultiStep(config.warmup_epochs, config.warmup_factor, config.milestones, config.gamma))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resume is not None:
        checkpoint = torch.load(resume, map_location="cpu", weights_only=True)
        if checkpoint.get("num_classes") != num_classes:
            raise ValueError(f"checkpoint {resume} was trained with {checkpoint.get('num_classes')} identities, "
                             f"this dataset has {num_classes}")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        start_epoch = int(checkpoint["epoch"])
        history = json.loads(checkpoint["history"])
        _set_rng_state(checkpoint["rng"], device)
        log(f"resumed from {resume} at epoch {start_epoch}")
        if start_epoch >= config.epochs:
            log(f"checkpoint already has {start_epoch} epochs >= epochs={config.epochs}: nothing to train")
    out_dir.mkdir(parents=True, exist_ok=True)

    sampler = PKSampler(train_pids, num_instances=config.batch_k, batch_size=config.batch_p * config.batch_k,
                        seed=config.seed)
    loader_generator = torch.Generator()
    padding = round(config.height / 25.6) if config.padding is None else config.padding
    transform = build_transforms(config.height, config.width, train=True, padding=padding, flip_p=config.flip_p,
                                 erasing_p=config.erasing_p)
    loader = DataLoader(ImageDataset(dataset.train, transform),
                        batch_size=config.batch_p * config.batch_k, sampler=sampler, drop_last=True,
                        num_workers=config.num_workers, pin_memory=device.type == "cuda",
                        generator=loader_generator)
    if len(sampler) == 0:
        raise ValueError(f"the P x K sampler yields no batch: fewer than batch_p={config.batch_p} identities "
                         f"have batch_k={config.batch_k} images")

    from tqdm.auto import tqdm

    metrics: dict[str, Any] = {}
    final = history[-1].get("eval") if history else None
    for epoch in range(start_epoch, config.epochs):
        model.train()
        sampler.set_epoch(epoch)
        loader_generator.manual_seed(_loader_generator(config.seed, epoch).initial_seed())
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        totals = {"loss": 0.0, "id_loss": 0.0, "triplet_loss": 0.0, "fraction_active": 0.0, "accuracy": 0.0}
        step_losses = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not config.progress)
        for images, pids, _, _ in bar:
            images = images.to(device, non_blocking=True)
            pids = pids.to(device, non_blocking=True)
            with torch.autocast(device.type, enabled=use_amp):
                logits, features = model(images)
            id_loss = id_criterion(logits.float(), pids)
            triplet_loss, details = triplet_criterion(features.float(), pids, return_details=True)
            loss = id_loss + config.triplet_weight * triplet_loss
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

            loss_value = loss.item()
            step_losses.append(loss_value)
            totals["loss"] += loss_value
            totals["id_loss"] += id_loss.item()
            totals["triplet_loss"] += triplet_loss.item()
            totals["fraction_active"] += details.fraction_active
            totals["accuracy"] += float((logits.argmax(1) == pids).float().mean())
            bar.set_postfix(loss=f"{loss_value:.3f}", id=f"{id_loss.item():.3f}", tri=f"{triplet_loss.item():.3f}",
                            active=f"{details.fraction_active:.2f}", lr=f"{lr:.2e}")
        bar.close()
        scheduler.step()
        steps = max(len(step_losses), 1)
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "steps": len(step_losses),
                                  **{k: v / steps for k, v in totals.items()},
                                  "step_losses": step_losses, "time_s": time.perf_counter() - started}
        message = (f"epoch {epoch + 1}/{config.epochs}: loss {record['loss']:.4f} (id {record['id_loss']:.4f}, "
                   f"triplet {record['triplet_loss']:.4f}, active {record['fraction_active']:.2f}), "
                   f"acc {record['accuracy']:.3f}, lr {lr:.2e}, {record['time_s']:.1f}s")
        last = epoch + 1 == config.epochs
        if dataset.query and dataset.gallery and (last or (config.eval_every and (epoch + 1) % config.eval_every == 0)):
            result = evaluate_model(model, dataset, config)
            record["eval"] = final = _to_python(result.to_dict())
            message += f" | mAP {result.mAP:.4f}, rank-1 {result.rank1:.4f}"
            if result.reranked is not None:
                message += f", re-ranked mAP {result.reranked.mAP:.4f}"
        history.append(record)
        log(message)

        metrics = {"config": config.to_dict(), "num_classes": num_classes, "dataset": dataset.name,
                   "history": history, "final": final}
        checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch + 1,
                      "num_classes": num_classes, "config": json.dumps(config.to_dict()),
                      "history": json.dumps(history), "rng": _rng_state(device)}
        _atomic_write(checkpoint_path, lambda tmp: torch.save(checkpoint, tmp))
        _atomic_write(metrics_path, lambda tmp: tmp.write_text(json.dumps(metrics, indent=2)))

    if not metrics:
        metrics = {"config": config.to_dict(), "num_classes": num_classes, "dataset": dataset.name,
                   "history": history, "final": final}
    return {**metrics, "model": model}
