"""Batched particle training for mean-field shallow networks: particle_steps, particle_step.

R independent runs (seeds × schemes × teachers × hyperparameters) advance together, T steps per
call, with the data, teacher labels, Langevin noise and sampled group elements drawn from the
counter-based Philox stream of :mod:`symkern.meanfield.rng` — so every backend produces the same
trajectory (up to float rounding) and a run's trajectory does not depend on what it is batched
with. The math of one step is in :mod:`symkern.meanfield.problem`.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from symkern._checks import all_finite, as_int, as_real, philox_ids, real_tensor
from symkern.backends.registry import select_kernel, select_kernel_cached
from symkern.groups import Representation
from symkern.meanfield.problem import SCHEMES, ParticleProblem
from symkern.meanfield.units import Unit, _check_pos_int, check_unit, unit_from_codes
from symkern.ops._common import (
    batch_first,
    custom_op,
    eager_route,
    is_legacy_batched,
    merged_rows,
    per_item,
    refuse_forward_ad_on_op_route,
    rep_cache,
    require_finite,
    resolve_backend,
)

__all__ = [
    "ParticleStepsResult",
    "group_matrices",
    "model_output",
    "particle_problem",
    "particle_step",
    "particle_steps",
]


class ParticleStepsResult(NamedTuple):
    """``theta`` (R, N, D) after the last step; ``snapshots`` (R, S, N, D) after every
    ``snapshot_every``-th step; ``losses`` (R, S) the data loss ℓ_r of those steps; ``backend``
    the backend that ran the call."""

    theta: torch.Tensor
    snapshots: torch.Tensor
    losses: torch.Tensor
    backend: str


def group_matrices(
    unit: Unit,
    group: Representation | tuple[Representation, Representation] | None,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ρ_x (G,d,d), ρ̂_y (G,c,c), M_z (G,D,D), P (D,D)) for a finite group acting on X and Y.

    ``group``: one representation acting on both X and Y (needs d == c), or a pair
    (rep_x, rep_y) of representations of the same group, or None (the trivial group).

    Cached per (unit shape, representations, dtype, device) — representations are immutable, and
    building M_g and P costs more than a small particle step: the tensors returned are shared,
    read-only by contract (unlike :func:`fixed_point_basis`, which returns a copy).
    """
    check_unit(unit)
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # "cuda" means the current device: key it
        device = torch.device("cuda", torch.cuda.current_device())
    if group is None:
        key: tuple = (type(unit), unit.c, unit.d, dtype, str(device))
        if key not in _TRIVIAL_GROUP_MATRICES:
            _TRIVIAL_GROUP_MATRICES[key] = _build_group_matrices(unit, None, dtype, device)
        return _TRIVIAL_GROUP_MATRICES[key]
    if isinstance(group, tuple) and len(group) != 2:
        raise ValueError(
            "group must be a Representation (acting on X and Y) or a pair (rep_x, rep_y), got a "
            f"tuple of {len(group)}"
        )
    rep_x, rep_y = group if isinstance(group, tuple) else (group, group)
    if isinstance(rep_x, Representation) and isinstance(rep_y, Representation):
        cache = rep_cache(rep_x).setdefault("particle_group_matrices", {})
        key = (type(unit), unit.c, unit.d, dtype, str(device), id(rep_y))
        hit = cache.get(key)
        if hit is not None and hit[0] is rep_y:  # rep_y kept alive by the entry: id not reused
            return hit[1]
        matrices = _build_group_matrices(unit, group, dtype, device)
        cache[key] = (rep_y, matrices)
        return matrices
    return _build_group_matrices(unit, group, dtype, device)  # raises the TypeError


_TRIVIAL_GROUP_MATRICES: dict[
    tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
] = {}


def _build_group_matrices(unit, group, dtype, device):
    if group is None:
        rho_x = torch.eye(unit.d, dtype=torch.float64)[None]
        rho_y = torch.eye(unit.c, dtype=torch.float64)[None]
    else:
        rep_x, rep_y = group if isinstance(group, tuple) else (group, group)
        for rep, name, want, what in ((rep_x, "rep_x", unit.d, "inputs x"),
                                      (rep_y, "rep_y", unit.c, "outputs y")):  # fmt: skip
            if not isinstance(rep, Representation):
                raise TypeError(f"group: {name} must be a symkern.groups Representation")
            if not rep.is_finite:
                # the kernels sum over the group's elements (DA / FA orbits, P = mean of M_g);
                # EA and projected noise need only P, which a compact group's Haar projector gives
                raise ValueError(
                    f"group: {name} must be a finite group (the fused particle kernels sum over "
                    "its elements); for EA or projected noise under a compact group pass no "
                    "group and projector= the orthogonal projector onto E^G in parameter space "
                    "(Q Qᵀ for an orthonormal basis Q of E^G, e.g. from symkern.fixed_point_basis "
                    "of the group's action on the parameters)"
                )
            if rep.dim != want:
                raise ValueError(
                    f"group: {name} acts on R^{rep.dim}, but the unit's {what} live in R^{want} "
                    f"({unit!r})"
                )
        if rep_x.group is not rep_y.group:
            raise ValueError("group: rep_x and rep_y must represent the same group object")
        rho_x = rep_x.element_matrices(dtype=torch.float64)
        rho_y = rep_y.element_matrices(dtype=torch.float64)
    m_z = unit.param_action(rho_x, rho_y)
    proj = m_z.mean(0)  # the Reynolds operator on Z = orthogonal projection onto E^G
    return tuple(t.to(device=device, dtype=dtype).contiguous() for t in (rho_x, rho_y, m_z, proj))


