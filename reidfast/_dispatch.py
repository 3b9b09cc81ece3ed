"""Backend discovery and selection: one public op, several implementations.

Order of preference by input device (documented in README):
    cuda tensors: cuda -> triton -> torch -> reference
    cpu tensors:  cpu -> torch -> reference       (triton only when forced and TRITON_INTERPRET=1)
"torch" is an op composed of torch operations that runs on the input's device (today re_ranking and
evaluate have one); it calls other reidfast ops on their own default backends.
`REIDFAST_BACKEND=<name>` or `with reidfast.use_backend(<name>):` forces one; forcing one that is not usable
raises BackendUnavailableError saying why and how to get it.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from . import _native

BACKEND_NAMES = ("cuda", "triton", "cpu", "torch", "reference")
_DEFAULT_ORDER = {"cuda": ("cuda", "triton", "torch", "reference"), "cpu": ("cpu", "torch", "reference")}
_forced_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar("reidfast_backend", default=None)


class BackendUnavailableError(RuntimeError):
    """A backend was forced (REIDFAST_BACKEND or use_backend) but cannot run this op on this input."""


@dataclass(frozen=True)
class BackendInfo:
    name: str
    available: bool
    reason: str  # why it is (not) usable, with the fix when it is not
    devices: tuple[str, ...] = ()  # tensor device types it runs on
    details: dict[str, Any] = field(default_factory=dict)


class BackendReport(dict):
    """`reidfast.backends()`: name -> BackendInfo, printed as a table."""

    def __str__(self) -> str:
        width = max(len(name) for name in self)
        lines = []
        for info in self.values():
            state = "yes" if info.available else "no "
            devices = ",".join(info.devices) if info.available else "-"
            lines.append(f"{info.name:<{width}}  {state}  {devices:<8}  {info.reason}")
        return "\n".join(lines)

    __repr__ = __str__


@functools.lru_cache(maxsize=None)
def _triton_import() -> tuple[str | None, str | None]:
    """(version, None) if triton imports, else (None, error)."""
    try:
        import triton

        return triton.__version__, None
    except Exception as error:  # ImportError, or a broken install
        return None, f"{type(error).__name__}: {error}"


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def _cuda_info() -> BackendInfo:
    return _cuda_emulator_info() if _native.emulating_cuda() else _cuda_device_info()


@functools.lru_cache(maxsize=None)
def _cuda_emulator_info() -> BackendInfo:
    if _native._cuda_emulator is None:
        return BackendInfo(
            "cuda", False, f"REIDFAST_EMULATE_CUDA=1, but the CUDA emulator module is not built "
            f"({_native.EMULATOR_LOAD_ERROR}); rebuild with REIDFAST_CUDA_EMULATOR=1", details={"emulated": True}
        )
    return BackendInfo("cuda", True, "CUDA kernels on the CPU emulator (REIDFAST_EMULATE_CUDA=1; slow, for tests)",
                       ("cpu",), {"emulated": True})


@functools.lru_cache(maxsize=None)
def _cuda_device_info() -> BackendInfo:
    if not _native.available():
        return BackendInfo("cuda", False, f"native module not loaded ({_native.LOAD_ERROR}); {_native.REBUILD_HINT}")
    build = _native.build_info()
    if not build.get("cuda"):
        return BackendInfo(
            "cuda", False, "native module built without CUDA kernels: rebuild where nvcc is on PATH (REIDFAST_CUDA=1)"
        )
    details = {k: build[k] for k in ("cuda_compiler", "cuda_architectures", "cuda_runtime_version") if k in build}
    if not torch.cuda.is_available():
        return BackendInfo("cuda", False, "CUDA kernels built, but torch sees no CUDA device", details=details)
    coverage = _native.cuda_device_coverage()  # an uncovered card or too old a driver: fall back, never fail
    details["coverage"] = coverage.covered_by
    if not coverage.usable:
        return BackendInfo("cuda", False, coverage.reason, details=details)
    details["device_count"] = _native._C.cuda_device_count()
    if details["device_count"] == 0:
        return BackendInfo("cuda", False, "CUDA kernels built, but the CUDA runtime finds no device", details=details)
    return BackendInfo("cuda", True, f"CUDA kernels for sm {build.get('cuda_architectures')}", ("cuda",), details)


def _triton_info() -> BackendInfo:
    return _triton_info_cached(triton_interpret())


@functools.lru_cache(maxsize=None)
def _triton_info_cached(interpret: bool) -> BackendInfo:
    version, error = _triton_import()
    if version is None:
        return BackendInfo("triton", False, f"triton does not import ({error}); `pip install triton` (Linux x86-64)")
    details = {"version": version, "interpret": interpret}
    if interpret:
        return BackendInfo("triton", True, f"triton {version}, interpreter (TRITON_INTERPRET=1)", ("cuda", "cpu"), details)
    if not torch.cuda.is_available():
        return BackendInfo(
            "triton", False, f"triton {version} needs a CUDA device (or TRITON_INTERPRET=1 to run it on CPU)", details=details
        )
    return BackendInfo("triton", True, f"triton {version}", ("cuda",), details)


@functools.lru_cache(maxsize=None)
def _cpu_info() -> BackendInfo:
    if not _native.available():
        return BackendInfo("cpu", False, f"native module not loaded ({_native.LOAD_ERROR}); {_native.REBUILD_HINT}")
    build = _native.build_info()
    threads = build.get("openmp_max_threads")
    openmp = f"OpenMP, {threads} threads" if build.get("openmp") else "no OpenMP: one thread"
    simd = list(_native._C.cpu_gemm_kernels()) if hasattr(_native._C, "cpu_gemm_kernels") else []
    kernels = f"fused distance kernels: {', '.join(simd)}" if simd else "distances: BLAS + native epilogue"
    return BackendInfo("cpu", True, f"C++ kernels ({build.get('compiler')}, {openmp}; {kernels})", ("cpu",),
                       {**build, "fused_cpu_kernels": simd})


@functools.lru_cache(maxsize=None)
def _torch_info() -> BackendInfo:
    devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    return BackendInfo(
        "torch", True, f"torch {torch.__version__} ops on the input's device (ops that have one: re_ranking, evaluate)", devices
    )


def backends() -> BackendReport:
    """What is built and usable: {"cuda", "triton", "cpu", "torch", "reference"} -> BackendInfo."""
    reference = BackendInfo("reference", True, "plain torch/numpy, always available", ("cpu", "cuda"))
    infos = (_cuda_info(), _triton_info(), _cpu_info(), _torch_info(), reference)
    return BackendReport((info.name, info) for info in infos)


def _check_name(name: str, origin: str, allow_auto: bool = False) -> str:
    name = name.strip().lower()
    if name not in BACKEND_NAMES and not (allow_auto and name == "auto"):
        raise ValueError(f"{origin}: unknown backend {name!r}; expected one of {', '.join(BACKEND_NAMES)} or 'auto'")
    return name


def requested_backend() -> str | None:
    """The forced backend (use_backend beats REIDFAST_BACKEND), or None for automatic choice."""
    forced = _forced_backend.get()
    if forced is not None:
        return None if forced == "auto" else forced
    env = os.environ.get("REIDFAST_BACKEND", "").strip().lower()
    return None if env in ("", "auto") else _check_name(env, "REIDFAST_BACKEND")


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Force every reidfast op inside the block onto one backend ("auto" or None: automatic choice).

    Raises BackendUnavailableError at once if that backend is not usable on this machine.
    """
    name = "auto" if name is None else _check_name(str(name), "use_backend", allow_auto=True)
    if name != "auto":
        info = backends()[name]
        if not info.available:
            raise BackendUnavailableError(f"backend {name!r} is not usable: {info.reason}")
    token = _forced_backend.set(name)
    try:
        yield
    finally:
        _forced_backend.reset(token)


