"""Batched small-model sweeps: train M small models at once (registry op ``mirror_sweep``).

Each model m has its own weight decay γ_m (convention ℓ + γ‖θ‖², every trainable parameter
decayed), step size η_m and label-noise level σ_m; the batch size is fixed per call. Plain
(S)GD, one step:

    θ ← θ − η_m ∇_θ [ℓ_B(θ) + γ_m ‖θ‖²]

Data are drawn from the shared Philox stream of :mod:`symkern.meanfield.rng`, keyed by
(seed, model id, step, stream) — so a model's trajectory does not depend on what it is batched
with, and the torch reference, C++ and Triton kernels draw the same numbers:

* inputs x_b ~ N(0, I_d): ``rng.normal(seed, model_ids, t, STREAM_DATA, B·d)``, x[b, k] at
  index b·d + k;
* label noise ε: ``rng.normal(seed, model_ids, t, STREAM_NOISE, n)`` (n = B, or m·n for the
  factorisation's entrywise noise).

Models (``params`` are dicts of batched tensors with leading dimension M):

``rescaling``  θ = u ⊙ w (params ``u``, ``w`` (M, d)); y = βᵀx + σ ε, ``target`` = β (d,) or
               (M, d); loss ℓ = mean_b (θᵀx_b − y_b)². ``batch=None``: the population loss
               ‖θ − β‖² + σ² (exact GD). Minimiser θ_i = sign(β_i) max(0, |β_i| − γ)
               (SPEC_MIRROR closed form; Lasso with λ = 2γ).
``factorization`` M = (U + C) Wᵀ (params ``U`` (M, m, k), ``W`` (M, n, k)); ℓ = ‖M − A − σΞ_t‖²_F
               with Ξ_t entrywise N(0, 1) label noise (σ = 0: full-batch GD on ‖UWᵀ − A‖²_F);
               ``target`` = A (m, n) or (M, m, n). ``offset`` C (m, k) or (M, m, k) is a fixed
               term that breaks the rotation symmetry U → UR, W → WR (default none, C = 0).
               With C = 0: σ_i(UWᵀ) = max(0, σ_i(A) − γ). ``batch`` must be None.
``mlp``        f(x) = Σ_i a_i φ(w_iᵀx + b_i), φ = tanh or relu (params ``W1`` (M, h, d), ``b1``
               (M, h), ``a`` (M, h)); y = f_teacher(x) + σ ε with ``target`` a teacher dict
               {"W1": (h_t, d), "b1": (h_t,), "a": (h_t,)} (or each with a leading M);
               ℓ = mean_b (f(x_b) − y_b)².

The recorded loss is the data loss ℓ of the step's batch (population loss for ``batch=None``),
before the update, every ``record_every`` steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch

from symkern._checks import as_int, philox_ids, real_tensor, require_values
from symkern.backends.registry import select_kernel
from symkern.ops._common import per_item

__all__ = [
    "MODELS",
    "SweepProblem",
    "SweepResult",
    "closed_form_singular_values",
    "closed_form_sparsity",
    "effective_rank",
    "soft_threshold",
    "sparsity",
    "sweep_problem",
    "train_sweep",
]

MODELS: dict[str, tuple[str, ...]] = {
    "rescaling": ("u", "w"),
    "factorization": ("U", "W"),
    "mlp": ("W1", "b1", "a"),
}
ACTIVATIONS = ("tanh", "relu")
# Philox counter words are 32-bit: the step t, the model id and the element index of a draw
_PHILOX_WORD = 2**32


@dataclass
class SweepProblem:
    """Everything a ``mirror_sweep`` kernel needs besides the parameters (validated, on the
    parameters' device and dtype). Per-model tensors have leading dimension M."""

    model: str
    n_models: int
    gamma: torch.Tensor  # (M,)
    eta: torch.Tensor  # (M,)
    noise: torch.Tensor  # (M,) label-noise std σ
    batch: int | None  # None: population loss (rescaling) / full batch (factorization)
    seed: int
    model_ids: torch.Tensor  # (M,) int64, the Philox run ids
    target: dict[str, torch.Tensor]  # rescaling {"beta"}, factorization {"A"}, mlp teacher
    offset: torch.Tensor | None  # factorization symmetry breaker C (M, m, k)
    activation: str  # mlp only


class SweepResult(NamedTuple):
    """``params``: dict of final parameters (M, ...); ``losses`` (M, S) data loss at
    ``loss_steps`` (S,) (absolute step indices); ``backend`` the backend that ran the call.

    Example::

        >>> from symkern.mirror.sweeps import train_sweep
        >>> u = torch.full((2, 3), 0.1, dtype=torch.float64)  # M = 2 models, θ = u ⊙ w = 0.01
        >>> r = train_sweep("rescaling", {"u": u, "w": u}, [0.0, 0.5], 0.1, 6, None,
        ...                 target=torch.ones(3), step0=10, record_every=2, backend="torch")
        >>> sorted(r.params), r.params["u"].shape, r.losses.shape  # S = 6 // 2
        (['u', 'w'], torch.Size([2, 3]), torch.Size([2, 3]))
        >>> r.loss_steps.tolist(), r.backend  # steps 10..15, every 2nd recorded
        ([11, 13, 15], 'torch')
        >>> r1 = train_sweep("rescaling", {"u": u, "w": u}, [0.0, 0.5], 0.1, 1, None,
        ...                  target=torch.ones(3), backend="torch")
        >>> [round(x, 6) for x in r1.losses[:, 0].tolist()]  # ‖θ − β‖² before the update: 3·0.99²
        [2.9403, 2.9403]
    """

    params: dict[str, torch.Tensor]
    losses: torch.Tensor
    loss_steps: torch.Tensor
    backend: str


def _batched(x, shape: tuple[int, ...], M: int, name: str, dtype, device) -> torch.Tensor:
    """``x`` of shape ``shape`` (shared by all models) or (M, *shape), as (M, *shape)."""
    t = real_tensor(x, name)
    require_values(t, name, "the models train on its values")
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if tuple(t.shape) == shape:
        t = t.expand(M, *shape)
    if tuple(t.shape) != (M, *shape):
        raise ValueError(f"{name} must be {shape} or {(M, *shape)}, got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")
    return t.to(device=device, dtype=dtype).contiguous()


def sweep_problem(
    model: str,
    params: Mapping[str, torch.Tensor],
    gammas,
    etas,
    *,
    batch: int | None,
    seed: int = 0,
    target=None,
    noise=0.0,
    model_ids=None,
    offset=None,
    activation: str = "tanh",
) -> tuple[dict[str, torch.Tensor], SweepProblem]:
    """Validate :func:`train_sweep`'s arguments; return (params (M, ...) contiguous, problem)."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {list(MODELS)}, got {model!r}")
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of tensors with keys {MODELS[model]}")
    keys = MODELS[model]
    if set(params) != set(keys):
        raise ValueError(f"params for model {model!r} must have keys {keys}, got {sorted(params)}")
    for key in keys:
        v = params[key]
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise TypeError(f"params[{key!r}] must be a floating torch.Tensor")
        require_values(v, f"params[{key!r}]", "the sweep kernels train the models from them")
        if not torch.isfinite(v).all():
            raise ValueError(f"params[{key!r}] contains NaN or inf")
    first = params[keys[0]]
    dtype, device = first.dtype, first.device
    for key in keys:
        if params[key].dtype != dtype or params[key].device != device:
            raise ValueError("all params must share dtype and device")
    M = first.shape[0] if first.dim() > 0 else 0
    if M < 1:
        raise ValueError("params must hold at least one model (leading dimension M >= 1)")

    sigma = per_item(noise, M, "noise", dtype, device, item="model")
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    out_target: dict[str, torch.Tensor] = {}
    off = None
    if model == "rescaling":
        u, w = params["u"], params["w"]
        if u.dim() != 2 or u.shape != w.shape:
            raise ValueError(
                f"rescaling params u, w must both be (M, d), got {tuple(u.shape)}, {tuple(w.shape)}"
            )
        if target is None:
            raise ValueError("rescaling needs target=beta, shape (d,) or (M, d)")
        out_target["beta"] = _batched(target, (u.shape[1],), M, "target (beta)", dtype, device)
    elif model == "factorization":
        U, W = params["U"], params["W"]
        if U.dim() != 3 or W.dim() != 3 or U.shape[0] != W.shape[0] or U.shape[2] != W.shape[2]:
            raise ValueError(
                f"factorization params must be U (M, m, k) and W (M, n, k), got "
                f"{tuple(U.shape)}, {tuple(W.shape)}"
            )
        if batch is not None:
            raise ValueError("factorization trains on the full matrix: batch must be None "
                             "(use noise= for gradient noise)")  # fmt: skip
        if target is None:
            raise ValueError("factorization needs target=A, shape (m, n) or (M, m, n)")
        m, n, k = U.shape[1], W.shape[1], U.shape[2]
        if m * n > _PHILOX_WORD and bool((sigma > 0).any()):
            # the label noise Ξ_t: m·n numbers per model and step, indexed by a 32-bit word
            raise ValueError(
                f"with noise > 0, m·n must be <= 2^32 (32-bit Philox element index), got "
                f"{m}·{n} = {m * n}"
            )
        out_target["A"] = _batched(target, (m, n), M, "target (A)", dtype, device)
        if offset is not None:
            off = _batched(offset, (m, k), M, "offset", dtype, device)
    else:
        W1, b1, a = params["W1"], params["b1"], params["a"]
        if W1.dim() != 3 or b1.shape != W1.shape[:2] or a.shape != W1.shape[:2]:
            raise ValueError(
                f"mlp params must be W1 (M, h, d), b1 (M, h), a (M, h), got {tuple(W1.shape)}, "
                f"{tuple(b1.shape)}, {tuple(a.shape)}"
            )
        if not isinstance(target, Mapping) or set(target) != {"W1", "b1", "a"}:
            raise ValueError("mlp needs target = teacher dict with keys W1 (h_t, d), b1, a (h_t,)")
        tW = real_tensor(target["W1"], "teacher W1")
        if tW.dim() not in (2, 3) or tW.shape[-1] != W1.shape[2]:
            raise ValueError(f"teacher W1 must be (h_t, {W1.shape[2]}) or (M, h_t, {W1.shape[2]})")
        ht = tW.shape[-2]
        out_target["W1"] = _batched(tW, (ht, W1.shape[2]), M, "teacher W1", dtype, device)
        out_target["b1"] = _batched(target["b1"], (ht,), M, "teacher b1", dtype, device)
        out_target["a"] = _batched(target["a"], (ht,), M, "teacher a", dtype, device)
    if model != "factorization" and offset is not None:
        raise ValueError("offset is only used by the factorization model")
    if model == "mlp" and batch is None:
        raise ValueError("mlp needs an int batch size (no population loss)")
    if batch is not None:
        try:
            batch = as_int(batch, "batch", minimum=1)
        except ValueError:
            raise ValueError(f"batch must be a positive int or None, got {batch!r}") from None
    try:
        seed = as_int(seed, "seed", minimum=0, below=2**64)
    except ValueError:
        raise ValueError(f"seed must be an int in [0, 2^64), got {seed!r}") from None
    # element index of the largest draw per model and step: x (B·d) in the batched models
    if batch is not None:
        d_in = params["u"].shape[1] if model == "rescaling" else params["W1"].shape[2]
        if batch * d_in > _PHILOX_WORD:
            raise ValueError(
                f"batch·d must be <= 2^32 (32-bit Philox element index), got {batch}·{d_in} = "
                f"{batch * d_in}"
            )
    # any integer dtype (int8 … uint64), compared in int64: no wrap of narrow dtypes at 2^32
    ids = philox_ids(model_ids, M, "model_ids", "model")
    problem = SweepProblem(
        model=model,
        n_models=M,
        gamma=per_item(gammas, M, "gammas", dtype, device, item="model"),
        eta=per_item(etas, M, "etas", dtype, device, item="model", positive=True),
        noise=sigma,
        batch=batch,
        seed=seed,
        model_ids=ids.to(torch.int64).contiguous(),
        target=out_target,
        offset=off,
        activation=activation,
    )
    return {k: params[k].detach().contiguous() for k in keys}, problem


def train_sweep(
    model: str,
    params: Mapping[str, torch.Tensor],
    gammas,
    etas,
    steps: int,
    batch: int | None,
    seed: int = 0,
    *,
    target=None,
    noise=0.0,
    model_ids=None,
    offset=None,
    activation: str = "tanh",
    step0: int = 0,
    record_every: int | None = None,
    backend: str = "auto",
) -> SweepResult:
    """Train M small models at once with per-model weight decay γ and step size η.

    θ_m ← θ_m − η_m ∇[ℓ_m(θ_m; batch of step t) + γ_m ‖θ_m‖²],  t = step0, …, step0 + steps − 1.

    Args:
        model: "rescaling", "factorization" or "mlp" (see the module docstring for each loss).
        params: dict of (M, ...) tensors (float32 / float64); not modified.
        gammas: weight decay γ ≥ 0, scalar or (M,). etas: step size η > 0, scalar or (M,).
        steps: number of steps (≥ 1). batch: samples per step, or None for the population /
            full-batch loss (rescaling, factorization).
        seed, model_ids: Philox identity of each model (default ids 0..M−1, each < 2^32);
            step0: absolute index of the first step, so a continued run draws the same data
            (step0 + steps <= 2^32: the Philox step word is 32-bit, it never wraps).
        target: β (rescaling), A (factorization) or the teacher dict (mlp); shared or per model.
        noise: label-noise std σ ≥ 0, scalar or (M,). offset: factorization symmetry breaker C.
        activation: "tanh" or "relu" (mlp). record_every: loss every K steps, 1 <= K <= steps
            (default: steps, i.e. the last step only).
        backend: "auto" (cpp on CPU, triton on CUDA, torch otherwise) or a backend name.

    Ctrl-C stops a long call with KeyboardInterrupt: the cpp kernel runs its steps in chunks of
    ~0.2 s and checks for it between them (the chunks change no number).

    Example::

        >>> import torch
        >>> from symkern.mirror.sweeps import train_sweep
        >>> M, d = 4, 10
        >>> ones = torch.ones(M, d, dtype=torch.float64)
        >>> p = {"u": 0.1 * ones, "w": 0.1 * ones}
        >>> gammas = torch.linspace(0, 1.5, M)  # per-model weight decay
        >>> r = train_sweep("rescaling", p, gammas, 0.1, 500, None, target=torch.ones(d))
        >>> r.params["u"].shape
        torch.Size([4, 10])
    """
    steps = as_int(steps, "steps", minimum=1)
    step0 = as_int(step0, "step0", minimum=0)
    # the Philox counter holds the step t = step0 … step0 + steps − 1 in a 32-bit word
    if step0 + steps > _PHILOX_WORD:
        raise ValueError(f"step0 + steps must be <= 2^32 (32-bit Philox step), got {step0 + steps}")
    record_every = steps if record_every is None else record_every
    record_every = as_int(record_every, "record_every", minimum=1)
    if record_every > steps:  # would record no loss at all
        raise ValueError(
            f"record_every must be <= steps ({steps}), got {record_every} (no step would be "
            "recorded)"
        )
    p, problem = sweep_problem(
        model, params, gammas, etas, batch=batch, seed=seed, target=target, noise=noise,
        model_ids=model_ids, offset=offset, activation=activation,
    )  # fmt: skip
    kernel = select_kernel("mirror_sweep", {**p, "problem": problem}, backend)
    out, losses = kernel.fn(p, problem, step0, steps, record_every)
    rec = step0 + record_every - 1 + record_every * torch.arange(steps // record_every)
    return SweepResult(out, losses, rec, kernel.backend)


# --- measurements and closed forms (used by the experiments and tests) -------------------------


def soft_threshold(beta: torch.Tensor, gamma: float) -> torch.Tensor:
    """sign(β) max(0, |β| − γ): the rescaling model's minimiser (Lasso with λ = 2γ)."""
    return torch.sign(beta) * torch.clamp(beta.abs() - gamma, min=0.0)


def closed_form_sparsity(beta: torch.Tensor, gamma: float) -> float:
    """P(|β_i| ≤ γ) on the realised β: the fraction of coordinates the minimiser zeroes."""
    require_values(beta, "beta", "the sparsity is a fraction of its values")
    return float((beta.abs() <= gamma).double().mean())


def closed_form_singular_values(A: torch.Tensor, gamma: float) -> torch.Tensor:
    """max(0, σ_i(A) − γ): the spectrum of the minimiser of ‖UWᵀ − A‖²_F + γ(‖U‖² + ‖W‖²)
    (k ≥ rank A)."""
    return torch.clamp(torch.linalg.svdvals(A.double()) - gamma, min=0.0)


def sparsity(u: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Fraction of coordinates with |u_i w_i| < eps, per model: (M, d) → (M,)."""
    return ((u * w).abs() < eps).double().mean(-1)


def effective_rank(mats: torch.Tensor, eps: float) -> torch.Tensor:
    """Number of singular values > eps, per matrix: (M, m, n) → (M,) int."""
    return (torch.linalg.svdvals(mats.double()) > eps).sum(-1)
