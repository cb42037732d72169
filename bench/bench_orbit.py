"""Orbit averaging of a permutation representation: symkern cpp vs torch, against the copy floor.

Every case builds its group as explicit permutation arrays (numpy), its orbits with the cpp
``orbit_labels`` kernel (checked against the numpy reference ``symkern.groups.orbits``), and the
plan with ``make_orbit_plan``; it then times, on the same x in the same run:

* ``symkern``       the cpp ``orbit_mean`` kernel (forced through the registry)
* ``naive``         ``x[:, perms].mean(1)`` over ALL |G| element permutations — materialises
                    B x |G| x D (4.8 GB for S5 at full size, PERF.md's measured baseline); only
                    where that fits in ``NAIVE_MAX_BYTES``
* ``torch_index_add`` the best torch formulation (orbit ids + index_add in x's dtype, as a user
                    writes it; the reference kernel sums in float64 for accuracy, and is the
                    float64 reference here)
* ``torch_compile`` that formulation under ``torch.compile`` (compiled once, outside the timing)
* ``copy_into_fresh_tensor``  ``torch.empty_like(x).copy_(x)``: the floor for an op returning a
                    new tensor (allocation + first-touch page faults included, like symkern's call)
* ``symkern_out``    the public ``symkern.orbit_average(x, rep, backend="cpp", out=buf)`` into a
                    reused buffer (no allocation / page faults: comparable with the copy floor)
* ``symkern_in_place`` (block cases) ``symkern.project_fixed(y, rep, backend="cpp", out=y)``
* the copy floor (conftest: copy into a reused buffer; ``ratio_vs_copy_floor``)

Cases: S5 permuting 5 blocks of 200 (|G| = 120), one swap of 2 blocks of 500 (|G| = 2), S7
permuting 7 blocks of 143 (|G| = 5040): D ~ 1000 and K ~ 143-500 throughout, so the cpp time
should not depend on |G|. And T(2) of Alt(100) (D = 10_000, two large interleaved orbits: the
diagonal and the off-diagonal) for the interleaved-orbit path.

Full size: x = 1e4 x 1e3 fp32 (T(2) Alt(100): 1e3 x 1e4). ``--benchmark-disable``: small shapes.

GPU cases (``test_orbit_mean_block_perm_gpu``, the three block cases): the Triton ``orbit_mean``
kernel (forced through the registry) on CUDA at x = 1e5 x ~1e3 fp32 (400 MB, B·D >= 1e8), timed
with ``triton.testing.do_bench`` against the torch reference (orbit ids + index_add) on the same
GPU, ``torch.empty_like(x).copy_(x)`` and, where the gather fits (the swap), the naive gather; the
copy floor is a device-to-device copy of x in the same run. extra_info: achieved GB/s, the
fraction of the copy floor's bandwidth and of the H100's measured 2994 GB/s, PERF.md's target
(>= 80 % of copy bandwidth, time independent of |G|), the device name. Each checks every row
against the float64 reference on the CPU before timing. Without CUDA they are skipped, except in
the smoke run, which executes them at tiny sizes in the Triton interpreter on CPU tensors.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from device_ceilings import (  # noqa: E402
    GPU_TARGET_FRACTION_OF_COPY,
    copy_bandwidth_fractions,
)
from torch_baselines import torch_orbit_mean  # noqa: E402

pytest.importorskip("symkern._C")

import symkern  # noqa: E402
from symkern.backends.reference.orbit import orbit_mean as reference_orbit_mean  # noqa: E402
from symkern.backends.registry import select_kernel  # noqa: E402
from symkern.groups.orbits import orbit_labels as numpy_orbit_labels  # noqa: E402
from symkern.ops.plans import make_orbit_plan  # noqa: E402

NAIVE_MAX_BYTES = 6e9  # the S5 full-size naive gather (4.8 GB) fits; S7's (200 GB) does not


def _cpp(op: str):
    return select_kernel(op, {}, "cpp").fn


def _fresh_copy(x: torch.Tensor):
    """The copy floor for an op that returns a NEW tensor: allocation + first-touch included."""
    return lambda: torch.empty_like(x).copy_(x)


def _public_into(x: torch.Tensor, rep, ref: torch.Tensor, *, in_place=False):
    """The public op writing into a reused buffer (``out=``: no allocation / page faults, so
    comparable with the copy floor, which also reuses its destination), checked against ``ref``
    first. In place: ``project_fixed(y, rep, out=y)`` on a copy y of x (a projection: the values
    stay in E^G, the memory traffic is the same every call)."""
    if in_place:
        y = x.clone()
        run = lambda: symkern.project_fixed(y, rep, backend="cpp", out=y)  # noqa: E731
    else:
        out = torch.empty_like(x)
        run = lambda: symkern.orbit_average(x, rep, backend="cpp", out=out)  # noqa: E731
    _check_close(run(), ref)
    return run


def block_perm(sigma: tuple[int, ...], block: int) -> np.ndarray:
    """Coordinate permutation moving block b to block sigma[b] (position within a block kept)."""
    n = len(sigma)
    p = np.empty(n * block, dtype=np.int64)
    for b, s in enumerate(sigma):
        p[b * block : (b + 1) * block] = s * block + np.arange(block)
    return p


def block_group(n_blocks: int, block: int, order: str) -> tuple[np.ndarray, np.ndarray]:
    """(generators, all elements) of S_n (order='sym') or a swap (order='swap') on blocks."""
    if order == "swap":
        gens = [block_perm((1, 0), block)]
        elems = [block_perm((0, 1), block), gens[0]]
        return np.stack(gens), np.stack(elems)
    n = n_blocks
    transposition = tuple([1, 0] + list(range(2, n)))
    cycle = tuple(list(range(1, n)) + [0])
    gens = np.stack([block_perm(transposition, block), block_perm(cycle, block)])
    elems = np.stack([block_perm(s, block) for s in itertools.permutations(range(n))])
    return gens, elems


def alternating_t2_generators(n: int) -> np.ndarray:
    """Generators of Alt(n) acting on index pairs (i, j) -> i * n + j (tensor square)."""
    c3 = np.arange(n)
    c3[[0, 1, 2]] = [1, 2, 0]
    big = np.arange(n)
    if n % 2:  # (0 1 ... n-1) is even for odd n
        big = np.roll(np.arange(n), -1)
    else:  # (1 2 ... n-1) is an (n-1)-cycle, even for even n
        big[1:] = np.roll(np.arange(1, n), -1)
    return np.stack([(p[:, None] * n + p[None, :]).ravel() for p in (c3, big)]).astype(np.int64)


def _plan_from_generators(gens: np.ndarray, dtype: torch.dtype):
    labels, rel = _cpp("orbit_labels")(gens, None)
    ref_labels, ref_rel = numpy_orbit_labels(gens, None)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(rel, ref_rel)
    return make_orbit_plan(labels, rel, dtype)


def _compiled_index_add(x: torch.Tensor, plan):
    """The torch_index_add baseline under ``torch.compile`` (static shapes; the first call
    compiles and is the warm-up, outside the timing)."""
    fn = torch.compile(torch_orbit_mean, dynamic=False)
    return lambda: fn(x, plan)


def _x(B: int, D: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, D, generator=g, dtype=torch.float64).add_(0.5).to(dtype)


def _check_close(out: torch.Tensor, ref: torch.Tensor, rtol: float = 2e-5) -> None:
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != {tuple(ref.shape)}"
    err = (out.double() - ref.double()).abs().max().item()
    scale = ref.abs().max().item()
    assert err <= rtol * scale, f"max error {err:.3g} > {rtol:g} x max|ref| = {rtol * scale:.3g}"


BLOCK_CASES = {
    # name: (n_blocks, block, kind, full B, smoke block size)
    "S5_blocks_G120": (5, 200, "sym", 10_000, 20),
    "swap_blocks_G2": (2, 500, "swap", 10_000, 50),
    "S7_blocks_G5040": (7, 143, "sym", 10_000, 5),
}


@pytest.mark.parametrize("case", list(BLOCK_CASES))
def test_orbit_mean_block_perm(compare, smoke, case):
    n_blocks, block, kind, B, smoke_block = BLOCK_CASES[case]
    if smoke:
        block, B = smoke_block, 64
    gens, elems = block_group(n_blocks, block, kind)
    G, D = elems.shape
    plan = _plan_from_generators(gens, torch.float32)
    x = _x(B, D)
    cpp_mean = _cpp("orbit_mean")
    perms = torch.from_numpy(elems)

    naive_bytes = B * G * D * x.element_size()
    naive_ok = naive_bytes <= NAIVE_MAX_BYTES

    compiled = _compiled_index_add(x, plan)

    def check():
        out = cpp_mean(x, plan)
        ref = reference_orbit_mean(x.double(), plan_f64)
        _check_close(out, ref)
        _check_close(compiled(), ref)
        rows = x[: min(B, 16)]  # the naive group sum, on a few rows (exact definition of the mean)
        _check_close(out[: rows.shape[0]], rows.double()[:, perms].mean(1))

    plan_f64 = make_orbit_plan(*_cpp("orbit_labels")(gens, None), torch.float64)
    ref_f64 = reference_orbit_mean(x.double(), plan_f64)
    rep = symkern.groups.perm_rep(list(gens))  # the public ops' plan, built once for both
    baselines = {
        "torch_index_add": lambda: torch_orbit_mean(x, plan),
        "torch_compile": compiled,
        "copy_into_fresh_tensor": _fresh_copy(x),
        "symkern_out": _public_into(x, rep, ref_f64),
        "symkern_in_place": _public_into(x, rep, ref_f64, in_place=True),
    }
    if naive_ok:
        baselines["naive_gather_mean"] = lambda: x[:, perms].mean(1)
    compare.benchmark.extra_info.update(
        group_order=G,
        D=D,
        B=B,
        n_orbits=plan.n_orbits,
        naive_timed=naive_ok,
        naive_bytes=float(naive_bytes),
    )
    compare(
        lambda: cpp_mean(x, plan),
        baselines=baselines,
        floor_of=x,
        check=check,
        bytes_moved=2 * x.nbytes,
    )


def test_orbit_mean_t2_alternating(compare, smoke):
    """T(2) of Alt(100): D = 10_000, K = 2 interleaved orbits (diagonal / off-diagonal)."""
    n, B = (12, 64) if smoke else (100, 1_000)
    gens = alternating_t2_generators(n)
    plan = _plan_from_generators(gens, torch.float32)
    assert plan.n_orbits == 2
    x = _x(B, n * n)
    cpp_mean = _cpp("orbit_mean")
    plan_f64 = make_orbit_plan(*_cpp("orbit_labels")(gens, None), torch.float64)

    compiled = _compiled_index_add(x, plan)

    def check():
        ref = reference_orbit_mean(x.double(), plan_f64)
        _check_close(cpp_mean(x, plan), ref)
        _check_close(compiled(), ref)

    compare.benchmark.extra_info.update(D=n * n, B=B, n_orbits=plan.n_orbits)
    compare(
        lambda: cpp_mean(x, plan),
        baselines={
            "torch_index_add": lambda: torch_orbit_mean(x, plan),
            "torch_compile": compiled,
            "copy_into_fresh_tensor": _fresh_copy(x),
            "symkern_out": _public_into(
                x, symkern.groups.perm_rep(list(gens)), reference_orbit_mean(x.double(), plan_f64)
            ),
        },
        floor_of=x,
        check=check,
        bytes_moved=2 * x.nbytes,
    )


SMALL_CASES = {  # name: (representation, batch): a layer's worth of input, per-call cost
    "S5_T2_perm_32x25": (lambda: symkern.groups.symmetric(5).tensor_power(2), 32),
    "SO3_T2_lowrank_32x9": (lambda: symkern.groups.so3().tensor_power(2), 32),
}


@pytest.mark.parametrize("case", list(SMALL_CASES))
def test_public_op_small_input_per_call(compare, smoke, case):
    """The public ``symkern.project_fixed`` on a small input (a layer's batch inside a model):
    the call's fixed cost, not bandwidth. Baselines: the torch code a user would write (orbit
    ids + index_add for a permutation rep, Q (Qᵀ x) with the same basis for SO(3)), and the same
    call through symkern's torch.library custom op (``through_custom_op``, the route every call
    took before 2026-11-24 and torch.compile still traces: ~50–100 µs of dispatch)."""
    from symkern.ops.fixed_point import _basis_on, _project_lowrank_op  # noqa: PLC0415
    from symkern.ops.orbit import _orbit_mean_op, orbit_plan  # noqa: PLC0415

    make, B = SMALL_CASES[case]
    rep = make()
    x = _x(B, rep.dim)
    if rep.is_finite:
        plan = orbit_plan(rep, x.dtype, x.device)
        tensors = (plan.orbit_id, plan.coef, plan.inv_size, plan.order, plan.seg_start)
        natural = lambda: torch_orbit_mean(x, plan)  # noqa: E731
        through_op = lambda: _orbit_mean_op(x, *tensors, "cpp")  # noqa: E731
    else:
        Q = _basis_on(rep, x.dtype, x.device)
        natural = lambda: (x @ Q) @ Q.T  # noqa: E731
        through_op = lambda: _project_lowrank_op(x, Q, "cpp")  # noqa: E731
    run = lambda: symkern.project_fixed(x, rep, backend="cpp")  # noqa: E731
    ref = symkern.project_fixed(x.double(), rep, backend="torch")

    def check():
        for fn in (run, natural, through_op):
            _check_close(fn(), ref)

    compare.benchmark.extra_info.update(B=B, D=rep.dim)
    info = compare(
        run, baselines={"torch_natural": natural, "through_custom_op": through_op}, check=check
    )
    if info:
        compare.benchmark.extra_info["symkern_us_per_call"] = info["symkern_ms"] * 1e3


def tensor_power_generators(gens: np.ndarray, power: int) -> np.ndarray:
    """Generators of a perm rep acting on index tuples (i_1, ..., i_p), row-major."""
    n = gens.shape[1]
    out = []
    for p in gens:
        t = p
        for _ in range(power - 1):
            t = (t[:, None] * n + p[None, :]).ravel()
        out.append(t)
    return np.stack(out).astype(np.int64)


def _sym_generators(n: int) -> np.ndarray:
    transposition = np.arange(n)
    transposition[[0, 1]] = [1, 0]
    return np.stack([transposition, np.roll(np.arange(n), -1)]).astype(np.int64)


LABEL_CASES = {
    # name: (full generators, smoke generators); PERF.md target <= 2 ms for both
    "T2_Alt100_D10000_G2": (
        lambda: alternating_t2_generators(100),
        lambda: alternating_t2_generators(12),
    ),
    "T5_S5_D3125_G2": (
        lambda: tensor_power_generators(_sym_generators(5), 5),
        lambda: tensor_power_generators(_sym_generators(3), 3),
    ),
}


@pytest.mark.parametrize("case", list(LABEL_CASES))
def test_orbit_labels_speed(compare, smoke, case):
    """Union-find over the generators vs the numpy reference (vectorised pointer jumping)."""
    gens = LABEL_CASES[case][1 if smoke else 0]()
    cpp_labels = _cpp("orbit_labels")

    def check():
        a, b = cpp_labels(gens, None), numpy_orbit_labels(gens, None)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])

    compare.benchmark.extra_info.update(D=gens.shape[1], n_generators=gens.shape[0], target_ms=2.0)
    compare(
        lambda: cpp_labels(gens, None),
        baselines={"numpy_reference": lambda: numpy_orbit_labels(gens, None)},
        check=check,
    )


# --- GPU: the Triton orbit_mean kernel on CUDA ---------------------------------------------------
# Timed on CUDA only. The smoke run (--benchmark-disable) without a GPU still executes them, at
# tiny sizes under the Triton interpreter on CPU tensors, so CI runs their correctness checks.

GPU_BATCH = 100_000  # x = 1e5 x ~1e3 fp32 = 400 MB: B·D >= 1e8


def _triton_orbit_mean(x: torch.Tensor, plan):
    """The triton orbit_mean kernel, forced through the registry (fails loudly if it cannot
    run these inputs, e.g. CPU tensors without TRITON_INTERPRET=1)."""
    return select_kernel("orbit_mean", {"x": x, "orbit_id": plan.orbit_id}, "triton").fn


def _gpu_fractions(info: dict) -> dict:
    frac = info["copy_floor_ms"] / info["symkern_ms"]
    return {**copy_bandwidth_fractions(info),
            "target_fraction_of_copy_bandwidth": GPU_TARGET_FRACTION_OF_COPY,
            "meets_target": bool(frac >= GPU_TARGET_FRACTION_OF_COPY)}  # fmt: skip


@pytest.mark.parametrize("case", list(BLOCK_CASES))
def test_orbit_mean_block_perm_gpu(compare, smoke, gpu_device, case):
    """The block-permutation cases on a GPU at B·D >= 1e8 (x = 1e5 x ~1e3 fp32, 400 MB): the
    fused Triton kernel (one read of x, one write of out) vs the torch reference (orbit ids +
    index_add) on the same GPU and the copy floor. Same D and K ~ 143-500 for |G| = 2, 120,
    5040: the kernel time should not depend on |G| (compare the cases' symkern_ms)."""
    dev = gpu_device
    n_blocks, block, kind, _, smoke_block = BLOCK_CASES[case]
    B = GPU_BATCH
    if smoke:
        block, B = smoke_block, 12  # one row block of 16 with 4 masked rows (interpreter)
    gens, elems = block_group(n_blocks, block, kind)
    G, D = elems.shape
    labels, rel = _cpp("orbit_labels")(gens, None)
    ref_labels, ref_rel = numpy_orbit_labels(gens, None)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(rel, ref_rel)
    plan = make_orbit_plan(labels, rel, torch.float32, device=dev)
    plan_f64 = make_orbit_plan(labels, rel, torch.float64)  # CPU: the independent oracle
    x_cpu = _x(B, D)
    x = x_cpu.to(dev)
    triton_mean = _triton_orbit_mean(x, plan)
    perms = torch.from_numpy(elems)

    naive_bytes = B * G * D * x.element_size()
    naive_ok = naive_bytes <= NAIVE_MAX_BYTES

    def check():
        out = triton_mean(x, plan).cpu()
        assert out.shape == (B, D) and out.dtype == torch.float32
        _check_close(out, reference_orbit_mean(x_cpu.double(), plan_f64))  # every row
        rows = x_cpu[: min(B, 4)]  # the naive group sum on a few rows (definition of the mean)
        _check_close(out[: rows.shape[0]], rows.double()[:, perms].mean(1))

    baselines = {
        "torch_index_add": lambda: torch_orbit_mean(x, plan),
        "copy_into_fresh_tensor": _fresh_copy(x),
    }
    if naive_ok:
        perms_dev = perms.to(dev)
        baselines["naive_gather_mean"] = lambda: x[:, perms_dev].mean(1)
    compare.benchmark.extra_info.update(
        group_order=G, D=D, B=B, BD=B * D, n_orbits=plan.n_orbits, naive_timed=naive_ok,
        naive_bytes=float(naive_bytes),
    )  # fmt: skip
    info = compare(
        lambda: triton_mean(x, plan),
        baselines=baselines,
        floor_of=x,
        check=check,
        device=dev,
        bytes_moved=2 * x.nbytes,
    )
    if smoke:
        return
    ex = compare.benchmark.extra_info
    ex.update(_gpu_fractions(info), dtype="float32", backend="triton")
    print(f"\n  GPU {case}: triton {info['symkern_ms']:.3f} ms, {info['achieved_GBps']:.0f} GB/s, "
          f"{ex['fraction_of_copy_floor_bandwidth']:.0%} of copy "
          f"(target {GPU_TARGET_FRACTION_OF_COPY:.0%}), "
          f"x{info['speedup_vs_torch_index_add']:.1f} vs torch index_add")  # fmt: skip
