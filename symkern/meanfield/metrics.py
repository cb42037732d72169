"""Distances between particle laws and the test risk of a particle network (SPEC_MEANFIELD.md).

Laws are empirical measures of particle sets: ``x`` (N, D) with weights ``a`` (N,) (uniform 1/N
when omitted).

* **Second moment** M₂(μ) = ∫‖z‖² dμ(z) = Σ_i a_i ‖x_i‖².
* **Wasserstein-2**: W₂²(μ, ν) = min_{π ∈ Π(a, b)} Σ_ij π_ij ‖x_i − y_j‖².
* **Relative measure distance**: RMD²(μ, ν) = W₂²(μ, ν) / (M₂(μ) + M₂(ν)) (0 when both laws are
  the Dirac at 0). symkern uses M₂ = ∫‖z‖² dμ; the public reproduction of the paper uses
  2∫‖z‖² dμ, which divides every RMD by √2 — pass ``moment_factor=2.0`` to get its numbers.

How W₂² is computed (the method is returned with every value, and recorded in results):

* ``"exact"``: exact optimal transport by POT's network simplex ``ot.emd2`` (squared Euclidean
  cost), used when both sets have at most ``exact_max`` atoms (default :data:`EXACT_MAX` =
  10000, which covers ν vs ν^G at N = 5000 with |G| = 2). The solver's status is checked: a
  non-optimal exit (iteration cap) raises instead of returning a wrong number. Measured on this
  project's 2-core EPYC (loadavg 3–6): 1000 × 2000 atoms 1.3–1.7 s, 2000 × 4000 6.8 s,
  5000 × 10000 31–36 s on Gaussian clouds; on the paper's trained particles (2026-11-23, one
  solve at a time) 1.4–3 s for laws at E^G and 17 s for the arbitrary teacher's vanilla law, the
  400 MB cost matrix included (0.2 s);
* ``"sinkhorn"``: above that, the debiased entropic divergence
  S_ε(μ, ν) = OT_ε(μ, ν) − ½OT_ε(μ, μ) − ½OT_ε(ν, ν), each OT_ε by POT's log-domain Sinkhorn
  (``ot.sinkhorn(method="sinkhorn_log")`` on torch tensors; the plain-domain solver underflows at
  small ε), with ε = ``sinkhorn_reg`` × the mean squared norm of the atoms (scale-free), each plan
  checked to meet its marginals to 1e-4 (L1) — an unconverged solve raises. S_ε → W₂² as ε → 0;
  it is an approximation (0.2–0.6 % high at the default ε on Gaussian clouds), recorded as such.
  It is slower than the exact solver at every size measured (600 × 600 atoms: 5.1 s against
  0.1 s exact, 2-core EPYC), which is why the exact limit is high: use it only where an N × M
  cost matrix no longer fits in memory for the simplex.
* Identical laws (the same atoms in the same order, the same weights) give 0 ("exact") without a
  solve; cost matrices are formed from differences, so they would give exactly 0 anyway.
* Laws of equal size and weights whose plan "atom i to atom i" is optimal (the same particles
  trained two ways, whose atoms correspond): "exact", that plan's cost, once Bellman-Ford
  potentials certify it optimal (:func:`_identity_plan_is_optimal`; LP duality, no solve). On the
  paper preset's N = 5000 laws (2026-11-25, seed 0) this took 0.10-0.13 s per pair, cost matrix
  included, where POT took 0.7-1.2 s, with the same value to 12 digits: 7 of the 9 distinct pair
  problems in float32, 15 of 18 in float64. Where the plan is not optimal the check gives up after
  10 rounds (~0.2 s at N = 5000) and POT solves.
* ``"projection"``: the closed form for ν versus its image under an orthogonal projection P
  (:func:`rmd_to_projection`): W₂²(ν, P#ν) = Σ_i a_i ‖(I − P) x_i‖² exactly (proof there). No
  solver is needed, at any N.

symkern does not implement an OT solver: every W₂ that is neither a closed form nor a certified
identity plan comes from POT.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from symkern._checks import as_int, as_real, real_tensor, require_values
from symkern.ops.particles import model_output

__all__ = [
    "EXACT_MAX",
    "Distance",
    "second_moment",
    "w2_squared",
    "rmd",
    "rmd_to_projection",
    "rmd_to_symmetrized",
    "risk_inputs",
    "monte_carlo_risk",
]

EXACT_MAX = 10_000
SINKHORN_REG = 1e-2
SINKHORN_MARGINAL_TOL = 1e-4
SINKHORN_MAX_ITER = 20_000


class Distance(NamedTuple):
    """A distance value and how its W₂² was computed ("exact", "sinkhorn" or "projection").

    >>> d = rmd([[1.0, 0.0]], [[-1.0, 0.0]])  # W₂² = 4 by the network simplex, M₂ + M₂ = 2
    >>> round(d.value, 6), d.method
    (1.414214, 'exact')
    >>> value, method = rmd([[1.0, 0.0]], [[-1.0, 0.0]], exact_max=0)  # a tuple: it unpacks
    >>> round(value, 6), method  # more atoms than exact_max: the debiased Sinkhorn divergence
    (1.414214, 'sinkhorn')
    """

    value: float
    method: str


def _float_array(x, name: str) -> tuple[np.ndarray, float]:
    """``x`` as a float64 array and the machine epsilon of its own floating dtype (float64's when
    not floating); TypeError naming ``name`` for complex or non-numeric data (numpy would drop an
    imaginary part with only a warning), ValueError for a meta tensor (torch's "Cannot copy out of
    meta tensor" named no argument)."""
    t = real_tensor(x, name)
    require_values(t, name, "a distance or moment is computed from its values")
    eps = torch.finfo(t.dtype).eps if t.is_floating_point() else torch.finfo(torch.float64).eps
    # contiguous: POT's exact solver refuses a strided array (a view such as a[::2])
    return np.ascontiguousarray(t.detach().cpu().to(torch.float64).numpy()), eps


def _np(x, name: str) -> np.ndarray:
    arr, _ = _float_array(x, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a (N, D) particle set, got shape {arr.shape}")
    if arr.shape[0] < 1:
        raise ValueError(f"{name} must have at least one particle")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def _weights(w, n: int, name: str) -> np.ndarray:
    if w is None:
        return np.full(n, 1.0 / n)
    w, eps = _float_array(w, name)
    if w.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {w.shape}")
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError(f"{name} must be finite and non-negative")
    s = w.sum()
    if not s > 0:
        raise ValueError(f"{name} must have a positive sum")
    # weights normalised in their own dtype (w / w.sum()) sum to 1 within a few ulps of it: each
    # w_i is rounded by ≤ eps/2 relative, so their sum by ≤ eps/2, plus the sum's own rounding.
    # (The old n·eps admitted float16 weights summing to 1.5.) Renormalised in float64, so the
    # solvers get sums of exactly 1 (POT asserts equal sums).
    if not abs(s - 1.0) <= max(1e-9, 16 * eps):
        raise ValueError(f"{name} must sum to 1, got {s!r}")
    return w / s


def _common_scale(*arrays: np.ndarray) -> list[np.ndarray]:
    """The arrays multiplied by one power of two that brings their largest |entry| into
    [0.5, 1): exact in floating point. RMD is scale-free, so it is computed on these: W₂² and
    M₂ of particles around 1e154 overflowed (M₂ = inf gave RMD 0), around 1e-170 underflowed
    (0 / 0 gave 0), and POT's network simplex, whose tolerances are absolute, misjudged
    optimality on tiny costs (particles of 1e-8: RMD 0.86 for 0.48)."""
    top = max(float(np.abs(a).max()) if a.size else 0.0 for a in arrays)
    if top == 0.0:
        return list(arrays)
    shift = -int(np.frexp(top)[1])
    return [np.ldexp(a, shift) for a in arrays]


def _check_moment_factor(v) -> float:
    return as_real(v, "moment_factor", positive=True)


def _check_w2_options(method, exact_max, sinkhorn_reg) -> None:
    if method not in ("auto", "exact", "sinkhorn"):
        raise ValueError(f"method must be 'auto', 'exact' or 'sinkhorn', got {method!r}")
    try:
        as_int(exact_max, "exact_max", minimum=0)
    except ValueError:
        raise ValueError(
            f"exact_max must be an int >= 0 (0: always Sinkhorn), got {exact_max!r}"
        ) from None
    as_real(sinkhorn_reg, "sinkhorn_reg", positive=True)


# The projector / orthogonality checks' absolute tolerance: admits matrices computed in float32
# (idempotent / orthogonal to a few 1e-7), whatever container they arrive in.
MATRIX_CHECK_TOL = 1e-6


def second_moment(x, a=None) -> float:
    """M₂(μ) = Σ_i a_i ‖x_i‖² for the law μ = Σ_i a_i δ_{x_i}; x (N, D), a (N,) or uniform.

    >>> second_moment([[3.0, 4.0], [1.0, 0.0]])  # (25 + 1) / 2
    13.0
    >>> second_moment([[3.0, 4.0], [1.0, 0.0]], a=[0.25, 0.75])  # 25/4 + 3/4
    7.0
    """
    x = _np(x, "x")
    a = _weights(a, x.shape[0], "a")
    return float(a @ (x * x).sum(1))


# POT's optional backends for arrays symkern never passes it (numpy and torch arrays only).
# Imported with them enabled, POT initialises those frameworks: on a GPU machine with JAX
# installed, JAX preallocates 75 % of the device memory at `import ot` (seen on an H100,
# 2026-11-24: 60 GiB held by a process that computed a Sinkhorn W₂, and other processes' CUDA
# allocations failed).
_POT_UNUSED_BACKENDS = (
    "POT_BACKEND_DISABLE_JAX",
    "POT_BACKEND_DISABLE_CUPY",
    "POT_BACKEND_DISABLE_TENSORFLOW",
)


_pot_module = None
_pot_import_lock = threading.Lock()


def _pot():
    """The ``ot`` module (POT, an experiments dependency, imported on first use) with its JAX,
    CuPy and TensorFlow backends off; the environment is restored after the import. A POT the
    process imported before keeps the backends it has.

    Thread-safe: the teacher-student experiment measures runs from a thread pool, and a second
    thread that took ``sys.modules["ot"]`` while the first was still executing ``import ot`` got a
    partially initialised module without ``emd2``; the lock also keeps two threads from
    interleaving their save / restore of the environment."""
    global _pot_module
    with _pot_import_lock:
        if _pot_module is None:
            saved = {key: os.environ.get(key) for key in _POT_UNUSED_BACKENDS}
            os.environ.update(dict.fromkeys(_POT_UNUSED_BACKENDS, "1"))
            try:
                import ot  # noqa: PLC0415

                _pot_module = ot
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
        return _pot_module


def w2_squared(
    x,
    y,
    a=None,
    b=None,
    *,
    method: str = "auto",
    exact_max: int = EXACT_MAX,
    sinkhorn_reg: float = SINKHORN_REG,
) -> Distance:
    """W₂²(μ, ν) between μ = Σ a_i δ_{x_i} and ν = Σ b_j δ_{y_j} (squared Euclidean cost).

    x (N, D), y (M, D) real and finite; a (N,), b (M,) default uniform. ``method``: "auto"
    (exact when max(N, M) ≤ ``exact_max``, an int ≥ 0, else Sinkhorn), "exact" or
    "sinkhorn" (``sinkhorn_reg`` finite > 0). Returns ``Distance(value, method)``. Raises
    ValueError when a squared distance ‖x_i − y_j‖² overflows float64. With N = M and a = b, the
    exact method first tries the plan x_i → y_i, certified optimal or not without a solve (see
    the module docstring).

    >>> w2_squared([[0.0, 0.0]], [[3.0, 4.0]]).value
    25.0
    """
    _check_w2_options(method, exact_max, sinkhorn_reg)
    x, y = _np(x, "x"), _np(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y live in different dimensions: {x.shape[1]} vs {y.shape[1]}")
    a, b = _weights(a, x.shape[0], "a"), _weights(b, y.shape[0], "b")
    if x.shape == y.shape and np.array_equal(x, y) and np.array_equal(a, b):
        # the same law atom for atom: the identity coupling costs 0, W₂² = 0 exactly (either
        # solver would reach it after seconds at N = 5000; DA vs FA in the float32 paper preset)
        return Distance(0.0, "exact")
    if method == "auto":
        method = "exact" if max(x.shape[0], y.shape[0]) <= exact_max else "sinkhorn"
    if method == "exact":
        cost_matrix = _sq_cost(x, y)
        if x.shape == y.shape and np.array_equal(a, b) and _identity_plan_is_optimal(cost_matrix):
            # atom i of μ to atom i of ν is an optimal plan (certified by potentials): W₂² is its
            # cost. The same particles trained two ways (the experiment's schemes from one init)
            return Distance(max(float(a @ np.diagonal(cost_matrix)), 0.0), "exact")
        # the cost matrix scaled by a power of two to max ~1 (exact): POT's network simplex uses
        # absolute tolerances and stopped early on tiny costs (W₂² off by 4x at ‖x‖ ~ 1e-8)
        shift = -int(np.frexp(cost_matrix.max())[1]) if cost_matrix.size else 0
        cost, log = _pot().emd2(
            a, b, np.ldexp(cost_matrix, shift), numItermax=100_000_000, log=True
        )
        cost = np.ldexp(float(cost), -shift)
        if log["result_code"] != 1:  # 1 = optimal; otherwise the value is not W₂²
            raise RuntimeError(
                f"ot.emd2 did not reach the optimum ({log['warning']}; {x.shape[0]} x "
                f"{y.shape[0]} atoms, 1e8 simplex iterations); use method='sinkhorn'"
            )
        value = float(cost)
    else:  # "sinkhorn"
        with np.errstate(over="ignore"):
            scale = 0.5 * (a @ (x * x).sum(1) + b @ (y * y).sum(1))
            reg = sinkhorn_reg * max(scale, 1e-300)
        if not math.isfinite(reg):
            raise ValueError(
                f"the Sinkhorn ε = sinkhorn_reg × mean squared norm of the atoms overflows float64 "
                f"(sinkhorn_reg = {sinkhorn_reg!r}, mean squared norm {scale!r}); rescale the "
                "particles"
            )

        value = (
            _entropic_transport_cost(x, a, y, b, reg)
            - 0.5 * _entropic_transport_cost(x, a, x, a, reg)
            - 0.5 * _entropic_transport_cost(y, b, y, b, reg)
        )
    return Distance(max(value, 0.0), method)


# Bellman-Ford rounds of _identity_plan_is_optimal before it gives up (and POT solves). On the
# paper preset's N = 5000 laws (2026-11-25), every certified pair took 1-2 rounds (~25 ms); a law
# whose identity plan is not optimal kept ~all 5000 potentials moving for 10 rounds (~0.2 s,
# against 4.4-6.6 s for POT's solve that follows).
_IDENTITY_CERTIFICATE_ROUNDS = 10


def _identity_plan_is_optimal(cost: np.ndarray) -> bool:
    """Whether the plan π = diag(a) ("atom i goes to atom i") is optimal for the square cost
    matrix ``cost`` (N, N) between two laws with the same weights a (zero weights included: the
    potentials below cover every pair).

    LP duality: π is optimal iff there are potentials u, v with u_i + v_j ≤ C_ij for all i, j and
    u_i + v_i = C_ii (complementary slackness on π's support). They exist iff the graph with arc
    lengths ℓ(i → j) = C_ij − C_jj (move atom i onto j's target, j's mass moves on) has no
    negative cycle; then the shortest distances d from a source joined to every node by a 0 arc
    give u_i = −d_i, v_j = d_j + C_jj: u_i + v_j = d_j − d_i + C_jj ≤ C_ij is d_j ≤ d_i + ℓ(i → j).

    Bellman-Ford from d = 0, each round relaxing only the arcs out of nodes whose d fell in the
    last round (the others' arcs were checked against their current d and still hold, since d_j
    only falls): True once a round lowers nothing, False after _IDENTITY_CERTIFICATE_ROUNDS rounds
    (a negative cycle, or a long chain of improvements; POT then solves the problem). The
    comparisons are float64 ones, the standard of the network simplex's own reduced-cost test.
    """
    n = cost.shape[0]
    diag = np.diagonal(cost)
    d = np.zeros(n)
    moved = np.arange(n)
    rows = max(1, 65536 // max(n, 1))  # row blocks of ~64k entries, like _sq_cost
    buf = np.empty((min(rows, n), n))
    reach = np.empty(n)
    for _ in range(_IDENTITY_CERTIFICATE_ROUNDS):
        reach.fill(np.inf)  # reach_j = min over moved i of d_i + C_ij
        for s in range(0, len(moved), rows):
            block = moved[s : s + rows]
            t = buf[: len(block)]
            np.add(d[block, None], cost[block], out=t)
            np.minimum(reach, t.min(axis=0), out=reach)
        candidate = reach - diag
        lower = candidate < d
        if not lower.any():
            return True
        d = np.where(lower, candidate, d)
        moved = np.flatnonzero(lower)
    return False


def _entropic_transport_cost(x, a, y, b, reg: float) -> float:
    """⟨π_ε, C⟩ for the entropic optimal plan π_ε between Σ a_i δ_{x_i} and Σ b_j δ_{y_j}
    (C_ij = ‖x_i − y_j‖², regularisation ε = ``reg``), by POT's log-domain Sinkhorn on torch
    tensors (POT's torch backend: 3.5-4.9x faster per iteration than its numpy one, measured
    2026-11-23 on the 2-core EPYC: 60 x 60 atoms 0.20 vs 0.71 ms, 600 x 600 9 vs 44 ms).

    Convergence is checked, not assumed: the solver stops once the L2 marginal error is at most
    SINKHORN_MARGINAL_TOL / √max(N, M), which bounds the L1 violation (of the unit mass) by
    SINKHORN_MARGINAL_TOL, and a plan still off by more after SINKHORN_MAX_ITER iterations
    raises instead of returning its value. (Before 2026-11-23 the cap was hit silently on every
    call: at ε = 1e-2 x the mean squared norm the marginals converge slowly — 60 x 60 Gaussian
    atoms need ~7000 iterations to 1e-5 — while the value itself settles to ~1e-5 relative
    within a few thousand.)
    """
    ot = _pot()
    cost = torch.from_numpy(_sq_cost(x, y))
    wa, wb = torch.from_numpy(a), torch.from_numpy(b)
    plan = ot.sinkhorn(
        wa,
        wb,
        cost,
        reg,
        method="sinkhorn_log",
        numItermax=SINKHORN_MAX_ITER,
        stopThr=SINKHORN_MARGINAL_TOL / math.sqrt(max(x.shape[0], y.shape[0])),
        warn=False,
    )
    violation = max(float((plan.sum(1) - wa).abs().sum()), float((plan.sum(0) - wb).abs().sum()))
    if not violation <= SINKHORN_MARGINAL_TOL:
        raise RuntimeError(
            f"Sinkhorn did not converge in {SINKHORN_MAX_ITER} iterations: the plan's marginals "
            f"are off by {violation:.3g} (L1, of mass 1; tolerance {SINKHORN_MARGINAL_TOL:g}) for "
            f"{x.shape[0]} x {y.shape[0]} atoms at ε = {reg:.3g}; raise sinkhorn_reg, or use "
            "method='exact'"
        )
    return float((plan * cost).sum())


def _sq_cost(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """C_ij = ‖x_i − y_j‖² = Σ_k (x_ik − y_jk)² from the differences (no ‖x‖² + ‖y‖² − 2x·y
    cancellation, which would put a floor of ~1e-8 under RMD).

    One coordinate k at a time over a block of rows of C (~64k entries, at least 16 rows), so
    the temporaries stay in cache: 5000 × 10000 atoms in D = 4 take 0.15–0.2 s (a (512, M, D)
    difference tensor reduced by einsum took 1.25–1.5 s, measured interleaved on the 2-core EPYC).
    """
    if x.shape[1] == 0:  # points of R^0: every distance is 0
        return np.zeros((x.shape[0], y.shape[0]))
    rows = max(16, 65536 // y.shape[0])
    out = np.empty((x.shape[0], y.shape[0]))
    y_cols = np.ascontiguousarray(y.T)  # (D, M): one contiguous row per coordinate
    tmp = np.empty((min(rows, x.shape[0]), y.shape[0]))
    with np.errstate(over="ignore", invalid="ignore"):
        for s in range(0, x.shape[0], rows):
            block = out[s : s + rows]
            t = tmp[: block.shape[0]]
            np.subtract(x[s : s + rows, 0, None], y_cols[0], out=block)
            np.multiply(block, block, out=block)
            for k in range(1, x.shape[1]):
                np.subtract(x[s : s + rows, k, None], y_cols[k], out=t)
                np.multiply(t, t, out=t)
                np.add(block, t, out=block)
    if not np.isfinite(out).all():
        raise ValueError(
            "the squared-distance cost matrix overflows float64 (a ‖x_i − y_j‖² is inf): the "
            "particles are too large for W₂; rescale them"
        )
    return out


def _ratio(w2: float, m2: float) -> float:
    if m2 <= 0.0:
        return 0.0 if w2 <= 0.0 else math.inf
    return math.sqrt(max(w2, 0.0) / m2)


def rmd(x, y, a=None, b=None, *, moment_factor: float = 1.0, **w2_kwargs) -> Distance:
    """RMD(μ, ν) = sqrt(W₂²(μ, ν) / (c·M₂(μ) + c·M₂(ν))), c = ``moment_factor`` (1 here; the
    public reproduction uses 2). Keyword arguments go to :func:`w2_squared`.

    >>> round(rmd([[1.0, 0.0]], [[-1.0, 0.0]]).value, 6)  # W₂² = 4, M₂ + M₂ = 2
    1.414214
    """
    moment_factor = _check_moment_factor(moment_factor)
    x, y = _common_scale(_np(x, "x"), _np(y, "y"))  # see _common_scale: RMD is scale-free
    w2 = w2_squared(x, y, a, b, **w2_kwargs)
    m2 = moment_factor * (second_moment(x, a) + second_moment(y, b))
    return Distance(_ratio(w2.value, m2), w2.method)


def _check_orthogonal_projector(p: np.ndarray, name: str) -> None:
    """ValueError naming ``name`` unless the float64 matrix ``p`` is symmetric and idempotent to
    :data:`MATRIX_CHECK_TOL` (rmd_to_projection's closed form holds for orthogonal projections
    only; initial_particles' SI init lies on a subspace only if it is projected onto one)."""
    tol = MATRIX_CHECK_TOL
    if not (np.allclose(p, p.T, atol=tol) and np.allclose(p @ p, p, atol=tol)):
        raise ValueError(
            f"{name} must be an orthogonal projector (symmetric, P @ P = P, to {tol:g}); got "
            f"max |P − Pᵀ| = {np.abs(p - p.T).max():.3g}, max |P @ P − P| = "
            f"{np.abs(p @ p - p).max():.3g}"
        )


def rmd_to_projection(x, proj, a=None, *, moment_factor: float = 1.0) -> Distance:
    """RMD(ν, P#ν) for an orthogonal projection P (D, D): the distance to the strongly
    invariant laws when P = P_{E^G} (or to any subspace E, P = P_E).

    Closed form, exact at any N: W₂²(ν, P#ν) = Σ_i a_i ‖(I − P) x_i‖². Proof: for any coupling π of
    ν and P#ν, Y ∈ range(P) π-a.s., so ‖X − Y‖² = ‖(I−P)X‖² + ‖PX − Y‖² ≥ ‖(I−P)X‖²; the
    coupling (X, PX) attains the bound. Hence
    RMD² = Σ a_i‖(I−P)x_i‖² / (c Σ a_i‖x_i‖² + c Σ a_i‖P x_i‖²).

    ``proj`` must be an orthogonal projector: symmetric and idempotent to
    :data:`MATRIX_CHECK_TOL` (1e-6, which admits a float32-computed P), else ValueError — the
    closed form holds for orthogonal projections only. ``moment_factor`` finite > 0.

    >>> x, P = [[3.0, 4.0], [1.0, -1.0]], torch.diag(torch.tensor([1.0, 0.0]))  # P: onto axis 0
    >>> d = rmd_to_projection(x, P)  # W₂² = (16 + 1)/2, M₂(ν) + M₂(P#ν) = 27/2 + 10/2
    >>> round(d.value, 6), d.method
    (0.677834, 'projection')
    >>> round(rmd(x, [[3.0, 0.0], [1.0, 0.0]]).value, 6)  # the same, by exact optimal transport
    0.677834
    """
    moment_factor = _check_moment_factor(moment_factor)
    x = _np(x, "x")
    a = _weights(a, x.shape[0], "a")
    p, _ = _float_array(proj, "proj")
    D = x.shape[1]
    if p.shape != (D, D):
        raise ValueError(f"proj must be ({D}, {D}), got {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("proj contains NaN or inf")
    _check_orthogonal_projector(p, "proj")
    (x,) = _common_scale(x)  # RMD is scale-free: no overflow / underflow of the moments
    px = x @ p.T
    w2 = float(a @ ((x - px) ** 2).sum(1))
    m2 = moment_factor * float(a @ (x * x).sum(1) + a @ (px * px).sum(1))
    return Distance(_ratio(w2, m2), "projection")


def rmd_to_symmetrized(x, m_z, a=None, *, moment_factor: float = 1.0, **w2_kwargs) -> Distance:
    """RMD(ν, ν^G), ν^G = (1/|G|) Σ_g (M_g)#ν the N·|G| atoms M_g x_i (distance to the weakly
    invariant laws). m_z (G, D, D), G ≥ 1, every M_g orthogonal (to :data:`MATRIX_CHECK_TOL`),
    else ValueError. W₂ by :func:`w2_squared`
    (exact up to ``exact_max`` atoms); 0 ("exact") without a solve when M_g x_i = x_i for every
    atom and every g, bit for bit (then ν^G = ν).

    >>> m_z = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])  # C2 swap on R²
    >>> round(rmd_to_symmetrized([[1.0, 0.0]], m_z).value, 6)  # ν^G = ½δ_(1,0) + ½δ_(0,1)
    0.707107
    >>> rmd_to_symmetrized([[1.0, 0.0], [0.0, 1.0]], m_z).value  # already weakly invariant
    0.0
    """
    moment_factor = _check_moment_factor(moment_factor)
    _check_w2_options(
        w2_kwargs.get("method", "auto"),
        w2_kwargs.get("exact_max", EXACT_MAX),
        w2_kwargs.get("sinkhorn_reg", SINKHORN_REG),
    )
    x = _np(x, "x")
    a = _weights(a, x.shape[0], "a")
    m, _ = _float_array(m_z, "m_z")
    D = x.shape[1]
    if m.ndim != 3 or m.shape[1:] != (D, D) or m.shape[0] < 1:
        raise ValueError(f"m_z must be (G, {D}, {D}) with G >= 1 group elements, got {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("m_z contains NaN or inf")
    tol = MATRIX_CHECK_TOL
    gram = np.einsum("gij,gkj->gik", m, m)
    if not np.allclose(gram, np.eye(D), atol=tol):
        err = np.abs(gram - np.eye(D)).max()
        raise ValueError(
            f"m_z must hold orthogonal matrices (M_g M_gᵀ = I, to {tol:g}); got max "
            f"|M_g M_gᵀ − I| = {err:.3g}"
        )
    g = m.shape[0]
    xg = np.einsum("gij,nj->gni", m, x)
    if np.array_equal(xg, np.broadcast_to(x, xg.shape)):
        # every atom is fixed by every M_g (a law on E^G, e.g. a DA / FA / EA run from SI init,
        # which the C++ engine keeps there bit for bit): ν^G = ν, W₂ = 0 exactly. The network
        # simplex would reach the same 0 after seconds per call at N = 5000.
        return Distance(0.0, "exact")
    ag = np.tile(a / g, g)
    return rmd(x, xg.reshape(-1, D), a, ag, moment_factor=moment_factor, **w2_kwargs)


def risk_inputs(n: int, d: int, sigma_pi: float, seed: int = 0) -> torch.Tensor:
    """The fixed Monte-Carlo test sample x_j ~ N(0, σ_π² I_d), (n, d) float64, drawn from the
    Philox stream :data:`symkern.meanfield.rng.STREAM_TEST` keyed by (seed, run 0, step 0).
    n, d positive ints with n·d at most :data:`symkern.meanfield.rng.MAX_DRAW` (1e8), else
    ValueError before anything is allocated.

    >>> x = risk_inputs(50, 2, sigma_pi=4.0)
    >>> x.shape, x.dtype
    (torch.Size([50, 2]), torch.float64)
    >>> torch.equal(x, risk_inputs(50, 2, sigma_pi=4.0))  # fixed: the same sample every call
    True
    >>> torch.allclose(x, 4.0 * risk_inputs(50, 2, sigma_pi=1.0))  # x = σ_π z
    True
    """
    from symkern.meanfield import rng  # noqa: PLC0415

    n, d = as_int(n, "n", minimum=1), as_int(d, "d", minimum=1)
    rng.check_draw_size(n * d, "n * d")
    sigma_pi = as_real(sigma_pi, "sigma_pi", positive=True)
    seed = as_int(seed, "seed", minimum=0, below=2**64)
    z = rng.normal(seed, torch.zeros(1, dtype=torch.int64), 0, rng.STREAM_TEST, n * d)
    return sigma_pi * z.view(n, d)


def monte_carlo_risk(
    model: Callable[[torch.Tensor], torch.Tensor] | None,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    unit=None,
    theta: torch.Tensor | None = None,
    chunk: int = 2048,
) -> float:
    """Monte-Carlo test risk (1/n) Σ_j ‖Φ(x_j) − y_j‖² on a fixed sample.

    Either ``model`` (a callable (n, d) → (n, c)) or ``unit`` + ``theta`` (N, D) particles, whose
    network Φ_θ(x) = (1/N) Σ_i σ*(x, θ_i) is evaluated in float64 by the fused
    :func:`symkern.model_output` kernel (``backend="auto"``: the C++ kernel on the CPU, no n×N
    activation buffer), ``chunk`` samples at a time. x_test (n, d) with n ≥ 1, y_test (n, c),
    real; with a unit, d and c are the unit's and theta is (N, D), N ≥ 1, D = unit.D; ``chunk``
    a positive int. A ``torch.nn.Module`` model gets each chunk in the dtype and on the device of
    its first floating parameter (a float32 CUDA module takes a float64 CPU sample); its outputs
    are compared with y_test in float64 on y_test's device.

    >>> from symkern.meanfield import Teacher
    >>> teacher = Teacher.paper("SI")  # 5 particles, uniform weights
    >>> x = risk_inputs(256, 2, sigma_pi=4.0)
    >>> y = teacher(x)
    >>> round(monte_carlo_risk(None, x, y, unit=teacher.unit, theta=teacher.particles), 12)
    0.0
    >>> zero = monte_carlo_risk(lambda x: torch.zeros(len(x), 2), x, y, chunk=100)
    >>> abs(zero - float((y**2).sum(1).mean())) < 1e-12  # Φ = 0: the risk is the mean ‖y‖²
    True
    """
    if (model is None) == (theta is None):
        raise ValueError("give exactly one of model or (unit, theta)")
    if model is not None and not callable(model):
        raise TypeError(f"model must be a callable (n, d) -> (n, c), got {type(model).__name__}")
    chunk = as_int(chunk, "chunk", minimum=1)
    x_test = real_tensor(x_test, "x_test").to(torch.float64)
    y_test = real_tensor(y_test, "y_test").to(torch.float64)
    for t, name in ((x_test, "x_test"), (y_test, "y_test")):
        require_values(t, name, "the risk is a number computed from the sample's values")
    if x_test.dim() != 2 or x_test.shape[0] < 1:
        raise ValueError(f"x_test must be (n, d) with n >= 1, got {tuple(x_test.shape)}")
    n = x_test.shape[0]
    if y_test.dim() != 2 or y_test.shape[0] != n:
        raise ValueError(
            f"y_test must be (n, c) with the n = {n} of x_test, got {tuple(y_test.shape)}"
        )
    if model is None:
        from symkern.meanfield.units import check_unit  # noqa: PLC0415

        if unit is None:
            raise TypeError("unit is required with theta (model=None): e.g. MatrixUnit(2, 2)")
        check_unit(unit)
        if x_test.shape[1] != unit.d or y_test.shape[1] != unit.c:
            raise ValueError(
                f"x_test / y_test must be (n, {unit.d}) / (n, {unit.c}) for {unit!r}, got "
                f"{tuple(x_test.shape)} / {tuple(y_test.shape)}"
            )
        th = real_tensor(theta, "theta")
        require_values(th, "theta", "the network is evaluated on the CPU from its values")
        th = th.detach().cpu().to(torch.float64)
        if th.dim() != 2 or th.shape[0] < 1 or th.shape[1] != unit.D:
            raise ValueError(
                f"theta must be (N, {unit.D}) particles with N >= 1 for {unit!r}, got "
                f"{tuple(th.shape)}"
            )

        def model(x):  # noqa: F811
            # the fused kernel: 9.5x the torch matmul + sigmoid on the paper's N = 5000 risk
            # (4096 samples, measured 0.031 vs 0.29 s), equal to 2e-16 relative
            return model_output(x, th.contiguous(), unit)

    # a user's module is fed its own parameters' dtype and device (a float32 nn.Linear refuses
    # float64; a CUDA module refuses CPU inputs with torch's device message), and its outputs are
    # compared with y_test where y_test is
    params = model.parameters() if isinstance(model, torch.nn.Module) else ()
    first = next((q for q in params if q.is_floating_point()), None)
    in_dtype = torch.float64 if first is None else first.dtype
    in_device = x_test.device if first is None else first.device
    total = 0.0
    for s in range(0, n, chunk):
        ys = y_test[s : s + chunk]
        with torch.no_grad():  # an evaluation: no graph through a user's module
            out = model(x_test[s : s + chunk].to(device=in_device, dtype=in_dtype))
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(ys.shape):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"model must map a ({ys.shape[0]}, {x_test.shape[1]}) input chunk to "
                f"({ys.shape[0]}, {ys.shape[1]}) outputs like y_test, got {got}"
            )
        require_values(out, "the model's output", "the risk is computed from its values")
        total += float(((out.to(device=ys.device, dtype=torch.float64) - ys) ** 2).sum())
    return total / n
