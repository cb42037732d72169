"""Fixed-point subspaces E^G = {z : ρ(g) z = z ∀g}: an orthonormal basis, and projection onto it.

* (Signed) permutation reps, tensor powers included: the basis is the orbit indicators
  Σ_{i∈O} s_i e_i / √|O| over the orbits O that do not contain a coordinate and its negative —
  exact, O(D), never a D×D matrix. Projection = the orbit mean (:mod:`symkern.ops.orbit`).
* Finite matrix reps: eigenvectors of the Reynolds operator (1/|G|) Σ_g M_g with eigenvalue 1 when
  G is enumerable (|G| <= max_order and |G|·D² cheap), otherwise the null space of the stacked
  (M_g − I) over generators (an SVD with the tolerance of ``rep.fixed_dim()``). Both cuts widen
  with the rep's measured orthogonality defect, so generators accepted as orthogonal within
  ``ORTHO_TOL`` (1e-8) keep every invariant.
* Compact continuous groups: the null space of (M_g − I) over discrete generators and of dρ(A) over
  Lie-algebra generators.
* Projection for matrix / continuous reps: Q (Qᵀ x), two skinny products (the
  ``symkern::project_lowrank`` op), never a dense D×D projector.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from symkern.backends.registry import select_kernel
from symkern.groups import Representation
from symkern.ops._common import (
    as_rows,
    build_cold_cache,
    building_constants,
    check_float_tensor,
    check_out,
    check_out_memory,
    check_rep,
    custom_op,
    from_rows,
    normalize_dim,
    rep_cache,
    rows_view,
    run_projection,
)
from symkern.ops.orbit import _is_perm_like, _rows_orbit_mean, apply_orbit_mean, orbit_plan

if TYPE_CHECKING:
    from symkern.groups.reps import _FiniteRep

__all__ = ["fixed_point_basis", "project_fixed"]

# Enumerate the group for the Reynolds eigh only when it is cheap: |G|·D² multiply-adds. The same
# budget caps the enumerations of rep.fixed_dim() and rep.order().
_REYNOLDS_ENUMERATION_LIMIT = Representation._ENUMERATION_ENTRIES
# A dense (D, k) basis of a permutation rep above this many entries is almost surely a mistake
# (project_fixed / orbits never need it).
_DENSE_BASIS_LIMIT = 5e7
# Relative tolerance of the null-space / eigenvalue cut (matrices are orthogonal: O(1) entries).
_NULLSPACE_RTOL = 1e-9


def _perm_basis(rep: Representation) -> torch.Tensor:
    # numpy, not torch: at D ~ 1e4 the scatter below costs ~1 ms in numpy and tens of ms in
    # torch's threaded index_put on a 2-core machine.
    plan = orbit_plan(rep, torch.float64, torch.device("cpu"))
    orbit_id, coef = plan.orbit_id.numpy(), plan.coef.numpy()
    inv_size = plan.inv_size.numpy()
    alive = coef[plan.order.numpy()[plan.seg_start.numpy()[:-1]]] != 0  # not averaging to zero
    k = int(alive.sum())
    if rep.dim * k > _DENSE_BASIS_LIMIT:
        raise ValueError(
            f"a dense fixed-point basis would be {rep.dim} x {k} ({rep.dim * k:.2e} entries); use "
            "symkern.orbits(rep) for the structured basis or symkern.project_fixed(x, rep) to "
            "project without it"
        )
    column = np.full(plan.n_orbits, -1, dtype=np.int64)
    column[alive] = np.arange(k)
    col_of_coord = column[orbit_id]
    coords = np.nonzero(col_of_coord >= 0)[0]
    basis = np.zeros((rep.dim, k))
    basis[coords, col_of_coord[coords]] = coef[coords] * np.sqrt(inv_size[orbit_id[coords]])
    return torch.from_numpy(basis)


def _eigh_fixed(sym: torch.Tensor, target: float, drift: float) -> torch.Tensor:
    """Eigenvectors of a symmetric PSD-ish matrix with eigenvalue within tolerance of ``target``;
    ``drift`` bounds how far the eigenvalues may lie from their exact values (a finite rep's
    ``_element_drift``). The cut stays below 0.5: the exact Reynolds operator is a projector,
    eigenvalues 0 or 1, and no drift makes a 0 count as a 1."""
    evals, evecs = torch.linalg.eigh(sym)
    tol = _NULLSPACE_RTOL * max(1.0, evals.abs().max().item()) * sym.shape[0]
    return evecs[:, (evals - target).abs() <= min(max(tol, 1e-7, drift), 0.5)].contiguous()


def _matrix_basis(rep: Representation) -> torch.Tensor:
    D = rep.dim
    if rep.is_finite:
        # Enumerable and cheap: |G| <= max_order (else enumeration raises) and |G|·D² small. A
        # bounded BFS decides, never the exact order (seconds of Schreier--Sims for a large group).
        limit = min(rep.group.max_order, int(_REYNOLDS_ENUMERATION_LIMIT // (D * D)))
        if limit >= 1 and rep.group._order_at_most(limit) is not None:
            reynolds = rep.element_matrices(dtype=torch.float64).mean(0)
            # Symmetrise away rounding: the exact Reynolds operator of an orthogonal rep is
            # symmetric since M_{g^-1} = M_gᵀ. Its eigenvalues drift from {0, 1} by up to
            # rep._element_drift() for generators only within ORTHO_TOL of orthogonal.
            drift = cast("_FiniteRep", rep)._element_drift()  # a finite group's rep
            return _eigh_fixed(0.5 * (reynolds + reynolds.T), 1.0, drift)
    # The null space of the stacked (M_g − I) and dρ(A), by SVD with fixed_dim's tolerance (not
    # eigh of their Gram matrix: its eigenvalues are the squared singular values, so any cut on
    # them is a far looser one on the singular values, and E^G came out too large).
    return rep._nullspace_basis()


def fixed_point_basis(rep: Representation) -> torch.Tensor:
    """An orthonormal basis of E^G = {z ∈ R^D : ρ(g) z = z ∀g} as a (D, k) float64 CPU tensor.

    k = dim E^G (k = 0 gives a (D, 0) tensor). Computed once per representation: the first call
    on T(2) of Alt(100) (D = 10⁴) or T(5) of S5 (D = 3125) takes milliseconds; later calls return
    a copy of the cached basis (yours to modify: project_fixed / orbit_average keep using theirs).
    For permutation reps the columns are signed orbit indicators / √|orbit|, ordered by the
    orbit's smallest coordinate; for matrix reps any orthonormal basis of E^G.

    Example::

        >>> Q = symkern.fixed_point_basis(symkern.groups.c2_swap().conjugation())
        >>> Q.shape   # E^G = {[[a, b], [b, a]]}
        torch.Size([4, 2])
    """
    check_rep(rep)
    return _cached_basis(rep).clone()


def _cached_basis(rep: Representation) -> torch.Tensor:
    """The cached float64 CPU basis itself (internal: never handed to the user, who could edit
    it in place and so change every later projection)."""
    cache = rep_cache(rep)
    if "basis" not in cache:
        with building_constants():  # a constant, also when first built in a transform / trace
            basis = _perm_basis(rep) if _is_perm_like(rep) else _matrix_basis(rep)
        cache["basis"] = basis.detach()
    return cache["basis"]


def _basis_on(rep: Representation, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    cache = rep_cache(rep)
    key = ("basis", dtype, str(device))
    if key not in cache:
        cache[key] = build_cold_cache(
            "fixed-point basis",
            rep,
            lambda: _cached_basis(rep).to(device=device, dtype=dtype).contiguous(),
        )
    return cache[key]


# --- the registered op: symkern::project_lowrank -------------------------------------------------
_KERNEL_CHOICE: dict = {}  # _project_lowrank's direct calls: the kernel per dtype, device, backend


def _project_lowrank(
    rows: torch.Tensor, basis: torch.Tensor, backend: str, out_rows: torch.Tensor | None = None
) -> torch.Tensor:
    """(rows Q) Qᵀ for (B, D) rows and the cached basis Q (a constant of the representation) on
    their device and dtype: into ``out_rows`` when given (not differentiable then: the caller
    checks); routes as :func:`symkern.ops._common.run_projection`."""

    def via_op(x: torch.Tensor, backend: str, out: torch.Tensor | None) -> torch.Tensor:
        if out is None:
            return _project_lowrank_op(x, basis, backend)
        _project_lowrank_out_op(x, basis, backend, out)
        return out

    return run_projection(
        "project_lowrank",
        {"x": rows, "basis": basis},
        backend,
        out_rows,
        lambda kernel, x: kernel.fn(x, basis),
        via_op,
        _KERNEL_CHOICE,
        (rows.dtype, rows.device, basis.shape[1]),  # triton declines a large rank k
    )


@custom_op("symkern::project_lowrank", mutates_args=())
def _project_lowrank_op(x: torch.Tensor, basis: torch.Tensor, backend: str) -> torch.Tensor:
    kernel = select_kernel("project_lowrank", {"x": x, "basis": basis}, backend)
    return kernel.fn(x, basis)


@_project_lowrank_op.register_fake
def _(x, basis, backend):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _project_lowrank_setup(ctx, inputs, output):
    _, basis, backend = inputs
    ctx.save_for_backward(basis)
    ctx.backend = backend


def _project_lowrank_backward(ctx, grad):
    # Q Qᵀ is symmetric: the vector-Jacobian product is the projection of the gradient. The basis
    # is a constant of the representation (no gradient).
    (basis,) = ctx.saved_tensors
    return _project_lowrank_op(grad.contiguous(), basis, ctx.backend), None, None


_project_lowrank_op.register_autograd(
    _project_lowrank_backward, setup_context=_project_lowrank_setup
)


@custom_op("symkern::project_lowrank_out", mutates_args=("out",))
def _project_lowrank_out_op(
    x: torch.Tensor, basis: torch.Tensor, backend: str, out: torch.Tensor
) -> None:
    """(x Q) Qᵀ written into ``out`` (B, D), unit column stride: x itself or not overlapping it."""
    check_out_memory(out, x)
    select_kernel("project_lowrank", {"x": x, "basis": basis}, backend).fn(x, basis, out)


def reynolds(
    x: torch.Tensor,
    rep: Representation,
    dim: int,
    backend: str,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The orthogonal projection onto E^G along ``dim`` (= the Reynolds operator); into ``out``
    when given (see :func:`symkern.orbit_average`)."""
    if out is not None:
        return _reynolds_into(x, rep, dim, backend, out)
    if _is_perm_like(rep):
        return _rows_orbit_mean(x, rep, dim, backend)
    dim = normalize_dim(x, dim, rep.dim)
    rows, moved_shape = as_rows(x, dim)
    basis = _basis_on(rep, x.dtype, x.device)
    return from_rows(_project_lowrank(rows, basis, backend), moved_shape, dim)


