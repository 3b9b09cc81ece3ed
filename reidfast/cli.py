"""The `reidfast` command."""
from __future__ import annotations

import argparse
import platform
import sys
from typing import Sequence


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reidfast", description="Fast person re-identification kernels and tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="version, backends (what is built and usable, and why not), build facts")
    info.set_defaults(run=_info)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
