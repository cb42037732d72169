"""Public ops: validation → dispatch (symkern.backends.registry) → torch.library custom op."""

from symkern.ops.fixed_point import fixed_point_basis, project_fixed
from symkern.ops.orbit import Orbit, augment, orbit_average, orbits, symmetrize

__all__ = [
    "Orbit",
    "augment",
    "fixed_point_basis",
    "orbit_average",
    "orbits",
    "project_fixed",
    "symmetrize",
]
