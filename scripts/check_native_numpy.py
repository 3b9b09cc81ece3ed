"""Checks an installed reidfast._C with numpy only: a distance kernel and a top-k kernel against numpy.

`_C` links no libtorch, so it loads and runs without torch: this is the check of wheels for Pythons that have
no torch here, and of the source package built without torch (tests/test_packaging.py). The package's
__init__ (which imports torch) is not run: `_C` is loaded from its file. Prints the build facts and "ok".

    python scripts/check_native_numpy.py
"""
from __future__ import annotations

import glob
import importlib.util
import os
import sys

import numpy as np

_DTYPE_CODES = {np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(np.int64): 5}  # csrc/common/array.h
EUCLIDEAN = 0


def load_native():
    """The installed reidfast._C module, loaded without importing the reidfast package."""
    spec = importlib.util.find_spec("reidfast")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("reidfast is not installed in this environment")
    package_dir = list(spec.submodule_search_locations)[0]
    paths = glob.glob(os.path.join(package_dir, "_C.*so"))
    if len(paths) != 1:
        raise SystemExit(f"expected one reidfast/_C*.so in {package_dir}, found {paths}")
    native_spec = importlib.util.spec_from_file_location("reidfast._C", paths[0])
    module = importlib.util.module_from_spec(native_spec)
    native_spec.loader.exec_module(module)
    return module, package_dir


def view(native, array: np.ndarray):
    """A host ArrayView of a numpy array (strides in elements)."""
    return native.ArrayView(array.ctypes.data, _DTYPE_CODES[array.dtype], list(array.shape),
                            [stride // array.itemsize for stride in array.strides], -1)


def main() -> int:
    native, package_dir = load_native()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 16)).astype(np.float32)
    y = rng.standard_normal((53, 16)).astype(np.float32)
    x_sq, y_sq = (x * x).sum(1), (y * y).sum(1)
    expected = np.sqrt(np.maximum(((x[:, None, :].astype(np.float64) - y[None, :, :]) ** 2).sum(-1), 1e-12))

    distances = np.ascontiguousarray(x @ y.T)  # the Gram block, overwritten with distances
    native.distance_epilogue_cpu(view(native, distances), view(native, x_sq), view(native, y_sq), EUCLIDEAN, -1)
    np.testing.assert_allclose(distances, expected, rtol=1e-4, atol=1e-4)

    k = 5
    gram = np.ascontiguousarray(x @ y.T)
    values = np.empty((x.shape[0], k), np.float32)
    indices = np.empty((x.shape[0], k), np.int64)
    native.topk_epilogue_cpu(view(native, gram), view(native, x_sq), view(native, y_sq), EUCLIDEAN, -1, False,
                             view(native, values), view(native, indices))
    nearest = np.argsort(expected, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(indices, nearest)
    np.testing.assert_allclose(values, np.take_along_axis(expected, nearest, 1), rtol=1e-4, atol=1e-4)

    assert "torch" not in sys.modules, "the check must not need torch"
    emulators = glob.glob(os.path.join(package_dir, "_cuda_emulator*"))
    print(f"reidfast._C from {package_dir}: {dict(native.build_info())}")
    print(f"emulator module: {emulators or 'none'}")
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
