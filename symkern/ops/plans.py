"""Precomputed, cached data that the orbit / fixed-point kernels consume.

An :class:`OrbitPlan` encodes the Reynolds operator of a (signed) permutation representation:

    (P x)_j = coef_j / |O(j)| * sum_{i in O(j)} coef_i x_i

where O(j) is the orbit of coordinate j and coef_i = ±1 the sign with which the group maps the
orbit's representative onto e_i (coef = 0 on an orbit that contains a coordinate and its own
negative: such an orbit averages to zero). P is symmetric and idempotent: it is the orthogonal
projection onto E^G, computed in O(B·D) whatever |G| is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class OrbitPlan:
    """Orbit structure of a (signed) permutation representation, on one device and dtype.

    Shapes: D = ``dim`` coordinates, K = ``n_orbits`` orbits (zero orbits included).

    ``orbit_id``  int64 (D,)   orbit of each coordinate, in [0, K), numbered by smallest member
    ``coef``      dtype (D,)   relative sign ±1 of each coordinate in its orbit, 0 on zero orbits
    ``inv_size``  dtype (K,)   1 / |orbit|; float32 for float16 / bfloat16 plans (1 / |orbit| is
                               subnormal in float16 from |orbit| > 16384 and 0 above ~1.7e7)
    ``order``     int64 (D,)   coordinates sorted by orbit (stable): orbit o is
                               ``order[seg_start[o]:seg_start[o + 1]]``
    ``seg_start`` int64 (K+1,) segment offsets into ``order``

    ``host_arrays``: a backend's own views of these tensors (the cpp backend's numpy views, built
    once per cached plan instead of on every call).
    """

    dim: int
    n_orbits: int
    orbit_id: torch.Tensor
    coef: torch.Tensor
    inv_size: torch.Tensor
    order: torch.Tensor
    seg_start: torch.Tensor
    host_arrays: dict = field(default_factory=dict, compare=False, repr=False)


def make_orbit_plan(
    labels: np.ndarray,
    rel_sign: np.ndarray,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> OrbitPlan:
    """Build an :class:`OrbitPlan` from per-coordinate orbit labels and relative signs.

    ``labels``: int (D,), any value identifying the orbit (e.g. its smallest member);
    ``rel_sign``: float (D,), ±1, or 0 for every coordinate of a zero orbit.
    """
    labels = np.asarray(labels)
    rel_sign = np.asarray(rel_sign, dtype=np.float64)
    if labels.ndim != 1 or rel_sign.shape != labels.shape:
        raise ValueError(
            f"labels and rel_sign must be 1-D of equal length, got {labels.shape} and "
            f"{rel_sign.shape}"
        )
    _, orbit_id, counts = np.unique(labels, return_inverse=True, return_counts=True)
    orbit_id = orbit_id.astype(np.int64).reshape(-1)
    order = np.argsort(orbit_id, kind="stable").astype(np.int64)
    seg_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    # Half plans keep 1/|O| in float32: the kernels accumulate half input in float32 or wider
    # anyway, and a float16 1/|O| is off by up to ~1 % for |O| ~ 1e6 and 0 from |O| ~ 1.7e7.
    inv_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    return OrbitPlan(
        dim=int(labels.shape[0]),
        n_orbits=int(counts.shape[0]),
        orbit_id=torch.from_numpy(orbit_id).to(device),
        coef=torch.from_numpy(rel_sign).to(device=device, dtype=dtype),
        inv_size=torch.from_numpy(1.0 / counts.astype(np.float64)).to(
            device=device, dtype=inv_dtype
        ),
        order=torch.from_numpy(order).to(device),
        seg_start=torch.from_numpy(seg_start).to(device),
    )
