"""Backend selection: which implementation of an op runs on which inputs.

Three backends, in ``auto`` priority order:

========  =====================================================================================
cpp       the torch-free C++ extension ``symkern._C`` (CPU tensors; OpenMP, vectorised loops)
triton    Triton kernels (CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1`` and only
          when forced, because the interpreter is a testing tool ~1000x slower than compiled code)
torch     the pure-torch reference (every device, float64-capable)
========  =====================================================================================

An op registers one implementation per backend with :func:`register_kernel`. For a call, every
backend answers :meth:`Backend.not_supported_reasons` (empty list = can run it):

* ``backend="auto"`` (default) takes the first backend in priority order with no reasons. If none
  fits, :class:`NoBackendError` lists every backend's reasons.
* ``backend="<name>"`` or the environment variable ``SYMKERN_BACKEND=<name>`` forces one. A forced
  backend that cannot run raises :class:`BackendUnavailableError` with its reasons — it never
  falls back. The environment variable does not force the host-side planning step
  ``orbit_labels`` (numpy in, numpy out; cached per representation), which every backend's
  orbit and fixed-point kernels share.
* Never a silent fallback: when ``auto`` lands on the torch reference although the inputs' fast
  backend (``cpp`` for CPU tensors, ``triton`` for CUDA tensors) could have run the op — it is
  unavailable (the C++ extension is missing: ``symkern info`` shows why), has no kernel for the
  op, or its kernel cannot run this call (a dtype it lacks such as float16, a group action it
  does not implement) — a :class:`ReferenceFallbackWarning` naming the reasons is emitted once per
  op and reasons. ``backend="torch"`` chooses the reference without a warning.

A kernel that is not written yet is simply not registered, and the backend says so in its reasons
("no 'cpp' kernel for op 'x' is implemented").
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "into",
    "BACKEND_PRIORITY",
    "Backend",
    "BackendUnavailableError",
    "Kernel",
    "NoBackendError",
    "ReferenceFallbackWarning",
    "backend_status",
    "get_backend",
    "register_kernel",
    "select_kernel",
    "select_kernel_cached",
    "triton_interpreter_enabled",
]

BACKEND_PRIORITY: tuple[str, ...] = ("cpp", "triton", "torch")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class BackendUnavailableError(RuntimeError):
    """A forced backend (``backend=`` or ``SYMKERN_BACKEND``) cannot run this call."""


class NoBackendError(RuntimeError):
    """No backend can run this call; the message lists every backend's reasons."""


class ReferenceFallbackWarning(UserWarning):
    """``auto`` chose the slow torch reference where the inputs' fast backend (``cpp`` for CPU
    tensors, ``triton`` for CUDA tensors) is unavailable, lacks the op, or cannot run the call."""


@dataclass(frozen=True)
class Kernel:
    """One backend's implementation of one op.

    ``dtypes``: floating dtypes the kernel accepts. ``check``: optional extra constraint, called
    with the call's inputs, returning reasons it cannot run them (e.g. an unsupported group kind).
    ``checks_finite``: inputs the kernel itself rejects when they hold NaN or inf, with the op's
    ValueError, so that the op need not scan them first (a tensor reduction per call).
    """

    op: str
    backend: str
    fn: Callable[..., Any]
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES
    check: Callable[[Mapping[str, Any]], list[str]] | None = None
    checks_finite: tuple[str, ...] = ()


_KERNELS: dict[tuple[str, str], Kernel] = {}


