"""Triton kernel for the orbit average (Reynolds operator) of a signed permutation representation.

Math (op ``orbit_mean``; x: (B, D), plan: :class:`symkern.ops.plans.OrbitPlan` with K orbits)::

    out[b, j] = coef[j] / |O(j)| * sum_{i in O(j)} coef[i] * x[b, i]

x may be non-contiguous (any element strides); out is a new contiguous (B, D) tensor of x's
dtype. The cost is O(B·D) memory traffic whatever |G| is: only the orbit structure enters, never
the group elements.

Design
------
``plan.order`` lists the coordinates sorted by orbit, so in "sorted position" space p every orbit
is a contiguous segment ``[seg_start[o], seg_start[o + 1])`` and the orbit sums are segment sums,
computed one of two ways:

an exact segmented sum: ``tl.associative_scan`` over (segment-start flag, value) pairs, read at
each segment's last position; float32 accumulation (float64 for float64 input). A prefix-sum
formulation (prefix[last] - prefix[first - 1]) is faster in the interpreter but wrong: one NaN or
inf in x would poison every later orbit of the row, so it is not used.

* Fused path (D <= ``fused_max_d``, default 1024): one program owns BLOCK_B whole rows. It loads x
  in natural column order (coalesced), multiplies by coef, permutes the row into sorted order
  with ``tl.gather(v, order)``, runs the scan, and reads each orbit's
  total at its segment's last (and first) position with ``tl.gather`` indexed by natural
  column j, so the store is coalesced too. This differs from "load x at ``order``, store at
  ``order``": both global accesses stay unit-stride and the permutation costs only on-chip
  traffic, which matters for strided orbits such as blocks permuted by S_n (orbit of i is
  {i, i + 200, i + 400, ...}), where a global gather/scatter would touch several sectors per warp
  access. HBM traffic is exactly one read of x and one write of out. The cap is a compile-time
  one: on sm_90 each ``tl.gather`` along a row lowers to warp shuffles, about (BLOCK_D / 32)^2
  per thread, so D = 2048 already compiles for ~20 s and spills, D = 4096 takes minutes in
  ptxas and D = 8192 does not finish; 1024 compiles in seconds without spills.
* Two-stage path (D > ``fused_max_d``): stage 1 tiles the
  sorted row into [BLOCK_B, BLOCK_D] pieces (x gathered at ``order``), scans within the tile and
  writes each segment's tile-partial sum into an fp32/fp64 accumulator acc (B, K). A segment that
  lies wholly inside the tile is written with a plain store (only this tile touches it); only the
  at most two segments per row and tile that cross a tile edge use ``tl.atomic_add``. So atomics
  stay O(B · D / BLOCK_D) even when every orbit has size 1 (K = D), and orbits inside one tile are
  summed deterministically. Tile-partial sums are computed in the accumulation dtype (float32
  for float16 / bfloat16 / float32 input, float64 for float64 input) and land in an acc of that
  dtype. Stage 2 writes
  out[b, j] = coef[j] / |O(j)| * acc[b, orbit_id[j]] in natural order (coalesced). Crossing
  orbits are summed in a nondeterministic order (atomics).

Per-coordinate index/scale arrays derived from the plan (int32 indices while D < 2^31; coef and
coef / |O| in float32, float64 for float64 input, with 1/|O| from ``seg_start`` rather than the
plan's possibly half-precision ``inv_size``) are built once per (plan, accumulation dtype) and
cached for the plan's lifetime. All pointer offsets into x, out and acc are int64: B·D or a
transposed view's column stride can exceed 2^31.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from symkern.backends.registry import register_kernel
from symkern.backends.triton import on_tensor_device

__all__ = ["orbit_mean_triton"]

# Widest row of the fused kernel: its two row-wise tl.gathers lower to ~(D/32)^2 warp shuffles per
# thread on a GPU, so compile time and register spills blow up above ~1024 (see the docstring).
FUSED_MAX_D = 1024


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _segmented_sum_combine(flag_a, val_a, flag_b, val_b):
    # (flag, value) pairs: a set flag on the right operand starts a new segment, discarding the
    # running sum on its left. Associative, so the scan may combine in any tree order.
    return flag_a | flag_b, tl.where(flag_b != 0, val_b, val_a + val_b)


@triton.jit
def _orbit_mean_fused_kernel(
    x_ptr,
    out_ptr,
    coef_ptr,  # (D,) param dtype, natural order
    scale_ptr,  # (D,) param dtype, natural order: coef[j] / |O(j)|
    order_ptr,  # (D,) int, sorted position -> natural column
    seg_flag_ptr,  # (D,) int8, sorted position starts a segment
    seg_last_ptr,  # (D,) int, natural column -> sorted position of its orbit's last member
    B,
    D,
    stride_xb,
    stride_xd,
    stride_ob,  # out's row stride (unit column stride)
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # A program owns rows [pid * BLOCK_B, ...) whole: it loads them before it stores them, and no
    # other program touches them, so out may be x itself (in place).
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < B
    col_ok = cols < D
    mask = row_ok[:, None] & col_ok[None, :]

    x_offs = rows[:, None] * stride_xb + cols[None, :].to(tl.int64) * stride_xd
    x = tl.load(x_ptr + x_offs, mask=mask, other=0.0)
    coef = tl.load(coef_ptr + cols, mask=col_ok, other=0.0)
    vals = x.to(coef.dtype) * coef[None, :]

    # Padded sorted positions (p >= D) lie after every real one, so whatever they gather cannot
    # leak into a real segment's prefix.
    order = tl.load(order_ptr + cols, mask=col_ok, other=0).to(tl.int32)
    sorted_vals = tl.gather(vals, tl.broadcast_to(order[None, :], (BLOCK_B, BLOCK_D)), axis=1)
    last = tl.load(seg_last_ptr + cols, mask=col_ok, other=0).to(tl.int32)
    last = tl.broadcast_to(last[None, :], (BLOCK_B, BLOCK_D))
    flag = tl.load(seg_flag_ptr + cols, mask=col_ok, other=1).to(tl.int32)
    flags = tl.broadcast_to(flag[None, :], (BLOCK_B, BLOCK_D))
    _, scanned = tl.associative_scan(
        (flags, sorted_vals), axis=1, combine_fn=_segmented_sum_combine
    )
    totals = tl.gather(scanned, last, axis=1)
    scale = tl.load(scale_ptr + cols, mask=col_ok, other=0.0)
    out = totals * scale.to(totals.dtype)[None, :]
    out_offs = rows[:, None] * stride_ob + cols[None, :]
    tl.store(out_ptr + out_offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _orbit_mean_partial_sums_kernel(
    x_ptr,
    acc_ptr,  # (B, K) fp32 / fp64, zero-initialised
    order_ptr,  # (D,) int, sorted position -> natural column
    sorted_coef_ptr,  # (D,) param dtype, coef[order[p]]
    sorted_orbit_ptr,  # (D,) int, orbit of sorted position p
    seg_first_ptr,  # (D,) int, first sorted position of p's segment
    seg_last_ptr,  # (D,) int, last sorted position of p's segment
    B,
    D,
    K,
    n_tiles_d,
    stride_xb,
    stride_xd,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # 1-D grid: grid axes 1/2 are capped at 65535, which B / BLOCK_B can exceed.
    pid = tl.program_id(0)
    pid_b = pid // n_tiles_d
    pid_d = pid % n_tiles_d
    rows = pid_b.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    tile_start = pid_d * BLOCK_D
    tile_end = tl.minimum(tile_start + BLOCK_D, D)
    lane = tl.arange(0, BLOCK_D)
    pos = tile_start + lane
    row_ok = rows < B
    pos_ok = pos < D
    mask = row_ok[:, None] & pos_ok[None, :]

    src = tl.load(order_ptr + pos, mask=pos_ok, other=0).to(tl.int64)
    coef = tl.load(sorted_coef_ptr + pos, mask=pos_ok, other=0.0)
    orbit = tl.load(sorted_orbit_ptr + pos, mask=pos_ok, other=0).to(tl.int64)
    first = tl.load(seg_first_ptr + pos, mask=pos_ok, other=0)
    last = tl.load(seg_last_ptr + pos, mask=pos_ok, other=0)

    x = tl.load(x_ptr + rows[:, None] * stride_xb + src[None, :] * stride_xd, mask=mask, other=0.0)
    vals = x.to(coef.dtype) * coef[None, :]
    flag = ((pos == first) | (lane == 0)).to(tl.int32)
    flags = tl.broadcast_to(flag[None, :], (BLOCK_B, BLOCK_D))
    _, partial = tl.associative_scan((flags, vals), axis=1, combine_fn=_segmented_sum_combine)

    # At a segment's last position inside this tile, `partial` is that segment's tile sum.
    ends = pos_ok & ((pos == last) | (pos == tile_end - 1))
    crosses = (first < tile_start) | (last >= tile_end)
    acc_ptrs = acc_ptr + rows[:, None] * K + orbit[None, :]
    partial = partial.to(acc_ptr.dtype.element_ty)
    tl.store(acc_ptrs, partial, mask=row_ok[:, None] & (ends & (crosses == 0))[None, :])
    tl.atomic_add(
        acc_ptrs, partial, mask=row_ok[:, None] & (ends & crosses)[None, :], sem="relaxed"
    )


@triton.jit
def _orbit_mean_broadcast_kernel(
    acc_ptr,  # (B, K) acc dtype: orbit sums
    out_ptr,
    orbit_ptr,  # (D,) int, natural order
    scale_ptr,  # (D,) acc dtype, natural order: coef[j] / |O(j)|
    B,
    D,
    K,
    n_tiles_d,
    stride_ob,  # out's row stride (unit column stride)
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Reads only the orbit sums, which the previous launch computed from all of x: out may be x.
    pid = tl.program_id(0)
    pid_b = pid // n_tiles_d
    pid_d = pid % n_tiles_d
    rows = pid_b.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = rows < B
    col_ok = cols < D
    mask = row_ok[:, None] & col_ok[None, :]

    orbit = tl.load(orbit_ptr + cols, mask=col_ok, other=0).to(tl.int64)
    scale = tl.load(scale_ptr + cols, mask=col_ok, other=0.0)
    sums = tl.load(acc_ptr + rows[:, None] * K + orbit[None, :], mask=mask, other=0.0)
    out = sums * scale[None, :]
    tl.store(
        out_ptr + rows[:, None] * stride_ob + cols[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=mask,
    )


# ---------------------------------------------------------------------------------------------
# plan preparation (cached per plan and accumulation dtype)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    coef: torch.Tensor  # (D,) natural order
    scale: torch.Tensor  # (D,) natural order, coef / |O|
    orbit: torch.Tensor  # (D,) natural order
    order: torch.Tensor  # (D,) sorted -> natural
    seg_flag: torch.Tensor  # (D,) int8, sorted
    seg_last_of_col: torch.Tensor  # (D,) natural -> sorted position of its orbit's last member
    sorted_coef: torch.Tensor  # (D,) sorted
    sorted_orbit: torch.Tensor  # (D,) sorted
    seg_first: torch.Tensor  # (D,) sorted
    seg_last: torch.Tensor  # (D,) sorted


_PREPARED: dict[tuple[int, torch.dtype], _Prepared] = {}


def _prepare(plan, acc_dtype: torch.dtype) -> _Prepared:
    # Keyed on the plan's orbit_id tensor, not the plan object: the torch.library op rebuilds the
    # (cheap) OrbitPlan wrapper around the same cached tensors on every call.
    anchor = plan.orbit_id
    key = (id(anchor), acc_dtype)
    hit = _PREPARED.get(key)
    if hit is not None:
        return hit
    D = plan.dim
    idx = torch.int32 if D < 2**31 - 1 else torch.int64
    orbit_id = plan.orbit_id.to(torch.int64)
    order = plan.order.to(torch.int64)
    seg_start = plan.seg_start.to(torch.int64)
    sizes = (seg_start[1:] - seg_start[:-1]).to(acc_dtype)
    coef = plan.coef.to(acc_dtype)
    sorted_orbit = orbit_id[order]
    seg_first = seg_start[sorted_orbit]
    seg_last = seg_start[sorted_orbit + 1] - 1
    positions = torch.arange(D, device=order.device)
    prepared = _Prepared(
        coef=coef.contiguous(),
        scale=(coef / sizes[orbit_id]).contiguous(),
        orbit=orbit_id.to(idx).contiguous(),
        order=order.to(idx).contiguous(),
        seg_flag=(positions == seg_first).to(torch.int8),
        seg_last_of_col=(seg_start[orbit_id + 1] - 1).to(idx).contiguous(),
        sorted_coef=coef[order].contiguous(),
        sorted_orbit=sorted_orbit.to(idx).contiguous(),
        seg_first=seg_first.to(idx).contiguous(),
        seg_last=seg_last.to(idx).contiguous(),
    )
    # Drop the entry when the tensor dies, so a recycled id() never sees stale arrays. Plans are
    # immutable; in-place edits of their tensors are not seen here.
    weakref.finalize(anchor, _PREPARED.pop, key, None)
    _PREPARED[key] = prepared
    return prepared


# ---------------------------------------------------------------------------------------------
# launcher
# ---------------------------------------------------------------------------------------------


def _check_plan(x: torch.Tensor, plan) -> None:
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (B, D), got shape {tuple(x.shape)}")
    D = x.shape[1]
    for name in ("dim", "n_orbits", "orbit_id", "coef", "inv_size", "order", "seg_start"):
        if not hasattr(plan, name):
            raise ValueError(f"plan must be an OrbitPlan; it has no attribute {name!r}")
    K = plan.n_orbits
    if plan.dim != D:
        raise ValueError(f"plan is for dimension {plan.dim}, but x has D = {D} columns")
    expected = {
        "orbit_id": (D,),
        "coef": (D,),
        "inv_size": (K,),
        "order": (D,),
        "seg_start": (K + 1,),
    }
    for name, shape in expected.items():
        t = getattr(plan, name)
        if tuple(t.shape) != shape:
            raise ValueError(f"plan.{name} must have shape {shape}, got {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"plan.{name} is on {t.device}, but x is on {x.device}")
    for name in ("orbit_id", "order", "seg_start"):
        if getattr(plan, name).is_floating_point():
            raise ValueError(f"plan.{name} must be an integer tensor")


@on_tensor_device
def orbit_mean_triton(
    x: torch.Tensor,
    plan,
    *,
    fused_max_d: int = FUSED_MAX_D,
    block_b: int | None = None,
    block_d: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Orbit average ``out[b, j] = coef[j] / |O(j)| * sum_{i in O(j)} coef[i] x[b, i]``.

    x: (B, D) float16 / bfloat16 / float32 / float64, any strides, on the plan's device.
    Returns a contiguous (B, D) tensor of x's dtype, or ``out`` filled: (B, D), x's dtype, unit
    column stride, x itself (in place) or not overlapping it. ``fused_max_d``: widest row handled
    by the single-pass kernel (wider rows use the two-stage path); ``block_b`` / ``block_d``
    override the tile shape (tests use them to keep interpreter grids small).
    """
    _check_plan(x, plan)
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"x must be a floating tensor of a supported dtype, got {x.dtype}")
    B, D = x.shape
    if out is None:
        out = torch.empty((B, D), dtype=x.dtype, device=x.device)
    elif out.shape != (B, D) or out.dtype != x.dtype or (D > 1 and out.stride(1) != 1):
        raise ValueError(f"out must be ({B}, {D}) {x.dtype} with unit column stride")
    if B == 0 or D == 0:
        return out
    # float32 accumulation (float64 for float64 input), also for the partial sums across tiles.
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    prep = _prepare(plan, acc_dtype)
    K = plan.n_orbits

    if D <= fused_max_d:
        BLOCK_D = triton.next_power_of_2(D)
        # ~4K elements per program: enough bytes in flight per SM without spilling the scan.
        BLOCK_B = block_b or max(1, min(4096 // BLOCK_D, triton.next_power_of_2(B)))
        num_warps = 4 if BLOCK_B * BLOCK_D <= 2048 else 8
        grid = (triton.cdiv(B, BLOCK_B),)
        _orbit_mean_fused_kernel[grid](
            x, out, prep.coef, prep.scale, prep.order, prep.seg_flag, prep.seg_last_of_col,
            B, D, x.stride(0), x.stride(1), out.stride(0),
            BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D, num_warps=num_warps,
        )  # fmt: skip
        return out

    BLOCK_D = block_d or 1024
    BLOCK_B = block_b or 4
    acc = torch.zeros((B, K), dtype=acc_dtype, device=x.device)
    n_tiles_d = triton.cdiv(D, BLOCK_D)
    grid = (triton.cdiv(B, BLOCK_B) * n_tiles_d,)
    _orbit_mean_partial_sums_kernel[grid](
        x, acc, prep.order, prep.sorted_coef, prep.sorted_orbit, prep.seg_first, prep.seg_last,
        B, D, K, n_tiles_d, x.stride(0), x.stride(1),
        BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D, num_warps=8,
    )  # fmt: skip
    _orbit_mean_broadcast_kernel[grid](
        acc, out, prep.orbit, prep.scale, B, D, K, n_tiles_d, out.stride(0),
        BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D, num_warps=8,
    )  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------
# public entry point (registry)
# ---------------------------------------------------------------------------------------------


@register_kernel(
    "orbit_mean",
    "triton",
    dtypes=(torch.float16, torch.bfloat16, torch.float32, torch.float64),
)
def orbit_mean(x: torch.Tensor, plan, out: torch.Tensor | None = None) -> torch.Tensor:
    """out[b, j] = coef[j] / |O(j)| * sum_{i in O(j)} coef[i] x[b, i]   (x: (B, D)); written
    directly into a given ``out`` (x itself, or not overlapping it)."""
    return orbit_mean_triton(x, plan, out=out)
