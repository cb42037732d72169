"""Orbits of (signed) permutation actions -- pure numpy reference.

Convention (same as :mod:`symkern.groups`): a permutation array ``p`` acts on
``x in R^D`` by ``rho(g) x = x[..., p]``, a signed one by
``rho(g) x = s * x[..., p]`` (matrix ``M[i, p[i]] = s[i]``).

The orbits of a group are the connected components of the graph on points with
edges ``j -- p_g[j]`` for the given permutations (generators suffice: the group
is finite, so inverses are powers of generators).  Components are found with a
vectorised union-find: each round hooks the larger root of every edge whose
endpoints have different roots onto the smaller one (``np.minimum.at``), then
compresses all paths by pointer jumping ``L <- L[L]``.  Roots are always the
smallest point of their component, so labels come out canonical.

For signed permutations the group acts on the 2D points ``+e_i`` (index ``i``)
and ``-e_i`` (index ``i + D``); an orbit of coordinates averages to zero exactly
when ``+e_i`` and ``-e_i`` lie in the same point-orbit.
"""

from __future__ import annotations

import numpy as np

from ._native import signed_to_points, validate_perms, validate_signs

__all__ = ["orbit_labels", "point_components"]


def point_components(succ: np.ndarray) -> np.ndarray:
    """Connected components of the graph ``j -- succ[g, j]``.

    Args:
        succ: int64 ``(G, N)``; each row a map of ``range(N)`` into itself.

    Returns:
        int64 ``(N,)`` with ``L[j]`` = smallest point in the component of ``j``.
    """
    succ = np.asarray(succ, dtype=np.int64)
    G, N = succ.shape
    L = np.arange(N, dtype=np.int64)
    if G == 0 or N == 0:
        return L
    u = np.broadcast_to(np.arange(N, dtype=np.int64), (G, N)).ravel()
    v = succ.ravel()
    keep = u != v  # self-loops never merge anything
    u, v = u[keep], v[keep]
    while u.size:
        ru, rv = L[u], L[v]
        diff = ru != rv
        if not diff.any():
            break
        # Edges already inside one component stay so forever: prune them.
        u, v, ru, rv = u[diff], v[diff], ru[diff], rv[diff]
        # L[root] is root here (paths fully compressed), so hooking hi->lo keeps
        # L[i] <= i and can never create a cycle.
        np.minimum.at(L, np.maximum(ru, rv), np.minimum(ru, rv))
        while True:
            L2 = L[L]
            if np.array_equal(L2, L):
                break
            L = L2
    return L


def orbit_labels(
    perms: np.ndarray, signs: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Canonical orbit labels of coordinates and their signs relative to the orbit root.

    Args:
        perms: integer ``(G, D)`` permutation arrays (generators or all elements); each row must
            be a permutation of ``range(D)`` -- anything else (a negative or out-of-range index,
            a repeated entry, a float array) is a ValueError, not labels of a graph that is no
            group action.
        signs: optional ``(G, D)`` real array of +-1 (signed permutations) or ``None``.

    Returns:
        ``(labels, rel_sign)``: ``labels`` int64 ``(D,)`` with ``labels[i]`` the
        smallest coordinate index in the orbit of ``i``; ``rel_sign`` float64
        ``(D,)`` with ``rel_sign[i] = s`` such that some group element maps
        ``e_{labels[i]}`` to ``s * e_i``, and ``rel_sign[i] = 0`` on every
        coordinate of an orbit containing both ``+e_i`` and ``-e_i`` (such an
        orbit averages to zero).  Without signs ``rel_sign`` is all ones.

    The number of fixed-space dimensions is ``sum((labels == arange(D)) & (rel_sign != 0))``.

    Example::

        >>> from symkern.groups import orbit_labels
        >>> labels, rel = orbit_labels([[1, 0, 2, 3], [0, 1, 3, 2]])  # swap 0-1, swap 2-3
        >>> labels.tolist(), rel.tolist()
        ([0, 0, 2, 2], [1.0, 1.0, 1.0, 1.0])
        >>> labels, rel = orbit_labels([[1, 0]], [[-1.0, -1.0]])  # (x, y) -> (-y, -x)
        >>> labels.tolist(), rel.tolist()  # one orbit; the invariant vectors are (a, -a)
        ([0, 0], [1.0, -1.0])
        >>> orbit_labels([[1, 0]], [[1.0, -1.0]])[1].tolist()  # quarter turn: averages to 0
        [0.0, 0.0]
    """
    if isinstance(perms, (list, tuple)) and len(perms) == 0:
        raise ValueError("perms: expected a (G, D) integer array, got an empty list (D unknown)")
    perms = validate_perms(perms, "perms")
    G, D = perms.shape
    if signs is None:
        return point_components(perms), np.ones(D, dtype=np.float64)
    signs = validate_signs(signs, perms.shape, "signs")
    Lp = point_components(signed_to_points(perms, signs))  # (2D,)
    # Smallest *coordinate* in each point-component; mirror components -C share it.
    mincoord = np.full(2 * D, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(mincoord, Lp, np.arange(2 * D, dtype=np.int64) % D)
    root_plus = Lp[:D]
    labels = mincoord[root_plus]
    rel = np.where(root_plus == Lp[labels], 1.0, -1.0)
    rel[root_plus == Lp[D:]] = 0.0
    return labels, rel
