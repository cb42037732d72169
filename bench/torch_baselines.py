"""Baselines the benches time symkern against: the torch code a user would write instead."""

from __future__ import annotations

import torch


def torch_orbit_mean(x: torch.Tensor, plan) -> torch.Tensor:
    """The orbit mean the natural torch way (``torch_index_add`` in the benches): orbit sums by
    ``index_add_`` in x's dtype, scaled by 1/|O| and gathered back to the coordinates. symkern's
    own torch reference sums in float64 (accurate for large orbits) and serves as the float64
    reference instead."""
    sums = torch.zeros(x.shape[0], plan.n_orbits, dtype=x.dtype, device=x.device)
    sums.index_add_(1, plan.orbit_id, x * plan.coef)
    return (sums * plan.inv_size)[:, plan.orbit_id] * plan.coef
