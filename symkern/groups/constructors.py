"""Module-level constructors of groups with their defining representations.

Each returns the *defining* representation; its group is ``rep.group``.
Permutations use the convention ``rho(g) x = x[..., perm]`` (``M[i, perm[i]] = 1``).

The named families (``cyclic(n)``, ``dihedral(n)``, ``symmetric(n)``,
``alternating(n)``, ``sign_flips(n)``, ``hyperoctahedral(n)``, ``c2_swap()``) are
*canonical*: every call with the same ``n`` returns a fresh defining rep of one
cached :class:`Group` object, so e.g. ``cyclic(3).direct_sum(cyclic(3))`` works
(tensor products / direct sums require ``self.group is other.group``).  The
generic ``perm_rep`` / ``signed_perm_rep`` / ``matrix_rep`` always build a new group.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from symkern._checks import as_int

from . import _native as nat
from ._native import DEFAULT_MAX_ORDER
from .group import Group
from .reps import MAX_PERM_DIM, MatrixRep, PermRep, SignedPermRep

__all__ = [
    "cyclic",
    "dihedral",
    "symmetric",
    "alternating",
    "sign_flips",
    "hyperoctahedral",
    "c2_swap",
    "perm_rep",
    "signed_perm_rep",
    "matrix_rep",
]


# A permutation rep of n points holds n int64 indices per generator (and its orbit plan a few
# more per point): the named families stop at MAX_PERM_DIM points, like every permutation rep.
_POINTS_WHY = "n int64 indices per generator, at most MAX_PERM_DIM points"
# n! (2^n n! for B_n) is the exact order these families pass to their Group: it has 456,574
# digits at n = 1e5 and takes ~0.1 s, but ~10 s at 1e6 and ~8 min at 1e7 (Python's factorial
# is superlinear), so S_n, A_n and B_n stop where their order is still quick to write down.
_MAX_FACTORIAL_N = 100_000
_FACTORIAL_WHY = "its exact order is computed: n! takes ~10 s at n = 1e6"


def _check_n(
    n: Any, minimum: int, what: str, maximum: int = MAX_PERM_DIM, why: str = _POINTS_WHY
) -> int:
    """``n`` as an int in [minimum, maximum]; ValueError naming ``n`` with that range otherwise,
    before anything of size n is allocated (an n past int64 overflowed inside NumPy, a large one
    ran out of memory building its generators)."""
    n = as_int(n, f"n ({what})", minimum=minimum)
    if n > maximum:
        raise ValueError(f"n ({what}) must be in [{minimum}, {maximum}] ({why}), got n={n}")
    return n


def _cycle(n: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Permutation array on n points of the cycle ``start -> start + 1 -> ... -> stop - 1 ->
    start`` (default: all n points), fixing the others: O(n) NumPy, no Python list of n ints."""
    stop = n if stop is None else stop
    p = np.arange(n, dtype=np.int64)
    p[start : stop - 1] += 1
    p[stop - 1] = start
    return p


# Canonical groups of the named families, keyed by name (e.g. "S5").
_CANONICAL: dict[str, Group] = {}


def _canonical(name: str, kind: str, gens, dim: int, order: int) -> Group:
    g = _CANONICAL.get(name)
    if g is None:
        g = _CANONICAL[name] = Group(name, kind, gens, dim, order=order)
    return g


def _perm_group_rep(name: str, perms: np.ndarray, order: int) -> PermRep:
    perms = nat.validate_perms(perms, "perms")
    g = _canonical(name, "perm", perms, perms.shape[1], order)
    return PermRep(g, perms, name)


def cyclic(n: int) -> PermRep:
    """C_n acting on n points by the n-cycle ``i -> i+1 mod n``; order n.

    Example::

        >>> rep = symkern.groups.cyclic(5)
        >>> rep.permutations().tolist(), rep.order()  # one generator: the 5-cycle
        ([[1, 2, 3, 4, 0]], 5)
        >>> rep.fixed_dim()  # the only invariant vectors are the constant ones
        1
    """
    n = _check_n(n, 1, "cyclic")
    return _perm_group_rep(f"C{n}", _cycle(n)[None], n)


