"""Pure-torch reference of ``mirror_sweep``: M small models, one vectorised step for all.

Gradients are written out by hand (no autograd), batched over the model dimension M with
einsum / bmm — no Python loop over models. It is the float64 oracle the C++ / Triton kernels
are tested against; tests/test_mirror_sweeps.py checks it against a per-model autograd loop.
The math is in :mod:`symkern.mirror.sweeps`.
"""

from __future__ import annotations

import math

import torch

from symkern.backends.registry import register_kernel
from symkern.meanfield import rng
from symkern.mirror.sweeps import SweepProblem

# Philox draws are batched over a block of steps (one call instead of one per step: per-call
# overhead dominates for small models). Element [k, m, i] is exactly
# rng.normal(seed, model_ids, t0 + k, stream, n)[m, i] — the same formula as rng.normal.
_BLOCK_ELEMS = 1 << 21


def normal_block(seed: int, model_ids: torch.Tensor, t0: int, K: int, stream: int, n: int):
    """Standard normals (K, M, n) for steps t0..t0+K−1, identical to K calls of rng.normal."""
    index = torch.arange(n, dtype=torch.int64).view(1, 1, n)
    steps = torch.arange(t0, t0 + K, dtype=torch.int64).view(K, 1, 1)
    runs = model_ids.to("cpu", torch.int64).view(1, -1, 1)
    k0, k1 = seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF
    o0, o1, _, _ = rng.philox4x32(index, steps, runs, torch.tensor(stream), k0, k1)
    u1 = rng.uniform_from_bits(o0, torch.float64)
    u2 = rng.uniform_from_bits(o1, torch.float64)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)


class _Draws:
    """Per-stream cache of normal_block draws for the current block of steps."""

    def __init__(self, problem: SweepProblem, like: torch.Tensor, step0: int, steps: int):
        self.problem, self.like, self.end = problem, like, step0 + steps
        self.cache: dict[tuple[int, int], tuple[int, torch.Tensor]] = {}

    def __call__(self, t: int, stream: int, n: int) -> torch.Tensor:
        key = (stream, n)
        hit = self.cache.get(key)
        if hit is None or not hit[0] <= t < hit[0] + hit[1].shape[0]:
            M = self.problem.n_models
            K = max(1, min(self.end - t, _BLOCK_ELEMS // max(1, M * n)))
            z = normal_block(self.problem.seed, self.problem.model_ids, t, K, stream, n)
            hit = (t, z.to(device=self.like.device, dtype=self.like.dtype))
            self.cache[key] = hit
        return hit[1][t - hit[0]]


def _act(z: torch.Tensor, activation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(φ(z), φ'(z))."""
    if activation == "tanh":
        s = torch.tanh(z)
        return s, 1.0 - s * s
    return torch.relu(z), (z > 0).to(z.dtype)


def _mlp_out(x, W1, b1, a, activation):
    z = torch.einsum("mbd,mhd->mbh", x, W1) + b1[:, None, :]
    s, ds = _act(z, activation)
    return torch.einsum("mbh,mh->mb", s, a), s, ds


def _step_rescaling(p, problem: SweepProblem, t: int, draw):
    u, w = p["u"], p["w"]
    beta = problem.target["beta"]
    M, d = u.shape
    theta = u * w
    if problem.batch is None:  # population loss E(θᵀx − y)² = ‖θ − β‖² + σ²
        diff = theta - beta
        loss = (diff * diff).sum(-1) + problem.noise**2
        g = 2.0 * diff
    else:
        B = problem.batch
        x = draw(t, rng.STREAM_DATA, B * d).view(M, B, d)
        eps = draw(t, rng.STREAM_NOISE, B)
        y = torch.einsum("mbd,md->mb", x, beta) + problem.noise[:, None] * eps
        r = torch.einsum("mbd,md->mb", x, theta) - y
        loss = (r * r).mean(-1)
        g = (2.0 / B) * torch.einsum("mbd,mb->md", x, r)
    gam = problem.gamma[:, None]
    return {"u": g * w + 2.0 * gam * u, "w": g * u + 2.0 * gam * w}, loss


def _step_factorization(p, problem: SweepProblem, t: int, draw):
    U, W = p["U"], p["W"]
    A = problem.target["A"]
    M, m, _ = U.shape
    n = W.shape[1]
    Ue = U if problem.offset is None else U + problem.offset
    R = torch.bmm(Ue, W.transpose(1, 2)) - A
    if bool((problem.noise > 0).any()):
        xi = draw(t, rng.STREAM_NOISE, m * n).view(M, m, n)
        R = R - problem.noise[:, None, None] * xi
    loss = (R * R).sum((1, 2))
    gam = problem.gamma[:, None, None]
    gU = 2.0 * torch.bmm(R, W) + 2.0 * gam * U
    gW = 2.0 * torch.bmm(R.transpose(1, 2), Ue) + 2.0 * gam * W
    return {"U": gU, "W": gW}, loss


def _step_mlp(p, problem: SweepProblem, t: int, draw):
    W1, b1, a = p["W1"], p["b1"], p["a"]
    M, _, d = W1.shape
    B = problem.batch
    assert B is not None  # sweep_problem: mlp needs an int batch size
    x = draw(t, rng.STREAM_DATA, B * d).view(M, B, d)
    eps = draw(t, rng.STREAM_NOISE, B)
    tg = problem.target
    y, _, _ = _mlp_out(x, tg["W1"], tg["b1"], tg["a"], problem.activation)
    y = y + problem.noise[:, None] * eps
    f, s, ds = _mlp_out(x, W1, b1, a, problem.activation)
    r = f - y  # (M, B)
    loss = (r * r).mean(-1)
    gf = (2.0 / B) * r
    gz = gf[:, :, None] * a[:, None, :] * ds  # (M, B, h)
    gam = problem.gamma
    return {
        "W1": torch.einsum("mbh,mbd->mhd", gz, x) + 2.0 * gam[:, None, None] * W1,
        "b1": gz.sum(1) + 2.0 * gam[:, None] * b1,
        "a": torch.einsum("mbh,mb->mh", s, gf) + 2.0 * gam[:, None] * a,
    }, loss


_STEPS = {"rescaling": _step_rescaling, "factorization": _step_factorization, "mlp": _step_mlp}


@register_kernel("mirror_sweep", "torch")
def mirror_sweep(
    params: dict[str, torch.Tensor],
    problem: SweepProblem,
    step0: int,
    steps: int,
    record_every: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``steps`` (S)GD steps from absolute step ``step0`` for all M models.

    params {name: (M, ...)} → (params_out, losses (M, steps // record_every)).
    """
    step = _STEPS[problem.model]
    p = {k: v.detach().clone() for k, v in params.items()}
    eta = problem.eta
    losses = []
    draw = _Draws(problem, next(iter(p.values())), step0, steps)
    with torch.no_grad():
        for local_t in range(steps):
            grads, loss = step(p, problem, step0 + local_t, draw)
            for k, g in grads.items():
                p[k] = p[k] - eta.view(-1, *([1] * (g.dim() - 1))) * g
            if (local_t + 1) % record_every == 0:
                losses.append(loss)
    M = problem.n_models
    any_p = next(iter(p.values()))
    loss_t = torch.stack(losses, 1) if losses else any_p.new_empty(M, 0)
    return p, loss_t
