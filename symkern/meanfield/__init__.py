"""The Maass–Fontbona mean-field layer: units, teachers, the particle engine, laws.

See SPEC_MEANFIELD.md. The hot path is :func:`symkern.particle_steps` (all runs and many steps in
one call, identical random streams on every backend); :class:`ParticleTrainer` wraps it.
"""

from symkern.meanfield import metrics, rng
from symkern.meanfield.laws import projected_law, symmetrized_law
from symkern.meanfield.problem import SCHEMES, ParticleProblem
from symkern.meanfield.teachers import Teacher
from symkern.meanfield.trainer import ParticleTrainer, TrainResult, initial_particles
from symkern.meanfield.units import MatrixUnit, StandardUnit, Unit

__all__ = [
    "SCHEMES",
    "MatrixUnit",
    "ParticleProblem",
    "ParticleTrainer",
    "StandardUnit",
    "Teacher",
    "TrainResult",
    "Unit",
    "initial_particles",
    "metrics",
    "projected_law",
    "rng",
    "symmetrized_law",
]
