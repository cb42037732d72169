"""Mirror symmetries of losses and the constraints they induce (Ziyin, ICML 2024).

See ``/work/shared/SPEC_MIRROR.md``. An O-mirror symmetric loss ℓ(θ) = ℓ((I − 2OOᵀ)θ) has
symmetric solutions on Oᵀθ = 0; weight decay (convention ℓ + γ‖θ‖²) or gradient noise can make
them attracting.

* :class:`Mirror` — structured orthonormal O ∈ R^{d×k} (never a d×d matrix): reflect, project,
  breaking, is_symmetric — fused C++ / Triton / torch kernels (op ``symkern::mirror_apply``).
* :mod:`symkern.mirror.detect` — permutation / sign-flip / rotation mirrors of torch models, and
  the positive rescalings of their ReLU neurons.
* :class:`DCS`, :class:`GroupGateDCS`, :class:`LowRankDCS` — differentiable constraint by symmetry.
* :func:`critical_decay`, :func:`noise_lyapunov`, :func:`sample_curvatures` — thresholds.
* :func:`train_sweep` — many small models trained in one call (op ``mirror_sweep``: C++, Triton
  and torch kernels).
"""

from symkern.mirror import detect
from symkern.mirror.core import Mirror
from symkern.mirror.dcs import DCS, GroupGateDCS, LowRankDCS
from symkern.mirror.sweeps import SweepResult, train_sweep
from symkern.mirror.thresholds import (
    LanczosResult,
    critical_decay,
    noise_lyapunov,
    projected_hessian_eigs,
    sample_curvatures,
)

__all__ = [
    "DCS",
    "GroupGateDCS",
    "LanczosResult",
    "LowRankDCS",
    "Mirror",
    "SweepResult",
    "critical_decay",
    "detect",
    "noise_lyapunov",
    "projected_hessian_eigs",
    "sample_curvatures",
    "train_sweep",
]
