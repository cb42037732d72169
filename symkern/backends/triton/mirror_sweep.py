"""Triton kernels for ``mirror_sweep``: many (S)GD steps of M small models, one launch per call.

Math (the contract is :mod:`symkern.mirror.sweeps`; the oracle is
:mod:`symkern.backends.reference.mirror_sweeps`). Model m, absolute step t = step0, …,
step0 + steps − 1:

    θ_m ← θ_m − η_m ∇_θ [ℓ_B(θ_m; data of step t) + γ_m ‖θ_m‖²]

* ``rescaling``: θ = u ⊙ w (u, w (M, d)); batch B: x_b ~ normal(STREAM_DATA, index b·d + k),
  y_b = βᵀx_b + σ ε_b, ε_b ~ normal(STREAM_NOISE, b), ℓ = mean_b r_b², r_b = θᵀx_b − y_b
  (evaluated as (θ − β)ᵀx_b − σ ε_b: one reduction),
  ∇_θ ℓ = (2/B) Σ_b r_b x_b; ``batch=None``: ℓ = ‖θ − β‖² + σ², ∇_θ ℓ = 2(θ − β). Then
  ∇_u = ∇_θ ℓ ⊙ w + 2γu, ∇_w = ∇_θ ℓ ⊙ u + 2γw.
* ``factorization``: U (M, m, k), W (M, n, k), Uₑ = U + C (C the optional offset),
  R = Uₑ Wᵀ − A − σ Ξ, Ξ_ij ~ normal(STREAM_NOISE, i·n + j) (drawn only when σ_m ≠ 0),
  ℓ = ‖R‖²_F, ∇_U = 2 R W + 2γU, ∇_W = 2 Rᵀ Uₑ + 2γW.
* ``mlp``: f(x) = Σ_i a_i φ(w_iᵀx + b_i) (W1 (M, h, d), b1, a (M, h)), teacher f_t of the same
  form (h_t units), y_b = f_t(x_b) + σ ε_b with x, ε drawn as for the rescaling model,
  r_b = f(x_b) − y_b, ℓ = mean_b r_b², g_bi = (2/B) r_b a_i φ'(z_bi):
  ∇_W1 = Σ_b g_b x_bᵀ + 2γW1, ∇_b1 = Σ_b g_b + 2γb1, ∇_a = (2/B) Σ_b r_b φ(z_b) + 2γa.

The recorded loss is ℓ of step t's batch before the update, stored every ``record_every`` steps:
losses (M, steps // record_every).

Layout and what one program does
--------------------------------
One kernel per model kind, grid (M,): ONE program per model runs all ``steps`` steps in a loop
inside the kernel. The model's parameters, its target (β, A and C, or the teacher) and its
γ, η, σ are loaded once into registers, stay there for the whole call (loop-carried values) and
are written back once at the end; nothing of a step goes through global memory except the
recorded loss. Per step the program draws its data in-kernel (no data tensor exists), forms the
loss and the gradient, and updates the parameters. The batch is processed in chunks of BB rows
(a runtime loop over chunks), so B is unbounded: only the gradient accumulators, not the batch,
live across chunks. Every dimension is padded to a ``tl.constexpr`` power of two with masks
(an empty one to 1: a zero-size d, m, n, k, h or h_t gives the reference's result; padded
parameters, targets and samples are zero and stay zero; padded batch rows are masked out
of the residual). Products are broadcast-multiply-and-sum reductions in registers:
(B_chunk, d) for the rescaling model, (m, n, k) for the factorization, (B_chunk, h, d) for the
MLP.

Random numbers: Triton's Philox4x32-10 with key (seed lo32, seed hi32) and counter
(index, step, model id, stream) through the helpers of :mod:`symkern.backends.triton.particles`,
bit-identical to :mod:`symkern.meanfield.rng`. As in the reference, uniforms and Box–Muller are
evaluated in float64 and the normals then rounded to the working dtype, so float32 runs see
exactly the reference's float32 data.

Limits
------
A model must fit one program's registers (padded sizes): d ≤ ``MAX_ROW`` (4096) for the
rescaling model, max(h, h_t)·d ≤ ``MAX_ROW`` for the MLP, m·n·k ≤ ``MAX_TILE`` (16384) for the
factorization (the m = 20, n = 15, k = 15 experiment pads to 32·16·16 = 8192). Past these the
registry's ``check`` gives the reason, so ``backend="auto"`` picks another backend and a forced
``backend="triton"`` raises. The batch chunk BB is the smallest power of two ≥ B, capped so
that BB·d ≤ ``CHUNK_DRAW`` (2048 normals drawn at once: Philox is register-hungry) and, for the MLP,
BB·max(h, h_t)·d ≤ ``CHUNK_TILE`` (8192). These numbers come from ``ptxas -v`` (sm_90a) on the
launcher's configurations compiled, not run, without a GPU: at the limits (factorization
32·32·16, MLP 64·64 with BB = 2, rescaling population d = 4096) and at the experiment shapes
no register spills in float32 or float64 (≤ 255 registers at 8 warps); only the batched
rescaling model at d = 4096 (BB = 1, 4096 normals per chunk) spills 76 bytes in float64.
One program per model means a launch fills at most M SMs: the kernel is for sweeps of many
small models, not one big one.

Precision: every product and sum in the parameters' dtype (float32 or float64) with plain
multiply-add reductions — no ``tl.dot``, so no TF32 — so float32 differs from the float64
reference by float32 rounding of the same operations (summation order differs). Every 3-D
reduction runs over axis 0 or the last axis: Triton rewrites a sum over the middle axis of
x[:, :, None] * y[None, :, :] into a tt.dot, TF32 in Triton ≤ 3.6 (tests/test_triton_codegen.py).
tanh is the ``exp(-2|z|)`` form of the particle kernels (~1 ulp). On a GPU Triton may contract
a·b + c into FMAs (TRITON_DEFAULT_FP_FUSION), again a rounding-level difference. On an H100
(Triton 3.6, 2026-11-22) the contract test passed for every case; the float32 factorization
failed there with the middle-axis sum (2e-4 error, TF32), which led to the rule above and was
not re-run on a GPU after the change. No GPU timing yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import triton
import triton.language as tl

from symkern.backends.registry import register_kernel
from symkern.backends.triton import on_tensor_device
from symkern.backends.triton.particles import _act, _normal
from symkern.mirror.sweeps import MODELS, SweepProblem

__all__ = ["CHUNK_DRAW", "CHUNK_TILE", "MAX_ROW", "MAX_TILE", "mirror_sweep_triton"]

# register budgets of one program, in padded elements (see "Limits" in the module docstring)
MAX_ROW = 1 << 12  # rescaling d; mlp max(h, h_t)·d: the parameters a program holds
MAX_TILE = 1 << 14  # factorization m·n·k: its (m, n, k) product tile
CHUNK_DRAW = 1 << 11  # normals drawn per batch chunk, BB·d
CHUNK_TILE = 1 << 13  # mlp (BB, max(h, h_t), d) product tile per batch chunk

_STREAM_DATA = tl.constexpr(0)  # symkern.meanfield.rng.STREAM_DATA
_STREAM_NOISE = tl.constexpr(1)  # rng.STREAM_NOISE
_ACT_CODES = {"tanh": 0, "relu": 2}  # the activation codes of particles._act


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _normal_dt(idx, t, run, STREAM: tl.constexpr, k0, k1, DT: tl.constexpr):
    # the reference draws float64 normals and rounds them to the working dtype: do the same
    return _normal(idx.to(tl.uint32), t, run, STREAM, k0, k1, tl.float64).to(DT)


@triton.jit(do_not_specialize=["d", "B", "step0", "steps", "record_every", "S", "k0", "k1"])
def _rescaling_kernel(
    u_ptr, w_ptr,  # (M, d) in
    u_out, w_out,  # (M, d) out
    beta_ptr,  # (M, d)
    gamma_ptr, eta_ptr, noise_ptr,  # (M,)
    run_ptr,  # (M,) int32: model id mod 2^32
    loss_ptr,  # (M, S)
    d, B, step0, steps, record_every, S, k0, k1,
    POPULATION: tl.constexpr, D_BLK: tl.constexpr, BB: tl.constexpr,
):  # fmt: skip
    m64 = tl.program_id(0).to(tl.int64)
    DT = u_ptr.dtype.element_ty
    ki = tl.arange(0, D_BLK)
    k_ok = ki < d
    offs = m64 * d + ki
    u = tl.load(u_ptr + offs, mask=k_ok, other=0.0)
    w = tl.load(w_ptr + offs, mask=k_ok, other=0.0)
    beta = tl.load(beta_ptr + offs, mask=k_ok, other=0.0)
    gam = tl.load(gamma_ptr + m64)
    eta = tl.load(eta_ptr + m64)
    sig = tl.load(noise_ptr + m64)
    run = tl.load(run_ptr + m64)
    key0 = k0.to(tl.uint32)
    key1 = k1.to(tl.uint32)
    bi = tl.arange(0, BB)

    for ls in range(0, steps):
        t = step0 + ls
        theta = u * w
        if POPULATION:
            diff = theta - beta
            loss = tl.sum(diff * diff, axis=0) + sig * sig
            g = 2.0 * diff
        else:
            g = tl.zeros((D_BLK,), dtype=DT)
            lrow = tl.zeros((BB,), dtype=DT)
            dtb = theta - beta
            for b0 in range(0, B, BB):
                b = (b0 + bi).to(tl.int64)
                b_ok = b < B
                x_ok = b_ok[:, None] & k_ok[None, :]
                x = _normal_dt(b[:, None] * d + ki[None, :], t, run, _STREAM_DATA, key0, key1, DT)
                x = tl.where(x_ok, x, 0.0)
                eps = _normal_dt(b, t, run, _STREAM_NOISE, key0, key1, DT)
                # r = θᵀx − (βᵀx + σε) as one reduction (same value up to rounding)
                r = tl.where(b_ok, tl.sum(x * dtb[None, :], axis=1) - sig * eps, 0.0)
                lrow += r * r
                g += tl.sum(x * r[:, None], axis=0)
            loss = tl.sum(lrow, axis=0) / B.to(DT)
            g = (2.0 / B.to(DT)) * g
        if (ls + 1) % record_every == 0:
            tl.store(loss_ptr + m64 * S + (ls + 1) // record_every - 1, loss)
        gu = g * w + 2.0 * gam * u
        gw = g * u + 2.0 * gam * w
        u = u - eta * gu
        w = w - eta * gw
    tl.store(u_out + offs, u, mask=k_ok)
    tl.store(w_out + offs, w, mask=k_ok)


@triton.jit(do_not_specialize=["m", "n", "k", "step0", "steps", "record_every", "S", "k0", "k1"])
def _factorization_kernel(
    U_ptr, W_ptr,  # (M, m, k), (M, n, k) in
    U_out, W_out,  # out
    A_ptr,  # (M, m, n)
    C_ptr,  # (M, m, k) offset, or any tensor when HAS_OFFSET is False
    gamma_ptr, eta_ptr, noise_ptr,  # (M,)
    run_ptr,  # (M,) int32
    loss_ptr,  # (M, S)
    m, n, k, step0, steps, record_every, S, k0, k1,
    HAS_OFFSET: tl.constexpr, M_BLK: tl.constexpr, N_BLK: tl.constexpr, K_BLK: tl.constexpr,
):  # fmt: skip
    m64 = tl.program_id(0).to(tl.int64)
    DT = U_ptr.dtype.element_ty
    ii = tl.arange(0, M_BLK)
    jj = tl.arange(0, N_BLK)
    ll = tl.arange(0, K_BLK)
    mk_ok = (ii < m)[:, None] & (ll < k)[None, :]
    nk_ok = (jj < n)[:, None] & (ll < k)[None, :]
    mn_ok = (ii < m)[:, None] & (jj < n)[None, :]
    mk_offs = m64 * m * k + ii[:, None] * k + ll[None, :]
    nk_offs = m64 * n * k + jj[:, None] * k + ll[None, :]
    U = tl.load(U_ptr + mk_offs, mask=mk_ok, other=0.0)
    W = tl.load(W_ptr + nk_offs, mask=nk_ok, other=0.0)
    A = tl.load(A_ptr + m64 * m * n + ii[:, None] * n + jj[None, :], mask=mn_ok, other=0.0)
    if HAS_OFFSET:
        C = tl.load(C_ptr + mk_offs, mask=mk_ok, other=0.0)
    gam = tl.load(gamma_ptr + m64)
    eta = tl.load(eta_ptr + m64)
    sig = tl.load(noise_ptr + m64)
    run = tl.load(run_ptr + m64)
    key0 = k0.to(tl.uint32)
    key1 = k1.to(tl.uint32)
    xi_idx = ii.to(tl.int64)[:, None] * n + jj[None, :]

    for ls in range(0, steps):
        t = step0 + ls
        Ue = U
        if HAS_OFFSET:
            Ue = U + C
        R = tl.sum(Ue[:, None, :] * W[None, :, :], axis=2) - A  # (m, n)
        if sig != 0:  # the reference draws Ξ only for noisy runs; σ = 0 would add exact zeros
            xi = _normal_dt(xi_idx, t, run, _STREAM_NOISE, key0, key1, DT)
            R = R - sig * tl.where(mn_ok, xi, 0.0)
        loss = tl.sum(tl.sum(R * R, axis=1), axis=0)
        if (ls + 1) % record_every == 0:
            tl.store(loss_ptr + m64 * S + (ls + 1) // record_every - 1, loss)
        # Σ_j R_ij W_jl reduced over the LAST axis: the axis-1 form becomes an implicit TF32
        # tt.dot in Triton <= 3.6 (particles.py, _apply_rows_t)
        gU = 2.0 * tl.sum(R[:, None, :] * tl.trans(W)[None, :, :], axis=2) + 2.0 * gam * U
        gW = 2.0 * tl.sum(R[:, :, None] * Ue[:, None, :], axis=0) + 2.0 * gam * W
        U = U - eta * gU
        W = W - eta * gW
    tl.store(U_out + mk_offs, U, mask=mk_ok)
    tl.store(W_out + nk_offs, W, mask=nk_ok)


@triton.jit(
    do_not_specialize=["h", "ht", "d", "B", "step0", "steps", "record_every", "S", "k0", "k1"]
)
def _mlp_kernel(
    W1_ptr, b1_ptr, a_ptr,  # (M, h, d), (M, h), (M, h) in
    W1_out, b1_out, a_out,  # out
    tW1_ptr, tb1_ptr, ta_ptr,  # teacher (M, h_t, d), (M, h_t), (M, h_t)
    gamma_ptr, eta_ptr, noise_ptr,  # (M,)
    run_ptr,  # (M,) int32
    loss_ptr,  # (M, S)
    h, ht, d, B, step0, steps, record_every, S, k0, k1,
    ACT: tl.constexpr, H_BLK: tl.constexpr, HT_BLK: tl.constexpr, D_BLK: tl.constexpr,
    BB: tl.constexpr,
):  # fmt: skip
    m64 = tl.program_id(0).to(tl.int64)
    DT = W1_ptr.dtype.element_ty
    hi = tl.arange(0, H_BLK)
    ti = tl.arange(0, HT_BLK)
    ki = tl.arange(0, D_BLK)
    bi = tl.arange(0, BB)
    h_ok = hi < h
    t_ok = ti < ht
    k_ok = ki < d
    hd_ok = h_ok[:, None] & k_ok[None, :]
    hd_offs = m64 * h * d + hi[:, None] * d + ki[None, :]
    W1 = tl.load(W1_ptr + hd_offs, mask=hd_ok, other=0.0)
    b1 = tl.load(b1_ptr + m64 * h + hi, mask=h_ok, other=0.0)
    a = tl.load(a_ptr + m64 * h + hi, mask=h_ok, other=0.0)
    # padded teacher units have a_t = 0, so they add nothing to y
    tW1 = tl.load(tW1_ptr + m64 * ht * d + ti[:, None] * d + ki[None, :],
                  mask=t_ok[:, None] & k_ok[None, :], other=0.0)  # fmt: skip
    tb1 = tl.load(tb1_ptr + m64 * ht + ti, mask=t_ok, other=0.0)
    ta = tl.load(ta_ptr + m64 * ht + ti, mask=t_ok, other=0.0)
    gam = tl.load(gamma_ptr + m64)
    eta = tl.load(eta_ptr + m64)
    sig = tl.load(noise_ptr + m64)
    run = tl.load(run_ptr + m64)
    key0 = k0.to(tl.uint32)
    key1 = k1.to(tl.uint32)

    for ls in range(0, steps):
        t = step0 + ls
        gW1 = tl.zeros((H_BLK, D_BLK), dtype=DT)
        gb1 = tl.zeros((H_BLK,), dtype=DT)
        ga = tl.zeros((H_BLK,), dtype=DT)
        lrow = tl.zeros((BB,), dtype=DT)
        for b0 in range(0, B, BB):
            b = (b0 + bi).to(tl.int64)
            b_ok = b < B
            x = _normal_dt(b[:, None] * d + ki[None, :], t, run, _STREAM_DATA, key0, key1, DT)
            x = tl.where(b_ok[:, None] & k_ok[None, :], x, 0.0)  # (BB, D)
            eps = _normal_dt(b, t, run, _STREAM_NOISE, key0, key1, DT)
            zt = tl.sum(x[:, None, :] * tW1[None, :, :], axis=2) + tb1[None, :]  # (BB, H_t)
            st, _ = _act(zt, ACT)
            y = tl.sum(st * ta[None, :], axis=1) + sig * eps
            z = tl.sum(x[:, None, :] * W1[None, :, :], axis=2) + b1[None, :]  # (BB, H)
            s, ds = _act(z, ACT)
            # padded rows have x = 0 but z = b1 and y = f_t(0) ≠ 0: mask them out of r
            r = tl.where(b_ok, tl.sum(s * a[None, :], axis=1) - y, 0.0)
            lrow += r * r
            gz = r[:, None] * a[None, :] * ds  # (BB, H), without the 2/B
            gW1 += tl.sum(gz[:, :, None] * x[:, None, :], axis=0)
            gb1 += tl.sum(gz, axis=0)
            ga += tl.sum(s * r[:, None], axis=0)
        bf = B.to(DT)
        loss = tl.sum(lrow, axis=0) / bf
        if (ls + 1) % record_every == 0:
            tl.store(loss_ptr + m64 * S + (ls + 1) // record_every - 1, loss)
        c = 2.0 / bf
        W1 = W1 - eta * (c * gW1 + 2.0 * gam * W1)
        b1 = b1 - eta * (c * gb1 + 2.0 * gam * b1)
        a = a - eta * (c * ga + 2.0 * gam * a)
    tl.store(W1_out + hd_offs, W1, mask=hd_ok)
    tl.store(b1_out + m64 * h + hi, b1, mask=h_ok)
    tl.store(a_out + m64 * h + hi, a, mask=h_ok)


# ---------------------------------------------------------------------------------------------
# launcher
# ---------------------------------------------------------------------------------------------


def _P2(n: int) -> int:
    """The padded size of a dimension n: the smallest power of two >= max(n, 1) (an empty
    dimension is padded to one masked element, so its blocks and aranges are never empty)."""
    return triton.next_power_of_2(max(int(n), 1))


def _padded_sizes(problem: SweepProblem, params: Mapping[str, torch.Tensor]):
    """(model size: padded elements, its limit, its description; padded elements per batch row
    of the chunk's product tile; padded d of a batch row) for the limits and the batch chunk."""
    if problem.model == "rescaling":
        d = params["u"].shape[1]
        return _P2(d), MAX_ROW, f"d = {d}", _P2(d), _P2(d)
    if problem.model == "factorization":
        (m, k), n = params["U"].shape[1:], params["W"].shape[1]
        return _P2(m) * _P2(n) * _P2(k), MAX_TILE, f"m·n·k = {m}·{n}·{k}", 1, 1
    h, d = params["W1"].shape[1:]
    ht = problem.target["W1"].shape[1]
    row = max(_P2(h), _P2(ht)) * _P2(d)
    return row, MAX_ROW, f"max(h, h_t)·d = max({h}, {ht})·{d}", row, _P2(d)


def _limit_reasons(problem: SweepProblem, params: Mapping[str, torch.Tensor]) -> list[str]:
    size, limit, what, _, _ = _padded_sizes(problem, params)
    if size <= limit:
        return []
    return [
        f"the triton mirror_sweep kernel keeps each model in one program's registers: needs the "
        f"padded {what} to be at most {limit} elements (got {size}); use the cpp or torch "
        "backend for models this large"
    ]


def _shape_errors(params: Mapping[str, torch.Tensor], problem: SweepProblem) -> list[str]:
    """Everything that makes a call malformed (sweep_problem guarantees none of it; a direct
    call of the kernel might not)."""
    if problem.model not in MODELS:
        return [f"problem.model must be one of {list(MODELS)}, got {problem.model!r}"]
    keys = MODELS[problem.model]
    if set(params) != set(keys):
        return [f"params must have keys {keys}, got {sorted(params)}"]
    M = problem.n_models
    errors = []
    first = params[keys[0]]
    for key in keys:
        v = params[key]
        if v.dtype not in (torch.float32, torch.float64):
            errors.append(f"params[{key!r}] must be float32 or float64, got {v.dtype}")
        if v.dtype != first.dtype or v.device != first.device:
            errors.append("all params must share dtype and device")
        if v.dim() < 1 or v.shape[0] != M:
            errors.append(f"params[{key!r}] must have leading dimension M = {M}")
    for name in ("gamma", "eta", "noise", "model_ids"):
        if tuple(getattr(problem, name).shape) != (M,):
            errors.append(f"problem.{name} must have shape ({M},)")
    if errors:
        return errors
    if problem.model == "rescaling":
        want = {"beta": tuple(first.shape)}
        if tuple(params["w"].shape) != tuple(first.shape) or first.dim() != 2:
            errors.append("rescaling params u, w must both be (M, d)")
    elif problem.model == "factorization":
        U, W = params["U"], params["W"]
        if U.dim() != 3 or W.dim() != 3 or U.shape[2] != W.shape[2]:
            return ["factorization params must be U (M, m, k) and W (M, n, k)"]
        want = {"A": (M, U.shape[1], W.shape[1])}
        if problem.offset is not None and tuple(problem.offset.shape) != tuple(U.shape):
            errors.append(f"problem.offset must have shape {tuple(U.shape)}")
        if problem.batch is not None:
            errors.append("factorization needs problem.batch = None")
    else:
        W1 = params["W1"]
        if W1.dim() != 3 or params["b1"].shape != W1.shape[:2] or params["a"].shape != W1.shape[:2]:
            return ["mlp params must be W1 (M, h, d), b1 (M, h), a (M, h)"]
        tW1 = problem.target.get("W1")
        if not isinstance(tW1, torch.Tensor) or tW1.dim() != 3:
            return ["mlp problem.target['W1'] must be (M, h_t, d)"]
        ht = tW1.shape[1]
        want = {"W1": (M, ht, W1.shape[2]), "b1": (M, ht), "a": (M, ht)}
        if problem.activation not in _ACT_CODES:
            errors.append(f"activation must be one of {list(_ACT_CODES)}")
    for name, shape in want.items():
        tens = problem.target.get(name)
        if not isinstance(tens, torch.Tensor) or tuple(tens.shape) != shape:
            errors.append(f"problem.target[{name!r}] must have shape {shape}")
    if problem.model == "mlp" or (problem.model == "rescaling" and problem.batch is not None):
        if not isinstance(problem.batch, int) or problem.batch < 1:
            errors.append(f"problem.batch must be a positive int, got {problem.batch!r}")
    return errors


def _device_reasons(params: Mapping[str, torch.Tensor], problem: SweepProblem) -> list[str]:
    dev = next(iter(params.values())).device
    tensors = {f"problem.{n}": getattr(problem, n) for n in ("gamma", "eta", "noise", "offset")}
    tensors.update({f"problem.target[{k!r}]": v for k, v in problem.target.items()})
    return [
        f"{name} is on {t.device}, the params on {dev}"
        for name, t in tensors.items()
        if isinstance(t, torch.Tensor) and t.device != dev
    ]


@on_tensor_device
def mirror_sweep_triton(
    params: Mapping[str, torch.Tensor],
    problem: SweepProblem,
    step0: int,
    steps: int,
    record_every: int,
    *,
    block_b: int | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``steps`` (S)GD steps of every model from absolute step ``step0`` (module docstring).

    params {name: (M, ...)} float32/float64 → (params_out {name: (M, ...)} new tensors,
    losses (M, steps // record_every)). ``block_b`` overrides the batch chunk (rounded up to a
    power of two; tests use it to exercise several chunks on small batches).

    Example::

        out, losses = mirror_sweep_triton(params, problem, 0, 100, 10)
    """
    errors = _shape_errors(params, problem) + _device_reasons(params, problem)
    if errors:
        raise ValueError("mirror_sweep (triton): " + "; ".join(dict.fromkeys(errors)))
    for name, val, low in (("step0", step0, 0), ("steps", steps, 1),
                           ("record_every", record_every, 1)):  # fmt: skip
        if isinstance(val, bool) or not isinstance(val, int) or val < low:
            raise ValueError(f"{name} must be an int >= {low}, got {val!r}")
    if block_b is not None and (not isinstance(block_b, int) or block_b < 1):
        raise ValueError(f"block_b must be a positive int, got {block_b!r}")
    reasons = _limit_reasons(problem, params)
    if reasons:
        raise ValueError("; ".join(reasons))

    p = {k: v.detach().contiguous() for k, v in params.items()}
    first = next(iter(p.values()))
    dtype, dev = first.dtype, first.device
    M = problem.n_models
    S = steps // record_every
    out = {k: torch.empty_like(v) for k, v in p.items()}
    losses = torch.empty((M, S), dtype=dtype, device=dev)

    def f(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=dev, dtype=dtype).contiguous()

    seed = int(problem.seed)
    k0, k1 = seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF
    runs = problem.model_ids.to(torch.int64) & 0xFFFFFFFF
    runs = torch.where(runs >= 2**31, runs - 2**32, runs).to(device=dev, dtype=torch.int32)
    hyper = (f(problem.gamma), f(problem.eta), f(problem.noise), runs.contiguous(), losses)
    size, _, _, row, d_pad = _padded_sizes(problem, p)
    B = problem.batch if problem.batch is not None else 1
    if block_b is None:
        BB = max(1, min(_P2(B), CHUNK_DRAW // d_pad, CHUNK_TILE // row))
    else:
        BB = _P2(block_b)
    # 4 warps while a program's largest tile is small; 8 (up to 255 registers per thread) else
    nw = 4 if max(size, BB * row) <= 1024 else 8
    timing = (int(step0), steps, record_every, S, k0, k1)

    if problem.model == "rescaling":
        d = first.shape[1]
        _rescaling_kernel[(M,)](
            p["u"], p["w"], out["u"], out["w"], f(problem.target["beta"]), *hyper,
            d, B, *timing,
            POPULATION=problem.batch is None, D_BLK=_P2(d), BB=BB, num_warps=nw,
        )  # fmt: skip
    elif problem.model == "factorization":
        (m, k), n = p["U"].shape[1:], p["W"].shape[1]
        has_off = problem.offset is not None
        _factorization_kernel[(M,)](
            p["U"], p["W"], out["U"], out["W"], f(problem.target["A"]),
            f(problem.offset) if problem.offset is not None else p["U"], *hyper,
            m, n, k, *timing,
            HAS_OFFSET=has_off, M_BLK=_P2(m), N_BLK=_P2(n), K_BLK=_P2(k), num_warps=nw,
        )  # fmt: skip
    else:
        h, d = p["W1"].shape[1:]
        tg = problem.target
        ht = tg["W1"].shape[1]
        _mlp_kernel[(M,)](
            p["W1"], p["b1"], p["a"], out["W1"], out["b1"], out["a"],
            f(tg["W1"]), f(tg["b1"]), f(tg["a"]), *hyper,
            h, ht, d, B, *timing,
            ACT=_ACT_CODES[problem.activation], H_BLK=_P2(h), HT_BLK=_P2(ht), D_BLK=_P2(d),
            BB=BB, num_warps=nw,
        )  # fmt: skip
    return out, losses


# ---------------------------------------------------------------------------------------------
# public entry point (registry)
# ---------------------------------------------------------------------------------------------


def _check(inputs: Mapping[str, Any]) -> list[str]:
    problem = inputs.get("problem")
    if not isinstance(problem, SweepProblem):
        return ["mirror_sweep needs a SweepProblem"]
    params = {k: v for k, v in inputs.items() if k != "problem"}
    errors = _shape_errors(params, problem)
    if errors:
        return errors
    return _limit_reasons(problem, params) + _device_reasons(params, problem)


@register_kernel("mirror_sweep", "triton", dtypes=(torch.float32, torch.float64), check=_check)
def mirror_sweep(
    params: dict[str, torch.Tensor],
    problem: SweepProblem,
    step0: int,
    steps: int,
    record_every: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """params {name: (M, ...)} → (params_out, losses (M, steps // record_every)).

    ``steps`` (S)GD steps of all M models from absolute step ``step0``, one program per model
    (see the module docstring for the math, the layout and the size limits).
    """
    return mirror_sweep_triton(params, problem, step0, steps, record_every)
