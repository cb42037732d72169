"""Argument checks and per-representation caching shared by the public ops."""

from __future__ import annotations

from typing import Any

import torch

from symkern._checks import all_finite, as_int
from symkern.backends.registry import select_kernel
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

    No copy when the layout allows it: a strided 2-D view goes to the kernels as is.
    """
    moved = x.movedim(dim, -1)
    return moved.reshape(-1, moved.shape[-1]), tuple(moved.shape)


def from_rows(rows: torch.Tensor, moved_shape: tuple[int, ...], dim: int) -> torch.Tensor:
    return rows.reshape(moved_shape).movedim(-1, dim)


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
    finite and >= 0 (> 0 when ``positive``), else ValueError naming ``name``."""
    t = torch.as_tensor(value, dtype=torch.float64)
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
    return t.to(device=device, dtype=dtype).contiguous()