def dihedral(n: int) -> PermRep:
    """D_n (order 2n) on the n vertices of a regular n-gon: rotation and reflection ``i -> -i``.

    Requires n >= 3 (for n < 3 the action on n points is not faithful).

    Example::

        >>> rep = symkern.groups.dihedral(4)  # symmetries of a square
        >>> rep.order()
        8
        >>> rep.conjugation().fixed_dim()  # invariant 4x4 matrices: M_ii, adjacent, opposite
        3
    """
    n = _check_n(n, 3, "dihedral")
    rot = _cycle(n)
    refl = (-np.arange(n, dtype=np.int64)) % n
    return _perm_group_rep(f"D{n}", np.stack([rot, refl]), 2 * n)


def symmetric(n: int) -> PermRep:
    """S_n on n points, generators (0 1) and the n-cycle; order n!.

    Example::

        >>> rep = symkern.groups.symmetric(4)
        >>> rep.order()
        24
        >>> rep.conjugation().fixed_dim()  # invariant matrices a*I + b*ones
        2
    """
    n = _check_n(n, 1, "symmetric", _MAX_FACTORIAL_N, _FACTORIAL_WHY)
    if n == 1:
        gens = np.zeros((1, 1), dtype=np.int64)
    else:
        gens = np.stack([_cycle(n, 0, 2), _cycle(n)])
    return _perm_group_rep(f"S{n}", gens, math.factorial(n))


