"""Fused mirror ops behind :class:`symkern.mirror.Mirror`: the ``symkern::mirror_apply`` op.

For an orthonormal O ∈ R^{d×k} and rows θ_m ∈ R^d (many models at once), one call computes

    c = Oᵀθ                      (M, k)
    out = θ + O(b − s·c)         (M, d)

with s = 2 (``mode="reflect"``: out = R_O θ = (I − 2OOᵀ)θ), s = 1 (``mode="project"``:
out = (I − OOᵀ)θ), or only c (``mode="coefficients"``; out is then an empty (M, 0) tensor).
b (M, k) is an optional shift (None = 0); the public ops never pass one, the backward pass does.

O never exists as a d×d matrix. The plan (:class:`MirrorPlan`, built once per dtype and device by
the Mirror) holds either sparse columns (``index``, ``value`` (k, S): column j has value[j, t] at
coordinate index[j, t]) or, for small k, ``dense_t`` = Oᵀ as a dense (k, d) matrix; ``disjoint``
says whether the sparse columns have disjoint supports (then one pass over θ suffices, and
``rest`` lists the coordinates outside every support, which the Triton kernel copies).

Autograd: the linear map (θ, b) ↦ (out, c) has the symmetric matrix [[I − sOOᵀ, O], [Oᵀ, 0]], so
its vector-Jacobian product at cotangents (g_out, g_c) is the same op applied to (g_out, g_c):
grad θ = g_out − s·O(Oᵀg_out) + O g_c and grad b = Oᵀg_out. Higher derivatives come for free.
For ``mode="coefficients"`` (c = Oᵀθ alone) grad θ = O g_c, the op on (0, g_c).

NaN semantics: the formula in IEEE arithmetic. Sparse columns: a NaN in θ[i] makes c_j NaN for
every column j whose stored entries include i, and out NaN on those columns' stored coordinates
(i included); every other entry is unaffected. Dense O: a NaN anywhere in a row of θ makes that
row's c and out entirely NaN.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, cast

import torch

from symkern.backends.registry import select_kernel
from symkern.ops._common import (
    batch_first,
    check_float_tensor,
    custom_op,
    eager_route,
    is_legacy_batched,
    merged_rows,
    records_autograd,
    refuse_forward_ad_on_op_route,
    resolve_backend,
)

__all__ = ["MODES", "MirrorPlan", "make_mirror_plan", "mirror_apply"]

# s of out = θ + O(b − s·c) per mode ("coefficients": no out at all).
MODES: dict[str, float] = {"reflect": 2.0, "project": 1.0, "coefficients": 0.0}


class MirrorPlan(NamedTuple):
    """O on one device in one dtype, in the form the kernels read (see the module docstring).

    Sparse: ``index`` (k, S) int64 and ``value`` (k, S) contiguous, ``dense_t`` None; ``rest``
    (d − k·S,) int64 sorted when ``disjoint``, else None. Dense: ``dense_t`` (k, d) contiguous,
    the others None, ``disjoint`` False.
    """

    d: int
    k: int
    # the field shadows tuple.index (the method) on purpose: plan.index is the (k, S) tensor
    index: torch.Tensor | None  # type: ignore[assignment]
    value: torch.Tensor | None
    dense_t: torch.Tensor | None
    rest: torch.Tensor | None
    disjoint: bool


def make_mirror_plan(
    d: int,
    index: torch.Tensor | None,
    value: torch.Tensor | None,
    dense: torch.Tensor | None,
    dtype: torch.dtype,
    device: torch.device | str,
) -> MirrorPlan:
    """Build the plan from a Mirror's CPU storage: sparse (index, value (k, S)) or dense (d, k)."""
    if dense is not None:
        dense_t = dense.T.to(device=device, dtype=dtype).contiguous()
        return MirrorPlan(d, dense.shape[1], None, None, dense_t, None, False)
    if index is None or value is None:
        raise TypeError("make_mirror_plan needs dense, or both index and value (sparse columns)")
    flat = index.reshape(-1)
    disjoint = torch.unique(flat).numel() == flat.numel()
    rest = None
    if disjoint:
        outside = torch.ones(d, dtype=torch.bool)
        outside[flat] = False
        rest = outside.nonzero().reshape(-1).to(device)
    return MirrorPlan(
        d,
        index.shape[0],
        index.to(device=device, dtype=torch.long).contiguous(),
        value.to(device=device, dtype=dtype).contiguous(),
        None,
        rest,
        disjoint,
    )


def _inputs(theta, shift, index, value, dense_t, rest, mode, disjoint) -> dict[str, Any]:
    """What the registry sees: every tensor (device / dtype checks) plus the static arguments."""
    inputs: dict[str, Any] = {"theta": theta}
    for name, t in (
        ("shift", shift),
        ("index", index),
        ("value", value),
        ("dense_t", dense_t),
        ("rest", rest),
    ):
        if t is not None:
            inputs[name] = t
    inputs["mode"] = mode
    inputs["disjoint"] = disjoint
    return inputs


