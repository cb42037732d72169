"""Abstract groups given by the generators of a faithful defining representation.

A :class:`Group` stores its generators in one *native* form (see
:mod:`symkern.groups._native`): ``"perm"`` (int64 ``(k, n)`` permutation arrays,
``rho(g) x = x[..., p]``), ``"signed"`` (``(P, S)``, ``rho(g) x = S * x[..., P]``) or
``"matrix"`` (float64 ``(k, n, n)`` orthogonal matrices); continuous groups are
:class:`ContinuousGroup` (``kind == "continuous"``).

Enumeration is a breadth-first search over the defining generators.  Every new
element is recorded as ``parent * generator`` (``rho(parent) @ rho(gen)``) so the
BFS spanning tree (parent index, generator index) lets *any* representation of the
group build the images of all elements by composing its own generator images
along the tree -- which is correct also for non-faithful representations (e.g. the
conjugation action of ``-I``).  The tree is level-structured (parents of level
``L`` lie in level ``L-1``), so reps compose whole levels at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from symkern._checks import as_int, torch_generator

from . import _native as nat
from ._native import DEFAULT_MAX_ORDER, GroupTooLargeError
from .schreier_sims import schreier_sims_order

# A Haar cubature of more nodes than this (each a d x d float64 matrix, evaluated in one batch by
# symmetrize) is refused: SO(3) at degree 270 already has 1e7 nodes (~0.7 GB of matrices).
MAX_QUADRATURE_NODES = 10_000_000

# Schreier--Sims on at most this many points takes milliseconds; on many more it can take seconds
# (S_2 wr S_64 on 128 points: ~5 s): up to it Group._order_at_most computes the exact order, above
# it a bounded BFS.
_CHEAP_SCHREIER_SIMS_POINTS = 16

__all__ = ["Group", "ContinuousGroup", "GroupTooLargeError", "normalize_words", "evaluate_words"]


@dataclass(frozen=True)
class BFSTree:
    """Result of BFS enumeration.

    elements: native batch of all elements (defining form), BFS order.
    parent:   int64 ``(|G|,)``; ``parent[0] = -1`` (identity), else index of the parent.
    gen:      int64 ``(|G|,)``; generator index with ``element = parent * gen``.
    level_starts: int64 ``(n_levels + 1,)`` offsets of the BFS levels (last = |G|).
    """

    elements: Any
    parent: np.ndarray
    gen: np.ndarray
    level_starts: np.ndarray


def normalize_words(
    words: Sequence[Sequence[int]], n_generators: int
) -> tuple[tuple[int, ...], ...]:
    """Validate subgroup generator words.

    A word is a sequence of generator indices; index ``i >= 0`` is generator ``i``,
    a negative index ``-i-1`` is the inverse of generator ``i``.  The word
    ``[a, b, c]`` denotes the product ``g_a * g_b * g_c`` (``rho(g_a) rho(g_b) rho(g_c)``).
    """
    if isinstance(words, (str, bytes)) or not isinstance(words, (list, tuple)):
        raise ValueError("words: expected a list of words (each a list of generator indices)")
    out = []
    for w in words:
        if np.ndim(w) == 0:  # an int, NumPy int or 0-d tensor where a word belongs
            raise ValueError(
                "words: each word must be a list of generator indices, e.g. [[1]] not [1]"
            )
        # as_int: a float index (1.5) is refused, not truncated to generator 1
        w = tuple(as_int(x, "words: a generator index") for x in w)
        for x in w:
            if not -n_generators <= x < n_generators:
                raise ValueError(
                    f"words: generator index {x} out of range for {n_generators} generators "
                    f"(use i in [0, {n_generators}) or -i-1 for the inverse of generator i)"
                )
        out.append(w)
    return tuple(out)


def evaluate_words(kind: str, gens: Any, dim: int, words: tuple[tuple[int, ...], ...]) -> Any:
    """Native batch of the word products over the native generator batch ``gens``."""
    if not words:
        return nat.take(kind, nat.identity(kind, dim, 1), np.zeros(0, dtype=np.int64))
    inv = nat.inverse(kind, gens) if nat.batch_len(kind, gens) else gens
    out = []
    for w in words:
        acc = nat.identity(kind, dim, 1)
        for x in w:
            src, i = (gens, x) if x >= 0 else (inv, -x - 1)
            acc = nat.compose(kind, acc, nat.take(kind, src, np.array([i])))
        out.append(acc)
    return nat.concat(kind, out)


class Group:
    """A group given by generators of a faithful defining representation.

    Attributes:
        name: human-readable name.
        is_finite: ``True`` for finite groups.
        kind: ``"perm"``, ``"signed"``, ``"matrix"`` or ``"continuous"``.
        dim: dimension of the defining representation.
        n_generators: number of (discrete) defining generators.
        max_order: enumeration / BFS-closure limit (default 100_000).

    ``generators`` are validated like the module-level constructors' arguments and copied:
    ``"perm"``: an integer ``(k, dim)`` array (or nested list) of permutations of
    ``range(dim)``; ``"signed"``: a pair ``(perms, signs)`` of such an array and a ``(k, dim)``
    array of +-1; ``"matrix"``: ``(k, dim, dim)`` orthogonal matrices.  A non-permutation would
    send Schreier--Sims into an endless loop, so it is refused here (ValueError).

    ``order()`` uses, in this order: a known formula passed by the constructor, the
    deterministic Schreier--Sims algorithm on the permutation action (signed
    permutations act on the 2D points ``+-e_i``), or BFS closure of matrix
    generators up to ``max_order`` (:class:`GroupTooLargeError` beyond it).

    Example::

        >>> G = symkern.groups.symmetric(3).group
        >>> G
        Group('S3', kind='perm', dim=3, n_generators=2)
        >>> G.order(), len(G.elements())
        (6, 6)
        >>> G.subgroup([[1]]).order()  # generated by the 3-cycle (generator 1)
        3
    """

    def __init__(
        self,
        name: str,
        kind: str,
        generators: Any,
        dim: int,
        order: int | Callable[[], int] | None = None,
        max_order: int = DEFAULT_MAX_ORDER,
        *,
        _validated: bool = False,
    ) -> None:
        if kind not in nat.KINDS:
            raise ValueError(f"kind: expected one of {nat.KINDS}, got {kind!r}")
        dim = as_int(dim, "dim", minimum=1)
        if not _validated:
            # subgroup words and direct products pass _validated=True: their generators are
            # products of checked ones, and a word of accepted, slightly non-orthogonal matrices
            # may exceed ORTHO_TOL itself while still being a valid element
            generators = _validate_generators(kind, generators, dim)
        self.name = name
        self.kind = kind
        self.is_finite = True
        self.dim = int(dim)
        self._gens = generators
        self.n_generators = nat.batch_len(kind, generators)
        self.max_order = as_int(max_order, "max_order", minimum=1)
        self._order_hint = order
        self._order: int | None = order if isinstance(order, int) else None
        self._bfs: BFSTree | None = None
        self._subgroups: dict[tuple, Group] = {}
        self._products: dict[int, tuple[Group, Group]] = {}

    def __repr__(self) -> str:
        return (
            f"Group({self.name!r}, kind={self.kind!r}, dim={self.dim}, "
            f"n_generators={self.n_generators})"
        )

    # ------------------------------------------------------------------ basics
    def generators(self) -> Any:
        """Defining generators in native form (do not mutate)."""
        return self._gens

    def order(self) -> int:
        """|G| as an exact Python int (cached)."""
        if self._order is None:
            if callable(self._order_hint):
                self._order = int(self._order_hint())
            elif self.kind == "perm":
                self._order = schreier_sims_order(self._gens) if self.n_generators else 1
            elif self.kind == "signed":
                pts = nat.signed_to_points(*self._gens)
                self._order = schreier_sims_order(pts) if self.n_generators else 1
            else:
                self._order = self._matrix_closure_order()
        return self._order

    def _matrix_closure_order(self) -> int:
        """|G| of a matrix group without an order formula, by a BFS closure that keeps every
        element (D x D): GroupTooLargeError once |G| * D^2 would pass the enumeration budget
        (``Representation._ENUMERATION_ENTRIES``), before ``max_order`` elements (S_60's 60 x 60
        permutation matrices: 100 000 of them failed to allocate)."""
        from .reps import Representation  # local: reps imports group

        budget = Representation._ENUMERATION_ENTRIES
        limit = min(self.max_order, budget // self.dim**2)
        n = self._order_at_most(limit)
        if n is not None:
            return n
        if limit >= self.max_order:  # max_order binds first: its own GroupTooLargeError
            self._enumerate(self.max_order)
        raise GroupTooLargeError(
            f"order: group {self.name!r} of {self.dim} x {self.dim} matrices has more than "
            f"{limit} elements: its BFS closure would keep |G| * D^2 > {budget} entries (the "
            f"enumeration limit for D = {self.dim}, below max_order = {self.max_order})"
        )

    def _order_at_most(self, limit: int) -> int | None:
        """|G| when it is at most ``limit``, else None; never slower than O(limit) when |G| is not
        known yet: a BFS closure that stops after ``limit`` elements instead of the exact order
        (Schreier--Sims on an imprimitive group of degree 128 can take seconds). For size checks
        made before enumerating or building |G| dense matrices."""
        points = {"perm": self.dim, "signed": 2 * self.dim}.get(self.kind)
        if self._order is None and (
            callable(self._order_hint)  # a formula: cheap
            or (points is not None and points <= _CHEAP_SCHREIER_SIMS_POINTS)
        ):
            self.order()
        if self._order is not None:
            return self._order if self._order <= limit else None
        try:
            return nat.batch_len(self.kind, self._enumerate(limit).elements)
        except GroupTooLargeError:
            return None

    def defining_rep(self):
        """The defining representation of this group (cached): a PermRep,
        SignedPermRep or MatrixRep whose generator images are the defining generators."""
        if getattr(self, "_defining_rep", None) is None:
            from .reps import MatrixRep, PermRep, SignedPermRep  # local: reps imports group

            if self.kind == "perm":
                rep = PermRep(self, self._gens, self.name, dim=self.dim)
            elif self.kind == "signed":
                rep = SignedPermRep(self, *self._gens, self.name, dim=self.dim)
            else:
                rep = MatrixRep(self, self._gens, self.name, dim=self.dim)
            self._defining_rep = rep
        return self._defining_rep

    def trivial_rep(self, dim: int = 1):
        """The trivial representation of this group on R^dim (every element acts as the
        identity): e.g. the action on an invariant output y of a mean-field unit."""
        from .reps import PermRep  # local: reps imports group

        dim = as_int(dim, "dim", minimum=1)  # NumPy / 0-d tensor ints too; never a bool
        identity = np.tile(np.arange(dim, dtype=np.int64), (self.n_generators, 1))
        return PermRep(self, identity, f"trivial({self.name})", dim=dim)

    # ------------------------------------------------------------------ enumeration
    def _enumerate(self, limit: int | None = None) -> BFSTree:
        limit = self.max_order if limit is None else int(limit)
        if self._bfs is not None:
            n = len(self._bfs.parent)
            if n > limit:
                raise GroupTooLargeError(self._too_large_msg(n, limit))
            return self._bfs
        if self._order is not None and self._order > limit:
            raise GroupTooLargeError(self._too_large_msg(self._order, limit))
        kind, gens, k = self.kind, self._gens, self.n_generators
        ident = nat.identity(kind, self.dim, 1)
        seen = {key: 0 for key in nat.keys(kind, ident)}
        batches = [ident]
        parent = [np.array([-1], dtype=np.int64)]
        gen = [np.array([-1], dtype=np.int64)]
        starts = [0]
        frontier, frontier_idx, total = ident, np.array([0], dtype=np.int64), 1
        while k and len(frontier_idx):
            F = len(frontier_idx)
            rep_parent = np.repeat(np.arange(F), k)
            gidx = np.tile(np.arange(k), F)
            cand = nat.compose(
                kind, nat.take(kind, frontier, rep_parent), nat.take(kind, gens, gidx)
            )
            new_rows = []
            for r, key in enumerate(nat.keys(kind, cand)):
                if key not in seen:
                    seen[key] = total
                    total += 1
                    new_rows.append(r)
                    if total > limit:
                        raise GroupTooLargeError(self._too_large_msg(f"more than {limit}", limit))
            if not new_rows:
                break
            rows = np.asarray(new_rows, dtype=np.int64)
            frontier = nat.take(kind, cand, rows)
            parent.append(frontier_idx[rep_parent[rows]])
            gen.append(gidx[rows])
            starts.append(total - len(rows))
            frontier_idx = np.arange(total - len(rows), total, dtype=np.int64)
            batches.append(frontier)
        starts.append(total)
        self._bfs = BFSTree(
            elements=nat.concat(kind, batches),
            parent=np.concatenate(parent),
            gen=np.concatenate(gen),
            level_starts=np.asarray(starts, dtype=np.int64),
        )
        if self._order is None and not callable(self._order_hint):
            self._order = total
        elif self._order is not None and self._order != total:  # pragma: no cover - sanity
            raise RuntimeError(
                f"{self.name}: BFS found {total} elements but order() is {self._order}"
            )
        return self._bfs

    def _too_large_msg(self, n: Any, limit: int) -> str:
        return (
            f"group {self.name!r} has {n} elements, above the enumeration limit {limit}; "
            "use orbit / generator-based methods (fixed_dim, orbit_labels) or raise max_order"
        )

    def elements(self, limit: int | None = None) -> list:
        """All elements in the defining native form, in BFS order.

        Raises :class:`GroupTooLargeError` if ``|G| > limit`` (default ``max_order``).
        """
        tree = self._enumerate(limit)
        return list(nat.items(self.kind, tree.elements))

    def bfs_tree(self, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(parent, gen)`` int64 arrays of the BFS spanning tree (``elements()`` order).

        Element ``e`` equals ``elements[parent[e]] * generator[gen[e]]``; the
        identity has ``parent = gen = -1``.
        """
        tree = self._enumerate(limit)
        return tree.parent.copy(), tree.gen.copy()

    # ------------------------------------------------------------------ derived groups
    def subgroup(self, words: Sequence[Sequence[int]]) -> Group:
        """The subgroup generated by the given words (cached: same words -> same object).

        See :func:`normalize_words` for the word format.
        """
        w = normalize_words(words, self.n_generators)
        if w not in self._subgroups:
            gens = evaluate_words(self.kind, self._gens, self.dim, w)
            self._subgroups[w] = Group(
                f"{self.name}<{','.join('*'.join(map(str, x)) or 'e' for x in w)}>",
                self.kind,
                gens,
                self.dim,
                max_order=self.max_order,
                _validated=True,
            )
        return self._subgroups[w]

    def direct_product(self, other: Group) -> Group:
        """The product group ``self x other`` (cached per pair).

        Generators are ``(a_i, 1)`` for this group's generators followed by
        ``(1, b_j)``; the defining representation is the direct sum of the two
        defining representations (faithful).  Kinds combine as perm+perm -> perm,
        perm/signed -> signed, anything with matrix -> matrix.
        """
        if not (self.is_finite and other.is_finite):
            raise ValueError("direct_product: only finite groups are supported")
        hit = self._products.get(id(other))
        if hit is not None and hit[0] is other:
            return hit[1]
        kind = _join_kind(self.kind, other.kind)
        ga = nat.to_kind(self.kind, self._gens, kind)
        gb = nat.to_kind(other.kind, other._gens, kind)
        ia = nat.identity(kind, self.dim, other.n_generators)
        ib = nat.identity(kind, other.dim, self.n_generators)
        gens = nat.concat(kind, [nat.dsum(kind, ga, ib), nat.dsum(kind, ia, gb)])
        prod = Group(
            f"{self.name}x{other.name}",
            kind,
            gens,
            self.dim + other.dim,
            # a partial, not a lambda: the product is cached on self, and a lambda would make
            # self (and every rep of it) unpicklable -- torch.save of a symmetrized module
            order=partial(_product_order, self, other),
            max_order=self.max_order,
            _validated=True,
        )
        self._products[id(other)] = (other, prod)
        return prod


