"""Ratio tables from a pytest-benchmark JSON file: each provider against the reference of the same run.

    python benchmarks/report.py bench.json [--markdown]

speedup = reference median time / provider median time (> 1: faster than the reference);
peak memory is the extra memory of one call (see benchmarks/conftest.py).
A second table puts the CPU backend's product paths (AVX-512 and AVX2 micro-kernels, BLAS) side by side for
each op and shape, against the baseline (the torch formula where the suite has one, else the reference) and
the floor (one bare matmul), with "not available on this CPU" for a path the CPU lacks.
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


CPU_PATHS = ("avx512", "avx2", "blas")
BASELINES = ("torch_formula", "reference")  # the first one a group has
FLOORS = ("gram_matmul", "matmul")


def cpu_paths_table(rows: list[dict]) -> str:
    """One row per (op, CPU, shape): each product path's median, its speedup over the baseline and its time
    in units of the floor."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["op"], row["device"], row["shape"])].append(row)
    lines = [
        "| op | device | shape | " + " | ".join(CPU_PATHS) + " | baseline | floor |",
        "|---|---|---|" + "---:|" * (len(CPU_PATHS) + 2),
    ]
    for (op, device, shape), members in groups.items():
        by_path = {r["cpu_path"]: r for r in members if r.get("cpu_path")}
        if not by_path:
            continue
        available = set(next(iter(by_path.values())).get("cpu_paths_available", [])) | {"blas"}
        baseline = next((r for name in BASELINES for r in members if r["provider"] == name), None)
        floor = next((r for name in FLOORS for r in members if r["provider"] == name), None)
        cells = []
        for path in CPU_PATHS:
            row = by_path.get(path)
            if row is None:
                cells.append("not measured" if path in available else "not available on this CPU")
                continue
            text = f"{row['median_s'] * 1e3:.2f} ms"
            if baseline:
                text += f", {baseline['median_s'] / row['median_s']:.2f}x"
            if floor:
                text += f", {row['median_s'] / floor['median_s']:.2f} floors"
            cells.append(text)
        baseline_text = f"{baseline['provider']} {baseline['median_s'] * 1e3:.2f} ms" if baseline else "n/a"
        floor_text = f"{floor['provider']} {floor['median_s'] * 1e3:.2f} ms" if floor else "n/a"
        lines.append(f"| {op} | {device} | {shape} | " + " | ".join(cells) + f" | {baseline_text} | {floor_text} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_file", help="output of pytest --benchmark-json")
    args = parser.parse_args()
    rows = load_rows(args.json_file)
    print(table(rows))
    paths = cpu_paths_table(rows)
    if paths:
        print("\nCPU product paths side by side (x: speedup over the baseline; floors: time / floor time):\n")
        print(paths)


if __name__ == "__main__":
    main()