def register_kernel(
    op: str,
    backend: str,
    *,
    dtypes: Iterable[torch.dtype] = FLOAT_DTYPES,
    check: Callable[[Mapping[str, Any]], list[str]] | None = None,
    checks_finite: Iterable[str] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``fn`` as ``backend``'s implementation of ``op`` (see :class:`Kernel`
    for the options)."""
    if backend not in BACKEND_PRIORITY:
        raise ValueError(f"backend must be one of {BACKEND_PRIORITY}, got {backend!r}")

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        key = (op, backend)
        if key in _KERNELS and _KERNELS[key].fn is not fn:
            raise RuntimeError(f"a {backend!r} kernel for op {op!r} is already registered")
        _KERNELS[key] = Kernel(op, backend, fn, tuple(dtypes), check, tuple(checks_finite))
        return fn

    return decorator


def into(out: torch.Tensor | None, result: torch.Tensor) -> torch.Tensor:
    """``result``, or ``out`` filled with it: for kernels of ops with an ``out`` argument that
    compute into a fresh buffer (one extra copy; the C++ kernels and the Triton orbit mean write
    into ``out`` directly)."""
    if out is None:
        return result
    return out.copy_(result)


_TRUE_WORDS = frozenset(("1", "true", "yes", "on", "y"))  # as triton.knobs.getenv_bool (any case)
_FALSE_WORDS = frozenset(("", "0", "false", "no", "off", "n"))


def triton_interpreter_enabled() -> bool:
    """True when Triton kernels run in the CPU interpreter: ``TRITON_INTERPRET`` set to a true
    word as Triton itself reads it (1, true, yes, on, y; any case). Another value than those and
    the false words (0, false, no, off, empty) is a ValueError: Triton would read it as false."""
    raw = os.environ.get("TRITON_INTERPRET", "0")
    value = raw.lower()  # no strip: Triton reads " 1" as false
    if value in _TRUE_WORDS:
        return True
    if value not in _FALSE_WORDS:
        raise ValueError(
            f"the environment variable TRITON_INTERPRET must be 1 / true / yes / on or "
            f"0 / false / no / off, got {raw!r}"
        )
    return False


def _tensors(inputs: Mapping[str, Any]) -> list[tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in inputs.items() if isinstance(v, torch.Tensor)]


class Backend:
    """A place kernels run. Subclasses say when they are usable at all and for which tensors."""

    name: str = ""

    def availability_reasons(self) -> list[str]:
        """Why this backend cannot run anything on this machine (empty = available)."""
        return []

    def device_reasons(self, device: torch.device, *, forced: bool) -> list[str]:
        """Why this backend cannot run on tensors of ``device``."""
        return []

    def not_supported_reasons(
        self, op: str, inputs: Mapping[str, Any], *, forced: bool = False
    ) -> list[str]:
        """Every reason this backend cannot run ``op`` on ``inputs`` (empty list = it can)."""
        reasons = self.availability_reasons()
        if reasons:
            return reasons
        kernel = _KERNELS.get((op, self.name))
        if kernel is None:
            return [f"no {self.name!r} kernel for op {op!r} is implemented"]
        for arg, t in _tensors(inputs):
            for r in self.device_reasons(t.device, forced=forced):
                reasons.append(f"{arg}: {r}")
            if t.is_floating_point() and t.dtype not in kernel.dtypes:
                allowed = ", ".join(str(d).removeprefix("torch.") for d in kernel.dtypes)
                reasons.append(f"{arg}: dtype {t.dtype} not supported (supports {allowed})")
        if kernel.check is not None and not reasons:
            reasons.extend(kernel.check(inputs))
        return sorted(set(reasons), key=reasons.index)

    def kernel(self, op: str) -> Kernel:
        return _KERNELS[(op, self.name)]

    def has_kernel(self, op: str) -> bool:
        """Whether this backend registered an implementation of ``op``."""
        return (op, self.name) in _KERNELS


class TorchBackend(Backend):
    """Pure-torch reference: every device, float64-capable; also the correctness oracle."""

    name = "torch"


class CppBackend(Backend):
    """The C++ extension ``symkern._C``: CPU tensors only."""

    name = "cpp"

    def __init__(self) -> None:
        self._import_error: str | None = None
        self._checked = False

    def extension(self) -> Any:
        import symkern._C as ext  # noqa: PLC0415 — optional compiled module

        return ext

    def availability_reasons(self) -> list[str]:
        if not self._checked:
            self._checked = True
            try:
                self.extension()
            except ImportError as e:  # built without a compiler, or a broken build
                self._import_error = (
                    f"C++ extension symkern._C is not importable ({e}); reinstall symkern where "
                    "a C++17 compiler is available (pip install --force-reinstall --no-binary "
                    "symkern symkern; from a checkout: pip install -e .)"
                )
        return [self._import_error] if self._import_error else []

    def device_reasons(self, device: torch.device, *, forced: bool) -> list[str]:
        return [] if device.type == "cpu" else [f"tensor on {device}; cpp runs CPU tensors only"]


class TritonBackend(Backend):
    """Triton kernels: CUDA tensors, or CPU tensors under the interpreter when forced."""

    name = "triton"

    def availability_reasons(self) -> list[str]:
        try:
            importlib.import_module("triton")
        except ImportError as e:
            return [f"triton is not installed ({e})"]
        try:
            interpret = triton_interpreter_enabled()
        except ValueError as e:  # a value Triton would read as false: say so, not "not set"
            return [str(e)]
        if not torch.cuda.is_available() and not interpret:
            return ["no CUDA device, and TRITON_INTERPRET=1 is not set"]
        return []

    def device_reasons(self, device: torch.device, *, forced: bool) -> list[str]:
        if device.type == "cuda":
            return []
        if device.type == "cpu" and triton_interpreter_enabled():
            if forced:
                return []
            return [
                "CPU tensors run through the Triton interpreter (a testing tool) only when "
                "forced with backend='triton'"
            ]
        return [f"tensor on {device}; triton runs CUDA tensors (CPU only with TRITON_INTERPRET=1)"]


_BACKENDS: dict[str, Backend] = {
    "cpp": CppBackend(),
    "triton": TritonBackend(),
    "torch": TorchBackend(),
}
# Kernel modules are imported on first use so `import symkern` stays light (no triton import).
_KERNEL_MODULES: dict[str, tuple[str, ...]] = {
    "torch": ("symkern.backends.reference",),
    "cpp": (
        "symkern.backends.cpp",
        "symkern.backends.cpp_particles",
        "symkern.backends.cpp_mirror",
        "symkern.backends.cpp_mirror_sweep",
    ),
    "triton": ("symkern.backends.triton",),
}
_loaded: set[str] = set()
_warned_fallback: set[str] = set()


def _load_kernels(name: str) -> None:
    if name in _loaded:
        return
    if _BACKENDS[name].availability_reasons():
        # e.g. no triton: nothing to import, the reasons say why. Not marked loaded: triton
        # becomes available when TRITON_INTERPRET=1 is set later in the process, and its kernels
        # must then be imported (marked early, a forced call said no kernel was implemented)
        return
    _loaded.add(name)
    for module in _KERNEL_MODULES[name]:
        importlib.import_module(module)


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKEND_PRIORITY}, got {name!r}")
    _load_kernels(name)
    return _BACKENDS[name]


def _requested_backend(backend: str, use_env: bool = True) -> str:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    if backend != "auto" and backend not in _BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKEND_PRIORITY}, got {backend!r}")
    if backend == "auto" and use_env:
        backend = os.environ.get("SYMKERN_BACKEND", "auto").strip() or "auto"
        if backend != "auto" and backend not in _BACKENDS:
            raise ValueError(
                f"the environment variable SYMKERN_BACKEND must be 'auto' or one of "
                f"{BACKEND_PRIORITY}, got {backend!r}"
            )
    return backend


def select_kernel(
    op: str, inputs: Mapping[str, Any], backend: str = "auto", *, use_env: bool = True
) -> Kernel:
    """The kernel that runs ``op`` on ``inputs`` under the documented selection rules.

    ``use_env=False``: ``"auto"`` ignores ``SYMKERN_BACKEND`` — for host-side planning steps
    (orbit labels of a rep's generators) that serve every backend's tensor kernels, so that
    forcing a backend for the tensor ops does not also force it on a step it has no kernel for.
    """
    requested = _requested_backend(backend, use_env)
    if requested != "auto":
        chosen = get_backend(requested)
        reasons = chosen.not_supported_reasons(op, inputs, forced=True)
        if reasons:
            raise BackendUnavailableError(
                f"backend {requested!r} was forced for op {op!r} but cannot run it: "
                + "; ".join(reasons)
            )
        return chosen.kernel(op)

    all_reasons: dict[str, list[str]] = {}
    for name in BACKEND_PRIORITY:
        be = get_backend(name)
        reasons = be.not_supported_reasons(op, inputs)
        if not reasons:
            if name == "torch":
                _warn_if_reference_fallback(op, inputs, all_reasons)
            return be.kernel(op)
        all_reasons[name] = reasons
    detail = "\n".join(f"  {n}: " + "; ".join(r) for n, r in all_reasons.items())
    raise NoBackendError(f"no backend can run op {op!r} on these inputs:\n{detail}")


def select_kernel_cached(
    cache: dict, op: str, inputs: Mapping[str, Any], backend: str = "auto", *, key: tuple = ()
) -> Kernel:
    """:func:`select_kernel`, remembered in ``cache`` under ``key`` — for a caller that selects
    again and again for inputs it knows select alike (``key`` says what they share: the same
    problem object, the same dtype and device, ...). The choice is remembered per requested
    backend and per value of the environment variables that steer selection, and it is made
    afresh when its kernel has been unregistered or replaced; availability of a backend is fixed
    for the process (the cpp extension imports once, CUDA is there or not)."""
    full_key = (op, key, backend, os.environ.get("SYMKERN_BACKEND"),
                os.environ.get("TRITON_INTERPRET"))  # fmt: skip
    kernel: Kernel | None = cache.get(full_key)
    if kernel is None or _KERNELS.get((op, kernel.backend)) is not kernel:
        kernel = cache[full_key] = select_kernel(op, inputs, backend)
    return kernel


def _warn_if_reference_fallback(
    op: str, inputs: Mapping[str, Any], all_reasons: Mapping[str, list[str]]
) -> None:
    """Warn (once per op and reasons) that ``auto`` runs ``op`` on the torch reference although
    the inputs' fast backend exists: ``cpp`` for CPU tensors (and host-side inputs without
    tensors), ``triton`` for CUDA tensors. Inputs on other or mixed devices have no fast backend."""
    devices = {t.device.type for _, t in _tensors(inputs)}
    if devices <= {"cpu"}:
        fast = "cpp"
    elif devices == {"cuda"}:
        fast = "triton"
    else:
        return
    reasons = "; ".join(all_reasons.get(fast, [])) or "no reason given"
    if _BACKENDS[fast].availability_reasons():
        why = f"the {fast} backend is unavailable: {reasons}. Run `symkern info` for details"
    elif not _BACKENDS[fast].has_kernel(op):
        why = f"no {fast} kernel for it is implemented"
    else:
        why = f"the {fast} kernel cannot run this call: {reasons}"
    key = f"{op}: {why}"
    if key in _warned_fallback:
        return
    _warned_fallback.add(key)
    warnings.warn(
        f"symkern: op {op!r} runs on the slow torch reference because {why}. "
        "(backend='torch' chooses the reference without this warning.)",
        ReferenceFallbackWarning,
        stacklevel=_caller_stacklevel(),
    )


def _caller_stacklevel() -> int:
    """The ``warnings.warn`` stacklevel, called from the function that warns, of the first frame
    outside symkern and torch: the warning points at the user's call, whatever op path led here."""
    inside = (os.path.dirname(os.path.dirname(__file__)), os.path.dirname(torch.__file__))
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


@dataclass
class BackendStatus:
    name: str
    available: bool
    reasons: list[str] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)


def backend_status() -> list[BackendStatus]:
    """For each backend in priority order: available or not (and why), and its registered ops."""
    out = []
    for name in BACKEND_PRIORITY:
        be = get_backend(name)
        reasons = be.availability_reasons()
        ops = sorted(op for (op, b) in _KERNELS if b == name)
        out.append(BackendStatus(name, not reasons, reasons, ops))
    return out
