"""``ParticleTrainer``: the high-level entry point for training shallow mean-field networks.

    trainer = ParticleTrainer(MatrixUnit(2, 2), scheme="DA", group=groups.c2_swap())
    result = trainer.run(n_particles=500, steps=10_000, runs=10, seed=0,
                         teacher=Teacher.paper("WI"), init="SI", snapshot_every=2_000)

All ``runs`` (one per seed) go to the particle engine in ONE call (:func:`symkern.particle_steps`).
Initial particles come from the Philox stream STREAM_INIT keyed by (seed, run index), so runs with
the same seed start identically whatever the scheme (common random numbers across schemes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from symkern._checks import all_finite, as_device, as_real, float_dtype, require_values
from symkern.backends.registry import _requested_backend
from symkern.groups import Representation
from symkern.meanfield import rng
from symkern.meanfield.metrics import _check_orthogonal_projector
from symkern.meanfield.problem import SCHEMES
from symkern.meanfield.teachers import Teacher
from symkern.meanfield.units import Unit, _check_pos_int, check_unit
from symkern.ops.particles import _check_run_ids, _check_seed, group_matrices, particle_steps

__all__ = ["ParticleTrainer", "TrainResult", "initial_particles"]


def initial_particles(
    n_runs: int,
    n_particles: int,
    dim: int,
    seed: int,
    *,
    std: float = 0.25,
    proj: torch.Tensor | None = None,
    run_ids: Sequence[int] | torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """(R, N, D) iid N(0, std²) particles (WI init; the paper's std = 1/4), projected by ``proj``
    (D, D) onto E^G when given (SI init). Keyed by (seed, run id, STREAM_INIT), step 0.

    R, N, D positive ints with R·N·D at most :data:`~symkern.meanfield.rng.MAX_DRAW` (1e8; so
    also N·D < 2^32, the Philox element index), refused before anything is allocated; seed an int
    in [0, 2^64); run_ids R ints in [0, 2^32) (default 0..R−1); std finite and ≥ 0; dtype a
    floating dtype; proj a finite orthogonal projector (symmetric and idempotent to
    :data:`~symkern.meanfield.metrics.MATRIX_CHECK_TOL`; a meta tensor, which has no values, is
    refused).

    Example::

        >>> from symkern.meanfield import MatrixUnit, initial_particles
        >>> theta = initial_particles(3, 50, 4, seed=0)
        >>> theta.shape, theta.dtype
        (torch.Size([3, 50, 4]), torch.float64)
        >>> # keyed by (seed, run id): run 2 alone draws the same particles
        >>> torch.equal(initial_particles(1, 50, 4, seed=0, run_ids=[2])[0], theta[2])
        True
        >>> rho = symkern.groups.c2_swap().element_matrices()
        >>> P = MatrixUnit(2, 2).param_action(rho, rho).mean(0)  # P_{E^G}
        >>> torch.allclose(initial_particles(3, 50, 4, seed=0, proj=P), theta @ P.T)  # SI init
        True
    """
    R = _check_pos_int(n_runs, "n_runs")
    N = _check_pos_int(n_particles, "n_particles")
    D = _check_pos_int(dim, "dim")
    rng.check_draw_size(R * N * D, "n_runs * n_particles * dim")  # and N·D < 2^32
    seed = _check_seed(seed)
    std = as_real(std, "std", minimum=0.0)
    float_dtype(dtype)
    ids = _check_run_ids(run_ids, R)
    if proj is not None:
        if not isinstance(proj, torch.Tensor) or proj.is_complex() or proj.dtype == torch.bool:
            raise TypeError(
                f"proj must be a real ({D}, {D}) torch.Tensor, got {type(proj).__name__}"
            )
        if proj.shape != (D, D):
            raise ValueError(f"proj must be ({D}, {D}), got {tuple(proj.shape)}")
        # a meta proj gave particles of uninitialised memory (CPU @ meta returned a CPU tensor)
        require_values(proj, "proj", "the particles are projected by its values")
        if not all_finite(proj):
            raise ValueError("proj contains NaN or inf; every particle would be NaN")
        # the SI init lies on the projector's range only if it is one (any matrix was applied)
        _check_orthogonal_projector(proj.detach().cpu().double().numpy(), "proj")
    z = rng.normal(seed, ids, 0, rng.STREAM_INIT, N * D).view(R, N, D)
    theta = std * z
    if proj is not None:
        theta = theta @ proj.double().T
    return theta.to(dtype)


@dataclass
class TrainResult:
    """``theta0`` / ``theta`` (R, N, D) before / after, both in the trainer's dtype and device
    (``theta0`` is the start the engine used: a float64 draw rounded to that dtype);
    ``snapshots`` (R, S, N, D), S = steps // snapshot_every (the last one is ``theta`` when
    snapshot_every divides steps); ``losses`` (R, S); ``snapshot_steps`` the absolute step index
    (1-based count) of each snapshot.

    Example::

        >>> from symkern.meanfield import MatrixUnit, ParticleTrainer, Teacher, initial_particles
        >>> trainer = ParticleTrainer(MatrixUnit(2, 2))  # vanilla SGD in float32
        >>> res = trainer.run(10, steps=6, runs=2, teacher=Teacher.paper("WI"), init="WI",
        ...                   snapshot_every=3)
        >>> res.snapshot_steps, res.snapshots.shape, res.losses.shape  # S = 6 // 3 snapshots
        ([3, 6], torch.Size([2, 2, 10, 4]), torch.Size([2, 2]))
        >>> torch.equal(res.snapshots[:, -1], res.theta)  # the last snapshot is the final θ
        True
        >>> # theta0: the float64 WI draw of (seed 0, runs 0 and 1), rounded to float32
        >>> res.theta0.dtype, torch.equal(res.theta0, initial_particles(2, 10, 4, seed=0).float())
        (torch.float32, True)
    """

    theta0: torch.Tensor
    theta: torch.Tensor
    snapshots: torch.Tensor
    losses: torch.Tensor
    snapshot_steps: list[int]


class ParticleTrainer:
    """Particle SGD / Langevin training of Φ_θ(x) = (1/N) Σ σ*(x, θ_i) under one scheme.

    Args:
        unit: the unit σ* (:class:`~symkern.meanfield.units.MatrixUnit` or ``StandardUnit``).
        scheme: "vanilla", "DA", "DA-sample", "FA" or "EA".
        group: finite group acting on X and Y (rep, or (rep_x, rep_y)); None for vanilla only.
        alpha, tau, beta, batch, sigma_pi: SPEC_MEANFIELD defaults 50, 1e-4, 1e-6, 20, 4.
        project_noise: project the Langevin noise onto E^G (SI runs). Default: True exactly when
            ``init="SI"`` and a group is given (without one — the trivial group, E^G = R^D — SI
            init is WI init and there is nothing to project).
        dtype, device, backend: where and how the engine runs.

    Example::

        >>> from symkern.meanfield import MatrixUnit, ParticleTrainer, Teacher
        >>> G = symkern.groups.c2_swap()
        >>> trainer = ParticleTrainer(MatrixUnit(2, 2), scheme="EA", group=G)
        >>> res = trainer.run(20, steps=10, runs=2, teacher=Teacher.paper("SI"), snapshot_every=5)
        >>> res.theta.shape, res.snapshots.shape, res.losses.shape, res.snapshot_steps
        (torch.Size([2, 20, 4]), torch.Size([2, 2, 20, 4]), torch.Size([2, 2]), [5, 10])
        >>> # SI init + EA: the particles stay in E^G = {[[a, b], [b, a]]}; vanilla SGD leaves it
        >>> conj = G.conjugation()  # z ↦ P z Pᵀ on 2×2 matrices: M_g of this unit
        >>> def in_fixed(theta):
        ...     return torch.allclose(symkern.project_fixed(theta, conj), theta, atol=1e-6)
        >>> in_fixed(res.theta)
        True
        >>> vanilla = ParticleTrainer(MatrixUnit(2, 2), scheme="vanilla", group=G)
        >>> in_fixed(vanilla.run(20, steps=10, runs=2, teacher=Teacher.paper("SI")).theta)
        False
    """

    def __init__(
        self,
        unit: Unit,
        scheme: str = "vanilla",
        group: Representation | tuple[Representation, Representation] | None = None,
        alpha: float = 50.0,
        tau: float = 1e-4,
        beta: float = 1e-6,
        batch: int = 20,
        sigma_pi: float = 4.0,
        project_noise: bool | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        backend: str = "auto",
    ):
        check_unit(unit)
        if not isinstance(scheme, str) or scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {list(SCHEMES)}, got {scheme!r}")
        device = as_device(device, "device")
        dtype = float_dtype(dtype, "dtype")
        if project_noise is not None and not isinstance(project_noise, (bool, np.bool_)):
            raise TypeError(f"project_noise must be None or a bool, got {project_noise!r}")
        # checked here rather than at the first run(); one value per run is checked by run()
        for value, name in ((alpha, "alpha"), (tau, "tau"), (beta, "beta")):
            if not isinstance(value, (torch.Tensor, np.ndarray, list, tuple)):
                as_real(value, name, minimum=0)
        _check_pos_int(batch, "batch")
        as_real(sigma_pi, "sigma_pi", positive=True)
        _requested_backend(backend, use_env=False)  # the name; availability is run()'s to check
        self.unit, self.scheme, self.group = unit, scheme, group
        self.alpha, self.tau, self.beta = alpha, tau, beta
        self.batch, self.sigma_pi = batch, sigma_pi
        self.project_noise = project_noise
        self.dtype, self.device, self.backend = dtype, device, backend
        _, _, self.m_z, self.proj = group_matrices(unit, group, torch.float64, torch.device("cpu"))

    def run(
        self,
        n_particles: int,
        steps: int,
        runs: int = 1,
        seed: int = 0,
        snapshot_every: int | None = None,
        teacher: Teacher | None = None,
        init: str | torch.Tensor = "SI",
    ) -> TrainResult:
        """Train ``runs`` independent runs (run r uses RNG identity (seed, r)) for ``steps``.

        ``n_particles``, ``steps``, ``runs``: positive ints (runs·n_particles·D at most
        :data:`~symkern.meanfield.rng.MAX_DRAW` for an "SI" / "WI" init). ``teacher``: a
        :class:`Teacher` of this trainer's unit. ``init``: "SI", "WI" or a finite
        (runs, n_particles, D) tensor.
        """
        n_particles = _check_pos_int(n_particles, "n_particles")
        steps = _check_pos_int(steps, "steps")
        runs = _check_pos_int(runs, "runs")
        if teacher is None:
            raise ValueError("teacher is required (e.g. Teacher.paper('WI'))")
        if not isinstance(teacher, Teacher):
            raise TypeError(
                f"teacher must be a symkern.meanfield Teacher, got {type(teacher).__name__}"
            )
        if teacher.unit != self.unit:
            raise ValueError(
                f"teacher must be a network of the trainer's unit {self.unit!r}, got a teacher of "
                f"{teacher.unit!r}"
            )
        if isinstance(init, torch.Tensor):
            want = (runs, n_particles, self.unit.D)
            if tuple(init.shape) != want:
                raise ValueError(
                    f"init must have shape (runs, n_particles, D) = {want}, got {tuple(init.shape)}"
                )
            if not init.is_floating_point():
                raise TypeError(f"init must be a floating tensor, got dtype {init.dtype}")
            # named here: the engine's checks name its own argument, theta (a meta init raised
            # torch's "Cannot copy out of meta tensor")
            require_values(init, "init", "training starts from its values")
            if not all_finite(init):
                raise ValueError(
                    "init contains NaN or inf; particle training would only propagate it"
                )
            theta0 = init.to(torch.float64)
        elif isinstance(init, str) and init in ("SI", "WI"):
            rng.check_draw_size(runs * n_particles * self.unit.D, "runs * n_particles * D")
            theta0 = initial_particles(
                runs, n_particles, self.unit.D, seed, proj=self.proj if init == "SI" else None
            )
        else:
            raise ValueError(f"init must be 'SI', 'WI' or a (R, N, D) tensor, got {init!r}")
        # default: project the noise of SI runs onto E^G — of a group; without one (the trivial
        # group, E^G = everything) the projection is the identity and SI init is WI init
        si = isinstance(init, str) and init == "SI"
        project = (
            (si and self.group is not None) if self.project_noise is None else self.project_noise
        )
        # a Python int: snapshot_steps is a list of ints (a NumPy or tensor snapshot_every made
        # them NumPy scalars or 0-d tensors)
        snapshot_every = (
            steps if snapshot_every is None else _check_pos_int(snapshot_every, "snapshot_every")
        )
        theta0 = theta0.to(device=self.device, dtype=self.dtype)  # what the engine starts from
        out = particle_steps(
            theta0,
            self.unit,
            teacher=teacher.particles,
            teacher_weights=teacher.weights,
            group=self.group,
            scheme=self.scheme,
            alpha=self.alpha,
            tau=self.tau,
            beta=self.beta,
            batch=self.batch,
            sigma_pi=self.sigma_pi,
            seed=seed,
            steps=steps,
            snapshot_every=snapshot_every,
            project_noise=bool(project),
            backend=self.backend,
        )
        steps_at = [snapshot_every * (s + 1) for s in range(out.snapshots.shape[1])]
        return TrainResult(theta0, out.theta, out.snapshots, out.losses, steps_at)