# --- the registered op: symkern::mirror_apply -----------------------------------------------------
# Plan tensors travel as explicit arguments so torch.compile / opcheck see a pure tensor op. The
# backend is chosen inside (at run time, from the real tensors); "auto" follows the registry rules.


@custom_op("symkern::mirror_apply", mutates_args=())
def _mirror_apply_op(
    theta: torch.Tensor,
    shift: torch.Tensor | None,
    index: torch.Tensor | None,
    value: torch.Tensor | None,
    dense_t: torch.Tensor | None,
    rest: torch.Tensor | None,
    mode: str,
    disjoint: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    args = (theta, shift, index, value, dense_t, rest, mode, disjoint)
    kernel = select_kernel("mirror_apply", _inputs(*args), backend)
    return kernel.fn(*args)


@_mirror_apply_op.register_fake
def _(theta, shift, index, value, dense_t, rest, mode, disjoint, backend):
    M, d = theta.shape
    k = index.shape[0] if index is not None else dense_t.shape[0]
    out_shape = (M, 0) if mode == "coefficients" else (M, d)
    return theta.new_empty(out_shape), theta.new_empty((M, k))


def _mirror_apply_setup(ctx, inputs, output):
    theta, shift, index, value, dense_t, rest, mode, disjoint, backend = inputs
    ctx.save_for_backward(index, value, dense_t, rest)
    ctx.static = (mode, disjoint, backend)
    ctx.theta_shape = tuple(theta.shape)
    ctx.has_shift = shift is not None


def _mirror_vjp(apply, mode, theta_shape, has_shift, g_out, g_c):
    """(g_θ, g_b) of (out, c) = mirror_apply(θ, b, mode), by ``apply(θ, b, mode) -> (out, c)``
    itself: the map (θ, b) ↦ (out, c) is symmetric (module docstring), so its VJP is the map."""
    if g_c is None and (g_out is None or mode == "coefficients"):  # nothing flows back
        return None, None
    if mode == "coefficients":
        g_theta, _ = apply(g_c.new_zeros(theta_shape), g_c.contiguous(), "project")
        return g_theta, None
    if g_out is None:
        g_out = g_c.new_zeros(theta_shape)
    g_theta, g_shift = apply(g_out, None if g_c is None else g_c.contiguous(), mode)
    return g_theta, g_shift if has_shift else None


def _mirror_apply_backward(ctx, g_out, g_c):
    index, value, dense_t, rest = ctx.saved_tensors
    mode, disjoint, backend = ctx.static

    def apply(theta, shift, mode):
        return _mirror_apply_op(theta, shift, index, value, dense_t, rest, mode, disjoint, backend)

    return _mirror_vjp(apply, mode, ctx.theta_shape, ctx.has_shift, g_out, g_c) + (None,) * 7


class _EagerMirrorApply(torch.autograd.Function):
    """mirror_apply with autograd through the backend kernel directly (the routes of
    :func:`symkern.ops._common.eager_route`); ``runs``: ``(run, run_op)``, where ``run(θ, b,
    mode) -> (out, c)`` runs the kernel on plain (M, d) / (M, k) rows, and ``run_op`` the same
    through the custom op, for gradients batched by the legacy vmap. The map (θ, b) ↦ (out, c)
    is linear and symmetric, so its VJP (:func:`_mirror_vjp`) and its forward-mode tangent are
    the map itself, recorded again for higher derivatives; under vmap the vmapped rows join the
    batch. Written in torch.func style
    (``setup_context``), so torch.func.grad / vmap / jvp / jacrev work."""

    @staticmethod
    def forward(theta, shift, mode, runs):
        return runs[0](theta.detach(), None if shift is None else shift.detach(), mode)

    @staticmethod
    def setup_context(ctx, inputs, output):
        theta, shift, ctx.mode, ctx.runs = inputs
        ctx.theta_shape, ctx.has_shift = tuple(theta.shape), shift is not None
        ctx.set_materialize_grads(False)  # _mirror_vjp takes a missing gradient as zero

    @staticmethod
    def backward(ctx, g_out, g_c):
        def apply(theta, shift, mode):
            return _EagerMirrorApply.apply(theta, shift, mode, ctx.runs)

        if is_legacy_batched(g_out) or is_legacy_batched(g_c):
            apply = ctx.runs[1]  # noqa: F811 — the op's batching fallback handles these
        return (*_mirror_vjp(apply, ctx.mode, ctx.theta_shape, ctx.has_shift, g_out, g_c), None,
                None)  # fmt: skip

    @staticmethod
    def jvp(ctx, theta_tangent, shift_tangent, _mode, _runs):
        if theta_tangent is None:  # only b carries a tangent: θ's is zero
            theta_tangent = shift_tangent.new_zeros(ctx.theta_shape)
        if is_legacy_batched(theta_tangent) or is_legacy_batched(shift_tangent):
            return ctx.runs[1](theta_tangent.contiguous(), shift_tangent, ctx.mode)  # op fallback
        return _EagerMirrorApply.apply(theta_tangent.contiguous(), shift_tangent, ctx.mode,
                                       ctx.runs)  # fmt: skip

    @staticmethod
    def vmap(info, in_dims, theta, shift, mode, runs):
        theta = batch_first(theta, in_dims[0], info.batch_size)
        shift = batch_first(shift, in_dims[1], info.batch_size)
        out, c = _EagerMirrorApply.apply(merged_rows(theta), merged_rows(shift), mode, runs)
        n, m = theta.shape[:2]  # (out is (M, 0) for "coefficients": explicit shapes, no -1)
        return (out.reshape(n, m, out.shape[-1]), c.reshape(n, m, c.shape[-1])), (0, 0)


_mirror_apply_op.register_autograd(_mirror_apply_backward, setup_context=_mirror_apply_setup)


def mirror_apply(
    theta: torch.Tensor,
    plan: MirrorPlan,
    mode: str,
    *,
    shift: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(out, c) of the module docstring for θ of shape (..., d); leading dims are flattened.

    Args:
        theta: floating tensor (..., d) on the plan's device, in the plan's dtype; any strides
            (rows go to the kernels as a strided (M, d) view when the layout allows, else a copy).
        plan: :class:`MirrorPlan` (from :meth:`symkern.mirror.Mirror` internals).
        mode: ``"reflect"`` (s = 2), ``"project"`` (s = 1) or ``"coefficients"`` (c only).
        shift: optional b of shape (..., k) (not with ``"coefficients"``).
        backend: ``"auto"`` or one of ``"cpp"``, ``"triton"``, ``"torch"`` (forced: fails loudly
            if it cannot run). ``SYMKERN_BACKEND`` overrides ``"auto"``.

    Returns ``out`` of shape (..., d) (None for ``"coefficients"``) and c of shape (..., k), in
    θ's dtype. Differentiable (see the module docstring).

    Example::

        >>> m = symkern.mirror.Mirror.rescaling_pairs([0], [1], 3)
        >>> out, c = mirror_apply(torch.tensor([1., 2., 3.]), m._plan(torch.ones(())), "project")
        >>> out, c
        (tensor([0., 0., 3.]), tensor([1., 2.]))
    """
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode must be one of {tuple(MODES)}, got {mode!r}")
    if not isinstance(plan, MirrorPlan):
        raise TypeError(f"plan must be a MirrorPlan (Mirror._plan), got {type(plan).__name__}")
    check_float_tensor(theta, "theta")
    # a plan holds value (sparse) or dense_t (see MirrorPlan)
    o = cast(torch.Tensor, plan.value if plan.dense_t is None else plan.dense_t)
    if theta.dtype != o.dtype or theta.device != o.device:
        raise TypeError(
            f"theta must have the plan's dtype and device ({o.dtype}, {o.device}), got "
            f"{theta.dtype}, {theta.device}"
        )
    d, k = plan.d, plan.k
    if theta.dim() < 1 or theta.shape[-1] != d:
        raise ValueError(f"theta must have shape (..., d={d}), got {tuple(theta.shape)}")
    batch = theta.shape[:-1]
    rows = theta.reshape(math.prod(batch), d)  # not -1: a vmapped size-0 batch is ambiguous
    shift_rows = None
    if shift is not None:
        if mode == "coefficients":
            raise ValueError("shift is only defined for mode 'reflect' or 'project'")
        if not isinstance(shift, torch.Tensor) or shift.shape != (*batch, k):
            shape = tuple(shift.shape) if isinstance(shift, torch.Tensor) else type(shift).__name__
            raise ValueError(f"shift must have shape {(*batch, k)}, got {shape}")
        if shift.dtype != theta.dtype or shift.device != theta.device:
            raise TypeError(
                f"shift must have theta's dtype and device ({theta.dtype}, {theta.device}), got "
                f"{shift.dtype}, {shift.device}"
            )
        shift_rows = shift.reshape(math.prod(batch), k).contiguous()

    def op_args(theta, shift, mode):  # the op's arguments, the plan's tensors included
        return (theta, shift, plan.index, plan.value, plan.dense_t, plan.rest, mode, plan.disjoint)

    def run(theta, shift, mode):  # the kernel, chosen per mode (triton's choice depends on it)
        a = op_args(theta, shift, mode)
        return select_kernel("mirror_apply", _inputs(*a), backend).fn(*a)

    def run_op(theta, shift, mode):  # the same through the custom op
        a = op_args(theta, shift, mode)
        return _mirror_apply_op(*a, resolve_backend("mirror_apply", _inputs(*a), backend))

    route = eager_route(rows, shift_rows)  # the kernel itself, without the op's dispatch
    if route == "transform" or (route == "plain" and records_autograd(rows, shift_rows)):
        out, c = _EagerMirrorApply.apply(rows, shift_rows, mode, (run, run_op))
    elif route == "plain":
        out, c = run(rows, shift_rows, mode)
    else:
        refuse_forward_ad_on_op_route("the Mirror ops", rows, shift_rows)
        out, c = run_op(rows, shift_rows, mode)
    out = None if mode == "coefficients" else out.reshape(theta.shape)
    return out, c.reshape(*batch, k)
