"""symkern: compiled kernels for symmetry-aware learning research.

Hot paths, each with a pure-torch reference, a C++ CPU kernel and a Triton GPU kernel, chosen per
call by :mod:`symkern.backends.registry`:

* :func:`orbit_average` — the Reynolds operator (1/|G|) Σ_g ρ(g) x;
* :func:`fixed_point_basis`, :func:`project_fixed` — the fixed-point subspace E^G;
* :func:`orbits`, :func:`symmetrize`, :func:`augment` — orbits, feature averaging, augmentation;
* :func:`particle_steps` — batched multi-step particle SGD for mean-field networks
  (:mod:`symkern.meanfield`);
* :mod:`symkern.mirror` — mirror symmetries (Ziyin): reflections, projections onto Oᵀθ = 0,
  detection in torch models, DCS parametrisations, critical weight decay.

Groups and representations live in :mod:`symkern.groups`. ``symkern.info()`` reports what this
installation can run. Importing symkern imports torch and numpy only (no triton, no device query).
"""

from symkern import groups, meanfield, mirror
from symkern._version import __version__
from symkern.info import info
from symkern.ops import (
    Orbit,
    augment,
    fixed_point_basis,
    orbit_average,
    orbits,
    project_fixed,
    symmetrize,
)
from symkern.ops.particles import model_output, particle_step, particle_steps

__all__ = [
    "Orbit",
    "__version__",
    "augment",
    "fixed_point_basis",
    "groups",
    "info",
    "meanfield",
    "mirror",
    "model_output",
    "orbit_average",
    "orbits",
    "particle_step",
    "particle_steps",
    "project_fixed",
    "symmetrize",
]