def alternating(n: int) -> PermRep:
    """A_n on n points (n >= 3): (0 1 2) and the n-cycle (odd n) or the (1 .. n-1)-cycle
    (even n); order n!/2.

    Example::

        >>> symkern.groups.alternating(5).order()  # the icosahedral rotation group
        60
        >>> A4, S4 = symkern.groups.alternating(4), symkern.groups.symmetric(4)
        >>> A4.tensor_power(3).fixed_dim(), S4.tensor_power(3).fixed_dim()  # A4 has one more
        (6, 5)
    """
    n = _check_n(n, 3, "alternating", _MAX_FACTORIAL_N, _FACTORIAL_WHY)
    long = _cycle(n) if n % 2 else _cycle(n, 1)
    return _perm_group_rep(f"A{n}", np.stack([_cycle(n, 0, 3), long]), math.factorial(n) // 2)


def sign_flips(n: int) -> SignedPermRep:
    """(Z_2)^n acting on R^n by sign flips (generator i flips coordinate i); order 2^n.

    Example::

        >>> rep = symkern.groups.sign_flips(3)
        >>> rep.order(), rep.fixed_dim()  # no non-zero vector survives every flip
        (8, 0)
        >>> rep.conjugation().fixed_dim()  # invariant matrices: the diagonal ones
        3
    """
    n = as_int(n, "n (sign_flips)", minimum=1)  # its own bound below: n² entries, not n
    if n > nat.MAX_DENSE_DIM:  # n generators of length n (int64 perms, float64 signs): 16 n² B
        raise ValueError(
            f"n: sign_flips stores n generators of length n; n must be <= {nat.MAX_DENSE_DIM} "
            f"({16 * nat.MAX_DENSE_DIM**2 >> 20} MiB), got n={n}"
        )
    perms = np.tile(np.arange(n, dtype=np.int64), (n, 1))
    signs = np.ones((n, n)) - 2 * np.eye(n)
    g = _canonical(f"Z2^{n}", "signed", (perms, signs), n, 2**n)
    return SignedPermRep(g, perms, signs, g.name)


def hyperoctahedral(n: int) -> SignedPermRep:
    """B_n = signed permutations of R^n: S_n generators plus flipping coordinate 0; order 2^n n!.

    Example::

        >>> rep = symkern.groups.hyperoctahedral(3)  # symmetries of the cube
        >>> rep.order(), rep.fixed_dim()
        (48, 0)
        >>> rep.conjugation().fixed_dim()  # invariant matrices: multiples of I only
        1
    """
    n = _check_n(n, 1, "hyperoctahedral", _MAX_FACTORIAL_N, _FACTORIAL_WHY)
    sym = symmetric(n).permutations()
    perms = np.concatenate([sym, np.arange(n, dtype=np.int64)[None]])
    signs = np.ones(perms.shape)
    signs[-1, 0] = -1.0
    g = _canonical(f"B{n}", "signed", (perms, signs), n, 2**n * math.factorial(n))
    return SignedPermRep(g, perms, signs, g.name)


def c2_swap() -> PermRep:
    """C_2 = {I, P} acting on R^2 by swapping the two coordinates (perm [1, 0]).

    Example::

        >>> rep = symkern.groups.c2_swap()
        >>> rep.character().tolist()  # tr I = 2, tr P = 0: dim E^G = (2 + 0) / 2 = 1
        [2.0, 0.0]
        >>> rep.fixed_dim(), rep.conjugation().fixed_dim()  # (a, a); [[a, b], [b, a]]
        (1, 2)
    """
    return _perm_group_rep("C2swap", np.array([[1, 0]], dtype=np.int64), 2)


def perm_rep(
    perms: Any, name: str = "perm_group", dim: int | None = None, max_order: int = DEFAULT_MAX_ORDER
) -> PermRep:
    """Permutation group generated by ``perms`` (int ``(n_gens, D)``) with its defining rep.

    The order is computed by Schreier--Sims (no enumeration, any size).  ``max_order`` bounds
    what enumerates the elements (``elements()``, ``element_matrices()``):
    :class:`GroupTooLargeError` beyond it.  ``perms=[]`` with ``dim=D`` gives the trivial group
    (order 1) acting trivially on R^D.

    Example::

        >>> rep = symkern.groups.perm_rep([[1, 0, 2, 3], [0, 1, 3, 2]])  # swap 0-1, swap 2-3
        >>> rep.order(), rep.fixed_dim()  # Klein four-group; invariants (a, a, b, b)
        (4, 2)
        >>> trivial = symkern.groups.perm_rep([], dim=3)
        >>> trivial.order(), trivial.fixed_dim()
        (1, 3)
    """
    p = nat.validate_perms(perms, "perms", dim)
    g = Group(
        name, "perm", p, p.shape[1], order=None if p.shape[0] else 1, max_order=max_order,
        _validated=True,  # just above: Group would check the same arrays again
    )  # fmt: skip
    return PermRep(g, p, name, dim=p.shape[1])


def signed_perm_rep(
    perms: Any,
    signs: Any,
    name: str = "signed_perm_group",
    dim: int | None = None,
    max_order: int = DEFAULT_MAX_ORDER,
) -> SignedPermRep:
    """Signed permutation group generated by ``(perms, signs)`` with its defining rep
    (``max_order`` as in :func:`perm_rep`).

    Example::

        >>> rep = symkern.groups.signed_perm_rep([[1, 0]], [[1.0, -1.0]])  # (x, y) -> (y, -x)
        >>> rep.order(), rep.fixed_dim()  # a quarter turn of R^2: C4, no invariant vector
        (4, 0)
    """
    p = nat.validate_perms(perms, "perms", dim)
    s = nat.validate_signs(signs, p.shape, "signs")
    g = Group(
        name, "signed", (p, s), p.shape[1], order=None if p.shape[0] else 1, max_order=max_order,
        _validated=True,
    )  # fmt: skip
    return SignedPermRep(g, p, s, name, dim=p.shape[1])


def matrix_rep(
    matrices: Any,
    name: str = "matrix_group",
    dim: int | None = None,
    max_order: int = DEFAULT_MAX_ORDER,
) -> MatrixRep:
    """Finite group generated by orthogonal matrices ``(n_gens, D, D)`` with its defining rep.

    The order is found by BFS closure (up to ``max_order`` elements, default 100_000, else
    :class:`GroupTooLargeError`).  ``matrices=[]`` with ``dim=D`` gives the trivial group.

    Example::

        >>> R = torch.tensor([[0.0, -1.0], [1.0, 0.0]])  # rotation by 90 degrees
        >>> rep = symkern.groups.matrix_rep(R[None])
        >>> rep.order(), rep.fixed_dim()  # R generates C4
        (4, 0)
        >>> rep.conjugation().fixed_dim()  # matrices commuting with R: a*I + b*R
        2
    """
    m = nat.validate_matrices(matrices, "matrices", dim)
    g = Group(
        name, "matrix", m, m.shape[1], order=None if m.shape[0] else 1, max_order=max_order,
        _validated=True,  # the orthogonality check is O(k D^3): once is enough
    )  # fmt: skip
    return MatrixRep(g, m, name, dim=m.shape[1])