def _schemes(scheme: str | Sequence[str], R: int, device) -> tuple[torch.Tensor, list[str]]:
    valid = list(SCHEMES)
    if isinstance(scheme, str) and scheme in SCHEMES:  # one scheme for every run (fast path)
        return torch.full((R,), SCHEMES[scheme], dtype=torch.int32, device=device), [scheme] * R
    if isinstance(scheme, str):
        names = [scheme] * R
    else:
        try:
            names = list(scheme)
        except TypeError:
            raise TypeError(
                f"scheme must be one of {valid} or a sequence of them (one per run), got {scheme!r}"
            ) from None
    if len(names) != R:
        raise ValueError(f"scheme must be one name or one per run ({R}), got {len(names)}")
    bad = [s for s in names if not isinstance(s, str) or s not in SCHEMES]
    if bad:
        raise ValueError(f"scheme must be one of {valid}, got {bad[0]!r}")
    return torch.tensor([SCHEMES[s] for s in names], dtype=torch.int32, device=device), names


def _project_noise(value, R: int) -> torch.Tensor:
    """project_noise as a bool (R,) CPU tensor: from a bool, a bool tensor (0-d or (R,)) or a
    sequence of R bools. Nothing else: bool("False") is True, and 0.5 is not a yes or a no."""
    want = f"project_noise must be a bool or one bool per run ({R})"
    if isinstance(value, (bool, np.bool_)):
        return torch.full((R,), bool(value), dtype=torch.bool)
    if isinstance(value, torch.Tensor):
        if value.dtype != torch.bool:
            raise TypeError(f"{want}, got a tensor of dtype {value.dtype}")
        flags = value.cpu()
    else:
        try:
            items = list(value)
        except TypeError:
            raise TypeError(f"{want}, got {value!r}") from None
        if not all(isinstance(v, (bool, np.bool_)) for v in items):
            raise TypeError(f"{want}, got {value!r}")
        flags = torch.tensor([bool(v) for v in items], dtype=torch.bool)
    if flags.dim() == 0:
        flags = flags.expand(R)
    if flags.shape != (R,):
        raise ValueError(f"{want}, got shape {tuple(flags.shape)}")
    return flags


def _check_seed(seed) -> int:
    try:
        return as_int(seed, "seed", minimum=0, below=2**64)
    except ValueError:
        raise ValueError(f"seed must be an int in [0, 2^64), got {seed!r}") from None


def _check_run_ids(run_ids, R: int) -> torch.Tensor:
    """run_ids as an int64 (R,) tensor of values in [0, 2^32), or the default 0..R-1."""
    return philox_ids(run_ids, R, "run_ids", "run")


def _check_device(t: torch.Tensor, name: str) -> None:
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(
            f"{name} must be a CPU or CUDA tensor (particle kernels run there only), got device "
            f"{t.device}"
        )


def _hyper(value, R: int, name: str, dtype, device) -> torch.Tensor:
    """per_item for alpha / tau / beta, with a fast path for a plain Python number."""
    if type(value) in (float, int):  # a plain Python number: no tensor round trip (fast path)
        try:
            v = float(value)
        except OverflowError:
            v = math.inf
        if not (math.isfinite(v) and v >= 0):  # (an int too large for a float: inf)
            raise ValueError(f"{name} must be finite and >= 0, got {v}")
        if v > torch.finfo(dtype).max:  # torch.full raised "cannot be converted ... overflow"
            raise _hyper_overflow(name, v, dtype)
        return torch.full((R,), v + 0.0, dtype=dtype, device=device)  # + 0.0: -0.0 -> 0.0
    t = per_item(value, R, name, dtype, device, item="run")  # bools, strings: TypeError
    if not all_finite(t):  # finite in float64, rounded to inf in theta's dtype (was silent)
        raise _hyper_overflow(name, value, dtype)
    return t


def _hyper_overflow(name: str, value, dtype) -> ValueError:
    return ValueError(
        f"{name} must be finite in theta's dtype {dtype} (at most {torch.finfo(dtype).max:.3g}), "
        f"got {value!r}"
    )


def _check_particles(theta: torch.Tensor, unit: Unit, finite: bool = True) -> tuple[int, int, int]:
    """(R, N, D) of particles ``theta`` of ``unit`` on a CPU or CUDA device, and finite unless
    ``finite=False`` (for a caller that leaves that scan to its kernel)."""
    check_unit(unit)
    if not isinstance(theta, torch.Tensor) or not theta.is_floating_point():
        raise TypeError("theta must be a floating torch.Tensor of shape (R, N, D)")
    if theta.dim() != 3:
        raise ValueError(f"theta must have shape (R, N, D), got {tuple(theta.shape)}")
    R, N, D = theta.shape
    if R < 1 or N < 1:
        raise ValueError(f"theta must have R >= 1 runs and N >= 1 particles, got R={R}, N={N}")
    _check_device(theta, "theta")
    unit.check_theta(theta)
    if finite:
        require_finite(theta, "theta", _PROPAGATES)
    return R, N, D


