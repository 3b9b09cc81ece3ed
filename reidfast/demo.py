"""`reidfast demo`: the whole library on the built-in synthetic image dataset, end to end, in minutes on a CPU.

    reidfast demo --out reidfast-demo            # or: from reidfast.demo import run_demo; run_demo("reidfast-demo")

Stages (each timed):

1. data: `make_synthetic_reid` writes a Market-1501-layout dataset (800 training identities, 100 test
   identities, 6 cameras, 64 x 32 JPEGs, long-tailed images per identity, junk and distractor images), or
   reuses the one already in `<out>/data` (or `--data DIR`) when it was made with the same parameters;
2. EDA: `dataset_statistics` + `write_eda_report` -> `<out>/eda/` (report.md and plots);
3. baseline: the untrained `ReIDModel` (same seed as training) evaluated with the Market-1501 protocol;
4. training: `reidfast.train.train` (label-smoothed ID loss + the fused batch-hard triplet loss, P x K
   sampler, Adam with warm-up and step decay) -> `<out>/train/` (checkpoint.pt, metrics.json);
5. evaluation of the trained model: CMC / mAP / mINP with and without k-reciprocal re-ranking, and pair
   verification metrics (ROC AUC, TPR at fixed FPR, best-F1 threshold);
6. pictures: `cmc.png` (untrained, trained, trained + re-ranking), `ranked_results.png` (top-10 gallery
   images of some queries, green = same identity, red = another, grey = ignored by the protocol) and
   `tsne.png` (t-SNE of the test embeddings);
7. `summary.md` and `metrics.json` in `<out>`, and the table on the terminal.

Re-ranking uses k1 = 10, k2 = 2, lambda = 0.3 here: the synthetic gallery holds ~4 images per identity, so
the neighbourhoods must stay small for the k-reciprocal sets to be meaningful (the paper's k1 = 20, k2 = 6 are
for Market-1501's ~14 gallery images per identity; with them, re-ranking lowers mAP on this gallery). In a
sweep on one trained demo model (k1 4-10, k2 1-3, lambda 0.3/0.5), k2 = 2 raised mAP for every k1, while k2 = 3
fell below plain ranking for k1 >= 8.

Nothing the user owns is overwritten: if any file the demo would write already exists in `<out>`, it stops
before doing any work unless `overwrite=True` (`--overwrite`). The dataset folder is reused, never replaced.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from .data import ReIDDataset, load_market1501, make_synthetic_reid
from .eda import REPORT_FILES, dataset_statistics, write_eda_report
from .evaluation import EvaluatorResult, ReIDEvaluator, ranking_table
from .ops.evaluation import evaluate
from .ops.rerank import re_ranking
from .train import CHECKPOINT_NAME, METRICS_NAME, TrainConfig, _resolve_device, build_model, embed_images, train
from .viz import plot_cmc, plot_ranked_results, plot_tsne

__all__ = ["DemoDataset", "DEMO_DATASET", "DEMO_TRAIN_CONFIG", "DEMO_RERANK", "demo_output_files", "run_demo"]


@dataclass(frozen=True)
class DemoDataset:
    """Parameters of `make_synthetic_reid` for the demo."""

    num_train_ids: int = 800
    num_test_ids: int = 100
    num_cameras: int = 6
    image_size: tuple[int, int] = (64, 32)  # (height, width)


DEMO_DATASET = DemoDataset()
# Sized for the 5-minute promise on a 2-core AVX2 CPU (see README for the measured figures): the training
# images decoded once and augmented by batch (TrainConfig.image_cache), a channels_last model of base width
# 24 (its convolutions cost (24/32)^2 of width 32's), and 30 epochs: 3 of warm-up, lr / 10 after epoch 22.
DEMO_TRAIN_CONFIG = TrainConfig(
    epochs=30, batch_p=16, batch_k=4, lr=1e-3, warmup_epochs=3, milestones=(22,), eval_every=0,
    height=DEMO_DATASET.image_size[0], width=DEMO_DATASET.image_size[1], model_width=24,
)
DEMO_RERANK = {"k1": 10, "k2": 2, "lambda_value": 0.3}
PICTURES = ("cmc.png", "ranked_results.png", "tsne.png")
SUMMARY_NAME, DEMO_METRICS_NAME = "summary.md", "metrics.json"


def demo_output_files(out: Path) -> list[Path]:
    """Every file `run_demo(out)` writes (the dataset folder aside)."""
    return ([out / SUMMARY_NAME, out / DEMO_METRICS_NAME] + [out / name for name in PICTURES]
            + [out / "eda" / name for name in (*REPORT_FILES, "examples.png")]
            + [out / "train" / CHECKPOINT_NAME, out / "train" / METRICS_NAME])


@dataclass
class _Evaluation:
    result: EvaluatorResult
    query_features: torch.Tensor
    gallery_features: torch.Tensor
    labels: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # q_pids, g_pids, q_camids, g_camids


def _evaluate(model: torch.nn.Module, dataset: ReIDDataset, config: TrainConfig, verification: bool,
              seed: int) -> _Evaluation:
    query_features, q_pids, q_camids = embed_images(model, dataset.query, config, batch_size=256)
    gallery_features, g_pids, g_camids = embed_images(model, dataset.gallery, config, batch_size=256)
    evaluator = ReIDEvaluator(verification=verification, seed=seed)
    evaluator.update(query_features, q_pids, q_camids, is_query=True)
    evaluator.update(gallery_features, g_pids, g_camids, is_query=False)
    return _Evaluation(evaluator.compute(), query_features, gallery_features, (q_pids, g_pids, q_camids, g_camids))


def _write_json_atomically(path: Path, value: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=2))
    temporary.replace(path)


def run_demo(out: str | Path = "reidfast-demo", *, epochs: int | None = None, device: str = "auto",
             seed: int = 0, data: str | Path | None = None, overwrite: bool = False, progress: bool = True,
             dataset: DemoDataset = DEMO_DATASET, config: TrainConfig | None = None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo into folder `out`; returns the metrics written to `<out>/metrics.json`.

    epochs, device ("auto" | "cpu" | "cuda" | "cuda:N"), seed: override the training settings
    (DEMO_TRAIN_CONFIG, or `config`). data: the synthetic dataset folder (default `<out>/data`; reused when
    it holds the same dataset). dataset: the synthetic dataset's parameters (tests use a smaller one).
    """
    started = time.perf_counter()
    out = Path(out)
    config = replace(config or DEMO_TRAIN_CONFIG, seed=seed, device=device, progress=progress,
                     **({"epochs": epochs} if epochs is not None else {}))
    existing = [str(p) for p in demo_output_files(out) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"--out: {out} already holds demo output ({', '.join(existing[:4])}"
                              f"{', ...' if len(existing) > 4 else ''}); pass --overwrite to replace it or "
                              "choose another folder")
    data_root = Path(data) if data is not None else out / "data"
    seconds: dict[str, float] = {}

    def stage(name: str, since: float) -> float:
        now = time.perf_counter()
        seconds[name] = now - since
        return now

    now = time.perf_counter()
    made = make_synthetic_reid(data_root, num_train_ids=dataset.num_train_ids, num_test_ids=dataset.num_test_ids,
                               num_cameras=dataset.num_cameras, seed=seed, image_size=dataset.image_size)
    data_set = load_market1501(data_root)
    log(f"[1/7] data: {'reused' if made['reused'] else 'wrote'} the synthetic dataset in {data_root}")
    log("      " + data_set.summary().replace("\n", "\n      "))
    now = stage("data", now)

    splits = {"train": data_set.train, "query": data_set.query, "gallery": data_set.gallery}
    statistics = dataset_statistics(**splits, seed=seed)
    write_eda_report(statistics, out / "eda", splits, overwrite=overwrite, title="Synthetic re-ID dataset")
    log(f"[2/7] EDA report: {out / 'eda' / 'report.md'}")
    now = stage("eda", now)

    num_classes = data_set.num_train_pids
    torch.manual_seed(config.seed)
    untrained_model = build_model(num_classes, config)  # the same initial weights train() starts from
    device = _resolve_device(config.device)
    untrained_model.to(device)
    untrained = _evaluate(untrained_model, data_set, config, verification=False, seed=seed)
    del untrained_model
    log(f"[3/7] untrained model: mAP {untrained.result.mAP:.1%}, rank-1 {untrained.result.rank1:.1%}")
    now = stage("baseline", now)

    log(f"[4/7] training {config.epochs} epochs on {device} ({num_classes} identities, "
        f"{len(data_set.train)} images, {config.batch_p} x {config.batch_k} batches)")
    trained = train(data_set, config, out / "train", overwrite=overwrite, log=log if progress else None)
    model = trained["model"]
    now = stage("train", now)

    final = _evaluate(model, data_set, config, verification=True, seed=seed)
    # Re-ranked once, here: its distances also draw the ranked-results grid.
    reranked_distances = re_ranking(final.query_features, final.gallery_features, **DEMO_RERANK)
    result = replace(final.result, reranked=evaluate(reranked_distances, *final.labels, seed=seed))
    log(f"[5/7] trained model: mAP {result.mAP:.1%}; with re-ranking {result.reranked.mAP:.1%}")
    now = stage("evaluate", now)

    _draw_pictures(out, data_set, untrained.result, final, result, reranked_distances, seed)
    log(f"[6/7] pictures: {', '.join(str(out / name) for name in PICTURES)}")
    now = stage("pictures", now)

    seconds["total"] = time.perf_counter() - started
    return _write_summary(out, data_set, dataset, data_root, config, device, untrained.result, result, trained,
                          seconds, log)


