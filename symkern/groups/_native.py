"""Low-level helpers on *native batches* of finite-group elements.

Three native forms are used throughout ``symkern.groups``:

* ``"perm"``   -- ``np.ndarray`` int64 of shape ``(m, D)``; row ``p`` acts as
  ``rho(g) x = x[..., p]``, i.e. its matrix has ``M[i, p[i]] = 1``.
* ``"signed"`` -- tuple ``(P, S)`` of int64 ``(m, D)`` and float64 ``(m, D)``
  (entries of ``S`` are +-1); acts as ``rho(g) x = S * x[..., P]``, i.e.
  ``M[i, P[i]] = S[i]``.
* ``"matrix"`` -- ``torch.Tensor`` float64 of shape ``(m, D, D)``.

With this convention the product ``a*b`` (meaning ``rho(a) @ rho(b)``) is

* perm:   ``p_ab = p_b[p_a]``
* signed: ``p_ab = p_b[p_a]``, ``s_ab = s_a * s_b[p_a]``
* matrix: ``M_a @ M_b``

All helpers act row-wise on batches so that BFS enumeration can be vectorised
level by level.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from symkern._checks import as_int

KINDS = ("perm", "signed", "matrix")

#: Largest D for which dense (D, D) matrices are ever built.
MAX_DENSE_DIM = 4096
#: Largest |G| * D^2 for ``element_matrices`` (float64 entries, ~800 MB).
MAX_ELEMENT_ENTRIES = 100_000_000
#: Default enumeration / BFS-closure limit.
DEFAULT_MAX_ORDER = 100_000
#: Entrywise tolerance on |M M^T - I| for orthogonality checks. Fixed-space computations widen
#: their zero cuts by the measured defect of the matrices they use (``Representation.
#: _orthogonality_defect``), so an accepted, slightly non-orthogonal rep keeps its invariants.
ORTHO_TOL = 1e-8


class GroupTooLargeError(ValueError):
    """Raised when a group is too large to enumerate (or to close by BFS).

    Example::

        >>> from symkern.groups import Group, GroupTooLargeError
        >>> R = torch.tensor([[[0.0, -1.0], [1.0, 0.0]]], dtype=torch.float64)  # 90 deg turn
        >>> Group("C4", "matrix", R, dim=2).order()  # BFS closure (default max_order 100_000)
        4
        >>> Group("C4", "matrix", R, dim=2, max_order=3).order()
        Traceback (most recent call last):
        ...
        symkern.groups._native.GroupTooLargeError: group 'C4' has more than 3 elements, ...
        >>> issubclass(GroupTooLargeError, ValueError)
        True
    """


def check_dense_dim(D: int, what: str) -> None:
    """Refuse to build dense ``(D, D)`` matrices for ``D > MAX_DENSE_DIM``."""
    if D > MAX_DENSE_DIM:
        raise ValueError(
            f"{what}: representation dimension D={D} exceeds the dense-matrix limit "
            f"{MAX_DENSE_DIM}; only (signed) permutation representations work at this size "
            "(their orbit form needs no dense matrix)"
        )


# --------------------------------------------------------------------------- validation
def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _check_ragged(x: Any, name: str) -> None:
    if (
        isinstance(x, (list, tuple))
        and len(x) > 0
        and all(isinstance(r, (list, tuple, np.ndarray, torch.Tensor)) for r in x)
    ):
        lens = sorted({len(r) for r in x})
        if len(lens) > 1:
            raise ValueError(
                f"{name}: all generators must have the same dimension, got lengths {lens}"
            )


def _check_dim(dim: Any) -> None:
    """``dim`` (the D of a trivial group's generator list, or the expected D) is None or an int
    >= 1."""
    if dim is None:
        return
    try:
        as_int(dim, "dim", minimum=1)
    except ValueError:
        raise ValueError(
            f"dim must be a positive int (the space R^dim acted on), got {dim!r}"
        ) from None


def check_sample_entries(n: int, dim: int) -> None:
    """ValueError naming ``n`` when a sampler's (n, D, D) result (a rep's ``sample``, a continuous
    group's ``sample_defining``) would hold more than MAX_ELEMENT_ENTRIES entries, the limit
    element_matrices has (n = 10**12 asked the allocator for terabytes)."""
    cap = MAX_ELEMENT_ENTRIES
    if n * dim * dim > cap:
        raise ValueError(
            f"n: sample returns (n, {dim}, {dim}) matrices, and n * D^2 = {n * dim * dim} exceeds "
            f"the limit {cap} entries (n <= {cap // (dim * dim)} at D = {dim}); draw fewer per call"
        )


def validate_perms(perms: Any, name: str = "perms", dim: int | None = None) -> np.ndarray:
    """Validate generator permutations; return int64 array ``(n_gens, D)``.

    An empty generator list is allowed (trivial group) only when ``dim`` is given.
    """
    _check_dim(dim)
    _check_ragged(perms, name)
    if isinstance(perms, (list, tuple)) and len(perms) == 0:
        if dim is None:
            raise ValueError(
                f"{name}: empty generator list; pass dim=D to build the trivial group on R^D"
            )
        return np.zeros((0, int(dim)), dtype=np.int64)
    try:
        arr = _as_numpy(perms)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name}: could not convert to an array ({exc})") from exc
    if arr.dtype == object:
        raise ValueError(f"{name}: expected a rectangular integer array of shape (n_gens, D)")
    if arr.ndim != 2:
        raise ValueError(
            f"{name}: expected a 2-D integer array of shape (n_gens, D), got ndim={arr.ndim}"
        )
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: expected an integer dtype, got {arr.dtype}")
    k, D = arr.shape
    if dim is not None and D != dim:
        raise ValueError(f"{name}: expected D={dim} columns, got {D}")
    if k == 0:
        if D == 0 and dim is None:
            raise ValueError(f"{name}: empty generator list; pass dim=D")
        return arr.astype(np.int64)
    if D == 0:
        raise ValueError(f"{name}: permutations of zero points are not supported (D=0)")
    # the range in the input's own dtype, before the int64 cast: a uint64 entry >= 2^63 wrapped
    # to a negative one, and the message showed that instead of the value passed
    lo, hi = arr.min(), arr.max()
    if lo < 0 or hi >= D:
        raise ValueError(f"{name}: entries must be indices in [0, {D}), got range [{lo}, {hi}]")
    arr = arr.astype(np.int64, copy=True)
    # D entries in [0, D) form a permutation iff they hit every index: O(n_gens * D), no sort
    # (orbit_labels validates the perms of tensor powers with D ~ 1e4 on every call).
    hit = np.zeros(arr.shape, dtype=bool)
    np.put_along_axis(hit, arr, True, axis=1)
    bad = np.flatnonzero(~hit.all(axis=1))
    if bad.size:
        raise ValueError(
            f"{name}: row {int(bad[0])} is not a permutation of range({D}) (repeated entries)"
        )
    return arr


def validate_signs(signs: Any, shape: tuple[int, int], name: str = "signs") -> np.ndarray:
    """Validate signs (+-1) of the given ``(n_gens, D)`` shape; return float64 array."""
    _check_ragged(signs, name)
    if isinstance(signs, (list, tuple)) and len(signs) == 0:
        arr = np.zeros((0, shape[1]), dtype=np.float64)
    else:
        arr = _as_numpy(signs)
    if arr.dtype == object:
        raise ValueError(f"{name}: expected a rectangular array of shape {shape}")
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(
            f"{name}: shape {tuple(arr.shape)} does not match perms shape {tuple(shape)}"
        )
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"{name}: expected a numeric array of +-1, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):  # the cast below would silently drop the imaginary part
        raise ValueError(f"{name}: expected real entries +1 or -1, got complex dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.size and not np.all((arr == 1.0) | (arr == -1.0)):
        raise ValueError(f"{name}: every entry must be +1 or -1")
    return arr


def validate_matrices(mats: Any, name: str = "matrices", dim: int | None = None) -> torch.Tensor:
    """Validate orthogonal generator matrices; return float64 tensor ``(n_gens, D, D)``."""
    _check_dim(dim)
    if isinstance(mats, (list, tuple)):
        if len(mats) == 0:
            if dim is None:
                raise ValueError(f"{name}: empty generator list; pass dim=D")
            return torch.zeros((0, int(dim), int(dim)), dtype=torch.float64)
        shapes = sorted({tuple(_as_numpy(m).shape) for m in mats})
        if len(shapes) > 1:
            raise ValueError(
                f"{name}: all generators must have the same dimension, got shapes {shapes}"
            )
        arr = np.stack([_as_numpy(m) for m in mats])
    else:
        arr = _as_numpy(mats)
    if arr.ndim != 3:
        raise ValueError(
            f"{name}: expected shape (n_gens, D, D), got ndim={arr.ndim} shape {tuple(arr.shape)}"
        )
    if arr.shape[1] != arr.shape[2]:
        raise ValueError(f"{name}: matrices must be square, got shape {tuple(arr.shape[1:])}")
    if not (np.issubdtype(arr.dtype, np.number)) or arr.dtype == np.bool_:
        raise ValueError(f"{name}: expected a real numeric dtype, got {arr.dtype}")
    if np.iscomplexobj(arr):
        raise ValueError(f"{name}: expected real matrices, got complex dtype {arr.dtype}")
    D = arr.shape[1]
    if dim is not None and D != dim:
        raise ValueError(f"{name}: expected D={dim}, got {D}")
    if D == 0:
        raise ValueError(f"{name}: 0 x 0 matrices (D=0) are not supported")
    check_dense_dim(D, name)
    t = torch.as_tensor(np.ascontiguousarray(arr), dtype=torch.float64).clone()
    if t.shape[0] and not torch.isfinite(t).all():
        raise ValueError(f"{name}: matrices contain non-finite entries")
    if t.shape[0]:
        err = (t @ t.transpose(-1, -2) - torch.eye(D, dtype=torch.float64)).abs().amax()
        # The identity has unit entries, so an absolute 1e-8 bound is a relative one.
        if float(err) > ORTHO_TOL:
            raise ValueError(
                f"{name}: matrices must be orthogonal (|M M^T - I| <= {ORTHO_TOL}), "
                f"max deviation {float(err):.3g}"
            )
    return t


# --------------------------------------------------------------------------- batch ops
def batch_len(kind: str, b: Any) -> int:
    return int(b[0].shape[0]) if kind == "signed" else int(b.shape[0])


def batch_dim(kind: str, b: Any) -> int:
    return int(b[0].shape[1]) if kind == "signed" else int(b.shape[1])


def identity(kind: str, D: int, m: int = 1) -> Any:
    if kind == "perm":
        return np.tile(np.arange(D, dtype=np.int64), (m, 1))
    if kind == "signed":
        return (np.tile(np.arange(D, dtype=np.int64), (m, 1)), np.ones((m, D)))
    return torch.eye(D, dtype=torch.float64).expand(m, D, D).clone()


def take(kind: str, b: Any, idx: np.ndarray) -> Any:
    if kind == "signed":
        return (b[0][idx], b[1][idx])
    if kind == "matrix":
        return b[torch.as_tensor(np.asarray(idx, dtype=np.int64))]
    return b[idx]


def concat(kind: str, bs: Sequence[Any]) -> Any:
    if kind == "signed":
        return (np.concatenate([b[0] for b in bs]), np.concatenate([b[1] for b in bs]))
    if kind == "matrix":
        return torch.cat(list(bs))
    return np.concatenate(list(bs))


def compose(kind: str, a: Any, b: Any) -> Any:
    """Row-wise product ``a_i * b_i`` (i.e. ``rho(a_i) @ rho(b_i)``)."""
    if kind == "perm":
        return np.take_along_axis(b, a, axis=1)
    if kind == "signed":
        pa, sa = a
        pb, sb = b
        return (np.take_along_axis(pb, pa, axis=1), sa * np.take_along_axis(sb, pa, axis=1))
    return a @ b


def inverse(kind: str, b: Any) -> Any:
    if kind == "matrix":
        return b.transpose(-1, -2).contiguous()
    p = b[0] if kind == "signed" else b
    m, D = p.shape
    inv = np.empty_like(p)
    np.put_along_axis(inv, p, np.broadcast_to(np.arange(D, dtype=np.int64), (m, D)), axis=1)
    if kind == "perm":
        return inv
    # (p, s)^{-1} = (p^{-1}, s[p^{-1}])
    return (inv, np.take_along_axis(b[1], inv, axis=1))


def kron(kind: str, a: Any, b: Any) -> Any:
    """Row-wise tensor product on flattened index pairs ``(i, j) -> i * D_b + j``."""
    if kind == "matrix":
        m, Da, _ = a.shape
        Db = b.shape[1]
        return torch.einsum("nij,nkl->nikjl", a, b).reshape(m, Da * Db, Da * Db)
    pa, pb = (a[0], b[0]) if kind == "signed" else (a, b)
    m, Db = pb.shape
    D = pa.shape[1] * Db  # explicit: reshape(m, -1) cannot infer it for m = 0 (no generators)
    p = (pa[:, :, None] * Db + pb[:, None, :]).reshape(m, D)
    if kind == "perm":
        return p
    return (p, (a[1][:, :, None] * b[1][:, None, :]).reshape(m, D))


def dsum(kind: str, a: Any, b: Any) -> Any:
    """Row-wise direct sum; the second block is offset by ``D_a``."""
    if kind == "matrix":
        m, Da, _ = a.shape
        Db = b.shape[1]
        out = torch.zeros((m, Da + Db, Da + Db), dtype=a.dtype)
        out[:, :Da, :Da] = a
        out[:, Da:, Da:] = b
        return out
    Da = batch_dim(kind, a)
    if kind == "perm":
        return np.concatenate([a, b + Da], axis=1)
    return (np.concatenate([a[0], b[0] + Da], axis=1), np.concatenate([a[1], b[1]], axis=1))


def to_kind(kind_from: str, b: Any, kind_to: str) -> Any:
    """Convert a native batch to a more general kind (perm -> signed -> matrix)."""
    if kind_from == kind_to:
        return b
    if kind_from == "perm" and kind_to == "signed":
        return (b, np.ones(b.shape, dtype=np.float64))
    if kind_to == "matrix":
        return to_matrices(kind_from, b, torch.float64)
    raise ValueError(f"cannot convert a {kind_from!r} batch to {kind_to!r}")


def to_matrices(kind: str, b: Any, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Dense ``(m, D, D)`` matrices with ``M[i, p[i]] = s[i]``; always a new tensor (never ``b``
    itself, which may be a representation's cached generator images)."""
    if kind == "matrix":
        return b.to(dtype, copy=True)
    p, s = (b[0], b[1]) if kind == "signed" else (b, np.ones(b.shape))
    m, D = p.shape
    check_dense_dim(D, "to_matrices")
    out = torch.zeros((m, D, D), dtype=dtype)
    # torch.tensor copies: the cached generator arrays are read-only numpy arrays.
    out.scatter_(2, torch.tensor(p).unsqueeze(-1), torch.tensor(s, dtype=dtype).unsqueeze(-1))
    return out


def traces(kind: str, b: Any) -> np.ndarray:
    """Traces without dense matrices: #fixed points / signed fixed points."""
    if kind == "matrix":
        return torch.diagonal(b, dim1=-2, dim2=-1).sum(-1).numpy().astype(np.float64)
    p = b[0] if kind == "signed" else b
    fixed = p == np.arange(p.shape[1])
    if kind == "perm":
        return fixed.sum(axis=1).astype(np.float64)
    return (fixed * b[1]).sum(axis=1)


def keys(kind: str, b: Any) -> list:
    """Hashable per-row keys (bytes) used to deduplicate group elements."""
    if kind == "perm":
        arr = np.ascontiguousarray(b, dtype=np.int64)
    elif kind == "signed":
        # Encode (p, s) as the permutation of the 2D points +-e_i: exact and compact.
        arr = np.ascontiguousarray(b[0] * 2 + (b[1] < 0))
    else:
        # Round to 1e-6: accumulated float error along BFS words is ~1e-15 * depth.
        flat = b.numpy().reshape(b.shape[0], math.prod(b.shape[1:]))  # -1 fails for 0 rows
        arr = np.ascontiguousarray(np.round(flat, 6) + 0.0)
    if arr.shape[0] == 0:
        return []
    row = arr.shape[1] * arr.itemsize
    if row == 0:
        return [b""] * arr.shape[0]
    return arr.view(np.dtype((np.void, row))).ravel().tolist()


def items(kind: str, b: Any) -> Iterator[Any]:
    """Iterate the rows of a batch in native single-element form."""
    if kind == "signed":
        for i in range(b[0].shape[0]):
            yield (b[0][i], b[1][i])
    else:
        for i in range(b.shape[0]):
            yield b[i]


def signed_to_points(p: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Faithful permutation action of signed perms on the 2D points (+e_i: i, -e_i: i + D).

    With the doubled vector ``X = (x, -x)``, ``rho(g) x = s * x[p]`` becomes
    ``X' = X[Q]`` with ``Q[i] = p[i] + D*(s[i] < 0)`` and
    ``Q[i + D] = p[i] + D*(s[i] > 0)``; the composition law is the same as for
    plain permutations, so ``Q`` is a homomorphism.
    """
    D = p.shape[-1]
    neg = (s < 0).astype(np.int64)
    return np.concatenate([p + D * neg, p + D * (1 - neg)], axis=-1)
