"""``symkern.info()``: what this installation can run, and why not where it cannot."""

from __future__ import annotations

import platform
from typing import Any, cast

import torch

from symkern._version import __version__
from symkern.backends.registry import (
    CppBackend,
    _requested_backend,
    backend_status,
    get_backend,
    triton_interpreter_enabled,
)


def info() -> dict[str, Any]:
    """Version, backends (available or the reasons they are not, and their ops), OpenMP threads,
    triton version, interpreter on/off, GPU name. Safe to call on any machine."""
    cpp = cast(CppBackend, get_backend("cpp"))  # the "cpp" entry of the registry
    build: dict[str, Any] = {}
    if not cpp.availability_reasons():
        build = dict(cpp.extension().build_info())
    try:
        import triton  # noqa: PLC0415 — optional, and heavy: only imported when asked

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        interpreter: bool | str = triton_interpreter_enabled()
    except ValueError as e:
        interpreter = f"INVALID: {e}"
    forced: str | None
    try:  # the variable as every op reads it
        forced = _requested_backend("auto")
        forced = None if forced == "auto" else forced
    except ValueError as e:
        forced = f"INVALID: {e}"
    return {
        "symkern": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": __import__("numpy").__version__,
        "triton": triton_version,
        "triton_interpreter": interpreter,
        "gpu": gpu,
        "openmp": build.get("openmp", False),
        "omp_threads": build.get("max_threads"),
        "compiler": build.get("compiler"),
        "forced_backend": forced,
        "backends": [
            {"name": s.name, "available": s.available, "reasons": s.reasons, "ops": s.ops}
            for s in backend_status()
        ],
    }


def format_info(data: dict[str, Any] | None = None) -> str:
    """Human-readable report of :func:`info`."""
    d = info() if data is None else data
    interpreter = d["triton_interpreter"]  # True / False, or "INVALID: why"
    if isinstance(interpreter, bool):
        interpreter = "on" if interpreter else "off"
    lines = [
        f"symkern {d['symkern']}  (python {d['python']}, torch {d['torch']}, numpy {d['numpy']})",
        f"triton:      {d['triton'] or 'not installed'}  (interpreter {interpreter})",
        f"GPU:         {d['gpu'] or 'none (no CUDA device)'}",
        f"OpenMP:      {'on' if d['openmp'] else 'off'}"
        + (f", {d['omp_threads']} threads" if d["omp_threads"] else "")
        + (f"  [{d['compiler']}]" if d["compiler"] else ""),
        f"forced:      SYMKERN_BACKEND={d['forced_backend']}"
        if d["forced_backend"]
        else "forced:      no (backend='auto' picks cpp > triton > torch per call)",
        "backends (auto priority order):",
    ]
    for b in d["backends"]:
        state = "available" if b["available"] else "UNAVAILABLE: " + "; ".join(b["reasons"])
        lines.append(f"  {b['name']:<7} {state}")
        lines.append(f"          ops: {', '.join(b['ops']) if b['ops'] else '(none registered)'}")
    return "\n".join(lines)
