"""The particle-training problem every backend's ``particle_steps`` kernel receives.

R independent runs share one call; run r has N particles θ[r] ∈ R^{N×D} of one unit and is
trained by the particle SGD of SPEC_MEANFIELD.md. Per step t (absolute step index):

1. data: x_b = σ_π · normal(seed, run_ids[r], t, STREAM_DATA, index b·d + k) for b < B, k < d;
   y_b = Σ_m w[r, m] σ*(x_b, teacher[r, m])  (teacher weights w; 0 pads a smaller teacher).
   Or, when ``x_data``/``y_data`` are given, x_b = x_data[t - step0, r, b], y_b likewise.
2. the scheme's data loss ℓ_r (square loss ‖ŷ − y‖², averaged over the scheme's samples):

   ======  ==========  =====================================================================
   code    scheme      ℓ_r
   ======  ==========  =====================================================================
   0       vanilla     (1/B) Σ_b ‖Φ_θ(x_b) − y_b‖²
   1       DA          (1/(B|G|)) Σ_b Σ_g ‖Φ_θ(ρ_g x_b) − ρ̂_g y_b‖²    (full orbit)
   2       DA-sample   (1/B) Σ_b ‖Φ_θ(ρ_{g_b} x_b) − ρ̂_{g_b} y_b‖²,
                       g_b = randint(seed, run_ids[r], t, STREAM_AUGMENT, index b, |G|)
   3       FA          (1/B) Σ_b ‖Q_G Φ_θ(x_b) − y_b‖², Q_G Φ(x) = (1/|G|) Σ_g ρ̂_g⁻¹ Φ(ρ_g x)
                       = Φ_{θ^G}(x), θ^G the N|G| particles M_g θ_i, when the unit is jointly
                       equivariant (the compiled kernels' form: :func:`fa_kernel_reasons`)
   4       EA          (1/B) Σ_b ‖Φ_{Pθ}(x_b) − y_b‖², P = projection onto E^G
   ======  ==========  =====================================================================

3. the update, with L_r = ℓ_r + τ_r (1/N) Σ_i ‖θ̃_i‖² (θ̃ = Pθ for EA, θ otherwise):

       θ ← θ − α_r ∇_θ L_r + sqrt(2 β_r α_r / N) ξ,
       ξ[i, k] = normal4(seed, run_ids[r], t, STREAM_NOISE, index i·D + k)  (four per counter),
       ξ ← ξ Pᵀ for EA and for runs with project_noise[r] (SI runs).

   Per particle this is θ_i ← θ_i − s_N[(1/B) Σ_b ∇_z σ*ᵀ ∇ℓ + τ ∇r(θ_i)] + sqrt(2β s_N) ξ_i with
   s_N = α/N: the 1/N sits in L.
4. every ``snapshot_every`` steps (after the update): θ and ℓ_r of that step are recorded.

Group data (finite groups only): ρ_g (G, d, d), ρ̂_g (G, c, c), M_g (G, D, D) for every element,
and the projector P (D, D) = (1/|G|) Σ_g M_g — or the caller's ``projector``, which replaces P.
Without a group (vanilla runs, and EA / projected-noise runs given a ``projector``) the group
data are the trivial group's (G = 1, identity matrices): only DA, DA-sample and FA read ρ, ρ̂
and M; EA and the noise projection read P only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["SCHEMES", "ParticleProblem", "fa_kernel_reasons"]

SCHEMES = {"vanilla": 0, "DA": 1, "DA-sample": 2, "FA": 3, "EA": 4}


@dataclass(frozen=True)
class ParticleProblem:
    """Everything but the particles. Tensors on the particles' device; floats in their dtype.
    A problem is a value: neither it nor its tensors change after it is built.

    Shapes: R runs, M teacher particles (padded), G group elements, D = unit.D.

    Example::

        >>> from symkern.meanfield import MatrixUnit, Teacher
        >>> from symkern.ops.particles import particle_problem
        >>> unit, G = MatrixUnit(2, 2), symkern.groups.c2_swap()
        >>> theta = torch.zeros(3, 10, unit.D, dtype=torch.float64)  # R = 3 runs of N = 10
        >>> p = particle_problem(theta, unit, teacher=Teacher.paper("WI").particles, group=G,
        ...                      scheme=["vanilla", "DA", "EA"])  # one scheme per run
        >>> p.n_runs, p.group_size, p.D, p.scheme.tolist()  # the SCHEMES codes
        (3, 2, 4, [0, 1, 4])
        >>> p.teacher.shape, p.m_z.shape, torch.allclose(p.proj, p.m_z.mean(0))  # P = mean M_g
        (torch.Size([3, 10, 4]), torch.Size([2, 4, 4]), True)
    """

    unit_code: int  # 0 matrix unit, 1 standard unit
    activation_code: int  # standard unit: 0 tanh, 1 sigmoid, 2 relu
    c: int
    d: int
    D: int
    batch: int
    sigma_pi: float
    seed: int
    run_ids: torch.Tensor  # int64 (R,): RNG identity of each run
    alpha: torch.Tensor  # (R,)
    tau: torch.Tensor  # (R,)
    beta: torch.Tensor  # (R,)
    scheme: torch.Tensor  # int32 (R,): codes of SCHEMES
    project_noise: torch.Tensor  # bool (R,)
    teacher: torch.Tensor  # (R, M, D)
    teacher_w: torch.Tensor  # (R, M)
    rho_x: torch.Tensor  # (G, d, d)
    rho_y: torch.Tensor  # (G, c, c)
    m_z: torch.Tensor  # (G, D, D)
    proj: torch.Tensor  # (D, D)
    x_data: torch.Tensor | None = None  # (T, R, B, d) user-supplied inputs, or None
    y_data: torch.Tensor | None = None  # (T, R, B, c)
    # what a backend derives from the problem once and reuses on every call with it (its support
    # check, its kernel's arguments); valid because a problem and its tensors are never changed
    backend_cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def n_runs(self) -> int:
        return int(self.run_ids.shape[0])

    @property
    def group_size(self) -> int:
        return int(self.rho_x.shape[0])


def fa_kernel_reasons(problem: ParticleProblem) -> list[str]:
    """Why a compiled kernel may not run the problem's FA runs (empty: it may).

    The cpp and Triton kernels evaluate FA as Φ of the symmetrised particles M_g θ_i with the
    inputs ρ_gᵀ x; that equals Q_G Φ only when ρ is orthogonal, M_g = ``unit.param_action(ρ, ρ̂)``
    and the unit is jointly equivariant, which for the matrix unit (sigmoid elementwise) needs
    permutation ρ̂_g. The torch reference evaluates Q_G Φ itself and takes any group.
    """
    from .units import unit_from_codes  # noqa: PLC0415 — units imports nothing from here

    if not bool((problem.scheme == SCHEMES["FA"]).any()):
        return []
    rho_x = problem.rho_x.detach().cpu().double()
    rho_y = problem.rho_y.detach().cpu().double()
    m_z = problem.m_z.detach().cpu().double()
    unit = unit_from_codes(problem.unit_code, problem.activation_code, problem.c, problem.d)
    reasons = []
    eye = torch.eye(rho_x.shape[-1], dtype=torch.float64)
    if not torch.allclose(rho_x @ rho_x.transpose(1, 2), eye.expand_as(rho_x), atol=1e-6):
        reasons.append("FA: the compiled kernels need orthogonal rho_x (they average rho_g^T x)")
    if not torch.allclose(unit.param_action(rho_x, rho_y), m_z, atol=1e-6):
        reasons.append("FA: the compiled kernels need m_z = unit.param_action(rho_x, rho_y)")
    if problem.unit_code == 0:
        permutation = (
            ((rho_y == 0) | (rho_y == 1)).all() and (rho_y.sum(1) == 1).all()
            and (rho_y.sum(2) == 1).all()
        )  # fmt: skip
        if not permutation:
            reasons.append(
                "FA with the matrix unit: the compiled kernels need permutation rho_y (sigmoid "
                "commutes with permutations only, so otherwise Φ of the symmetrised particles "
                "is not Q_G Φ)"
            )
    return reasons