def _product_order(a: Group, b: Group) -> int:
    """|A x B| = |A| |B| (the order formula of :meth:`Group.direct_product`)."""
    return a.order() * b.order()


def _validate_generators(kind: str, generators: Any, dim: int) -> Any:
    """The native batch of ``generators`` for :class:`Group` (a validated copy; see its
    docstring), with ``dim`` the number of columns every generator must have."""
    if kind == "perm":
        return nat.validate_perms(generators, "generators", dim)
    if kind == "signed":
        if not (isinstance(generators, (tuple, list)) and len(generators) == 2):
            raise ValueError(
                "generators: a 'signed' group takes a pair (perms, signs) of (n_gens, dim) "
                f"arrays, got {type(generators).__name__}"
            )
        p = nat.validate_perms(generators[0], "generators[0] (perms)", dim)
        return p, nat.validate_signs(generators[1], p.shape, "generators[1] (signs)")
    return nat.validate_matrices(generators, "generators", dim)


def _join_kind(a: str, b: str) -> str:
    order = {"perm": 0, "signed": 1, "matrix": 2}
    return a if order[a] >= order[b] else b


class ContinuousGroup(Group):
    """A compact Lie group (SO(2), O(2), SO(3)) given by its defining matrices.

    Attributes:
        lie_algebra: float64 ``(m, d, d)`` basis of the Lie algebra (defining rep).
        discrete: float64 ``(k, d, d)`` discrete generators (O(2): the reflection);
            together with ``exp`` of the Lie algebra they generate the group.
        family: ``"so2"``, ``"o2"`` or ``"so3"`` (selects sampling / quadrature).

    Example::

        >>> G = symkern.groups.so2().group
        >>> G, G.family, G.is_finite, G.kind
        (ContinuousGroup('SO(2)', dim=2), 'so2', False, 'continuous')
        >>> G.lie_algebra.shape, G.discrete.shape  # one Lie generator, no discrete one
        (torch.Size([1, 2, 2]), torch.Size([0, 2, 2]))
        >>> symkern.groups.o2().group.discrete.shape  # O(2) adds the reflection
        torch.Size([1, 2, 2])
        >>> g = G.sample_defining(5, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(g @ g.mT, torch.eye(2, dtype=torch.float64).expand(5, 2, 2))
        True
        >>> G.order()
        Traceback (most recent call last):
        ...
        ValueError: group 'SO(2)' is infinite (continuous); order() is undefined
    """

    def __init__(
        self, name: str, family: str, dim: int, lie_algebra: torch.Tensor, discrete: torch.Tensor
    ) -> None:
        self.name = name
        self.kind = "continuous"
        self.family = family
        self.is_finite = False
        self.dim = int(dim)
        self.lie_algebra = lie_algebra
        self.discrete = discrete
        self._gens = discrete
        self.n_generators = int(discrete.shape[0])
        self.max_order = DEFAULT_MAX_ORDER
        self._subgroups = {}
        self._products = {}

    def __repr__(self) -> str:
        return f"ContinuousGroup({self.name!r}, dim={self.dim})"

    def defining_rep(self):
        """The defining :class:`~symkern.groups.continuous.ContinuousRep` (cached)."""
        if getattr(self, "_defining_rep", None) is None:
            from .continuous import ContinuousRep  # local: continuous imports group

            self._defining_rep = ContinuousRep(self)
        return self._defining_rep

    def trivial_rep(self, dim: int = 1):
        """The trivial :class:`~symkern.groups.continuous.ContinuousRep` on R^dim (every
        element acts as the identity, the Lie algebra as 0; polynomial degree 0)."""
        from .continuous import ContinuousRep  # local: continuous imports group

        dim = as_int(dim, "dim", minimum=1)
        return ContinuousRep(self, ("trivial", dim), f"trivial({self.name})")

    def order(self) -> int:
        raise ValueError(f"group {self.name!r} is infinite (continuous); order() is undefined")

    def elements(self, limit: int | None = None) -> list:
        raise ValueError(
            f"group {self.name!r} is infinite (continuous); use sample() or quadrature()"
        )

    def bfs_tree(self, limit: int | None = None):
        raise ValueError(f"group {self.name!r} is infinite (continuous); it has no BFS tree")

    def _enumerate(self, limit: int | None = None):
        raise ValueError(f"group {self.name!r} is infinite (continuous); it cannot be enumerated")

    def subgroup(self, words):
        raise ValueError(f"subgroup: not supported for the continuous group {self.name!r}")

    def direct_product(self, other):
        raise ValueError("direct_product: only finite groups are supported")

    # -------------------------------------------------------------- defining-rep samples
    def sample_defining(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` Haar-random elements as float64 ``(n, d, d)`` defining matrices (``generator``: a
        torch.Generator or None, TypeError otherwise)."""
        n = as_int(n, "n", minimum=0)
        generator = torch_generator(generator)
        nat.check_sample_entries(n, 2 if self.family in ("so2", "o2") else 3)
        if self.family in ("so2", "o2"):
            theta = torch.rand(n, generator=generator, dtype=torch.float64) * (2 * math.pi)
            mats = _rot2(theta)
            if self.family == "o2":
                flip = torch.rand(n, generator=generator, dtype=torch.float64) < 0.5
                mats = torch.where(flip[:, None, None], mats @ self.discrete[0], mats)
            return mats
        q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
        q = q / q.norm(dim=1, keepdim=True)  # uniform on S^3 -> Haar on SO(3)
        return _quat_to_rot(q)

    def quadrature_nodes(self, degree: int) -> int:
        """The number m of nodes of :meth:`quadrature_defining` at ``degree``: SO(2) degree + 1,
        O(2) twice that, SO(3) (degree + 1)^2 (degree // 2 + 1); computed without building them
        (callers size-check first)."""
        degree = as_int(degree, "degree", minimum=0)
        if self.family in ("so2", "o2"):
            return (degree + 1) * (2 if self.family == "o2" else 1)
        return (degree + 1) ** 2 * (degree // 2 + 1)

    def quadrature_defining(self, degree: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact cubature ``(weights (m,), mats (m, d, d))`` for polynomial degree ``<= degree``."""
        degree = as_int(degree, "degree", minimum=0)
        nodes_needed = self.quadrature_nodes(degree)
        if nodes_needed > MAX_QUADRATURE_NODES:
            raise ValueError(
                f"degree: {degree} needs {nodes_needed} {self.family.upper()} quadrature nodes, "
                f"more than {MAX_QUADRATURE_NODES}; use a lower degree or mode='sample'"
            )
        if self.family in ("so2", "o2"):
            m = degree + 1
            theta = torch.arange(m, dtype=torch.float64) * (2 * math.pi / m)
            mats = _rot2(theta)
            w = torch.full((m,), 1.0 / m, dtype=torch.float64)
            if self.family == "o2":
                mats = torch.cat([mats, mats @ self.discrete[0]])
                w = torch.cat([w, w]) / 2
            return w, mats
        # SO(3): g = Rz(a) Ry(b) Rz(c), Haar = sin(b) da db dc / (8 pi^2).
        M = degree + 1
        nodes, gw = np.polynomial.legendre.leggauss(degree // 2 + 1)
        ang = torch.arange(M, dtype=torch.float64) * (2 * math.pi / M)
        beta = torch.as_tensor(np.arccos(nodes), dtype=torch.float64)
        a, b, c = torch.meshgrid(ang, beta, ang, indexing="ij")
        w = torch.as_tensor(gw, dtype=torch.float64)[None, :, None].expand(M, len(nodes), M)
        mats = _rz(a.reshape(-1)) @ _ry(b.reshape(-1)) @ _rz(c.reshape(-1))
        w = w.reshape(-1)
        return w / w.sum(), mats


def _rot2(theta: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def _rz(t: torch.Tensor) -> torch.Tensor:
    c, s, z, o = torch.cos(t), torch.sin(t), torch.zeros_like(t), torch.ones_like(t)
    return torch.stack(
        [torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1), torch.stack([z, z, o], -1)], -2
    )


def _ry(t: torch.Tensor) -> torch.Tensor:
    c, s, z, o = torch.cos(t), torch.sin(t), torch.zeros_like(t), torch.ones_like(t)
    return torch.stack(
        [torch.stack([c, z, s], -1), torch.stack([z, o, z], -1), torch.stack([-s, z, c], -1)], -2
    )


def _quat_to_rot(q: torch.Tensor) -> torch.Tensor:
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )
