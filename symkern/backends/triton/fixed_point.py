"""Triton kernel for the low-rank projection onto a fixed-point subspace E^G.

Math (op ``project_lowrank``; x: (B, D), basis Q: (D, k) with orthonormal columns)::

    out = (x Q) Q^T          C = x Q: (B, k),   out = C Q^T: (B, D)

x may be non-contiguous (any element strides); out is a new contiguous (B, D) tensor of x's
dtype; k = 0 gives zeros. Products accumulate in float32 (float16 / bfloat16 / float32 inputs) or
float64 (float64 inputs).

Design
------
One fused kernel, never a dense D × D projector: each program owns BLOCK_B rows and

1. loops over D in BLOCK_D chunks accumulating C = x Q in registers with ``tl.dot``;
2. loops over D again writing out = C Q^T chunk by chunk.

x is read once and out written once; Q (D × k, small) is read twice per program and stays in L2,
so for k below the ridge (~44 for fp32, PERF.md) the kernel is memory-bound at ~2·B·D elements of
HBM traffic, against four passes for the two-GEMM formulation (read x, write C, read C, write out
plus a second read of Q per GEMM, and two launches).

``tl.dot`` needs every dimension >= 16, so k is padded to BLOCK_K = max(16, next_pow2(k)) with
masked (zero) loads, and BLOCK_B >= 16. float32 uses ``input_precision="ieee"``: the default TF32
rounds inputs to 10 mantissa bits, giving ~3e-4 relative error against a float64 reference, while
IEEE fp32 gives ~1e-6 — the projection feeds fixed-point tests that check idempotence to ~1e-5.
float16 / bfloat16 feed their native tensor-core ``tl.dot`` in the first product (products are
exact, the sum is fp32), and C stays fp32 for the second. Under the Triton interpreter, bf16
arithmetic is not trustworthy, so every tile is upcast to the accumulation dtype there.

The padded rank columns k >= K of C are x times zero padding of Q: NaN (0 · inf) in a row of x that
holds ±inf. They are selected to 0 before the second product, so padding never reaches the output
(the result is the formula over Q's D × k entries, as the torch reference computes it).

Very large k makes C = (BLOCK_B, k) spill out of registers and the op compute-bound, where a
cuBLAS GEMM pair wins; the kernel declines k > ``MAX_RANK`` through the registry check.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import triton
import triton.language as tl

from symkern.backends.registry import into, register_kernel, triton_interpreter_enabled
from symkern.backends.triton import on_tensor_device

__all__ = ["MAX_RANK", "project_lowrank_triton"]

MAX_RANK = 256


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _project_lowrank_kernel(
    x_ptr,
    q_ptr,
    out_ptr,
    B,
    D,
    K,
    stride_xb,
    stride_xd,
    stride_qd,
    stride_qk,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ACC_FP64: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    row_ok = rows < B
    k_ok = ks < K

    if ACC_FP64:
        c = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float64)
    else:
        c = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)

    # C = x Q over D chunks. Padded rows / columns / ranks load zeros, which add nothing.
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        col_ok = cols < D
        x_offs = rows[:, None] * stride_xb + cols[None, :].to(tl.int64) * stride_xd
        xt = tl.load(x_ptr + x_offs, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        q_offs = cols[:, None].to(tl.int64) * stride_qd + ks[None, :] * stride_qk
        qt = tl.load(q_ptr + q_offs, mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        if UPCAST:
            xt = xt.to(c.dtype)
            qt = qt.to(c.dtype)
        c = tl.dot(xt, qt, c, input_precision="ieee", out_dtype=c.dtype)
    # Padded rank columns of C hold x times Q's zero padding, NaN where x is ±inf: select them to
    # 0, or the zero padding of Q^T below would carry the NaN into every output column.
    c = tl.where(k_ok[None, :], c, 0.0)

    # out = C Q^T over D chunks; Q^T tiles are Q tiles read with swapped strides.
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        col_ok = cols < D
        qt_offs = ks[:, None] * stride_qk + cols[None, :].to(tl.int64) * stride_qd
        q_t = tl.load(q_ptr + qt_offs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        o = tl.dot(c, q_t.to(c.dtype), input_precision="ieee", out_dtype=c.dtype)
        out_offs = rows[:, None] * D + cols[None, :]
        tl.store(
            out_ptr + out_offs,
            o.to(out_ptr.dtype.element_ty),
            mask=row_ok[:, None] & col_ok[None, :],
        )


# ---------------------------------------------------------------------------------------------
# launcher
# ---------------------------------------------------------------------------------------------


def _check_basis(x: torch.Tensor, basis: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a 2-D tensor (B, D), got {shape}")
    if not isinstance(basis, torch.Tensor) or basis.ndim != 2:
        shape = tuple(basis.shape) if isinstance(basis, torch.Tensor) else type(basis).__name__
        raise ValueError(f"basis must be a 2-D tensor (D, k), got {shape}")
    if basis.shape[0] != x.shape[1]:
        raise ValueError(
            f"basis must have shape (D, k) with D = {x.shape[1]} (x's columns), got "
            f"{tuple(basis.shape)}"
        )
    if basis.dtype != x.dtype:
        raise ValueError(f"basis has dtype {basis.dtype}, but x has dtype {x.dtype}")
    if basis.device != x.device:
        raise ValueError(f"basis is on {basis.device}, but x is on {x.device}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"x must be a floating tensor of a supported dtype, got {x.dtype}")


@on_tensor_device
def project_lowrank_triton(
    x: torch.Tensor,
    basis: torch.Tensor,
    *,
    block_b: int | None = None,
    block_d: int | None = None,
) -> torch.Tensor:
    """Low-rank projection ``out = (x Q) Q^T`` with Q = ``basis``: (D, k).

    x: (B, D) float16 / bfloat16 / float32 / float64, any strides; basis: (D, k), same dtype and
    device, any strides. Returns a contiguous (B, D) tensor of x's dtype (zeros when k = 0).
    ``block_b`` / ``block_d`` override the tile shape (block_b >= 16, block_d >= 16).
    """
    _check_basis(x, basis)
    B, D = x.shape
    k = basis.shape[1]
    if k > MAX_RANK:
        raise ValueError(f"basis rank k = {k} exceeds the triton kernel's limit {MAX_RANK}")
    if B == 0 or D == 0:
        return torch.empty((B, D), dtype=x.dtype, device=x.device)
    if k == 0:
        return torch.zeros((B, D), dtype=x.dtype, device=x.device)
    out = torch.empty((B, D), dtype=x.dtype, device=x.device)

    BLOCK_K = max(16, triton.next_power_of_2(k))
    BLOCK_B = block_b or max(16, min(64, triton.next_power_of_2(B)))
    # Keep the Q tile (BLOCK_D x BLOCK_K) around 8K elements so large k does not spill; 4K for
    # float64, whose pipelined x / Q tiles otherwise need up to 288 KiB of shared memory on sm_90
    # (the H100 allows 227 KiB per block; 4K keeps every k <= MAX_RANK under 208 KiB).
    q_tile = 4096 if x.dtype == torch.float64 else 8192
    BLOCK_D = block_d or max(16, min(128, q_tile // BLOCK_K, triton.next_power_of_2(D)))
    if BLOCK_B < 16 or BLOCK_D < 16:
        raise ValueError(f"block_b and block_d must be >= 16 (tl.dot), got {BLOCK_B}, {BLOCK_D}")
    acc_fp64 = x.dtype == torch.float64
    # Native half tl.dot on a GPU; the interpreter mishandles bf16, so upcast there.
    upcast = x.dtype == torch.float32 or acc_fp64 or triton_interpreter_enabled()
    grid = (triton.cdiv(B, BLOCK_B),)
    _project_lowrank_kernel[grid](
        x, basis, out, B, D, k,
        x.stride(0), x.stride(1), basis.stride(0), basis.stride(1),
        BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D, BLOCK_K=BLOCK_K,
        ACC_FP64=acc_fp64, UPCAST=upcast, num_warps=4,
    )  # fmt: skip
    return out


def _lowrank_check(inputs: Mapping[str, Any]) -> list[str]:
    basis = inputs.get("basis")
    if isinstance(basis, torch.Tensor) and basis.ndim == 2 and basis.shape[1] > MAX_RANK:
        return [
            f"basis rank k = {basis.shape[1]} > {MAX_RANK}: the fused kernel would spill; two "
            "GEMMs (torch backend) are faster there"
        ]
    return []


# ---------------------------------------------------------------------------------------------
# public entry point (registry)
# ---------------------------------------------------------------------------------------------


@register_kernel(
    "project_lowrank",
    "triton",
    dtypes=(torch.float16, torch.bfloat16, torch.float32, torch.float64),
    check=_lowrank_check,
)
def project_lowrank(
    x: torch.Tensor, basis: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """out = (x Q) Q^T for an orthonormal basis Q: (D, k)   (x: (B, D)). A given ``out`` is
    filled by a copy of the kernel's fresh output (not yet written in place)."""
    return into(out, project_lowrank_triton(x, basis))