def _reynolds_into(
    x: torch.Tensor, rep: Representation, dim: int, backend: str, out: torch.Tensor
) -> torch.Tensor:
    dim = normalize_dim(x, dim, rep.dim)
    check_out(out, x)
    out_rows = rows_view(out, dim)
    if out_rows is None:  # no (B, D) view with unit column stride to write into
        return out.copy_(reynolds(x, rep, dim, backend))
    rows, _ = as_rows(x, dim)  # a view of x when out's layout allows one (x is out, or alike)
    if _is_perm_like(rep):
        apply_orbit_mean(rows, orbit_plan(rep, x.dtype, x.device), backend, out_rows)
    else:
        _project_lowrank(rows, _basis_on(rep, x.dtype, x.device), backend, out_rows)
    return out


def project_fixed(
    x: torch.Tensor,
    rep: Representation,
    dim: int = -1,
    backend: str = "auto",
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Orthogonal projection P_{E^G} x along ``dim``.

    For an orthogonal representation this is the same operator as the Reynolds average
    :func:`symkern.orbit_average`; it is computed the same way: a signed orbit mean for
    permutation reps (O(B·D), memory-bound), Q (Qᵀ x) for matrix / continuous reps with the cached
    basis Q (D, k) (O(B·D·k), never a D×D projector).

    Args (``out`` included) / returns / backends / NaN semantics: as
    :func:`symkern.orbit_average`. In place: ``project_fixed(theta, rep, out=theta)``.

    Example::

        >>> rep = symkern.groups.c2_swap().conjugation()          # z ↦ P z Pᵀ on 2×2 matrices
        >>> symkern.project_fixed(torch.tensor([1., 2., 3., 4.]), rep)
        tensor([2.5000, 2.5000, 2.5000, 2.5000])
    """
    check_float_tensor(x)
    check_rep(rep)
    return reynolds(x, rep, dim, backend, out)
