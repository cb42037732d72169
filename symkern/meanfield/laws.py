"""Empirical laws of particle sets and their symmetrised / projected versions.

For particles θ (..., N, D) and a finite group acting on Z by M_g (G, D, D):

* the symmetrised law ν^G = (1/|G|) Σ_g (M_g)#ν: the N·|G| atoms M_g θ_i (weakly invariant);
* the projected law P#ν: the N atoms P θ_i, P = (1/|G|) Σ_g M_g (strongly invariant, on E^G).
"""

from __future__ import annotations

import torch

__all__ = ["projected_law", "symmetrized_law"]


def symmetrized_law(theta: torch.Tensor, m_z: torch.Tensor) -> torch.Tensor:
    """Atoms of ν^G: (..., N·G, D), element-major (all of M_1 θ, then M_2 θ, ...)."""
    imgs = torch.einsum("gij,...nj->...gni", m_z.to(theta), theta)
    return imgs.flatten(-3, -2)


def projected_law(theta: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """Atoms of P#ν: (..., N, D)."""
    return theta @ proj.to(theta).T
