"""Argument checks shared by every layer (no symkern imports, so any module can use them).

Integers are accepted in every form a user passes one: a Python int, a NumPy integer, or an
integer 0-d tensor (anything with ``__index__``) — never a bool, a float or a string. Real numbers
likewise: int, float, NumPy scalars, 0-d real tensors. ``as_int`` / ``as_real`` return a plain
Python value, which is what the kernels receive; a bad value raises ValueError naming the
argument. ``float_dtype`` admits a floating torch dtype only, ``torch_generator`` a
torch.Generator or None. ``as_device`` parses a CPU / CUDA device that exists here.
``all_finite`` tests a tensor for NaN / ±inf, ``require_values`` refuses a meta tensor where
values are needed. ``philox_ids`` checks per-run ids against the 32-bit Philox word;
``real_tensor`` reads array-like data without a detour through float32.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import numpy as np
import torch

__all__ = [
    "PHILOX_WORD",
    "all_finite",
    "as_device",
    "as_int",
    "as_real",
    "float_dtype",
    "philox_ids",
    "real_tensor",
    "require_values",
    "torch_generator",
]

PHILOX_WORD = 2**32  # Philox counter words (step, run / model id, element index) are 32-bit


def all_finite(t: torch.Tensor) -> bool:
    """Whether ``t`` holds no NaN and no ±inf.

    A NaN or an infinity makes the float64 sum non-finite, so a finite sum proves every entry
    finite: one reduction, no boolean copy of ``t`` (``torch.isfinite(t).all()`` costs ~4× more on
    the small tensors of a per-step call). Only a sum that overflows — possible for float64
    entries near 1e308, never for narrower dtypes — takes the exact elementwise test.
    """
    if math.isfinite(t.sum(dtype=torch.float64).item()):
        return True
    return bool(torch.isfinite(t).all())


def require_values(t: Any, name: str, why: str) -> None:
    """ValueError naming ``name`` when ``t`` is a meta tensor — a shape and dtype without values
    — where ``why`` says what needs them. Reading one (a check's ``.item()``, a copy to the CPU)
    raised torch's own "cannot be called on meta tensors" / "Cannot copy out of meta tensor",
    naming no argument. Anything else passes: the caller's own checks judge it."""
    if isinstance(t, torch.Tensor) and t.is_meta:
        raise ValueError(
            f"{name} must hold values, got a meta tensor (shape and dtype only): {why}"
        )


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool | np.bool_) or (isinstance(v, torch.Tensor) and v.dtype == torch.bool)


def as_int(v: Any, name: str, *, minimum: int | None = None, below: int | None = None) -> int:
    """``v`` as a Python int in [minimum, below) (either bound optional); ValueError naming
    ``name`` otherwise."""
    if type(v) is int:  # the common case, without the general path's checks (per-step calls)
        i = v
    else:
        try:
            if _is_bool(v):
                raise TypeError
            i = operator.index(v)
        except TypeError:
            raise ValueError(f"{name} must be {_int_wanted(minimum, below)}, got {v!r}") from None
    if (minimum is not None and i < minimum) or (below is not None and i >= below):
        raise ValueError(f"{name} must be {_int_wanted(minimum, below)}, got {i}")
    return i


def _int_wanted(minimum: int | None, below: int | None) -> str:
    words = {None: "an int", 0: "a non-negative int", 1: "a positive int"}
    want = words.get(minimum, f"an int >= {minimum}")
    return want + (f" < {below}" if below is not None else "")


def as_real(v: Any, name: str, *, minimum: float | None = None, positive: bool = False) -> float:
    """``v`` as a finite Python float (> 0 when ``positive``, >= ``minimum`` when given);
    ValueError naming ``name`` otherwise."""
    want = "a finite number" + (" > 0" if positive else "")
    want += f" >= {minimum:g}" if minimum is not None else ""
    x = None
    if isinstance(v, torch.Tensor):
        if v.numel() == 1 and v.dim() == 0 and not (v.is_complex() or v.dtype == torch.bool):
            x = float(v)
    elif isinstance(v, numbers.Real) and not _is_bool(v):
        x = float(v)
    if (
        x is None
        or not math.isfinite(x)
        or (positive and not x > 0)
        or (minimum is not None and x < minimum)
    ):
        raise ValueError(f"{name} must be {want}, got {v!r}")
    return x


