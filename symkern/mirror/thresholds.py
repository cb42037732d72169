"""Thresholds for the constraint Oᵀθ = 0 (SPEC_MIRROR, items marked *inferred* there).

Weight-decay convention throughout: ℓ_γ = ℓ + γ‖θ‖² (so the decay adds 2γ I to the Hessian; with
the other convention ℓ + (γ/2)‖θ‖² every threshold below doubles).

* :func:`critical_decay` — local threshold γ* = −½ λ_min(Oᵀ ∇²L(θ_∥) O) at the projected point
  θ_∥ = (I − OOᵀ)θ: the symmetric point is stable along O iff γ > γ* (inferred). Computed by
  Lanczos on O-projected Hessian-vector products (double backward), never a dense Hessian.
* :func:`noise_lyapunov` — E log|1 − η(h + 2γ)| over sampled minibatch curvatures h: the 1-D
  linearisation z ← (1 − η(h_t + 2γ)) z of z = Oᵀθ is attracted to 0 when it is < 0, even when
  E[h] + 2γ < 0 (inferred; the paper's version is qualitative).
* :func:`sample_curvatures` — the h_t of a loss at θ_∥ along one unit direction of span(O).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from symkern._checks import as_int, as_real, require_values, torch_generator
from symkern.mirror.core import Mirror, _short

__all__ = [
    "LanczosResult",
    "critical_decay",
    "noise_lyapunov",
    "projected_hessian_eigs",
    "sample_curvatures",
]


def _check_mirror(mirror) -> None:
    if not isinstance(mirror, Mirror):
        raise TypeError(f"mirror must be a symkern.mirror.Mirror, got {type(mirror).__name__}")


def _check_iters(iters) -> int:
    return as_int(iters, "iters", minimum=1)


def _projected_hvp(loss, theta_par: torch.Tensor, mirror: Mirror):
    """v ∈ R^k ↦ Oᵀ ∇²L(θ_∥) O v, by double backward on one retained graph."""
    x = theta_par.detach().clone().requires_grad_(True)
    L = loss(x)
    if not isinstance(L, torch.Tensor) or L.numel() != 1:
        raise ValueError("loss must return a scalar tensor")
    if L.is_complex() or not L.dtype.is_floating_point:
        raise ValueError(f"loss must return a real floating scalar tensor, got dtype {L.dtype}")
    if not L.requires_grad:
        raise ValueError(
            "loss must be differentiable in theta (twice, by autograd): loss(theta) returned a "
            "tensor with no grad_fn (computed under torch.no_grad(), detached, via numpy / "
            ".item(), or not from theta)"
        )
    (g,) = torch.autograd.grad(L.reshape(()), x, create_graph=True)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        if not g.requires_grad:  # the gradient does not depend on θ (e.g. a linear loss): H = 0
            return torch.zeros_like(v)
        (Hv,) = torch.autograd.grad(g, x, mirror.expand(v), retain_graph=True, allow_unused=True)
        if Hv is None:
            Hv = torch.zeros_like(x)
        return mirror.coefficients(Hv.detach())

    return hvp


@dataclass
class LanczosResult:
    """Ritz values of Oᵀ∇²L O (ascending), the iterations run, and whether the Krylov space
    filled R^k (then the Ritz values are the exact eigenvalues, up to rounding).

    Example::

        >>> from symkern.mirror import Mirror, projected_hessian_eigs
        >>> a = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
        >>> loss = lambda t: (a * t**2).sum()  # Hessian diag(2, 4, 6)
        >>> m, theta = Mirror.coordinates([0, 1, 2], 3), torch.ones(3, dtype=torch.float64)
        >>> g = torch.Generator().manual_seed(0)
        >>> res = projected_hessian_eigs(loss, theta, m, generator=g)  # min(50, k = 3) steps
        >>> res.iters, res.exhausted, [round(x, 6) for x in res.ritz.tolist()]
        (3, True, [2.0, 4.0, 6.0])
        >>> part = projected_hessian_eigs(loss, theta, m, iters=2, generator=g)
        >>> part.iters, part.exhausted, part.lambda_min > 2.0  # Ritz values bound λ_min above
        (2, False, True)
    """

    ritz: torch.Tensor
    iters: int
    exhausted: bool

    @property
    def lambda_min(self) -> float:
        return float(self.ritz[0])


def projected_hessian_eigs(
    loss: Callable[[torch.Tensor], torch.Tensor],
    theta: torch.Tensor,
    mirror: Mirror,
    iters: int = 50,
    *,
    project: bool = True,
    generator: torch.Generator | None = None,
    tol: float = 1e-10,
) -> LanczosResult:
    """Lanczos (full re-orthogonalisation, restart on breakdown) for Oᵀ ∇²L(θ_∥) O ∈ R^{k×k}.

    ``loss``: θ (d,) → scalar, twice differentiable by autograd. ``project``: evaluate at
    θ_∥ = mirror.project(θ) (default) or at θ itself. Runs min(iters, k) steps; when that is k
    the result is exact.

    Example::

        >>> from symkern.mirror import Mirror, projected_hessian_eigs
        >>> a = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
        >>> loss = lambda t: (a * t**2).sum()  # Hessian diag(2, 4, 6)
        >>> res = projected_hessian_eigs(loss, torch.ones(3, dtype=torch.float64),
        ...                              Mirror.coordinates([0, 2], 3))
        >>> [round(x, 6) for x in res.ritz.tolist()], res.exhausted  # the (0, 2) block
        ([2.0, 6.0], True)
    """
    _check_mirror(mirror)
    if not callable(loss):
        raise TypeError("loss must be callable: theta (d,) -> scalar")
    iters = _check_iters(iters)
    tol = as_real(tol, "tol", minimum=0)
    generator = torch_generator(generator)
    mirror._check_theta(theta)
    if theta.ndim != 1:
        raise ValueError(f"theta must have shape (d={mirror.d},), got {tuple(theta.shape)}")
    require_values(theta, "theta", "the Lanczos iteration reads the loss's Hessian at it")
    th = mirror.project(theta.detach()) if project else theta.detach()
    hvp = _projected_hvp(loss, th, mirror)
    k, m = mirror.k, min(iters, mirror.k)
    dt = th.dtype
    Q = torch.zeros(m, k, dtype=dt, device=th.device)
    alpha = torch.zeros(m, dtype=dt)
    beta = torch.zeros(max(m - 1, 0), dtype=dt)

    def fresh(nb: int) -> torch.Tensor | None:
        # a random unit vector orthogonal to the first nb Lanczos vectors
        for _ in range(3):
            q = torch.randn(k, generator=generator, dtype=torch.float64).to(th.device, dt)
            if nb > 0:
                q = q - Q[:nb].T @ (Q[:nb] @ q)
                q = q - Q[:nb].T @ (Q[:nb] @ q)
            nq = q.norm()
            if nq > 1e-8:
                return q / nq
        return None

    q = fresh(0)
    if q is None:  # three Gaussian draws in R^k, k >= 1, all of norm <= 1e-8: not in practice
        raise RuntimeError("projected_hessian_eigs: no nonzero random start vector in 3 draws")
    exhausted = m == k
    for j in range(m):
        Q[j] = q
        w = hvp(q)
        alpha[j] = w @ q
        w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
        w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
        if j == m - 1:
            break
        b = w.norm()
        scale = max(alpha[: j + 1].abs().max().item(), 1.0)
        if b <= tol * scale:
            beta[j] = 0.0  # invariant subspace found: restart orthogonally
            q = fresh(j + 1)
            if q is None:
                m = j + 1
                break
        else:
            beta[j] = b
            q = w / b
    T = torch.diag(alpha[:m].cpu().double())
    if m > 1:
        T = (
            T
            + torch.diag(beta[: m - 1].cpu().double(), 1)
            + torch.diag(beta[: m - 1].cpu().double(), -1)
        )
    ritz = torch.linalg.eigvalsh(T)
    return LanczosResult(ritz=ritz, iters=m, exhausted=exhausted)


def critical_decay(
    loss: Callable[[torch.Tensor], torch.Tensor],
    theta: torch.Tensor,
    mirror: Mirror,
    iters: int = 50,
    *,
    per_group: bool = False,
    generator: torch.Generator | None = None,
) -> float | torch.Tensor:
    """γ* = −½ λ_min(Oᵀ ∇²L(θ_∥) O) at θ_∥ = (I − OOᵀ)θ (inferred local threshold, SPEC_MIRROR).

    Convention ℓ_γ = L + γ‖θ‖²: the symmetric point θ_∥ is stable along span(O) iff γ > γ*.
    γ* may be negative (stable even at γ = 0). ``loss``: θ (d,) → scalar (the loss *without*
    decay). Lanczos with min(iters, k) Hessian-vector products by double backward; never a dense
    d×d Hessian. ``per_group=True``: one γ* per column group of the mirror (e.g. per pair of
    :meth:`Mirror.rescaling_pairs`), returned as a float64 tensor (G,), all at the same θ_∥ of
    the whole mirror: each is −½ λ_min of that group's diagonal block of Oᵀ ∇²L(θ_∥) O, so none
    exceeds the whole mirror's γ* (equal to their max when the block is block-diagonal).

    Example::

        >>> from symkern.mirror import Mirror, critical_decay
        >>> m = Mirror.rescaling_pairs([0], [1], 2)  # theta = (u, w), mirror (u, w) -> (-u, -w)
        >>> loss = lambda t: (t[0] * t[1] - 2.0) ** 2  # (u w - beta)^2: gamma* = |beta|
        >>> theta = torch.tensor([0.3, -0.7], dtype=torch.float64)
        >>> round(critical_decay(loss, theta, m, generator=torch.Generator().manual_seed(0)), 6)
        2.0
    """
    _check_mirror(mirror)
    if per_group:
        # every group at the one point θ_∥ of the whole mirror (projecting it again by a group
        # changes nothing); at θ with only its own group zeroed, the other groups' off-constraint
        # values entered each group's Hessian block and a group's γ* could exceed the whole's
        mirror._check_theta(theta)
        at = mirror.project(theta.detach())
        return torch.tensor(
            [critical_decay(loss, at, m, iters, generator=generator) for m in mirror.split()],
            dtype=torch.float64,
        )
    res = projected_hessian_eigs(loss, theta, mirror, iters, generator=generator)
    return -0.5 * res.lambda_min


def _check_eta_gamma(eta, gamma) -> tuple[float, float]:
    return as_real(eta, "eta", positive=True), as_real(gamma, "gamma", minimum=0)


def noise_lyapunov(curvatures, eta: float, gamma: float) -> float:
    """Lyapunov exponent λ = E log|1 − η(h + 2γ)| of z ← (1 − η(h_t + 2γ)) z over samples h.

    λ < 0: SGD is attracted to the constraint Oᵀθ = 0 (along the sampled direction); λ > 0: it
    escapes. ``curvatures``: 1-D samples of h (tensor or sequence). Convention ℓ + γ‖θ‖².
    A factor exactly 0 gives −inf (one step lands on the constraint).

    Example::

        >>> from symkern.mirror import noise_lyapunov
        >>> noise_lyapunov([-0.55], eta=1.0, gamma=0.0) > 0  # constant h < 0: escapes
        True
        >>> lam = noise_lyapunov([-2.0, 0.9], eta=1.0, gamma=0.0)  # same mean h, with noise
        >>> round(lam, 6)  # (log 3 + log 0.1) / 2 < 0: attracted
        -0.601986
    """
    eta, gamma = _check_eta_gamma(eta, gamma)
    expected = "curvatures must be a 1-D tensor or sequence of real numbers"
    if isinstance(curvatures, torch.Tensor):
        if curvatures.is_complex() or curvatures.dtype == torch.bool:
            raise TypeError(f"{expected}, got dtype {curvatures.dtype}")
        if curvatures.ndim > 1:  # a matrix of samples is a caller's mix-up, not a sample set
            raise ValueError(f"{expected}, got shape {tuple(curvatures.shape)}")
        require_values(curvatures, "curvatures", "the exponent is their mean log-factor")
        h = curvatures.detach().to("cpu", torch.float64).reshape(-1)
    else:
        # read in float64 (numpy), so Python floats are not rounded through float32
        try:
            arr = np.asarray(curvatures)
        except (TypeError, ValueError, RuntimeError, OverflowError) as e:
            raise TypeError(f"{expected}, got {type(curvatures).__name__}") from e
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"{expected}, got {_short(curvatures)}")
        if arr.ndim > 1:
            raise ValueError(f"{expected}, got shape {arr.shape}")
        h = torch.from_numpy(arr.astype(np.float64)).reshape(-1)
    if h.numel() == 0:
        raise ValueError("curvatures must be non-empty")
    if not torch.isfinite(h).all():
        raise ValueError("curvatures must be finite")
    return float(torch.log(torch.abs(1 - eta * (h + 2 * gamma))).mean())


def sample_curvatures(
    loss: Callable[..., torch.Tensor],
    theta: torch.Tensor,
    mirror: Mirror,
    data: Sequence[torch.Tensor],
    batch_size: int,
    num_batches: int,
    *,
    direction: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    return_indices: bool = False,
):
    """Minibatch curvatures h_t = vᵀ Oᵀ ∇²L_B(θ_∥) O v along a unit direction v ∈ R^k.

    ``loss(theta, *batch)`` → scalar mean loss on the batch; ``data``: tensors sharing dim 0 (N
    samples); batches of ``batch_size`` drawn without replacement (independently per batch).
    ``direction`` defaults to the λ_min eigenvector of the full-data Oᵀ∇²L(θ_∥)O (computed
    densely in R^{k×k}, so k should be small); for k = 1 it is 1. Returns h (num_batches,)
    float64 (and the (num_batches, batch_size) indices when ``return_indices``).

    Example::

        >>> from symkern.mirror import Mirror, sample_curvatures
        >>> m = Mirror.rescaling_pairs([0], [1], 2)  # theta = (u, w), model u * w
        >>> loss = lambda t, y: ((t[0] * t[1] - y) ** 2).mean()
        >>> y = torch.arange(8, dtype=torch.float64)
        >>> h, idx = sample_curvatures(loss, torch.zeros(2, dtype=torch.float64), m, [y], 4, 5,
        ...                            generator=torch.Generator().manual_seed(0),
        ...                            return_indices=True)
        >>> h.shape, idx.shape
        (torch.Size([5]), torch.Size([5, 4]))
        >>> torch.allclose(h, -2 * y[idx].mean(1))  # at theta = 0: h_t = -2 * mean of y_B
        True
    """
    _check_mirror(mirror)
    if not callable(loss):
        raise TypeError("loss must be callable: loss(theta, *batch) -> scalar")
    mirror._check_theta(theta)
    if theta.ndim != 1:
        raise ValueError(f"theta must have shape (d={mirror.d},), got {tuple(theta.shape)}")
    require_values(theta, "theta", "the curvatures are the loss's Hessian at it")
    if isinstance(data, torch.Tensor) or not isinstance(data, Sequence) or not data:
        raise TypeError("data must be a non-empty sequence of tensors")
    for i, t in enumerate(data):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"data[{i}] must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 1:
            raise ValueError(
                f"data[{i}] must have a leading sample dimension (ndim >= 1), got a 0-d tensor"
            )
        require_values(t, f"data[{i}]", "the curvatures are the loss's Hessian on its batches")
    N = data[0].shape[0]
    if any(t.shape[0] != N for t in data):
        shapes = [tuple(t.shape) for t in data]
        raise ValueError(f"data: all tensors must share their first dimension, got {shapes}")
    batch_size = as_int(batch_size, "batch_size", minimum=1)
    if batch_size > N:
        raise ValueError(f"batch_size must be an int in [1, N={N}], got {batch_size}")
    num_batches = as_int(num_batches, "num_batches", minimum=1)
    generator = torch_generator(generator)
    th = mirror.project(theta.detach())
    if direction is None:
        if mirror.k > 512:
            raise ValueError("direction must be given when mirror.k > 512")
        hvp = _projected_hvp(lambda t: loss(t, *data), th, mirror)
        eye = torch.eye(mirror.k, dtype=th.dtype, device=th.device)
        Hk = torch.stack([hvp(e) for e in eye]).double().cpu()
        Hk = 0.5 * (Hk + Hk.T)
        direction = torch.linalg.eigh(Hk).eigenvectors[:, 0]
    if not isinstance(direction, torch.Tensor) or direction.shape != (mirror.k,):
        raise ValueError(f"direction must be a tensor of shape (k={mirror.k},)")
    require_values(direction, "direction", "the curvatures are taken along it")
    if direction.is_complex() or not torch.isfinite(direction).all():
        raise ValueError("direction must be a finite real vector")
    v = direction.to(th.device, th.dtype)
    nv = v.norm()
    if not nv > 0:
        raise ValueError("direction must be non-zero")
    v = v / nv
    hs, idxs = [], []
    for _ in range(num_batches):
        idx = torch.randperm(N, generator=generator)[:batch_size]
        batch = [t[idx.to(t.device)] for t in data]
        hvp = _projected_hvp(lambda t, b=batch: loss(t, *b), th, mirror)
        hs.append(float(v @ hvp(v)))
        idxs.append(idx)
    h = torch.tensor(hs, dtype=torch.float64)
    if return_indices:
        return h, torch.stack(idxs)
    return h
