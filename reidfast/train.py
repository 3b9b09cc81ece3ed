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
import contextlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from .data import (DistributedPKSampler, ImageDataset, ImageRecord, PKSampler, ReIDDataset, build_transforms,
                   load_market1501)
from .evaluation import ReIDEvaluator
from .losses import BatchHardTripletLoss, CrossEntropyLabelSmooth
from .models import ReIDModel

__all__ = ["TrainConfig", "train", "build_model", "embed_images", "evaluate_model", "load_checkpoint_model", "CheckpointModel",
           "is_main_process", "CHECKPOINT_NAME", "METRICS_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"
CHECKPOINT_FORMAT = "reidfast.train"
_CHECKPOINT_KEYS = ("model", "config", "num_classes", "epoch")


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


def _resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """torch.device for "auto" | "cpu" | "cuda" | "cuda:N"; under DDP (local_rank given) CUDA means cuda:local_rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available (torch {torch.__version__}); "
                           "use device='cpu' or 'auto'")
    if device.type == "cuda" and local_rank is not None:
        if device.index is not None:
            raise ValueError(f"device={name!r} would put every DDP process on one GPU; use 'cuda' or 'auto' "
                             "(process LOCAL_RANK=r then uses cuda:r)")
        device = torch.device("cuda", local_rank)
    return device


def _distributed_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """True on rank 0 of a torch.distributed job (or torchrun's RANK=0 before/after it), and outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {text!r}") from None


@contextlib.contextmanager
def _process_group(device_name: str) -> Iterator[tuple[torch.device, int, int]]:
    """-> (device, rank, world_size) of this process; a single process is (device, 0, 1).

    Joins an initialised torch.distributed group, or initialises one from torchrun's environment
    (WORLD_SIZE > 1: RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) with nccl on CUDA and gloo on CPU, and
    destroys only a group it started.
    """
    started = False
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    else:
        rank, world_size = 0, _env_int("WORLD_SIZE", 1)
        if world_size > 1:
            if not dist.is_available():
                raise RuntimeError(f"WORLD_SIZE={world_size} but this torch build has no torch.distributed")
            if "RANK" not in os.environ:
                raise ValueError(f"WORLD_SIZE={world_size} but RANK is not set: launch with torchrun, which sets "
                                 "RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT")
            rank = _env_int("RANK", 0)
    if world_size <= 1:
        yield _resolve_device(device_name), 0, 1
        return
    device = _resolve_device(device_name, local_rank=_env_int("LOCAL_RANK", rank))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        started = True
    try:
        yield device, rank, world_size
    finally:
        if started:
            dist.destroy_process_group()


def _from_rank0(value: Any, world_size: int) -> Any:
    """Rank 0's `value` on every rank (so that checks made on rank 0 end every rank the same way)."""
    if world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _mean_over_ranks(values: list[float], device: torch.device, world_size: int) -> list[float]:
    if world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return (tensor / world_size).tolist()


def _broadcast_buffers(module: nn.Module, world_size: int) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
    if world_size > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


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
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
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
                features.append(model(images.to(device, non_blocking=True)).float())
            pids.append(batch_pids)
            camids.append(batch_camids)
    finally:
        model.train(was_training)
    if not features:
        raise ValueError("embed_images: records is empty")
    return torch.cat(features), torch.cat(pids).long(), torch.cat(camids).long()


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
    Under torchrun (or an initialised process group) it runs DDP, every rank calling train() with the same
    arguments; config.batch_p is per rank.
    Returns the metrics written to out_dir/metrics.json ("config", "num_classes", "world_size", "history":
    one entry per epoch with losses (averaged over ranks), lr, fraction of active triplets, per-step losses
    and evaluation when run, "final": the last evaluation) plus "model": the trained model (not in the JSON;
    the plain module, not the DDP wrapper). Every rank returns the same.
    """
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(dataset, ReIDDataset):
        dataset = load_market1501(dataset)
    if not dataset.train:
        raise ValueError(f"dataset {dataset.name!r} has no training images")
    train_pids = [r.pid for r in dataset.train]
    num_classes = max(train_pids) + 1
    if min(train_pids) < 0 or len(set(train_pids)) != num_classes:
        raise ValueError("training pids must be relabelled to 0..P-1 (the dataset loaders do this)")
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


def _train(dataset: ReIDDataset, config: TrainConfig, out_dir: Path, resume: str | os.PathLike | None,
           overwrite: bool, log: Callable[[str], None], model: nn.Module | None, device: torch.device,
           rank: int, world_size: int) -> dict[str, Any]:
    distributed = world_size > 1
    train_pids = [r.pid for r in dataset.train]
    num_classes = max(train_pids) + 1
    checkpoint_path, metrics_path = out_dir / CHECKPOINT_NAME, out_dir / METRICS_NAME
    refusal = None
    if rank == 0:  # only rank 0 writes, so its view of out_dir decides for every rank
        resuming_in_place = resume is not None and Path(resume).resolve() == checkpoint_path.resolve()
        existing = [str(p) for p in (checkpoint_path, metrics_path) if p.exists()]
        if existing and not overwrite and not resuming_in_place:
            refusal = (f"{', '.join(existing)} already exist; pass overwrite=True (--overwrite) to replace them, "
                       f"resume={str(checkpoint_path)!r} to continue that run, or choose another output folder")
    refusal = _from_rank0(refusal, world_size)
    if refusal:
        raise FileExistsError(refusal)
    use_amp = config.amp and device.type == "cuda"

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    builtin_model = model is None
    model = build_model(num_classes, config) if model is None else model
    model.to(device)
    if distributed:  # same initial weights everywhere (seeded above), a different augmentation stream per rank
        torch.manual_seed(_rank_seed(config.seed, rank))
        random.seed(_rank_seed(config.seed, rank))
    id_criterion: nn.Module = (CrossEntropyLabelSmooth(num_classes, config.label_smoothing)
                               if config.label_smoothing > 0 else nn.CrossEntropyLoss())
    triplet_criterion = BatchHardTripletLoss(margin=config.margin, gather_distributed=distributed)
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
        rng_states = checkpoint.get("rng_per_rank") or [checkpoint["rng"]]
        if len(rng_states) == world_size:
            _set_rng_state(rng_states[rank], device)
        else:  # a different number of processes: a valid continuation, but not the same steps
            _set_rng_state(checkpoint["rng"], device)
            if distributed:
                torch.manual_seed(_rank_seed(config.seed + start_epoch, rank))
                random.seed(_rank_seed(config.seed + start_epoch, rank))
            log(f"checkpoint was written by {len(rng_states)} process(es), this run has {world_size}: "
                "training continues, but not bit-exactly as the original run would have")
        log(f"resumed from {resume} at epoch {start_epoch}")
        if start_epoch >= config.epochs:
            log(f"checkpoint already has {start_epoch} epochs >= epochs={config.epochs}: nothing to train")
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    train_model: nn.Module = model
    if distributed:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    batch_size = config.batch_p * config.batch_k
    if distributed:
        sampler: PKSampler = DistributedPKSampler(train_pids, num_instances=config.batch_k, batch_size=batch_size,
                                                  seed=config.seed, num_replicas=world_size, rank=rank)
    else:
        sampler = PKSampler(train_pids, num_instances=config.batch_k, batch_size=batch_size, seed=config.seed)
    loader_generator = torch.Generator()
    padding = round(config.height / 25.6) if config.padding is None else config.padding
    transform = build_transforms(config.height, config.width, train=True, padding=padding, flip_p=config.flip_p,
                                 erasing_p=config.erasing_p)
    loader = DataLoader(ImageDataset(dataset.train, transform), batch_size=batch_size, sampler=sampler,
                        drop_last=True, num_workers=config.num_workers, pin_memory=device.type == "cuda",
                        generator=loader_generator)
    if len(sampler) == 0:
        raise ValueError(f"the P x K sampler yields no batch: fewer than batch_p={config.batch_p}"
                         + (f" x {world_size} processes" if distributed else "")
                         + f" identities have batch_k={config.batch_k} images")

    from tqdm.auto import tqdm

    def run_metrics() -> dict[str, Any]:
        return {"config": config.to_dict(), "num_classes": num_classes, "dataset": dataset.name,
                "world_size": world_size, "history": history, "final": final}

    metrics: dict[str, Any] = {}
    final = history[-1].get("eval") if history else None
    for epoch in range(start_epoch, config.epochs):
        train_model.train()
        sampler.set_epoch(epoch)
        loader_generator.manual_seed(_loader_generator(config.seed, epoch, rank).initial_seed())
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        totals = {"loss": 0.0, "id_loss": 0.0, "triplet_loss": 0.0, "fraction_active": 0.0, "accuracy": 0.0}
        step_losses = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=not config.progress or rank != 0)
        for images, pids, _, _ in bar:
            images = images.to(device, non_blocking=True)
            pids = pids.to(device, non_blocking=True)
            with torch.autocast(device.type, enabled=use_amp):
                logits, features = train_model(images)
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
        # every rank ran the same number of steps (DistributedPKSampler), so the vectors line up
        averaged = _mean_over_ranks([*totals.values(), *step_losses], device, world_size)
        totals = dict(zip(totals, averaged[:len(totals)]))
        step_losses = averaged[len(totals):]
        _broadcast_buffers(model, world_size)
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

        metrics = run_metrics()
        rng = _rng_state(device)
        rng_per_rank = None
        if distributed:
            rng_per_rank = [None] * world_size
            dist.all_gather_object(rng_per_rank, rng)
        if rank == 0:
            checkpoint = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(),
                          "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                          "scaler": scaler.state_dict(), "epoch": epoch + 1, "num_classes": num_classes,
                          "config": json.dumps(config.to_dict()), "builtin_model": builtin_model,
                          "dataset": dataset.name, "world_size": world_size, "history": json.dumps(history),
                          "rng": rng, **({"rng_per_rank": rng_per_rank} if distributed else {})}
            _atomic_write(checkpoint_path, lambda tmp: torch.save(checkpoint, tmp))
            _atomic_write(metrics_path, lambda tmp: tmp.write_text(json.dumps(metrics, indent=2)))

    if distributed:
        dist.barrier()  # rank 0's files exist when any rank returns
    if not metrics:
        metrics = run_metrics()
    return {**metrics, "model": model}


class CheckpointModel(NamedTuple):
    """What load_checkpoint_model returns."""

    model: nn.Module  # the built-in ReIDModel in eval mode, on the requested device
    config: TrainConfig  # the training config, with `device` set to the requested device
    epoch: int  # epochs trained
    num_classes: int  # training identities (size of the ID classifier)
    dataset: str | None  # name of the training dataset


def load_checkpoint_model(path: str | os.PathLike, device: str = "auto") -> CheckpointModel:
    """Rebuild the model saved in a checkpoint.pt written by `train` (the model config is in the checkpoint).

    device: "auto" | "cpu" | "cuda" | "cuda:N". Raises FileNotFoundError for a missing file, ValueError for a
    file that is not a train() checkpoint or whose model is not the built-in one (train(model=...)).
    """
    if not isinstance(device, str) or not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    path = Path(path)
    if path.is_dir():
        hint = f"; did you mean {path / CHECKPOINT_NAME}?" if (path / CHECKPOINT_NAME).is_file() else ""
        raise ValueError(f"checkpoint: {str(path)!r} is a folder, expected a {CHECKPOINT_NAME} file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: {str(path)!r} does not exist (expected a {CHECKPOINT_NAME} written "
                                "by reidfast train)")
    foreign = f"checkpoint: {str(path)!r} is not a checkpoint written by reidfast train"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for foreign files (pickle, zip, weights-only errors)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{foreign} (torch.load failed: {reason[:200]})") from error
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{foreign} (it holds a {type(checkpoint).__name__}, not a dict)")
    missing = [key for key in _CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        raise ValueError(f"{foreign} (missing {', '.join(missing)})")
    if checkpoint.get("format", CHECKPOINT_FORMAT) != CHECKPOINT_FORMAT:
        raise ValueError(f"{foreign} (format {checkpoint['format']!r}, expected {CHECKPOINT_FORMAT!r})")
    if checkpoint.get("builtin_model") is False:
        raise ValueError(f"checkpoint: {str(path)!r} holds a custom model (train(model=...)); rebuild that model "
                         "and load torch.load(path)['model'] into it")
    config = replace(TrainConfig.from_dict(json.loads(checkpoint["config"])), device=device)
    resolved = _resolve_device(device)
    model = build_model(int(checkpoint["num_classes"]), config)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise ValueError(f"checkpoint: {str(path)!r} weights do not fit the built-in model of its config: "
                         f"{str(error).splitlines()[0]}") from error
    model.to(resolved).eval()
    return CheckpointModel(model, config, int(checkpoint["epoch"]), int(checkpoint["num_classes"]),
                           checkpoint.get("dataset"))
