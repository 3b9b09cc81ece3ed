"""Pieces the torchreid and fast-reid layers share: the open-reid batch-hard rule, quiet evaluation, patching."""
from __future__ import annotations

import importlib
import sys
import warnings
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..ops.evaluation import RankingResult, evaluate
from ..ops.triplet import batch_hard_triplet_loss


def open_reid_batch_hard_terms(
    embeddings: torch.Tensor, targets: torch.Tensor, margin: float | str, metric: str = "euclidean", normalize: bool = False
) -> tuple[torch.Tensor, Any]:
    """Per-anchor terms (B,) of the open-reid batch-hard rule torchreid and fast-reid use, and the mining details.

    There the hardest positive is the largest distance among the anchor's own label *including the anchor
    itself*, so an anchor without another positive keeps its distance to itself (about 0), and the mean runs
    over every anchor. That is reidfast's loss with the batch passed as explicit candidates and no self
    exclusion (anchor_index -1): the anchor is its own candidate of its label.
    """
    no_self = torch.full((embeddings.shape[0],), -1, dtype=torch.int64, device=embeddings.device)
    return batch_hard_triplet_loss(
        embeddings, targets, margin=margin, metric=metric, normalize=normalize, reduction="none",
        candidates=embeddings, candidate_labels=targets, anchor_index=no_self, return_details=True,
    )


def evaluate_quietly(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int, use_metric_cuhk03: bool) -> RankingResult:
    """reidfast.evaluate without its skipped-query warning (the originals skip such queries silently).

    CUHK03: the originals draw with numpy's global generator; so that np.random.seed(...) makes a run
    repeatable here too, the draws' seed is taken from that generator.
    """
    protocol = "cuhk03" if use_metric_cuhk03 else "market1501"
    seed = int(np.random.randint(2**31 - 1)) if use_metric_cuhk03 else 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*queries have no valid gallery match")
        return evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank, protocol=protocol, seed=seed)


def as_numpy_result(distmat: Any) -> np.ndarray:
    """The originals' re_ranking returns numpy whatever it was given: a torch result comes back as numpy."""
    if isinstance(distmat, torch.Tensor):
        return distmat.detach().cpu().numpy()
    return distmat


@dataclass
class PatchHandle:
    """What patch() replaced; undo() (or leaving a `with` block) puts the originals back.

    patched: "module.attribute" names replaced, in order.
    """

    _saved: list[tuple[ModuleType, str, Any]] = field(default_factory=list)

    @property
    def patched(self) -> list[str]:
        return [f"{module.__name__}.{name}" for module, name, _ in self._saved]

    def undo(self) -> None:
        """Restore every replaced attribute (last replaced first); a second call does nothing."""
        while self._saved:
            module, name, original = self._saved.pop()
            setattr(module, name, original)

    def __enter__(self) -> "PatchHandle":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.undo()


def patch_attributes(
    package: str, definitions: Sequence[tuple[str, str, Callable[..., Any]]], consumers: Sequence[tuple[str, str, Callable[..., Any]]]
) -> PatchHandle:
    """Replace attributes in an installed package's modules -> PatchHandle.

    definitions: (module, attribute, replacement) where the originals are defined or re-exported; those
    modules are imported (ones that do not exist in the installed version are skipped). consumers: modules
    that bound a name at their own import (`from x import f`); patched only when already imported, since a
    later import binds the replacement from the patched definition. Raises ImportError naming the package
    when it cannot be imported, and when none of the attributes exists.
    """
    try:
        importlib.import_module(package)
    except ImportError as error:
        raise ImportError(f"patch(): {package} is not importable here ({error}); install it, or call "
                          f"reidfast.integrations.{package}'s functions directly") from error
    handle = PatchHandle()
    for module_name, attribute, replacement in definitions:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        _replace(handle, module, attribute, replacement)
    for module_name, attribute, replacement in consumers:
        module = sys.modules.get(module_name)
        if module is not None:
            _replace(handle, module, attribute, replacement)
    if not handle._saved:
        raise ImportError(f"patch(): found none of {sorted({a for _, a, _ in definitions})} in the installed {package}")
    return handle


def _replace(handle: PatchHandle, module: ModuleType, attribute: str, replacement: Callable[..., Any]) -> None:
    if hasattr(module, attribute) and getattr(module, attribute) is not replacement:
        handle._saved.append((module, attribute, getattr(module, attribute)))
        setattr(module, attribute, replacement)
