"""Representations of the compact Lie groups SO(2), O(2) and SO(3).

A :class:`ContinuousRep` is built from the defining representation (``so2()``,
``o2()`` on R^2, ``so3()`` on R^3) by tensor products and direct sums; it stores
that construction so that

* ``matrix_of(g)`` maps defining matrices ``g`` (``(d, d)`` or ``(n, d, d)``) to
  this rep's matrices (Kronecker products / block diagonals; tensor products are
  flattened row-major like the finite reps);
* ``lie_algebra_matrices()`` returns ``d rho(A)`` for the Lie-algebra basis, using
  the derivation rule ``d(rho_1 (x) rho_2)(A) = d rho_1(A) (x) I + I (x) d rho_2(A)``;
* ``degree`` is the polynomial degree of the matrix coefficients in the entries of
  ``g`` (defining 1, trivial 0, tensor product: sum, direct sum: max), so
  ``quadrature(rep.degree)`` integrates every matrix coefficient exactly.

``group.trivial_rep(dim)`` is the trivial representation on R^dim (every element acts as
the identity, ``d rho(A) = 0``): e.g. the action on an invariant output, and a building block of
direct sums.

Lie algebra bases: so(2) = span{[[0, -1], [1, 0]]}; so(3) = span{L_x, L_y, L_z}
with ``(L_k)_{ij} = -epsilon_{kij}``.  O(2) additionally has the discrete generator
``diag(1, -1)`` in ``generator_matrices()``.
"""

from __future__ import annotations

from typing import Any

import torch

from symkern._checks import as_int, float_dtype

from ._native import MAX_DENSE_DIM, check_dense_dim, check_sample_entries
from .group import ContinuousGroup
from .reps import Representation, _check_k, _named, _round_mean

__all__ = ["ContinuousRep", "so2", "o2", "so3"]


