"""Triton kernels for ``particle_steps``: many SGD / Langevin steps of many mean-field runs.

Math (the contract is :mod:`symkern.meanfield.problem`; the oracle is
:mod:`symkern.backends.reference.particles`). Run r has N particles θ_i ∈ R^D of one unit,
Φ_θ(x) = (1/N) Σ_i σ*(x, θ_i). Per absolute step t every run

1. draws its batch in-kernel: x_b = σ_π·normal(STREAM_DATA, index b·d + k) and
   y_b = Σ_m w_m σ*(x_b, teacher_m) (or reads x_data[t - step0, r], y_data[t - step0, r]);
2. forms its scheme's samples and particles: data copies x_ab = R_ab x_b, y_ab = ρ̂ y_b
   (DA: a = g over the whole group, B_eff = B·|G|; DA-sample: one g_b = randint(STREAM_AUGMENT, b);
   otherwise R = I, B_eff = B) and particle copies T_f θ_i (FA: T_f = M_g for every g, n_f = |G|;
   EA: T = P; otherwise T = I);
3. forward: Φ_a(x) = (1/(N n_f)) Σ_i Σ_f σ*(x_ab, T_f θ_i), residual e_ab = 2(Φ_a − y_ab)/B_eff,
   loss ℓ = (1/B_eff) Σ ‖Φ_a − y_ab‖²;
4. backward, written out analytically (no autograd): per particle
   g_i = (1/n_f) Σ_f T_fᵀ Σ_{a,b} J_σ(x_ab, T_f θ_i)ᵀ e_ab with
   matrix unit (z ∈ R^{c×d}, σ*_k = s_k = sigmoid(Σ_j z_kj x_j)):  ∂σ*_k/∂z_kj = s_k(1 − s_k) x_j;
   standard unit (z = (a, w, b), σ*_k = a_k act(u), u = w·x + b):  ∂_a_k = act(u) e_k,
   ∂_w = (Σ_k a_k e_k) act'(u) x, ∂_b = (Σ_k a_k e_k) act'(u)   (relu' = 1[u > 0]);
5. update  θ_i ← θ_i − (α/N)[g_i + 2τ T_rᵀ T_r θ_i] + sqrt(2βα/N) ξ_i  (T_r = P for EA, else I),
   ξ_i = normal4(STREAM_NOISE, index i·D + k), replaced by P ξ_i for EA runs and project_noise runs;
6. every ``snapshot_every`` steps θ and ℓ are recorded.

Shapes: theta (R, N, D) float32 / float64 → theta_out (R, N, D), snapshots (R, S, N, D),
losses (R, S), S = steps // snapshot_every. Random numbers: Triton's Philox4x32-10 with key
(seed lo32, seed hi32) and counter (index, step, run_id, stream), bit-identical to
:mod:`symkern.meanfield.rng`; uniforms, normals and Box–Muller are evaluated in the particles'
dtype (the reference evaluates them in float64 and rounds), so float32 differs by rounding only.

Design
------
**Fused multi-step kernel** (``path="fused"``; the paper regime, N ≲ 5000, D = 4, B = 20). ONE
program per run, all R runs in one launch, and the loop over all ``steps`` inside the kernel, so
a run's particles stay L1/L2-resident for the whole call and no launch is paid per step. Per step
the program generates its batch and labels in registers, then

* forward: for each data copy a, a loop over particle blocks (BLOCK_N particles × D) accumulates
  Φ_a (B, c) in registers (for FA an inner runtime loop over the |G| particle copies: the N·|G|
  symmetrised particles are never materialised); the expanded inputs x_a and residuals e_a go to a
  tiny per-run scratch (R, |G|, B, ·) that stays in L1;
* backward: a loop over particle blocks that accumulates the gradient over data and particle
  copies in registers and writes the updated block (and its snapshot) in place.

Scheme and project_noise are runtime values per run (runtime trip counts n_a, n_f and runtime
branches), so one launch mixes every scheme; the unit kind, activation, c, d and D are
``tl.constexpr``. Inputs are kept "expanded" to the parameter layout (x̃ (B, D): x_{m mod d} for
the matrix unit; (0_c, x, 1) for the standard unit) so every unit's products are
(B, BLOCK_N, D) broadcasts reduced in registers. The whole batch lives on chip: B·D ≤
``FUSED_MAX_BD``, and the (B, D, d) expansion tile is bounded for compile time: padded
B·D·d ≤ ``FUSED_MAX_EXPAND``, matrix unit c ≤ ``FUSED_MAX_MATRIX_C``; |G| ≤ ``MAX_GROUP``
(runtime loops, so the cap only bounds the scratch and the O(|G|) cost per step). Precision:
every product and sum in the particles' dtype (fp32 or fp64, no TF32).

**Two-pass step** (``path="two_pass"``; the GPU regime: standard unit, every run vanilla, no
projected noise, N up to ~1e6, B up to ~1e4, D ≤ 256). Per step four launches, no B×N buffer:

1. data: x̃ (R, B, D) expanded inputs and y (R, B, c) labels (in-kernel RNG + teacher);
2. forward: grid (run, batch block, split of N); Z = X̃ Θᵀ with ``tl.dot`` (the bias rides in the
   constant column of X̃), H = act(Z), partial Φ += H A; partials (R, SPLIT, B, c) are summed
   deterministically by
3. residual: one program per run: e = 2(Φ − y)/B, ℓ;
4. backward + update: grid (run, particle block); recompute Z, H, act'(Z) per batch block
   (FlashAttention-style), accumulate ∂a = Hᵀ E and ∂(w, b) = ((E Aᵀ) ⊙ act'(Z))ᵀ X̃ in registers,
   then write θ ← θ − (α/N)(g + 2τθ) + sqrt(2βα/N) ξ in place.

Precision of the two-pass path: float32 products on a GPU follow torch's switch for float32
matrix products, ``torch.backends.cuda.matmul.allow_tf32`` (off by default; on after
``torch.set_float32_matmul_precision("high")``): on, they use TF32 tensor cores (10-bit mantissa
inputs, fp32 accumulation; ~1e-3 relative error of Z for d = 100), off, IEEE fp32 products.
``allow_tf32=`` overrides the switch per call; float64, and everything under the interpreter,
use IEEE products.
The launcher picks it automatically when the problem qualifies and N·B ≥ ``TWO_PASS_MIN_NB``;
``path=`` forces any path (tests use it).

**Split fused step** (``path="split"``; few runs of many particles on a GPU: the paper's N = 5000
at R = 1 kept one SM of 132 busy, 1.1 ms per step on an H100). The fused kernel, with each run's
particles split over P programs (grid (R, P)) and one step per pair of launches: PHASE 1 draws
the batch and writes each program's partial Φ_a (R, P, |G|, B, c), PHASE 2 sums the P partials
into the residuals (each program for itself) and updates the program's particles. Every scheme;
same arithmetic as the fused path except the order of the sum over particles. Auto on a GPU
when N ≥ ``SPLIT_MIN_N`` and 2R < SMs.

**Fused model output** (ops ``particle_forward`` / ``particle_forward_backward``, behind
:func:`symkern.model_output`): Φ_θ(x_b) = (1/N) Σ_i σ*(x_b, θ_i) for x (B, d), θ (N, D) → (B, c)
and, from r = (∂L/∂Φ)/N, ∂L/∂θ_i = Σ_b J_θ σ*(x_b, θ_i)ᵀ r_b (N, D) and ∂L/∂x_b =
Σ_i J_x σ*(x_b, θ_i)ᵀ r_b (B, d). Never a B×N buffer: the forward has a grid over sample tiles
and loops over particle tiles; the backward recomputes the activations (FlashAttention-style) in
two kernels, ∂θ (grid over particle tiles, loop over sample tiles) and ∂x (grid over sample
tiles, loop over particle tiles). The matrix unit's c outputs are independent heads
(pre_k = X Z_kᵀ), one program per head; the reduced axis may be split across programs (partials
added once at the end) so small grids still fill a GPU. Precision: IEEE products and sums in the
input dtype (fp32 or fp64; no TF32 — the float32 tolerance is 2e-5 relative). Limits: d ≤
``PF_MAX_DIN`` and, for the standard unit, c ≤ ``PF_MAX_C`` (whole rows live in registers).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import triton
import triton.language as tl
from triton.language.random import philox_impl

from symkern.backends.registry import register_kernel, triton_interpreter_enabled
from symkern.backends.triton import on_tensor_device
from symkern.meanfield.problem import SCHEMES, ParticleProblem, fa_kernel_reasons
from symkern.meanfield.units import MatrixUnit, StandardUnit, Unit

__all__ = [
    "FUSED_MAX_BD",
    "MAX_GROUP",
    "PF_MAX_C",
    "PF_MAX_DIN",
    "TWO_PASS_MIN_NB",
    "particle_forward_backward_triton",
    "particle_forward_triton",
    "particle_steps_triton",
]

MAX_GROUP = 256  # |G| cap of the fused kernel (scratch (R, |G|, B, D) and O(|G|) work per step)
FUSED_MAX_BD = 8192  # the fused kernel keeps the whole batch (B × D, padded) on chip
# ... and expands it through a (B, D, d) register tile (padded): StandardUnit(100, 1) at B = 20
# (32·128·128) did not compile for sm_90 in 15 minutes; 16384 keeps compiles to seconds
FUSED_MAX_EXPAND = 16384
FUSED_MAX_MATRIX_C = 16  # matrix unit: c static_range-unrolled heads (c = 64 never compiled)
TWO_PASS_MAX_D = 256  # the two-pass kernel keeps a (BLOCK_N, D) gradient tile in registers
TWO_PASS_MIN_NB = 1 << 20  # auto: N·B at or above this uses the two-pass path (when eligible)
# auto on a GPU: a run of at least SPLIT_MIN_N particles is split over programs when the runs
# alone leave most SMs idle (R < SMs / 2); each program then owns at most ~N / SPLIT_MAX_P
SPLIT_MIN_N = 512
SPLIT_MAX_P = 64
# two-pass (batch block, particle block, warps, stages) of the forward and backward kernels for
# float32 on CUDA with D_BLK <= 128 and C_BLK <= 16, measured on an H100
# (bench/tune_particles_gpu.py, d = 100, c = 1, N = 1e6, B = 1e4, TF32; 2026-11-24): a
# 128-sample forward block reads Θ half as often (140.5 -> 123.7 ms/step), a 128-particle
# backward block reads X̃ half as often (140.5 -> 130.3 ms/step); both: 113.9
TWO_PASS_CUDA_F32_TILES = {"fwd": (128, 64, 8, 3), "bwd": (64, 128, 8, 3)}

_STREAM_DATA = tl.constexpr(0)  # symkern.meanfield.rng.STREAM_DATA
_STREAM_NOISE = tl.constexpr(1)  # rng.STREAM_NOISE
_STREAM_AUGMENT = tl.constexpr(2)  # rng.STREAM_AUGMENT


# ---------------------------------------------------------------------------------------------
# kernels: helpers
# ---------------------------------------------------------------------------------------------


@triton.jit
def _philox(idx, t, run, STREAM: tl.constexpr, k0, k1):
    # counter (index, step, run_id, stream), key (seed lo, seed hi): the four output words
    c0 = idx.to(tl.uint32)
    zero = tl.zeros_like(c0)
    return philox_impl(c0, zero + t.to(tl.uint32), zero + run.to(tl.uint32), zero + STREAM, k0, k1)


@triton.jit
def _philox01(idx, t, run, STREAM: tl.constexpr, k0, k1):
    o0, o1, _, _ = _philox(idx, t, run, STREAM, k0, k1)
    return o0, o1


@triton.jit
def _uniform(o, DT: tl.constexpr):
    return ((o >> 8).to(DT) + 0.5) * 5.9604644775390625e-08  # 2^-24


@triton.jit
def _normal(idx, t, run, STREAM: tl.constexpr, k0, k1, DT: tl.constexpr):
    o0, o1 = _philox01(idx, t, run, STREAM, k0, k1)
    u1 = _uniform(o0, DT)
    u2 = _uniform(o1, DT)
    return tl.math.sqrt(-2.0 * tl.math.log(u1)) * tl.math.cos(6.283185307179586 * u2)


@triton.jit
def _normal4(idx, t, run, STREAM: tl.constexpr, k0, k1, DT: tl.constexpr):
    # rng.normal4 element idx: slot idx % 4 of counter idx // 4 — slots 0..3 are
    # ρ0 (cos, sin) 2π u(o1), ρ2 (cos, sin) 2π u(o3), ρ_a = sqrt(−2 ln u(o_a)). Elementwise: each
    # element evaluates its counter's Philox itself (4x the rounds of a per-counter layout; fine
    # next to the step's products, and any tile shape works).
    o0, o1, o2, o3 = _philox(idx >> 2, t, run, STREAM, k0, k1)
    slot = idx & 3
    second_pair = slot >= 2
    rho = tl.math.sqrt(-2.0 * tl.math.log(_uniform(tl.where(second_pair, o2, o0), DT)))
    angle = 6.283185307179586 * _uniform(tl.where(second_pair, o3, o1), DT)
    return rho * tl.where((slot & 1) == 0, tl.math.cos(angle), tl.math.sin(angle))


@triton.jit
def _sigmoid(u):
    return 1.0 / (1.0 + tl.math.exp(-u))


@triton.jit
def _act(u, ACT: tl.constexpr):
    # (act(u), act'(u)); tanh through exp(-2|u|) (no tanh in tl.math): absolute error ~ 1 ulp
    if ACT == 0:
        em = tl.math.exp(-2.0 * tl.math.abs(u))
        th = (1.0 - em) / (1.0 + em)
        h = tl.where(u < 0, -th, th)
        hp = 1.0 - h * h
    elif ACT == 1:
        h = _sigmoid(u)
        hp = h * (1.0 - h)
    else:
        h = tl.where(u < 0, 0.0, u)  # NaN stays NaN, as torch.relu (tl.maximum gives 0)
        hp = tl.where(u > 0, 1.0, 0.0).to(u.dtype)
    return h, hp


@triton.jit
def _expand_x(
    x2, rho_ptr, gb, use_rho, B,
    UNIT: tl.constexpr, C: tl.constexpr, DIN: tl.constexpr, D: tl.constexpr,
    B_BLK: tl.constexpr, DIN_BLK: tl.constexpr, D_BLK: tl.constexpr,
):  # fmt: skip
    # x2 (B_BLK, DIN_BLK) → x̃ (B_BLK, D_BLK) in parameter layout, transformed by ρ_{g_b} when
    # use_rho: x̃[b, m] = Σ_j S[b, m, j] x[b, j]
    m = tl.arange(0, D_BLK)
    j = tl.arange(0, DIN_BLK)
    b = tl.arange(0, B_BLK)
    if UNIT == 0:
        i = m % DIN
        valid = m < D
    else:
        i = m - C
        valid = (m >= C) & (m < C + DIN)
    sel_mask = valid[None, :, None] & (j < DIN)[None, None, :]
    # use_rho: int32 scalar, broadcast before it meets a mask (scalar-bool & tensor-bool masks
    # come out with a non-bool dtype under the interpreter)
    flag = tl.zeros((B_BLK, D_BLK, DIN_BLK), dtype=tl.int32) + use_rho
    load_mask = sel_mask & (b < B)[:, None, None] & (flag != 0)
    offs = gb[:, None, None] * (DIN * DIN) + i[None, :, None] * DIN + j[None, None, :]
    s = tl.load(rho_ptr + offs, mask=load_mask, other=0.0).to(x2.dtype)
    ident = sel_mask & (j[None, None, :] == i[None, :, None]) & (flag == 0)
    s = tl.where(ident, 1.0, s)
    xt = tl.sum(s * x2[:, None, :], axis=2)
    if UNIT == 1:
        xt = tl.where((m == C + DIN)[None, :], 1.0, xt)
    return xt


@triton.jit
def _select_a(th, C_BLK: tl.constexpr, D_BLK: tl.constexpr):
    # columns k < C of th (N_BLK, D_BLK) as (N_BLK, C_BLK) (zero columns past D)
    m = tl.arange(0, D_BLK)
    k = tl.arange(0, C_BLK)
    sel = m[None, None, :] == k[None, :, None]
    return tl.sum(tl.where(sel, th[:, None, :], 0.0), axis=2)


@triton.jit
def _phi_block(
    xt, th, wts,
    UNIT: tl.constexpr, ACT: tl.constexpr, C: tl.constexpr, DIN: tl.constexpr,
    C_BLK: tl.constexpr, D_BLK: tl.constexpr,
):  # fmt: skip
    # Σ_n wts[n] σ*(x_b, θ_n): xt (B_BLK, D_BLK), th (N_BLK, D_BLK), wts (N_BLK,) → (B_BLK, C_BLK)
    m = tl.arange(0, D_BLK)
    k = tl.arange(0, C_BLK)
    prod = xt[:, None, :] * th[None, :, :]
    if UNIT == 0:
        phi = tl.zeros((xt.shape[0], C_BLK), dtype=xt.dtype)
        for kk in tl.static_range(C):
            pre = tl.sum(tl.where((m // DIN == kk)[None, None, :], prod, 0.0), axis=2)
            col = tl.sum(_sigmoid(pre) * wts[None, :], axis=1)
            phi += tl.where((k == kk)[None, :], col[:, None], 0.0)
    else:
        u = tl.sum(prod, axis=2)
        h, _ = _act(u, ACT)
        a = _select_a(th, C_BLK, D_BLK)
        # reduced over the LAST axis on purpose: see _apply_rows_t
        phi = tl.sum((h * wts[None, :])[:, None, :] * tl.trans(a)[None, :, :], axis=2)
    return phi


@triton.jit
def _teacher_labels(
    xt, teacher_ptr, tw_ptr, r64, M,
    UNIT: tl.constexpr, ACT: tl.constexpr, C: tl.constexpr, DIN: tl.constexpr, D: tl.constexpr,
    C_BLK: tl.constexpr, D_BLK: tl.constexpr, M_BLK: tl.constexpr,
):  # fmt: skip
    # y_b = Σ_m w_m σ*(x_b, teacher_m) of run r64's teacher (M, D) and weights (M,), M_BLK
    # teacher particles at a time: xt (rows, D_BLK) expanded inputs → (rows, C_BLK)
    mi = tl.arange(0, D_BLK)
    y = tl.zeros((xt.shape[0], C_BLK), dtype=xt.dtype)
    for mb in range(0, M, M_BLK):
        mm = mb + tl.arange(0, M_BLK)
        mm_ok = mm < M
        tt = tl.load(
            teacher_ptr + (r64 * M + mm[:, None]) * D + mi[None, :],
            mask=mm_ok[:, None] & (mi < D)[None, :], other=0.0,
        ).to(xt.dtype)  # fmt: skip
        tw = tl.load(tw_ptr + r64 * M + mm, mask=mm_ok, other=0.0).to(xt.dtype)
        y += _phi_block(xt, tt, tw, UNIT, ACT, C, DIN, C_BLK, D_BLK)
    return y


@triton.jit
def _grad_block(
    xt, e, th,
    UNIT: tl.constexpr, ACT: tl.constexpr, C: tl.constexpr, DIN: tl.constexpr,
    C_BLK: tl.constexpr, D_BLK: tl.constexpr,
):  # fmt: skip
    # Σ_b J_σ(x_b, θ_n)ᵀ e_b: xt (B_BLK, D_BLK), e (B_BLK, C_BLK), th (N_BLK, D_BLK)
    # → (N_BLK, D_BLK)
    m = tl.arange(0, D_BLK)
    k = tl.arange(0, C_BLK)
    prod = xt[:, None, :] * th[None, :, :]
    if UNIT == 0:
        dpre = tl.zeros(prod.shape, dtype=prod.dtype)
        for kk in tl.static_range(C):
            sel = (m // DIN == kk)[None, None, :]
            pre = tl.sum(tl.where(sel, prod, 0.0), axis=2)
            s = _sigmoid(pre)
            ek = tl.sum(tl.where((k == kk)[None, :], e, 0.0), axis=1)
            dp = ek[:, None] * (s * (1.0 - s))
            dpre += tl.where(sel, dp[:, :, None], 0.0)
        grad = tl.sum(dpre * xt[:, None, :], axis=0)
    else:
        u = tl.sum(prod, axis=2)
        h, hp = _act(u, ACT)
        a = _select_a(th, C_BLK, D_BLK)
        s = tl.sum(e[:, None, :] * a[None, :, :], axis=2)  # (B, N): Σ_k a_k e_k
        q = s * hp
        grad = tl.sum(q[:, :, None] * xt[:, None, :], axis=0)  # w and b columns (x̃ = 0 on a)
        ga = tl.sum(h[:, :, None] * e[:, None, :], axis=0)  # (N, C_BLK)
        sel = m[None, None, :] == k[None, :, None]
        grad += tl.sum(tl.where(sel, ga[:, :, None], 0.0), axis=1)
    return grad


@triton.jit
def _apply_rows(th, T):
    # θ_n ↦ T θ_n for the rows of th (N_BLK, D_BLK), T (D_BLK, D_BLK):
    # out[n, p] = Σ_q T[p, q] th[n, q]
    return tl.sum(th[:, None, :] * T[None, :, :], axis=2)


@triton.jit
def _apply_rows_t(g, T):
    # g_n ↦ Tᵀ g_n: out[n, q] = Σ_p T[p, q] g[n, p]. Reduced over the LAST axis on purpose:
    # Triton's combine pass rewrites sum(x[:, :, None] * y[None, :, :], axis=1) into a tt.dot,
    # and up to Triton 3.6 that dot is TF32 for float32 on a GPU (~1e-3 relative error; seen on
    # an H100 in the mirror sweep kernel). tests/test_triton_codegen.py checks no kernel has one.
    return tl.sum(g[:, None, :] * tl.trans(T)[None, :, :], axis=2)


# ---------------------------------------------------------------------------------------------
# kernels: fused multi-step (one program per run)
# ---------------------------------------------------------------------------------------------


@triton.jit(
    do_not_specialize=["N", "M", "G", "step0", "ls0", "steps", "snap_every", "k0", "k1", "T_data",
                       "P", "chunk"]
)  # fmt: skip
def _particle_steps_fused_kernel(
    theta_ptr,  # (R, N, D), updated in place
    snap_ptr,  # (R, S, N, D)
    loss_ptr,  # (R, S)
    run_ptr,  # (R,) int32: run_id mod 2^32
    alpha_ptr, tau_ptr, beta_ptr,  # (R,)
    scheme_ptr,  # (R,) int32
    projn_ptr,  # (R,) int32: 1 = project the noise
    teacher_ptr,  # (R, M, D)
    tw_ptr,  # (R, M)
    rho_x_ptr,  # (G, d, d)
    rho_y_ptr,  # (G, c, c)
    mz_ptr,  # (G, D, D)
    proj_ptr,  # (D, D)
    xdata_ptr,  # (T, R, B, d) or dummy
    ydata_ptr,  # (T, R, B, c) or dummy
    sx_ptr,  # scratch (R, G, B_BLK, D_BLK): expanded inputs of every data copy
    se_ptr,  # scratch (R·P, G, B_BLK, C_BLK): residuals (one slab per program)
    part_ptr,  # split: (R, P, G, B_BLK, C_BLK) partial Φ_a of each program's particles
    sy_ptr,  # split: (R, G, B_BLK, C_BLK) labels of every data copy
    R, N, M, G, B, T_data,
    step0, ls0, steps, snap_every, S,
    k0, k1, sig_ptr, P, chunk,
    UNIT: tl.constexpr, ACT: tl.constexpr, C: tl.constexpr, DIN: tl.constexpr, D: tl.constexpr,
    B_BLK: tl.constexpr, DIN_BLK: tl.constexpr, C_BLK: tl.constexpr, D_BLK: tl.constexpr,
    N_BLK: tl.constexpr, M_BLK: tl.constexpr, HAS_DATA: tl.constexpr, PHASE: tl.constexpr,
):  # fmt: skip
    # PHASE 0: the local steps ls0 .. ls0 + steps of run r in this one program (grid (R,), P = 1,
    # chunk = N). Split path (grid (R, P), one step per pair of launches): program (r, p) owns
    # the particles [p·chunk, (p + 1)·chunk); PHASE 1 draws the batch and writes its partial Φ_a
    # (program 0 also every copy's inputs and labels), PHASE 2 sums the P partials into the
    # residuals and updates its particles. The launch boundary is the only cross-program sync.
    r = tl.program_id(0)
    p = tl.program_id(1)
    r64 = r.to(tl.int64)
    n_lo = p * chunk
    n_hi = tl.minimum(n_lo + chunk, N)
    DT = theta_ptr.dtype.element_ty
    key0 = k0.to(tl.uint32)
    key1 = k1.to(tl.uint32)
    run = tl.load(run_ptr + r)
    alpha = tl.load(alpha_ptr + r).to(DT)
    tau = tl.load(tau_ptr + r).to(DT)
    beta = tl.load(beta_ptr + r).to(DT)
    scheme = tl.load(scheme_ptr + r)
    is_ea = scheme == 4
    project = (tl.load(projn_ptr + r) != 0) | is_ea
    step_n = alpha / N
    noise_scale = tl.math.sqrt(2.0 * beta * alpha / N)
    use_rho = ((scheme == 1) | (scheme == 2)).to(tl.int32)
    no_rho = scheme * 0
    n_a = tl.where(scheme == 1, G, 1)
    n_f = tl.where(scheme == 3, G, 1)
    b_eff = (B * n_a).to(DT)

    bi = tl.arange(0, B_BLK)
    ji = tl.arange(0, DIN_BLK)
    ci = tl.arange(0, C_BLK)
    mi = tl.arange(0, D_BLK)
    ni = tl.arange(0, N_BLK)
    b_ok = bi < B
    m_ok = mi < D
    dd_mask = m_ok[:, None] & m_ok[None, :]
    P_mat = tl.load(proj_ptr + mi[:, None] * D + mi[None, :], mask=dd_mask, other=0.0).to(DT)

    th_base = theta_ptr + r64 * N * D
    sx_base = sx_ptr + r64 * G * (B_BLK * D_BLK)
    se_base = se_ptr + (r64 * P + p) * G * (B_BLK * C_BLK)
    part_run = part_ptr + r64 * P * G * (B_BLK * C_BLK)
    sy_base = sy_ptr + r64 * G * (B_BLK * C_BLK)
    bd_offs = bi[:, None] * D_BLK + mi[None, :]
    bc_offs = bi[:, None] * C_BLK + ci[None, :]
    bc_mask = b_ok[:, None] & (ci < C)[None, :]

    for ls in range(ls0, ls0 + steps):
        t = step0 + ls
        loss = tl.zeros((B_BLK,), dtype=DT)
        if PHASE != 2:
            # ---- data of this step: x (B, d), y (B, c)
            if HAS_DATA:
                xo = ((ls * R + r).to(tl.int64) * B + bi[:, None]) * DIN + ji[None, :]
                x2 = tl.load(xdata_ptr + xo, mask=b_ok[:, None] & (ji < DIN)[None, :], other=0.0)
                x2 = x2.to(DT)
                yo = ((ls * R + r).to(tl.int64) * B + bi[:, None]) * C + ci[None, :]
                y = tl.load(ydata_ptr + yo, mask=bc_mask, other=0.0).to(DT)
            else:
                xidx = (bi[:, None] * DIN + ji[None, :]).to(tl.uint32)
                x2 = tl.load(sig_ptr).to(DT) * _normal(xidx, t, run, _STREAM_DATA, key0, key1, DT)
                x2 = tl.where(b_ok[:, None] & (ji < DIN)[None, :], x2, 0.0)
                xt0 = _expand_x(
                    x2, rho_x_ptr, bi, no_rho, B, UNIT, C, DIN, D, B_BLK, DIN_BLK, D_BLK
                )  # fmt: skip
                y = _teacher_labels(
                    xt0, teacher_ptr, tw_ptr, r64, M, UNIT, ACT, C, DIN, D, C_BLK, D_BLK, M_BLK
                )  # fmt: skip
                y = tl.where(bc_mask, y, 0.0)
            # sampled group elements (DA-sample): g_b = (o0 · |G|) >> 32
            o0, _ = _philox01(bi.to(tl.uint32), t, run, _STREAM_AUGMENT, key0, key1)
            g_rand = ((o0.to(tl.uint64) * G) >> 32).to(tl.int32)

            # ---- forward over every data copy a (this program's particles)
            for a in range(0, n_a):
                gb = tl.where(scheme == 1, a, tl.where(scheme == 2, g_rand, 0))
                xt = _expand_x(
                    x2, rho_x_ptr, gb, use_rho, B, UNIT, C, DIN, D, B_BLK, DIN_BLK, D_BLK
                )  # fmt: skip
                ya = y
                if use_rho != 0:
                    ry = tl.load(
                        rho_y_ptr + gb[:, None, None] * (C * C) + ci[None, :, None] * C
                        + ci[None, None, :],
                        mask=b_ok[:, None, None] & (ci < C)[None, :, None]
                        & (ci < C)[None, None, :],
                        other=0.0,
                    ).to(DT)  # fmt: skip
                    ya = tl.sum(ry * y[:, None, :], axis=2)
                phi = tl.zeros((B_BLK, C_BLK), dtype=DT)
                for nb in range(n_lo, n_hi, N_BLK):
                    # int64: N·D may exceed 2^31
                    nn = (nb + ni).to(tl.int64)
                    n_ok = nn < n_hi
                    th = tl.load(
                        th_base + nn[:, None] * D + mi[None, :],
                        mask=n_ok[:, None] & m_ok[None, :], other=0.0,
                    )  # fmt: skip
                    if is_ea:
                        th = _apply_rows(th, P_mat)
                    wts = tl.where(n_ok, 1.0 / (N * n_f).to(DT), 0.0).to(DT)
                    for f in range(0, n_f):
                        thf = th
                        if scheme == 3:
                            Mf = tl.load(
                                mz_ptr + f * (D * D) + mi[:, None] * D + mi[None, :],
                                mask=dd_mask, other=0.0,
                            ).to(DT)  # fmt: skip
                            thf = _apply_rows(th, Mf)
                        phi += _phi_block(xt, thf, wts, UNIT, ACT, C, DIN, C_BLK, D_BLK)
                if PHASE == 0:
                    diff = tl.where(bc_mask, phi - ya, 0.0)
                    loss += tl.sum(diff * diff, axis=1) / b_eff
                    tl.store(sx_base + a * (B_BLK * D_BLK) + bd_offs, xt)
                    tl.store(se_base + a * (B_BLK * C_BLK) + bc_offs, 2.0 * diff / b_eff)
                else:
                    tl.store(part_run + (p * G + a) * (B_BLK * C_BLK) + bc_offs, phi)
                    if p == 0:
                        tl.store(sx_base + a * (B_BLK * D_BLK) + bd_offs, xt)
                        tl.store(sy_base + a * (B_BLK * C_BLK) + bc_offs, ya)
        if PHASE == 2:
            # ---- residuals of every data copy from the P programs' partial Φ_a
            for a in range(0, n_a):
                phi = tl.zeros((B_BLK, C_BLK), dtype=DT)
                for q in range(0, P):
                    phi += tl.load(part_run + (q * G + a) * (B_BLK * C_BLK) + bc_offs)
                ya = tl.load(sy_base + a * (B_BLK * C_BLK) + bc_offs)
                diff = tl.where(bc_mask, phi - ya, 0.0)
                loss += tl.sum(diff * diff, axis=1) / b_eff
                tl.store(se_base + a * (B_BLK * C_BLK) + bc_offs, 2.0 * diff / b_eff)
        tl.debug_barrier()

        if PHASE != 1:
            # ---- backward + update, block by block
            is_snap = (((ls + 1) % snap_every) == 0) * 1  # int32 (python int in the interpreter)
            s_idx = (ls + 1) // snap_every - 1
            for nb in range(n_lo, n_hi, N_BLK):
                # int64: N·D may exceed 2^31 (th_base + nd_offs, the snapshot store)
                nn = (nb + ni).to(tl.int64)
                n_ok = nn < n_hi
                nd_mask = n_ok[:, None] & m_ok[None, :]
                nd_offs = nn[:, None] * D + mi[None, :]
                th = tl.load(th_base + nd_offs, mask=nd_mask, other=0.0)
                grad = tl.zeros((N_BLK, D_BLK), dtype=DT)
                for f in range(0, n_f):
                    # M_f is read for every scheme (one D×D tile, L1-resident) so that it is
                    # defined on both sides of the runtime branches below
                    Mf = tl.load(
                        mz_ptr + f * (D * D) + mi[:, None] * D + mi[None, :],
                        mask=dd_mask, other=0.0,
                    ).to(DT)  # fmt: skip
                    thf = th
                    if is_ea:
                        thf = _apply_rows(th, P_mat)
                    if scheme == 3:
                        thf = _apply_rows(th, Mf)
                    gf = tl.zeros((N_BLK, D_BLK), dtype=DT)
                    for a in range(0, n_a):
                        xt = tl.load(sx_base + a * (B_BLK * D_BLK) + bd_offs)
                        e = tl.load(se_base + a * (B_BLK * C_BLK) + bc_offs)
                        gf += _grad_block(xt, e, thf, UNIT, ACT, C, DIN, C_BLK, D_BLK)
                    if is_ea:
                        gf = _apply_rows_t(gf, P_mat)
                    if scheme == 3:
                        gf = _apply_rows_t(gf, Mf)
                    grad += gf
                grad = grad / n_f.to(DT)
                reg = th
                if is_ea:
                    reg = _apply_rows_t(_apply_rows(th, P_mat), P_mat)
                # the Philox element index is i·D + k mod 2^32, as before (int64 only for
                # addressing)
                xi = _normal4(
                    (nn[:, None] * D + mi[None, :]).to(tl.uint32), t, run, _STREAM_NOISE,
                    key0, key1, DT,
                )  # fmt: skip
                if project:
                    xi = _apply_rows(tl.where(nd_mask, xi, 0.0), P_mat)
                new = th - step_n * (grad + 2.0 * tau * reg) + noise_scale * xi
                tl.store(th_base + nd_offs, new, mask=nd_mask)
                snap_off = (r64 * S + s_idx) * N * D
                snap_mask = nd_mask & ((tl.zeros((N_BLK, D_BLK), dtype=tl.int32) + is_snap) != 0)
                tl.store(snap_ptr + snap_off + nd_offs, new, mask=snap_mask)
            if (is_snap != 0) & (p == 0):
                tl.store(loss_ptr + r64 * S + s_idx, tl.sum(loss, axis=0))
        tl.debug_barrier()


# ---------------------------------------------------------------------------------------------
# kernels: two-pass step (standard unit, vanilla; grid over particle and batch blocks)
# ---------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["M", "t", "ls", "k0", "k1"])
def _tp_data_kernel(
    xt_ptr,  # out (R, B, D): expanded inputs (0_c, x, 1)
    y_ptr,  # out (R, B, C)
    run_ptr, teacher_ptr, tw_ptr, xdata_ptr, ydata_ptr,
    R, M, B, n_bblk, t, ls, k0, k1, sig_ptr,
    ACT: tl.constexpr, C: tl.constexpr, DIN: tl.constexpr, D: tl.constexpr,
    BB: tl.constexpr, C_BLK: tl.constexpr, D_BLK: tl.constexpr, M_BLK: tl.constexpr,
    HAS_DATA: tl.constexpr,
):  # fmt: skip
    # 1-D grid (R · n_bblk): grid axes 1/2 are capped at 65535 on CUDA
    pid = tl.program_id(0)
    r = pid // n_bblk
    pb = pid % n_bblk
    r64 = r.to(tl.int64)
    DT = xt_ptr.dtype.element_ty
    bi = pb * BB + tl.arange(0, BB)
    mi = tl.arange(0, D_BLK)
    ci = tl.arange(0, C_BLK)
    b_ok = bi < B
    xcol = (mi >= C) & (mi < C + DIN)
    x_mask = b_ok[:, None] & xcol[None, :]
    bc_mask = b_ok[:, None] & (ci < C)[None, :]
    if HAS_DATA:
        xo = ((ls * R + r).to(tl.int64) * B + bi[:, None]) * DIN + (mi - C)[None, :]
        xt = tl.load(xdata_ptr + xo, mask=x_mask, other=0.0).to(DT)
        yo = ((ls * R + r).to(tl.int64) * B + bi[:, None]) * C + ci[None, :]
        y = tl.load(ydata_ptr + yo, mask=bc_mask, other=0.0).to(DT)
    else:
        run = tl.load(run_ptr + r)
        idx = (bi[:, None] * DIN + (mi - C)[None, :]).to(tl.uint32)
        xt = tl.load(sig_ptr).to(DT) * _normal(
            idx, t, run, _STREAM_DATA, k0.to(tl.uint32), k1.to(tl.uint32), DT
        )
        xt = tl.where(x_mask, xt, 0.0)
    xt = tl.where((mi == C + DIN)[None, :], 1.0, xt)
    if not HAS_DATA:
        y = _teacher_labels(xt, teacher_ptr, tw_ptr, r64, M, 1, ACT, C, DIN, D, C_BLK, D_BLK, M_BLK)
    tl.store(xt_ptr + (r64 * B + bi[:, None]) * D + mi[None, :], xt,
             mask=b_ok[:, None] & (mi < D)[None, :])  # fmt: skip
    tl.store(y_ptr + (r64 * B + bi[:, None]) * C + ci[None, :], y, mask=bc_mask)


@triton.jit
def _tp_forward_kernel(
    theta_ptr,  # (R, N, D)
    xt_ptr,  # (R, B, D)
    part_ptr,  # out (R, SPLIT, B, C): partial Σ_n act(z_bn) a_n
    N, B, n_bblk, SPLIT,
    ACT: tl.constexpr, C: tl.constexpr, D: tl.constexpr,
    BB: tl.constexpr, BN: tl.constexpr, C_BLK: tl.constexpr, D_BLK: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    sp = pid % SPLIT
    rb = pid // SPLIT
    pb = rb % n_bblk
    r64 = (rb // n_bblk).to(tl.int64)
    DT = theta_ptr.dtype.element_ty
    bi = pb * BB + tl.arange(0, BB)
    mi = tl.arange(0, D_BLK)
    ci = tl.arange(0, C_BLK)
    b_ok = bi < B
    m_ok = mi < D
    xt = tl.load(xt_ptr + (r64 * B + bi[:, None]) * D + mi[None, :],
                 mask=b_ok[:, None] & m_ok[None, :], other=0.0)  # fmt: skip
    th_base = theta_ptr + r64 * N * D
    phi = tl.zeros((BB, C_BLK), dtype=DT)
    for nb in range(sp * BN, N, SPLIT * BN):
        nn = (nb + tl.arange(0, BN)).to(tl.int64)
        n_ok = nn < N
        th = tl.load(th_base + nn[:, None] * D + mi[None, :],
                     mask=n_ok[:, None] & m_ok[None, :], other=0.0)  # fmt: skip
        a = tl.load(th_base + nn[:, None] * D + ci[None, :],
                    mask=n_ok[:, None] & (ci < C)[None, :], other=0.0)  # fmt: skip
        z = tl.dot(xt, tl.trans(th), input_precision=PRECISION, out_dtype=DT)
        h, _ = _act(z, ACT)
        phi += tl.dot(h, a, input_precision=PRECISION, out_dtype=DT)
    tl.store(part_ptr + ((r64 * SPLIT + sp) * B + bi[:, None]) * C + ci[None, :], phi,
             mask=b_ok[:, None] & (ci < C)[None, :])  # fmt: skip


@triton.jit(do_not_specialize=["s_idx"])
def _tp_residual_kernel(
    part_ptr,  # (R, SPLIT, B, C)
    y_ptr,  # (R, B, C)
    e_ptr,  # out (R, B, C): 2(Φ − y)/B
    loss_ptr,  # out (R, S)
    N, B, S, s_idx, SPLIT,
    C: tl.constexpr, BB: tl.constexpr, C_BLK: tl.constexpr,
):  # fmt: skip
    r64 = tl.program_id(0).to(tl.int64)
    DT = e_ptr.dtype.element_ty
    ci = tl.arange(0, C_BLK)
    acc = tl.zeros((BB, C_BLK), dtype=DT)
    for b0 in range(0, B, BB):
        bi = b0 + tl.arange(0, BB)
        mask = (bi < B)[:, None] & (ci < C)[None, :]
        phi = tl.zeros((BB, C_BLK), dtype=DT)
        for sp in range(SPLIT):
            phi += tl.load(part_ptr + ((r64 * SPLIT + sp) * B + bi[:, None]) * C + ci[None, :],
                           mask=mask, other=0.0)  # fmt: skip
        y = tl.load(y_ptr + (r64 * B + bi[:, None]) * C + ci[None, :], mask=mask, other=0.0)
        diff = tl.where(mask, phi / N - y, 0.0)
        acc += diff * diff
        tl.store(e_ptr + (r64 * B + bi[:, None]) * C + ci[None, :], 2.0 * diff / B, mask=mask)
    if s_idx >= 0:
        tl.store(loss_ptr + r64 * S + s_idx, tl.sum(tl.sum(acc, axis=1), axis=0) / B)


@triton.jit(do_not_specialize=["t", "s_idx", "k0", "k1"])
def _tp_backward_kernel(
    theta_ptr,  # (R, N, D), updated in place
    snap_ptr,  # (R, S, N, D)
    xt_ptr,  # (R, B, D)
    e_ptr,  # (R, B, C)
    run_ptr, alpha_ptr, tau_ptr, beta_ptr,
    N, B, S, s_idx, n_nblk, t, k0, k1,
    ACT: tl.constexpr, C: tl.constexpr, D: tl.constexpr,
    BB: tl.constexpr, BN: tl.constexpr, C_BLK: tl.constexpr, D_BLK: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    pn = pid % n_nblk
    r = pid // n_nblk
    r64 = r.to(tl.int64)
    DT = theta_ptr.dtype.element_ty
    nn = (pn * BN + tl.arange(0, BN)).to(tl.int64)
    mi = tl.arange(0, D_BLK)
    ci = tl.arange(0, C_BLK)
    n_ok = nn < N
    m_ok = mi < D
    c_ok = ci < C
    th_base = theta_ptr + r64 * N * D
    nd_offs = nn[:, None] * D + mi[None, :]
    nc_offs = nn[:, None] * D + ci[None, :]
    nd_mask = n_ok[:, None] & m_ok[None, :]
    nc_mask = n_ok[:, None] & c_ok[None, :]
    th = tl.load(th_base + nd_offs, mask=nd_mask, other=0.0)
    a = tl.load(th_base + nc_offs, mask=nc_mask, other=0.0)
    g_wb = tl.zeros((BN, D_BLK), dtype=DT)
    g_a = tl.zeros((BN, C_BLK), dtype=DT)
    for b0 in range(0, B, BB):
        bi = b0 + tl.arange(0, BB)
        b_ok = bi < B
        xt = tl.load(xt_ptr + (r64 * B + bi[:, None]) * D + mi[None, :],
                     mask=b_ok[:, None] & m_ok[None, :], other=0.0)  # fmt: skip
        e = tl.load(e_ptr + (r64 * B + bi[:, None]) * C + ci[None, :],
                    mask=b_ok[:, None] & c_ok[None, :], other=0.0)  # fmt: skip
        z = tl.dot(xt, tl.trans(th), input_precision=PRECISION, out_dtype=DT)  # (BB, BN)
        h, hp = _act(z, ACT)
        h = tl.where(b_ok[:, None], h, 0.0)
        g_a += tl.dot(tl.trans(h), e, input_precision=PRECISION, out_dtype=DT)
        s = tl.dot(e, tl.trans(a), input_precision=PRECISION, out_dtype=DT)  # Σ_k e_bk a_nk
        q = s * hp
        g_wb += tl.dot(tl.trans(q), xt, input_precision=PRECISION, out_dtype=DT)
    run = tl.load(run_ptr + r)
    alpha = tl.load(alpha_ptr + r).to(DT)
    tau = tl.load(tau_ptr + r).to(DT)
    beta = tl.load(beta_ptr + r).to(DT)
    step_n = alpha / N
    noise_scale = tl.math.sqrt(2.0 * beta * alpha / N)
    key0 = k0.to(tl.uint32)
    key1 = k1.to(tl.uint32)
    # (w, b) columns m >= C: x̃ is 0 on the a columns, so g_wb is exactly their gradient there
    xi = _normal4(nd_offs.to(tl.uint32), t, run, _STREAM_NOISE, key0, key1, DT)
    new = th - step_n * (g_wb + 2.0 * tau * th) + noise_scale * xi
    wb_mask = nd_mask & (mi >= C)[None, :]
    tl.store(th_base + nd_offs, new, mask=wb_mask)
    xi_a = _normal4(nc_offs.to(tl.uint32), t, run, _STREAM_NOISE, key0, key1, DT)
    new_a = a - step_n * (g_a + 2.0 * tau * a) + noise_scale * xi_a
    tl.store(th_base + nc_offs, new_a, mask=nc_mask)
    if s_idx >= 0:
        snap_base = snap_ptr + (r64 * S + s_idx) * N * D
        tl.store(snap_base + nd_offs, new, mask=wb_mask)
        tl.store(snap_base + nc_offs, new_a, mask=nc_mask)


# ---------------------------------------------------------------------------------------------
# kernels: fused model output Φ_θ(x) and its gradients (particle_forward[_backward])
# ---------------------------------------------------------------------------------------------
# Shared layout: x (B, d) and θ (N, D) are read through their strides (any layout); every tile
# keeps the whole input width d (DIN_BLK ≥ d, padded with zeros) so one tl.dot gives the
# pre-activations of a (sample tile × particle tile) block. The matrix unit is c independent
# "heads" (row k of z: pre_k = X Z_kᵀ, σ*_k = sigmoid(pre_k)); the standard unit is one head
# u = X Wᵀ + b with output weights a. Partial sums over a split of the reduced axis go to
# part[split] and are added by the launcher, so small grids still fill a GPU.


@triton.jit
def _pf_forward_kernel(
    x_ptr, th_ptr,
    part_ptr,  # out (SPLIT, B, C): (1/N) Σ over this split's particles of σ*(x_b, θ_i)
    B, N, sxb, sxj, stn, stm, n_bblk, SPLIT,
    UNIT: tl.constexpr, ACT: tl.constexpr, C: tl.constexpr, DIN: tl.constexpr,
    C_BLK: tl.constexpr, DIN_BLK: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    # program = (head k [matrix unit only], split sp, sample tile pb); loop over particle tiles
    pid = tl.program_id(0)
    pb = pid % n_bblk
    sp = (pid // n_bblk) % SPLIT
    k = pid // (n_bblk * SPLIT)
    DT = th_ptr.dtype.element_ty
    bi = (pb * BB + tl.arange(0, BB)).to(tl.int64)
    ji = tl.arange(0, DIN_BLK)
    ci = tl.arange(0, C_BLK)
    b_ok = bi < B
    j_ok = ji < DIN
    x = tl.load(x_ptr + bi[:, None] * sxb + ji[None, :] * sxj,
                mask=b_ok[:, None] & j_ok[None, :], other=0.0)  # fmt: skip
    out_base = part_ptr + (sp * B + bi) * C
    if UNIT == 0:
        acc = tl.zeros((BB,), dtype=DT)
        for nb in range(sp * BN, N, SPLIT * BN):
            nn = (nb + tl.arange(0, BN)).to(tl.int64)
            n_ok = nn < N
            z = tl.load(th_ptr + nn[:, None] * stn + (k * DIN + ji)[None, :] * stm,
                        mask=n_ok[:, None] & j_ok[None, :], other=0.0)  # fmt: skip
            pre = tl.dot(x, tl.trans(z), input_precision=PRECISION, out_dtype=DT)
            # padded particles would add sigmoid(0) = 1/2: mask them
            s = tl.where(n_ok[None, :], _sigmoid(pre), 0.0)
            acc += tl.sum(s, axis=1)
        tl.store(out_base + k, acc / N, mask=b_ok)
    else:
        acc = tl.zeros((BB, C_BLK), dtype=DT)
        for nb in range(sp * BN, N, SPLIT * BN):
            nn = (nb + tl.arange(0, BN)).to(tl.int64)
            n_ok = nn < N
            w = tl.load(th_ptr + nn[:, None] * stn + (C + ji)[None, :] * stm,
                        mask=n_ok[:, None] & j_ok[None, :], other=0.0)  # fmt: skip
            bias = tl.load(th_ptr + nn * stn + (C + DIN) * stm, mask=n_ok, other=0.0)
            # padded particles have a = 0, so their act(b = 0) adds nothing
            a = tl.load(th_ptr + nn[:, None] * stn + ci[None, :] * stm,
                        mask=n_ok[:, None] & (ci < C)[None, :], other=0.0)  # fmt: skip
            u = tl.dot(x, tl.trans(w), input_precision=PRECISION, out_dtype=DT) + bias[None, :]
            h, _ = _act(u, ACT)
            acc += tl.dot(h, a, input_precision=PRECISION, out_dtype=DT)
        tl.store(out_base[:, None] + ci[None, :], acc / N,
                 mask=b_ok[:, None] & (ci < C)[None, :])  # fmt: skip


@triton.jit
def _pf_grad_x_kernel(
    x_ptr, th_ptr, g_ptr,
    part_ptr,  # out (SPLIT, B, DIN): this split's share of ∂L/∂x
    B, N, sxb, sxj, stn, stm, sgb, sgk, n_bblk, SPLIT,
    UNIT: tl.constexpr, ACT: tl.constexpr, C: tl.constexpr, DIN: tl.constexpr,
    C_BLK: tl.constexpr, DIN_BLK: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    # program = (split sp, sample tile pb); ∂L/∂x_b = Σ_i J_x σ*(x_b, θ_i)ᵀ r_b, r = ∂L/∂Φ / N,
    # a reduction over particle tiles with the activations recomputed (no B×N buffer)
    pid = tl.program_id(0)
    pb = pid % n_bblk
    sp = pid // n_bblk
    DT = th_ptr.dtype.element_ty
    bi = (pb * BB + tl.arange(0, BB)).to(tl.int64)
    ji = tl.arange(0, DIN_BLK)
    ci = tl.arange(0, C_BLK)
    b_ok = bi < B
    j_ok = ji < DIN
    x = tl.load(x_ptr + bi[:, None] * sxb + ji[None, :] * sxj,
                mask=b_ok[:, None] & j_ok[None, :], other=0.0)  # fmt: skip
    gx = tl.zeros((BB, DIN_BLK), dtype=DT)
    if UNIT == 0:
        # ∂L/∂x_b = Σ_k Σ_i r_bk s_bik (1 − s_bik) z_ik·
        for k in range(C):
            r = tl.load(g_ptr + bi * sgb + k * sgk, mask=b_ok, other=0.0) / N
            for nb in range(sp * BN, N, SPLIT * BN):
                nn = (nb + tl.arange(0, BN)).to(tl.int64)
                n_ok = nn < N
                # padded particles load z = 0 and so contribute nothing
                z = tl.load(th_ptr + nn[:, None] * stn + (k * DIN + ji)[None, :] * stm,
                            mask=n_ok[:, None] & j_ok[None, :], other=0.0)  # fmt: skip
                s = _sigmoid(tl.dot(x, tl.trans(z), input_precision=PRECISION, out_dtype=DT))
                q = r[:, None] * (s * (1.0 - s))
                gx += tl.dot(q, z, input_precision=PRECISION, out_dtype=DT)
    else:
        # ∂L/∂x_b = Σ_i (a_i·r_b) act'(u_bi) w_i
        r = tl.load(g_ptr + bi[:, None] * sgb + ci[None, :] * sgk,
                    mask=b_ok[:, None] & (ci < C)[None, :], other=0.0) / N  # fmt: skip
        for nb in range(sp * BN, N, SPLIT * BN):
            nn = (nb + tl.arange(0, BN)).to(tl.int64)
            n_ok = nn < N
            w = tl.load(th_ptr + nn[:, None] * stn + (C + ji)[None, :] * stm,
                        mask=n_ok[:, None] & j_ok[None, :], other=0.0)  # fmt: skip
            bias = tl.load(th_ptr + nn * stn + (C + DIN) * stm, mask=n_ok, other=0.0)
            a = tl.load(th_ptr + nn[:, None] * stn + ci[None, :] * stm,
                        mask=n_ok[:, None] & (ci < C)[None, :], other=0.0)  # fmt: skip
            u = tl.dot(x, tl.trans(w), input_precision=PRECISION, out_dtype=DT) + bias[None, :]
            _, hp = _act(u, ACT)
            s = tl.dot(r, tl.trans(a), input_precision=PRECISION, out_dtype=DT)  # a_i·r_b
            gx += tl.dot(s * hp, w, input_precision=PRECISION, out_dtype=DT)
    tl.store(part_ptr + (sp * B + bi[:, None]) * DIN + ji[None, :], gx,
             mask=b_ok[:, None] & j_ok[None, :])  # fmt: skip


@triton.jit
def _pf_grad_theta_kernel(
    x_ptr, th_ptr, g_ptr,
    part_ptr,  # out (SPLIT, N, D): this split's share of ∂L/∂θ
    B, N, sxb, sxj, stn, stm, sgb, sgk, n_nblk, SPLIT,
    UNIT: tl.constexpr, ACT: tl.constexpr, C: tl.constexpr, DIN: tl.constexpr,
    D: tl.constexpr, C_BLK: tl.constexpr, DIN_BLK: tl.constexpr, BB: tl.constexpr,
    BN: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    # program = (head k [matrix unit only], split sp, particle tile pn); ∂L/∂θ_i =
    # Σ_b J_θ σ*(x_b, θ_i)ᵀ r_b, a reduction over sample tiles with the activations recomputed.
    # Padded samples have r_b = 0 (masked load), which zeroes every term they would add.
    pid = tl.program_id(0)
    pn = pid % n_nblk
    sp = (pid // n_nblk) % SPLIT
    k = pid // (n_nblk * SPLIT)
    DT = th_ptr.dtype.element_ty
    nn = (pn * BN + tl.arange(0, BN)).to(tl.int64)
    ji = tl.arange(0, DIN_BLK)
    ci = tl.arange(0, C_BLK)
    n_ok = nn < N
    j_ok = ji < DIN
    out_base = part_ptr + (sp * N + nn) * D
    if UNIT == 0:
        # ∂L/∂z_ikj = Σ_b r_bk s_bik (1 − s_bik) x_bj
        z = tl.load(th_ptr + nn[:, None] * stn + (k * DIN + ji)[None, :] * stm,
                    mask=n_ok[:, None] & j_ok[None, :], other=0.0)  # fmt: skip
        gz = tl.zeros((BN, DIN_BLK), dtype=DT)
        for b0 in range(sp * BB, B, SPLIT * BB):
            bi = (b0 + tl.arange(0, BB)).to(tl.int64)
            b_ok = bi < B
            x = tl.load(x_ptr + bi[:, None] * sxb + ji[None, :] * sxj,
                        mask=b_ok[:, None] & j_ok[None, :], other=0.0)  # fmt: skip
            r = tl.load(g_ptr + bi * sgb + k * sgk, mask=b_ok, other=0.0) / N
            s = _sigmoid(tl.dot(x, tl.trans(z), input_precision=PRECISION, out_dtype=DT))
            q = r[:, None] * (s * (1.0 - s))
            gz += tl.dot(tl.trans(q), x, input_precision=PRECISION, out_dtype=DT)
        tl.store(out_base[:, None] + (k * DIN + ji)[None, :], gz,
                 mask=n_ok[:, None] & j_ok[None, :])  # fmt: skip
    else:
        # ∂a_i = Σ_b act(u_bi) r_b, ∂w_i = Σ_b q_bi x_b, ∂b_i = Σ_b q_bi,
        # q_bi = (a_i·r_b) act'(u_bi)
        w = tl.load(th_ptr + nn[:, None] * stn + (C + ji)[None, :] * stm,
                    mask=n_ok[:, None] & j_ok[None, :], other=0.0)  # fmt: skip
        bias = tl.load(th_ptr + nn * stn + (C + DIN) * stm, mask=n_ok, other=0.0)
        a = tl.load(th_ptr + nn[:, None] * stn + ci[None, :] * stm,
                    mask=n_ok[:, None] & (ci < C)[None, :], other=0.0)  # fmt: skip
        ga = tl.zeros((BN, C_BLK), dtype=DT)
        gw = tl.zeros((BN, DIN_BLK), dtype=DT)
        gb = tl.zeros((BN,), dtype=DT)
        for b0 in range(sp * BB, B, SPLIT * BB):
            bi = (b0 + tl.arange(0, BB)).to(tl.int64)
            b_ok = bi < B
            x = tl.load(x_ptr + bi[:, None] * sxb + ji[None, :] * sxj,
                        mask=b_ok[:, None] & j_ok[None, :], other=0.0)  # fmt: skip
            r = tl.load(g_ptr + bi[:, None] * sgb + ci[None, :] * sgk,
                        mask=b_ok[:, None] & (ci < C)[None, :], other=0.0) / N  # fmt: skip
            u = tl.dot(x, tl.trans(w), input_precision=PRECISION, out_dtype=DT) + bias[None, :]
            h, hp = _act(u, ACT)
            ga += tl.dot(tl.trans(h), r, input_precision=PRECISION, out_dtype=DT)
            q = tl.dot(r, tl.trans(a), input_precision=PRECISION, out_dtype=DT) * hp
            gw += tl.dot(tl.trans(q), x, input_precision=PRECISION, out_dtype=DT)
            gb += tl.sum(q, axis=0)
        tl.store(out_base[:, None] + ci[None, :], ga, mask=n_ok[:, None] & (ci < C)[None, :])
        tl.store(out_base[:, None] + (C + ji)[None, :], gw, mask=n_ok[:, None] & j_ok[None, :])
        tl.store(out_base + (C + DIN), gb, mask=n_ok)


# ---------------------------------------------------------------------------------------------
# launcher
# ---------------------------------------------------------------------------------------------

_P2 = triton.next_power_of_2


def _group_size(problem: ParticleProblem) -> int:
    return int(problem.rho_x.shape[0])


def _two_pass_reasons(problem: ParticleProblem) -> list[str]:
    reasons = []
    if problem.unit_code != 1:
        reasons.append("the two-pass kernel supports the standard unit only")
    if bool((problem.scheme != SCHEMES["vanilla"]).any()):
        reasons.append("the two-pass kernel supports the vanilla scheme only")
    if bool(problem.project_noise.any()):
        reasons.append("the two-pass kernel does not project the noise (project_noise runs)")
    if problem.D > TWO_PASS_MAX_D:
        reasons.append(f"the two-pass kernel supports D <= {TWO_PASS_MAX_D}, got D = {problem.D}")
    return reasons


def _fused_reasons(problem: ParticleProblem) -> list[str]:
    reasons = []
    G = _group_size(problem)
    if G > MAX_GROUP:
        reasons.append(
            f"the fused particle kernel supports groups of at most {MAX_GROUP} elements "
            f"(got |G| = {G}); use the cpp or torch backend"
        )
    bd = _P2(problem.batch) * _P2(problem.D)
    if bd > FUSED_MAX_BD:
        reasons.append(
            f"the fused particle kernel keeps the whole batch on chip: needs padded B·D <= "
            f"{FUSED_MAX_BD}, got B = {problem.batch}, D = {problem.D} (the two-pass kernel "
            "handles large batches for the standard unit with vanilla, unprojected runs)"
        )
    tile = _P2(problem.batch) * _P2(problem.D) * _P2(problem.d)
    if tile > FUSED_MAX_EXPAND:
        reasons.append(
            f"the fused particle kernel expands the batch through a (B, D, d) register tile: "
            f"needs padded B·D·d <= {FUSED_MAX_EXPAND}, got B = {problem.batch}, D = "
            f"{problem.D}, d = {problem.d} (padded {tile}; larger tiles take minutes to compile "
            "for a GPU; the two-pass kernel handles the standard unit with vanilla, unprojected "
            "runs)"
        )
    if problem.unit_code == 0 and problem.c > FUSED_MAX_MATRIX_C:
        reasons.append(
            f"the fused kernel unrolls the c outputs of the matrix unit: c <= "
            f"{FUSED_MAX_MATRIX_C}, got {problem.c} (larger c takes minutes to compile for a GPU)"
        )
    return reasons


def _n_sm(dev: torch.device) -> int:
    return torch.cuda.get_device_properties(dev).multi_processor_count if dev.type == "cuda" else 1


def _auto_split(R: int, N: int, dev: torch.device) -> bool:
    """Split each run over programs (two launches per step) when one program per run would
    leave most of a GPU idle and a run is large enough to pay for the extra launches."""
    if dev.type != "cuda" or triton_interpreter_enabled():
        return False
    return N >= SPLIT_MIN_N and 2 * R < _n_sm(dev)


def _split_programs(R: int, n_nblk: int, dev: torch.device) -> int:
    """Programs per run of the split path: ~2 per SM over all runs, at most SPLIT_MAX_P (each
    program sums all P partials per step) and at most one per particle block."""
    return max(1, min(n_nblk, SPLIT_MAX_P, triton.cdiv(2 * _n_sm(dev), R)))


def _auto_two_pass(problem: ParticleProblem, N: int) -> bool:
    return not _two_pass_reasons(problem) and (
        N * problem.batch >= TWO_PASS_MIN_NB or bool(_fused_reasons(problem))
    )


def _check_inputs(theta: torch.Tensor, problem: ParticleProblem, steps: int, snapshot_every: int):
    if theta.ndim != 3:
        raise ValueError(f"theta must be (R, N, D), got shape {tuple(theta.shape)}")
    R, N, D = theta.shape
    if theta.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"theta must be float32 or float64, got {theta.dtype}")
    if problem.unit_code not in (0, 1):
        raise ValueError(f"unit_code must be 0 (matrix) or 1 (standard), got {problem.unit_code}")
    if problem.unit_code == 1 and problem.activation_code not in (0, 1, 2):
        raise ValueError(f"activation_code must be 0, 1 or 2, got {problem.activation_code}")
    want_d = problem.c * problem.d if problem.unit_code == 0 else problem.c + problem.d + 1
    if D != problem.D or D != want_d:
        raise ValueError(f"theta has D = {D}, the problem's unit has D = {want_d}")
    if problem.n_runs != R:
        raise ValueError(f"theta has R = {R} runs, the problem has {problem.n_runs}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    if not isinstance(snapshot_every, int) or snapshot_every < 1:
        raise ValueError(f"snapshot_every must be a positive int, got {snapshot_every!r}")
    G = _group_size(problem)
    if G < 1:
        raise ValueError("the problem needs at least one group element (the identity)")
    c, d = problem.c, problem.d
    shapes = {
        "alpha": (R,), "tau": (R,), "beta": (R,), "scheme": (R,), "project_noise": (R,),
        "teacher_w": (R, problem.teacher.shape[1]), "teacher": (R, problem.teacher.shape[1], D),
        "rho_x": (G, d, d), "rho_y": (G, c, c), "m_z": (G, D, D), "proj": (D, D),
    }  # fmt: skip
    for name, shape in shapes.items():
        tens = getattr(problem, name)
        if tuple(tens.shape) != shape:
            raise ValueError(f"problem.{name} must have shape {shape}, got {tuple(tens.shape)}")
    if (problem.x_data is None) != (problem.y_data is None):
        raise ValueError("x_data and y_data must be given together")
    if problem.x_data is not None:
        assert problem.y_data is not None  # checked just above: they come together
        B = problem.batch
        if problem.x_data.ndim != 4 or tuple(problem.x_data.shape[1:]) != (R, B, d):
            raise ValueError(
                f"x_data must be (T, {R}, {B}, {d}), got {tuple(problem.x_data.shape)}"
            )
        T = problem.x_data.shape[0]
        if tuple(problem.y_data.shape) != (T, R, B, c):
            raise ValueError(
                f"y_data must be ({T}, {R}, {B}, {c}), got {tuple(problem.y_data.shape)}"
            )
        if T < steps:
            raise ValueError(f"x_data holds {T} steps, fewer than steps = {steps}")


def _f(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype).contiguous()


@on_tensor_device
def particle_steps_triton(
    theta: torch.Tensor,
    problem: ParticleProblem,
    step0: int,
    steps: int,
    snapshot_every: int,
    *,
    path: str = "auto",
    block_n: int | None = None,
    block_b: int | None = None,
    split: int | None = None,
    allow_tf32: bool | None = None,
    tile_config: Mapping[str, tuple[int, int, int, int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``steps`` particle SGD/Langevin steps from absolute step ``step0`` (see module docstring).

    theta (R, N, D) float32/float64 → (theta_out (R, N, D), snapshots (R, S, N, D), losses (R, S))
    with S = steps // snapshot_every. ``path``: "auto", "fused" (one program per run, all steps in
    one launch), "split" (the fused kernel with each run's particles split over ``split``
    programs, two launches per step: the paper regime on a GPU, few runs of thousands of
    particles) or "two_pass" (standard unit, vanilla, unprojected noise; grid over particle and
    batch blocks, four launches per step). ``block_n`` / ``block_b`` / ``split`` override tile
    sizes and programs per run (tests keep interpreter grids small); ``allow_tf32`` lets the
    two-pass path use TF32 tensor cores for float32 on a GPU (None: as
    ``torch.backends.cuda.matmul.allow_tf32``). ``tile_config`` (tuning,
    bench/tune_particles_gpu.py): {"fwd": (BB, BN, num_warps, num_stages), "bwd": ...} of the
    two-pass forward and backward kernels.

    Example::

        out, snaps, losses = particle_steps_triton(theta, problem, 0, 100, 20)
    """
    _check_inputs(theta, problem, steps, snapshot_every)
    if path not in ("auto", "fused", "split", "two_pass"):
        raise ValueError(f"path must be 'auto', 'fused', 'split' or 'two_pass', got {path!r}")
    R, N, D = theta.shape
    dtype, dev = theta.dtype, theta.device
    S = steps // snapshot_every
    out = theta.detach().to(dtype).contiguous().clone()
    snaps = torch.empty((R, S, N, D), dtype=dtype, device=dev)
    losses = torch.empty((R, S), dtype=dtype, device=dev)
    if R == 0 or N == 0 or steps == 0:
        losses.fill_(float("nan"))  # N = 0: Φ is an empty mean, as in the reference
        return out, snaps, losses
    if path == "auto":
        if _auto_two_pass(problem, N):
            path = "two_pass"
        else:
            path = "split" if _auto_split(R, N, dev) else "fused"
    reasons = _two_pass_reasons(problem) if path == "two_pass" else _fused_reasons(problem)
    if reasons:
        raise ValueError(
            f"particle_steps path {path!r} cannot run this problem: " + "; ".join(reasons)
        )

    seed = int(problem.seed)
    k0, k1 = seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF
    runs = (problem.run_ids.to(torch.int64) & 0xFFFFFFFF).to(torch.int64)
    runs = torch.where(runs >= 2**31, runs - 2**32, runs).to(torch.int32).to(dev).contiguous()
    alpha, tau, beta = (_f(getattr(problem, n), dtype).to(dev) for n in ("alpha", "tau", "beta"))
    teacher = _f(problem.teacher, dtype)
    tw = _f(problem.teacher_w, dtype)
    M = teacher.shape[1]
    has_data = problem.x_data is not None
    if problem.x_data is not None:
        assert problem.y_data is not None  # _check_inputs: x_data and y_data come together
        xdata, ydata = _f(problem.x_data, dtype), _f(problem.y_data, dtype)
        T_data = int(problem.x_data.shape[0])
    else:
        xdata, ydata, T_data = out, out, 0
    B, c, d = problem.batch, problem.c, problem.d
    C_BLK, D_BLK, DIN_BLK = _P2(c), _P2(D), _P2(d)
    M_BLK = min(_P2(max(M, 1)), 16)
    # σ_π through memory: a Python float kernel argument would be rounded to float32
    sig = torch.tensor([float(problem.sigma_pi)], dtype=dtype, device=dev)

    if path in ("fused", "split"):
        G = _group_size(problem)
        B_BLK = _P2(B)
        if block_n is None:
            block_n = max(1, min(_P2(N), 4096 // (B_BLK * D_BLK), 128))
        N_BLK = _P2(block_n)
        n_nblk = triton.cdiv(N, N_BLK)
        if path == "fused":
            P = 1
        elif split is None:
            P = _split_programs(R, n_nblk, dev)
        else:
            P = max(1, min(int(split), n_nblk, 65535))  # grid axis 1 is capped at 65535
        chunk = triton.cdiv(n_nblk, P) * N_BLK  # particles per program, whole blocks
        P = triton.cdiv(N, chunk)  # no program without particles
        sx = torch.empty((R, G, B_BLK, D_BLK), dtype=dtype, device=dev)
        se = torch.empty((R * P, G, B_BLK, C_BLK), dtype=dtype, device=dev)
        part = torch.empty((R, P, G, B_BLK, C_BLK) if P > 1 else (1,), dtype=dtype, device=dev)
        sy = torch.empty((R, G, B_BLK, C_BLK) if P > 1 else (1,), dtype=dtype, device=dev)
        args = (
            out, snaps, losses, runs, alpha, tau, beta,
            problem.scheme.to(torch.int32).to(dev).contiguous(),
            problem.project_noise.to(torch.int32).to(dev).contiguous(),
            teacher, tw, _f(problem.rho_x, dtype), _f(problem.rho_y, dtype), _f(problem.m_z, dtype),
            _f(problem.proj, dtype), xdata, ydata, sx, se, part, sy,
            R, N, M, G, B, T_data,
        )  # fmt: skip
        meta = dict(
            UNIT=problem.unit_code, ACT=problem.activation_code, C=c, DIN=d, D=D,
            B_BLK=B_BLK, DIN_BLK=DIN_BLK, C_BLK=C_BLK, D_BLK=D_BLK, N_BLK=N_BLK, M_BLK=M_BLK,
            HAS_DATA=has_data, num_warps=4,
        )  # fmt: skip
        if P == 1:  # every step in one launch
            _particle_steps_fused_kernel[(R,)](
                *args, int(step0), 0, steps, snapshot_every, S, k0, k1, sig, 1, N,
                PHASE=0, **meta,
            )  # fmt: skip
            return out, snaps, losses
        for ls in range(steps):  # two launches per step; the boundary syncs the P programs
            for phase in (1, 2):
                _particle_steps_fused_kernel[(R, P)](
                    *args, int(step0), ls, 1, snapshot_every, S, k0, k1, sig, P, chunk,
                    PHASE=phase, **meta,
                )  # fmt: skip
        return out, snaps, losses

    # ---- two-pass path
    interp = triton_interpreter_enabled() or dev.type != "cuda"
    if allow_tf32 is None:
        allow_tf32 = bool(torch.backends.cuda.matmul.allow_tf32)
    precision = "tf32" if (dtype == torch.float32 and allow_tf32 and not interp) else "ieee"
    D_BLK2 = max(16, D_BLK)
    C_BLK2 = max(16, C_BLK)
    # Shared memory per block on sm_90 (the H100 allows 227 KiB = 232448 B; sizes from sm_90
    # compiles of both kernels with Triton 3.9). float32: 64 × 64 tiles with 3 stages need
    # <= 180224 B up to D_BLK = 128 with C_BLK <= 64 (143360 B for the paper-size d = 100,
    # c = 1), 229376 B at C_BLK = 128 (too close to the limit: 2 stages there), and
    # 274432-311296 B at D_BLK = 256, where 32 × 32 tiles are used. float64 doubles every
    # tile: 64 × 64 with 3 stages needed 253952 B at d = 100, c = 1; 32 × 32 with 2 stages
    # needs <= 139264 B up to D_BLK = 128, 16 × 16 with 2 stages <= 133120 B at D_BLK = 256.
    # tests/test_triton_codegen.py compiles each regime's worst case (c close to D).
    if dtype == torch.float64:
        tile, ns = (32 if D_BLK2 <= 128 else 16), 2
    else:
        tile, ns = (64 if D_BLK2 <= 128 else 32), (3 if C_BLK2 <= 64 else 2)
    BB = _P2(block_b) if block_b else tile
    BN = _P2(block_n) if block_n else tile
    BB, BN = max(16, BB), max(16, BN)
    nw = 4 if dev.type != "cuda" else 8
    # (batch block, particle block, warps, stages) of the forward and the backward kernel
    fwd_cfg, bwd_cfg = (BB, BN, nw, ns), (BB, BN, nw, ns)
    if dev.type == "cuda" and dtype == torch.float32 and D_BLK2 <= 128 and C_BLK2 <= 16:
        if not block_b and not block_n:  # the measured tiles (TWO_PASS_CUDA_F32_TILES)
            fwd_cfg, bwd_cfg = TWO_PASS_CUDA_F32_TILES["fwd"], TWO_PASS_CUDA_F32_TILES["bwd"]
    if tile_config is not None:
        fwd_cfg, bwd_cfg = tile_config.get("fwd", fwd_cfg), tile_config.get("bwd", bwd_cfg)
    BBf, BNf, nwf, nsf = fwd_cfg
    BBb, BNb, nwb, nsb = bwd_cfg
    n_bblk = triton.cdiv(B, BBf)
    n_nblk = triton.cdiv(N, BNb)
    if split is None:
        target = 4 * _n_sm(dev)
        split = max(1, min(triton.cdiv(N, BNf), triton.cdiv(target, R * n_bblk)))
    SPLIT = max(1, min(int(split), triton.cdiv(N, BNf)))
    xt = torch.empty((R, B, D), dtype=dtype, device=dev)
    y = torch.empty((R, B, c), dtype=dtype, device=dev)
    e = torch.empty((R, B, c), dtype=dtype, device=dev)
    part = torch.empty((R, SPLIT, B, c), dtype=dtype, device=dev)
    for ls in range(steps):
        t = int(step0) + ls
        s_idx = (ls + 1) // snapshot_every - 1 if (ls + 1) % snapshot_every == 0 else -1
        _tp_data_kernel[(R * n_bblk,)](
            xt, y, runs, teacher, tw, xdata, ydata, R, M, B, n_bblk, t, ls, k0, k1, sig,
            ACT=problem.activation_code, C=c, DIN=d, D=D, BB=BBf, C_BLK=C_BLK, D_BLK=D_BLK,
            M_BLK=min(M_BLK, 4), HAS_DATA=has_data,
        )  # fmt: skip
        _tp_forward_kernel[(R * n_bblk * SPLIT,)](
            out, xt, part, N, B, n_bblk, SPLIT,
            ACT=problem.activation_code, C=c, D=D, BB=BBf, BN=BNf, C_BLK=C_BLK2,
            D_BLK=D_BLK2, PRECISION=precision, num_warps=nwf, num_stages=nsf,
        )  # fmt: skip
        _tp_residual_kernel[(R,)](
            part, y, e, losses, N, B, S, s_idx, SPLIT, C=c, BB=min(_P2(B), 1024),
            C_BLK=C_BLK,
        )  # fmt: skip
        _tp_backward_kernel[(R * n_nblk,)](
            out, snaps, xt, e, runs, alpha, tau, beta, N, B, S, s_idx, n_nblk, t, k0, k1,
            ACT=problem.activation_code, C=c, D=D, BB=BBb, BN=BNb, C_BLK=C_BLK2, D_BLK=D_BLK2,
            PRECISION=precision, num_warps=nwb, num_stages=nsb,
        )  # fmt: skip
    return out, snaps, losses


PF_MAX_DIN = 256  # particle_forward keeps whole rows of x (and of w / z_k) in registers
PF_MAX_C = 256  # standard unit: the c outputs a_i (and Φ_b, r_b) are one register tile


def _pf_unit_reasons(unit: Unit) -> list[str]:
    reasons = []
    if unit.d > PF_MAX_DIN:
        reasons.append(
            f"the fused particle_forward kernels keep whole input rows on chip: d <= "
            f"{PF_MAX_DIN}, got d = {unit.d}"
        )
    if unit.code == StandardUnit.code and unit.c > PF_MAX_C:
        reasons.append(
            f"the fused particle_forward kernels keep the c outputs of the standard unit on "
            f"chip: c <= {PF_MAX_C}, got c = {unit.c}"
        )
    return reasons


def _pf_check_inputs(x: torch.Tensor, theta: torch.Tensor, unit: Unit) -> None:
    if not isinstance(unit, Unit) or unit.code not in (MatrixUnit.code, StandardUnit.code):
        raise TypeError(f"unit must be a MatrixUnit or a StandardUnit, got {unit!r}")
    for t, name, width, what in ((x, "x", unit.d, "(B, d)"), (theta, "theta", unit.D, "(N, D)")):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating torch.Tensor of shape {what}")
        if t.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"{name} must be float32 or float64, got {t.dtype}")
        if t.ndim != 2 or t.shape[1] != width:
            raise ValueError(
                f"{name} must be {what} with {width} columns for {unit!r}, got {tuple(t.shape)}"
            )
    if x.dtype != theta.dtype or x.device != theta.device:
        raise ValueError(
            f"x and theta must share dtype and device, got {x.dtype} on {x.device} and "
            f"{theta.dtype} on {theta.device}"
        )
    if theta.shape[0] < 1:
        raise ValueError("theta must hold at least one particle (N >= 1)")
    reasons = _pf_unit_reasons(unit)
    if reasons:
        raise ValueError("; ".join(reasons) + " (use the cpp or torch backend)")


def _pf_config(x: torch.Tensor, unit: Unit, block_b: int | None, block_n: int | None):
    """(BB, BN, DIN_BLK, C_BLK, PRECISION, num_warps, num_stages). Every tl.dot operand dimension
    is >= 16 (the CUDA minimum); float32 uses IEEE products (no TF32: the float32 tolerance is
    2e-5). Wide float64 tiles are 16 × 16 with 2 pipeline stages: 32 × 32 with the default 3
    stages needs up to 456 KiB of shared memory on sm_90 (d = c = 256), over the H100's 227 KiB
    per block; 16 × 16 needs at most 162 KiB."""
    din_blk = max(16, _P2(unit.d))
    c_blk = max(16, _P2(unit.c))
    wide = din_blk > 64 or c_blk > 64
    fp64_wide = wide and x.dtype == torch.float64
    tile = 16 if fp64_wide else (32 if wide else 64)
    bb = max(16, _P2(block_b)) if block_b else tile
    bn = max(16, _P2(block_n)) if block_n else tile
    num_warps = 8 if (x.device.type == "cuda" and wide) else 4
    num_stages = 2 if fp64_wide else 3
    return bb, bn, din_blk, c_blk, "ieee", num_warps, num_stages


def _pf_split(dev: torch.device, tiles: int, reduced_tiles: int, split: int | None) -> int:
    # split the reduced axis until the grid has ~4 programs per SM (1 on CPU / interpreter)
    if split is None:
        on_gpu = dev.type == "cuda"
        sms = torch.cuda.get_device_properties(dev).multi_processor_count if on_gpu else 0
        split = triton.cdiv(4 * sms, tiles) if on_gpu else 1
    return max(1, min(int(split), reduced_tiles))


@on_tensor_device
def particle_forward_triton(
    x: torch.Tensor,
    theta: torch.Tensor,
    unit: Unit,
    *,
    block_b: int | None = None,
    block_n: int | None = None,
    split: int | None = None,
) -> torch.Tensor:
    """Φ_θ(x_b) = (1/N) Σ_i σ*(x_b, θ_i) for every sample, fused (no B×N buffer).

    x (B, d), theta (N, D) float32 / float64 of the same dtype and device, any strides →
    (B, c) in that dtype. Grid over (sample tile × split of N [× output k for the matrix unit]);
    each program loops over its particle tiles, forms the pre-activations with ``tl.dot``
    (IEEE fp32 or fp64 products and sums, no TF32) and accumulates Φ in the input dtype. The
    ``split`` partial sums (each already divided by N) are added at the end. ``block_b`` /
    ``block_n`` / ``split`` override the tile sizes and the split (tests use them).

    Example::

        phi = particle_forward_triton(x, theta, MatrixUnit(2, 2))
    """
    _pf_check_inputs(x, theta, unit)
    B, N = x.shape[0], theta.shape[0]
    out = torch.empty((B, unit.c), dtype=x.dtype, device=x.device)
    if B == 0:
        return out
    BB, BN, DIN_BLK, C_BLK, precision, nw, ns = _pf_config(x, unit, block_b, block_n)
    n_bblk = triton.cdiv(B, BB)
    heads = unit.c if unit.code == MatrixUnit.code else 1
    SPLIT = _pf_split(x.device, n_bblk * heads, triton.cdiv(N, BN), split)
    part = out[None] if SPLIT == 1 else x.new_empty((SPLIT, B, unit.c))
    _pf_forward_kernel[(n_bblk * SPLIT * heads,)](
        x, theta, part, B, N, x.stride(0), x.stride(1), theta.stride(0), theta.stride(1), n_bblk,
        SPLIT, UNIT=unit.code, ACT=unit.activation_code, C=unit.c, DIN=unit.d, C_BLK=C_BLK,
        DIN_BLK=DIN_BLK, BB=BB, BN=BN, PRECISION=precision, num_warps=nw, num_stages=ns,
    )  # fmt: skip
    return out if SPLIT == 1 else part.sum(0)


@on_tensor_device
def particle_forward_backward_triton(
    x: torch.Tensor,
    theta: torch.Tensor,
    unit: Unit,
    grad_phi: torch.Tensor,
    *,
    block_b: int | None = None,
    block_n: int | None = None,
    split: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂θ (N, D), ∂L/∂x (B, d)) of L = Σ_bk grad_phi[b, k] Φ_θ(x_b)_k, fused.

    With r = grad_phi / N: ∂L/∂θ_i = Σ_b J_θ σ*(x_b, θ_i)ᵀ r_b and ∂L/∂x_b = Σ_i J_x σ*(x_b, θ_i)ᵀ
    r_b. Two kernels recompute the activations tile by tile (FlashAttention-style, no B×N
    buffer): one with a grid over particle tiles that loops over sample tiles (∂θ), one with a
    grid over sample tiles that loops over particle tiles (∂x); each may split its reduced axis
    (partials added at the end). x (B, d), theta (N, D), grad_phi (B, c), any strides; outputs in
    x's dtype. Precision: IEEE fp32 or fp64 products and sums (no TF32).
    """
    _pf_check_inputs(x, theta, unit)
    B, N = x.shape[0], theta.shape[0]
    if not isinstance(grad_phi, torch.Tensor) or not grad_phi.is_floating_point():
        raise TypeError(f"grad_phi must be a floating torch.Tensor of shape ({B}, {unit.c})")
    if tuple(grad_phi.shape) != (B, unit.c):
        raise ValueError(f"grad_phi must be ({B}, {unit.c}), got {tuple(grad_phi.shape)}")
    if grad_phi.device != x.device:
        raise ValueError(f"grad_phi is on {grad_phi.device}, x on {x.device}")
    g = grad_phi.to(x.dtype)  # the kernels read r = g / N in the input dtype
    grad_theta = torch.empty((N, unit.D), dtype=x.dtype, device=x.device)
    grad_x = torch.empty((B, unit.d), dtype=x.dtype, device=x.device)
    if B == 0:
        return grad_theta.zero_(), grad_x
    BB, BN, DIN_BLK, C_BLK, precision, nw, ns = _pf_config(x, unit, block_b, block_n)
    n_bblk, n_nblk = triton.cdiv(B, BB), triton.cdiv(N, BN)
    heads = unit.c if unit.code == MatrixUnit.code else 1
    strides = (x.stride(0), x.stride(1), theta.stride(0), theta.stride(1), g.stride(0),
               g.stride(1))  # fmt: skip
    meta = dict(UNIT=unit.code, ACT=unit.activation_code, C=unit.c, DIN=unit.d, C_BLK=C_BLK,
                DIN_BLK=DIN_BLK, BB=BB, BN=BN, PRECISION=precision, num_warps=nw,
                num_stages=ns)  # fmt: skip

    split_t = _pf_split(x.device, n_nblk * heads, n_bblk, split)
    part_t = grad_theta[None] if split_t == 1 else x.new_empty((split_t, N, unit.D))
    _pf_grad_theta_kernel[(n_nblk * split_t * heads,)](
        x, theta, g, part_t, B, N, *strides, n_nblk, split_t, D=unit.D, **meta
    )
    split_x = _pf_split(x.device, n_bblk, n_nblk, split)
    part_x = grad_x[None] if split_x == 1 else x.new_empty((split_x, B, unit.d))
    _pf_grad_x_kernel[(n_bblk * split_x,)](
        x, theta, g, part_x, B, N, *strides, n_bblk, split_x, **meta
    )
    if split_t > 1:
        grad_theta = part_t.sum(0)
    if split_x > 1:
        grad_x = part_x.sum(0)
    return grad_theta, grad_x


# ---------------------------------------------------------------------------------------------
# public entry point (registry)
# ---------------------------------------------------------------------------------------------


def _check(inputs: Mapping[str, Any]) -> list[str]:
    problem = inputs.get("problem")
    theta = inputs.get("theta")
    if not isinstance(problem, ParticleProblem):
        return ["particle_steps needs a ParticleProblem"]
    reasons = []
    N = int(theta.shape[1]) if isinstance(theta, torch.Tensor) and theta.ndim == 3 else 1
    if not _auto_two_pass(problem, N):
        reasons += _fused_reasons(problem)
    if "fa_reasons" not in problem.backend_cache:  # once per (memoised) problem
        problem.backend_cache["fa_reasons"] = fa_kernel_reasons(problem)
    reasons += problem.backend_cache["fa_reasons"]
    if isinstance(theta, torch.Tensor):
        for name in ("alpha", "tau", "beta", "teacher", "rho_x", "m_z", "proj", "x_data"):
            tens = getattr(problem, name)
            if isinstance(tens, torch.Tensor) and tens.device != theta.device:
                reasons.append(f"problem.{name} is on {tens.device}, theta on {theta.device}")
    return reasons


@register_kernel("particle_steps", "triton", dtypes=(torch.float32, torch.float64), check=_check)
def particle_steps(
    theta: torch.Tensor,
    problem: ParticleProblem,
    step0: int,
    steps: int,
    snapshot_every: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """θ (R, N, D) → (θ_out (R, N, D), snapshots (R, S, N, D), losses (R, S)), S = steps // K.

    ``steps`` particle SGD/Langevin steps of every run from absolute step ``step0``, with the
    scheme, teacher and noise of :mod:`symkern.meanfield.problem` (see the module docstring).
    """
    return particle_steps_triton(theta, problem, step0, steps, snapshot_every)


def _pf_check(inputs: Mapping[str, Any]) -> list[str]:
    x, theta = inputs.get("x"), inputs.get("theta")
    reasons = []
    if isinstance(x, torch.Tensor) and x.ndim == 2 and x.shape[1] > PF_MAX_DIN:
        reasons.append(
            f"the fused particle_forward kernels keep whole input rows on chip: d <= "
            f"{PF_MAX_DIN}, got d = {x.shape[1]}"
        )
    if isinstance(x, torch.Tensor) and isinstance(theta, torch.Tensor):
        if x.device != theta.device:
            reasons.append(f"x is on {x.device}, theta on {theta.device}")
    return reasons


@register_kernel(
    "particle_forward", "triton", dtypes=(torch.float32, torch.float64), check=_pf_check
)
def particle_forward(x: torch.Tensor, theta: torch.Tensor, unit: Unit) -> torch.Tensor:
    """Φ (B, c) = (1/N) Σ_i σ*(x_b, θ_i) for x (B, d), θ (N, D); fused, no B×N buffer (see
    :func:`particle_forward_triton`)."""
    return particle_forward_triton(x, theta, unit)


@register_kernel(
    "particle_forward_backward", "triton", dtypes=(torch.float32, torch.float64), check=_pf_check
)
def particle_forward_backward(
    x: torch.Tensor, theta: torch.Tensor, unit: Unit, grad_phi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂θ (N, D), ∂L/∂x (B, d)) from ∂L/∂Φ (B, c); activations recomputed per tile (see
    :func:`particle_forward_backward_triton`)."""
    return particle_forward_backward_triton(x, theta, unit, grad_phi)
