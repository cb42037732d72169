"""DCS — differentiable constraint by symmetry (SPEC_MIRROR; reconstruction, *inferred*).

θ = (I − OOᵀ) w + O (u ⊙ v), w ∈ R^d, u, v ∈ R^k, trained on ℓ(θ) + γ(‖w‖² + ‖u‖² + ‖v‖²).

Weight-decay convention: the penalty is γ‖·‖² on the raw parameters (ℓ + γ‖θ‖², not γ/2). The
loss gains the mirror (u_i, v_i) → (−u_i, −v_i); at balanced points |u_i| = |v_i| the penalty on
the constrained part equals 2γ‖Oᵀθ‖₁, so component i of Oᵀθ becomes exactly zero once 2γ exceeds
|∂ℓ/∂(Oᵀθ)_i| (the Lasso with λ = 2γ). For O = I (L1) and a quadratic loss ‖θ − β‖² the minimiser
is the soft threshold θ_i = sign(β_i) max(0, |β_i| − γ).

Instances: :meth:`DCS.l1` (O = I: L1 sparsity), :class:`GroupGateDCS` (θ_g = s_g w_g: one scalar
gate per group, group-lasso 2γ‖θ_g‖₂), :class:`LowRankDCS` (W = U Vᵀ: nuclear norm 2γ‖W‖_*, so
σ_i(W) = max(0, σ_i(A) − γ) for ‖W − A‖²_F).
"""

from __future__ import annotations

import torch
from torch import nn

from symkern._checks import as_int, as_real, float_dtype, require_values, torch_generator
from symkern.mirror.core import Mirror, _as_index

__all__ = ["DCS", "GroupGateDCS", "LowRankDCS"]


def _check_gamma(gamma) -> float:
    return as_real(gamma, "gamma", minimum=0)


def _check_init_scale(init_scale) -> float:
    return as_real(init_scale, "init_scale", minimum=0)


def _check_init(init, d: int) -> torch.Tensor:
    if not isinstance(init, torch.Tensor) or init.shape != (d,):
        raise ValueError(f"init must be a tensor of shape (d={d},)")
    if init.is_complex() or init.dtype == torch.bool:
        raise TypeError(f"init must be a real numeric tensor, got dtype {init.dtype}")
    # a meta init (a shape only: a model built on the meta device) has no values to check; the
    # parameters made from it are meta tensors of their shapes, as the mirror ops give
    if not init.is_meta and not torch.isfinite(init).all():
        raise ValueError("init contains NaN or inf")
    return init


