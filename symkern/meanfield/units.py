"""Mean-field units σ*(x, z) and their parameter actions (SPEC_MEANFIELD.md).

A particle model is Φ_θ(x) = (1/N) Σ_i σ*(x, θ_i) with x ∈ R^d, output in R^c and one particle's
parameters θ_i ∈ R^D (flattened). A group acts on X by ρ_g, on Y by ρ̂_g and on Z by M_g; the unit
is *jointly equivariant* when σ*(ρ_g x, M_g z) = ρ̂_g σ*(x, z). :meth:`Unit.param_action` gives
the M_g that makes the standard unit jointly equivariant for orthogonal ρ (any ρ̂), and the
matrix unit for orthogonal ρ and permutation ρ̂ (sigmoid acts elementwise, so it commutes with
permutations only: sign flips on y, say, leave no M_g that works). FA's Q_G Φ equals Φ of the
symmetrised particles M_g θ_i only for such pairs.

Units (the integer ``code`` is what the compiled kernels receive):

* :class:`MatrixUnit` (code 0): z ∈ R^{c×d} (row-major, D = c·d), σ*(x, z) = sigmoid(z x)
  elementwise. M_g z = ρ̂_g z ρ_gᵀ, i.e. M_g = ρ̂_g ⊗ ρ_g on row-major vec(z).
* :class:`StandardUnit` (code 1): z = (a, w, b) with a ∈ R^c, w ∈ R^d, b ∈ R (D = c + d + 1),
  σ*(x, z) = a · act(w·x + b), act ∈ {tanh (0), sigmoid (1), relu (2)}.
  M_g (a, w, b) = (ρ̂_g a, ρ_g w, b).
"""

from __future__ import annotations

import torch

from symkern._checks import as_int

__all__ = ["ACTIVATIONS", "MatrixUnit", "StandardUnit", "Unit", "check_unit", "unit_from_codes"]

ACTIVATIONS = {"tanh": 0, "sigmoid": 1, "relu": 2}
_ACT_FN = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu}


def _check_pos_int(v, name: str) -> int:
    """``v`` (int, NumPy integer or integer 0-d tensor, not bool) as a Python int >= 1."""
    return as_int(v, name, minimum=1)


