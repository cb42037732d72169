"""Triton kernels for the fused mirror ops (op ``mirror_apply``; math in :mod:`symkern.ops.mirror`).

For rows θ_m ∈ R^d (θ: (M, d), any strides) and an orthonormal O ∈ R^{d×k}::

    c = Oᵀθ   (M, k),        out = θ + O(b − s·c)   (M, d)     (s = 2 reflect, 1 project)

``out`` is a new contiguous (M, d) tensor ((M, 0) in ``"coefficients"`` mode), c a new contiguous
(M, k) tensor, both in θ's dtype. Sums and updates run in float32 (float16 / bfloat16 / float32
inputs: every tile is upcast, so bf16 is also right under the interpreter) or float64.

Design
------
**Sparse columns, disjoint supports** (coordinates, rescaling pairs, neuron swaps, Householder on
disjoint blocks): ONE launch in which every entry of out is written exactly once. The work of a
block of BLOCK_M rows is cut into chunks: column chunks (BLOCK_J columns × their S entries:
gather θ at the entries, c = Σ_t value·θ, store c, store out = θ + (b − s·c)·value at the same
entries) and rest chunks (the coordinates outside every support, ``plan.rest``: out = θ). A 1-D
grid enumerates (row block, chunk), so the launch is as wide as the problem, not as M. Writes never
overlap between programs, so nothing depends on the order programs run in or on intra-block memory
ordering; HBM traffic is one read of θ, one write of out and one write of c, plus the (k, S) plan
read once per row block. (A "copy the row, barrier, then scatter" program per row block would need
a whole row per program — too few programs for 300 models — and would write the support twice.)

**Sparse columns, overlapping supports** (general sparse O): c needs every entry of a column before
any update, so three steps: the same kernel computes c only; ``out.copy_(θ)``; the same kernel
again, reading c, adds (b − s·c)·value to out with ``tl.atomic_add`` (several columns may hit one
coordinate; float32 / float64 only, so half precision is declined through the registry check, and
the summation order of overlapping updates is not deterministic).

**Dense O** (small k ≤ ``MAX_DENSE_K``): one program per BLOCK_M rows loops over d twice, like
``project_lowrank``: C = θ Oᵀᵀ accumulated with ``tl.dot`` (k padded to ≥ 16), then
out = θ + (b − s·C) Oᵀ tile by tile. float32 uses ``input_precision="ieee"`` (TF32 would cost
~3e-4 relative error).

All pointer offsets are int64 (M·d can exceed 2^31). The sparse kernel is compiled without
fused multiply-add (``enable_fp_fusion=False``): c_j = Σ_t value·θ rounds every product before the
sum, like the torch and C++ kernels, so a symmetric point gives c = 0 exactly (a neuron swap at
θ_p = θ_q), not the ~1e-17 rounding residue an FMA would leave.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import triton
import triton.language as tl

from symkern.backends.registry import register_kernel, triton_interpreter_enabled
from symkern.backends.triton import on_tensor_device
from symkern.ops.mirror import MODES

__all__ = ["MAX_DENSE_K", "mirror_apply_triton"]

MAX_DENSE_K = 256  # dense O: the (BLOCK_M, k) coefficient tile must stay in registers
_HALF = (torch.float16, torch.bfloat16)
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _entry_tile(
    index_ptr, value_ptr, cols, col_ok, row_ok, s0, S, BLOCK_S: tl.constexpr, acc_ty: tl.constexpr
):
    """Entries s0 .. s0 + BLOCK_S of the mirror columns ``cols``: coordinate indices and values
    (BLOCK_J, BLOCK_S), and the (BLOCK_M, BLOCK_J, BLOCK_S) mask of real (row, entry) pairs."""
    ts = s0 + tl.arange(0, BLOCK_S).to(tl.int64)
    ent_ok = col_ok[:, None] & (ts < S)[None, :]
    e_offs = cols[:, None] * S + ts[None, :]
    idx = tl.load(index_ptr + e_offs, mask=ent_ok, other=0)
    val = tl.load(value_ptr + e_offs, mask=ent_ok, other=0.0).to(acc_ty)
    return idx, val, row_ok[:, None, None] & ent_ok[None, :, :]


@triton.jit
def _mirror_sparse_kernel(
    theta_ptr,
    out_ptr,
    c_ptr,
    shift_ptr,
    index_ptr,
    value_ptr,
    rest_ptr,
    M,
    d,
    k,
    S,
    n_rest,
    n_col_chunks,
    n_work,
    stride_tm,
    stride_td,
    scale,
    BLOCK_M: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_R: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    COMPUTE_C: tl.constexpr,
    WRITE_OUT: tl.constexpr,
    ATOMIC: tl.constexpr,
    ACC_FP64: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_m = pid // n_work
    pid_w = pid % n_work
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_ok = rows < M
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    if pid_w < n_col_chunks:
        cols = pid_w.to(tl.int64) * BLOCK_J + tl.arange(0, BLOCK_J).to(tl.int64)
        col_ok = cols < k
        rc_ok = row_ok[:, None] & col_ok[None, :]
        c_offs = rows[:, None] * k + cols[None, :]
        if COMPUTE_C:
            acc = tl.zeros((BLOCK_M, BLOCK_J), dtype=acc_ty)
            for s0 in range(0, S, BLOCK_S):
                idx, val, m3 = _entry_tile(index_ptr, value_ptr, cols, col_ok, row_ok, s0, S,
                                           BLOCK_S, acc_ty)  # fmt: skip
                t_offs = rows[:, None, None] * stride_tm + idx[None, :, :] * stride_td
                th = tl.load(theta_ptr + t_offs, mask=m3, other=0.0).to(acc_ty)
                acc += tl.sum(th * val[None, :, :], axis=2)
            tl.store(c_ptr + c_offs, acc.to(c_ptr.dtype.element_ty), mask=rc_ok)
        else:
            acc = tl.load(c_ptr + c_offs, mask=rc_ok, other=0.0).to(acc_ty)
        if WRITE_OUT:
            coef = -scale * acc
            if HAS_SHIFT:
                coef += tl.load(shift_ptr + c_offs, mask=rc_ok, other=0.0).to(acc_ty)
            for s0 in range(0, S, BLOCK_S):
                idx, val, m3 = _entry_tile(index_ptr, value_ptr, cols, col_ok, row_ok, s0, S,
                                           BLOCK_S, acc_ty)  # fmt: skip
                upd = coef[:, :, None] * val[None, :, :]
                o_offs = rows[:, None, None] * d + idx[None, :, :]
                if ATOMIC:
                    tl.atomic_add(out_ptr + o_offs, upd.to(out_ptr.dtype.element_ty), mask=m3)
                else:
                    t_offs = rows[:, None, None] * stride_tm + idx[None, :, :] * stride_td
                    th = tl.load(theta_ptr + t_offs, mask=m3, other=0.0).to(acc_ty)
                    tl.store(out_ptr + o_offs, (th + upd).to(out_ptr.dtype.element_ty), mask=m3)
    else:
        # a rest chunk: coordinates outside every support are copied
        r = (pid_w - n_col_chunks).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
        r_ok = r < n_rest
        ri = tl.load(rest_ptr + r, mask=r_ok, other=0)
        m2 = row_ok[:, None] & r_ok[None, :]
        th = tl.load(theta_ptr + rows[:, None] * stride_tm + ri[None, :] * stride_td, mask=m2)
        tl.store(out_ptr + rows[:, None] * d + ri[None, :], th, mask=m2)


@triton.jit
def _mirror_dense_kernel(
    theta_ptr,
    ot_ptr,
    out_ptr,
    c_ptr,
    shift_ptr,
    M,
    d,
    k,
    stride_tm,
    stride_td,
    scale,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    WRITE_OUT: tl.constexpr,
    ACC_FP64: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    ks = tl.arange(0, BLOCK_K).to(tl.int64)
    row_ok = rows < M
    k_ok = ks < k
    acc_ty = tl.float64 if ACC_FP64 else tl.float32

    # C = θ O over d tiles; O tiles are Oᵀ (k, d) read with swapped strides. Padding loads 0.
    c = tl.zeros((BLOCK_M, BLOCK_K), dtype=acc_ty)
    for d0 in range(0, d, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        col_ok = cols < d
        t_offs = rows[:, None] * stride_tm + cols[None, :] * stride_td
        xt = tl.load(theta_ptr + t_offs, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        q = tl.load(
            ot_ptr + ks[None, :] * d + cols[:, None],
            mask=col_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        c = tl.dot(xt.to(acc_ty), q.to(acc_ty), c, input_precision="ieee", out_dtype=acc_ty)
    c_offs = rows[:, None] * k + ks[None, :]
    rk_ok = row_ok[:, None] & k_ok[None, :]
    tl.store(c_ptr + c_offs, c.to(c_ptr.dtype.element_ty), mask=rk_ok)

    if WRITE_OUT:
        coef = -scale * c
        if HAS_SHIFT:
            coef += tl.load(shift_ptr + c_offs, mask=rk_ok, other=0.0).to(acc_ty)
        for d0 in range(0, d, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
            col_ok = cols < d
            m2 = row_ok[:, None] & col_ok[None, :]
            t_offs = rows[:, None] * stride_tm + cols[None, :] * stride_td
            xt = tl.load(theta_ptr + t_offs, mask=m2, other=0.0).to(acc_ty)
            q_t = tl.load(
                ot_ptr + ks[:, None] * d + cols[None, :],
                mask=k_ok[:, None] & col_ok[None, :],
                other=0.0,
            )
            o = tl.dot(coef, q_t.to(acc_ty), xt, input_precision="ieee", out_dtype=acc_ty)
            tl.store(
                out_ptr + rows[:, None] * d + cols[None, :],
                o.to(out_ptr.dtype.element_ty),
                mask=m2,
            )


# ---------------------------------------------------------------------------------------------
# launcher
# ---------------------------------------------------------------------------------------------


def _check_args(theta, shift, index, value, dense_t, rest, mode, disjoint) -> None:
    if not isinstance(theta, torch.Tensor) or theta.ndim != 2:
        shape = tuple(theta.shape) if isinstance(theta, torch.Tensor) else type(theta).__name__
        raise ValueError(f"theta must be a 2-D tensor (M, d), got {shape}")
    if theta.dtype not in _DTYPES:
        raise ValueError(f"theta must have a floating dtype in {_DTYPES}, got {theta.dtype}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {tuple(MODES)}, got {mode!r}")
    M, d = theta.shape
    if (dense_t is None) == (index is None):
        raise ValueError("give exactly one of dense_t (dense O) or index/value (sparse columns)")
    if dense_t is not None:
        if dense_t.ndim != 2 or dense_t.shape[1] != d:
            raise ValueError(f"dense_t must have shape (k, d={d}), got {tuple(dense_t.shape)}")
        k, floats = dense_t.shape[0], [("dense_t", dense_t)]
    else:
        if index.ndim != 2 or index.dtype != torch.int64:
            raise ValueError(f"index must be an int64 (k, S) tensor, got {index.dtype}")
        if value is None or value.shape != index.shape:
            got = None if value is None else tuple(value.shape)
            raise ValueError(f"value must have index's shape {tuple(index.shape)}, got {got}")
        k, floats = index.shape[0], [("value", value)]
        if disjoint and mode != "coefficients" and (rest is None or rest.dtype != torch.int64):
            raise ValueError("rest (int64 coordinates outside every support) is needed if disjoint")
    if shift is not None:
        if shift.shape != (M, k):
            raise ValueError(f"shift must have shape {(M, k)}, got {tuple(shift.shape)}")
        floats.append(("shift", shift))
    for name, t in floats:
        if t.dtype != theta.dtype:
            raise ValueError(f"{name} has dtype {t.dtype}, but theta has dtype {theta.dtype}")
    for name, t in [*floats, ("index", index), ("rest", rest)]:
        if t is not None and t.device != theta.device:
            raise ValueError(f"{name} is on {t.device}, but theta is on {theta.device}")


@on_tensor_device
def mirror_apply_triton(
    theta: torch.Tensor,
    shift: torch.Tensor | None,
    index: torch.Tensor | None,
    value: torch.Tensor | None,
    dense_t: torch.Tensor | None,
    rest: torch.Tensor | None,
    mode: str,
    disjoint: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, c) of the module docstring for θ: (M, d), any strides.

    Sparse: ``index`` (k, S) int64, ``value`` (k, S); ``disjoint`` must be true only when no
    coordinate appears twice in ``index`` (the plan checks it), and then ``rest`` lists every other
    coordinate. Dense: ``dense_t`` = Oᵀ (k, d). ``shift``: None or (M, k). All on θ's device, floats
    in θ's dtype.
    """
    _check_args(theta, shift, index, value, dense_t, rest, mode, disjoint)
    M, d = theta.shape
    o = dense_t if dense_t is not None else index
    assert o is not None  # _check_args: exactly one of dense_t and index is given
    k = o.shape[0]
    write_out = mode != "coefficients"
    c = torch.empty((M, k), dtype=theta.dtype, device=theta.device)
    out = torch.empty((M, d if write_out else 0), dtype=theta.dtype, device=theta.device)
    if M == 0 or k == 0:
        if write_out:
            out.copy_(theta)
        c.zero_()
        return out, c
    acc_fp64 = theta.dtype == torch.float64
    scale = MODES[mode]
    shift_arg = shift.contiguous() if shift is not None else c  # c: a placeholder, never read
    if dense_t is not None:
        if k > MAX_DENSE_K:
            raise ValueError(f"dense O with k = {k} > {MAX_DENSE_K} columns is not supported")
        BLOCK_K = max(16, triton.next_power_of_2(k))
        BLOCK_D = max(16, min(128, 8192 // BLOCK_K, triton.next_power_of_2(d)))
        BLOCK_M = 16  # tl.dot needs every tile dimension >= 16
        _mirror_dense_kernel[(triton.cdiv(M, BLOCK_M),)](
            theta, dense_t.contiguous(), out, c, shift_arg, M, d, k,
            theta.stride(0), theta.stride(1), scale,
            BLOCK_M=BLOCK_M, BLOCK_D=BLOCK_D, BLOCK_K=BLOCK_K,
            HAS_SHIFT=shift is not None, WRITE_OUT=write_out, ACC_FP64=acc_fp64, num_warps=4,
        )  # fmt: skip
        return out, c

    assert index is not None and value is not None  # _check_args: sparse needs both
    index = index.contiguous()
    value = value.contiguous()
    S = index.shape[1]
    # 4 rows share each (k, S) plan tile on a GPU; the interpreter pays per program, so it takes
    # whole blocks of 32 rows (same code, fewer programs)
    BLOCK_M = min(32 if triton_interpreter_enabled() else 4, triton.next_power_of_2(M))
    BLOCK_S = min(32, triton.next_power_of_2(max(S, 1)))
    BLOCK_J = max(1, min(1024 // (BLOCK_M * BLOCK_S), triton.next_power_of_2(k)))
    n_col_chunks = triton.cdiv(k, BLOCK_J)
    n_rows = triton.cdiv(M, BLOCK_M)

    def launch(n_rest, rest_arg, BLOCK_R, compute_c, write, atomic):
        n_work = n_col_chunks + triton.cdiv(n_rest, BLOCK_R)
        _mirror_sparse_kernel[(n_rows * n_work,)](
            theta, out, c, shift_arg, index, value, rest_arg,
            M, d, k, S, n_rest, n_col_chunks, n_work,
            theta.stride(0), theta.stride(1), scale,
            BLOCK_M=BLOCK_M, BLOCK_J=BLOCK_J, BLOCK_S=BLOCK_S, BLOCK_R=BLOCK_R,
            HAS_SHIFT=shift is not None, COMPUTE_C=compute_c, WRITE_OUT=write, ATOMIC=atomic,
            ACC_FP64=acc_fp64, num_warps=4, enable_fp_fusion=False,
        )  # fmt: skip

    if not write_out:
        launch(0, index, 16, True, False, False)
    elif disjoint:
        assert rest is not None  # _check_args: rest is needed if disjoint and writing out
        n_rest = rest.numel()
        BLOCK_R = max(16, min(2048 // BLOCK_M, triton.next_power_of_2(max(n_rest, 1))))
        launch(n_rest, rest.contiguous() if n_rest else index, BLOCK_R, True, True, False)
    else:
        if theta.dtype in _HALF:
            raise ValueError(
                f"overlapping supports with {theta.dtype}: the scatter-add needs float32/float64 "
                "atomics"
            )
        launch(0, index, 16, True, False, False)
        out.copy_(theta)
        launch(0, index, 16, False, True, True)
    return out, c


def _check(inputs: Mapping[str, Any]) -> list[str]:
    theta = inputs.get("theta")
    reasons = []
    if isinstance(theta, torch.Tensor) and theta.dim() != 2:
        reasons.append(f"theta: the triton kernel takes (M, d), got shape {tuple(theta.shape)}")
    dense_t = inputs.get("dense_t")
    if isinstance(dense_t, torch.Tensor) and dense_t.shape[0] > MAX_DENSE_K:
        reasons.append(
            f"dense O with k = {dense_t.shape[0]} > {MAX_DENSE_K} columns: the coefficient tile "
            "would spill (two GEMMs, torch backend, are the right tool there)"
        )
    overlapping = "index" in inputs and not inputs.get("disjoint", False)
    if (
        overlapping
        and inputs.get("mode") != "coefficients"
        and isinstance(theta, torch.Tensor)
        and theta.dtype in _HALF
    ):
        reasons.append(
            f"overlapping column supports with {theta.dtype}: the scatter-add needs float32 / "
            "float64 atomics"
        )
    return reasons


# ---------------------------------------------------------------------------------------------
# public entry point (registry)
# ---------------------------------------------------------------------------------------------


@register_kernel("mirror_apply", "triton", dtypes=_DTYPES, check=_check)
def mirror_apply(theta, shift, index, value, dense_t, rest, mode, disjoint):
    """c = Oᵀθ (M, k) and out = θ + O(b − s·c) (M, d) on CUDA (or the interpreter)."""
    return mirror_apply_triton(theta, shift, index, value, dense_t, rest, mode, disjoint)
