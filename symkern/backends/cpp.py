"""The ``cpp`` backend: thin wrappers handing CPU tensors to the torch-free C++ core ``symkern._C``.

The registry imports this module only when ``symkern._C`` is importable; importing it registers
``orbit_mean``, ``project_lowrank`` (float32, float64) and ``orbit_labels`` for backend ``"cpp"``.

How a call crosses the boundary, without copies:

* Tensors become numpy arrays with ``Tensor.numpy()`` — a zero-copy view of the same CPU memory.
  A non-contiguous ``x`` (a transposed view, ``x[:, ::2]``, an expanded row) is passed as the
  strided numpy view as is: the C++ side reads element strides (csrc/buffers.h) and copies a
  strided row into per-thread scratch only when its columns are not unit-stride.
* ``x`` is detached first: these wrappers run inside the ``symkern::*`` custom ops, which own
  autograd (both operators are symmetric, so the backward is the same kernel on the gradient).
* The output is allocated here with torch (``torch.empty((B, D), dtype=x.dtype,
  device="cpu")``, contiguous: the device explicit, whatever ``torch.set_default_device`` says),
  and ``out.numpy()`` is passed to C++ to fill, so the result is an ordinary torch tensor.
* The C++ bindings validate every buffer (dtype, rank, extents, strides, index ranges) and raise
  ``ValueError`` naming the offending argument; they release the GIL around every kernel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

import symkern._C as _C
from symkern.backends.registry import register_kernel

__all__ = ["orbit_labels", "orbit_mean", "project_lowrank"]

_DTYPES = (torch.float32, torch.float64)


def _check_x(inputs: Mapping[str, Any]) -> list[str]:
    x = inputs.get("x")
    if isinstance(x, torch.Tensor) and x.dim() != 2:
        return [f"x: the cpp kernel takes a 2-D (B, D) tensor, got shape {tuple(x.shape)}"]
    return []


def _np(t: torch.Tensor) -> np.ndarray:
    # resolve_conj/neg are no-ops (no copy) for ordinary real tensors
    return t.detach().resolve_neg().numpy()


def _np_as(t: torch.Tensor, dtype: torch.dtype, contiguous: bool = True) -> np.ndarray:
    """A numpy view of ``t`` as a CPU array of ``dtype`` (contiguous unless told otherwise); a
    converted copy only when ``t`` is not that already. The plan and basis tensors are built in
    x's dtype on x's device, so the copy-free test is the common case (a few µs per small call)."""
    if (
        t.dtype == dtype
        and t.device.type == "cpu"
        and not t.requires_grad
        and not t.is_neg()
        and (t.is_contiguous() or not contiguous)
    ):
        return t.numpy()
    t = t.detach().to(device="cpu", dtype=dtype)
    return _np(t.contiguous() if contiguous else t)


@register_kernel("orbit_mean", "cpp", dtypes=_DTYPES, check=_check_x)
def orbit_mean(x: torch.Tensor, plan, out: torch.Tensor | None = None) -> torch.Tensor:
    """out[b, j] = coef[j] / |O(j)| * sum_{i in O(j)} coef[i] x[b, i]   (x: (B, D), any strides).

    O(B·D) whatever the group order; see csrc/orbit.cpp for the row sweeps. Written directly into
    a given ``out`` (B, D) with unit column stride: x itself (in place) or not overlapping it.
    """
    B, D = x.shape
    if out is None:
        out = torch.empty((B, D), dtype=x.dtype, device="cpu")
    plan_arrays = plan.host_arrays.get(("cpp", x.dtype))
    if plan_arrays is None:  # the plan's tensors never change: their views are made once
        plan_arrays = plan.host_arrays[("cpp", x.dtype)] = (
            _np_as(plan.orbit_id, torch.int64),
            _np_as(plan.coef, x.dtype),
            _np_as(plan.inv_size, x.dtype),
            _np_as(plan.order, torch.int64),
            _np_as(plan.seg_start, torch.int64),
        )
    _C.orbit_mean(_np(x), *plan_arrays, out.numpy())
    return out


@register_kernel("project_lowrank", "cpp", dtypes=_DTYPES, check=_check_x)
def project_lowrank(
    x: torch.Tensor, basis: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """out = (x Q) Qᵀ for Q = basis (D, k) (x: (B, D), any strides; k = 0 gives zeros).

    Memory-bound for small k: x is read once and out written once (both products run on each row
    while it is in L1). Q may have any strides; the kernel copies Qᵀ (k × D, tiny) per call. A
    given ``out`` is written directly, as for orbit_mean.
    """
    B, D = x.shape
    if out is None:
        out = torch.empty((B, D), dtype=x.dtype, device="cpu")
    _C.project_lowrank(_np(x), _np_as(basis, x.dtype, contiguous=False), out.numpy())
    return out


@register_kernel("orbit_labels", "cpp")
def orbit_labels(perms: np.ndarray, signs: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Orbit label (smallest member) and relative sign of each coordinate, by union-find in C++.

    Same contract as :func:`symkern.groups.orbits.orbit_labels` (the numpy reference).
    """
    perms = np.asarray(perms)
    if perms.ndim != 2:
        raise ValueError(f"perms: expected shape (G, D), got ndim={perms.ndim}")
    perms = perms.astype(np.int64, copy=False)
    if signs is not None:
        signs = np.asarray(signs, dtype=np.float64)
        if signs.shape != perms.shape:
            raise ValueError(f"signs: shape {signs.shape} does not match perms shape {perms.shape}")
    return _C.orbit_labels(perms, signs)
