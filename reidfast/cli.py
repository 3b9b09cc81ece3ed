"""The `reidfast` command."""
from __future__ import annotations

import argparse
import platform
import sys
from dataclasses import replace
from typing import Sequence


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _info(_: argparse.Namespace) -> int:
    import torch

    import reidfast

    print(f"reidfast {reidfast.__version__}  (python {platform.python_version()}, torch {torch.__version__})")
    print("\nbackends:")
    print(reidfast.backends())
    build = reidfast.build_info()
    if build:
        print("\nnative module build:")
        for key, value in build.items():
            print(f"  {key}: {value}")
    if build.get("cuda"):
        _print_gpu_coverage()
    return 0


def _print_gpu_coverage() -> None:
    """The compiled SMs and PTX, the drivers they need, and whether this machine's GPU is covered."""
    from reidfast import _native

    coverage = _native.cuda_device_coverage()
    runtime = coverage.runtime_version
    print("\nCUDA kernels:")
    print(f"  machine code: {' '.join(f'sm_{sm}' for sm in coverage.machine_code) or 'none'}")
    print(f"  PTX (JIT-compiled for newer GPUs): {' '.join(f'compute_{v}' for v in coverage.ptx) or 'none'}")
    if runtime:
        print(f"  needs a driver for CUDA {_native.format_cuda_version(runtime // 1000 * 1000)} or newer "
              f"(CUDA {_native.format_cuda_version(runtime)} runtime, linked statically)")
    driver = _native.format_cuda_version(coverage.driver_version) if coverage.driver_version else "none found"
    capability = ".".join(map(str, coverage.device_capability)) if coverage.device_capability else "none visible to torch"
    print(f"  this GPU: compute capability {capability}; driver supports CUDA {driver}")
    verdict = f"covered by {coverage.covered_by}" if coverage.usable else "not used"
    print(f"  {verdict}: {coverage.reason}")


def _demo(args: argparse.Namespace) -> int:
    from reidfast._optional import require

    for module in ("PIL", "matplotlib", "sklearn"):  # fail before the dataset is written, not after training
        require(module, "reidfast demo")
    from reidfast.demo import DEMO_DATASET, run_demo
    from reidfast.train import _resolve_device

    try:
        _resolve_device(args.device)
    except RuntimeError as error:  # e.g. --device cuda without CUDA: an argument error, not a crash
        raise ValueError(f"--device: {error}") from error
    dataset = replace(DEMO_DATASET, **{name: getattr(args, name) for name in ("num_train_ids", "num_test_ids")
                                       if getattr(args, name) is not None})
    run_demo(args.out, epochs=args.epochs, device=args.device, seed=args.seed, data=args.data,
             overwrite=args.overwrite, progress=not args.quiet, dataset=dataset)
    return 0


LAYOUTS = ("market1501", "dukemtmc", "cuhk03-labeled", "cuhk03-detected", "msmt17", "folder")


def load_layout(root: str, layout: str):
    """The dataset at `root` in one of LAYOUTS (reidfast.data loaders)."""
    from reidfast import data

    loaders = {
        "market1501": data.load_market1501,
        "dukemtmc": data.load_dukemtmc,
        "cuhk03-labeled": lambda r: data.load_cuhk03_np(r, labeled=True),
        "cuhk03-detected": lambda r: data.load_cuhk03_np(r, labeled=False),
        "msmt17": data.load_msmt17,
        "folder": data.load_folder,
    }
    if layout not in loaders:
        raise ValueError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    return loaders[layout](root)


