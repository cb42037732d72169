"""Argument checks and per-representation caching shared by the public ops."""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch._C import _functorch
from torch.autograd import forward_ad
from torch.overrides import _get_current_function_mode_stack
from torch.utils._device import DeviceContext
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from symkern._checks import all_finite, as_int, require_values
from symkern.backends.registry import select_kernel, select_kernel_cached
from symkern.groups import Representation


def check_rep(rep: Any, arg: str = "rep") -> Representation:
    if not isinstance(rep, Representation):
        raise TypeError(
            f"{arg} must be a symkern.groups Representation (e.g. symkern.groups.symmetric(5)), "
            f"got {type(rep).__name__}"
        )
    return rep


def check_float_tensor(x: Any, arg: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{arg} must have a floating dtype (float16, bfloat16, float32, float64), got {x.dtype}"
        )
    return x


def normalize_dim(x: torch.Tensor, dim: int, size: int, *, arg: str = "x") -> int:
    """Check that ``x`` has extent ``size`` along ``dim`` and return ``dim`` as non-negative."""
    try:
        dim = as_int(dim, "dim")  # a NumPy integer or an integer 0-d tensor is an int too
    except ValueError:
        raise TypeError(f"dim must be an int, got {type(dim).__name__}") from None
    if x.dim() == 0 or not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim={dim} is out of range for {arg} of shape {tuple(x.shape)}")
    dim = dim % x.dim()
    if x.shape[dim] != size:
        raise ValueError(
            f"{arg} has size {x.shape[dim]} along dim={dim} (shape {tuple(x.shape)}), but the "
            f"representation acts on R^{size}"
        )
    return dim


