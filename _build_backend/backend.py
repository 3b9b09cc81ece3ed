"""PEP 517 backend: setuptools, plus the `cmake` PyPI package only when no usable cmake is on PATH.

Asking for cmake unconditionally would download it into every isolated build; asking for it never would
break machines without one.
"""
from __future__ import annotations

import re
import shutil
import subprocess

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (re-export the hooks we do not override)

_MIN_CMAKE = (3, 18)


def _cmake_requirement() -> list[str]:
    cmake = shutil.which("cmake")
    if cmake:
        try:
            out = subprocess.run([cmake, "--version"], capture_output=True, text=True, check=True).stdout
            match = re.search(r"(\d+)\.(\d+)", out)
            if match and tuple(int(v) for v in match.groups()) >= _MIN_CMAKE:
                return []
        except (OSError, subprocess.CalledProcessError):
            pass
    return ["cmake>=%d.%d" % _MIN_CMAKE]


def get_requires_for_build_wheel(config_settings=None):
    return _setuptools.get_requires_for_build_wheel(config_settings) + _cmake_requirement()


def get_requires_for_build_editable(config_settings=None):
    return _setuptools.get_requires_for_build_editable(config_settings) + _cmake_requirement()
