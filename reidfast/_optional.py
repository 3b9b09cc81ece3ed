"""Lazy imports of the optional dependencies (the `all` extra): pictures, image data, sklearn-based metrics.

`pip install reidfast` brings numpy, torch and tqdm only; the kernels, losses and evaluation need nothing more.
"""
from __future__ import annotations

import importlib
from types import ModuleType

# import name -> distribution name on the package index
_DISTRIBUTIONS = {"PIL": "Pillow", "matplotlib": "matplotlib", "sklearn": "scikit-learn"}
EXTRA = "all"


def require(module: str, purpose: str) -> ModuleType:
    """Import `module` (e.g. "PIL.Image") for `purpose`, or raise ImportError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        root = module.split(".")[0]
        distribution = _DISTRIBUTIONS.get(root, root)
        raise ImportError(
            f"{purpose} needs {distribution}, an optional dependency of reidfast: "
            f"pip install \"reidfast[{EXTRA}]\" (or pip install {distribution}); {type(error).__name__}: {error}"
        ) from error