def as_rows(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """View ``x`` as (B, D) rows with ``dim`` last; also return the moved shape to undo it.

    No copy when the layout allows it: a strided 2-D view goes to the kernels as is (a 2-D x
    along its last axis is its own rows: no view ops, ~8 µs per call less).
    """
    if dim == x.dim() - 1:
        moved = x
        if x.dim() == 2:
            return x, tuple(x.shape)
    else:
        moved = x.movedim(dim, -1)
    # explicit row count, not -1: a vmapped size-0 batch makes -1 ambiguous
    return moved.reshape(math.prod(moved.shape[:-1]), moved.shape[-1]), tuple(moved.shape)


def rows_view(t: torch.Tensor, dim: int) -> torch.Tensor | None:
    """``t`` as a (B, D) VIEW with ``dim`` last and unit column stride (what the kernels write
    into), or None when its layout has none."""
    moved = t.movedim(dim, -1)
    try:
        rows = moved.view(-1, moved.shape[-1])
    except RuntimeError:
        return None
    return rows if rows.shape[1] <= 1 or rows.stride(1) == 1 else None


def _memory_span(t: torch.Tensor) -> tuple[int, int]:
    """[first, last + 1) byte addresses covered by the elements of a non-empty tensor."""
    lo = sum(min(0, (n - 1) * s) for n, s in zip(t.shape, t.stride(), strict=True))
    hi = sum(max(0, (n - 1) * s) for n, s in zip(t.shape, t.stride(), strict=True))
    size = t.element_size()
    return t.data_ptr() + lo * size, t.data_ptr() + (hi + 1) * size


def check_out(out: object, x: torch.Tensor) -> None:
    """Validate an ``out=`` argument for a result of x's shape computed from x: a tensor of x's
    shape, dtype and device, storing no element twice (:func:`check_out_layout`), and no autograd
    involved (like torch's ``out=``). Its memory against x's is checked by
    :func:`check_out_memory` where a kernel writes into it (inside the op, so also under
    torch.compile)."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(
            f"out must match x: shape {tuple(x.shape)}, dtype {x.dtype}, device {x.device}; got "
            f"shape {tuple(out.shape)}, dtype {out.dtype}, device {out.device}"
        )
    if torch.is_grad_enabled() and (x.requires_grad or out.requires_grad):
        raise RuntimeError(
            "out= does not support automatic differentiation (x or out requires grad); call "
            "without out, or under torch.no_grad()"
        )
    if torch._C._are_functorch_transforms_active():
        raise RuntimeError(
            "out= is not supported inside torch.func transforms (grad, vmap, jvp, ...): call "
            "without out"
        )
    check_out_layout(out)


# Up to this many elements, a strided layout that the stride test below cannot clear is checked
# exactly by listing its offsets (8 bytes each); a larger one is refused.
_EXACT_OVERLAP_MAX = 1 << 20


def _stores_an_element_twice(t: torch.Tensor) -> bool:
    """Whether two indices of the strided view t address one memory element.

    Sorted by stride, the dims of size > 1 cannot collide when each stride exceeds the largest
    offset the smaller-stride dims reach (Σ_{j<k} stride_j (size_j − 1)); every layout made by
    slicing, transposing or permuting a tensor passes this. Other layouts are checked exactly by
    listing their offsets (at most ``_EXACT_OVERLAP_MAX`` elements; larger ones count as
    overlapping, so they are refused with the caller's message)."""
    dims = sorted((abs(st), n) for n, st in zip(t.shape, t.stride(), strict=True) if n > 1)
    reach = 0
    for stride, n in dims:
        if stride <= reach:
            break
        reach += stride * (n - 1)
    else:
        return False
    if t.numel() > _EXACT_OVERLAP_MAX:
        return True
    offsets = np.zeros(1, dtype=np.int64)
    for stride, n in dims:
        offsets = (offsets[:, None] + stride * np.arange(n, dtype=np.int64)).reshape(-1)
    offsets.sort()
    return bool((offsets[1:] == offsets[:-1]).any())


def check_out_layout(out: torch.Tensor) -> None:
    """out must store no element twice: not an expanded (stride-0) view, nor a strided view whose
    indices share elements, e.g. as_strided((4, 5), (2, 1)) — written by a kernel, or by the copy
    of a result into a non-unit-stride out, it gave a wrong answer silently. torch itself only
    refuses the first kind (its internal-overlap test answers "too hard to tell" for the
    second, and its own out= ops let that through)."""
    if torch.compiler.is_compiling():
        # Dynamo cannot trace the test; the ops' custom ops run it at run time on the tensors
        # their kernels write (check_out_memory)
        return
    # 0: none, 1: overlap (a stride-0 dim), 2: too hard for torch to tell
    overlap = torch._debug_has_internal_overlap(out)
    if overlap == 1 or (overlap == 2 and _stores_an_element_twice(out)):
        raise ValueError(
            "out must not store an element twice (an expanded, stride-0 or self-overlapping "
            "strided view); pass a tensor with its own memory, e.g. torch.empty_like(x)"
        )


def check_out_memory(out: torch.Tensor, x: torch.Tensor) -> None:
    """A kernel reads x while it writes out: out must store no element twice (not an expanded
    view) and be x itself (in place) or not overlap x at all."""
    if out.numel() == 0:
        return
    check_out_layout(out)
    same_view = out.data_ptr() == x.data_ptr() and out.stride() == x.stride()
    if not same_view:
        (x0, x1), (o0, o1) = _memory_span(x), _memory_span(out)
        if x0 < o1 and o0 < x1:
            raise ValueError(
                "out must be x itself (in place) or not overlap x's memory; its memory span "
                "intersects x's"
            )


def from_rows(rows: torch.Tensor, moved_shape: tuple[int, ...], dim: int) -> torch.Tensor:
    """Undo :func:`as_rows` on a result computed from its rows."""
    if rows.shape != moved_shape:
        rows = rows.reshape(moved_shape)
    return rows if dim == len(moved_shape) - 1 else rows.movedim(-1, dim)


def eager_route(*tensors: torch.Tensor | None) -> str | None:
    """How an op call may run its backend kernel without its torch.library custom op:

    * ``"plain"``: plain eager mode — the kernel directly (through an autograd.Function when
      autograd records the call: :func:`records_autograd`);
    * ``"transform"``: inside a torch.func transform (grad, vmap, jvp, jacrev, ...) — through the
      op's autograd.Function, which implements the transforms (see :class:`EagerSymmetricOp`);
    * ``None``: the custom op — under torch.compile / export / torch.jit.trace (which record
      the op), torch.func.functionalize, a torch function mode (other than
      ``torch.set_default_device``'s) or a dispatch mode, or for a tensor subclass (fake,
      functional), a meta tensor or a legacy-vmap batched tensor
      (``torch.autograd.grad(is_grads_batched=True)``, ``jacobian(vectorize=True)``).

    The custom op's dispatch costs ~50–100 µs per call on a 2-core CPU (measured 2026-11-24:
    orbit_average of a 32 × 25 tensor 80–210 µs through it, the kernel ~4 µs). The kernel, and
    so the result, is the same on every route."""
    if (
        torch.compiler.is_compiling()
        or torch._C._get_tracing_state() is not None
        or (torch._C._is_torch_function_mode_enabled() and not _only_default_device_modes())
        or is_in_torch_dispatch_mode()
        or not all(
            t is None or (type(t) in _PLAIN_TYPES and not t.is_meta and not is_legacy_batched(t))
            for t in tensors
        )
    ):
        return None
    if not torch._C._are_functorch_transforms_active():
        return "plain"
    if _transform_active(_functorch.TransformType.Functionalize):
        return None  # autograd.Function has no functionalize rule; the op has
    return "transform"


def _transform_active(kind) -> bool:
    """Whether a torch.func transform of this ``TransformType`` is on the interpreter stack."""
    return any(i.key() == kind for i in _functorch.get_interpreter_stack() or ())


# nn.Parameter is plain too: it disables its own __torch_function__ (a weight projected onto
# E^G in a layer took the op route, which refused forward-mode AD and torch.func.grad)
_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


def is_legacy_batched(t: torch.Tensor | None) -> bool:
    """A tensor batched by the legacy vmap (``torch.autograd.grad(is_grads_batched=True)``,
    ``torch.autograd.functional.jacobian(vectorize=True)``): only the custom ops handle it."""
    return t is not None and _functorch.is_legacy_batchedtensor(t)


def _only_default_device_modes() -> bool:
    """Whether every active torch function mode is ``torch.set_default_device``'s: it only
    places factory calls, and the kernels allocate on their inputs' device explicitly."""
    return all(isinstance(m, DeviceContext) for m in _get_current_function_mode_stack())


def forward_tangents_possible(*tensors: torch.Tensor | None) -> bool:
    """Whether an input may carry a forward-mode tangent — a dual tensor of the current
    ``forward_ad.dual_level``, or any input inside a torch.func jvp / jacfwd / hessian
    transform (which wraps what it differentiates, so no input can be told apart): the custom
    ops have no forward-mode formula, and their tangent would silently be zero."""
    if getattr(forward_ad, "_current_level", -1) >= 0 and any(
        t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors
    ):
        return True
    return torch._C._are_functorch_transforms_active() and _transform_active(
        _functorch.TransformType.Jvp
    )


def refuse_forward_ad_on_op_route(op: str, *tensors: torch.Tensor | None) -> None:
    """The custom-op route cannot carry a forward-mode tangent: a RuntimeError, not a silent
    zero (see :func:`forward_tangents_possible`)."""
    if forward_tangents_possible(*tensors):
        raise RuntimeError(
            f"symkern: forward-mode AD (jvp, jacfwd, hessian, forward_ad dual tensors) of {op} "
            "is not supported where the op runs as a torch.library custom op (inside "
            "torch.compile / export / torch.jit.trace, a torch function or dispatch mode, a "
            "tensor subclass, or with out=): its tangent would be silently zero. Call it "
            "eagerly on plain tensors, or use reverse mode (grad, jacrev)"
        )


def records_autograd(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd would record an op on these tensors: reverse mode (a tensor requires
    grad, grad mode on), or forward mode (inside ``torch.autograd.forward_ad.dual_level()``,
    where any tensor may carry a tangent; the op's autograd.Function then computes or refuses
    the tangent, where a bare kernel call would silently drop it)."""
    if getattr(forward_ad, "_current_level", -1) >= 0:
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def batch_first(t: torch.Tensor | None, bdim: int | None, n: int) -> torch.Tensor | None:
    """A (B, D) argument of an op under vmap as (n, B, D): its vmapped dimension (``bdim``;
    None: not vmapped, expanded) first."""
    if t is None:
        return None
    return t.expand(n, *t.shape) if bdim is None else t.movedim(bdim, 0)


def merged_rows(t: torch.Tensor | None) -> torch.Tensor | None:
    """(n, B, D) → (n B, D): a row-wise op's vmapped rows joined into one batch."""
    return None if t is None else t.reshape(t.shape[0] * t.shape[1], t.shape[2])


class EagerSymmetricOp(torch.autograd.Function):
    """``apply(x)`` with autograd for a linear map on (B, D) rows that is its own adjoint (the
    orthogonal projections onto E^G: the orbit mean, Q Qᵀ): the vector-Jacobian product and the
    forward-mode tangent are the map applied to the gradient / tangent (recorded again, so
    higher derivatives work), and under vmap the vmapped rows join the batch. Written in
    torch.func style (``setup_context``), so torch.func.grad / vmap / jvp / jacrev / hessian work.
    ``apply`` must be the backend kernel on plain tensors, with no autograd of its own;
    ``op_apply`` the same map through the custom op, for gradients batched by the legacy vmap
    (which the op's batching fallback handles, and ``apply`` cannot)."""

    @staticmethod
    def forward(x: torch.Tensor, apply: Callable, op_apply: Callable) -> torch.Tensor:
        return apply(x.detach())

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, ctx.apply_map, ctx.op_apply = inputs

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if is_legacy_batched(grad):  # autograd.grad(is_grads_batched=True), jacobian(vectorize)
            return ctx.op_apply(grad.contiguous()), None, None  # the op's batching fallback
        return EagerSymmetricOp.apply(grad.contiguous(), ctx.apply_map, ctx.op_apply), None, None

    @staticmethod
    def jvp(ctx, x_tangent: torch.Tensor, _apply: None, _op_apply: None) -> torch.Tensor:
        if is_legacy_batched(x_tangent):  # jacobian(strategy="forward-mode", vectorize=True)
            return ctx.op_apply(x_tangent.contiguous())
        return EagerSymmetricOp.apply(x_tangent.contiguous(), ctx.apply_map, ctx.op_apply)

    @staticmethod
    def vmap(info, in_dims, x, apply, op_apply):
        x = batch_first(x, in_dims[0], info.batch_size)
        out = EagerSymmetricOp.apply(merged_rows(x), apply, op_apply)
        return out.reshape(x.shape[0], x.shape[1], out.shape[-1]), 0


def run_projection(
    op: str,
    inputs: dict[str, Any],
    backend: str,
    out_rows: torch.Tensor | None,
    kernel_call: Callable[[Any, torch.Tensor], torch.Tensor],
    via_op: Callable[[torch.Tensor, str, torch.Tensor | None], torch.Tensor],
    choice_cache: dict,
    key: tuple,
) -> torch.Tensor:
    """The dispatch of the projections onto E^G (the orbit mean, Q Qᵀ) on (B, D) rows
    ``inputs["x"]``: ``kernel_call(kernel, rows)`` on the routes of :func:`eager_route`
    (autograd and torch.func by :class:`EagerSymmetricOp`), else ``via_op(rows, backend,
    out_rows)``, the custom op with the resolved backend name — always for ``out_rows`` (the
    mutating op bumps out's version counter, so autograd sees the write). ``choice_cache`` /
    ``key``: the kernel choice is remembered per key (what the backends' checks read: dtype,
    device, ...)."""
    rows = inputs["x"]
    route = None if out_rows is not None else eager_route(rows)
    if route is None:
        refuse_forward_ad_on_op_route(op, rows)
        return via_op(rows, resolve_backend(op, inputs, backend), out_rows)
    kernel = select_kernel_cached(choice_cache, op, inputs, backend, key=key)
    if route == "transform" or records_autograd(rows):
        return EagerSymmetricOp.apply(
            rows, lambda r: kernel_call(kernel, r), lambda r: via_op(r, kernel.backend, None)
        )
    return kernel_call(kernel, rows)


def rep_cache(rep: Representation) -> dict:
    """A dict stored on the representation object for derived data (orbits, bases, plans).

    Representations are immutable, so anything computed from one stays valid for its lifetime and
    is freed with it.
    """
    cache = rep.__dict__.get("_symkern_cache")
    if cache is None:
        cache = {}
        rep.__dict__["_symkern_cache"] = cache
    return cache


def build_cold_cache(what: str, rep: Representation, build: Callable[[], Any]) -> Any:
    """``build()``: the ``what`` of ``rep`` (an orbit plan, a fixed-point basis) on a cold cache,
    never traced by torch.compile.

    Building runs numpy / union-find / eigh code that dynamo cannot trace (it failed with
    "Unsupported ndarray attribute access", or an internal AssertionError without fullgraph).
    Inside a graph being traced this raises a clear RuntimeError: with ``fullgraph=True`` that is
    the error the user sees; without, dynamo gives up on the frame and runs it eagerly, where we
    get here again, not tracing, and build through ``torch._dynamo.disable`` (recursive: dynamo
    would otherwise compile each frame the build calls). torch._dynamo is looked up, not imported:
    it is always imported while anything is compiled, and importing it costs seconds. Inside a
    torch.func transform or torch.jit.trace the build runs as :func:`building_constants`: it
    makes constants of the representation, never functions of the inputs.
    """
    if torch.compiler.is_compiling():
        raise RuntimeError(
            f"symkern: the {what} of {rep!r} is built on first use, which cannot happen inside "
            "torch.compile(fullgraph=True): call the op (e.g. symkern.orbit_average(x, rep)) once "
            "eagerly, outside the compiled function, before its first compiled call"
        )
    dynamo = sys.modules.get("torch._dynamo")
    disable = getattr(dynamo, "disable", None)
    with building_constants():
        return build() if disable is None else disable(build)()


@contextlib.contextmanager
def building_constants():
    """Build cached constants of a representation or mirror (a plan, a basis) inside this block:
    torch.func transforms are disabled (a constant first built inside grad / jvp held wrapped
    tensors on every later call) and torch.jit.trace is paused (the build's own torch ops were
    recorded into the user's graph and replayed on every call; check_trace then failed with
    "Graphs differed across invocations")."""
    tracing = torch._C._get_tracing_state()
    if tracing is not None:
        torch._C._set_tracing_state(None)
    try:
        with torch._C._DisableFuncTorch():
            yield
    finally:
        if tracing is not None:
            torch._C._set_tracing_state(tracing)


def custom_op(name: str, *, mutates_args: Sequence[str]) -> Callable[[Callable], Any]:
    """``torch.library.custom_op(name, mutates_args=...)``, except that its first eager call does
    not import torch._dynamo.

    torch runs a custom op's implementation through ``torch._disable_dynamo``, which imports
    torch._dynamo on the op's first call: 2.2 s on the project's 2-core EPYC, paid by every process
    that calls a symkern op even when nothing is compiled (an eighth of the teacher-student quick
    run). That wrapper only matters while dynamo runs compiled code, which needs torch._dynamo
    imported; so until it is imported the implementation is called directly, and from then on
    through ``torch._dynamo.disable`` exactly as torch does (_DisableDynamoOnceImported). Where
    torch's internals are not the expected ones (another torch version), the op stays as torch
    built it. tests/test_dispatch.py checks both sides.
    """

    def wrap(fn: Callable) -> Any:
        op = torch.library.custom_op(name, mutates_args=tuple(mutates_args))(fn)
        for wrapped in getattr(op, "_backend_fns", {}).values():
            impl = getattr(wrapped, "__wrapped__", None)  # torch._compile._disable_dynamo's inner
            if impl is not None and getattr(impl, "__dynamo_disable", None) is None:
                setattr(impl, "__dynamo_disable", _DisableDynamoOnceImported(impl))
        return op

    return wrap


class _DisableDynamoOnceImported:
    """What ``torch._disable_dynamo`` caches on an implementation (its ``__dynamo_disable``
    attribute): here ``fn`` itself while torch._dynamo is not (fully) imported, else
    ``torch._dynamo.disable(fn)``, which then replaces this object in the cache."""

    def __init__(self, fn: Callable) -> None:
        self._fn = fn

    def __call__(self, *args, **kwargs):
        disable = getattr(sys.modules.get("torch._dynamo"), "disable", None)
        if disable is None:  # no compiled code can be running
            return self._fn(*args, **kwargs)
        disabled = disable(self._fn, True, wrapping=False)  # as torch._compile._disable_dynamo
        setattr(self._fn, "__dynamo_disable", disabled)
        return disabled(*args, **kwargs)


def resolve_backend(op: str, inputs: dict[str, Any], backend: str) -> str:
    """Choose the backend before entering the torch.library op, so bad calls fail here, eagerly,
    with the registry's reasons (inside the op a meta or fake tensor would never reach a kernel).
    The op re-checks the concrete name at run time; under torch.compile the choice is left to the
    op (``"auto"`` travels through the graph)."""
    if torch.compiler.is_compiling():
        return backend
    return select_kernel(op, inputs, backend).backend


def require_finite(t: torch.Tensor, name: str, why: str) -> None:
    """ValueError naming ``name`` when ``t`` holds NaN or ±inf (``why``: what they would do)."""
    if not all_finite(t):
        raise ValueError(f"{name} contains NaN or inf; {why}")


def per_item(
    value, n: int, name: str, dtype: torch.dtype, device, *, item: str, positive: bool = False
) -> torch.Tensor:
    """A hyperparameter given as a scalar or one value per run / model, as an (n,) tensor:
    finite and >= 0 (> 0 when ``positive``), else ValueError naming ``name``; not a real number
    (a bool, a string, a complex number, ...): TypeError naming ``name``. A -0.0 comes back as
    0.0 (equal hyperparameters give bitwise-equal tensors)."""
    want = f"{name} must be a real number or one real number per {item} ({n})"
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{want}, got {value!r}")
    try:
        probe = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise TypeError(f"{want}, got {value!r}") from None
    if probe.is_complex() or probe.dtype == torch.bool:  # also a bool tensor / array / list
        raise TypeError(f"{want}, got dtype {probe.dtype}")
    require_values(probe, name, "its values are checked and copied to the run's device")
    t = torch.as_tensor(value, dtype=torch.float64)  # a list of floats: read in float64
    if t.dim() == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(
            f"{name} must be a scalar or have one value per {item} ({n}), got {tuple(t.shape)}"
        )
    bad_sign = (t <= 0).any() if positive else (t < 0).any()
    if not torch.isfinite(t).all() or bad_sign:
        raise ValueError(
            f"{name} must be finite and {'>' if positive else '>='} 0, got {t.tolist()}"
        )
    return t.abs().to(device=device, dtype=dtype).contiguous()  # abs: -0.0 -> 0.0