_PROPAGATES = "particle training would only propagate it"  # why NaN / inf inputs are refused


def particle_problem(
    theta: torch.Tensor,
    unit: Unit,
    *,
    teacher: torch.Tensor | None = None,
    teacher_weights: torch.Tensor | None = None,
    group: Representation | tuple[Representation, Representation] | None = None,
    scheme: str | Sequence[str] = "vanilla",
    alpha: float | torch.Tensor = 50.0,
    tau: float | torch.Tensor = 1e-4,
    beta: float | torch.Tensor = 1e-6,
    batch: int = 20,
    sigma_pi: float = 4.0,
    seed: int = 0,
    run_ids: torch.Tensor | None = None,
    steps: int = 1,
    project_noise: bool | Sequence[bool] = False,
    x_data: torch.Tensor | None = None,
    y_data: torch.Tensor | None = None,
    projector: torch.Tensor | None = None,
) -> ParticleProblem:
    """Validate the arguments of :func:`particle_steps` and build the
    :class:`~symkern.meanfield.problem.ParticleProblem` every backend's kernel receives (group
    matrices, per-run hyperparameters, teacher, projector) on theta's device and dtype.

    ``steps`` is only used to check the shape of ``x_data`` / ``y_data``. Useful to call one
    backend's kernel directly (tests, benchmarks) on exactly the problem the op would build.
    """
    R, _, D = _check_particles(theta, unit)
    steps = _check_pos_int(steps, "steps")
    batch = _check_pos_int(batch, "batch")
    sigma_pi = as_real(sigma_pi, "sigma_pi", positive=True)
    seed = _check_seed(seed)
    dtype, device = theta.dtype, theta.device

    if unit.d * batch >= 2**32 and x_data is None:
        raise ValueError(
            f"batch: batch·d = {batch * unit.d} input coordinates per run and step; the Philox "
            "element index is 32-bit, so batch·d must be < 2^32"
        )

    schemes, names = _schemes(scheme, R, device)
    noise_proj = _project_noise(project_noise, R)
    # DA, DA-sample and FA act on the data / particles by the group's matrices; EA and projected
    # noise only need the projector P, which projector= supplies without a group (the kernels
    # then get the trivial group's matrices, G = 1, which EA and the noise never read)
    if group is None and any(n in ("DA", "DA-sample", "FA") for n in names):
        raise ValueError(
            "group is required for the DA, DA-sample and FA schemes (they apply the group's "
            "matrices to data or particles; projector= does not replace it)"
        )
    needs_proj = "EA" in names or bool(noise_proj.any())
    noise_proj = noise_proj.to(device)
    if group is None and projector is None and needs_proj:
        raise ValueError(
            "group is required for the EA scheme and for projected noise (or pass projector=)"
        )
    rho_x, rho_y, m_z, proj = group_matrices(unit, group, dtype, device)
    if projector is not None:
        p = real_tensor(projector, "projector").to(torch.float64)
        if p.shape != (D, D):
            raise ValueError(f"projector must be ({D}, {D}), got {tuple(p.shape)}")
        require_finite(p, "projector", "it must be an orthogonal projector")
        if not (torch.allclose(p, p.T, atol=1e-8) and torch.allclose(p @ p, p, atol=1e-8)):
            raise ValueError("projector must be an orthogonal projector (symmetric, P @ P = P)")
        proj = p.to(device=device, dtype=dtype).contiguous()

    if (teacher is None) == (x_data is None):
        raise ValueError("give exactly one of teacher (labels drawn in-kernel) or x_data/y_data")
    if x_data is None and y_data is not None:
        raise ValueError("y_data needs x_data (with a teacher, the labels come from the teacher)")
    if teacher is not None:
        teacher = real_tensor(teacher, "teacher").to(dtype=dtype, device=device)
        if teacher.dim() == 2:
            teacher = teacher.expand(R, *teacher.shape)
        if teacher.dim() != 3 or teacher.shape[0] != R or teacher.shape[2] != D:
            raise ValueError(
                f"teacher must be (M, {D}) or ({R}, M, {D}), got {tuple(teacher.shape)}"
            )
        M = teacher.shape[1]
        if M < 1:
            raise ValueError(
                f"teacher must hold at least one particle (M >= 1), got {tuple(teacher.shape)}"
            )
        w = (  # 1/M in float64: a float32 1/5 scaled every float64 label by 1 + 1.5e-8
            torch.full((M,), 1.0 / M, dtype=torch.float64)
            if teacher_weights is None
            else teacher_weights
        )
        w = real_tensor(w, "teacher_weights").to(dtype=dtype, device=device)
        if w.shape == (M,):
            w = w.expand(R, M)
        if w.shape != (R, M):
            raise ValueError(f"teacher_weights must be ({M},) or ({R}, {M}), got {tuple(w.shape)}")
        require_finite(teacher, "teacher", "every label it gives would be NaN")
        require_finite(w, "teacher_weights", "every label it gives would be NaN")
        teacher, w = teacher.contiguous(), w.contiguous()
    else:
        if y_data is None:
            raise ValueError("x_data needs y_data")
        assert x_data is not None  # teacher is None here, and exactly one of the two was given
        want_x, want_y = (steps, R, batch, unit.d), (steps, R, batch, unit.c)
        for t, name, want in ((x_data, "x_data", want_x), (y_data, "y_data", want_y)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor of shape {want}, got "
                                f"{type(t).__name__}")  # fmt: skip
            if t.is_complex() or t.dtype == torch.bool:
                raise TypeError(f"{name} must be a real torch.Tensor, got dtype {t.dtype}")
        if tuple(x_data.shape) != want_x or tuple(y_data.shape) != want_y:
            raise ValueError(
                f"x_data / y_data must be {want_x} / {want_y}, got {tuple(x_data.shape)} / "
                f"{tuple(y_data.shape)}"
            )
        x_data = x_data.to(device=device, dtype=dtype).contiguous()
        y_data = y_data.to(device=device, dtype=dtype).contiguous()
        require_finite(x_data, "x_data", _PROPAGATES)
        require_finite(y_data, "y_data", _PROPAGATES)
        teacher = theta.new_zeros(R, 1, D)
        w = theta.new_zeros(R, 1)

    run_ids = _check_run_ids(run_ids, R)

    return ParticleProblem(
        unit_code=unit.code,
        activation_code=unit.activation_code,
        c=unit.c,
        d=unit.d,
        D=D,
        batch=batch,
        sigma_pi=float(sigma_pi),
        seed=seed,
        run_ids=run_ids.to(device=device, dtype=torch.int64).contiguous(),
        alpha=_hyper(alpha, R, "alpha", dtype, device),
        tau=_hyper(tau, R, "tau", dtype, device),
        beta=_hyper(beta, R, "beta", dtype, device),
        scheme=schemes,
        project_noise=noise_proj.contiguous(),
        teacher=teacher,
        teacher_w=w,
        rho_x=rho_x,
        rho_y=rho_y,
        m_z=m_z,
        proj=proj,
        x_data=x_data,
        y_data=y_data,
    )


