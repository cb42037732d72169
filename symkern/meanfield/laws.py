"""Empirical laws of particle sets and their symmetrised / projected versions.

For particles θ (..., N, D) and a finite group acting on Z by M_g (G, D, D):

* the symmetrised law ν^G = (1/|G|) Σ_g (M_g)#ν: the N·|G| atoms M_g θ_i (weakly invariant);
* the projected law P#ν: the N atoms P θ_i, P = (1/|G|) Σ_g M_g (strongly invariant, on E^G).
"""

from __future__ import annotations

import torch

__all__ = ["projected_law", "symmetrized_law"]


def _check(theta, mat, name: str, want_dim: int) -> int:
    if not isinstance(theta, torch.Tensor) or not theta.is_floating_point():
        raise TypeError("theta must be a floating torch.Tensor of shape (..., N, D)")
    if theta.dim() < 2:
        raise ValueError(f"theta must have shape (..., N, D), got {tuple(theta.shape)}")
    D = theta.shape[-1]
    if not isinstance(mat, torch.Tensor) or mat.is_complex() or mat.dtype == torch.bool:
        # a bool matrix would be read as 0 / 1 entries: never a group action or a projector
        got = mat.dtype if isinstance(mat, torch.Tensor) else type(mat).__name__
        raise TypeError(f"{name} must be a real (not complex or bool) torch.Tensor, got {got}")
    shape = f"({D}, {D})" if want_dim == 2 else f"(G, {D}, {D}) with G >= 1"
    no_elements = want_dim == 3 and mat.dim() == 3 and mat.shape[0] < 1  # G ≥ 1 for m_z only
    if mat.dim() != want_dim or tuple(mat.shape[-2:]) != (D, D) or no_elements:
        raise ValueError(f"{name} must be {shape} for theta with D = {D}, got {tuple(mat.shape)}")
    return D


def symmetrized_law(theta: torch.Tensor, m_z: torch.Tensor) -> torch.Tensor:
    """Atoms of ν^G: (..., N·G, D), element-major (all of M_1 θ, then M_2 θ, ...).

    theta (..., N, D) floating; m_z (G, D, D), G ≥ 1.

    Example::

        >>> from symkern.meanfield import MatrixUnit, projected_law, symmetrized_law
        >>> rho = symkern.groups.c2_swap().element_matrices()
        >>> m_z = MatrixUnit(2, 2).param_action(rho, rho)  # (|G|, D, D) = (2, 4, 4)
        >>> _ = torch.manual_seed(0)
        >>> theta = torch.randn(10, 4, dtype=torch.float64)
        >>> atoms = symmetrized_law(theta, m_z)
        >>> atoms.shape  # N·|G| atoms
        torch.Size([20, 4])
        >>> torch.allclose(atoms[:10], theta)  # element-major, the identity first
        True
        >>> # the mean of ν^G is P applied to the mean of ν, P = (1/|G|) Σ_g M_g
        >>> torch.allclose(atoms.mean(0), projected_law(theta, m_z.mean(0)).mean(0))
        True
    """
    _check(theta, m_z, "m_z", 3)
    imgs = torch.einsum("gij,...nj->...gni", m_z.to(theta), theta)
    return imgs.flatten(-3, -2)


def projected_law(theta: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """Atoms of P#ν: (..., N, D). theta (..., N, D) floating; proj (D, D).

    Example::

        >>> from symkern.meanfield import MatrixUnit, projected_law
        >>> rho = symkern.groups.c2_swap().element_matrices()
        >>> m_z = MatrixUnit(2, 2).param_action(rho, rho)
        >>> P = m_z.mean(0)  # the orthogonal projector onto E^G
        >>> _ = torch.manual_seed(0)
        >>> atoms = projected_law(torch.randn(3, 10, 4, dtype=torch.float64), P)
        >>> atoms.shape
        torch.Size([3, 10, 4])
        >>> torch.allclose(atoms @ m_z[1].T, atoms)  # every atom is fixed by every M_g
        True
    """
    _check(theta, proj, "proj", 2)
    return theta @ proj.to(theta).T