class DCS(nn.Module):
    """θ = (I − OOᵀ) w + O (u ⊙ v) for a :class:`Mirror` O (forward() returns θ, shape (d,)).

    ``init`` (d,): start at θ = init exactly, with the balanced split w = (I − OOᵀ) init,
    u = √|c|, v = sign(c) √|c|, c = Oᵀ init. Caution: on a balanced point u_i = ±v_i stays
    balanced under GD, so the sign of (Oᵀθ)_i can then never flip (it can only reach 0).
    Default (``init=None``): w, u, v independent N(0, init_scale²) (``generator``-seeded), which
    avoids that. u = v = 0 is a saddle (Theorem 1): components started there never move.
    When O spans R^d (k = d) the w part is absent.

    Example::

        >>> from symkern.mirror import DCS
        >>> theta0 = torch.tensor([1.0, -2.0, 0.0], dtype=torch.float64)
        >>> dcs = DCS.l1(3, gamma=0.5, init=theta0)  # O = I: theta = u * v
        >>> torch.allclose(dcs(), theta0)  # starts at theta = init exactly
        True
        >>> round(dcs.penalty().item(), 6)  # balanced: 2 * gamma * ||theta||_1 = 2 * 0.5 * 3
        3.0
    """

    def __init__(
        self,
        mirror: Mirror,
        gamma: float = 0.0,
        *,
        init: torch.Tensor | None = None,
        init_scale: float = 0.1,
        dtype: torch.dtype = torch.float64,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if not isinstance(mirror, Mirror):
            raise TypeError(f"mirror must be a Mirror, got {type(mirror).__name__}")
        self.mirror = mirror
        self.gamma = _check_gamma(gamma)
        dtype = float_dtype(dtype)
        init_scale = _check_init_scale(init_scale)
        generator = torch_generator(generator)
        d, k = mirror.d, mirror.k
        self.has_w = k < d
        if init is None:
            z = init_scale * torch.randn(d + 2 * k, generator=generator, dtype=torch.float64)
            w, u, v = z[:d].to(dtype), z[d : d + k].to(dtype), z[d + k :].to(dtype)
        else:
            init = _check_init(init, d).detach().to(dtype)
            c = mirror.coefficients(init)
            w, u, v = mirror.project(init), c.abs().sqrt(), torch.sign(c) * c.abs().sqrt()
        self.u = nn.Parameter(u)
        self.v = nn.Parameter(v)
        self.w = nn.Parameter(w) if self.has_w else None

    @classmethod
    def l1(cls, d: int, gamma: float = 0.0, **kw) -> DCS:
        """O = I: θ = u ⊙ v, penalty γ(‖u‖² + ‖v‖²) → 2γ‖θ‖₁ (L1 sparsity)."""
        return cls(Mirror.coordinates(range(d), d), gamma, **kw)

    def forward(self) -> torch.Tensor:
        out = self.mirror.expand(self.u * self.v)
        if self.has_w:
            assert self.w is not None  # __init__ sets w whenever has_w
            out = out + self.mirror.project(self.w)
        return out

    def penalty(self) -> torch.Tensor:
        """γ(‖w‖² + ‖u‖² + ‖v‖²) (weight-decay convention ℓ + γ‖·‖²)."""
        p = self.u.pow(2).sum() + self.v.pow(2).sum()
        if self.has_w:
            assert self.w is not None  # __init__ sets w whenever has_w
            p = p + self.w.pow(2).sum()
        return self.gamma * p

    def constrained(self) -> torch.Tensor:
        """Oᵀθ = u ⊙ v, shape (k,)."""
        return self.u * self.v


class GroupGateDCS(nn.Module):
    """Per-group scalar gates: θ_i = s_{g(i)} w_i, penalty γ(‖s‖² + ‖w‖²).

    Mirror (s_g, w_g) → (−s_g, −w_g); balanced, the penalty is 2γ Σ_g ‖θ_g‖₂ (group lasso), so a
    whole group becomes exactly zero once 2γ > ‖∂ℓ/∂θ_g‖. ``groups`` (d,) ints in [0, G), G ≤ d
    (one gate per id).

    Example::

        >>> from symkern.mirror import GroupGateDCS
        >>> theta0 = torch.tensor([3.0, 4.0, 1.0], dtype=torch.float64)
        >>> gate = GroupGateDCS([0, 0, 1], gamma=0.5, init=theta0)  # groups {0, 1} and {2}
        >>> torch.allclose(gate(), theta0)
        True
        >>> round(gate.penalty().item(), 6)  # 2 * gamma * (||(3, 4)|| + ||(1,)||) = 1 * (5 + 1)
        6.0
    """

    groups: torch.Tensor  # a buffer (register_buffer in __init__)

    def __init__(
        self,
        groups,
        gamma: float = 0.0,
        *,
        init: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float64,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        dtype = float_dtype(dtype)
        generator = torch_generator(generator)
        try:
            g = torch.as_tensor(groups)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(
                f"groups must be a 1-D tensor or sequence of non-negative ints (one group index "
                f"per coordinate), got {type(groups).__name__}"
            ) from e
        if g.dtype == torch.bool or g.is_complex():
            raise TypeError(f"groups must hold non-negative ints, got dtype {g.dtype}")
        require_values(g, "groups", "one gate is made per group id")
        if g.ndim == 1 and g.dtype in (torch.uint16, torch.uint32, torch.uint64):
            g = _as_index(g, "groups")  # torch has no min / max for these dtypes on the CPU
        if g.ndim != 1 or g.numel() == 0 or g.dtype.is_floating_point or g.min() < 0:
            raise ValueError("groups must be a non-empty 1-D tensor of non-negative ints")
        if int(g.max()) >= g.numel():
            # one gate s_g per id up to the largest: an id >= d can only add empty groups (and
            # an id like 10**12 would allocate terabytes)
            raise ValueError(
                f"groups must lie in [0, d) with d = {g.numel()} coordinates, "
                f"got max {int(g.max())}"
            )
        self.register_buffer("groups", g.long())
        self.gamma = _check_gamma(gamma)
        G = int(g.max()) + 1
        d = g.numel()
        if init is None:
            init = 0.1 * torch.randn(d, generator=generator, dtype=torch.float64)
        init = _check_init(init, d).detach().to(dtype)
        # the gates on init's device (a meta init: meta gates, as DCS makes its parameters)
        sq = torch.zeros(G, dtype=dtype, device=init.device)
        gn = sq.index_add(0, self.groups.to(init.device), init * init).sqrt()
        s = gn.sqrt()
        self.s = nn.Parameter(s)
        safe = torch.where(s > 0, s, torch.ones_like(s))
        self.w = nn.Parameter(init / safe[self.groups])

    def forward(self) -> torch.Tensor:
        return self.s[self.groups] * self.w

    def penalty(self) -> torch.Tensor:
        return self.gamma * (self.s.pow(2).sum() + self.w.pow(2).sum())


class LowRankDCS(nn.Module):
    """W = U Vᵀ, U ∈ R^{m×r}, V ∈ R^{n×r}; penalty γ(‖U‖² + ‖V‖²) → 2γ‖W‖_* at balance.

    Rotation mirrors U, V → U(I − 2aaᵀ), V(I − 2aaᵀ) for every unit a; the constraint Ua = Va = 0
    lowers the rank. forward() returns W (m, n).

    Example::

        >>> from symkern.mirror import LowRankDCS
        >>> lr = LowRankDCS(4, 3, 2, gamma=0.1, generator=torch.Generator().manual_seed(0))
        >>> W = lr().detach()
        >>> W.shape, torch.linalg.matrix_rank(W).item()  # rank <= r = 2
        (torch.Size([4, 3]), 2)
        >>> nuclear = torch.linalg.matrix_norm(W, "nuc")
        >>> bool(lr.penalty() >= 2 * 0.1 * nuclear)  # equal when balanced, U^T U = V^T V
        True
    """

    def __init__(
        self,
        m: int,
        n: int,
        r: int,
        gamma: float = 0.0,
        *,
        init_scale: float = 0.1,
        dtype: torch.dtype = torch.float64,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        m, n, r = (as_int(v, name, minimum=1) for v, name in ((m, "m"), (n, "n"), (r, "r")))
        self.gamma = _check_gamma(gamma)
        dtype = float_dtype(dtype)
        init_scale = _check_init_scale(init_scale)
        generator = torch_generator(generator)
        self.U = nn.Parameter(init_scale * torch.randn(m, r, generator=generator, dtype=dtype))
        self.V = nn.Parameter(init_scale * torch.randn(n, r, generator=generator, dtype=dtype))

    def forward(self) -> torch.Tensor:
        return self.U @ self.V.T

    def penalty(self) -> torch.Tensor:
        return self.gamma * (self.U.pow(2).sum() + self.V.pow(2).sum())