class Op:
    """One public op's implementations, by backend name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.implementations: dict[str, Callable[..., Any]] = {}

    def register(self, backend: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(function: Callable[..., Any]) -> Callable[..., Any]:
            self.implementations[_check_name(backend, "register")] = function
            return function

        return decorator

    def select(self, device: torch.device) -> tuple[str, Callable[..., Any]]:
        """The backend name and implementation to run on tensors of `device`."""
        forced = requested_backend()
        report = backends()
        if forced is not None:
            if forced not in self.implementations:
                have = ", ".join(n for n in BACKEND_NAMES if n in self.implementations)
                raise BackendUnavailableError(f"{self.name} has no {forced!r} implementation (it has: {have})")
            info = report[forced]
            if not info.available:
                raise BackendUnavailableError(f"backend {forced!r} was forced but is not usable: {info.reason}")
            if device.type not in info.devices:
                raise BackendUnavailableError(
                    f"backend {forced!r} runs on {'/'.join(info.devices)} tensors, but the input is on {device}"
                )
            return forced, self.implementations[forced]
        for name in _DEFAULT_ORDER.get(device.type, ("reference",)):
            if name in self.implementations and report[name].available and device.type in report[name].devices:
                return name, self.implementations[name]
        return "reference", self.implementations["reference"]
