"""Pure-torch reference kernels for the orbit and fixed-point hot paths.

These are the natural torch formulations a user would write (index_add segment sums, two skinny
matmuls); they run on every device and in float64, and are the dispatcher's last resort.
"""

from __future__ import annotations

import numpy as np
import torch

from symkern.backends.registry import into, register_kernel
from symkern.groups.orbits import orbit_labels as _numpy_orbit_labels


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16 / bfloat16 sum in float32, as the compiled kernels do: an orbit's sum (or a
    coordinate of x Q) can exceed the half range although the average it gives does not."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _orbit_sum_dtype(x: torch.Tensor) -> torch.dtype:
    """Orbit sums of float32 / half input in float64: index_add_ adds an orbit's terms one after
    another, and a running float32 total of n terms drifts like n·eps (cyclic(1e6), x ~ 100: the
    mean came out 101.4 instead of 100.5). MPS has no float64: float32 there."""
    return torch.float32 if x.device.type == "mps" else torch.float64


@register_kernel("orbit_mean", "torch")
def orbit_mean(x: torch.Tensor, plan, out: torch.Tensor | None = None) -> torch.Tensor:
    """out[b, j] = coef[j] / |O(j)| * sum_{i in O(j)} coef[i] x[b, i]   (x: (B, D)); into ``out``
    (B, D) when given (x itself, or not overlapping it). Sums in float64 (``_orbit_sum_dtype``)."""
    acc = _orbit_sum_dtype(x)
    coef = plan.coef.to(acc)
    sums = torch.zeros(x.shape[0], plan.n_orbits, dtype=acc, device=x.device)
    sums.index_add_(1, plan.orbit_id, x.to(acc) * coef)
    return into(out, ((sums * plan.inv_size.to(acc))[:, plan.orbit_id] * coef).to(x.dtype))


@register_kernel("project_lowrank", "torch")
def project_lowrank(
    x: torch.Tensor, basis: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """out = (x Q) Q^T for an orthonormal basis Q: (D, k)   (x: (B, D)); into ``out`` when
    given."""
    acc = _accumulation_dtype(x.dtype)
    q = basis.to(acc)
    return into(out, ((x.to(acc) @ q) @ q.T).to(x.dtype))


@register_kernel("orbit_labels", "torch")
def orbit_labels(perms: np.ndarray, signs: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Orbit label and relative sign of each coordinate (numpy; see symkern.groups.orbits)."""
    return _numpy_orbit_labels(perms, signs)
