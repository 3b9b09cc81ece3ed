"""What `reidfast.train` writes and reads back: checkpoint.pt / metrics.json, RNG states, the built-in model."""
from __future__ import annotations

import json
import os
import random
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from .models import ReIDModel
from .train_config import TrainConfig, _resolve_device

__all__ = ["CHECKPOINT_NAME", "METRICS_NAME", "CheckpointModel", "build_model", "load_checkpoint_model"]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"
CHECKPOINT_FORMAT = "reidfast.train"
_CHECKPOINT_KEYS = ("model", "config", "num_classes", "epoch")


def build_model(num_classes: int, config: TrainConfig) -> ReIDModel:
    """The built-in ReIDModel for `config` (seed the RNG first for reproducible weights)."""
    return ReIDModel(num_classes, width=config.model_width, layers=config.model_layers,
                     last_stride=config.last_stride, image_size=(config.height, config.width))


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