def _eda(args: argparse.Namespace) -> int:
    from pathlib import Path

    from reidfast.eda import dataset_statistics, write_eda_report

    dataset = load_layout(args.root, args.layout)
    splits = {"train": dataset.train, "query": dataset.query, "gallery": dataset.gallery}
    stats = dataset_statistics(**splits)
    out = Path(args.out)
    written = write_eda_report(stats, out, splits, overwrite=args.overwrite)
    print(dataset.summary())
    print(f"\nEDA report written to {out}: {', '.join(sorted(written))}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from reidfast.train import TrainConfig, is_main_process, train

    dataset = load_layout(args.data, args.layout)
    overrides = {name: getattr(args, name) for name in ("epochs", "batch_p", "batch_k", "lr", "height", "width",
                                                        "device", "seed", "eval_every") if getattr(args, name) is not None}
    try:
        config = replace(TrainConfig(), **overrides)
    except (TypeError, ValueError) as error:
        raise ValueError(str(error)) from error
    result = train(dataset, config, args.out, resume=args.resume, overwrite=args.overwrite)
    if not is_main_process():  # under torchrun only rank 0 reports
        return 0
    final = result.get("final") or {}
    ranking = final.get("ranking") or {}
    if ranking:
        print(f"final: mAP {ranking.get('mAP', float('nan')):.1%}  rank-1 {ranking.get('rank1', float('nan')):.1%}")
    print(f"checkpoint and metrics.json in {args.out}")
    return 0


def _nan_to_none(value):
    """Strict-JSON copy: NaN (e.g. rank-10 with --max-rank < 10) becomes None (null)."""
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(item) for item in value]
    return None if isinstance(value, float) and value != value else value


