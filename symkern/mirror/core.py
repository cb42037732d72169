"""The :class:`Mirror` object: an orthonormal O ∈ R^{d×k} stored without any d×d matrix.

Math (``/work/shared/SPEC_MIRROR.md``): the reflection is R_O = I − 2OOᵀ; a loss ℓ is O-mirror
symmetric when ℓ(θ) = ℓ(R_O θ) for all θ, and its symmetric solutions satisfy Oᵀθ = 0.

Storage ("sparse columns"): column j of O has at most ``s`` non-zeros, at flat coordinates
``index[j, :]`` with values ``value[j, :]`` (``index``, ``value`` of shape (k, s)). Every structured
mirror of the spec fits this layout with O(d) memory:

=====================  ==========================================  ===
constructor            column j                                    s
=====================  ==========================================  ===
``coordinates``        e_{idx_j}                                   1
``rescaling_pairs``    e_{u_i} and e_{w_i} (two columns per pair)  1
``neuron_swap``        (e_{p_j} − e_{q_j}) / √2                     2
``householder``        Σ_h n_h e_{pos(r, h)} (one per row r)        H
``dense``              O[:, j] (stored as a dense (d, k) matrix)   d
=====================  ==========================================  ===

With this layout c = Oᵀθ is a gather + weighted sum and O c a scatter-add, batched over leading
dims of θ. :meth:`Mirror.coefficients`, :meth:`Mirror.reflect`, :meth:`Mirror.project` and
:meth:`Mirror.breaking` run the fused op ``symkern::mirror_apply`` (:mod:`symkern.ops.mirror`;
C++, Triton and torch kernels chosen by the backend registry, differentiable): one kernel call
gives c and θ − s·O c, one pass over θ when the columns have disjoint supports.
:meth:`Mirror.expand` stays a torch ``index_add``.

Columns may carry a group id (``groups``, shape (k,), ids in [0, k)): e.g. one group per pair of
:meth:`Mirror.rescaling_pairs`. :meth:`Mirror.split` returns one Mirror per group (each one is a
mirror on its own when the loss has the per-group symmetry).
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable, Sequence

import numpy as np
import torch

from symkern._checks import as_int, as_real, float_dtype, require_values, torch_generator
from symkern.ops._common import building_constants
from symkern.ops.mirror import MirrorPlan, make_mirror_plan, mirror_apply

__all__ = ["Mirror"]


def _short(x, limit: int = 80) -> str:
    r = repr(x)
    return r if len(r) <= limit else r[: limit - 3] + "..."


_INT64_MAX = int(np.iinfo(np.int64).max)


def _np_index(arr: np.ndarray, name: str) -> torch.Tensor:
    """An integer numpy array of any dtype (uint64 included) as a flat int64 tensor; values that
    do not fit int64 are rejected (ValueError naming ``name``), never wrapped."""
    flat = arr.reshape(-1)
    if arr.dtype.kind == "u" and flat.size and int(flat.max()) > _INT64_MAX:
        raise ValueError(f"{name} has values beyond the int64 range, got max {int(flat.max())}")
    return torch.from_numpy(flat.astype(np.int64))


def _as_index(x, name: str) -> torch.Tensor:
    """``x`` (integer tensor, or a sequence / numpy array of integers of any integer dtype) as a
    flat long tensor.

    Floats and bools are rejected (TypeError naming ``name``), never truncated or read as 0/1;
    values beyond the int64 range are rejected (ValueError), never wrapped.
    """
    if isinstance(x, torch.Tensor):
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer index tensor, got dtype {x.dtype}")
        require_values(x, name, "the mirror is built from its values")
        if x.dtype in (torch.uint16, torch.uint32, torch.uint64):
            return _np_index(x.detach().cpu().numpy(), name)
        return x.detach().to("cpu", torch.long).reshape(-1)
    expected = f"{name} must be a sequence of integers (not floats or bools)"
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{expected}, got {_short(x)}")
    if isinstance(x, np.ndarray):
        if x.dtype.kind in "iu":
            return _np_index(x, name)
        if x.size:
            raise TypeError(f"{expected}, got a numpy array of dtype {x.dtype}")
    try:
        items = list(x)
    except TypeError as e:
        raise TypeError(f"{expected}, got {type(x).__name__}") from e
    if not items:
        return torch.empty(0, dtype=torch.long)
    if any(isinstance(v, (bool, np.bool_)) for v in items):
        raise TypeError(f"{expected}, got {_short(x)}")
    try:
        t = torch.as_tensor(items)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        # e.g. numpy uint64 scalars (torch has no conversion for them) or ints beyond int64:
        # read each item as an exact Python int
        try:
            ints = [operator.index(v) for v in items]
        except TypeError as e:
            raise TypeError(f"{expected}, got {_short(x)}") from e
        if any(not -_INT64_MAX - 1 <= v <= _INT64_MAX for v in ints):
            raise ValueError(
                f"{name} has values beyond the int64 range, got {_short(ints)}"
            ) from None
        return torch.tensor(ints, dtype=torch.long)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{expected}, got {_short(x)}")
    return t.to(torch.long).reshape(-1)


def _as_int(v, name: str) -> int:
    """A Python int from an integer (int, numpy integer, integer 0-d tensor); floats and bools
    are rejected (TypeError naming ``name``), never truncated."""
    try:
        return as_int(v, name)
    except ValueError as e:
        raise TypeError(str(e)) from None


def _check_tol(tol, name: str = "tol") -> float:
    """A tolerance: a finite real >= 0 (Python / NumPy scalar or 0-d tensor) as a float."""
    return as_real(tol, name, minimum=0)


def _check_trials(trials) -> int:
    """The rule for ``trials`` of every numerical symmetry check (an int >= 1, Python / NumPy
    integer or integer 0-d tensor), as a Python int."""
    return as_int(trials, "trials", minimum=1)


def _loss_value(out) -> float:
    """A loss's value as a float: ``loss`` must return a scalar (a one-element real tensor or
    numpy array, or a real number incl. numpy scalars)."""
    if isinstance(out, torch.Tensor):
        if out.numel() != 1 or out.is_complex() or out.dtype == torch.bool:
            raise ValueError(
                "loss must return a scalar (one-element real tensor), got a tensor of shape "
                f"{tuple(out.shape)} and dtype {out.dtype}"
            )
        return float(out)
    if isinstance(out, np.ndarray):
        if out.size != 1 or out.dtype.kind not in "iuf":
            raise ValueError(
                "loss must return a scalar (one-element real array), got a numpy array of shape "
                f"{out.shape} and dtype {out.dtype}"
            )
        return float(out.reshape(()))
    if isinstance(out, numbers.Real) and not isinstance(out, (bool, np.bool_)):
        return float(out)
    raise TypeError(f"loss must return a scalar (0-d tensor or number), got {type(out).__name__}")


def _relative_gap(a: float, b: float) -> float:
    """|a − b| / max(|a|, |b|, 1e-30), the symmetry checks' measure; NaN (a loss gone NaN) is
    inf, so it never passes a tolerance."""
    gap = abs(a - b) / max(abs(a), abs(b), 1e-30)
    return math.inf if math.isnan(gap) else gap


def _check_d(d, name: str = "d") -> int:
    return as_int(d, name, minimum=1)


def _dense_columns(O, name: str, tol: float | None, d: int | None = None) -> torch.Tensor:
    """A dense O (d, k) with orthonormal columns, as a CPU float64 tensor; ValueError / TypeError
    naming ``name`` otherwise. ``d``: the required number of rows; ``tol`` None skips the check
    of ‖OᵀO − I‖_max ≤ tol (the shape, dtype and finiteness checks always run)."""
    if not isinstance(O, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(O).__name__}")
    if not O.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating tensor, got dtype {O.dtype}")
    require_values(O, name, "the mirror is built from its values")
    if O.ndim != 2 or O.shape[1] < 1 or O.shape[0] < 1:
        raise ValueError(f"{name} must have shape (d, k) with d, k >= 1, got {tuple(O.shape)}")
    rows, k = O.shape
    if d is not None and rows != d:
        raise ValueError(f"{name} must have d={d} rows, got shape {tuple(O.shape)}")
    if k > rows:
        raise ValueError(f"{name} has k={k} > d={rows} columns: they cannot be orthonormal")
    O64 = O.detach().to("cpu", torch.float64)
    if not torch.isfinite(O64).all():
        raise ValueError(f"{name} contains non-finite values")
    if tol is not None:
        tol = _check_tol(tol)
        err = (O64.T @ O64 - torch.eye(k, dtype=torch.float64)).abs().max().item()
        if not err <= tol:
            raise ValueError(
                f"{name} must have orthonormal columns: max|OᵀO − I| = {err:.3g} > {tol:g}"
            )
    return O64


class Mirror:
    """An orthonormal O ∈ R^{d×k} (k ≥ 1) and the ops of its reflection R_O = I − 2OOᵀ.

    Build with the classmethods (:meth:`dense`, :meth:`coordinates`, :meth:`rescaling_pairs`,
    :meth:`neuron_swap`, :meth:`householder`), not the constructor. All ops accept θ of shape
    (..., d), any floating dtype/device, and are differentiable with autograd.

    Attributes: ``d``, ``k``, ``index`` (k, s) long, ``value`` (k, s) float64, ``groups`` (k,) long,
    ``kind`` (str), ``meta`` (dict, free-form provenance e.g. from :mod:`symkern.mirror.detect`).

    Example::

        >>> m = symkern.mirror.Mirror.coordinates([0, 2], 4)  # O = [e_0, e_2]
        >>> theta = torch.tensor([1.0, 2.0, 3.0, 4.0])
        >>> m.reflect(theta).tolist(), m.project(theta).tolist()
        ([-1.0, 2.0, -3.0, 4.0], [0.0, 2.0, 0.0, 4.0])
        >>> torch.equal(m.reflect(m.reflect(theta)), theta)  # R_O is an involution
        True
        >>> seed = torch.Generator().manual_seed(0)
        >>> m.is_symmetric(lambda t: (t**2).sum(), generator=seed)[0]  # true of every mirror
        True
    """

    def __init__(
        self,
        index: torch.Tensor | None,
        value: torch.Tensor | None,
        d: int,
        *,
        groups: torch.Tensor | None = None,
        kind: str = "sparse",
        dense: torch.Tensor | None = None,
        meta: dict | None = None,
        check: bool = True,
        tol: float = 1e-10,
    ):
        self.d = _check_d(d)
        tol = _check_tol(tol)
        self._dense: torch.Tensor | None
        self.index: torch.Tensor | None
        self.value: torch.Tensor | None
        if dense is not None:
            # the dense classmethod has checked O and passes check=False; a direct call gets the
            # same checks (a non-orthonormal O would make reflect no involution, silently)
            self._dense = _dense_columns(dense, "dense", tol if check else None, d=self.d)
            self.index = None
            self.value = None
            k = self._dense.shape[1]
        else:
            self._dense = None
            if index is None or value is None:
                raise TypeError("index and value (k, s) are required unless dense is given")
            for name, t in (("index", index), ("value", value)):
                if not isinstance(t, torch.Tensor):
                    raise TypeError(f"{name} must be a (k, s) torch.Tensor, got {type(t).__name__}")
                require_values(t, name, "the mirror is built from its values")
            if index.ndim != 2 or value.shape != index.shape:
                raise ValueError(
                    f"index and value must both be (k, s); got {tuple(index.shape)}, "
                    f"{tuple(value.shape)}"
                )
            if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
                raise TypeError(f"index must be an integer tensor, got dtype {index.dtype}")
            self.index = index.to("cpu", torch.long).contiguous()
            self.value = value.detach().to("cpu", torch.float64).contiguous()
            k = index.shape[0]
            if k == 0:
                raise ValueError("a mirror needs at least one column (k >= 1)")
            if self.index.numel() and (self.index.min() < 0 or self.index.max() >= self.d):
                raise ValueError(f"index has coordinates outside [0, d={self.d})")
        self.k = int(k)
        if groups is None:
            groups = torch.zeros(self.k, dtype=torch.long)
        groups = _as_index(groups, "groups")
        if groups.numel() != self.k:
            raise ValueError(f"groups must have k={self.k} entries, got {groups.numel()}")
        if (groups < 0).any():
            raise ValueError(f"groups must be non-negative ints, got {_short(groups.tolist())}")
        if int(groups.max()) >= self.k:
            # group_norms has one entry per id up to the largest: ids >= k only add empty groups
            # (and an id like 10**15 would allocate petabytes there)
            raise ValueError(
                f"groups must lie in [0, k) with k = {self.k} columns, got max {int(groups.max())}"
            )
        self.groups = groups
        self.kind = kind
        self.meta = dict(meta or {})
        self._cache: dict = {}
        if check and self._dense is None:
            self._check_orthonormal(tol)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def dense(cls, O: torch.Tensor, *, tol: float | None = None) -> Mirror:
        """O given as a dense (d, k) matrix with orthonormal columns (for small k).

        Raises ValueError naming ``O`` if ‖OᵀO − I‖_max > tol (default 1e-10 for float64 input,
        1e-5 for lower precision) or k > d.
        """
        if tol is None:
            tol = 1e-10 if getattr(O, "dtype", None) == torch.float64 else 1e-5
        O64 = _dense_columns(O, "O", tol)
        return cls(None, None, O64.shape[0], dense=O64, kind="dense", check=False)

    @classmethod
    def coordinates(cls, idx, d: int, *, groups=None) -> Mirror:
        """O = [e_{idx_0}, …, e_{idx_{k−1}}]: the reflection flips the sign of the selected
        coordinates; the constraint sets them to zero (O = I: ``idx = range(d)``).

        ``groups`` (optional, (k,) ints in [0, k)) tags columns; default: each coordinate its own
        group.
        """
        d = _check_d(d)
        idx = _as_index(idx, "idx")
        if idx.numel() == 0:
            raise ValueError("idx must select at least one coordinate")
        if idx.min() < 0 or idx.max() >= d:
            raise ValueError(f"idx must lie in [0, d={d}), got range [{idx.min()}, {idx.max()}]")
        if torch.unique(idx).numel() != idx.numel():
            raise ValueError("idx has repeated coordinates (columns would not be orthonormal)")
        if groups is None:
            groups = torch.arange(idx.numel())
        return cls(
            idx[:, None],
            torch.ones(idx.numel(), 1, dtype=torch.float64),
            d,
            groups=groups,
            kind="coordinates",
        )

    @classmethod
    def rescaling_pairs(cls, u_idx, w_idx, d: int) -> Mirror:
        """Mirror of the rescaling symmetry of θ = u ⊙ w: (u_i, w_i) → (−u_i, −w_i) for every pair.

        O = [e_{u_0}, e_{w_0}, e_{u_1}, e_{w_1}, …] (k = 2 per pair; column 2i ↔ u_i, 2i+1 ↔ w_i),
        group i = pair i. The constraint Oᵀθ = 0 is u_i = w_i = 0 (sparsity of u ⊙ w). One pair
        alone is already a mirror of ℓ(u ⊙ w): use :meth:`split` for the per-pair mirrors.
        """
        d = _check_d(d)
        u = _as_index(u_idx, "u_idx")
        w = _as_index(w_idx, "w_idx")
        if u.numel() != w.numel():
            raise ValueError(
                f"u_idx and w_idx must have equal length, got {u.numel()}, {w.numel()}"
            )
        if u.numel() == 0:
            raise ValueError("u_idx must hold at least one pair")
        for name, t in (("u_idx", u), ("w_idx", w)):
            if t.min() < 0 or t.max() >= d:
                raise ValueError(f"{name} must lie in [0, d={d})")
        idx = torch.stack([u, w], 1).reshape(-1)
        if torch.unique(idx).numel() != idx.numel():
            raise ValueError("u_idx and w_idx must be distinct coordinates (no repeats)")
        groups = torch.arange(u.numel()).repeat_interleave(2)
        return cls(
            idx[:, None],
            torch.ones(idx.numel(), 1, dtype=torch.float64),
            d,
            groups=groups,
            kind="rescaling_pairs",
        )

    @classmethod
    def neuron_swap(cls, block_i, block_j, d: int) -> Mirror:
        """Mirror of swapping two neurons' parameter blocks, θ[block_i] ↔ θ[block_j].

        ``block_i[t]`` and ``block_j[t]`` are the flat coordinates of the same parameter of
        neuron i and neuron j. O has one column (e_{block_i[t]} − e_{block_j[t]})/√2 per t, so
        R_O swaps the blocks exactly and Oᵀθ = 0 ⟺ neuron i = neuron j.
        """
        d = _check_d(d)
        a = _as_index(block_i, "block_i")
        b = _as_index(block_j, "block_j")
        if a.numel() != b.numel():
            raise ValueError(
                f"block_j must have the length of block_i ({a.numel()}), got {b.numel()}"
            )
        if a.numel() == 0:
            raise ValueError("block_i must hold at least one coordinate")
        for name, t in (("block_i", a), ("block_j", b)):
            if t.min() < 0 or t.max() >= d:
                raise ValueError(f"{name} must lie in [0, d={d})")
        idx = torch.stack([a, b], 1)
        if torch.unique(idx).numel() != idx.numel():
            raise ValueError("block_i and block_j must be disjoint and without repeats")
        r = 1.0 / math.sqrt(2.0)
        val = torch.tensor([r, -r], dtype=torch.float64).expand(a.numel(), 2).clone()
        return cls(idx, val, d, kind="neuron_swap")

    @classmethod
    def householder(cls, n: torch.Tensor, blocks: Sequence, d: int) -> Mirror:
        """Rotation mirror on a hidden index: every block M gets M → M(I − 2nnᵀ) along its
        hidden axis.

        ``blocks``: sequence of ``(offset, shape, axis)``: a parameter stored row-major
        (contiguous) at θ[offset : offset + prod(shape)], whose dimension ``axis`` is the hidden
        index (``shape[axis] == len(n)``). For a factorisation M = U Wᵀ, U ∈ R^{m×h}, W ∈ R^{p×h}
        stored as θ = [vec U, vec W]: ``blocks = [(0, (m, h), 1), (m*h, (p, h), 1)]``.

        O has one column per "row" r of each block (all indices but ``axis``): Σ_h n_h e_{pos(r,h)};
        so Oᵀθ = [U n; W n] and the constraint U n = W n = 0 means rank(U Wᵀ) ≤ h − 1. ``n`` must
        be a unit vector (ValueError naming ``n`` otherwise; tolerance 1e-10 for float64, 1e-5 for
        float32, 4·eps for float16 / bfloat16), then renormalised in float64.
        """
        d = _check_d(d)
        if not isinstance(n, torch.Tensor):
            raise TypeError(f"n must be a torch.Tensor, got {type(n).__name__}")
        if n.ndim != 1 or n.numel() < 1 or not n.dtype.is_floating_point:
            raise ValueError(f"n must be a 1-D floating vector, got shape {tuple(n.shape)}")
        require_values(n, "n", "the mirror is built from its values")
        n64 = n.detach().to("cpu", torch.float64)
        if not torch.isfinite(n64).all():
            raise ValueError(f"n must be a finite unit vector, got {_short(n64.tolist())}")
        # the unit check at n's own precision (float16 / bfloat16 cannot hold a unit vector to
        # 1e-5); n is renormalised in float64 below
        tol = 1e-10 if n.dtype == torch.float64 else max(1e-5, 4 * torch.finfo(n.dtype).eps)
        if not abs(n64.norm().item() - 1.0) <= tol:
            raise ValueError(f"n must be a unit vector, got ‖n‖ = {n64.norm().item():.6g}")
        # n passed the unit check at its own precision: renormalise in float64 so the columns
        # meet the constructor's float64 orthonormality check (a float32 unit vector is fine)
        n64 = n64 / n64.norm()
        H = n64.numel()
        if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence) or not blocks:
            raise TypeError("blocks must be a non-empty sequence of (offset, shape, axis)")
        idxs = []
        for b in blocks:
            try:
                offset, shape, axis = b
                shape = tuple(shape)
            except (TypeError, ValueError) as e:
                raise TypeError(
                    f"each entry of blocks must be (offset, shape, axis), got {b!r}"
                ) from e
            offset = _as_int(offset, "blocks: offset")
            axis = _as_int(axis, "blocks: axis")
            shape = tuple(_as_int(s, "blocks: each entry of shape") for s in shape)
            if not shape:
                raise ValueError(f"blocks: shape must have at least one axis, got {shape}")
            if any(s < 0 for s in shape):
                raise ValueError(f"blocks: shape must have sizes >= 0, got {shape}")
            if axis < 0:
                axis += len(shape)
            if not 0 <= axis < len(shape):
                raise ValueError(f"blocks: axis {axis} out of range for shape {shape}")
            if shape[axis] != H:
                raise ValueError(
                    f"blocks: shape {shape} has {shape[axis]} entries on axis {axis}, but n has {H}"
                )
            numel = math.prod(shape)
            if offset < 0 or offset + numel > d:
                raise ValueError(f"blocks: block at offset {offset} of size {numel} exceeds d={d}")
            pos = offset + torch.arange(numel).view(shape).movedim(axis, -1).reshape(-1, H)
            idxs.append(pos)
        index = torch.cat(idxs, 0)
        if torch.unique(index).numel() != index.numel():
            raise ValueError("blocks overlap")
        value = n64.expand(index.shape[0], H).clone()
        return cls(index, value, d, kind="householder", meta={"n": n64, "blocks": list(blocks)})

    # ------------------------------------------------------------------ validation
    def _check_orthonormal(self, tol: float) -> None:
        # called by the constructor for sparse columns only, which it has just stored
        assert self.index is not None and self.value is not None
        norms = (self.value**2).sum(1)
        err = (norms - 1).abs().max().item()
        if not err <= tol:
            raise ValueError(f"O must have orthonormal columns: max|‖O_j‖² − 1| = {err:.3g}")
        flat = self.index.reshape(-1)
        if torch.unique(flat).numel() == flat.numel():
            return  # disjoint supports: orthogonal
        if self.k > 4096:
            raise ValueError("columns of O with overlapping supports: k too large to check OᵀO")
        Od = self.to_dense(torch.float64)
        err = (Od.T @ Od - torch.eye(self.k, dtype=torch.float64)).abs().max().item()
        if not err <= tol:
            raise ValueError(f"O must have orthonormal columns: max|OᵀO − I| = {err:.3g}")

    def _check_theta(self, theta) -> None:
        if not isinstance(theta, torch.Tensor):
            raise TypeError(f"theta must be a torch.Tensor, got {type(theta).__name__}")
        if not theta.dtype.is_floating_point:
            raise TypeError(f"theta must be a floating tensor, got dtype {theta.dtype}")
        if theta.ndim < 1 or theta.shape[-1] != self.d:
            raise ValueError(f"theta must have shape (..., d={self.d}), got {tuple(theta.shape)}")

    def _plan(self, like: torch.Tensor) -> MirrorPlan:
        """O in the kernels' form on ``like``'s device and dtype (built once, then cached).

        ``like`` must be floating: O cast to an integer dtype would be truncated (callers check
        their argument first, naming it)."""
        if not like.dtype.is_floating_point:
            raise TypeError(f"a mirror plan needs a floating dtype, got {like.dtype}")
        key = (like.dtype, like.device)
        if key not in self._cache:
            # constants of the mirror: never built as functions of a torch.func transform's
            # inputs (a plan first built inside grad / jvp held wrapped tensors, which the
            # Triton kernels cannot read, on every later call), nor recorded by jit.trace
            with building_constants():
                self._cache[key] = make_mirror_plan(
                    self.d, self.index, self.value, self._dense, like.dtype, like.device
                )
        return self._cache[key]

    # ------------------------------------------------------------------ ops
    # coefficients / reflect / project / breaking run the fused ``symkern::mirror_apply`` op
    # (symkern.ops.mirror): one kernel call gives c = Oᵀθ and θ − s·O c for all rows of θ.
    def coefficients(self, theta: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
        """c = Oᵀθ, shape (..., k).

        ``backend``: ``"auto"`` (cpp for CPU tensors, triton for CUDA tensors, per the registry),
        or ``"cpp"`` / ``"triton"`` / ``"torch"`` forced (fails loudly if it cannot run).
        """
        self._check_theta(theta)
        return mirror_apply(theta, self._plan(theta), "coefficients", backend=backend)[1]

    def expand(self, c: torch.Tensor) -> torch.Tensor:
        """O c for c of shape (..., k) → (..., d), in c's floating dtype (an integer c is
        rejected: O would be truncated to it)."""
        if not isinstance(c, torch.Tensor):
            raise TypeError(f"c must be a torch.Tensor, got {type(c).__name__}")
        if not c.dtype.is_floating_point:
            raise TypeError(f"c must be a floating tensor, got dtype {c.dtype}")
        if c.ndim < 1 or c.shape[-1] != self.k:
            raise ValueError(f"c must have shape (..., k={self.k}), got {tuple(c.shape)}")
        plan = self._plan(c)
        if plan.dense_t is not None:
            return c @ plan.dense_t
        assert plan.index is not None and plan.value is not None  # sparse plan: both are set
        src = (c[..., None] * plan.value).reshape(*c.shape[:-1], plan.value.numel())
        out = c.new_zeros(*c.shape[:-1], self.d)
        return out.index_add(-1, plan.index.reshape(-1), src)

    def reflect(self, theta: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
        """R_O θ = θ − 2 O(Oᵀθ), shape (..., d). An involution: reflect(reflect(θ)) = θ.

        ``backend``: as :meth:`coefficients`.
        """
        self._check_theta(theta)
        out = mirror_apply(theta, self._plan(theta), "reflect", backend=backend)[0]
        assert out is not None  # None only for mode "coefficients"
        return out

    def project(self, theta: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
        """θ_∥ = (I − OOᵀ)θ = θ − O(Oᵀθ): the orthogonal projection onto {Oᵀθ = 0}.

        ``backend``: as :meth:`coefficients`.
        """
        self._check_theta(theta)
        out = mirror_apply(theta, self._plan(theta), "project", backend=backend)[0]
        assert out is not None  # None only for mode "coefficients"
        return out

    def breaking(
        self, theta: torch.Tensor, *, backend: str = "auto"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(c, ‖c‖) with c = Oᵀθ of shape (..., k) and its Euclidean norm (...,): how far θ is
        from the constraint set (‖c‖ = distance to {Oᵀθ = 0}). ``backend``: as
        :meth:`coefficients`."""
        c = self.coefficients(theta, backend=backend)
        return c, torch.linalg.vector_norm(c, dim=-1)

    def group_norms(self, theta: torch.Tensor) -> torch.Tensor:
        """‖c_g‖ per column group g, shape (..., G) with G = groups.max() + 1."""
        c = self.coefficients(theta)
        G = int(self.groups.max()) + 1
        sq = c.new_zeros(*c.shape[:-1], G).index_add(-1, self.groups.to(c.device), c * c)
        return sq.sqrt()

    def to_dense(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """O as a dense (d, k) tensor (for tests and small problems only); ``dtype`` floating."""
        float_dtype(dtype)
        if self._dense is not None:
            return self._dense.to(dtype)
        assert self.index is not None and self.value is not None  # sparse: the constructor set both
        O = torch.zeros(self.d, self.k, dtype=torch.float64)
        cols = torch.arange(self.k)[:, None].expand_as(self.index)
        O[self.index.reshape(-1), cols.reshape(-1)] = self.value.reshape(-1)
        return O.to(dtype)

    def split(self) -> list[Mirror]:
        """One Mirror per column group (e.g. per pair of :meth:`rescaling_pairs`)."""
        out = []
        for g in torch.unique(self.groups).tolist():
            sel = (self.groups == g).nonzero().reshape(-1)
            if self._dense is not None:
                m = Mirror(
                    None,
                    None,
                    self.d,
                    dense=self._dense[:, sel],
                    kind=self.kind,
                    meta=self.meta,
                    check=False,
                )
            else:
                assert self.index is not None and self.value is not None  # sparse: both are set
                m = Mirror(
                    self.index[sel],
                    self.value[sel],
                    self.d,
                    kind=self.kind,
                    meta=self.meta,
                    check=False,
                )
            out.append(m)
        return out

    # ------------------------------------------------------------------ checks
    def is_symmetric(
        self,
        loss: Callable[[torch.Tensor], torch.Tensor],
        theta: torch.Tensor | None = None,
        trials: int = 3,
        *,
        rtol: float = 1e-8,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> tuple[bool, float]:
        """Numerical check of ℓ(θ) = ℓ(R_O θ).

        ``loss`` maps a flat θ of shape (d,) to a scalar. Points: ``trials`` draws θ ~ N(0, I)
        (in ``dtype``), or, when ``theta`` is given, θ itself plus ``trials − 1`` draws with the
        same RMS as θ (floored at 1). Returns (max gap <= rtol, max gap) with the relative gap
        |ℓ(θ) − ℓ(R_O θ)| / max(|ℓ(θ)|, |ℓ(R_O θ)|, 1e-30).
        """
        if not callable(loss):
            raise TypeError("loss must be callable: theta (d,) -> scalar")
        trials = _check_trials(trials)
        rtol = _check_tol(rtol, "rtol")
        float_dtype(dtype)
        generator = torch_generator(generator)
        points = []
        device: torch.device | str
        if theta is not None:
            self._check_theta(theta)
            if theta.ndim != 1:
                raise ValueError(f"theta must have shape (d={self.d},), got {tuple(theta.shape)}")
            require_values(theta, "theta", "is_symmetric compares the loss's values at it")
            theta = theta.detach()
            points.append(theta)
            scale = max(theta.pow(2).mean().sqrt().item(), 1.0)
            dtype, device = theta.dtype, theta.device
        else:
            scale, device = 1.0, "cpu"
        while len(points) < trials:
            z = torch.randn(self.d, generator=generator, dtype=torch.float64)
            points.append((scale * z).to(device, dtype))
        worst = 0.0
        with torch.no_grad():
            for p in points:
                a = _loss_value(loss(p))
                b = _loss_value(loss(self.reflect(p)))
                worst = max(worst, _relative_gap(a, b))
        return worst <= rtol, worst

    def __repr__(self) -> str:
        return f"Mirror(kind={self.kind!r}, d={self.d}, k={self.k})"
