"""Ratio tables from a pytest-benchmark JSON file: each provider against the reference of the same run.

    python benchmarks/report.py bench.json [--markdown]

speedup = reference median time / provider median time (> 1: faster than the reference);
peak memory is the extra memory of one call (see benchmarks/conftest.py).
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict


def load_rows(path: str) -> list[dict]:
    with open(path) as handle:
        data = json.load(handle)
    rows = []
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        if "provider" not in info:
            continue
        rows.append({**info, "median_s": bench["stats"]["median"], "iqr_s": bench["stats"]["iqr"]})
    return rows


def table(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["op"], row["device"], row["shape"])].append(row)
    lines = [
        "| op | device | shape | provider | median ms | speedup vs reference | peak MiB |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for (op, device, shape), members in groups.items():
        reference = next((r for r in members if r["provider"] == "reference"), None)
        for row in sorted(members, key=lambda r: r["median_s"]):
            speedup = f"{reference['median_s'] / row['median_s']:.2f}x" if reference else "n/a"
            memory = row.get("peak_memory_bytes")
            memory_text = f"{memory / 2**20:.1f}" if memory is not None else "n/a"
            lines.append(
                f"| {op} | {device} | {shape} | {row['provider']} | {row['median_s'] * 1e3:.2f} | {speedup} | {memory_text} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_file", help="output of pytest --benchmark-json")
    args = parser.parse_args()
    print(table(load_rows(args.json_file)))


if __name__ == "__main__":
    main()
