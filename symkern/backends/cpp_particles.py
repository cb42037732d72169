"""C++ particle engine: registers ``particle_steps`` for backend ``"cpp"`` (float32, float64).

The registry imports this module only when ``symkern._C`` is importable. The kernel
(csrc/particles.cpp) runs all ``steps`` steps of all R runs in one call, with the GIL released:

* a run's particles live in a structure-of-arrays scratch (D arrays of N) for the whole call;
  every inner loop is a SIMD loop across particles; nothing is allocated per step;
* data x, teacher labels, sampled group elements (DA-sample) and Langevin noise come from the
  Philox4x32-10 stream of :mod:`symkern.meanfield.rng` (csrc/philox.h), so trajectories match the
  torch reference (float64: to ~1e-12 after 100 steps; float32: rounding only);
* every scheme is a batch of E "effective inputs" through the same loops: vanilla/EA E = B (EA on
  Pθ, gradient pulled back by Pᵀ), DA E = B|G|, DA-sample E = B, FA E = B|G| inputs ρ_gᵀx with
  output (1/|G|) Σ_g ρ̂_g Φ(ρ_gᵀx) — by joint equivariance this is Φ of the N|G| symmetrised
  particles M_g θ_i, never materialised. ``symkern.meanfield.problem.fa_kernel_reasons``
  verifies the premise (m_z is the unit's ``param_action`` of orthogonal ρ; for the matrix unit
  ρ̂ are permutations) and otherwise reports the call unsupported, so it goes to another
  backend;
* OpenMP over runs; when there are fewer runs than threads and N ≥ 2048, the threads split each
  run's particles instead (a team, one barrier per step; partial sums combined in a fixed order,
  so results depend on the team size only at rounding level).
  ``symkern._C.particle_team_min_n()`` reports the threshold; ``SYMKERN_PARTICLES_TEAM_MIN_N=n``
  changes it (a team still takes at least 256 particles per thread) and ``=off`` disables
  teams — worth it on a machine shared with other busy processes, where the per-step barrier
  waits for a descheduled thread (milliseconds per step measured on the project's 2-core box);
* activations: float64 uses the branch-free exp_d / tanh_d of csrc/vmath.h (vectorised; on
  AVX-512 the matrix unit's pass 1 runs an explicit 8-lane sigmoid with a Newton reciprocal):
  sigmoid ≤ 1.7e-16 absolute / 2.6e-16 relative vs long-double libm, NaN propagated; float32
  uses vectorisable approximations with a measured max error vs double libm on [-87, 87]:
  sigmoid ≤ 9.6e-8 absolute / 2.7e-7 relative
  (the AVX-512 16-lane sigmoid of the matrix-unit fast path; the scalar one ≤ 9.0e-8 / 1.5e-7),
  tanh ≤ 9.2e-8 absolute / 1.9e-7 relative (``symkern._C.particle_activation_errors()``
  re-measures it); float32 runs on AVX-512 and AVX2 also draw the Box–Muller normals in float
  (max error 6.1e-7 vs the float64 normals over 4e6, i.e. rounding only);
* the standard unit's products (pre-activations X Wᵀ, weight gradients, input gradients of the
  fused backward) run in register blocks of up to 8 inputs or columns × one SIMD vector of
  particles, one vector load per 8 FMAs;
* the kernel is compiled for AVX-512, AVX2+FMA and baseline x86-64 and picks one at run time
  (``symkern._C.particle_isa()``; ``SYMKERN_PARTICLES_ISA=avx2|baseline`` forces a lower one).

Crossing the boundary: tensors become numpy arrays with ``Tensor.numpy()`` (zero-copy, CPU,
contiguous — ``.contiguous()`` is a no-op for the problem the public op builds); outputs are
allocated here with torch and filled in place by C++; the bindings check every buffer's dtype,
shape and contiguity and raise ``ValueError`` naming the argument. Autograd does not flow through
multi-step calls (same as the reference).

Also registered: ``particle_forward`` / ``particle_forward_backward`` (the fused
Φ = (1/N) Σ_i σ*(x, θ_i) and its gradients wrt θ and x, behind :func:`symkern.model_output`);
``symkern._C.philox4x32`` / ``philox_normals`` are exposed for tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

import symkern._C as _C
from symkern.backends.registry import register_kernel
from symkern.meanfield.problem import ParticleProblem, fa_kernel_reasons

__all__ = ["particle_steps"]

_DTYPES = (torch.float32, torch.float64)
_NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def _np(t: torch.Tensor, dtype: torch.dtype | None = None) -> np.ndarray:
    t = t.detach()
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    return t.contiguous().numpy()


def _check(inputs: Mapping[str, Any]) -> list[str]:
    problem = inputs.get("problem")
    theta = inputs.get("theta")
    if not isinstance(problem, ParticleProblem):
        return []
    reasons = []
    if isinstance(theta, torch.Tensor) and theta.dim() != 3:
        reasons.append(f"theta: the cpp kernel takes (R, N, D), got shape {tuple(theta.shape)}")
    if "cpp_reasons" not in problem.backend_cache:
        problem.backend_cache["cpp_reasons"] = _problem_reasons(problem)
    return reasons + problem.backend_cache["cpp_reasons"]


def _problem_reasons(problem: ParticleProblem) -> list[str]:
    reasons = []
    if problem.unit_code not in (0, 1):
        reasons.append(f"unit code {problem.unit_code} is not supported by the cpp kernel")
    for name in ("run_ids", "alpha", "teacher", "rho_x", "proj"):
        t = getattr(problem, name)
        if t.device.type != "cpu":
            reasons.append(f"problem.{name}: the cpp kernel needs CPU tensors, got {t.device}")
    if problem.x_data is not None and problem.x_data.device.type != "cpu":
        reasons.append("problem.x_data: the cpp kernel needs CPU tensors")
    if not reasons:
        reasons.extend(fa_kernel_reasons(problem))
    return reasons


@register_kernel("particle_steps", "cpp", dtypes=_DTYPES, check=_check, checks_finite=("theta",))
def particle_steps(
    theta: torch.Tensor,
    problem: ParticleProblem,
    step0: int,
    steps: int,
    snapshot_every: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``steps`` particle SGD/Langevin steps of R runs in one C++ call (see the module docstring).

    theta (R, N, D), detached and contiguous as the op passes it → (theta_out (R, N, D),
    snapshots (R, S, N, D), losses (R, S)),
    S = steps // snapshot_every. The math is :mod:`symkern.meanfield.problem`.
    """
    R, N, D = theta.shape
    dtype = theta.dtype
    S = steps // snapshot_every
    # outputs allocated by numpy and shared with torch: a third of torch.empty + .numpy()'s cost,
    # which shows in a loop of single-step calls
    np_dtype = _NP_DTYPES[dtype]
    theta_out = np.empty((R, N, D), np_dtype)
    snaps = np.empty((R, S, N, D), np_dtype)
    losses = np.empty((R, S), np_dtype)
    key = ("cpp_args", dtype)
    if key not in problem.backend_cache:  # numpy views of the problem, once per problem
        problem.backend_cache[key] = _problem_args(problem, dtype)
    _C.particle_steps(
        theta.numpy(),
        *problem.backend_cache[key],
        int(step0),
        int(steps),
        int(snapshot_every),
        theta_out,
        snaps,
        losses,
    )
    return torch.from_numpy(theta_out), torch.from_numpy(snaps), torch.from_numpy(losses)


