"""Teacher networks: a particle set of the same unit that labels the data, y = Φ_teacher(x).

The paper's three teachers for the matrix unit and G = C2 (SPEC_MEANFIELD.md):

* arbitrary: 5 particles, 0.5 × the rows of a fixed 5×4 matrix (each row a 2×2 matrix);
* WI (weakly invariant): those 5 plus their images P θ Pᵀ — an equivariant teacher;
* SI (strongly invariant): 5 particles in E^G = span{I/√2, P/√2}.
"""

from __future__ import annotations

import torch

from symkern._checks import all_finite, real_tensor, require_values
from symkern.meanfield.units import MatrixUnit, Unit, check_unit

__all__ = ["Teacher"]

_ARBITRARY_ROWS = [
    [-1.0, 0.0, 0.0, 0.5],
    [0.5, 1.0, 0.0, 1.0],
    [-0.5, 0.3, 1.0, 0.0],
    [0.0, -1.0, -0.5, 1.0],
    [0.7, -0.7, 0.5, 0.7],
]
_SI_COORDS = [[1.0, 0.0], [0.5, 1.0], [-0.5, 0.3], [0.0, -1.0], [0.7, 0.7]]


class Teacher:
    """y = Σ_m w_m σ*(x, θ*_m) with particles θ* (M, D), M ≥ 1, and weights w (M,) (default 1/M).

    The weights are any finite reals: they need not sum to 1 and may be negative (a signed
    mixture of units is a legitimate target function; a zero weight pads a smaller teacher).

    Example::

        >>> from symkern.meanfield import MatrixUnit, Teacher
        >>> Teacher(MatrixUnit(2, 2), torch.zeros(1, 4))(torch.ones(1, 2)).tolist()  # sigmoid(0)
        [[0.5, 0.5]]
        >>> wi, arbitrary = Teacher.paper("WI"), Teacher.paper("arbitrary")
        >>> wi
        Teacher('WI', M=10, MatrixUnit(c=2, d=2))
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(8, 2, dtype=torch.float64)
        >>> wi(x).shape
        torch.Size([8, 2])
        >>> # the WI teacher is equivariant under the swap of both coordinates; "arbitrary" is not
        >>> torch.allclose(wi(x.flip(-1)), wi(x).flip(-1))
        True
        >>> torch.allclose(arbitrary(x.flip(-1)), arbitrary(x).flip(-1))
        False
        >>> rho = symkern.groups.c2_swap().element_matrices()
        >>> m_z = arbitrary.unit.param_action(rho, rho)
        >>> torch.allclose(arbitrary.symmetrized(m_z)(x), wi(x))  # WI = arbitrary, symmetrised
        True
    """

    def __init__(self, unit: Unit, particles: torch.Tensor, weights: torch.Tensor | None = None,
                 name: str = "teacher"):  # fmt: skip
        check_unit(unit)
        particles = real_tensor(particles, "particles").to(torch.float64)
        require_values(particles, "particles", "the teacher labels data by their values")
        if particles.dim() != 2:
            raise ValueError(f"particles must be (M, D), got {tuple(particles.shape)}")
        unit.check_theta(particles, "particles")
        M = particles.shape[0]
        if M < 1:
            raise ValueError(
                f"particles must hold at least one teacher particle (M >= 1), got shape "
                f"{tuple(particles.shape)}"
            )
        weights = torch.full((M,), 1.0 / M, dtype=torch.float64) if weights is None else weights
        weights = real_tensor(weights, "weights").to(torch.float64)
        require_values(weights, "weights", "the teacher labels data by their values")
        if weights.shape != (M,):
            raise ValueError(f"weights must be ({M},), got {tuple(weights.shape)}")
        for t, arg in ((particles, "particles"), (weights, "weights")):
            if not torch.isfinite(t).all():
                raise ValueError(f"{arg} contains NaN or inf; every label would be NaN")
        self.unit, self.particles, self.weights, self.name = unit, particles, weights, name

    def __repr__(self) -> str:
        return f"Teacher({self.name!r}, M={self.particles.shape[0]}, {self.unit!r})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Labels (..., B, c) for floating inputs x (..., B, d)."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating torch.Tensor of shape (..., B, {self.unit.d})")
        th = self.particles.to(x)
        feats = self.unit.features(x, th)  # (..., B, M, c)
        return torch.einsum("...bmc,m->...bc", feats, self.weights.to(x))

    def symmetrized(self, m_z: torch.Tensor, name: str | None = None) -> Teacher:
        """The WI teacher: every particle's images M_g θ*, weights split evenly (G·M atoms);
        ``m_z`` (G, D, D), e.g. ``unit.param_action(ρ, ρ̂)``."""
        D = self.unit.D
        if not isinstance(m_z, torch.Tensor) or not m_z.is_floating_point():
            raise TypeError(f"m_z must be a floating torch.Tensor of shape (G, {D}, {D})")
        if m_z.dim() != 3 or m_z.shape[1:] != (D, D) or m_z.shape[0] < 1:
            raise ValueError(f"m_z must have shape (G >= 1, {D}, {D}), got {tuple(m_z.shape)}")
        # checked here, not as the images' "particles contains NaN or inf" of the constructor
        require_values(m_z, "m_z", "the images M_g θ* are computed from its values")
        if not all_finite(m_z):
            raise ValueError("m_z contains NaN or inf; every image M_g θ* would be NaN")
        imgs = torch.einsum("gij,mj->gmi", m_z.double(), self.particles).reshape(-1, self.unit.D)
        w = (self.weights / m_z.shape[0]).repeat(m_z.shape[0])
        return Teacher(self.unit, imgs, w, name or f"{self.name}-WI")

    @classmethod
    def paper(cls, kind: str) -> Teacher:
        """The paper's teachers for the matrix unit (c = d = 2) and C2: 'arbitrary', 'WI', 'SI'."""
        unit = MatrixUnit(2, 2)
        arbitrary = 0.5 * torch.tensor(_ARBITRARY_ROWS, dtype=torch.float64)
        if kind == "arbitrary":
            return cls(unit, arbitrary, name="arbitrary")
        if kind == "WI":
            swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
            images = (swap @ arbitrary.view(-1, 2, 2) @ swap.T).reshape(-1, 4)
            return cls(unit, torch.cat([arbitrary, images]), name="WI")
        if kind == "SI":
            s = 2.0**-0.5
            basis = torch.tensor([[s, 0.0, 0.0, s], [0.0, s, s, 0.0]], dtype=torch.float64)
            coords = 0.5 * torch.tensor(_SI_COORDS, dtype=torch.float64)
            return cls(unit, coords @ basis, name="SI")
        raise ValueError(f"kind must be 'arbitrary', 'WI' or 'SI', got {kind!r}")