class _ProblemMemo:
    """The problems :func:`particle_steps` built lately, so that a loop of single-step calls
    with the same teacher, group, scheme and hyperparameters builds its problem once (the build
    costs ~100-150 µs of small torch ops per call, many times a small step's kernel).

    A call is memoised when it passes no ``x_data`` / ``y_data`` and every other problem
    argument is None, a Python bool, int, float or str, a Representation, a tensor of at most
    ``max_tensor_elements`` elements, or a tuple / list of these; other calls build their
    problem every time. Besides those arguments a problem depends on the particles only through
    the unit, R, D, dtype and device, which the key holds. Scalars are keyed by type and value
    (the hyperparameters' -0.0 is stored as 0.0, so equal values give equal problems),
    Representations by identity (they are immutable; the key keeps them alive, so an id is not
    reused), and tensors by dtype, shape and device in the key and then by content against a
    private copy, so a teacher changed in place between calls is seen.
    """

    _PLAIN = frozenset((type(None), bool, int, float, str))
    _UNMEMOISABLE = object()

    def __init__(self, size: int = 8, max_tensor_elements: int = 1 << 16) -> None:
        self.size, self.max_tensor_elements = size, max_tensor_elements
        self._entries: OrderedDict[tuple, tuple[list[torch.Tensor], ParticleProblem]]
        self._entries = OrderedDict()
        self._lock = threading.Lock()

    def _key_part(self, v, tensors: list[torch.Tensor]):
        t = type(v)
        if t in self._PLAIN:
            return t, v
        if t in (tuple, list):
            parts = tuple(self._key_part(x, tensors) for x in v)
            return self._UNMEMOISABLE if self._UNMEMOISABLE in parts else (t, parts)
        if isinstance(v, Representation):
            return v
        if isinstance(v, torch.Tensor) and v.numel() <= self.max_tensor_elements:
            tensors.append(v)
            return torch.Tensor, v.dtype, v.shape, v.device
        return self._UNMEMOISABLE

    def _privatised(self, v, copies: list[torch.Tensor]):
        """``v`` with every tensor replaced by a private clone, appended to ``copies`` in the
        order :meth:`_key_part` lists the tensors of a memoisable argument."""
        if isinstance(v, torch.Tensor):
            copies.append(v.detach().clone())
            return copies[-1]
        if type(v) in (tuple, list):
            return type(v)(self._privatised(x, copies) for x in v)
        return v

    def _key(self, theta: torch.Tensor, unit: Unit, args: dict, tensors: list) -> tuple | None:
        if args["x_data"] is not None or args["y_data"] is not None:
            return None
        values = tuple(args.values())
        types = tuple(map(type, values))
        parts = list(values)
        # the plain scalars are their own key (with the types, which tell True from 1); this
        # runs on every call, so only the others go through _key_part
        for i in [i for i, t in enumerate(types) if t not in self._PLAIN]:
            parts[i] = self._key_part(values[i], tensors)
            if parts[i] is self._UNMEMOISABLE:
                return None
        R, _, D = theta.shape
        return unit, R, D, theta.dtype, theta.device, tuple(args), types, *parts

    def problem(self, theta: torch.Tensor, unit: Unit, args: dict, steps: int) -> ParticleProblem:
        """``particle_problem(theta, unit, steps=steps, **args)``, built or remembered. The
        caller has checked ``theta``'s shape and device (:func:`_check_particles`); a built
        problem also checks that it is finite, a remembered one leaves that to the caller."""
        tensors: list[torch.Tensor] = []
        key = self._key(theta, unit, args, tensors)
        if key is None:
            return particle_problem(theta, unit, steps=steps, **args)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
        if hit is not None and all(map(torch.equal, hit[0], tensors)):
            return hit[1]
        # built from private copies of the tensor arguments, which are also what later calls are
        # compared with: a problem keeps a tensor that needs no conversion (a teacher already of
        # theta's dtype and device) as it is, and the caller may edit theirs after this call
        copies: list[torch.Tensor] = []
        private = {name: self._privatised(v, copies) for name, v in args.items()}
        problem = particle_problem(theta, unit, steps=steps, **private)
        with self._lock:
            self._entries[key] = (copies, problem)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return problem


