"""The re-ID training loop: a readable, standard PyTorch loop built from the library's pieces.

    from reidfast.data import load_market1501
    from reidfast.train import TrainConfig, train
    result = train(load_market1501("data/market1501"), TrainConfig(epochs=60), "runs/market")
    print(result["final"]["ranking"]["mAP"])

What it does (the "bag of tricks" baseline, Luo et al. 2019):

* model: `reidfast.models.ReIDModel` (ResNet-style backbone, BNNeck); pass `model=` to bring your own.
* data: P x K batches (`PKSampler`); the training images decoded once into a uint8 tensor on the device and
  augmented a batch at a time (`BatchAugment`), or with `image_cache=False` image by image in DataLoader
  workers (`build_transforms`). The model runs channels_last (faster convolutions on CPU and GPU).
* loss: ID cross entropy with label smoothing on the BNNeck logits + `BatchHardTripletLoss` on the features
  before BN; the fraction of active triplets (loss > 0) is shown in the progress bar.
* optimiser: Adam (the fused kernel); per-epoch schedule = linear warm-up over `warmup_epochs`, then
  x`gamma` at each of `milestones` (one `torch.optim.lr_scheduler.LambdaLR`).
* AMP (float16 autocast + GradScaler) on CUDA only, when `amp=True`.
* the running losses stay on the device: the host waits for it once per progress-bar update
  (`LOG_EVERY` steps) and once at the end of an epoch, not after every step.
* after the first epoch the log estimates the time left.
* evaluation every `eval_every` epochs (and after the last one) with `ReIDEvaluator` on query + gallery.
* `out_dir/checkpoint.pt` (model, optimiser, scheduler, scaler, epoch, RNG states, history) and
  `out_dir/metrics.json` written after every epoch, atomically (temp file + os.replace).
* existing `checkpoint.pt`/`metrics.json` in `out_dir` are never overwritten unless `overwrite=True`
  (or when resuming from that same `out_dir/checkpoint.pt`, which continues the same run).
* deterministic for a seed: `torch.manual_seed`, a seeded sampler, and an augmentation generator seeded
  from (seed, epoch, rank) (with `image_cache=False` it seeds the DataLoader's worker processes).
  Resuming restores the RNG states, so the resumed run
  takes the same steps, with the same losses, as an uninterrupted one (on the same machine and backend).

DDP: launched by torchrun (WORLD_SIZE > 1 in the environment) or inside an initialised torch.distributed
process group, train() runs data-parallel:

    torchrun --nproc_per_node 2 -m reidfast train --data data/market1501 --out runs/ddp

* the process group is initialised if needed (nccl on CUDA, gloo on CPU) and destroyed on return only if
  train() started it; on CUDA, rank r uses cuda:LOCAL_RANK (device "auto" or "cuda").
* `DistributedPKSampler`: at every step the ranks hold disjoint identities, batch_p x batch_k images each,
  so the global batch is world_size x batch_p identities (the training set needs that many).
* the model is wrapped in `DistributedDataParallel`; `BatchHardTripletLoss(gather_distributed=True)` mines
  each rank's anchors against the whole global batch; with DDP's gradient averaging the update is that
  of one big batch. Every rank gets its own augmentation RNG stream (seed and rank).
* the logged losses are averages over the ranks; BatchNorm running statistics are copied from rank 0 at
  the end of every epoch, so all ranks hold identical models for evaluation and checkpoints.
* evaluation is sharded: each rank embeds a contiguous slice of query and gallery and
  `ReIDEvaluator(distributed=True)` gathers them in order, so the result equals a single-process one.
* only rank 0 writes files, logs and shows progress bars. The checkpoint holds every rank's RNG state, so
  resuming with the same number of processes continues exactly; `resume` must be readable by every rank.
"""
from __future__ import annotations

import bisect
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from .data import (DistributedPKSampler, ImageDataset, ImageRecord, PKSampler, ReIDDataset, build_transforms,
                   load_market1501)
from .data.transforms import BatchAugment, decode_images
from .evaluation import ReIDEvaluator
from .losses import BatchHardTripletLoss, CrossEntropyLabelSmooth
from .train_checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_NAME, METRICS_NAME, CheckpointModel, _atomic_write,
                               _rng_state, _set_rng_state, _to_python, build_model, load_checkpoint_model)
