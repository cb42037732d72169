"""C++ mirror kernels: registers ``mirror_apply`` for backend ``"cpp"`` (float32, float64).

The registry imports this module only when ``symkern._C`` is importable. The math is in
:mod:`symkern.ops.mirror`; the kernels (csrc/mirror.cpp, whose header has the design) run OpenMP
over blocks of rows with the GIL released:

* sparse columns with disjoint supports (or c only): one pass — every θ entry read once, every out
  entry written once. Columns that continue each other (coordinate blocks, rescaling pairs,
  swaps of contiguous neuron blocks) run as SIMD loops, Householder rows as dot products; columns
  that gather single entries from anywhere stage each row in L2 first. Overlapping supports: c
  first, then the scatter-add;
* dense O: d-tiled skinny products c = Oᵀθ, out = θ + O(b − s·c) on Oᵀ (k, d).

The C++ side validates ``index`` (entries in [0, d)) on every call and measures the layout itself
(disjointness with a d-byte bitmap, the column pieces; ``symkern._C.mirror_sparse_layout`` shows
it), so the plan's ``disjoint`` flag and ``rest`` list are not needed here. θ goes across as a
strided numpy view (no copy; stride 0 allowed); outputs are allocated here with torch and filled
in place. The per-call layout pass is O(k·S + d): negligible for hundreds of rows, a few hundred
µs for one row at d = 1e5.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

import symkern._C as _C
from symkern.backends.registry import register_kernel
from symkern.ops.mirror import MODES

__all__ = ["mirror_apply"]

_DTYPES = (torch.float32, torch.float64)


def _check(inputs: Mapping[str, Any]) -> list[str]:
    theta = inputs.get("theta")
    if isinstance(theta, torch.Tensor) and theta.dim() != 2:
        return [f"theta: the cpp kernel takes a 2-D (M, d) tensor, got shape {tuple(theta.shape)}"]
    return []


def _np(t: torch.Tensor):
    # resolve_neg is a no-op (no copy) for ordinary real tensors
    return t.detach().resolve_neg().numpy()


@register_kernel("mirror_apply", "cpp", dtypes=_DTYPES, check=_check)
def mirror_apply(
    theta: torch.Tensor,
    shift: torch.Tensor | None,
    index: torch.Tensor | None,
    value: torch.Tensor | None,
    dense_t: torch.Tensor | None,
    rest: torch.Tensor | None,
    mode: str,
    disjoint: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """c = Oᵀθ (M, k) and out = θ + O(b − s·c) (M, d) (out: (M, 0) for ``"coefficients"``).

    θ: (M, d) CPU float32/float64, any strides. ``rest`` / ``disjoint`` are ignored (the kernel
    measures disjointness while validating ``index``).
    """
    M, d = theta.shape
    o = index if index is not None else dense_t
    assert o is not None  # a plan holds index / value (sparse) or dense_t
    k = o.shape[0]
    c = torch.empty((M, k), dtype=theta.dtype, device="cpu")
    coef_only = mode == "coefficients"
    out = torch.empty((M, 0 if coef_only else d), dtype=theta.dtype, device="cpu")
    out_np = None if coef_only else out.numpy()
    shift_np = None if shift is None else _np(shift.contiguous())
    if dense_t is not None:
        _C.mirror_dense(
            _np(theta), _np(dense_t.contiguous()), shift_np, MODES[mode], out_np, c.numpy()
        )
    else:
        assert index is not None and value is not None  # a sparse plan holds both
        _C.mirror_sparse(
            _np(theta),
            _np(index.contiguous()),
            _np(value.contiguous()),
            shift_np,
            MODES[mode],
            out_np,
            c.numpy(),
        )
    return out, c
