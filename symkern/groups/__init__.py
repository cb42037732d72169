"""Finite and compact groups and their orthogonal representations.

A group ``G`` acts linearly and orthogonally on ``R^D``; the fixed-point subspace is
``E^G = {z : rho(g) z = z for all g}`` with ``dim E^G = (1/|G|) sum_g tr rho(g)``.

Action convention (used by every symkern kernel):

* :class:`PermRep`: ``rho(g) x = x[..., perm]``, matrix ``M[i, perm[i]] = 1``;
* :class:`SignedPermRep`: ``rho(g) x = sign * x[..., perm]``, ``M[i, perm[i]] = sign[i]``;
* :class:`MatrixRep` / :class:`ContinuousRep`: ``rho(g) x = M x``.

Tensor products flatten index pairs row-major (``(i, j) -> i * D2 + j``); direct sums
offset the second block by ``D1``; ``conjugation()`` (``z -> g z g^T``) is
``tensor_power(2)``.

Constructors return the defining representation (its group is ``rep.group``):
:func:`cyclic`, :func:`dihedral`, :func:`symmetric`, :func:`alternating`,
:func:`sign_flips`, :func:`hyperoctahedral`, :func:`c2_swap`, :func:`perm_rep`,
:func:`signed_perm_rep`, :func:`matrix_rep`, :func:`so2`, :func:`o2`, :func:`so3`;
:func:`direct_product` builds reps of product groups.
"""

from ._native import MAX_DENSE_DIM, GroupTooLargeError
from .constructors import (
    alternating,
    c2_swap,
    cyclic,
    dihedral,
    hyperoctahedral,
    matrix_rep,
    perm_rep,
    sign_flips,
    signed_perm_rep,
    symmetric,
)
from .continuous import ContinuousRep, o2, so2, so3
from .group import ContinuousGroup, Group
from .orbits import orbit_labels
from .reps import MatrixRep, PermRep, Representation, SignedPermRep, direct_product
from .schreier_sims import schreier_sims_order

__all__ = [
    "MAX_DENSE_DIM",
    "ContinuousGroup",
    "ContinuousRep",
    "Group",
    "GroupTooLargeError",
    "MatrixRep",
    "PermRep",
    "Representation",
    "SignedPermRep",
    "alternating",
    "c2_swap",
    "cyclic",
    "dihedral",
    "direct_product",
    "hyperoctahedral",
    "matrix_rep",
    "o2",
    "orbit_labels",
    "perm_rep",
    "schreier_sims_order",
    "sign_flips",
    "signed_perm_rep",
    "so2",
    "so3",
    "symmetric",
]