from .train_config import TrainConfig, _is_int, _resolve_device
from .train_distributed import _broadcast_buffers, _distributed_active, _from_rank0, _process_group, is_main_process

__all__ = ["TrainConfig", "train", "build_model", "embed_images", "evaluate_model", "load_checkpoint_model",
           "CheckpointModel", "is_main_process", "CHECKPOINT_NAME", "METRICS_NAME", "LOG_EVERY"]

LOG_EVERY = 20  # steps between progress-bar updates, the training loop's only host syncs within an epoch


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


def _loader_generator(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed * 1_000_003 + epoch + 7919 + rank * 104_729)
    return generator


def _rank_seed(seed: int, rank: int) -> int:
    """The augmentation RNG seed of DDP process `rank` (the model is built from `seed` on every rank)."""
    return seed * 1_000_003 + 15_485_863 * (rank + 1)


@torch.no_grad()
def evaluate_model(model: nn.Module, dataset: ReIDDataset, config: TrainConfig, rerank: bool | None = None,
                   verification: bool = False, batch_size: int = 128, *, max_rank: int = 50,
                   protocol: str = "market1501", distributed: bool | None = None, k1: int = 20, k2: int = 6,
                   lambda_value: float = 0.3):
    """Embed query + gallery with `model` (eval mode) and rank them with ReIDEvaluator -> EvaluatorResult.

    Images are resized to config.height x config.width. rerank: also k-reciprocal re-ranked metrics (None:
    config.rerank); k1, k2, lambda_value: its parameters (reidfast.re_ranking). max_rank, protocol
    ("market1501" | "cuhk03"): as in reidfast.evaluate. distributed:
    None shards the images over the ranks when torch.distributed is initialised with several processes
    (each rank embeds a contiguous slice; ReIDEvaluator gathers them in order, so every rank gets the
    single-process result; call it on every rank); False embeds everything in this process.
    Restores the model's train/eval mode afterwards and leaves the global RNG untouched.
    """
    if not dataset.query or not dataset.gallery:
        raise ValueError(f"evaluate_model: dataset {dataset.name!r} needs query and gallery images, has "
                         f"{len(dataset.query)} queries and {len(dataset.gallery)} gallery images")
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    if isinstance(model, DistributedDataParallel):
        model = model.module
    distributed = _distributed_active() and distributed is not False
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    evaluator = ReIDEvaluator(rerank=config.rerank if rerank is None else rerank, verification=verification,
                              max_rank=max_rank, protocol=protocol, distributed=distributed, k1=k1, k2=k2,
                              lambda_value=lambda_value)
    for records, is_query in ((dataset.query, True), (dataset.gallery, False)):
        records = records[len(records) * rank // world_size:len(records) * (rank + 1) // world_size]
        if records:  # a rank may hold no rows of a small split
            evaluator.update(*embed_images(model, records, config, batch_size), is_query)
    return evaluator.compute()


@torch.no_grad()
def embed_images(model: nn.Module, records: Sequence[ImageRecord], config: TrainConfig,
                 batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features (N, D) float32 on the model's device, pids (N,), camids (N,) int64) of `records`: the images
    resized to config.height x config.width, the model in eval mode (its mode is restored afterwards)."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    device = next(model.parameters()).device
    loader = DataLoader(ImageDataset(records, build_transforms(config.height, config.width, train=False)),
                        batch_size=batch_size, shuffle=False, num_workers=config.num_workers,
                        generator=_loader_generator(config.seed, -1))
    features, pids, camids = [], [], []
    was_training = model.training
    model.eval()
    try:
        for images, batch_pids, batch_camids, _ in loader:
            with torch.autocast(device.type, enabled=config.amp and device.type == "cuda"):
                images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
                features.append(model(images).float())
            pids.append(batch_pids)
            camids.append(batch_camids)
    finally:
        model.train(was_training)
    if not features:
        raise ValueError("embed_images: records is empty")
    return torch.cat(features), torch.cat(pids).long(), torch.cat(camids).long()


def train(dataset: ReIDDataset | str | os.PathLike, config: TrainConfig | None = None,
          out_dir: str | os.PathLike = "runs/reidfast", resume: str | os.PathLike | None = None,
          overwrite: bool = False, log: Callable[[str], None] | None = print,
          model: nn.Module | None = None) -> dict[str, Any]:
    """Train a re-ID model on `dataset` (a ReIDDataset, or a Market-1501-layout folder); see the module doc.

    resume: a checkpoint.pt written by train(); training continues after its epoch (up to config.epochs).
    model: optional nn.Module with ReIDModel's interface (train mode -> (logits, features), eval mode ->
    embeddings), e.g. `ReIDModel(n, backbone=my_backbone)`; default `build_model(n, config)`.
    Under torchrun (or an initialised process group) it runs DDP, every rank calling train() with the same
    arguments; config.batch_p is per rank.
    Returns the metrics written to out_dir/metrics.json ("config", "num_classes", "world_size", "history":
    one entry per epoch with losses (averaged over ranks), lr, fraction of active triplets, per-step losses
    and evaluation when run, "final": the last evaluation) plus "model": the trained model (not in the JSON;
    the plain module, not the DDP wrapper). Every rank returns the same.
    """
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
    if not isinstance(dataset, ReIDDataset):
        dataset = load_market1501(dataset)
    if not dataset.train:
        raise ValueError(f"dataset {dataset.name!r} has no training images")
    train_pids = [r.pid for r in dataset.train]
    num_classes = max(train_pids) + 1
    if min(train_pids) < 0 or len(set(train_pids)) != num_classes:
        raise ValueError(f"dataset: expected training pids relabelled to 0..P-1 (the dataset loaders do this), "
                         f"got {min(train_pids)}..{max(train_pids)} over {len(set(train_pids))} identities")
    with _process_group(config.device) as (device, rank, world_size):
        if num_classes < config.batch_p * world_size:
            raise ValueError(f"batch_p={config.batch_p} identities per batch"
                             + (f" on each of {world_size} processes needs {config.batch_p * world_size}, but"
                                if world_size > 1 else ", but")
                             + f" the training set has only {num_classes} identities")
        return _train(dataset, config, Path(out_dir), resume, overwrite,
                      (log or _silent) if rank == 0 else _silent, model, device, rank, world_size)


def _silent(message: str) -> None:
    pass


@dataclass
class _Run:
    """Everything one training run holds: built by `_setup`, advanced by `_train_epoch`."""

    config: TrainConfig
    dataset: ReIDDataset
    device: torch.device
    rank: int
    world_size: int
    num_classes: int
    model: nn.Module
    train_model: nn.Module  # the model, or its DistributedDataParallel wrapper
    builtin_model: bool
    id_criterion: nn.Module
    triplet_criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    sampler: PKSampler
    batches: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]  # epoch -> (images, pids) on device
    log: Callable[[str], None]
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0

    @property
    def use_amp(self) -> bool:
        return self.config.amp and self.device.type == "cuda"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _refuse_to_overwrite(out_dir: Path, resume: str | os.PathLike | None, overwrite: bool, rank: int,
                         world_size: int) -> None:
    """FileExistsError on every rank when out_dir holds another run's files (rank 0, the writer, decides)."""
    refusal = None
    if rank == 0:
        checkpoint_path, metrics_path = out_dir / CHECKPOINT_NAME, out_dir / METRICS_NAME
        resuming_in_place = resume is not None and Path(resume).resolve() == checkpoint_path.resolve()
        existing = [str(p) for p in (checkpoint_path, metrics_path) if p.exists()]
        if existing and not overwrite and not resuming_in_place:
            refusal = (f"{', '.join(existing)} already exist; pass overwrite=True (--overwrite) to replace them, "
                       f"resume={str(checkpoint_path)!r} to continue that run, or choose another output folder")
    refusal = _from_rank0(refusal, world_size)
    if refusal:
        raise FileExistsError(refusal)


def _batch_source(dataset: ReIDDataset, config: TrainConfig, sampler: PKSampler, device: torch.device, rank: int
                  ) -> Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """epoch -> iterator over the epoch's augmented P x K batches (images channels_last, pids), on `device`."""
    batch_size = config.batch_p * config.batch_k
    padding = round(config.height / 25.6) if config.padding is None else config.padding
    pids = torch.tensor([r.pid for r in dataset.train])
    if config.image_cache:
        images = decode_images([r.path for r in dataset.train], config.height, config.width).to(device)
        augment = BatchAugment(padding, config.flip_p, config.erasing_p)

        def cached(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            generator = _loader_generator(config.seed, epoch, rank)
            order = torch.tensor(list(sampler), dtype=torch.long)
            for start in range(0, len(order) - batch_size + 1, batch_size):
                chosen = order[start:start + batch_size]
                yield augment(images[chosen.to(device)], generator), pids[chosen].to(device, non_blocking=True)
        return cached

    transform = build_transforms(config.height, config.width, train=True, padding=padding, flip_p=config.flip_p,
                                 erasing_p=config.erasing_p)
    loader_generator = torch.Generator()
    loader = DataLoader(ImageDataset(dataset.train, transform), batch_size=batch_size, sampler=sampler,
                        drop_last=True, num_workers=config.num_workers, pin_memory=device.type == "cuda",
                        generator=loader_generator)

    def decoded(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader_generator.manual_seed(_loader_generator(config.seed, epoch, rank).initial_seed())
        for batch_images, batch_pids, _, _ in loader:
            yield (batch_images.to(device, non_blocking=True, memory_format=torch.channels_last),
                   batch_pids.to(device, non_blocking=True))
    return decoded


def _setup(dataset: ReIDDataset, config: TrainConfig, model: nn.Module | None, device: torch.device, rank: int,
           world_size: int, log: Callable[[str], None]) -> _Run:
    """Seed, build the model, losses, optimiser, schedule and the batch source of a fresh run."""
    train_pids = [r.pid for r in dataset.train]
    num_classes = max(train_pids) + 1
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    builtin_model = model is None
    model = build_model(num_classes, config) if model is None else model
    model.to(device, memory_format=torch.channels_last)
    if world_size > 1:  # same initial weights everywhere (seeded above), a different augmentation stream per rank
        torch.manual_seed(_rank_seed(config.seed, rank))
        random.seed(_rank_seed(config.seed, rank))
    id_criterion: nn.Module = (CrossEntropyLabelSmooth(num_classes, config.label_smoothing)
                               if config.label_smoothing > 0 else nn.CrossEntropyLoss())
    # per-anchor losses: their mean and the fraction of active triplets without a host sync (every anchor of
    # a P x K batch has a positive and a negative)
    triplet_criterion = BatchHardTripletLoss(margin=config.margin, reduction="none", gather_distributed=world_size > 1)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay,
                                 fused=all(p.is_floating_point() for p in parameters) or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _WarmupMultiStep(config.warmup_epochs, config.warmup_factor, config.milestones, config.gamma))
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp and device.type == "cuda")
    train_model: nn.Module = model
    if world_size > 1:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    batch_size = config.batch_p * config.batch_k
    if world_size > 1:
        sampler: PKSampler = DistributedPKSampler(train_pids, num_instances=config.batch_k, batch_size=batch_size,
                                                  seed=config.seed, num_replicas=world_size, rank=rank)
    else:
        sampler = PKSampler(train_pids, num_instances=config.batch_k, batch_size=batch_size, seed=config.seed)
    if len(sampler) == 0:
        raise ValueError(f"the P x K sampler yields no batch: fewer than batch_p={config.batch_p}"
                         + (f" x {world_size} processes" if world_size > 1 else "")
                         + f" identities have batch_k={config.batch_k} images")
    return _Run(config, dataset, device, rank, world_size, num_classes, model, train_model, builtin_model,
                id_criterion, triplet_criterion, optimizer, scheduler, scaler, sampler,
                _batch_source(dataset, config, sampler, device, rank), log)


def _resume(run: _Run, resume: str | os.PathLike) -> None:
    """Load model, optimiser, schedule, scaler, history and this rank's RNG state from checkpoint `resume`."""
    checkpoint = torch.load(resume, map_location="cpu", weights_only=True)
    if checkpoint.get("num_classes") != run.num_classes:
        raise ValueError(f"checkpoint {resume} was trained with {checkpoint.get('num_classes')} identities, "
                         f"this dataset has {run.num_classes}")
    run.model.load_state_dict(checkpoint["model"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.scheduler.load_state_dict(checkpoint["scheduler"])
    run.scaler.load_state_dict(checkpoint["scaler"])
    run.start_epoch = start_epoch = int(checkpoint["epoch"])
    run.history = json.loads(checkpoint["history"])
    rng_states = checkpoint.get("rng_per_rank") or [checkpoint["rng"]]
    if len(rng_states) == run.world_size:
        _set_rng_state(rng_states[run.rank], run.device)
    else:  # a different number of processes: a valid continuation, but not the same steps
        _set_rng_state(checkpoint["rng"], run.device)
        if run.distributed:
            torch.manual_seed(_rank_seed(run.config.seed + start_epoch, run.rank))
            random.seed(_rank_seed(run.config.seed + start_epoch, run.rank))
        run.log(f"checkpoint was written by {len(rng_states)} process(es), this run has {run.world_size}: "
                "training continues, but not bit-exactly as the original run would have")
    run.log(f"resumed from {resume} at epoch {start_epoch}")
    if start_epoch >= run.config.epochs:
        run.log(f"checkpoint already has {start_epoch} epochs >= epochs={run.config.epochs}: nothing to train")


_STATISTICS = ("loss", "id_loss", "triplet_loss", "fraction_active", "accuracy")


def _train_step(run: _Run, images: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
    """One optimiser step -> float32 (5,) on the device: loss, id_loss, triplet_loss, fraction_active, accuracy."""
    with torch.autocast(run.device.type, enabled=run.use_amp):
        logits, features = run.train_model(images)
    id_loss = run.id_criterion(logits.float(), pids)
    per_anchor = run.triplet_criterion(features.float(), pids)
    triplet_loss = per_anchor.mean()
    loss = id_loss + run.config.triplet_weight * triplet_loss
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    with torch.no_grad():
        active = (per_anchor > 0).float().mean()
        accuracy = (logits.argmax(1) == pids).float().mean()
        return torch.stack([loss, id_loss, triplet_loss, active, accuracy]).float()


def _train_epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """Train one epoch -> its history record (losses averaged over steps and ranks, lr, per-step losses, time)."""
    from tqdm.auto import tqdm

    config = run.config
    run.train_model.train()
    run.sampler.set_epoch(epoch)
    started = time.perf_counter()
    lr = run.optimizer.param_groups[0]["lr"]
    sums = torch.zeros(len(_STATISTICS), dtype=torch.float64, device=run.device)
    step_losses: list[torch.Tensor] = []
    steps = len(run.sampler) // (config.batch_p * config.batch_k)
    bar = tqdm(run.batches(epoch), total=steps, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
               disable=not config.progress or run.rank != 0)
    for step, (images, pids) in enumerate(bar, 1):
        values = _train_step(run, images, pids)
        sums += values
        step_losses.append(values[0])
        if not bar.disable and (step % LOG_EVERY == 0 or step == steps):  # the only host sync of the loop
            means = dict(zip(_STATISTICS, (sums / step).tolist()))
            bar.set_postfix(loss=f"{means['loss']:.3f}", id=f"{means['id_loss']:.3f}",
                            tri=f"{means['triplet_loss']:.3f}", active=f"{means['fraction_active']:.2f}",
                            lr=f"{lr:.2e}")
    bar.close()
    run.scheduler.step()
    # every rank ran the same number of steps (DistributedPKSampler), so the vectors line up
    everything = torch.cat([sums, torch.stack(step_losses).double() if step_losses else sums[:0]])
    if run.distributed:
        dist.all_reduce(everything)
        everything /= run.world_size
    values = everything.tolist()
    _broadcast_buffers(run.model, run.world_size)
    totals, step_values = values[:len(_STATISTICS)], values[len(_STATISTICS):]
    return {"epoch": epoch + 1, "lr": lr, "steps": len(step_values),
            **{name: total / max(len(step_values), 1) for name, total in zip(_STATISTICS, totals)},
            "step_losses": step_values, "time_s": time.perf_counter() - started}


def _epoch_message(run: _Run, record: dict[str, Any]) -> str:
    epochs, epoch = run.config.epochs, record["epoch"]
    message = (f"epoch {epoch}/{epochs}: loss {record['loss']:.4f} (id {record['id_loss']:.4f}, "
               f"triplet {record['triplet_loss']:.4f}, active {record['fraction_active']:.2f}), "
               f"acc {record['accuracy']:.3f}, lr {record['lr']:.2e}, {record['time_s']:.1f}s")
    if epoch == run.start_epoch + 1 and epoch < epochs:  # the first epoch of this run times the others
        left = record["time_s"] * (epochs - epoch)
        message += f" (about {left // 60:.0f} min {left % 60:02.0f} s to go for {epochs - epoch} more epochs)"
    return message


def _evaluate_epoch(run: _Run, record: dict[str, Any]) -> str:
    """Evaluate after this epoch when it is due (every eval_every epochs and the last); -> the log's addition."""
    config, epoch = run.config, record["epoch"]
    due = epoch == config.epochs or (config.eval_every and epoch % config.eval_every == 0)
    if not (run.dataset.query and run.dataset.gallery and due):
        return ""
    result = evaluate_model(run.model, run.dataset, config)
    record["eval"] = _to_python(result.to_dict())
    message = f" | mAP {result.mAP:.4f}, rank-1 {result.rank1:.4f}"
    if result.reranked is not None:
        message += f", re-ranked mAP {result.reranked.mAP:.4f}"
    return message


def _run_metrics(run: _Run) -> dict[str, Any]:
    final = run.history[-1].get("eval") if run.history else None
    return {"config": run.config.to_dict(), "num_classes": run.num_classes, "dataset": run.dataset.name,
            "world_size": run.world_size, "history": run.history, "final": final}


def _save_checkpoint(run: _Run, out_dir: Path, metrics: dict[str, Any]) -> None:
    """Write checkpoint.pt (with every rank's RNG state) and metrics.json atomically, on rank 0."""
    rng = _rng_state(run.device)
    rng_per_rank = None
    if run.distributed:
        rng_per_rank = [None] * run.world_size
        dist.all_gather_object(rng_per_rank, rng)
    if run.rank != 0:
        return
    checkpoint = {"format": CHECKPOINT_FORMAT, "model": run.model.state_dict(),
                  "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                  "scaler": run.scaler.state_dict(), "epoch": run.history[-1]["epoch"],
                  "num_classes": run.num_classes, "config": json.dumps(run.config.to_dict()),
                  "builtin_model": run.builtin_model, "dataset": run.dataset.name, "world_size": run.world_size,
                  "history": json.dumps(run.history), "rng": rng,
                  **({"rng_per_rank": rng_per_rank} if run.distributed else {})}
    _atomic_write(out_dir / CHECKPOINT_NAME, lambda tmp: torch.save(checkpoint, tmp))
    _atomic_write(out_dir / METRICS_NAME, lambda tmp: tmp.write_text(json.dumps(metrics, indent=2)))


def _train(dataset: ReIDDataset, config: TrainConfig, out_dir: Path, resume: str | os.PathLike | None,
           overwrite: bool, log: Callable[[str], None], model: nn.Module | None, device: torch.device,
           rank: int, world_size: int) -> dict[str, Any]:
    _refuse_to_overwrite(out_dir, resume, overwrite, rank, world_size)
    run = _setup(dataset, config, model, device, rank, world_size, log)
    if resume is not None:
        _resume(run, resume)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    for epoch in range(run.start_epoch, config.epochs):
        record = _train_epoch(run, epoch)
        message = _epoch_message(run, record) + _evaluate_epoch(run, record)
        run.history.append(record)
        log(message)
        _save_checkpoint(run, out_dir, _run_metrics(run))
    if run.distributed:
        dist.barrier()  # rank 0's files exist when any rank returns
    return {**_run_metrics(run), "model": run.model}
