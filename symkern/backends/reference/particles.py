"""Pure-torch reference of ``particle_steps``: the natural autograd implementation.

One autograd pass per step over all R runs at once (runs are independent, so the gradient of the
summed loss is every run's own gradient). It is the float64 oracle the C++ and Triton kernels are
tested against and the "torch eager" baseline of bench/bench_particles.py. The math is documented
in :mod:`symkern.meanfield.problem`.
"""

from __future__ import annotations

import torch

from symkern.backends.registry import register_kernel
from symkern.meanfield import rng
from symkern.meanfield.problem import SCHEMES, ParticleProblem
from symkern.meanfield.units import Unit, unit_from_codes


def unit_of(problem: ParticleProblem) -> Unit:
    return unit_from_codes(problem.unit_code, problem.activation_code, problem.c, problem.d)


def step_data(problem: ParticleProblem, unit: Unit, t: int, local_t: int, dtype: torch.dtype):
    """(x (R, B, d), y (R, B, c)) of step t for every run."""
    if problem.x_data is not None:
        assert problem.y_data is not None  # particle_problem gives x_data and y_data together
        return problem.x_data[local_t], problem.y_data[local_t]
    R, B, d = problem.n_runs, problem.batch, problem.d
    z = rng.normal(problem.seed, problem.run_ids.cpu(), t, rng.STREAM_DATA, B * d, torch.float64)
    x = (problem.sigma_pi * z).to(device=problem.teacher.device, dtype=dtype).view(R, B, d)
    feats = unit.features(x, problem.teacher)  # (R, B, M, c)
    y = torch.einsum("rbmc,rm->rbc", feats, problem.teacher_w)
    return x, y


def data_loss(
    problem: ParticleProblem, unit: Unit, theta: torch.Tensor, x, y, t: int
) -> torch.Tensor:
    """ℓ_r for every run, (R,), each run with its own scheme."""
    R = theta.shape[0]
    loss = theta.new_zeros(R)
    for name, code in SCHEMES.items():
        idx = (problem.scheme == code).nonzero().flatten()
        if idx.numel() == 0:
            continue
        th, xs, ys = theta[idx], x[idx], y[idx]
        if name == "DA":
            xs = torch.einsum("gij,rbj->rgbi", problem.rho_x, xs).flatten(1, 2)
            ys = torch.einsum("gij,rbj->rgbi", problem.rho_y, ys).flatten(1, 2)
        elif name == "DA-sample":
            g = rng.randint(
                problem.seed, problem.run_ids[idx].cpu(), t, rng.STREAM_AUGMENT,
                problem.batch, problem.group_size,
            ).to(theta.device)  # fmt: skip
            xs = torch.einsum("rbij,rbj->rbi", problem.rho_x[g], xs)
            ys = torch.einsum("rbij,rbj->rbi", problem.rho_y[g], ys)
        elif name == "EA":
            th = th @ problem.proj.T
        if name == "FA":
            # Q_G Φ(x) = (1/|G|) Σ_g ρ̂_g⁻¹ Φ(ρ_g x), the spec's definition. It equals Φ of the
            # symmetrised particles {M_g θ_i} (what the compiled kernels evaluate, and check
            # they may) only when the unit is jointly equivariant: for the matrix unit ρ̂_g must
            # be permutations, as sigmoid acts elementwise.
            phi_g = unit.output(torch.einsum("gij,rbj->rgbi", problem.rho_x, xs), th[:, None])
            rho_y_inv = torch.linalg.inv(problem.rho_y)
            phi = torch.einsum("gij,rgbj->rbi", rho_y_inv, phi_g) / problem.group_size
        else:
            phi = unit.output(xs, th)
        loss = loss.index_put((idx,), ((phi - ys) ** 2).sum(-1).mean(-1))
    return loss


@register_kernel("particle_steps", "torch")
def particle_steps(
    theta: torch.Tensor,
    problem: ParticleProblem,
    step0: int,
    steps: int,
    snapshot_every: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``steps`` SGD/Langevin steps from absolute step ``step0``; see symkern.meanfield.problem.

    theta (R, N, D) → (theta_out (R, N, D), snapshots (R, S, N, D), losses (R, S)),
    S = steps // snapshot_every.
    """
    unit = unit_of(problem)
    R, N, D = theta.shape
    dtype = theta.dtype
    ea = problem.scheme == SCHEMES["EA"]
    project = (ea | problem.project_noise).view(R, 1, 1)
    noise_scale = torch.sqrt(2.0 * problem.beta * problem.alpha / N).view(R, 1, 1)
    alpha = problem.alpha.view(R, 1, 1)
    tau = problem.tau.view(R, 1)
    snaps, losses = [], []
    theta = theta.detach().clone()
    for local_t in range(steps):
        t = step0 + local_t
        x, y = step_data(problem, unit, t, local_t, dtype)
        with torch.enable_grad():  # also under a caller's no_grad: this kernel is autograd
            th = theta.requires_grad_(True)
            ell = data_loss(problem, unit, th, x, y, t)
            reg_arg = torch.where(ea.view(R, 1, 1), th @ problem.proj.T, th)
            reg = (tau * (reg_arg**2).sum(-1)).mean(-1)
            (grad,) = torch.autograd.grad((ell + reg).sum(), th)
        xi = rng.normal4(problem.seed, problem.run_ids.cpu(), t, rng.STREAM_NOISE, N * D)
        xi = xi.to(device=theta.device, dtype=dtype).view(R, N, D)
        xi = torch.where(project, xi @ problem.proj.T, xi)
        with torch.no_grad():
            theta = theta.detach() - alpha * grad + noise_scale * xi
        if (local_t + 1) % snapshot_every == 0:
            snaps.append(theta.clone())
            losses.append(ell.detach())
    S = len(snaps)
    snap_t = torch.stack(snaps, 1) if S else theta.new_empty(R, 0, N, D)
    loss_t = torch.stack(losses, 1) if S else theta.new_empty(R, 0)
    return theta, snap_t, loss_t


@register_kernel("particle_forward", "torch")
def particle_forward(x: torch.Tensor, theta: torch.Tensor, unit: Unit) -> torch.Tensor:
    """Φ_θ(x) = (1/N) Σ_i σ*(x, θ_i): x (B, d), θ (N, D) → (B, c) (the natural torch code)."""
    return unit.output(x, theta)


@register_kernel("particle_forward_backward", "torch")
def particle_forward_backward(
    x: torch.Tensor, theta: torch.Tensor, unit: Unit, grad_phi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂θ (N, D), ∂L/∂x (B, d)) from ∂L/∂Φ (B, c), by autograd through :meth:`Unit.output`.

    torch.func.vjp, not torch.autograd.grad: this runs inside the symkern::particle_forward_backward
    custom op, below the autograd dispatch key, where only functorch transforms still record."""
    # (output, vjp_fn) without has_aux; [1] since the stub's return type also admits an aux
    vjp = torch.func.vjp(lambda t, a: unit.output(a, t), theta.detach(), x.detach())[1]
    gt, gx = vjp(grad_phi)
    return gt, gx