_PROBLEM_MEMO = _ProblemMemo()


def particle_steps(
    theta: torch.Tensor,
    unit: Unit,
    *,
    teacher: torch.Tensor | None = None,
    teacher_weights: torch.Tensor | None = None,
    group: Representation | tuple[Representation, Representation] | None = None,
    scheme: str | Sequence[str] = "vanilla",
    alpha: float | torch.Tensor = 50.0,
    tau: float | torch.Tensor = 1e-4,
    beta: float | torch.Tensor = 1e-6,
    batch: int = 20,
    sigma_pi: float = 4.0,
    seed: int = 0,
    run_ids: torch.Tensor | None = None,
    step0: int = 0,
    steps: int = 1,
    snapshot_every: int | None = None,
    project_noise: bool | Sequence[bool] = False,
    x_data: torch.Tensor | None = None,
    y_data: torch.Tensor | None = None,
    projector: torch.Tensor | None = None,
    backend: str = "auto",
) -> ParticleStepsResult:
    """Advance R runs of N particles by ``steps`` steps of particle SGD / Langevin dynamics.

    θ_i ← θ_i − (α/N)[(1/B) Σ_b ∇_z σ*(x_b, θ_i)ᵀ ∇ℓ(Φ_θ(x_b), y_b) + τ ∇r(θ_i)]
          + sqrt(2 β α / N) ξ_i,                ℓ = ‖ŷ − y‖², r = ‖z‖²

    with a fresh batch x_b ~ N(0, σ_π² I), y_b = teacher(x_b) every step (or ``x_data`` /
    ``y_data`` of shapes (steps, R, B, d) / (steps, R, B, c)), and the scheme's symmetrisation
    (see :mod:`symkern.meanfield.problem`).

    Args:
        theta: (R, N, D) particles, N ≥ 1, finite; float32 or float64. Not modified.
        unit: a :class:`~symkern.meanfield.units.Unit` (D = unit.D).
        teacher: (M, D) or (R, M, D) teacher particles (same unit), M ≥ 1;
            ``teacher_weights`` (M,) or (R, M), default 1/M (a zero weight pads a smaller
            teacher). The weights are any finite reals: they need not sum to 1 and may be
            negative — the labels y = Σ_m w_m σ*(x, θ*_m) are then a signed mixture of units,
            a legitimate target function.
        group: finite group acting on X and Y (a rep, or (rep_x, rep_y)); needed by DA,
            DA-sample and FA, and by EA and projected noise unless ``projector`` is given.
        scheme: "vanilla", "DA", "DA-sample", "FA" or "EA", or one per run.
        alpha, tau, beta: step size, weight decay, temperature — scalars or one per run (≥ 0).
        batch: samples per step (positive int); sigma_pi: input scale σ_π (finite, > 0).
        seed, run_ids: the RNG identity of each run: seed an int in [0, 2^64), run_ids R ints
            in [0, 2^32) (the Philox run word is 32-bit; default 0..R−1);
            step0: absolute index of the first step (so a resumed run continues the same stream).
        snapshot_every: record θ and the loss every K steps, 1 ≤ K ≤ ``steps`` (default: at the
            last step only); S = steps // K snapshots.
        project_noise: project ξ onto E^G (SI runs); bool or one per run. EA always projects.
        projector: (D, D) orthogonal projector used instead of P_{E^G} by EA and by projected
            noise — e.g. a candidate subspace E_j in SI-subspace discovery. With a projector,
            group may be None for vanilla and EA runs (DA, DA-sample and FA still need it).
        backend: "auto", "cpp", "triton" or "torch". The cpp kernel runs FA through joint
            equivariance, so only for orthogonal ρ with M_g = ``unit.param_action(ρ, ρ̂)`` and,
            for the matrix unit, permutation matrices ρ̂; other FA calls go to the torch
            reference under "auto" (with a ReferenceFallbackWarning naming the reason) and raise
            BackendUnavailableError when cpp is forced.

    Ints (steps, batch, seed, step0, snapshot_every) may be Python ints, NumPy integers or
    integer 0-d tensors, not bools. Tensors must be on the CPU or a CUDA device.

    A call whose arguments other than ``theta`` equal an earlier call's (tensors compared by
    content; ``x_data`` calls excepted) reuses the problem that call built, so a loop of
    single-step calls pays the argument checks once (~65 µs per call remain on a 2-core AVX2
    machine at N = 50, against ~6 µs per step inside one multi-step call).

    Ctrl-C stops a long call with KeyboardInterrupt: the cpp kernel runs its steps in chunks of
    ~0.2 s and checks for it between them (the chunks change no number).

    Returns a :class:`ParticleStepsResult`. Autograd does not flow through these calls, one step
    or many (θ comes back detached; :func:`model_output` is the differentiable forward).
    Inputs must be finite (ValueError otherwise). A run that diverges during the call (a step
    size too large for its dtype) is not stopped or clamped: its θ, snapshots and losses turn
    inf / NaN from that step on, as in the reference, and the other runs are unaffected — check
    ``torch.isfinite(result.theta)``.

    Example::

        >>> from symkern.meanfield import MatrixUnit, Teacher, initial_particles
        >>> unit, teacher = MatrixUnit(2, 2), Teacher.paper("WI").particles
        >>> theta = initial_particles(2, 10, unit.D, seed=0)  # R = 2 runs of N = 10 particles
        >>> r = symkern.particle_steps(theta, unit, teacher=teacher, steps=10, snapshot_every=5)
        >>> r.theta.shape, r.snapshots.shape, r.losses.shape  # S = 10 // 5 snapshots
        (torch.Size([2, 10, 4]), torch.Size([2, 2, 10, 4]), torch.Size([2, 2]))
        >>> # run 1 alone (its RNG identity run_ids=[1]) follows the same trajectory
        >>> alone = symkern.particle_steps(theta[1:], unit, teacher=teacher, steps=10, run_ids=[1])
        >>> torch.allclose(alone.theta[0], r.theta[1])
        True
    """
    steps = _check_pos_int(steps, "steps")
    step0 = as_int(step0, "step0", minimum=0)
    # Philox counters hold the step and the element index (i·D + k) in 32-bit words
    if step0 + steps > 2**32:
        raise ValueError(f"step0 + steps must be <= 2^32 (32-bit Philox step), got {step0 + steps}")
    n_noise = (
        theta.shape[1] * theta.shape[2]
        if isinstance(theta, torch.Tensor) and theta.dim() == 3
        else 0
    )
    if n_noise >= 2**32:
        raise ValueError(
            f"theta: N·D = {n_noise} noise numbers per run and step; "
            "the Philox element index is 32-bit, so N·D must be < 2^32"
        )
    snapshot_every = steps if snapshot_every is None else snapshot_every
    snapshot_every = _check_pos_int(snapshot_every, "snapshot_every")
    if snapshot_every > steps:  # would record no snapshot at all
        raise ValueError(
            f"snapshot_every must be <= steps ({steps}), got {snapshot_every} (no step would be "
            "recorded)"
        )
    _check_particles(theta, unit, finite=False)  # below: by the kernel or before it
    _check_snapshot_memory(theta, steps // snapshot_every, snapshot_every)
    problem = _PROBLEM_MEMO.problem(
        theta, unit, dict(
            teacher=teacher, teacher_weights=teacher_weights, group=group, scheme=scheme,
            alpha=alpha, tau=tau, beta=beta, batch=batch, sigma_pi=sigma_pi, seed=seed,
            run_ids=run_ids, project_noise=project_noise, x_data=x_data, y_data=y_data,
            projector=projector,
        ), steps,
    )  # fmt: skip
    # what selection reads of theta: its device and dtype (its shape is checked); the problem's
    # own backend cache holds the choice, so a memoised problem is selected for once
    kernel = select_kernel_cached(
        problem.backend_cache, "particle_steps", {"theta": theta, "problem": problem}, backend,
        key=(theta.dtype, theta.device),
    )  # fmt: skip
    if "theta" not in kernel.checks_finite:
        require_finite(theta, "theta", _PROPAGATES)
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = kernel.fn(
        theta.detach().contiguous(), problem, step0, steps, snapshot_every
    )
    return ParticleStepsResult(*out, kernel.backend)


@functools.lru_cache(maxsize=16)
def _memory_bytes(device: torch.device) -> int | None:
    """The memory of ``device``: physical RAM for the CPU, the GPU's own for CUDA; None where
    it cannot be read. Read once per device (two sysconf calls were ~1 µs of a 31 µs
    once-per-step call)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return None


def _check_snapshot_memory(theta: torch.Tensor, snapshots: int, snapshot_every: int) -> None:
    """ValueError naming ``snapshot_every`` when its S snapshots of θ (R, S, N, D) alone would
    need more than the device's whole memory (steps=10**9, snapshot_every=1 raised numpy's
    MemoryError naming only a shape, or the allocation was an out-of-memory kill)."""
    need = snapshots * theta.numel() * theta.element_size()
    have = _memory_bytes(theta.device)
    if have is not None and need > have:
        raise ValueError(
            f"snapshot_every: {snapshot_every} records {snapshots} snapshots of theta "
            f"{tuple(theta.shape)}, {need / 1e9:.3g} GB, more than the {have / 1e9:.3g} GB of "
            f"memory of {theta.device.type}; record fewer (a larger snapshot_every) or split "
            "the steps over several calls (step0 continues the streams)"
        )


def particle_step(theta: torch.Tensor, unit: Unit, **kwargs) -> ParticleStepsResult:
    """One step of :func:`particle_steps` (``steps=1``).

    Example::

        >>> from symkern.meanfield import MatrixUnit, Teacher, initial_particles
        >>> unit, teacher = MatrixUnit(2, 2), Teacher.paper("WI").particles
        >>> theta = initial_particles(2, 10, unit.D, seed=0)
        >>> one = symkern.particle_step(theta, unit, teacher=teacher)
        >>> one.theta.shape, one.losses.shape
        (torch.Size([2, 10, 4]), torch.Size([2, 1]))
        >>> # resuming at step0=1 continues the stream: two single steps = one 2-step call
        >>> two = symkern.particle_step(one.theta, unit, teacher=teacher, step0=1)
        >>> both = symkern.particle_steps(theta, unit, teacher=teacher, steps=2)
        >>> torch.allclose(two.theta, both.theta)
        True
    """
    if "steps" in kwargs:
        raise TypeError("particle_step takes no steps argument; use particle_steps")
    return particle_steps(theta, unit, steps=1, **kwargs)


# --- the fused model output with autograd: symkern::particle_forward -----------------------------


@custom_op("symkern::particle_forward", mutates_args=())
def _particle_forward_op(
    x: torch.Tensor, theta: torch.Tensor, unit_code: int, activation_code: int, c: int,
    d: int, backend: str,
) -> torch.Tensor:  # fmt: skip
    unit = unit_from_codes(unit_code, activation_code, c, d)
    kernel = select_kernel("particle_forward", {"x": x, "theta": theta}, backend)
    return kernel.fn(x, theta, unit)


@_particle_forward_op.register_fake
def _(x, theta, unit_code, activation_code, c, d, backend):
    return x.new_empty(x.shape[0], c)


def _particle_forward_setup(ctx, inputs, output):
    x, theta, *codes, backend = inputs
    ctx.save_for_backward(x, theta)
    ctx.codes, ctx.backend = codes, backend


# The backward is an op of its own (with a fake implementation), so AOT autograd /
# torch.compile can trace through model_output's gradient without running a kernel on fake
# tensors.
@custom_op("symkern::particle_forward_backward", mutates_args=())
def _particle_forward_backward_op(
    x: torch.Tensor, theta: torch.Tensor, grad_phi: torch.Tensor, unit_code: int,
    activation_code: int, c: int, d: int, backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    unit = unit_from_codes(unit_code, activation_code, c, d)
    kernel = select_kernel("particle_forward_backward", {"x": x, "theta": theta}, backend)
    grad_theta, grad_x = kernel.fn(x, theta, unit, grad_phi.contiguous())
    return grad_theta.contiguous(), grad_x.contiguous()


@_particle_forward_backward_op.register_fake
def _(x, theta, grad_phi, unit_code, activation_code, c, d, backend):
    return theta.new_empty(theta.shape), x.new_empty(x.shape)


def _particle_forward_backward(ctx, grad_phi):
    x, theta = ctx.saved_tensors
    grad_theta, grad_x = _particle_forward_backward_op(x, theta, grad_phi, *ctx.codes, ctx.backend)
    return grad_x, grad_theta, None, None, None, None, None


_particle_forward_op.register_autograd(
    _particle_forward_backward, setup_context=_particle_forward_setup
)


class _EagerParticleForward(torch.autograd.Function):
    """model_output through the backend kernels directly (the routes of
    :func:`symkern.ops._common.eager_route`: the custom ops' dispatch costs ~100 µs per call).
    First-order gradients only, like the op: a second derivative raises, and so does a
    forward-mode tangent (no jvp). Written in torch.func style (``setup_context``): under vmap, a
    batch of inputs is one call on all its rows, a batch of particle sets one call per set."""

    @staticmethod
    def forward(x, theta, unit, kernel):
        return kernel.fn(x.detach(), theta.detach(), unit)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, theta, ctx.unit, kernel = inputs
        ctx.backend = kernel.backend  # the backward kernel from the same backend
        ctx.save_for_backward(x, theta)

    @staticmethod
    def vmap(info, in_dims, x, theta, unit, kernel):
        n, (x_dim, theta_dim) = info.batch_size, in_dims[:2]
        xs = batch_first(x, x_dim, n)
        if theta_dim is None:  # a batch of inputs: one call on all their rows
            out = _EagerParticleForward.apply(merged_rows(xs), theta, unit, kernel)
            return out.reshape(n, xs.shape[1], out.shape[-1]), 0
        if n == 0:
            return x.new_empty((0, xs.shape[1], unit.c)), 0
        thetas = theta.movedim(theta_dim, 0)  # a batch of particle sets: one call per set
        outs = [_EagerParticleForward.apply(xs[i].contiguous(), thetas[i].contiguous(), unit,
                                            kernel) for i in range(n)]  # fmt: skip
        return torch.stack(outs), 0

    @staticmethod
    def backward(ctx, grad_phi):
        x, theta = ctx.saved_tensors
        if is_legacy_batched(grad_phi):  # jacobian(vectorize=True): the op's batching fallback
            unit = ctx.unit
            grad_theta, grad_x = _particle_forward_backward_op(
                x, theta, grad_phi, unit.code, unit.activation_code, unit.c, unit.d, ctx.backend
            )
        else:
            grad_theta, grad_x = _EagerParticleGradients.apply(x, theta, grad_phi, ctx.unit,
                                                               ctx.backend)  # fmt: skip
        return grad_x, grad_theta, None, None


class _EagerParticleGradients(torch.autograd.Function):
    """(∂/∂θ, ∂/∂x) of ⟨grad_phi, Φ_θ(x)⟩ by the backend's backward kernel: model_output's
    backward as a function of its own, so that torch.func can run it on unwrapped tensors, and
    so that differentiating the gradients (create_graph=True, a gradient penalty, hessian)
    raises instead of treating them as constants."""

    @staticmethod
    def forward(x, theta, grad_phi, unit, backend):
        kernel = select_kernel("particle_forward_backward", {"x": x, "theta": theta}, backend)
        grad_theta, grad_x = kernel.fn(x.detach(), theta.detach(), unit,
                                       grad_phi.detach().contiguous())  # fmt: skip
        return grad_theta.contiguous(), grad_x.contiguous()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            "model_output has first-order gradients only: its gradient cannot be differentiated "
            "again (no double backward)"
        )

    @staticmethod
    def vmap(info, in_dims, x, theta, grad_phi, unit, backend):
        def item(t, dim, i):
            return t if dim is None else t.select(dim, i).contiguous()

        if info.batch_size == 0:  # the unbatched shapes of (∂/∂θ, ∂/∂x), none of them
            shapes = [t.shape if d is None else t.shape[:d] + t.shape[d + 1 :]
                      for t, d in ((theta, in_dims[1]), (x, in_dims[0]))]  # fmt: skip
            return tuple(theta.new_empty((0, *s)) for s in shapes), (0, 0)

        pairs = [
            _EagerParticleGradients.apply(item(x, in_dims[0], i), item(theta, in_dims[1], i),
                                          item(grad_phi, in_dims[2], i), unit, backend)
            for i in range(info.batch_size)
        ]  # fmt: skip
        return (torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])), (0, 0)


def model_output(
    x: torch.Tensor, theta: torch.Tensor, unit: Unit, backend: str = "auto"
) -> torch.Tensor:
    """The particle model Φ_θ(x) = (1/N) Σ_i σ*(x, θ_i), differentiable in x and θ.

    x (B, d), theta (N, D) (float32 / float64, same device) → (B, c). Fused kernels never keep a
    B×N activation buffer: the backward recomputes activations. Use it to plug a mean-field model
    into your own training loop (first-order gradients through ``torch.autograd`` and
    ``torch.func.grad`` / ``vjp`` / ``vmap`` / ``jacrev``; a second derivative or a forward-mode
    tangent raises). NaN is not checked: it propagates (a NaN in x_b makes row b of the output
    NaN; one in θ_i, every row).

    Example::

        >>> from symkern.meanfield import MatrixUnit
        >>> unit = MatrixUnit(2, 2)  # σ*(x, z) = sigmoid(z x), z a 2×2 matrix
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(3, 2, dtype=torch.float64)
        >>> theta = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
        >>> out = symkern.model_output(x, theta, unit)
        >>> out.shape
        torch.Size([3, 2])
        >>> ref = unit.output(x, theta)  # the plain torch formula (B×N activations)
        >>> torch.allclose(out, ref)
        True
        >>> g = torch.autograd.grad(out.sum(), theta)[0]
        >>> g_ref = torch.autograd.grad(ref.sum(), theta)[0]
        >>> g.shape, torch.allclose(g, g_ref)
        (torch.Size([5, 4]), True)
    """
    check_unit(unit)
    for t, name, width in ((x, "x", unit.d), (theta, "theta", unit.D)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating torch.Tensor")
        if t.dim() != 2 or t.shape[1] != width:
            raise ValueError(f"{name} must be 2-D with {width} columns for {unit!r}, got "
                             f"{tuple(t.shape)}")  # fmt: skip
    if theta.shape[0] < 1:
        raise ValueError("theta must hold at least one particle")
    if x.dtype != theta.dtype or x.device != theta.device:
        raise ValueError("x and theta must share dtype and device")
    if eager_route(x, theta) is not None:  # the kernels themselves, without the ops' dispatch
        # (always the Function: it records reverse-mode autograd, and refuses forward-mode
        # tangents with torch's "implement the jvp function" error instead of dropping them)
        kernel = select_kernel("particle_forward", {"x": x, "theta": theta}, backend)
        return _EagerParticleForward.apply(x.contiguous(), theta.contiguous(), unit, kernel)
    refuse_forward_ad_on_op_route("model_output", x, theta)
    backend = resolve_backend("particle_forward", {"x": x, "theta": theta}, backend)
    return _particle_forward_op(
        x.contiguous(), theta.contiguous(), unit.code, unit.activation_code, unit.c, unit.d,
        backend,
    )  # fmt: skip
