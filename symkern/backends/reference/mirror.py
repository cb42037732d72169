"""Pure-torch reference of ``mirror_apply``: the natural torch code (gather + weighted sum for
c = Oᵀθ, ``index_add`` for O(b − s·c); two matmuls for a dense O). Every device, every float dtype;
the math is in :mod:`symkern.ops.mirror`.
"""

from __future__ import annotations

import torch

from symkern.backends.registry import register_kernel
from symkern.ops.mirror import MODES


@register_kernel("mirror_apply", "torch")
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
    """c = Oᵀθ (M, k) and out = θ + O(b − s·c) (M, d), for θ: (M, d) (any strides).

    ``rest`` and ``disjoint`` are not needed: ``index_add`` sums overlapping supports anyway.
    """
    M, d = theta.shape
    if dense_t is not None:
        c = theta @ dense_t.T
    else:
        assert value is not None  # a sparse plan (dense_t None) holds index and value
        c = (theta[:, index] * value).sum(-1)
    if mode == "coefficients":
        return theta.new_empty((M, 0)), c
    coef = -MODES[mode] * c
    if shift is not None:
        coef = coef + shift
    if dense_t is not None:
        return theta + coef @ dense_t, c
    assert index is not None and value is not None  # a sparse plan holds both
    src = (coef[:, :, None] * value).reshape(M, value.numel())
    return theta + theta.new_zeros((M, d)).index_add(1, index.reshape(-1), src), c
