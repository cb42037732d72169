"""Orbit averaging (the Reynolds operator), coordinate orbits, feature averaging, augmentation.

For a finite group G acting orthogonally on R^D by ρ, the Reynolds operator

    R x = (1/|G|) Σ_g ρ(g) x

is the orthogonal projection onto the fixed-point subspace E^G = {z : ρ(g) z = z ∀g}.

* Permutation and signed-permutation reps (and their tensor powers): R x is, for every coordinate
  j, the signed mean over the orbit O(j) of j (see :class:`symkern.ops.plans.OrbitPlan`). Orbits
  come from the generators by union-find, so the cost is O(B·D) whatever |G| is; no D×D matrix
  and no enumeration of G.
* Matrix reps and compact continuous groups: R x = Q Qᵀ x with Q an orthonormal basis of E^G
  (:func:`symkern.fixed_point_basis`), two skinny products.

NaN semantics: the result is the formula in IEEE arithmetic. For permutation reps a NaN in
x[..., i] makes the output NaN on the whole orbit of i (including a zero orbit) and nowhere else;
for matrix reps a NaN anywhere in a row makes that row's output NaN — unless dim E^G = 0, where
the output is exactly 0 whatever x holds (Q(Qᵀx) with an empty basis Q reads no entry of x).
±inf in x[..., i]: permutation reps give ±inf on the orbit of i (NaN where +inf and −inf meet in
one orbit, and on a zero orbit); matrix reps give Q(Qᵀx) in IEEE arithmetic over the D × k
entries of Q — the kernels' padded vector lanes and rank columns never multiply x — so every
backend agrees with the torch reference wherever Q has no exact zero in the rows where x is
infinite (there the formula's 0·inf is NaN, but a BLAS may skip a zero multiplier).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import numpy as np
import torch

from symkern._checks import as_int, torch_generator
from symkern.backends.registry import select_kernel
from symkern.groups import ContinuousRep, PermRep, Representation, SignedPermRep
from symkern.groups._native import MAX_ELEMENT_ENTRIES
from symkern.ops._common import (
    as_rows,
    build_cold_cache,
    check_float_tensor,
    check_out_memory,
    check_rep,
    custom_op,
    from_rows,
    normalize_dim,
    rep_cache,
    run_projection,
)
from symkern.ops.plans import OrbitPlan, make_orbit_plan

__all__ = ["Orbit", "augment", "orbit_average", "orbits", "symmetrize"]


class Orbit(NamedTuple):
    """One coordinate orbit: ``indices`` (int64, ascending from the smallest member) and ``signs``
    (float64, ±1 relative to the smallest member; all 0 when the orbit contains a coordinate and
    its own negative, so that it averages to zero — ``vanishes`` is then True).

    Example::

        >>> rep = symkern.groups.signed_perm_rep([[1, 0, 2]], [[-1.0, -1.0, -1.0]])  # −(x₁, x₀, x₂)
        >>> [(o.indices.tolist(), o.signs.tolist(), o.vanishes) for o in symkern.orbits(rep)]
        [([0, 1], [1.0, -1.0], False), ([2], [0.0], True)]
        >>> symkern.orbit_average(torch.tensor([3.0, 1.0, 5.0]), rep).tolist()  # ±(x₀−x₁)/2, 0
        [1.0, -1.0, 0.0]
    """

    indices: torch.Tensor
    signs: torch.Tensor

    @property
    def vanishes(self) -> bool:
        return bool((self.signs == 0).all())


def _is_perm_like(rep: Representation) -> bool:
    return isinstance(rep, PermRep | SignedPermRep)


def _orbit_labels(rep: Representation) -> tuple[np.ndarray, np.ndarray]:
    """(labels, rel_sign) of a (signed) permutation rep, by union-find over its generators."""
    cache = rep_cache(rep)
    if "orbit_labels" not in cache:
        # callers (orbits, orbit_plan) pass (signed) permutation reps only
        perm_rep = cast("PermRep | SignedPermRep", rep)
        perms = np.ascontiguousarray(perm_rep.permutations(), dtype=np.int64)
        signs = (
            np.ascontiguousarray(rep.signs(), dtype=np.float64)
            if isinstance(rep, SignedPermRep)
            else None
        )
        # a planning step, not the tensor op: SYMKERN_BACKEND (say triton, which has no
        # orbit_labels kernel) must not force it
        kernel = select_kernel(
            "orbit_labels", {"perms": perms, "signs": signs}, "auto", use_env=False
        )
        cache["orbit_labels"] = kernel.fn(perms, signs)
    return cache["orbit_labels"]


def orbits(rep: Representation) -> list[Orbit]:
    """The coordinate orbits of a permutation or signed-permutation representation.

    Returns a list of :class:`Orbit`, ordered by smallest member. Computed from the generators by
    union-find (C++ backend when available) in O(D · #generators); cached per representation.

    Example::

        >>> rep = symkern.groups.perm_rep([[1, 2, 0, 3, 4], [0, 1, 2, 4, 3]])  # C3 × C2 on R^5
        >>> [o.indices.tolist() for o in symkern.orbits(rep)]
        [[0, 1, 2], [3, 4]]
    """
    check_rep(rep)
    if not _is_perm_like(rep):
        raise TypeError(
            f"orbits() needs a permutation or signed-permutation representation, got "
            f"{type(rep).__name__}; for matrix reps use fixed_point_basis()"
        )
    plan = orbit_plan(rep, torch.float64, torch.device("cpu"))
    out = []
    bounds = plan.seg_start.tolist()
    for o in range(plan.n_orbits):
        idx = plan.order[bounds[o] : bounds[o + 1]]
        out.append(Orbit(idx.clone(), plan.coef[idx].clone()))
    return out


def orbit_plan(rep: Representation, dtype: torch.dtype, device: torch.device) -> OrbitPlan:
    """The cached :class:`OrbitPlan` of a (signed) permutation rep on ``device`` in ``dtype``."""
    cache = rep_cache(rep)
    key = ("orbit_plan", dtype, str(device))
    if key not in cache:

        def build() -> OrbitPlan:
            labels, rel_sign = _orbit_labels(rep)
            return make_orbit_plan(labels, rel_sign, dtype, device)

        cache[key] = build_cold_cache("orbit plan", rep, build)
    return cache[key]


# --- the registered op: symkern::orbit_mean ------------------------------------------------------
_KERNEL_CHOICE: dict = {}  # apply_orbit_mean's direct calls: the kernel per dtype, device, backend

# Plan tensors travel as explicit arguments so torch.compile / opcheck see a pure tensor op. The
# backend is chosen inside (at run time, from the real tensors); "auto" follows the registry rules.


def _run_orbit_mean(x, orbit_id, coef, inv_size, order, seg_start, backend, out=None):
    """Both ops' body: the plan rebuilt from its tensors, the backend's kernel run on x (a fresh
    result, or written into out)."""
    plan = OrbitPlan(x.shape[1], inv_size.shape[0], orbit_id, coef, inv_size, order, seg_start)
    return select_kernel("orbit_mean", {"x": x}, backend).fn(x, plan, out)


@custom_op("symkern::orbit_mean", mutates_args=())
def _orbit_mean_op(
    x: torch.Tensor,
    orbit_id: torch.Tensor,
    coef: torch.Tensor,
    inv_size: torch.Tensor,
    order: torch.Tensor,
    seg_start: torch.Tensor,
    backend: str,
) -> torch.Tensor:
    return _run_orbit_mean(x, orbit_id, coef, inv_size, order, seg_start, backend)


@_orbit_mean_op.register_fake
def _(x, orbit_id, coef, inv_size, order, seg_start, backend):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _orbit_mean_setup(ctx, inputs, output):
    _, *plan_tensors, backend = inputs
    ctx.save_for_backward(*plan_tensors)
    ctx.backend = backend


def _orbit_mean_backward(ctx, grad):
    # The Reynolds operator is symmetric (P = Pᵀ), so the vector-Jacobian product is P itself.
    plan_tensors = ctx.saved_tensors
    return (_orbit_mean_op(grad.contiguous(), *plan_tensors, ctx.backend),) + (None,) * 6


_orbit_mean_op.register_autograd(_orbit_mean_backward, setup_context=_orbit_mean_setup)


@custom_op("symkern::orbit_mean_out", mutates_args=("out",))
def _orbit_mean_out_op(
    x: torch.Tensor,
    orbit_id: torch.Tensor,
    coef: torch.Tensor,
    inv_size: torch.Tensor,
    order: torch.Tensor,
    seg_start: torch.Tensor,
    backend: str,
    out: torch.Tensor,
) -> None:
    """The orbit mean of (B, D) x written into ``out`` (B, D), unit column stride: x itself or
    not overlapping it (checked here, on the real tensors, also under torch.compile)."""
    check_out_memory(out, x)
    _run_orbit_mean(x, orbit_id, coef, inv_size, order, seg_start, backend, out)


def apply_orbit_mean(
    rows: torch.Tensor, plan: OrbitPlan, backend: str, out_rows: torch.Tensor | None = None
) -> torch.Tensor:
    """The orbit mean of (B, D) ``rows`` with a plan already on their device and dtype; written
    into ``out_rows`` (B, D) and returned when given (not differentiable then: the caller
    checks)."""

    def via_op(x: torch.Tensor, backend: str, out: torch.Tensor | None) -> torch.Tensor:
        plan_tensors = (plan.orbit_id, plan.coef, plan.inv_size, plan.order, plan.seg_start)
        if out is None:
            return _orbit_mean_op(x, *plan_tensors, backend)
        _orbit_mean_out_op(x, *plan_tensors, backend, out)
        return out

    return run_projection(
        "orbit_mean",
        {"x": rows},
        backend,
        out_rows,
        lambda kernel, x: kernel.fn(x, plan),
        via_op,
        _KERNEL_CHOICE,
        (rows.dtype, rows.device),
    )


def orbit_average(
    x: torch.Tensor,
    rep: Representation,
    dim: int = -1,
    backend: str = "auto",
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reynolds operator (1/|G|) Σ_g ρ(g) x along ``dim``.

    Args:
        x: floating tensor of any shape with ``x.shape[dim] == rep.dim``; any strides.
        rep: a finite or compact group representation of dimension D.
        dim: the axis ρ acts on; every other axis is a batch axis.
        backend: ``"auto"`` or one of ``"cpp"``, ``"triton"``, ``"torch"`` (forced: fails loudly
            if it cannot run). ``SYMKERN_BACKEND`` overrides ``"auto"``.
        out: optional tensor of x's shape, dtype and device to write the result into, and
            return: ``x`` itself (in place) or a tensor not overlapping it. It saves allocating
            and first touching a fresh output, which on a CPU costs more than the kernel
            (permutation reps on 1e4 × 1e3 float32, 2-core EPYC: 1.5–1.9× a copy into a reused
            buffer, 1.0–1.4× in place, instead of 2.4–4.9×). The C++ kernels and the Triton orbit
            mean write into it directly; the torch reference and the Triton low-rank projection
            (matrix reps) copy their result in, as does any backend when ``out`` has no row
            layout along ``dim`` with unit stride. Not differentiable (like torch's ``out=``):
            raises if x or out requires grad.

    Returns a tensor of x's shape, dtype and device (``out`` when given). Differentiable without
    ``out`` (the operator is symmetric, so its backward is itself); traceable by
    ``torch.compile``. The orbit plan / fixed-point basis of ``rep`` is built (numpy, not
    traceable) on the first call per rep, dtype and device and cached: ``torch.compile`` without
    ``fullgraph`` runs that first build eagerly (a graph break on that call only); with
    ``fullgraph=True`` call the op once eagerly first, or it raises a RuntimeError saying so.

    Cost: O(B·D) for (signed) permutation reps whatever |G| is; O(B·D·k) for matrix and
    continuous reps with k = dim E^G. Same operator as :func:`symkern.project_fixed`.

    Example::

        >>> G = symkern.groups.symmetric(5)
        >>> symkern.orbit_average(torch.arange(5.0), G)   # every coordinate becomes the mean
        tensor([2., 2., 2., 2., 2.])
    """
    check_float_tensor(x)
    check_rep(rep)
    from symkern.ops.fixed_point import reynolds  # noqa: PLC0415 — fixed_point imports this module

    return reynolds(x, rep, dim, backend, out)


# --- feature averaging and data augmentation -----------------------------------------------------


def _element_images(rep: Representation, x: torch.Tensor, elements: list) -> torch.Tensor:
    """ρ(g) x for every element: (n_elements, *x.shape), acting on x's last axis."""
    if isinstance(rep, SignedPermRep):
        perms = torch.as_tensor(np.stack([p for p, _ in elements]), device=x.device)
        signs = torch.as_tensor(np.stack([s for _, s in elements]), device=x.device, dtype=x.dtype)
        return x[..., perms].movedim(-2, 0) * signs.view(-1, *([1] * (x.dim() - 1)), x.shape[-1])
    if isinstance(rep, PermRep):
        perms = torch.as_tensor(np.stack(elements), device=x.device)
        return x[..., perms].movedim(-2, 0)
    mats = torch.stack([torch.as_tensor(m) for m in elements]).to(device=x.device, dtype=x.dtype)
    return torch.einsum("gij,...j->g...i", mats, x)


def _per_sample_images(rep: Representation, x: torch.Tensor, elements: list) -> torch.Tensor:
    """ρ(g_b) x_b for (B, D) x and one element per row: (B, D)."""
    if isinstance(rep, SignedPermRep):
        perms = torch.as_tensor(np.stack([p for p, _ in elements]), device=x.device)
        signs = torch.as_tensor(np.stack([s for _, s in elements]), device=x.device, dtype=x.dtype)
        return torch.gather(x, 1, perms) * signs
    if isinstance(rep, PermRep):
        perms = torch.as_tensor(np.stack(elements), device=x.device)
        return torch.gather(x, 1, perms)
    mats = torch.stack([torch.as_tensor(m) for m in elements]).to(device=x.device, dtype=x.dtype)
    return torch.einsum("bij,bj->bi", mats, x)


def _element_inverse_images(rep: Representation, y: torch.Tensor, elements: list) -> torch.Tensor:
    """ρ(g)^{-1} y_g for stacked y: (n_elements, ..., D_out). ρ is orthogonal, so ρ^{-1} = ρᵀ."""
    if isinstance(rep, SignedPermRep):
        inv = torch.as_tensor(np.stack([np.argsort(p) for p, _ in elements]), device=y.device)
        signs = torch.as_tensor(np.stack([s for _, s in elements]), device=y.device, dtype=y.dtype)
        # ρ(g) y = s ⊙ y[perm]  ⇒  ρ(g)^{-1} y = (y / s)[perm^{-1}] = (s ⊙ y)[perm^{-1}]
        signed = y * signs.view(signs.shape[0], *([1] * (y.dim() - 2)), signs.shape[1])
        return torch.gather(
            signed, -1, inv.view(inv.shape[0], *([1] * (y.dim() - 2)), inv.shape[1]).expand_as(y)
        )
    if isinstance(rep, PermRep):
        inv = torch.as_tensor(np.stack([np.argsort(p) for p in elements]), device=y.device)
        return torch.gather(
            y, -1, inv.view(inv.shape[0], *([1] * (y.dim() - 2)), inv.shape[1]).expand_as(y)
        )
    mats = torch.stack([torch.as_tensor(m) for m in elements]).to(device=y.device, dtype=y.dtype)
    return torch.einsum("gji,g...j->g...i", mats, y)


# symmetrize(mode="quadrature") keeps a (D, D) float64 matrix per cubature node for rep_in (and
# rep_out), each a tensor object of ~0.9 KB besides its entries, and stacks them again on every
# call: those bytes are capped like element_matrices' entries (800 MB). The node cap alone (1e7)
# let SO(3) T(3) -> T(3) at degree 100 build 520k pairs of 27 x 27 matrices (> 5 GB).
# mode="sample" keeps the same matrices per sampled element of a continuous group; for a finite
# group it keeps each sample's drawn index (an int64 and list slots, ~64 B) and stacks the
# sampled elements' images per call. Both under the same budget (samples=10**12 was not capped:
# torch.randint asked for 8 TB).
_QUADRATURE_BYTES = 8 * MAX_ELEMENT_ENTRIES
_TENSOR_OBJECT_BYTES = 1024
_SAMPLE_INDEX_BYTES = 64


def _check_element_bytes(arg: str, count: int, per_element: int, what: str, fix: str) -> None:
    """ValueError naming ``arg`` when ``count`` group elements of ``per_element`` bytes each
    would take more than ``_QUADRATURE_BYTES`` in symmetrize (``what``: the elements and how
    symmetrize holds them, in words; ``fix``: what to do instead), before any is built."""
    if count * per_element > _QUADRATURE_BYTES:
        raise ValueError(
            f"{arg}: {what}: ~{count * per_element / 1e9:.3g} GB, more than "
            f"{_QUADRATURE_BYTES / 1e9:.3g} GB; {fix}"
        )


def _matrix_element_bytes(dims: list[int]) -> int:
    """Bytes symmetrize holds per element of a continuous group: a float64 (D, D) matrix per rep
    (``dims``: D_in, and D_out when there is a rep_out), kept and stacked again per call, each a
    tensor object of its own."""
    return sum(2 * 8 * D * D + _TENSOR_OBJECT_BYTES for D in dims)


def _check_quadrature_size(group: Any, dims: list[int], degree: int) -> None:
    """ValueError naming ``degree`` when the cubature's matrices (``dims``: D_in, and D_out when
    there is a rep_out) would take more than ``_QUADRATURE_BYTES``, before any is built (``group``:
    a ContinuousGroup; its quadrature_nodes counts them)."""
    nodes = group.quadrature_nodes(degree)
    per_node = _matrix_element_bytes(dims)
    shapes = " and ".join(f"({D}, {D})" for D in dims)
    _check_element_bytes(
        "degree",
        nodes,
        per_node,
        f"{degree} needs {nodes} {group.family.upper()} quadrature nodes, and symmetrize keeps a "
        f"float64 matrix per node for each rep ({shapes}) and stacks them per call",
        "use a lower degree or mode='sample'",
    )


def _check_sample_size(reps: list[Representation], samples: int) -> None:
    """ValueError naming ``samples`` when symmetrize's ``samples`` sampled elements (``reps``:
    rep_in, and rep_out when given) would take more than ``_QUADRATURE_BYTES``, before any is
    drawn."""
    shapes = " and ".join(
        f"({r.dim},)" if _is_perm_like(r) else f"({r.dim}, {r.dim})" for r in reps
    )
    if not reps[0].is_finite:  # matrix_of per sample, as per quadrature node
        per_sample = _matrix_element_bytes([r.dim for r in reps])
        how = f"keeps a float64 matrix per sample for each rep ({shapes}) and stacks them per call"
        fix = "use fewer samples or mode='quadrature'"
    else:  # references into the group's element list, their images stacked per call
        per_sample = _SAMPLE_INDEX_BYTES + sum(8 * _image_entries(r) for r in reps)
        how = f"keeps an index per sample and stacks each rep's images per call ({shapes})"
        fix = "use fewer samples or mode='exact'"
    _check_element_bytes(
        "samples", samples, per_sample, f"{samples} sampled elements, and symmetrize {how}", fix
    )


def _image_entries(rep: Representation) -> int:
    """The 8-byte entries of one element's image as _element_images stacks it: an int64
    permutation (and float64 signs) or a float64 matrix."""
    if isinstance(rep, SignedPermRep):
        return 2 * rep.dim
    return rep.dim if isinstance(rep, PermRep) else rep.dim * rep.dim


def _group_elements(
    rep_in: Representation,
    rep_out: Representation | None,
    mode: str,
    samples: int | None,
    generator: torch.Generator | None,
    degree: int | None = None,
    cap_samples: bool = False,
) -> tuple[list, list | None, torch.Tensor]:
    """Paired element images in rep_in / rep_out, with their averaging weights. ``cap_samples``:
    refuse ``samples`` whose elements take more than ``_QUADRATURE_BYTES`` (symmetrize keeps
    them; augment draws one per row of its x, which already holds that many rows)."""
    if rep_out is not None and rep_out.group is not rep_in.group:
        raise ValueError("rep_in and rep_out must be representations of the same group object")
    if mode == "exact":
        if not rep_in.is_finite:
            raise ValueError(
                "mode='exact' needs a finite group; for a continuous group use mode='quadrature' "
                "(exact for polynomial features up to the given degree) or mode='sample'"
            )
        elems_in = list(rep_in.elements())
        elems_out = list(rep_out.elements()) if rep_out is not None else None
        weights = torch.full((len(elems_in),), 1.0 / len(elems_in), dtype=torch.float64)
        return elems_in, elems_out, weights
    if mode == "quadrature":
        if rep_in.is_finite:
            raise ValueError("mode='quadrature' is for continuous groups; use mode='exact'")
        if degree is None:  # exact for linear fn: the integrand's degree is deg ρ_in + deg ρ_out
            # a continuous group's reps (rep_out: the same group object) are ContinuousReps
            cin, cout = cast(ContinuousRep, rep_in), cast("ContinuousRep | None", rep_out)
            degree = cin.degree + (cout.degree if cout is not None else 0)
        degree = as_int(degree, "degree", minimum=0)
        dims = [rep_in.dim] + ([rep_out.dim] if rep_out is not None else [])
        _check_quadrature_size(rep_in.group, dims, degree)
        base = rep_in.group.defining_rep()
        weights, base_mats = base.quadrature(degree)
    elif mode == "sample":
        try:
            samples = as_int(samples, "samples", minimum=1)
        except ValueError:
            raise ValueError(f"samples: mode='sample' needs an int >= 1, got {samples!r}") from None
        if cap_samples:
            _check_sample_size([rep_in] + ([rep_out] if rep_out is not None else []), samples)
        if rep_in.is_finite:
            elems = list(rep_in.elements())
            idx = torch.randint(len(elems), (samples,), generator=generator).tolist()
            elems_in = [elems[i] for i in idx]
            elems_out = None
            if rep_out is not None:
                all_out = list(rep_out.elements())
                elems_out = [all_out[i] for i in idx]
            return elems_in, elems_out, torch.full((samples,), 1.0 / samples, dtype=torch.float64)
        base_mats = rep_in.group.defining_rep().sample(samples, generator=generator)
        weights = torch.full((samples,), 1.0 / samples, dtype=torch.float64)
    else:
        raise ValueError(f"mode must be 'exact', 'sample' or 'quadrature', got {mode!r}")
    # only a continuous group gets here: its reps (rep_out: same group object) are ContinuousReps
    cin, cout = cast(ContinuousRep, rep_in), cast("ContinuousRep | None", rep_out)
    elems_in = [cin.matrix_of(g) for g in base_mats]
    elems_out = [cout.matrix_of(g) for g in base_mats] if cout is not None else None
    return elems_in, elems_out, weights


def symmetrize(
    fn: Callable[[torch.Tensor], torch.Tensor],
    rep_in: Representation,
    rep_out: Representation | None = None,
    mode: str = "exact",
    samples: int | None = None,
    generator: torch.Generator | None = None,
    degree: int | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Feature averaging: the G-equivariant (or invariant) version of ``fn``,

        Q_G f(x) = (1/|G|) Σ_g ρ_out(g)^{-1} f(ρ_in(g) x)

    (rep_out=None: invariant, Q_G f(x) = (1/|G|) Σ_g f(ρ_in(g) x)). ``fn`` maps (B, D_in) →
    (B, ...) with the last output axis of size D_out when rep_out is given.

    The whole orbit is evaluated in ONE call of ``fn`` on a (|G|·B, D_in) batch, never a Python
    loop over group elements. Modes: ``"exact"`` (finite groups: every element, weight 1/|G|),
    ``"sample"`` (``samples`` uniform / Haar elements — an unbiased estimate), ``"quadrature"``
    (continuous groups: a Haar cubature that is exact when g ↦ ρ_out(g)^{-1} f(ρ_in(g)x) is a
    polynomial in the entries of g of degree ≤ ``degree``; the default deg ρ_in + deg ρ_out makes
    it exact for linear ``fn``).
    Sampled elements are drawn once, when ``symmetrize`` is called, so the returned function is
    deterministic.

    Returns a callable (an nn.Module when ``fn`` is one, so its parameters are tracked). It raises
    TypeError when ``fn`` returns an integer or bool tensor (an average is not an integer: convert
    in ``fn``).

    Example::

        >>> G = symkern.groups.cyclic(3)
        >>> mean = symkern.symmetrize(lambda x: x[:, :1], G)  # invariant: x ↦ x₀ becomes the mean
        >>> mean(torch.tensor([[3.0, 6.0, 0.0]])).tolist()
        [[3.0]]
        >>> _ = torch.manual_seed(0)
        >>> lin = torch.nn.Linear(3, 3, bias=False)
        >>> sym = symkern.symmetrize(lin, G, G)  # equivariant: Q_G lin commutes with the cycle
        >>> isinstance(sym, torch.nn.Module), len(list(sym.parameters()))
        (True, 1)
        >>> x = torch.randn(4, 3)
        >>> torch.allclose(sym(x.roll(1, -1)), sym(x).roll(1, -1), atol=1e-6)
        True
        >>> torch.allclose(lin(x.roll(1, -1)), lin(x).roll(1, -1), atol=1e-6)  # lin itself does not
        False
    """
    if not callable(fn):
        raise TypeError(f"fn must be a callable (B, D_in) -> (B, ...), got {type(fn).__name__}")
    check_rep(rep_in, "rep_in")
    if rep_out is not None:
        check_rep(rep_out, "rep_out")
    generator = torch_generator(generator)
    elements = _group_elements(rep_in, rep_out, mode, samples, generator, degree, cap_samples=True)
    averager = _OrbitAverager(rep_in, rep_out, *elements)
    if isinstance(fn, torch.nn.Module):
        return _SymmetrizedModule(fn, averager)
    return functools.partial(averager, fn)


class _OrbitAverager:
    """(fn, x) ↦ Σ_k w_k ρ_out(g_k)^{-1} fn(ρ_in(g_k) x) over fixed elements g_k and weights w_k,
    with ``fn`` passed at each call: a module's copy (deepcopy, EMA / teacher copies) then
    averages its own ``inner``, and the module pickles (no closure)."""

    def __init__(self, rep_in, rep_out, elems_in, elems_out, weights: torch.Tensor) -> None:
        self.rep_in, self.rep_out = rep_in, rep_out
        self.elems_in, self.elems_out, self.weights = elems_in, elems_out, weights

    def __call__(self, fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> torch.Tensor:
        rep_in, rep_out = self.rep_in, self.rep_out
        check_float_tensor(x)
        if x.dim() < 1 or x.shape[-1] != rep_in.dim:
            raise ValueError(
                f"x must have last axis of size rep_in.dim={rep_in.dim}, got shape {tuple(x.shape)}"
            )
        images = _element_images(rep_in, x, self.elems_in)  # (n, *batch, D_in)
        n = images.shape[0]
        flat = images.reshape(-1, rep_in.dim)
        y = fn(flat)
        if not isinstance(y, torch.Tensor) or y.dim() < 1 or y.shape[0] != flat.shape[0]:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(
                f"fn must map an (M, {rep_in.dim}) batch to an (M, ...) tensor, one output row per "
                f"input row (symmetrize evaluates the whole orbit as one batch of M = "
                f"{flat.shape[0]}), got {got}"
            )
        if not (y.is_floating_point() or y.is_complex()):
            # the weights 1/|G| cast to an integer dtype are 0: the average would silently be 0
            raise TypeError(
                f"fn must return a floating (or complex) tensor, got dtype {y.dtype}: symmetrize "
                "averages fn's outputs with weights 1/|G|; convert them in fn (e.g. .float())"
            )
        y = y.reshape(n, *x.shape[:-1], *y.shape[1:])
        if rep_out is not None:
            if y.shape[-1] != rep_out.dim:
                raise ValueError(
                    f"fn output has last axis {y.shape[-1]}, but rep_out acts on R^{rep_out.dim}"
                )
            y = _element_inverse_images(rep_out, y, self.elems_out)
        w = self.weights.to(device=y.device, dtype=y.dtype).view(n, *([1] * (y.dim() - 1)))
        return (w * y).sum(0)


class _SymmetrizedModule(torch.nn.Module):
    """Q_G ``inner``: forward averages this module's own ``inner`` over the orbit."""

    def __init__(self, inner: torch.nn.Module, averager: _OrbitAverager):
        super().__init__()
        self.inner = inner
        self._averager = averager

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._averager(self.inner, x)


def augment(
    x: torch.Tensor,
    y: torch.Tensor,
    rep_in: Representation,
    rep_out: Representation | None = None,
    mode: str = "orbit",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Data augmentation: pairs (ρ_in(g) x_b, ρ_out(g) y_b).

    ``mode="orbit"``: every element of a finite group, for every sample: returns (|G|·B, D_in) and
    (|G|·B, ...), element-major: rows k·B … (k+1)·B − 1 are element g_k applied to the batch,
    g_0 the identity, in the order of ``rep_in.element_matrices()``.
    ``mode="sample"``: one uniformly random element per sample (Haar for continuous groups):
    returns (B, D_in), (B, ...). rep_out=None leaves y unchanged (invariant labels).

    Example::

        >>> G = symkern.groups.cyclic(3)
        >>> x, y = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), torch.tensor([0.0, 1.0])
        >>> xs, ys = symkern.augment(x, y, G)  # invariant labels: y repeats, once per element
        >>> xs.shape, ys.tolist()
        (torch.Size([6, 3]), [0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
        >>> torch.equal(xs[:2], x)  # element-major, the identity first
        True
        >>> gen = torch.Generator().manual_seed(0)
        >>> xs, ys = symkern.augment(x, x, G, G, mode="sample", generator=gen)
        >>> xs.shape, torch.equal(xs, ys)  # labels y = x: both moved by the same random g
        (torch.Size([2, 3]), True)
    """
    check_float_tensor(x)
    check_rep(rep_in, "rep_in")
    generator = torch_generator(generator)
    if x.dim() != 2 or x.shape[1] != rep_in.dim:
        raise ValueError(f"x must be (B, {rep_in.dim}), got shape {tuple(x.shape)}")
    if not isinstance(y, torch.Tensor) or y.dim() < 1 or y.shape[0] != x.shape[0]:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(
            f"y must be a tensor with {x.shape[0]} rows (one label per sample), got {got}"
        )
    if rep_out is not None:
        check_rep(rep_out, "rep_out")
        if y.dim() != 2 or y.shape[1] != rep_out.dim:
            raise ValueError(f"y must be (B, {rep_out.dim}) for rep_out, got {tuple(y.shape)}")
        if not (y.is_floating_point() or _is_perm_like(rep_out)):
            # ρ_out(g) y of a matrix rep is not an integer vector: it would be truncated
            raise TypeError(
                f"y must be a floating tensor for a matrix rep_out (ρ_out(g) y is not an integer "
                f"vector), got {y.dtype}"
            )
    if mode == "sample" and x.shape[0] == 0:
        return x, y  # no sample, no element to draw
    if mode == "orbit":
        if not rep_in.is_finite:  # (the "exact" message below speaks of symmetrize's modes)
            raise ValueError(
                "mode='orbit' needs a finite group (the whole orbit); for a continuous group use "
                "mode='sample'"
            )
        elems_in, elems_out, _ = _group_elements(rep_in, rep_out, "exact", None, None)
        xs = _element_images(rep_in, x, elems_in).reshape(-1, x.shape[1])
        if rep_out is None:
            ys = y.expand(len(elems_in), *y.shape).reshape(-1, *y.shape[1:])
        else:
            assert elems_out is not None  # _group_elements pairs them whenever rep_out is given
            ys = _element_images(rep_out, y, elems_out).reshape(-1, y.shape[1])
        return xs, ys
    if mode == "sample":
        elems_in, elems_out, _ = _group_elements(rep_in, rep_out, "sample", x.shape[0], generator)
        xs = _per_sample_images(rep_in, x, elems_in)
        if rep_out is None:
            ys = y
        else:
            assert elems_out is not None  # _group_elements pairs them whenever rep_out is given
            ys = _per_sample_images(rep_out, y, elems_out)
        return xs, ys
    raise ValueError(f"mode must be 'orbit' or 'sample', got {mode!r}")


def _rows_orbit_mean(x: torch.Tensor, rep: Representation, dim: int, backend: str) -> torch.Tensor:
    """orbit mean of x along dim for a (signed) permutation rep (used by reynolds)."""
    dim = normalize_dim(x, dim, rep.dim)
    rows, moved_shape = as_rows(x, dim)
    plan = orbit_plan(rep, x.dtype, x.device)
    return from_rows(apply_orbit_mean(rows, plan, backend), moved_shape, dim)