def _bkron(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n, p, q = a.shape
    _, r, s = b.shape
    return torch.einsum("nij,nkl->nikjl", a, b).reshape(n, p * r, q * s)


def _bdiag(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n, p, _ = a.shape
    r = b.shape[1]
    out = torch.zeros((n, p + r, p + r), dtype=a.dtype)
    out[:, :p, :p] = a
    out[:, p:, p:] = b
    return out


class ContinuousRep(Representation):
    """Orthogonal representation of a compact Lie group built from its defining rep.

    Attributes:
        degree: polynomial degree of the matrix coefficients (see module docstring).

    Example::

        >>> rep = symkern.groups.so3()
        >>> T2 = rep.tensor_power(2)  # SO(3) acting on 3x3 matrices by R Z R^T
        >>> T2.dim, T2.degree, T2.fixed_dim()  # the only invariant is the identity
        (9, 2, 1)
        >>> R = rep.sample(1, generator=torch.Generator().manual_seed(0))[0]
        >>> torch.allclose(T2.matrix_of(R), torch.kron(R, R))
        True
        >>> w, mats = T2.quadrature()  # exact Haar cubature for degree 2
        >>> mats.shape, round(float(w.sum()), 6)
        (torch.Size([18, 9, 9]), 1.0)
    """

    group: ContinuousGroup

    def __init__(
        self, group: ContinuousGroup, node: tuple = ("defining",), name: str | None = None
    ) -> None:
        if not isinstance(group, ContinuousGroup):
            raise ValueError(f"group: expected a ContinuousGroup, got {type(group).__name__}")
        if node[0] == "defining":
            dim, degree = group.dim, 1
        elif node[0] == "trivial":
            dim, degree = node[1], 0
        else:
            op, a, b = node
            dim = a.dim * b.dim if op == "tensor" else a.dim + b.dim
            degree = a.degree + b.degree if op == "tensor" else max(a.degree, b.degree)
        super().__init__(group, dim, name or group.name, node)
        self.degree = int(degree)

    # ------------------------------------------------------------------ matrices
    def matrix_of(self, g: Any) -> torch.Tensor:
        """This rep's matrices of defining matrices ``g``.

        Shapes: ``(d, d) -> (D, D)`` and ``(n, d, d) -> (n, D, D)``.
        """
        check_dense_dim(self.dim, "matrix_of")
        g = torch.as_tensor(g, dtype=torch.float64)
        d = self.group.dim
        if g.shape[-2:] != (d, d) or g.ndim not in (2, 3):
            raise ValueError(f"g: expected shape ({d}, {d}) or (n, {d}, {d}), got {tuple(g.shape)}")
        single = g.ndim == 2
        out = self._matrix_of(g[None] if single else g)
        return out[0] if single else out

    def _matrix_of(self, g: torch.Tensor) -> torch.Tensor:
        node = self._node
        if node[0] == "defining":
            return g
        if node[0] == "trivial":
            return torch.eye(self.dim, dtype=g.dtype).expand(g.shape[0], self.dim, self.dim).clone()
        op, a, b = node
        ma, mb = a._matrix_of(g), b._matrix_of(g)
        return _bkron(ma, mb) if op == "tensor" else _bdiag(ma, mb)

    def character_of(self, g: Any) -> torch.Tensor:
        """``tr rho(g)`` for defining matrices ``g`` (``(n, d, d)`` -> ``(n,)``) without
        building ``(D, D)`` matrices: traces multiply over tensor products and add over
        direct sums."""
        g = torch.as_tensor(g, dtype=torch.float64)
        d = self.group.dim
        if g.ndim != 3 or g.shape[-2:] != (d, d):
            raise ValueError(f"g: expected shape (n, {d}, {d}), got {tuple(g.shape)}")
        return self._trace(g)

    def _trace(self, g: torch.Tensor) -> torch.Tensor:
        node = self._node
        if node[0] == "defining":
            return torch.diagonal(g, dim1=-2, dim2=-1).sum(-1)
        if node[0] == "trivial":
            return torch.full((g.shape[0],), float(self.dim), dtype=g.dtype)
        op, a, b = node
        ta, tb = a._trace(g), b._trace(g)
        return ta * tb if op == "tensor" else ta + tb

    def _dlie(self, A: torch.Tensor) -> torch.Tensor:
        node = self._node
        if node[0] == "defining":
            return A
        if node[0] == "trivial":
            return torch.zeros(A.shape[0], self.dim, self.dim, dtype=A.dtype)
        op, a, b = node
        da, db = a._dlie(A), b._dlie(A)
        if op == "sum":
            return _bdiag(da, db)
        n = A.shape[0]
        ia = torch.eye(a.dim, dtype=A.dtype).expand(n, a.dim, a.dim)
        ib = torch.eye(b.dim, dtype=A.dtype).expand(n, b.dim, b.dim)
        return _bkron(da, ib) + _bkron(ia, db)

    def generator_matrices(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Discrete generators' images ``(k, D, D)`` (O(2): the reflection; SO(n): ``k = 0``).

        A new tensor: for the defining rep the images are the group's own (shared by every rep
        of the singleton group), which an in-place edit of the result must not change.
        ``dtype``: a floating dtype (TypeError otherwise)."""
        float_dtype(dtype)
        check_dense_dim(self.dim, "generator_matrices")
        return self._matrix_of(self.group.discrete).to(dtype, copy=True)

    def lie_algebra_matrices(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``d rho(A)`` for the Lie-algebra basis, ``(m, D, D)`` (skew-symmetric); a new tensor,
        as for :meth:`generator_matrices`; ``dtype`` floating (TypeError otherwise)."""
        float_dtype(dtype)
        check_dense_dim(self.dim, "lie_algebra_matrices")
        return self._dlie(self.group.lie_algebra).to(dtype, copy=True)

    # ------------------------------------------------------------------ combinations
    def tensor_power(self, k: int) -> ContinuousRep:
        """As :meth:`Representation.tensor_power`. A 1-dimensional continuous rep is trivial (the
        defining reps have d >= 2; only trivial reps have dimension 1), and so is each of its
        powers: for any ``k`` (``1^k`` never reaches the dimension limit) T(k) is one trivial
        node, not a tree of k leaves that ``matrix_of`` and the traces would walk."""
        k = _check_k(k)
        if self.dim == 1 and k > 1:
            return ContinuousRep(self.group, ("trivial", 1), f"T{k}({self.name})")
        return super().tensor_power(k)  # type: ignore[return-value]

    def _combine(self, other: Representation, op: str) -> ContinuousRep:
        return _named(ContinuousRep(self.group, (op, self, other)), self, other, op)

    # ------------------------------------------------------------------ integration
    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
    ) -> torch.Tensor:
        """``n`` Haar-random elements ``(n, D, D)`` of the floating ``dtype`` (TypeError otherwise:
        an integer dtype truncated every rotation to zeros): SO(2) uniform angle, O(2) angle and
        a fair-coin reflection, SO(3) uniformly random unit quaternions."""
        n = as_int(n, "n", minimum=0)
        float_dtype(dtype)
        check_dense_dim(self.dim, "sample")
        check_sample_entries(n, self.dim)
        return self._matrix_of(self.group.sample_defining(n, generator)).to(dtype)

    def quadrature(self, degree: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact cubature ``(weights (m,), mats (m, D, D))``, weights summing to 1.

        ``sum_j w_j f(g_j) = int f(g) dg`` (Haar) for every matrix coefficient of a rep
        of polynomial degree ``<= degree`` (default ``self.degree``):

        * SO(2): ``m = degree + 1`` equispaced angles (exact for trig polynomials of
          degree ``< m``); O(2): those angles times {I, reflection};
        * SO(3): ZYZ Euler angles ``Rz(a) Ry(b) Rz(c)``, ``degree + 1`` equispaced
          ``a`` and ``c``, Gauss--Legendre in ``cos b`` with ``degree // 2 + 1`` nodes
          (only ``e^{-i m a} d^l_{m m'}(b) e^{-i m' c}`` with ``m = m' = 0`` survive the
          ``a, c`` sums, and ``d^l_{00}(b) = P_l(cos b)`` has degree ``l <= degree``).
        """
        degree = self.degree if degree is None else degree
        check_dense_dim(self.dim, "quadrature")
        w, g = self.group.quadrature_defining(degree)
        return w, self._matrix_of(g)

    def fixed_dim(self, method: str = "auto") -> int:
        """``dim E^G``.

        ``"nullspace"``: ``D - rank`` of the stacked ``rho(g) - I`` over
        discrete generators and ``d rho(A)`` over the Lie algebra (SVD; singular values
        ``<= 1e-9 * max(1, s_max)`` count as zero, or up to twice the matrices' measured
        orthogonality defect where that is larger; needs ``D <= 4096``).
        ``"quadrature"`` (alias ``"character"``): the character formula with the exact
        cubature, ``sum_j w_j tr rho(g_j)``, traces from :meth:`character_of` (ValueError when
        the terms are too large for float64 to round the mean to the right integer).
        ``"auto"``: the null space up to D = 4096, the character formula above.
        """
        if method == "nullspace" or (method == "auto" and self.dim <= MAX_DENSE_DIM):
            return self._nullspace_dim()
        if method in ("auto", "quadrature", "character"):
            # Quadrature nodes in the defining rep + traces from the construction tree:
            # no (D, D) matrices, so this also works for D > 4096 (where "auto" takes it).
            w, g = self.group.quadrature_defining(self.degree)
            terms = w * self._trace(g)
            mean = float(terms.sum())
            return _round_mean(mean, f"fixed_dim of {self.name}", float(terms.abs().sum()))
        raise ValueError(f"method: expected 'auto', 'nullspace' or 'quadrature', got {method!r}")

    # ------------------------------------------------------------------ meaningless here
    def order(self) -> int:
        return self.group.order()  # raises: infinite group

    def elements(self):
        raise ValueError(f"elements: {self.group.name} is infinite; use sample() or quadrature()")

    def element_matrices(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        float_dtype(dtype)  # as for every rep: a bad dtype is named first
        raise ValueError(
            f"element_matrices: {self.group.name} is infinite; use sample() or quadrature()"
        )

    def character(self) -> torch.Tensor:
        raise ValueError(
            f"character: {self.group.name} is infinite; use quadrature() and take traces"
        )

    def restrict(self, words):
        raise ValueError(f"restrict: not supported for the continuous group {self.group.name}")


# ------------------------------------------------------------------ constructors
_J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)


def _so3_basis() -> torch.Tensor:
    eps = torch.zeros(3, 3, 3, dtype=torch.float64)
    for (i, j, k), s in {
        (0, 1, 2): 1,
        (1, 2, 0): 1,
        (2, 0, 1): 1,
        (0, 2, 1): -1,
        (2, 1, 0): -1,
        (1, 0, 2): -1,
    }.items():
        eps[i, j, k] = s
    return -eps  # (L_k)_{ij} = -eps_{kij}: L_z = [[0,-1,0],[1,0,0],[0,0,0]]


# The Lie groups are canonical, so their Group objects are module-level singletons:
# reps from separate so3() calls belong to the same group and can be combined.
_GROUPS: dict[str, ContinuousGroup] = {}


def _lie_group(family: str) -> ContinuousGroup:
    if family not in _GROUPS:
        if family == "so2":
            g = ContinuousGroup(
                "SO(2)", "so2", 2, _J[None].clone(), torch.zeros(0, 2, 2, dtype=torch.float64)
            )
        elif family == "o2":
            refl = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))[None]
            g = ContinuousGroup("O(2)", "o2", 2, _J[None].clone(), refl)
        else:
            g = ContinuousGroup(
                "SO(3)", "so3", 3, _so3_basis(), torch.zeros(0, 3, 3, dtype=torch.float64)
            )
        _GROUPS[family] = g
    return _GROUPS[family]


def so2() -> ContinuousRep:
    """Defining rep of SO(2) on R^2 (Lie generator ``[[0, -1], [1, 0]]``); singleton group.

    Example::

        >>> rep = symkern.groups.so2()
        >>> rep.fixed_dim(), rep.tensor_power(2).fixed_dim()  # a*I + b*J, J the generator
        (0, 2)
        >>> rep.group is symkern.groups.so2().group  # reps of one group can be combined
        True
    """
    return ContinuousRep(_lie_group("so2"))


def o2() -> ContinuousRep:
    """Defining rep of O(2) on R^2 (SO(2) plus the reflection ``diag(1, -1)``); singleton group.

    Example::

        >>> rep = symkern.groups.o2()
        >>> rep.tensor_power(2).fixed_dim()  # the reflection rules out b*J: only a*I is left
        1
        >>> rep.generator_matrices().shape  # one discrete generator, the reflection
        torch.Size([1, 2, 2])
    """
    return ContinuousRep(_lie_group("o2"))


def so3() -> ContinuousRep:
    """Defining rep of SO(3) on R^3 (the three standard ``L_x, L_y, L_z``); singleton group.

    Example::

        >>> rep = symkern.groups.so3()
        >>> rep.tensor_power(3).fixed_dim(method="quadrature")  # the Levi-Civita symbol eps_ijk
        1
        >>> R = rep.sample(4, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(torch.linalg.det(R), torch.ones(4, dtype=torch.float64))  # rotations
        True
    """
    return ContinuousRep(_lie_group("so3"))