def _problem_args(p: ParticleProblem, dtype: torch.dtype) -> tuple:
    """The arguments of ``_C.particle_steps`` that come from the problem, in its order."""
    return (
        int(p.unit_code),
        int(p.activation_code),
        int(p.c),
        int(p.d),
        int(p.batch),
        float(p.sigma_pi),
        int(p.seed),
        _np(p.run_ids, torch.int64),
        _np(p.alpha, dtype),
        _np(p.tau, dtype),
        _np(p.beta, dtype),
        _np(p.scheme, torch.int32),
        _np(p.project_noise, torch.int32),
        _np(p.teacher, dtype),
        _np(p.teacher_w, dtype),
        _np(p.rho_x, dtype),
        _np(p.rho_y, dtype),
        _np(p.proj, dtype),
        None if p.x_data is None else _np(p.x_data, dtype),
        None if p.y_data is None else _np(p.y_data, dtype),
    )


@register_kernel("particle_forward", "cpp", dtypes=_DTYPES)
def particle_forward(x: torch.Tensor, theta: torch.Tensor, unit) -> torch.Tensor:
    """Φ (B, c) = (1/N) Σ_i σ*(x_b, θ_i) for contiguous x (B, d), θ (N, D); no B×N buffer."""
    phi = _C.particle_forward(
        x.detach().contiguous().numpy(), theta.detach().contiguous().numpy(),
        unit.code, unit.activation_code, unit.c, unit.d,
    )  # fmt: skip
    return torch.from_numpy(phi)


@register_kernel("particle_forward_backward", "cpp", dtypes=_DTYPES)
def particle_forward_backward(
    x: torch.Tensor, theta: torch.Tensor, unit, grad_phi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂θ (N, D), ∂L/∂x (B, d)) from ∂L/∂Φ (B, c); activations recomputed per tile."""
    g_theta, g_x = _C.particle_forward_backward(
        x.detach().contiguous().numpy(), theta.detach().contiguous().numpy(),
        unit.code, unit.activation_code, unit.c, unit.d,
        grad_phi.detach().to(x.dtype).contiguous().numpy(),
    )  # fmt: skip
    return torch.from_numpy(g_theta), torch.from_numpy(g_x)