def _eval(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    from reidfast.evaluation import ranking_table
    from reidfast.train import _atomic_write, _to_python, evaluate_model, load_checkpoint_model

    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.overwrite:
        raise FileExistsError(f"--out {str(out)!r} already exists; pass --overwrite to replace it")
    dataset = load_layout(args.data, args.layout)
    if not dataset.query or not dataset.gallery:
        raise ValueError(f"--data {args.data!r} ({args.layout} layout) has {len(dataset.query)} query and "
                         f"{len(dataset.gallery)} gallery images; evaluation needs both")
    loaded = load_checkpoint_model(args.checkpoint, device=args.device)
    started = time.perf_counter()
    result = evaluate_model(loaded.model, dataset, loaded.config, rerank=args.rerank, batch_size=args.batch_size,
                            max_rank=args.max_rank, protocol=args.protocol, k1=args.k1, k2=args.k2,
                            lambda_value=args.lambda_value)
    seconds = time.perf_counter() - started
    print(f"{args.checkpoint}: {loaded.epoch} epochs on {loaded.dataset or 'unknown data'}; "
          f"{result.num_query} queries x {result.num_gallery} gallery images of {dataset.name} "
          f"({args.protocol} protocol), {seconds:.1f}s")
    rows = [("euclidean distance", result.ranking)]
    if result.reranked is not None:
        rows.append((f"+ re-ranking (k1={args.k1}, k2={args.k2})", result.reranked))
    print(ranking_table(rows))
    if out is not None:
        report = {"checkpoint": str(args.checkpoint), "epoch": loaded.epoch, "data": str(args.data),
                  "layout": args.layout, "dataset": dataset.name, "protocol": args.protocol,
                  "max_rank": args.max_rank,
                  "rerank": {"k1": args.k1, "k2": args.k2, "lambda_value": args.lambda_value} if args.rerank else None,
                  **_to_python(result.to_dict())}
        out.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(out, lambda tmp: tmp.write_text(json.dumps(_nan_to_none(report), indent=2, allow_nan=False)))
        print(f"metrics written to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reidfast", description="Fast person re-identification kernels and tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="version, backends (what is built and usable, and why not), build facts")
    info.set_defaults(run=_info)
    demo = commands.add_parser(
        "demo", help="the main job: synthetic images -> EDA -> train -> evaluate (+ re-ranking) -> pictures",
        description="Generate (or reuse) the synthetic re-ID image dataset, write an EDA report, evaluate the "
                    "untrained model, train it (ID + fused triplet loss), evaluate with and without k-reciprocal "
                    "re-ranking, compute verification metrics, draw CMC curves, a ranked-results grid and a "
                    "t-SNE, and write summary.md and metrics.json into --out.")
    demo.add_argument("--out", default="reidfast-demo", help="output folder (default ./reidfast-demo)")
    demo.add_argument("--epochs", type=_positive_int, help="training epochs (default 30)")
    demo.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the dataset, model and training (default 0)")
    demo.add_argument("--data", help="synthetic dataset folder (default OUT/data; reused when it holds the same dataset)")
    demo.add_argument("--train-ids", dest="num_train_ids", type=_positive_int,
                      help="training identities of the synthetic dataset (default 800)")
    demo.add_argument("--test-ids", dest="num_test_ids", type=_positive_int,
                      help="test identities of the synthetic dataset (default 100)")
    demo.add_argument("--overwrite", action="store_true", help="replace the output of an earlier demo in --out")
    demo.add_argument("--quiet", action="store_true", help="no per-epoch log or progress bars")
    demo.set_defaults(run=_demo)
    eda = commands.add_parser("eda", help="statistics, a markdown report and plots of a re-ID dataset folder")
    eda.add_argument("root", help="dataset folder (e.g. the one holding bounding_box_train/ for Market-1501)")
    eda.add_argument("--layout", choices=LAYOUTS, default="market1501", help="folder layout (default market1501)")
    eda.add_argument("--out", default="eda", help="output folder for report.md and the PNGs (default ./eda)")
    eda.add_argument("--overwrite", action="store_true", help="replace report files that already exist")
    eda.set_defaults(run=_eda)
    train = commands.add_parser("train", help="train the built-in re-ID model on a dataset folder (reidfast.train)")
    train.add_argument("--data", required=True, help="dataset folder")
    train.add_argument("--layout", choices=LAYOUTS, default="market1501", help="folder layout (default market1501)")
    train.add_argument("--out", default="runs/reidfast", help="output folder for checkpoint.pt and metrics.json")
    train.add_argument("--resume", help="checkpoint.pt to continue from")
    train.add_argument("--overwrite", action="store_true", help="replace an earlier run's files in --out")
    for name, kind in (("epochs", int), ("batch_p", int), ("batch_k", int), ("lr", float), ("height", int),
                       ("width", int), ("seed", int), ("eval_every", int)):
        train.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, help="see reidfast.train.TrainConfig")
    train.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    train.set_defaults(run=_train)
    evaluate = commands.add_parser("eval", help="evaluate a reidfast train checkpoint on a dataset's query/gallery")
    evaluate.add_argument("--data", required=True, help="dataset folder")
    evaluate.add_argument("--layout", choices=LAYOUTS, default="market1501", help="folder layout (default market1501)")
    evaluate.add_argument("--checkpoint", required=True, help="checkpoint.pt written by reidfast train")
    evaluate.add_argument("--rerank", action="store_true", help="also report k-reciprocal re-ranked metrics")
    evaluate.add_argument("--k1", type=_positive_int, default=20, help="re-ranking k1 (default 20)")
    evaluate.add_argument("--k2", type=_positive_int, default=6, help="re-ranking k2 (default 6)")
    evaluate.add_argument("--lambda-value", dest="lambda_value", type=float, default=0.3,
                          help="re-ranking weight of the original distance, in [0, 1] (default 0.3)")
    evaluate.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    evaluate.add_argument("--batch-size", dest="batch_size", type=_positive_int, default=128,
                          help="images per forward pass (default 128)")
    evaluate.add_argument("--max-rank", dest="max_rank", type=_positive_int, default=50,
                          help="length of the CMC curve (default 50)")
    evaluate.add_argument("--protocol", choices=("market1501", "cuhk03"), default="market1501",
                          help="evaluation protocol (default market1501; cuhk03: single-shot gallery sampling)")
    evaluate.add_argument("--out", help="write the metrics as JSON to this file")
    evaluate.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    evaluate.set_defaults(run=_eval)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (FileExistsError, FileNotFoundError, NotADirectoryError, ValueError, ImportError) as error:
        parser.exit(2, f"reidfast {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
