"""Backend discovery and selection: one public op, several implementations.

Order of preference by input device and dtype (`default_order`, documented in README):
    cuda tensors, float16/bfloat16 (and float32 while torch.backends.cuda.matmul.allow_tf32 is on):
                  triton -> cuda -> torch -> reference   (tensor cores through tl.dot)
    cuda tensors, IEEE float32, float64 and the rest:
                  cuda -> triton -> torch -> reference   (the CUDA kernels are SIMT FP32/FP64)
    cpu tensors:  cpu -> torch -> reference       (triton only when forced and TRITON_INTERPRET=1)
The half-precision order is provisional: it follows the peak rates of tensor cores versus SIMT FMA and
waits for a benchmark on a card. An op may narrow the order per device (evaluate skips torch on the host)
and an implementation may refuse a call it cannot take (a top-k kernel's largest k); selection then moves on
to the next backend, and a forced backend that refuses hands the call to the op's declared fallback.
"torch" is an op composed of torch operations that runs on the input's device (today re_ranking, evaluate and
topk_distance's chunked path have one); it calls other reidfast ops on their own default backends.
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
# Dtypes whose products run on tensor cores in the Triton kernels (tl.dot) but on SIMT FMA in the CUDA kernels.
TENSOR_CORE_DTYPES = (torch.float16, torch.bfloat16)
ORDER_NOTE = ("default order (provisional until benchmarked on a card): CUDA float16/bfloat16, and float32 under "
              "allow_tf32: triton, cuda, torch, reference (tensor cores); CUDA IEEE float32/float64: cuda, triton, "
              "torch, reference; CPU: cpu, torch, reference")
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
        return "\n".join(lines + [ORDER_NOTE])

    __repr__ = __str__


@functools.lru_cache(maxsize=None)
def _triton_import() -> tuple[str | None, str | None]:
    """(version, None) if triton imports, else (None, error)."""
    try:
        import triton

        return triton.__version__, None
    except Exception as error:  # ImportError, or a broken install
        return None, f"{type(error).__name__}: {error}"


# TRITON_INTERPRET=1 (read once, at import, like _native.EMULATE_CUDA: triton.jit reads it when a kernel module
# is imported, so a later change would not switch the kernels anyway): Triton kernels run on CPU tensors.
TRITON_INTERPRET = _native._env_flag("TRITON_INTERPRET")


def prefers_tensor_cores(dtype: torch.dtype | None, allow_tf32: bool) -> bool:
    """Whether CUDA inputs of `dtype` go to the Triton kernels (tensor cores) before the CUDA kernels (SIMT):
    float16/bfloat16, and float32 when TF32 matmuls are allowed. Provisional until a card benchmark."""
    return dtype in TENSOR_CORE_DTYPES or (dtype == torch.float32 and allow_tf32)


def default_order(device_type: str, dtype: torch.dtype | None = None, allow_tf32: bool | None = None) -> tuple[str, ...]:
    """The backends to try, best first, for inputs on `device_type` of `dtype` (None: unknown).

    allow_tf32: None reads torch.backends.cuda.matmul.allow_tf32 (what torch.mm and the Triton kernels follow).
    """
    if device_type == "cuda":
        tf32 = torch.backends.cuda.matmul.allow_tf32 if allow_tf32 is None else allow_tf32
        if prefers_tensor_cores(dtype, tf32):
            return ("triton", "cuda", "torch", "reference")
        return ("cuda", "triton", "torch", "reference")
    if device_type == "cpu":
        return ("cpu", "torch", "reference")
    return ("reference",)


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
    return BackendInfo("cuda", True, f"CUDA kernels for sm {build.get('cuda_architectures')}; first for IEEE "
                       "float32/float64 CUDA inputs", ("cuda",), details)


@functools.lru_cache(maxsize=None)
def _triton_info() -> BackendInfo:
    version, error = _triton_import()
    if version is None:
        return BackendInfo("triton", False, f"triton does not import ({error}); `pip install triton` (Linux x86-64)")
    details = {"version": version, "interpret": TRITON_INTERPRET}
    if TRITON_INTERPRET:
        return BackendInfo("triton", True, f"triton {version}, interpreter (TRITON_INTERPRET=1)", ("cuda", "cpu"), details)
    if not torch.cuda.is_available():
        return BackendInfo(
            "triton", False, f"triton {version} needs a CUDA device (or TRITON_INTERPRET=1 to run it on CPU)", details=details
        )
    return BackendInfo("triton", True, f"triton {version}; first for float16/bfloat16 CUDA inputs and float32 under "
                       "allow_tf32 (tensor cores; order provisional)", ("cuda",), details)


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
        "torch", True, f"torch {torch.__version__} ops on the input's device (ops that have one: re_ranking, evaluate, topk_distance)", devices
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
    The choice is a context variable: it holds in this thread (and asyncio task) only. A thread started
    inside the block begins with the automatic choice unless it runs in a copy of this context
    (`ctx = contextvars.copy_context(); Thread(target=ctx.run, args=(fn,))`); threads that force different
    backends at once do not see each other's. REIDFAST_BACKEND applies to every thread.
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


# refuses(device, dtype, **call) -> why an implementation cannot take this call, or None when it can.
Refusal = Callable[..., "str | None"]


class Op:
    """One public op's implementations, by backend name.

    order: per device type, the op's own preference (default: `default_order`).
    any_device: backends that take inputs from any device (they stream them to the host), when forced.
    fallback: the backend that takes a call a forced backend refuses (e.g. top-k beyond a kernel's k limit).
    """

    def __init__(self, name: str, *, order: dict[str, tuple[str, ...]] | None = None,
                 any_device: tuple[str, ...] = (), fallback: str | None = None) -> None:
        self.name = name
        self.implementations: dict[str, Callable[..., Any]] = {}
        self.refusals: dict[str, Refusal] = {}
        self.order = dict(order or {})
        self.any_device = any_device
        self.fallback = fallback

    def register(self, backend: str, *, refuses: Refusal | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(function: Callable[..., Any]) -> Callable[..., Any]:
            name = _check_name(backend, "register")
            self.implementations[name] = function
            if refuses is not None:
                self.refusals[name] = refuses
            return function

        return decorator

    def _refusal(self, name: str, device: torch.device, dtype: torch.dtype | None, call: dict[str, Any]) -> str | None:
        refuses = self.refusals.get(name)
        return None if refuses is None else refuses(device, dtype, **call)

    def candidates(self, device: torch.device, dtype: torch.dtype | None = None) -> tuple[str, ...]:
        """This op's backends in order of preference for inputs on `device` of `dtype`."""
        order = self.order.get(device.type) or default_order(device.type, dtype)
        return tuple(name for name in order if name in self.implementations)

    def select(self, device: torch.device, dtype: torch.dtype | None = None, **call: Any) -> tuple[str, Callable[..., Any]]:
        """The backend name and implementation to run on inputs on `device` of `dtype`; `call` holds the
        facts an implementation's refusal looks at (e.g. k for top-k)."""
        forced = requested_backend()
        report = backends()
        if forced is not None:
            return self._forced(forced, report, device, dtype, call)
        for name in self.candidates(device, dtype):
            info = report[name]
            if info.available and device.type in info.devices and self._refusal(name, device, dtype, call) is None:
                return name, self.implementations[name]
        return "reference", self.implementations["reference"]

    def _forced(self, forced: str, report: BackendReport, device: torch.device, dtype: torch.dtype | None,
                call: dict[str, Any]) -> tuple[str, Callable[..., Any]]:
        if forced not in self.implementations:
            have = ", ".join(n for n in BACKEND_NAMES if n in self.implementations)
            raise BackendUnavailableError(f"{self.name} has no {forced!r} implementation (it has: {have})")
        info = report[forced]
        if not info.available:
            raise BackendUnavailableError(f"backend {forced!r} was forced but is not usable: {info.reason}")
        if device.type not in info.devices and forced not in self.any_device:
            raise BackendUnavailableError(
                f"backend {forced!r} runs on {'/'.join(info.devices)} tensors, but the input is on {device}"
            )
        reason = self._refusal(forced, device, dtype, call)
        if reason is None:
            return forced, self.implementations[forced]
        fallback = self.fallback
        if fallback in self.implementations and self._refusal(fallback, device, dtype, call) is None:
            return fallback, self.implementations[fallback]
        raise BackendUnavailableError(f"{self.name}: backend {forced!r} was forced but cannot take this call: {reason}")