class Unit:
    """Base class. ``c``: output dim, ``d``: input dim, ``D``: parameters per particle.

    Units are values: two units are equal (and hash alike) when they are of the same class with
    the same dimensions and activation, so ``MatrixUnit(2, 2) == MatrixUnit(2, 2)``.
    """

    code: int = -1
    activation: str = "sigmoid"
    c: int
    d: int

    def _key(self) -> tuple:
        return (type(self), self.c, self.d, self.activation)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Unit):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def D(self) -> int:  # noqa: N802 — the papers' name
        raise NotImplementedError

    @property
    def activation_code(self) -> int:
        return ACTIVATIONS[self.activation]

    def features(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """σ*(x_b, θ_i) for every pair: x (..., B, d), θ (..., N, D) → (..., B, N, c); leading
        dims broadcast. x and θ must be floating tensors of one dtype (ValueError / TypeError
        naming them otherwise: a wrong width was silently cut or broadcast)."""
        self.check_theta(theta)
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating torch.Tensor of shape (..., B, {self.d})")
        if x.dim() < 2 or theta.dim() < 2 or x.shape[-1] != self.d:
            raise ValueError(
                f"x must be (..., B, d = {self.d}) and theta (..., N, D = {self.D}) for {self!r}, "
                f"got x {tuple(x.shape)}, theta {tuple(theta.shape)}"
            )
        if x.dtype != theta.dtype:
            raise TypeError(f"x ({x.dtype}) and theta ({theta.dtype}) must have the same dtype")
        try:  # the leading dims broadcast: else einsum's message named neither argument
            torch.broadcast_shapes(x.shape[:-2], theta.shape[:-2])
        except RuntimeError:
            raise ValueError(
                f"the leading dims of x {tuple(x.shape[:-2])} and theta {tuple(theta.shape[:-2])} "
                "must broadcast"
            ) from None
        return self._features(x, theta)

    def _features(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """:meth:`features` on checked inputs."""
        raise NotImplementedError

    def output(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Φ_θ(x) = (1/N) Σ_i σ*(x, θ_i): x (..., B, d), θ (..., N, D) → (..., B, c), N ≥ 1
        as in :func:`symkern.model_output` (a mean over no particle was NaN)."""
        feats = self.features(x, theta)
        if theta.shape[-2] < 1:
            raise ValueError(f"theta must hold at least one particle, got {tuple(theta.shape)}")
        return feats.mean(-2)

    def param_action(self, rho_x: torch.Tensor, rho_y: torch.Tensor) -> torch.Tensor:
        """M_g (G, D, D) from ρ_g (G, d, d), ρ̂_g (G, c, c): the action on parameters that makes
        the unit jointly equivariant where any does (see the module docstring). ρ and ρ̂ are
        real tensors of one dtype with the same G ≥ 1 (ValueError / TypeError naming them)."""
        self._check_action(rho_x, rho_y)
        return self._param_action(rho_x, rho_y)

    def _param_action(self, rho_x: torch.Tensor, rho_y: torch.Tensor) -> torch.Tensor:
        """:meth:`param_action` on checked inputs."""
        raise NotImplementedError

    def _check_action(self, rho_x, rho_y) -> None:
        """Shapes were unchecked: a wrong d gave a raw reshape / expand error, and a ρ̂ with one
        element broadcast against every ρ_g, pairing elements that are not the same g."""
        for rho, name, dim in ((rho_x, "rho_x", self.d), (rho_y, "rho_y", self.c)):
            if not isinstance(rho, torch.Tensor) or not rho.is_floating_point():
                raise TypeError(
                    f"{name} must be a floating torch.Tensor of shape (G, {dim}, {dim})"
                )
            if rho.dim() != 3 or tuple(rho.shape[1:]) != (dim, dim) or rho.shape[0] < 1:
                raise ValueError(
                    f"{name} must be (G >= 1, {dim}, {dim}) for {self!r}, got {tuple(rho.shape)}"
                )
        if rho_x.shape[0] != rho_y.shape[0]:
            raise ValueError(
                f"rho_x and rho_y must hold the same G elements, got G = {rho_x.shape[0]} and "
                f"{rho_y.shape[0]}"
            )
        if rho_x.dtype != rho_y.dtype:
            raise TypeError(f"rho_x ({rho_x.dtype}) and rho_y ({rho_y.dtype}) must share a dtype")
        if rho_x.device != rho_y.device:  # einsum's "Expected all tensors to be on the same device"
            raise ValueError(
                f"rho_x ({rho_x.device}) and rho_y ({rho_y.device}) must share a device"
            )

    def check_theta(self, theta: torch.Tensor, name: str = "theta") -> None:
        if not isinstance(theta, torch.Tensor) or not theta.is_floating_point():
            raise TypeError(f"{name} must be a floating torch.Tensor")
        if theta.dim() == 0:  # no last axis (reading one raised IndexError)
            raise ValueError(
                f"{name} must have a last axis of D = {self.D} parameters, got a 0-d tensor"
            )
        if theta.shape[-1] != self.D:
            raise ValueError(
                f"{name} has {theta.shape[-1]} parameters per particle (last axis), but "
                f"{self!r} has D = {self.D}"
            )


class MatrixUnit(Unit):
    """σ*(x, z) = sigmoid(z x), z ∈ R^{c×d} flattened row-major (the paper's experiment unit).

    Example::

        >>> from symkern.meanfield import MatrixUnit
        >>> unit = MatrixUnit(2, 2)
        >>> unit.D  # c·d parameters per particle
        4
        >>> rho = symkern.groups.c2_swap().element_matrices()  # C2 swapping both x and y
        >>> M = unit.param_action(rho, rho)  # M_g z = ρ_g z ρ_gᵀ
        >>> _ = torch.manual_seed(0)
        >>> x, z = torch.randn(3, 2, dtype=torch.float64), torch.randn(1, 4, dtype=torch.float64)
        >>> # joint equivariance σ*(ρ_g x, M_g z) = ρ̂_g σ*(x, z), g the swap
        >>> torch.allclose(unit.output(x @ rho[1].T, z @ M[1].T), unit.output(x, z) @ rho[1].T)
        True
    """

    code = 0

    def __init__(self, c: int = 2, d: int = 2):
        self.c = _check_pos_int(c, "c")
        self.d = _check_pos_int(d, "d")

    def __repr__(self) -> str:
        return f"MatrixUnit(c={self.c}, d={self.d})"

    @property
    def D(self) -> int:  # noqa: N802
        return self.c * self.d

    def _features(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        z = theta.reshape(*theta.shape[:-1], self.c, self.d)
        return torch.sigmoid(torch.einsum("...nkd,...bd->...bnk", z, x))

    def _param_action(self, rho_x: torch.Tensor, rho_y: torch.Tensor) -> torch.Tensor:
        # vec(ρ̂ z ρᵀ) = (ρ̂ ⊗ ρ) vec(z) for row-major vec
        g = rho_x.shape[0]
        return torch.einsum("gij,gkl->gikjl", rho_y, rho_x).reshape(g, self.D, self.D)


class StandardUnit(Unit):
    """σ*(x, z) = a · act(w·x + b) with z = (a ∈ R^c, w ∈ R^d, b ∈ R).

    Example::

        >>> from symkern.meanfield import StandardUnit
        >>> unit = StandardUnit(d=2)  # c = 1, tanh
        >>> unit.D  # c + d + 1
        4
        >>> z = torch.tensor([[2.0, 1.0, 0.0, 0.5]])  # a = 2, w = (1, 0), b = 0.5
        >>> x = torch.tensor([[0.5, 3.0]])
        >>> unit.output(x, z).shape, round(unit.output(x, z).item(), 6)  # 2 · tanh(0.5 + 0.5)
        (torch.Size([1, 1]), 1.523188)
    """

    code = 1

    def __init__(self, d: int, c: int = 1, activation: str = "tanh"):
        self.d = _check_pos_int(d, "d")
        self.c = _check_pos_int(c, "c")
        if not isinstance(activation, str) or activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation

    def __repr__(self) -> str:
        return f"StandardUnit(d={self.d}, c={self.c}, activation={self.activation!r})"

    @property
    def D(self) -> int:  # noqa: N802
        return self.c + self.d + 1

    def _features(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        a = theta[..., : self.c]
        w = theta[..., self.c : self.c + self.d]
        b = theta[..., self.c + self.d]
        pre = torch.einsum("...nd,...bd->...bn", w, x) + b.unsqueeze(-2)
        return _ACT_FN[self.activation](pre).unsqueeze(-1) * a.unsqueeze(-3)

    def _param_action(self, rho_x: torch.Tensor, rho_y: torch.Tensor) -> torch.Tensor:
        g = rho_x.shape[0]
        m = torch.zeros(g, self.D, self.D, dtype=rho_x.dtype, device=rho_x.device)
        m[:, : self.c, : self.c] = rho_y
        m[:, self.c : self.c + self.d, self.c : self.c + self.d] = rho_x
        m[:, -1, -1] = 1.0
        return m


def check_unit(unit, name: str = "unit") -> Unit:
    """``unit`` itself when it is a :class:`Unit` instance, else a TypeError naming ``name``."""
    if not isinstance(unit, Unit) or type(unit) is Unit:
        raise TypeError(
            f"{name} must be a symkern.meanfield Unit (e.g. MatrixUnit(2, 2) or "
            f"StandardUnit(d, c, 'tanh')), got {type(unit).__name__} {repr(unit)[:80]}"
        )
    return unit


def unit_from_codes(unit_code: int, activation_code: int, c: int, d: int) -> Unit:
    """The unit the compiled kernels describe by integer codes (see the module docstring)."""
    if unit_code == MatrixUnit.code:
        return MatrixUnit(c, d)
    if unit_code != StandardUnit.code:
        raise ValueError(
            f"unit_code must be {MatrixUnit.code} or {StandardUnit.code}, got {unit_code}"
        )
    act = {v: k for k, v in ACTIVATIONS.items()}[activation_code]
    return StandardUnit(d, c, act)
