"""Backends and their selection; see :mod:`symkern.backends.registry`."""

from symkern.backends.registry import (
    BACKEND_PRIORITY,
    BackendUnavailableError,
    NoBackendError,
    ReferenceFallbackWarning,
    backend_status,
    register_kernel,
    select_kernel,
)

__all__ = [
    "BACKEND_PRIORITY",
    "BackendUnavailableError",
    "NoBackendError",
    "ReferenceFallbackWarning",
    "backend_status",
    "register_kernel",
    "select_kernel",
]