def philox_ids(ids: Any, n: int, name: str, item: str) -> torch.Tensor:
    """``ids`` (one integer per ``item``, any integer dtype or a sequence of ints) as an int64 (n,)
    CPU tensor with values in [0, 2^32): the Philox run / model word is 32-bit, so ids 2^32 apart
    would draw identical streams. ``None``: 0..n−1."""
    if ids is None:
        return torch.arange(n)
    want = f"{name} must be one integer per {item} ({n}), each in [0, 2^32) (a 32-bit Philox word)"
    try:
        t = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(np.asarray(ids))
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise ValueError(f"{want}, got {ids!r}") from None
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{want}, got dtype {t.dtype}")
    if t.shape != (n,):
        raise ValueError(f"{want}, got shape {tuple(t.shape)}")
    t = t.detach().cpu()
    if t.dtype == torch.uint64:  # compare in a signed type wide enough: uint64 -> via numpy
        big = t.numpy()
        if (big >= PHILOX_WORD).any():
            raise ValueError(f"{want}, got {big.tolist() if n <= 8 else 'out-of-range ids'}")
    t = t.to(torch.int64)  # int32 / uint8 compared with 2^32 would wrap
    if bool(((t < 0) | (t >= PHILOX_WORD)).any()):
        raise ValueError(f"{want}, got {t.tolist() if n <= 8 else 'out-of-range ids'}")
    return t


def real_tensor(v: Any, name: str) -> torch.Tensor:
    """``v`` as a real tensor: a tensor, or a floating NumPy array, keeps its dtype (and device);
    anything else (nested lists, integer arrays) is read in float64, which holds every Python
    float exactly — so list input is never rounded through float32 on its way to a float64
    computation. TypeError naming ``name`` for complex, bool or non-numeric data."""
    if isinstance(v, torch.Tensor):
        if v.is_complex() or v.dtype == torch.bool:
            raise TypeError(f"{name} must be real, got dtype {v.dtype}")
        return v
    if isinstance(v, np.ndarray) and v.dtype.kind == "f":
        return torch.from_numpy(np.ascontiguousarray(v))
    want = f"{name} must be a tensor or a (nested) sequence of real numbers"
    try:
        arr = np.asarray(v)
    except (TypeError, ValueError, OverflowError):  # ragged nesting: numpy's message names nothing
        raise TypeError(f"{want} (one shape, not ragged), got {type(v).__name__}") from None
    if arr.dtype.kind == "c":
        raise TypeError(f"{name} must be real, got complex data")
    # kinds read by value only: np.array(.., float64) turned None into NaN, "1.5" into 1.5, True
    # into 1.0; an object array (Python ints past int64, Fractions) is checked item by item
    if arr.dtype.kind == "O":
        numeric = all(isinstance(e, numbers.Real) and not _is_bool(e) for e in arr.flat)
    else:
        numeric = arr.dtype.kind in "iuf"
    if not numeric:
        raise TypeError(f"{want}, got {type(v).__name__} of dtype {arr.dtype}")
    try:
        return torch.from_numpy(arr.astype(np.float64))
    except (TypeError, ValueError, OverflowError):
        raise TypeError(f"{want}, got {type(v).__name__}") from None


def as_device(device: Any, name: str) -> torch.device:
    """``device`` (a str or torch.device) as a torch.device: "cpu" or "cuda[:index]" with that
    CUDA device present on this machine; ValueError naming ``name`` otherwise."""
    want = f"{name} must be 'cpu' or 'cuda[:index]', got {device!r}"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(want) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} {device}: CUDA is not available on this machine")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ValueError(
                f"{name} {device}: this machine has {n} CUDA device(s) (cuda:0..{n - 1})"
            )
    elif dev.type != "cpu":
        raise ValueError(f"{name} must be a CPU or CUDA device, got {dev}")
    return dev


def float_dtype(dtype: Any, name: str = "dtype") -> torch.dtype:
    """``dtype`` itself when it is a floating torch dtype (an integer one would truncate values
    cast to it and cannot carry gradients); TypeError naming ``name`` otherwise."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(
            f"{name} must be a floating torch dtype (float16, bfloat16, float32, float64), "
            f"got {dtype!r}"
        )
    return dtype


def torch_generator(generator: Any, name: str = "generator") -> torch.Generator | None:
    """``generator`` itself when it is a torch.Generator or None (torch's global one); TypeError
    naming ``name`` otherwise — checked on entry, so a bad one fails even where no draw happens,
    and not as torch's randint / randn overload listing."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(generator).__name__}")
    return generator
