"""The `reidfast` command."""
from __future__ import annotations

import argparse
import platform
import sys
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
    return 0


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from reidfast.demo import run_demo

    run_demo(seed=args.seed, num_ids=args.ids, out=Path(args.out) if args.out else None, overwrite=args.overwrite)
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
    from dataclasses import replace

    from reidfast.train import TrainConfig, train

    dataset = load_layout(args.data, args.layout)
    overrides = {name: getattr(args, name) for name in ("epochs", "batch_p", "batch_k", "lr", "height", "width",
                                                        "device", "seed", "eval_every") if getattr(args, name) is not None}
    try:
        config = replace(TrainConfig(), **overrides)
    except (TypeError, ValueError) as error:
        raise ValueError(str(error)) from error
    result = train(dataset, config, args.out, resume=args.resume, overwrite=args.overwrite)
    final = result.get("final") or {}
    ranking = final.get("ranking") or {}
    if ranking:
        print(f"final: mAP {ranking.get('mAP', float('nan')):.1%}  rank-1 {ranking.get('rank1', float('nan')):.1%}")
    print(f"checkpoint and metrics.json in {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reidfast", description="Fast person re-identification kernels and tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="version, backends (what is built and usable, and why not), build facts")
    info.set_defaults(run=_info)
    demo = commands.add_parser("demo", help="rank, evaluate and re-rank a synthetic re-ID embedding set")
    demo.add_argument("--seed", type=int, default=0, help="random seed of the synthetic set (default 0)")
    demo.add_argument("--ids", type=_positive_int, default=300, help="number of identities (default 300)")
    demo.add_argument("--out", help="write the metrics as JSON to this file")
    demo.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
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
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (FileExistsError, FileNotFoundError, NotADirectoryError, ValueError) as error:
        parser.exit(2, f"reidfast {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
