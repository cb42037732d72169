"""``symkern.info()``: what this installation can run, and why not where it cannot."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from symkern._version import __version__
from symkern.backends.registry import backend_status, get_backend, triton_interpreter_enabled


def info() -> dict[str, Any]:
    """Version, backends (available or the reasons they are not, and their ops), OpenMP threads,
    triton version, interpreter on/off, GPU name. Safe to call on any machine."""
    cpp = get_backend("cpp")
    build: dict[str, Any] = {}
    if not cpp.availability_reasons():
        build = dict(cpp.extension().build_info())
    try:
        import triton  # noqa: PLC0415 — optional, and heavy: only imported when asked

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "symkern": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": __import__("numpy").__version__,
        "triton": triton_version,
        "triton_interpreter": triton_interpreter_enabled(),
        "gpu": gpu,
        "openmp": build.get("openmp", False),
        "omp_threads": build.get("max_threads"),
        "compiler": build.get("compiler"),
        "forced_backend": os.environ.get("SYMKERN_BACKEND") or None,
        "backends": [
            {"name": s.name, "available": s.available, "reasons": s.reasons, "ops": s.ops}
            for s in backend_status()
        ],
    }


def format_info(data: dict[str, Any] | None = None) -> str:
    """Human-readable report of :func:`info`."""
    d = info() if data is None else data
    lines = [
        f"symkern {d['symkern']}  (python {d['python']}, torch {d['torch']}, numpy {d['numpy']})",
        f"triton:      {d['triton'] or 'not installed'}"
        f"  (interpreter {'on' if d['triton_interpreter'] else 'off'})",
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
