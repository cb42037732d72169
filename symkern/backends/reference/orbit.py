"""Pure-torch reference kernels for the orbit and fixed-point hot paths.

These are the natural torch formulations a user would write (index_add segment sums, two skinny
matmuls); they run on every device and in float64, and are the dispatcher's last resort.
"""

from __future__ import annotations

import numpy as np
import torch

from symkern.backends.registry import register_kernel
from symkern.groups.orbits import orbit_labels as _numpy_orbit_labels


@register_kernel("orbit_mean", "torch")
def orbit_mean(x: torch.Tensor, plan) -> torch.Tensor:
    """out[b, j] = coef[j] / |O(j)| * sum_{i in O(j)} coef[i] x[b, i]   (x: (B, D))."""
    signed = x * plan.coef
    sums = torch.zeros(x.shape[0], plan.n_orbits, dtype=x.dtype, device=x.device)
    sums.index_add_(1, plan.orbit_id, signed)
    return (sums * plan.inv_size)[:, plan.orbit_id] * plan.coef


@register_kernel("project_lowrank", "torch")
def project_lowrank(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """out = (x Q) Q^T for an orthonormal basis Q: (D, k)   (x: (B, D))."""
    return (x @ basis) @ basis.T


@register_kernel("orbit_labels", "torch")
def orbit_labels(perms: np.ndarray, signs: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Orbit label and relative sign of each coordinate (numpy; see symkern.groups.orbits)."""
    return _numpy_orbit_labels(perms, signs)
