"""The synthetic Market-1501-layout generator: wall-clock time of a tiny and of the default dataset (README
promises "well under a minute" on 2 cores). The correctness tests (tests/test_synthetic.py) assert nothing
about time; this records it, with the machine in extra_info.

    python -m pytest benchmarks/test_bench_synthetic.py --benchmark-json=synthetic.json
    python benchmarks/report.py synthetic.json

There is no reference generator: the report's speedup column reads n/a and the median is the figure.
"""
from __future__ import annotations

import itertools

import pytest

from reidfast.data.synthetic import make_synthetic_reid

SIZES = {
    "tiny": dict(num_train_ids=5, num_test_ids=5, num_cameras=2, image_size=(32, 16)),
    "default": {},  # 100 + 100 identities, 6 cameras, 128 x 64 images
}


@pytest.mark.parametrize("size", SIZES)
def test_make_synthetic_reid(run_benchmark, tmp_path, size):
    folders = itertools.count()  # a fresh folder per call: a second call on one folder reuses its files
    run_benchmark("make_synthetic_reid", "reidfast", "cpu", size,
                  lambda: make_synthetic_reid(tmp_path / str(next(folders)), **SIZES[size]))