def _draw_pictures(out: Path, data_set: ReIDDataset, untrained: EvaluatorResult, final: _Evaluation,
                   result: EvaluatorResult, reranked_distances: torch.Tensor, seed: int) -> None:
    """Stage 6: the CMC curves, the ranked-results grid (re-ranked) and the t-SNE of the test embeddings."""
    curves = {"untrained": untrained.cmc, "trained": result.cmc, "trained + re-ranking": result.reranked.cmc}
    plot_cmc(curves, out / "cmc.png", title="CMC on the synthetic test set")
    plot_ranked_results([r.path for r in data_set.query], [r.path for r in data_set.gallery], reranked_distances,
                        *final.labels, out / "ranked_results.png", topk=10, num_queries=8, cell_size=(64, 32))
    test_features = torch.cat([final.query_features, final.gallery_features]).cpu()
    test_pids = torch.cat(final.labels[:2])
    people = test_pids > 0  # t-SNE of the test identities (junk and distractors left out)
    plot_tsne(test_features[people], test_pids[people], out / "tsne.png", seed=seed,
              title="t-SNE of test embeddings")


def _write_summary(out: Path, data_set: ReIDDataset, dataset: DemoDataset, data_root: Path, config: TrainConfig,
                   device: torch.device, untrained: EvaluatorResult, result: EvaluatorResult,
                   trained: dict[str, Any], seconds: dict[str, float],
                   log: Callable[[str], None]) -> dict[str, Any]:
    """Stage 7: `<out>/metrics.json` and `<out>/summary.md`, and the table on the terminal; returns the metrics."""
    num_classes = data_set.num_train_pids
    rows = [("untrained model", untrained), ("trained", result),
            (f"trained + re-ranking (k1={DEMO_RERANK['k1']}, k2={DEMO_RERANK['k2']})", result.reranked)]
    verification = result.verification
    table = ranking_table(rows)
    verification_line = (f"verification (trained, {verification.num_positive_pairs} positive / "
                         f"{verification.num_negative_pairs} negative pairs): ROC AUC {verification.roc_auc:.1%}, "
                         f"TPR@FPR=1e-2 {verification.tpr_at_fpr.get(1e-2, float('nan')):.1%}, "
                         f"F1 {verification.f1:.1%} at distance <= {verification.threshold:.3g}")
    timing_line = ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items())
    metrics = {
        "dataset": {**asdict(dataset), "root": str(data_root), "num_train_images": len(data_set.train),
                    "num_query": len(data_set.query), "num_gallery": len(data_set.gallery)},
        "config": config.to_dict(), "rerank": DEMO_RERANK,
        "untrained": untrained.to_dict(), "trained": result.to_dict(),
        "final_train_loss": trained["history"][-1]["loss"] if trained["history"] else None,
        "first_train_loss": trained["history"][0]["loss"] if trained["history"] else None,
        "seconds": seconds, "torch": torch.__version__,
    }
    _write_json_atomically(out / DEMO_METRICS_NAME, metrics)
    summary = "\n".join([
        "# reidfast demo", "",
        f"Synthetic dataset: {len(data_set.train)} training images of {num_classes} identities; "
        f"{len(data_set.query)} queries and {len(data_set.gallery)} gallery images (with junk and distractors), "
        f"{dataset.num_cameras} cameras, {dataset.image_size[0]} x {dataset.image_size[1]} pixels. "
        f"Training: {config.epochs} epochs on {device}, seed {config.seed}.", "",
        table, "", verification_line, "", f"Time: {timing_line}.", "",
        "![CMC](cmc.png)", "", "![ranked results](ranked_results.png)", "", "![t-SNE](tsne.png)", "",
        "EDA report: [eda/report.md](eda/report.md). Training log: [train/metrics.json](train/metrics.json).", "",
    ])
    (out / SUMMARY_NAME).write_text(summary)
    log(f"[7/7] {out / SUMMARY_NAME}, {out / DEMO_METRICS_NAME}\n")
    log(table)
    log(verification_line)
    log(f"time: {timing_line}")
    return metrics
