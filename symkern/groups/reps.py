"""Orthogonal representations of finite groups.

Action convention (shared by every kernel in symkern):

* :class:`PermRep`: the element with permutation array ``perm`` (int64, ``(D,)``)
  acts as ``rho(g) x = x[..., perm]``; its matrix has ``M[i, perm[i]] = 1``.
* :class:`SignedPermRep`: ``(perm, sign)`` acts as ``rho(g) x = sign * x[..., perm]``;
  ``M[i, perm[i]] = sign[i]`` with ``sign`` in {+1, -1}.
* :class:`MatrixRep`: dense orthogonal ``(D, D)`` matrices, ``rho(g) x = M x``.

Products: ``rho(a) rho(b)`` has permutation ``perm_b[perm_a]`` and sign
``sign_a * sign_b[perm_a]``.

Tensor products act on index pairs flattened row-major, ``(i, j) -> i * D2 + j``;
direct sums put the second block after the first (offset ``D1``).  The
conjugation action ``z -> g z g^T`` on ``D x D`` matrices flattened row-major
is exactly ``tensor_power(2)``: ``vec(g z g^T) = (g (x) g) vec(z)``.

Every representation belongs to a :class:`~symkern.groups.group.Group`; its
generator images correspond one-to-one to the group's defining generators, so
images of all elements are obtained by composing generator images along the
group's BFS tree (correct also for non-faithful representations).  The caller of
the public constructors ``PermRep(group, ...)`` etc. is responsible for the
images defining a homomorphism; the module-level constructors in
:mod:`symkern.groups.constructors` always do.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from symkern._checks import as_int, float_dtype, torch_generator

from . import _native as nat
from ._native import check_dense_dim
from .group import ContinuousGroup, Group, _join_kind, evaluate_words, normalize_words
from .orbits import orbit_labels as _orbit_labels

__all__ = [
    "Representation",
    "PermRep",
    "SignedPermRep",
    "MatrixRep",
    "direct_product",
    "NULLSPACE_RTOL",
]

#: Relative tolerance of the null-space rank cut: singular values
#: ``<= NULLSPACE_RTOL * max(1, s_max)`` count as zero (the stacked matrices are
#: differences of orthogonal matrices / skew Lie-algebra images with O(1) entries); the cut is
#: widened to twice the rep's measured orthogonality defect where that is larger (see
#: ``Representation._nullspace_tol``).
NULLSPACE_RTOL = 1e-9
#: Tolerance on the character-formula mean being an integer.
CHARACTER_TOL = 1e-6
# element_matrices keeps float64 images up to this many entries (512 KiB) on the representation
_CACHED_ELEMENT_ENTRIES = 1 << 16


#: Largest dimension of a (signed) permutation representation: its generator arrays hold D int64
#: indices each (its orbit plan a few more per coordinate), so D is capped like the entries of
#: ``element_matrices`` (1e8: 800 MB per generator), far below the int64 indices the plans use.
MAX_PERM_DIM = nat.MAX_ELEMENT_ENTRIES
# A continuous rep never builds D-sized arrays (dense matrices stop at MAX_DENSE_DIM), but its
# traces are float64 with |tr rho(g)| <= D: D must stay below float64's overflow (2^1024).
_MAX_CONTINUOUS_DIM = 2**1023


def _check_k(k: Any) -> int:
    return as_int(k, "k (tensor_power)", minimum=1)


def _dim_limit(kind: str | None) -> tuple[int, str]:
    """The largest dimension of a representation of native ``kind`` (None: continuous), and the
    limit in words for an error message."""
    if kind is None:
        return _MAX_CONTINUOUS_DIM, "2^1023 (a continuous rep's float64 traces |tr| <= D)"
    if kind == "matrix":
        return nat.MAX_DENSE_DIM, f"{nat.MAX_DENSE_DIM} (a MatrixRep stores dense (D, D) matrices)"
    return MAX_PERM_DIM, f"MAX_PERM_DIM = {MAX_PERM_DIM} (D int64 indices per generator)"


def _tensor_kind(a: Representation, b: Representation) -> str | None:
    """Native kind of ``a (x) b`` and ``a (+) b`` (None: a continuous rep, which has none)."""
    if not a.is_finite:
        return None
    return _join_kind(a._kind, b._kind)  # type: ignore[attr-defined]


def _power_text(D: int, k: int) -> str:
    """``D^k`` in words: also its value when that is short (D^k for k = 1e9 has ~5e8 digits)."""
    if k * D.bit_length() > 200:
        return f"{D}^{k}"
    return f"{D}^{k} = {D**k}"


#: A combined rep's name longer than this (distinct operands, combined again and again, can still
#: double it) is replaced by the operation and the dimension.
_MAX_NAME_CHARS = 200
_SYMBOLS = {"sum": "(+)", "tensor": "(x)"}
_R = TypeVar("_R", bound="Representation")


def _name_form(rep: Representation) -> tuple[str, int, str]:
    """(form, count, unit) of ``rep.name`` as :func:`_named` recorded it: "multiple" for
    ``count*unit``, "power" for ``T{count}(unit)``, "sum" / "tensor" for ``a(+)b`` / ``a(x)b``;
    "atom" for any other name, or one changed since (then taken as it is). Count 1 and unit the
    name itself but for the first two."""
    form = rep._cache.get("name_form")
    if form is not None and form[0] == rep.name:
        return form[1:]
    return "atom", 1, rep.name


def _named(out: _R, a: Representation, b: Representation, op: str, fold: bool = True) -> _R:
    """``out`` (``a (x) b`` for ``op`` "tensor", ``a (+) b`` for "sum") named from its operands.

    With ``fold``, copies of one unit fold into a count, as :meth:`Representation.tensor_power`
    names its powers: C3 (x) C3 is ``T2(C3)`` and T2(C3) (x) T3(C3) is ``T5(C3)``; C3 (+) C3 is
    ``2*C3`` and 2*C3 (+) C3 is ``3*C3`` (r = r (+) r repeated k times wrote 2^k copies of r's
    name). Otherwise an operand whose top level is the other operation, or a multiple inside a
    product, is parenthesised — ``(C3(+)C2)(x)C3``, where C3(+)C2(x)C3 was ambiguous — and a name
    longer than ``_MAX_NAME_CHARS`` becomes ``(direct sum of dimension D)``."""
    multiple = "multiple" if op == "sum" else "power"

    def count_unit(r: Representation) -> tuple[int, str]:
        form, count, unit = _name_form(r)
        if form == multiple:
            return count, unit
        # after "k*" a unit with a top-level (+) or (x) needs parentheses; T(...) has its own
        return 1, f"({r.name})" if op == "sum" and form in _SYMBOLS else r.name

    (ka, ua), (kb, ub) = count_unit(a), count_unit(b)
    if fold and ua == ub:
        k = ka + kb
        out.name = f"{k}*{ua}" if op == "sum" else f"T{k}({ua})"
        out._cache["name_form"] = (out.name, multiple, k, ua)
        return out
    inner = ("tensor",) if op == "sum" else ("sum", "multiple")  # parenthesised inside op
    na, nb = (f"({r.name})" if _name_form(r)[0] in inner else r.name for r in (a, b))
    out.name = f"{na}{_SYMBOLS[op]}{nb}"
    if len(out.name) <= _MAX_NAME_CHARS:
        out._cache["name_form"] = (out.name, op, 1, out.name)
    else:  # an atom: parenthesised
        out.name = f"({'direct sum' if op == 'sum' else 'tensor product'} of dimension {out.dim})"
    return out


def _round_mean(mean: float, what: str, magnitude: float = 0.0, drift: float = 0.0) -> int:
    """The integer a character mean stands for. ``magnitude``: the sum of |terms| averaged
    (e.g. Σ_j |w_j tr ρ(g_j)|), whose float64 rounding (~eps per term's size) widens the tolerance
    beyond CHARACTER_TOL; past ~0.1 of it the nearest integer is not certain, which is an error
    saying so rather than a rounded guess (SO(3) T(40): off by 121). ``drift``: a bound on how far
    the traces themselves may be off (generators accepted within ORTHO_TOL of orthogonal), which
    widens it too."""
    rounding = 64 * 2.0**-52 * magnitude
    if rounding >= 0.1:
        raise ValueError(
            f"{what}: the character mean {mean!r} is a sum of terms up to {magnitude:.3g}, too "
            "large for float64 to pin down the integer it stands for; use method='nullspace' "
            "(D <= 4096) or a smaller representation"
        )
    r = round(mean)
    if abs(mean - r) > max(CHARACTER_TOL, rounding, min(drift, 0.1)):
        raise RuntimeError(
            f"{what}: character mean {mean!r} is not within {CHARACTER_TOL} of an integer; "
            "the generator images probably do not define a representation of the group"
        )
    return int(r)


class Representation:
    """Base class: a linear orthogonal action of ``group`` on ``R^dim``.

    Attributes:
        group: the :class:`Group` (or :class:`ContinuousGroup`) acting.
        dim: ``D``, the dimension of the representation space.
        name: human-readable name.
        is_finite: whether the group is finite.

    Example::

        >>> rep = symkern.groups.cyclic(4)
        >>> T2 = rep.tensor_power(2)  # C4 acting on 4x4 matrices
        >>> T2.dim, T2.fixed_dim()  # the invariant matrices are the circulants
        (16, 4)
        >>> T2.character().tolist()  # tr rho(g); its mean is dim E^G = 16 / 4
        [16.0, 0.0, 0.0, 0.0]
    """

    group: Group
    dim: int
    name: str

    def __init__(self, group: Group, dim: int, name: str, node: tuple) -> None:
        self.group = group
        self.dim = int(dim)
        self.name = name
        self._node = node
        self._cache: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, dim={self.dim}, group={self.group.name!r})"

    # ------------------------------------------------------------------ basics
    @property
    def is_finite(self) -> bool:
        return self.group.is_finite

    @property
    def n_generators(self) -> int:
        """Number of discrete generators (same as the group's)."""
        return self.group.n_generators

    #: Enumerate a finite group (its elements in native form, and this rep's images of them) only
    #: while ``|G|`` times the entries of one element stays below this: 400 MB of float64, ~1.7 GB
    #: at the peak of the BFS closure (the elements, their dedup keys and a frontier's products).
    #: The same budget as the Reynolds eigh of :mod:`symkern.ops.fixed_point` and the BFS closure
    #: of :meth:`Group.order <symkern.groups.Group.order>` for a matrix group.
    _ENUMERATION_ENTRIES = 50_000_000

    def order(self) -> int:
        """``|G|`` (exact int); raises ValueError for continuous groups, GroupTooLargeError for a
        matrix group past the enumeration budget (:meth:`Group.order <symkern.groups.Group.order>`).
        """
        return self.group.order()

    def generator_matrices(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Dense generator images ``(n_generators, D, D)`` (ValueError if D > 4096); a new tensor
        (like ``element_matrices``): editing it never changes the representation. ``dtype``: a
        floating torch dtype, as for ``element_matrices`` and ``sample`` (TypeError otherwise)."""
        raise NotImplementedError

    def lie_algebra_matrices(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Images ``d rho(A)`` of a Lie-algebra basis, ``(m, D, D)``; ``m = 0`` if finite; a new
        tensor. ``dtype``: a floating torch dtype (TypeError otherwise)."""
        return torch.zeros((0, self.dim, self.dim), dtype=float_dtype(dtype))

    # ------------------------------------------------------------------ combinations
    def _check_same_group(self, other: Any, what: str) -> None:
        if not isinstance(other, Representation):
            raise ValueError(f"{what}: other must be a Representation, got {type(other).__name__}")
        if self.group is not other.group:
            raise ValueError(
                f"{what}: both representations must belong to the same Group object "
                f"(got {self.group.name!r} and {other.group.name!r}); use direct_product() "
                "for reps of different groups"
            )

    def tensor_product(self, other: Representation) -> Representation:
        """``rho_1 (x) rho_2`` on ``R^{D1 * D2}`` (index ``(i, j) -> i * D2 + j``).

        ValueError when ``D1 * D2`` exceeds the dimension limit of the result's kind:
        :data:`MAX_PERM_DIM` for (signed) permutation reps, ``MAX_DENSE_DIM`` for a MatrixRep,
        2^1023 for continuous reps (float64 traces)."""
        self._check_same_group(other, "tensor_product")
        self._check_combined_dim(other, self.dim * other.dim, "tensor product")
        return self._combine(other, "tensor")

    def direct_sum(self, other: Representation) -> Representation:
        """``rho_1 (+) rho_2`` on ``R^{D1 + D2}`` (second block offset by ``D1``); ValueError when
        ``D1 + D2`` exceeds the dimension limit of the result's kind, as for
        :meth:`tensor_product`."""
        self._check_same_group(other, "direct_sum")
        self._check_combined_dim(other, self.dim + other.dim, "direct sum")
        return self._combine(other, "sum")

    def _check_combined_dim(self, other: Representation, D: int, what: str) -> None:
        """ValueError naming ``other`` when ``self`` combined with it (``what``: "tensor product"
        or "direct sum", of dimension ``D``) passes the dimension limit of the result's kind."""
        limit, text = _dim_limit(_tensor_kind(self, other))
        if D > limit:
            raise ValueError(
                f"other: the {what} of {self.name} (D={self.dim}) and {other.name} "
                f"(D={other.dim}) has dimension {D}, above the limit {text}"
            )

    def tensor_power(self, k: int) -> Representation:
        """``T(k) = rho^{(x) k}`` on ``R^{D^k}``, flattened row-major over index k-tuples.

        ValueError naming ``k`` when ``D^k`` exceeds the dimension limit of the rep's kind
        (:data:`MAX_PERM_DIM` for (signed) permutation reps, ``MAX_DENSE_DIM`` for a MatrixRep,
        2^1023 for continuous reps), checked before anything is built. Built by
        square-and-multiply (``(x)`` is associative on row-major flattened indices): O(log k)
        intermediate reps, each named ``T{j}(name)``, so a 1-dimensional rep's power of any k is
        cheap (a chain kept k reps and names of O(k) characters each).
        """
        k = _check_k(k)
        D = self.dim
        limit, text = _dim_limit(_tensor_kind(self, self))
        # D >= 2 and k > limit.bit_length() give D^k >= 2^k > limit, without computing D^k
        if D > 1 and (k > limit.bit_length() or D**k > limit):
            raise ValueError(
                f"k (tensor_power): T({k}) of {self.name} has dimension {_power_text(D, k)}, "
                f"above the limit {text}"
            )
        if k == 1:
            return self
        square, j = self, 1  # square = T(j), j = 2^i over the bits i of k
        while not k & j:  # the lowest set bit of k starts the product
            square, j = square._combine(square, "tensor"), 2 * j
        out = square  # out = T(m), m = the bits of k seen so far
        while 2 * j <= k:
            square, j = square._combine(square, "tensor"), 2 * j
            if k & j:
                out = out._combine(square, "tensor")
        return out

    def conjugation(self) -> Representation:
        """``z -> g z g^T`` on ``D x D`` matrices flattened row-major (== ``tensor_power(2)``)."""
        return self.tensor_power(2)

    def _combine(self, other: Representation, op: str) -> Representation:
        raise NotImplementedError

    def restrict(self, words: Sequence[Sequence[int]]) -> Representation:
        """Restriction to the subgroup generated by ``words``.

        Each subgroup generator is a word: a list of generator indices ``i`` (generator
        ``i``) or ``-i-1`` (its inverse); ``[a, b]`` means ``g_a * g_b``.  The subgroup is
        ``self.group.subgroup(words)``, cached so that restricting several reps of the
        same group with the same words gives reps of the *same* subgroup object (so they
        can be combined).  Example: ``symmetric(4).restrict([[1]])`` is the cyclic
        subgroup generated by the 4-cycle (order 4).
        """
        raise ValueError(f"restrict: not supported for {type(self).__name__}")

    # ------------------------------------------------------------------ elements
    def elements(self) -> Iterator[Any]:
        """Images of all group elements (BFS order) in this rep's native form."""
        raise ValueError(f"elements: not available for {type(self).__name__}")

    def element_matrices(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Dense images of all group elements, ``(|G|, D, D)``."""
        raise ValueError(f"element_matrices: not available for {type(self).__name__}")

    def character(self) -> torch.Tensor:
        """``tr rho(g)`` for all elements in ``elements()`` order, float64 ``(|G|,)``."""
        raise ValueError(f"character: not available for {type(self).__name__}")

    def fixed_dim(self, method: str = "auto") -> int:
        """``dim E^G`` where ``E^G = {z : rho(g) z = z for all g}``."""
        raise NotImplementedError

    def _constraints(self, what: str) -> torch.Tensor | None:
        """The stacked ``(M_g - I)`` over generators and ``d rho(A)`` over Lie-algebra generators,
        float64 ``(m * D, D)``: E^G is its null space. None when there is no constraint."""
        D = self.dim
        check_dense_dim(D, what)
        eye = torch.eye(D, dtype=torch.float64)
        blocks = [m - eye for m in self.generator_matrices(torch.float64)]
        blocks += list(self.lie_algebra_matrices(torch.float64))
        return torch.cat(blocks, 0) if blocks else None

    def _orthogonality_defect(self) -> float:
        """``eta = sqrt(sum_g |M_g M_g^T - I|_F^2 + sum_A |(dA + dA^T) / 2|_F^2)`` over this rep's
        generator images ``M_g`` and Lie-algebra images ``dA`` (cached): how far its matrices
        are from exactly orthogonal / skew-symmetric. ~1e-15 for exact reps; up to ~1e-8 per
        entry for generators accepted within ``ORTHO_TOL``, compounding in derived reps
        (``T(k)`` of such generators: about ``k`` times theirs), which is why it is measured on
        this rep's own matrices."""
        if "defect" not in self._cache:
            check_dense_dim(self.dim, "fixed-space tolerance")
            eye = torch.eye(self.dim, dtype=torch.float64)
            m = self.generator_matrices(torch.float64)
            a = self.lie_algebra_matrices(torch.float64)
            sq = float(((m @ m.mT - eye) ** 2).sum()) + float((((a + a.mT) / 2) ** 2).sum())
            self._cache["defect"] = sq**0.5
        return self._cache["defect"]

    #: Singular values below this times ``max(1, s_max)`` are re-measured by an SVD of their own
    #: when :meth:`_constraint_svd` falls back to the Gram matrix's eigenvectors: far above the
    #: ``NULLSPACE_RTOL`` cut and what that eigensolver resolves (``~1e-8 s_max``), and high
    #: enough that the eigenvectors left out (``s^2 >= 1e-4 s_max^2``) are each off the null
    #: space by at most ``~eps s_max^2 / s^2 <= 1e4 eps``.
    _GRAM_REFINE_RTOL = 1e-2

    def _nullspace_tol(self, s: torch.Tensor) -> float:
        """Singular values ``s <= max(NULLSPACE_RTOL * max(1, s_max), 2 * eta)`` of the stacked
        constraints count as zero, ``eta`` the :meth:`_orthogonality_defect`.

        Why ``eta``: write ``M_g = Q_g P_g`` (polar decomposition, ``Q_g`` orthogonal,
        ``P_g = (M_g^T M_g)^{1/2}``) and suppose the orthogonal factors act exactly. A unit
        ``z`` fixed by them has ``|(M_g - I) z| = |Q_g (P_g - I) z| <= max_i |sigma_i - 1| <=
        max_i |sigma_i^2 - 1| = |M_g^T M_g - I|_2 <= |M_g M_g^T - I|_F`` (``sigma_i`` the
        singular values of ``M_g``; ``M^T M`` and ``M M^T`` share eigenvalues), and likewise
        ``|dA z| <= |(dA + dA^T) / 2|_F`` (only the symmetric part moves it). Stacked, the
        constraint matrix moves every unit vector of that ``E^G`` by at most ``eta``, so (min-max)
        it has ``dim E^G`` singular values ``<= eta``: with the cut below ``eta`` generators
        accepted within ``ORTHO_TOL`` lost invariants (defect 6.6e-9 > 1e-9). The factor 2 covers
        the SVD's own rounding; exact reps keep the relative cut."""
        rel = NULLSPACE_RTOL * max(1.0, float(s.max()) if s.numel() else 0.0)
        return max(rel, 2.0 * self._orthogonality_defect())

    def _nullspace_dim(self) -> int:
        """Null-space dimension of the stacked ``(M_g - I)`` and ``d rho(A)`` (SVD).

        A singular value ``s`` counts as zero when it is at most :meth:`_nullspace_tol`.
        """
        c = self._constraints("fixed_dim(method='nullspace')")
        if c is None:
            return self.dim
        s, _ = self._constraint_svd(c, vectors=False)
        return self.dim - int((s > self._nullspace_tol(s)).sum())

    def _nullspace_basis(self) -> torch.Tensor:
        """Orthonormal basis ``(D, k)`` float64 of E^G as the null space of the stacked
        ``(M_g - I)`` and ``d rho(A)``: the right singular vectors whose singular value is zero
        by the cut of :meth:`_nullspace_dim` (so ``k`` is that dimension)."""
        c = self._constraints("fixed_point_basis")
        if c is None:
            return torch.eye(self.dim, dtype=torch.float64)
        s, vh = self._constraint_svd(c, vectors=True)
        assert vh is not None  # narrowing: vectors=True
        return vh[s <= self._nullspace_tol(s)].T.contiguous()

    def _constraint_svd(
        self, c: torch.Tensor, vectors: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Singular values ``s`` ``(D,)`` of the stacked constraints ``c`` ``(m * D, D)`` and, if
        ``vectors``, its right singular vectors as the rows of ``vh`` ``(D, D)`` (``m * D >= D``
        rows: one right singular vector per singular value).

        LAPACK's divide-and-conquer SVD (``gesdd``, torch's only CPU driver) can fail to converge
        on matrices with large clusters of equal singular values, depending on the thread count:
        T(7) of SO(3) (``c`` 6561 x 2187, 36 zero singular values and hundreds of equal ones)
        raised ``LinAlgError`` after ~10 s with one MKL thread, T(10) of O(2) with two. Then the
        symmetric eigensolver, which has no such failure, takes over: ``c^T c = V diag(s^2) V^T``.
        Its eigenvalues are accurate only to about ``eps * s_max^2``, i.e. ``s`` to
        ``~1e-8 s_max``, too coarse for the zero cut of :meth:`_nullspace_tol` (``1e-9 s_max``);
        so the eigenvectors ``V_0`` ``(D, k_0)`` with ``s <= _GRAM_REFINE_RTOL * max(1, s_max)``
        (or 100 times the cut, if larger) are re-measured by an SVD of ``c V_0``
        ``(m * D, k_0)``, ``k_0 >= dim E^G`` and usually close to it: its singular values are
        those of ``c`` on span ``V_0`` to ``~eps s_max``, and its right singular vectors ``W``
        give ``vh = W^T V_0^T`` there (should that small SVD fail too, its ``LinAlgError``
        propagates: never a wrong basis). The other ``s = sqrt(s^2)`` lie far above the cut.
        """
        try:
            if vectors:
                _, s, vh = torch.linalg.svd(c, full_matrices=False)
                return s, vh
            return torch.linalg.svdvals(c), None
        except torch.linalg.LinAlgError:
            pass
        lam, v = torch.linalg.eigh(c.T @ c)  # ascending
        s_all = lam.clamp_min(0.0).sqrt()
        s_max = float(s_all[-1]) if s_all.numel() else 0.0
        cut = max(self._GRAM_REFINE_RTOL * max(1.0, s_max), 100.0 * self._nullspace_tol(s_all))
        small = s_all <= cut
        v0 = v[:, small]
        _, s0, w0 = torch.linalg.svd(c @ v0, full_matrices=False)  # (k_0,), (k_0, k_0)
        big = ~small
        s = torch.cat([s_all[big].flip(0), s0])  # descending, like torch.linalg.svd
        vh = torch.cat([v[:, big].T.flip(0), w0 @ v0.T]) if vectors else None
        return s, vh

    # ------------------------------------------------------------------ integration
    def quadrature(self, degree: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weights (m,), mats (m, D, D))`` integrating matrix coefficients exactly."""
        raise NotImplementedError

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
    ) -> torch.Tensor:
        """``n`` uniformly (Haar) random elements as ``(n, D, D)`` matrices."""
        raise NotImplementedError


# =============================================================================== finite reps
_FR = TypeVar("_FR", bound="_FiniteRep")


class _FiniteRep(Representation):
    """Shared machinery of PermRep / SignedPermRep / MatrixRep.

    ``_node`` is ``("base",)`` (generator images stored), ``("tensor", a, b)`` or
    ``("sum", a, b)``; generator images of composite reps are built lazily and the
    character uses the node (product / sum of characters), so e.g. the character
    of ``T(k)`` of a permutation rep never touches ``D^k``-sized arrays.
    """

    _kind = "perm"

    @classmethod
    def _make(
        cls: type[_FR], group: Group, dim: int, name: str, node: tuple, gens: Any = None
    ) -> _FR:
        obj = cls.__new__(cls)
        Representation.__init__(obj, group, dim, name, node)
        if gens is not None:
            obj._cache["gens"] = gens
        return obj

    def _native_gens(self) -> Any:
        """Generator images in native form (cached)."""
        if "gens" not in self._cache:
            op, a, b = self._node
            kind = self._kind
            ga = nat.to_kind(a._kind, a._native_gens(), kind)
            gb = nat.to_kind(b._kind, b._native_gens(), kind)
            self._cache["gens"] = (
                nat.kron(kind, ga, gb) if op == "tensor" else nat.dsum(kind, ga, gb)
            )
        return self._cache["gens"]

    def _combine(self, other: Representation, op: str) -> Representation:
        kind = _join_kind(self._kind, other._kind)  # type: ignore[attr-defined]
        # D is within the kind's limit: tensor_product / direct_sum / tensor_power checked it
        # (_dim_limit: MAX_DENSE_DIM for a MatrixRep), and a restriction keeps the dimensions
        D = self.dim * other.dim if op == "tensor" else self.dim + other.dim
        out = _CLASSES[kind]._make(self.group, D, "", (op, self, other))
        return _named(out, self, other, op)

    def generator_matrices(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        # floating dtypes only, as for every rep: an integer one truncated a MatrixRep's
        # entries (a 60-degree rotation came out 0 / 1) and bool made every entry True
        float_dtype(dtype)
        check_dense_dim(self.dim, "generator_matrices")
        return nat.to_matrices(self._kind, self._native_gens(), dtype)

    def _orthogonality_defect(self) -> float:
        # (signed) permutation matrices are exactly orthogonal: no D x D products to measure it
        return super()._orthogonality_defect() if self._kind == "matrix" else 0.0

    def _element_drift(self) -> float:
        """A bound on |M_g − Q_g|₂ over the enumerated elements, Q_g orthogonal: generators
        accepted as orthogonal within ORTHO_TOL are M_i = Q_i P_i (polar) with |M_i − Q_i|₂ ≤ η,
        the :meth:`_orthogonality_defect`; an element at BFS depth L is a product of L generator
        images, so |M_g − Q_g|₂ ≤ L·η·(1+η)^(L−1) ≤ 2·depth·η. If the Q_i act exactly, the
        Reynolds operator's eigenvalues lie within this of 0 or 1 (Weyl) and each trace within D
        times it. Without it a rotation rounded to 8 decimals lost both invariants of its
        conjugation rep (C60), and its T2 x T2 character mean came out 6.0000026."""
        if self._kind != "matrix":
            return 0.0
        depth = len(self.group._enumerate().level_starts) - 2
        return 2.0 * depth * self._orthogonality_defect()

    def to_matrix_rep(self) -> MatrixRep:
        """The same representation (same group object) as a dense :class:`MatrixRep`."""
        check_dense_dim(self.dim, "to_matrix_rep")
        return MatrixRep._make(
            self.group,
            self.dim,
            f"mat({self.name})",
            ("base",),
            nat.to_matrices(self._kind, self._native_gens(), torch.float64),
        )

    # -------------------------------------------------------------- restriction
    def restrict(self, words: Sequence[Sequence[int]]) -> Representation:
        w = normalize_words(words, self.n_generators)
        sub = self.group.subgroup(w)
        return self._restrict_to(sub, w, {})

    restrict.__doc__ = Representation.restrict.__doc__

    def _restrict_to(self, sub: Group, words: tuple, memo: dict) -> Representation:
        if id(self) in memo:
            return memo[id(self)]
        out: Representation
        if self._node[0] == "base":
            gens = evaluate_words(self._kind, self._native_gens(), self.dim, words)
            out = type(self)._make(sub, self.dim, f"{self.name}|{sub.name}", ("base",), gens)
        else:
            op, a, b = self._node
            ra, rb = a._restrict_to(sub, words, memo), b._restrict_to(sub, words, memo)
            out = ra._combine(rb, op)
        memo[id(self)] = out
        return out

    # -------------------------------------------------------------- elements
    def _level_batches(self) -> Iterator[Any]:
        """Native batches of element images, one per BFS level (bounded memory)."""
        tree = self.group._enumerate()
        kind, gens = self._kind, self._native_gens()
        starts = tree.level_starts
        prev = nat.identity(kind, self.dim, 1)
        yield prev
        for lvl in range(1, len(starts) - 1):
            s, e = int(starts[lvl]), int(starts[lvl + 1])
            par = tree.parent[s:e] - starts[lvl - 1]
            cur = nat.compose(kind, nat.take(kind, prev, par), nat.take(kind, gens, tree.gen[s:e]))
            yield cur
            prev = cur

    def elements(self) -> Iterator[Any]:
        """Images of all elements in BFS order (``group.elements()`` order).

        PermRep yields int64 ``perm`` arrays ``(D,)``; SignedPermRep yields
        ``(perm, sign)``; MatrixRep yields float64 ``(D, D)`` tensors.  Raises
        :class:`GroupTooLargeError` if the group exceeds its enumeration limit.
        """
        for batch in self._level_batches():
            yield from nat.items(self._kind, batch)

    def element_matrices(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Dense ``(|G|, D, D)`` images of all elements, ``elements()`` order (a new tensor).

        Up to :data:`_CACHED_ELEMENT_ENTRIES` entries the float64 images are kept on the
        representation: every particle-engine call asks for them, and building them (group
        enumeration + native batches) cost ~0.35 ms per call, 0.2 µs per step of a 2000-step
        N = 50 call. ``dtype``: a floating dtype (TypeError otherwise: an integer one truncated
        the entries of a rotation to 0 / 1).
        """
        float_dtype(dtype)
        cached = self._cache.get("element_matrices")
        if cached is not None:
            return cached.to(dtype=dtype, copy=True)
        check_dense_dim(self.dim, "element_matrices")
        # Size checks before any exact order: it may cost seconds (Schreier--Sims on large
        # degrees) for a group far too large to enumerate anyway.
        entries_cap = nat.MAX_ELEMENT_ENTRIES // (self.dim * self.dim)
        if self.group._order_at_most(min(entries_cap, self.group.max_order)) is None:
            if entries_cap < self.group.max_order:
                raise ValueError(
                    f"element_matrices: |G| * D^2 exceeds the limit {nat.MAX_ELEMENT_ENTRIES} "
                    f"entries (|G| > {entries_cap} at D = {self.dim})"
                )
            self.group._enumerate()  # raises GroupTooLargeError (|G| > max_order)
        mats = torch.cat(
            [nat.to_matrices(self._kind, b, torch.float64) for b in self._level_batches()]
        )
        if mats.numel() <= _CACHED_ELEMENT_ENTRIES:
            self._cache["element_matrices"] = mats
        return mats.to(dtype=dtype, copy=True)

    def character(self) -> torch.Tensor:
        """``tr rho(g)`` in ``elements()`` order, float64 ``(|G|,)``.

        Perm: number of fixed points; signed: sum of signs at fixed points; tensor
        product: product of characters; direct sum: sum of characters.
        """
        if "character" not in self._cache:
            node = self._node
            if node[0] == "base":
                ch = torch.as_tensor(
                    np.concatenate([nat.traces(self._kind, b) for b in self._level_batches()]),
                    dtype=torch.float64,
                )
            elif node[0] == "tensor":
                ch = node[1].character() * node[2].character()
            else:
                ch = node[1].character() + node[2].character()
            self._cache["character"] = ch
        return self._cache["character"].clone()

    def _character_fixed_dim(self) -> int:
        ch = self.character()
        mean = float(ch.sum()) / ch.numel()
        drift = 0.0
        if abs(mean - round(mean)) > CHARACTER_TOL:  # traces of nearly orthogonal generators
            drift = self.dim * self._element_drift()
        return _round_mean(mean, f"fixed_dim of {self.name}", float(ch.abs().mean()), drift)

    def fixed_dim(self, method: str = "auto") -> int:
        """``dim E^G``.

        Methods: ``"orbits"`` (perm / signed reps: number of orbits, minus signed orbits
        containing some ``+e_i`` and ``-e_i``; works for non-enumerable groups),
        ``"character"`` (``(1/|G|) sum_g tr rho(g)``, needs enumeration),
        ``"nullspace"`` (SVD of the stacked ``M_g - I`` over generators, D <= 4096),
        ``"auto"`` (orbits for perm reps; character if enumerable else nullspace for
        matrix reps).
        """
        if method == "auto":
            method = self._auto_fixed_method()
        if method == "orbits":
            if self._kind == "matrix":
                raise ValueError("method: 'orbits' needs a PermRep or SignedPermRep")
            labels, rel = self.orbit_labels()  # type: ignore[attr-defined]
            return int(((labels == np.arange(self.dim)) & (rel != 0)).sum())
        if method in ("character", "quadrature"):
            if "character" not in self._cache and not self._enumerable():
                limit = self._enumeration_limit()
                if limit >= self.group.max_order:
                    self.group._enumerate()  # raises GroupTooLargeError (|G| > max_order)
                raise nat.GroupTooLargeError(
                    f"fixed_dim(method={method!r}): group {self.group.name!r} has more than "
                    f"{limit} elements: enumerating them for the character would keep |G| x "
                    f"{self._element_entries()} entries > {self._ENUMERATION_ENTRIES}; use "
                    "method='nullspace' (D <= 4096)"
                )
            return self._character_fixed_dim()
        if method == "nullspace":
            return self._nullspace_dim()
        raise ValueError(
            f"method: expected 'auto', 'orbits', 'character' or 'nullspace', got {method!r}"
        )

    def _auto_fixed_method(self) -> str:
        return "orbits"

    def _element_entries(self) -> int:
        """Entries one element takes when the character is computed: its image in every base rep
        of this rep's tree (dense ``D x D`` for matrix reps, ``2 D`` for permutations: the array
        and its signs or dedup key; tensor products and sums combine their factors' characters,
        never ``D^k``-sized images) and in the group's defining form, kept by the BFS closure."""
        node, group = self._node, self.group
        if node[0] == "base":
            own = self.dim**2 if self._kind == "matrix" else 2 * self.dim
        else:
            own = max(node[1]._element_entries(), node[2]._element_entries())
        return max(own, group.dim**2 if group.kind == "matrix" else 2 * group.dim)

    def _enumeration_limit(self) -> int:
        """The largest ``|G|`` enumerated for the character: ``max_order``, and
        ``|G| * _element_entries() <= _ENUMERATION_ENTRIES``. Without the second cap a MatrixRep of
        S_60 on R^60 closed 100 000 dense elements before giving up: ~2.7 GB at D = 30, an
        allocation failure at D = 60."""
        return min(self.group.max_order, self._ENUMERATION_ENTRIES // self._element_entries())

    def _enumerable(self) -> bool:
        """Whether the group has at most :meth:`_enumeration_limit` elements: a bounded BFS, never
        the exact order of a large group (seconds of Schreier--Sims for a high-degree perm
        group)."""
        return self.group._order_at_most(self._enumeration_limit()) is not None

    # -------------------------------------------------------------- integration
    def quadrature(self, degree: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniform weights ``1/|G|`` over ``element_matrices()`` (exact for any degree)."""
        mats = self.element_matrices()
        return torch.full((mats.shape[0],), 1.0 / mats.shape[0], dtype=torch.float64), mats

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
    ) -> torch.Tensor:
        """``n`` uniformly random elements (with replacement) as ``(n, D, D)`` matrices of the
        floating ``dtype`` (TypeError otherwise), drawn from ``generator`` (a torch.Generator or
        None, TypeError otherwise)."""
        n = as_int(n, "n", minimum=0)
        float_dtype(dtype)
        generator = torch_generator(generator)
        nat.check_sample_entries(n, self.dim)
        mats = self.element_matrices(dtype)
        idx = torch.randint(mats.shape[0], (n,), generator=generator)
        return mats[idx]


class PermRep(_FiniteRep):
    """Permutation representation: ``rho(g) x = x[..., perm]``, ``M[i, perm[i]] = 1``.

    Args:
        group: the group; ``perms[i]`` is the image of its ``i``-th generator.
        perms: int64 ``(n_generators, D)`` permutation arrays.
        name: optional name.
        dim: D, needed only when the group has no generators.

    Example::

        >>> rep = symkern.groups.cyclic(3)
        >>> perm = rep.permutations()[0].tolist()
        >>> x = torch.tensor([10.0, 20.0, 30.0])
        >>> perm, x[perm].tolist()  # rho(g) x = x[..., perm]
        ([1, 2, 0], [20.0, 30.0, 10.0])
        >>> torch.equal(rep.generator_matrices(torch.float32)[0] @ x, x[perm])  # M[i, perm[i]] = 1
        True
    """

    _kind = "perm"

    def __init__(
        self, group: Group, perms: Any, name: str | None = None, dim: int | None = None
    ) -> None:
        p = nat.validate_perms(perms, "perms", dim)
        _check_n_gens(group, p.shape[0], "perms")
        Representation.__init__(self, group, p.shape[1], name or group.name, ("base",))
        self._cache["gens"] = p

    def permutations(self) -> np.ndarray:
        """Generator permutation arrays, int64 ``(n_generators, D)`` (cached, read-only).

        For tensor powers / products this is the action on flattened index tuples.
        """
        p = self._native_gens()
        p.flags.writeable = False
        return p

    def orbit_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, rel_sign)`` of :func:`symkern.groups.orbits.orbit_labels` (cached)."""
        if "orbits" not in self._cache:
            self._cache["orbits"] = _orbit_labels(self.permutations(), None)
        return self._cache["orbits"]


class SignedPermRep(_FiniteRep):
    """Signed permutation rep: ``rho(g) x = sign * x[..., perm]``, ``M[i, perm[i]] = sign[i]``.

    Args:
        group: the group; ``(perms[i], signs[i])`` is the image of generator ``i``.
        perms: int64 ``(n_generators, D)``; signs: float ``(n_generators, D)`` of +-1.

    Example::

        >>> rep = symkern.groups.signed_perm_rep([[1, 0]], [[1.0, -1.0]])  # (x, y) -> (y, -x)
        >>> type(rep).__name__, rep.permutations().tolist(), rep.signs().tolist()
        ('SignedPermRep', [[1, 0]], [[1.0, -1.0]])
        >>> x = torch.tensor([10.0, 20.0])
        >>> (torch.tensor([1.0, -1.0]) * x[[1, 0]]).tolist()  # rho(g) x = sign * x[..., perm]
        [20.0, -10.0]
        >>> rep.generator_matrices()[0].tolist()  # M[i, perm[i]] = sign[i]
        [[0.0, 1.0], [-1.0, 0.0]]
        >>> [a.tolist() for a in rep.orbit_labels()]  # one orbit {+-e_0, +-e_1}: rel_sign 0
        [[0, 0], [0.0, 0.0]]
        >>> rep.fixed_dim()  # so no invariant vector
        0
    """

    _kind = "signed"

    def __init__(
        self, group: Group, perms: Any, signs: Any, name: str | None = None, dim: int | None = None
    ) -> None:
        p = nat.validate_perms(perms, "perms", dim)
        s = nat.validate_signs(signs, p.shape, "signs")
        _check_n_gens(group, p.shape[0], "perms")
        Representation.__init__(self, group, p.shape[1], name or group.name, ("base",))
        self._cache["gens"] = (p, s)

    def permutations(self) -> np.ndarray:
        """Generator permutation arrays, int64 ``(n_generators, D)`` (cached, read-only)."""
        p = self._native_gens()[0]
        p.flags.writeable = False
        return p

    def signs(self) -> np.ndarray:
        """Generator signs, float64 ``(n_generators, D)`` of +-1 (cached, read-only)."""
        s = self._native_gens()[1]
        s.flags.writeable = False
        return s

    def orbit_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, rel_sign)``; ``rel_sign == 0`` on orbits that average to zero (cached)."""
        if "orbits" not in self._cache:
            self._cache["orbits"] = _orbit_labels(self.permutations(), self.signs())
        return self._cache["orbits"]


class MatrixRep(_FiniteRep):
    """Dense orthogonal representation of a finite group (``D <= 4096``).

    Args:
        group: the group; ``matrices[i]`` is the image of generator ``i``.
        matrices: float ``(n_generators, D, D)`` orthogonal matrices.

    Example::

        >>> C4 = symkern.groups.cyclic(4).group
        >>> rot = symkern.groups.MatrixRep(C4, [[[0.0, -1.0], [1.0, 0.0]]])  # 4-cycle -> 90 deg
        >>> rot.element_matrices().shape, rot.fixed_dim()
        (torch.Size([4, 2, 2]), 0)
        >>> both = rot.direct_sum(symkern.groups.cyclic(4))  # same group object: combinable
        >>> type(both).__name__, both.dim, both.fixed_dim()
        ('MatrixRep', 6, 1)
    """

    _kind = "matrix"

    def __init__(
        self, group: Group, matrices: Any, name: str | None = None, dim: int | None = None
    ) -> None:
        m = nat.validate_matrices(matrices, "matrices", dim)
        _check_n_gens(group, m.shape[0], "matrices")
        Representation.__init__(self, group, m.shape[1], name or group.name, ("base",))
        self._cache["gens"] = m

    def _auto_fixed_method(self) -> str:
        # enumerable within max_order and the memory budget (the character formula) or not
        try:
            enumerable = self._enumerable()
        except RecursionError:
            return "nullspace"
        return "character" if enumerable else "nullspace"


_CLASSES: dict[str, type[_FiniteRep]] = {
    "perm": PermRep,
    "signed": SignedPermRep,
    "matrix": MatrixRep,
}


def _check_n_gens(group: Group, k: int, name: str) -> None:
    if not isinstance(group, Group) or isinstance(group, ContinuousGroup):
        raise ValueError(
            f"group: expected a finite symkern.groups.Group, got {type(group).__name__}"
        )
    if k != group.n_generators:
        raise ValueError(
            f"{name}: got {k} generator images but group {group.name!r} has "
            f"{group.n_generators} generators"
        )


def direct_product(
    rep_a: Representation, rep_b: Representation, mode: str = "sum"
) -> Representation:
    """Representation of the product group ``A x B`` built from reps of ``A`` and ``B``.

    The product group (``rep_a.group.direct_product(rep_b.group)``, cached per pair)
    has generators ``(a_i, 1)`` followed by ``(1, b_j)``.  ``mode="sum"`` acts on
    ``V_a (+) V_b`` (images ``rho_a(a_i) (+) I`` and ``I (+) rho_b(b_j)``),
    ``mode="tensor"`` on ``V_a (x) V_b`` (``rho_a(a_i) (x) I``, ``I (x) rho_b(b_j)``).
    Finite groups only.  Result kind: perm/perm -> PermRep, perm/signed -> SignedPermRep,
    anything with a MatrixRep -> MatrixRep.

    Example::

        >>> from symkern.groups import c2_swap, cyclic, direct_product
        >>> rep = direct_product(cyclic(3), c2_swap())  # C3 x C2 on R^3 (+) R^2
        >>> rep.dim, rep.order(), rep.fixed_dim()  # one invariant per factor
        (5, 6, 2)
        >>> direct_product(cyclic(3), c2_swap(), mode="tensor").fixed_dim()  # on R^3 (x) R^2
        1
    """
    if mode not in ("sum", "tensor"):
        raise ValueError(f"mode: expected 'sum' or 'tensor', got {mode!r}")
    for nm, r in (("rep_a", rep_a), ("rep_b", rep_b)):
        if not isinstance(r, _FiniteRep):
            raise ValueError(
                f"{nm}: direct_product needs a finite-group representation, got {type(r).__name__}"
            )
    # narrowing only: the loop above raised unless both are _FiniteRep
    assert isinstance(rep_a, _FiniteRep) and isinstance(rep_b, _FiniteRep)
    group = rep_a.group.direct_product(rep_b.group)
    kind = _join_kind(rep_a._kind, rep_b._kind)
    Da, Db = rep_a.dim, rep_b.dim
    ga = nat.to_kind(rep_a._kind, rep_a._native_gens(), kind)
    gb = nat.to_kind(rep_b._kind, rep_b._native_gens(), kind)
    ia = nat.identity(kind, Da, rep_b.n_generators)
    ib = nat.identity(kind, Db, rep_a.n_generators)
    op = nat.dsum if mode == "sum" else nat.kron
    D = Da + Db if mode == "sum" else Da * Db
    if kind == "matrix":
        check_dense_dim(D, "direct_product")
    gens = nat.concat(kind, [op(kind, ga, ib), op(kind, ia, gb)])
    out = _CLASSES[kind]._make(group, D, "", ("base",), gens)
    # no folding: two reps of different groups, not two copies of one rep
    return _named(out, rep_a, rep_b, mode, fold=False)
