"""The fused mirror op ``symkern::mirror_apply`` behind Mirror.reflect / project / coefficients /
breaking: every backend vs a float64 dense reference θ − s·O Oᵀθ, odd shapes, batch dims,
non-contiguous θ, autograd, dispatch and bad input."""

import math

import pytest
import torch

from symkern.backends import registry
from symkern.backends.registry import (
    BackendUnavailableError,
    ReferenceFallbackWarning,
    get_backend,
    select_kernel,
)
from symkern.mirror import Mirror
from symkern.ops.mirror import make_mirror_plan, mirror_apply
from symkern.testing import TRITON_DEVICE, assert_close

F64 = torch.float64
KINDS = ["coordinates", "rescaling_pairs", "neuron_swap", "householder", "dense", "overlapping"]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def mirror_backend(backend_case):
    """A backend_case that implements ``mirror_apply`` (skipped with the registry's reason)."""
    if not get_backend(backend_case.backend).has_kernel("mirror_apply"):
        pytest.skip(f"no {backend_case.backend!r} kernel for op 'mirror_apply' is implemented")
    return backend_case


@pytest.fixture
def ext():
    """The C++ extension (tests of its bindings are skipped without it)."""
    return pytest.importorskip("symkern._C")


def make_mirror(kind: str, d: int, seed: int = 0) -> Mirror:
    g = gen(seed)
    p = torch.randperm(d, generator=g)
    if kind == "coordinates":
        return Mirror.coordinates(p[: d // 2], d)
    if kind == "rescaling_pairs":
        P = d // 3
        return Mirror.rescaling_pairs(p[:P], p[P : 2 * P], d)
    if kind == "neuron_swap":
        B = d // 2 - 1
        return Mirror.neuron_swap(p[:B], p[B : 2 * B], d)
    if kind == "householder":
        # θ = [vec U (2 x 3), extra, vec W (p x 3), extra...]: hidden index = axis 1 of both
        h, m = 3, 2
        z = torch.randn(h, generator=g, dtype=F64)
        blocks = [(0, (m, h), 1), (m * h + 1, ((d - m * h - 2) // h, h), 1)]
        return Mirror.householder(z / z.norm(), blocks, d)
    if kind == "dense":
        Q, _ = torch.linalg.qr(torch.randn(d, 3, generator=g, dtype=F64))
        return Mirror.dense(Q)
    if kind == "overlapping":
        # general sparse O: 3 orthonormal columns that all live on the same 5 coordinates
        Q, _ = torch.linalg.qr(torch.randn(5, 3, generator=g, dtype=F64))
        return Mirror(p[:5].expand(3, 5), Q.T.contiguous(), d)
    raise AssertionError(kind)


def dense_reference(m: Mirror, theta: torch.Tensor):
    """(reflect, project, c) in float64 from the dense O."""
    O = m.to_dense()
    th = theta.detach().to("cpu", F64)
    c = th @ O
    return th - 2 * c @ O.T, th - c @ O.T, c


def check_all_ops(m: Mirror, theta: torch.Tensor, backend: str) -> None:
    ref_r, ref_p, ref_c = dense_reference(m, theta)
    scale = theta.detach().abs().max().item()  # c can be ~0: judge it against the data's size
    r = m.reflect(theta, backend=backend)
    p = m.project(theta, backend=backend)
    c, nrm = m.breaking(theta, backend=backend)
    for name, t, shape in (("reflect", r, theta.shape), ("project", p, theta.shape)):
        assert t.shape == shape and t.dtype == theta.dtype and t.device == theta.device, name
    assert c.shape == (*theta.shape[:-1], m.k)
    assert_close(r, ref_r, msg=f"{backend} reflect: ")
    assert_close(p, ref_p, msg=f"{backend} project: ")
    assert_close(c, ref_c, scale=scale, msg=f"{backend} c: ")
    assert_close(nrm, ref_c.norm(dim=-1), scale=scale, msg=f"{backend} norm: ")


def test_mirror_kinds_cover_both_layouts():
    # the six test mirrors are orthonormal, and the op's plan classifies their supports correctly
    for kind in KINDS:
        m = make_mirror(kind, 31)
        O = m.to_dense()
        assert_close(O.T @ O, torch.eye(m.k, dtype=F64), scale=1.0)
        plan = m._plan(torch.zeros((), dtype=F64))
        assert plan.disjoint == (kind not in ("dense", "overlapping")), kind
        assert (plan.dense_t is not None) == (kind == "dense"), kind
        if plan.disjoint:  # rest = the coordinates outside every support
            covered = torch.cat([plan.index.reshape(-1), plan.rest]).sort().values
            assert torch.equal(covered, torch.arange(m.d))


# ---------------------------------------------------------------- every backend vs float64 dense
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("M", [1, 7, 129])
def test_backend_matches_dense_reference(mirror_backend, kind, M):
    d = 31
    m = make_mirror(kind, d)
    base = torch.randn(M, d, generator=gen(M), dtype=F64) + 0.5
    dtypes = [F64, torch.float32]
    if mirror_backend.backend == "triton" and M == 129:
        dtypes = [torch.float32]  # interpreter time; float64 runs at M = 1 and 7
    for dtype in dtypes:
        check_all_ops(m, base.to(mirror_backend.device, dtype), mirror_backend.backend)


@pytest.mark.parametrize("kind", KINDS)
def test_batch_dims_and_non_contiguous(mirror_backend, kind):
    d = 13
    m = make_mirror(kind, d)
    dev, be = mirror_backend.device, mirror_backend.backend
    big = torch.randn(2, 9, d, generator=gen(3), dtype=F64).to(dev)
    check_all_ops(m, big[:, ::2], be)  # (2, 5, d): rows not mergeable -> the op copies
    cols = torch.randn(d, 6, generator=gen(4), dtype=F64).to(dev)
    check_all_ops(m, cols.T.to(torch.float32), be)  # (6, d), column stride 6: strided kernel path
    check_all_ops(m, cols.T, be)
    check_all_ops(m, cols[:, 0].expand(4, d), be)  # stride-0 rows
    check_all_ops(m, cols[:, 1], be)  # 1-D θ
    empty = torch.zeros(0, 3, d, dtype=F64, device=dev)
    assert m.reflect(empty, backend=be).shape == (0, 3, d)
    assert m.coefficients(empty, backend=be).shape == (0, 3, m.k)


def test_reflection_is_involution_and_projection_idempotent(mirror_backend):
    dev, be = mirror_backend.device, mirror_backend.backend
    th = torch.randn(3, 31, generator=gen(6), dtype=F64).to(dev)
    for kind in ("householder", "overlapping"):
        m = make_mirror(kind, 31)
        assert_close(m.reflect(m.reflect(th, backend=be), backend=be), th.cpu())
        p = m.project(th, backend=be)
        assert_close(m.project(p, backend=be), p.cpu())
        assert m.coefficients(p, backend=be).abs().max() < 1e-12


# ---------------------------------------------------------------- layouts of the C++ kernel
def _custom(columns, d):
    """A sparse Mirror from explicit columns [(coordinates, values)], values normalised."""
    index = torch.tensor([c for c, _ in columns])
    value = torch.tensor([v for _, v in columns], dtype=F64)
    return Mirror(index, value / value.norm(dim=1, keepdim=True), d)


def structured_mirrors():
    """Layouts that take each path of csrc/mirror.cpp (its header names them)."""
    a20, a12, house = torch.arange(20), torch.arange(12), torch.arange(1.0, 9.0, dtype=F64)
    return {
        # affine pieces, fused loops: p = 1 / S = 1 (+ rest runs), p = 2 / S = 1, p = 1 / S = 2
        "coordinate_block": Mirror.coordinates(torch.arange(3, 40), 53),
        "rescaling_interleaved": Mirror.rescaling_pairs(a20, 20 + a20, 45),
        "swap_contiguous_blocks": Mirror.neuron_swap(a12, 12 + a12, 27),
        # affine pieces, generic loops: S = 3, and p = 3 interleaved chains
        "affine_S3": _custom([([i, i + 10, i + 20], [1.0, -2.0, 0.5]) for i in range(10)], 31),
        "interleaved_p3": Mirror.coordinates(torch.arange(30).view(3, 10).T.reshape(-1), 33),
        # contiguous entries of S = 8 (Householder rows): dot products, streaming
        "householder_h8": Mirror.householder(house / house.norm(), [(1, (5, 8), 1)], 43),
        # affine stretches around a few scattered columns: rows staged, then both kinds of piece
        "mixed": Mirror.coordinates(torch.cat([a20, torch.tensor([25, 22, 31]), 40 + a20]), 61),
        # 1100 affine columns: pieces of kColChunk = 512, 512, 76
        "long_pieces": Mirror.neuron_swap(torch.arange(1100), 1100 + torch.arange(1100), 2201),
    }


# (affine pieces as (n, p), scalar columns, scattered) expected of each structured mirror
EXPECTED_LAYOUT = {
    "coordinate_block": ([(37, 1)], 0, False),
    "rescaling_interleaved": ([(20, 2)], 0, False),
    "swap_contiguous_blocks": ([(12, 1)], 0, False),
    "affine_S3": ([(10, 1)], 0, False),
    "interleaved_p3": ([(10, 3)], 0, False),
    "householder_h8": ([], 5, False),
    "mixed": ([(20, 1), (20, 1)], 3, True),
    "long_pieces": ([(512, 1), (512, 1), (76, 1)], 0, False),
}


@pytest.mark.parametrize("name", list(structured_mirrors()))
def test_cpp_layouts_match_dense_reference(ext, name):
    m = structured_mirrors()[name]
    layout = ext.mirror_sparse_layout(m.index.numpy(), m.d)
    affine = [(n, p) for _, n, p, is_affine in layout["pieces"] if is_affine]
    scalar = sum(n for _, n, _, is_affine in layout["pieces"] if not is_affine)
    assert (affine, scalar, layout["scattered"]) == EXPECTED_LAYOUT[name]
    assert layout["disjoint"]
    th = torch.randn(9, m.d, generator=gen(14), dtype=F64)  # a row block of 8, then 1
    check_all_ops(m, th, "cpp")
    check_all_ops(m, th.to(torch.float32), "cpp")
    check_all_ops(m, torch.randn(m.d, 9, generator=gen(15), dtype=F64).T, "cpp")  # strided θ
    # the shift b of the backward pass: out = θ + O(b − s·c), through every piece kind
    b = torch.randn(9, m.k, generator=gen(16), dtype=F64)
    out, c = mirror_apply(th, m._plan(th), "reflect", shift=b, backend="cpp")
    O = m.to_dense()
    assert_close(out, th + (b - 2 * th @ O) @ O.T)
    assert_close(c, th @ O, scale=th.abs().max().item())


def test_cpp_many_super_chunks(ext):
    """9000 affine columns (18 pieces, 2 super-chunks): the float64 torch kernel is the oracle
    here (a dense O would be 9001 x 9000)."""
    m = Mirror.coordinates(torch.arange(9000), 9001)
    layout = ext.mirror_sparse_layout(m.index.numpy(), 9001)
    assert layout["super_chunks"] == 2 and layout["rest"] == [(9000, 9001)]
    th = torch.randn(3, 9001, generator=gen(17), dtype=F64)
    for mode in ("reflect", "coefficients"):
        ref = mirror_apply(th, m._plan(th), mode, backend="torch")
        got = mirror_apply(th.float(), m._plan(th.float()), mode, backend="cpp")
        for g, r in zip(got, ref, strict=True):
            if r is not None:
                assert_close(g, r, scale=th.abs().max().item())


# ---------------------------------------------------------------- autograd
@pytest.mark.parametrize("kind", ["rescaling_pairs", "householder", "dense", "overlapping"])
@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_gradcheck(kind, backend):
    if not get_backend(backend).has_kernel("mirror_apply"):
        pytest.skip(f"no {backend!r} kernel for mirror_apply")
    m = make_mirror(kind, 11)
    th = torch.randn(2, m.d, generator=gen(5), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m.reflect(t, backend=backend), (th,))
    assert torch.autograd.gradcheck(lambda t: m.breaking(t, backend=backend)[1], (th,))
    plan = m._plan(th)
    b = torch.randn(2, m.k, generator=gen(6), dtype=F64, requires_grad=True)
    # both outputs at once, and the shift b: the VJP is the op itself on (g_out, g_c)
    assert torch.autograd.gradcheck(
        lambda t, s: mirror_apply(t, plan, "project", shift=s, backend=backend), (th, b)
    )


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_second_derivatives(backend):
    if not get_backend(backend).has_kernel("mirror_apply"):
        pytest.skip(f"no {backend!r} kernel for mirror_apply")
    for kind in ("neuron_swap", "dense"):
        m = make_mirror(kind, 9)
        th = torch.randn(2, 9, generator=gen(7), dtype=F64, requires_grad=True)
        plan = m._plan(th)
        assert torch.autograd.gradgradcheck(
            lambda t, plan=plan: mirror_apply(t, plan, "reflect", backend=backend), (th,)
        )
        assert torch.autograd.gradgradcheck(
            lambda t, plan=plan: mirror_apply(t, plan, "coefficients", backend=backend)[1], (th,)
        )


def test_gradcheck_triton():
    """Interpreter time: one small gradcheck through both outputs and the shift (the backward is
    the forward op, so this exercises every kernel flag the backward uses)."""
    if not get_backend("triton").has_kernel("mirror_apply"):
        pytest.skip("triton backend unavailable")
    for kind in ("neuron_swap", "overlapping", "dense"):
        m = make_mirror(kind, 5)
        th = torch.randn(1, 5, generator=gen(5), dtype=F64).to(TRITON_DEVICE).requires_grad_()
        b = torch.randn(1, m.k, generator=gen(6), dtype=F64).to(TRITON_DEVICE).requires_grad_()
        plan = m._plan(th)
        assert torch.autograd.gradcheck(
            lambda t, s, plan=plan: mirror_apply(t, plan, "reflect", shift=s, backend="triton"),
            (th, b),
            fast_mode=True,
        )
        assert torch.autograd.gradcheck(
            lambda t, m=m: m.coefficients(t, backend="triton"), (th,), fast_mode=True
        )


@pytest.mark.parametrize("kind", ["neuron_swap", "dense"])
def test_opcheck(backend_case, kind):
    """Every torch.library check (schema, fake tensors, autograd registration, AOT dispatch) of
    symkern::mirror_apply on each backend this machine runs."""
    m = make_mirror(kind, 9)
    th = torch.randn(4, 9, generator=gen(8), dtype=F64).to(backend_case.device).requires_grad_()
    plan = m._plan(th)
    mode = "reflect" if kind == "neuron_swap" else "coefficients"
    args = (th, None, plan.index, plan.value, plan.dense_t, plan.rest, mode, plan.disjoint,
            backend_case.backend)  # fmt: skip
    torch.library.opcheck(torch.ops.symkern.mirror_apply.default, args)


# ---------------------------------------------------------------- dispatch
def test_auto_dispatch_is_visible_per_dtype(ext):
    m = make_mirror("rescaling_pairs", 13)
    th = torch.randn(4, 13, generator=gen(9), dtype=F64)
    plan = m._plan(th)
    inputs = {"theta": th, "index": plan.index, "value": plan.value, "mode": "reflect"}
    assert select_kernel("mirror_apply", inputs).backend == "cpp"
    # half precision: the cpp kernel registers float32/float64 only, so auto picks torch, and
    # says so (once per op and reason)
    h = th.half()
    inputs_h = {**inputs, "theta": h, "value": m._plan(h).value}
    registry._warned_fallback.clear()
    with pytest.warns(ReferenceFallbackWarning, match="float16 not supported"):
        assert select_kernel("mirror_apply", inputs_h).backend == "torch"
    with pytest.raises(BackendUnavailableError, match="dtype torch.float16 not supported"):
        m.reflect(h, backend="cpp")
    ref_r, _, ref_c = dense_reference(m, h)
    assert_close(m.reflect(h), ref_r)
    assert_close(m.coefficients(h), ref_c, scale=h.abs().max().item())


def test_triton_declines_half_overlapping_with_reason():
    if not get_backend("triton").has_kernel("mirror_apply"):
        pytest.skip("triton backend unavailable")
    m = make_mirror("overlapping", 9)
    th = torch.randn(2, 9, generator=gen(10)).half().to(TRITON_DEVICE)
    with pytest.raises(BackendUnavailableError, match="atomics"):
        m.project(th, backend="triton")


def test_cpp_measures_disjointness_itself(ext):
    th = torch.randn(3, 31, generator=gen(11), dtype=F64)
    cases = (("rescaling_pairs", True), ("householder", True), ("overlapping", False))
    for kind, disjoint in cases:
        plan = make_mirror(kind, 31)._plan(th)
        out = torch.empty_like(th)
        c = torch.empty(3, plan.k, dtype=F64)
        ran = ext.mirror_sparse(th.numpy(), plan.index.numpy(), plan.value.numpy(), None, 1.0,
                               out.numpy(), c.numpy())  # fmt: skip
        assert ran is disjoint, kind


def test_symmetric_point_is_exactly_on_the_constraint(mirror_backend):
    """θ_p = θ_q for every swapped pair: c = (θ_p − θ_q)/√2 is exactly 0 (no FMA residue) and
    projecting or reflecting leaves θ unchanged bit for bit; callers test Oᵀθ = 0 with ==."""
    dev, be = mirror_backend.device, mirror_backend.backend
    for m in (structured_mirrors()["swap_contiguous_blocks"], make_mirror("neuron_swap", 27)):
        th = torch.randn(3, 27, generator=gen(18), dtype=F64)
        th[:, m.index[:, 1]] = th[:, m.index[:, 0]]
        for dtype in (F64, torch.float32):
            t = th.to(dev, dtype)
            assert torch.equal(m.coefficients(t, backend=be), torch.zeros_like(t[:, : m.k]))
            assert torch.equal(m.project(t, backend=be), t)
            assert torch.equal(m.reflect(t, backend=be), t)


# ---------------------------------------------------------------- NaN and bad input
def test_nan_stays_in_its_columns(mirror_backend):
    """Sparse columns: a NaN in θ[i] reaches c_j for the columns j holding i and out on their
    supports only. Dense O: the whole row (module docstring of symkern.ops.mirror)."""
    dev, be = mirror_backend.device, mirror_backend.backend
    for kind in ("neuron_swap", "householder", "dense"):
        m = make_mirror(kind, 13)
        O = m.to_dense()
        th = torch.randn(3, 13, generator=gen(12), dtype=F64)
        i = 4 if kind == "dense" else int(m.index[0, 0])
        ref_r, _, ref_c = dense_reference(m, th)
        hit_cols = O[i] != 0
        hit_coords = (O[:, hit_cols] != 0).any(1)
        ref_c[1, hit_cols] = math.nan
        ref_r[1, hit_coords] = math.nan
        if kind == "neuron_swap":
            assert int(hit_coords.sum()) == 2  # θ[i] and its swap partner
        th[1, i] = math.nan
        assert_close(m.reflect(th.to(dev), backend=be), ref_r)  # NaN positions must match too
        assert_close(m.coefficients(th.to(dev), backend=be), ref_c, scale=1.0)


def test_bad_inputs_raise_naming_argument(ext):
    m = make_mirror("neuron_swap", 9)
    with pytest.raises(ValueError, match=r"theta must have shape \(\.\.\., d=9\)"):
        m.reflect(torch.zeros(2, 8, dtype=F64))
    with pytest.raises(TypeError, match="theta must be a floating"):
        m.project(torch.zeros(2, 9, dtype=torch.long))
    with pytest.raises(TypeError, match="theta must be a torch.Tensor"):
        m.coefficients([0.0] * 9)
    with pytest.raises(ValueError, match="backend must be"):
        m.reflect(torch.zeros(9, dtype=F64), backend="cuda")
    plan = m._plan(torch.zeros((), dtype=F64))
    with pytest.raises(ValueError, match="mode must be"):
        mirror_apply(torch.zeros(9, dtype=F64), plan, "rotate")
    with pytest.raises(ValueError, match="shift must have shape"):
        mirror_apply(torch.zeros(2, 9, dtype=F64), plan, "reflect", shift=torch.zeros(2, 4))
    with pytest.raises(TypeError, match="shift must have theta's dtype"):
        mirror_apply(torch.zeros(2, 9, dtype=F64), plan, "reflect", shift=torch.zeros(2, 3))

    # the C++ binding on its own validates every buffer and names it
    th = torch.randn(2, 9, dtype=F64)
    out, c = torch.empty(2, 9, dtype=F64), torch.empty(2, plan.k, dtype=F64)
    ix, val = plan.index.numpy(), plan.value.numpy()
    bad_ix = ix.copy()
    bad_ix[1, 1] = 9
    with pytest.raises(ValueError, match="'index'.*outside \\[0, d=9\\)"):
        ext.mirror_sparse(th.numpy(), bad_ix, val, None, 2.0, out.numpy(), c.numpy())
    with pytest.raises(ValueError, match="'value'"):
        ext.mirror_sparse(th.numpy(), ix, val[:, :1].copy(), None, 2.0, out.numpy(), c.numpy())
    with pytest.raises(ValueError, match="'theta' must have dtype float32 or float64"):
        ext.mirror_sparse(th.long().numpy(), ix, val, None, 2.0, out.numpy(), c.numpy())
    with pytest.raises(ValueError, match="'value' must have dtype float32"):
        ext.mirror_sparse(th.float().numpy(), ix, val, None, 2.0, None, c.float().numpy())
    with pytest.raises(ValueError, match="'out' must not share memory with 'theta'"):
        ext.mirror_sparse(th.numpy(), ix, val, None, 2.0, th.numpy(), c.numpy())
    with pytest.raises(ValueError, match="'shift'"):
        ext.mirror_sparse(th.numpy(), ix, val, th.numpy(), 2.0, out.numpy(), c.numpy())
    with pytest.raises(ValueError, match="'c'"):
        ext.mirror_sparse(th.numpy(), ix, val, None, 2.0, out.numpy(), out.numpy())
    with pytest.raises(ValueError, match="'scale'"):
        ext.mirror_sparse(th.numpy(), ix, val, None, math.inf, out.numpy(), c.numpy())
    with pytest.raises(ValueError, match="'dense_t'"):
        ext.mirror_dense(th.numpy(), torch.zeros(2, 8, dtype=F64).numpy(), None, 2.0, None,
                        c.numpy())  # fmt: skip


@pytest.mark.gpu
def test_half_precision_on_gpu():
    for kind in ("householder", "dense"):
        m = make_mirror(kind, 31)
        th = torch.randn(5, 31, generator=gen(13), dtype=F64)
        for dtype in (torch.float16, torch.bfloat16):
            check_all_ops(m, th.to("cuda", dtype), "triton")


def test_mirror_apply_checks_its_arguments():
    """mirror_apply called directly names a bad theta, plan or mode (no AttributeError from deep
    inside, no kernel-level dtype error naming an internal buffer)."""
    m = make_mirror("neuron_swap", 9)
    plan = m._plan(torch.zeros((), dtype=F64))
    th = torch.zeros(2, 9, dtype=F64)
    with pytest.raises(TypeError, match="theta must be a torch.Tensor, got list"):
        mirror_apply([0.0] * 9, plan, "reflect")
    with pytest.raises(TypeError, match="theta must have a floating dtype"):
        mirror_apply(th.long(), plan, "reflect")
    with pytest.raises(TypeError, match=r"theta must have the plan's dtype and device \(torch"):
        mirror_apply(th.float(), plan, "reflect")
    with pytest.raises(TypeError, match="plan must be a MirrorPlan, got str|plan must be a Mirror"):
        mirror_apply(th, "plan", "reflect")
    with pytest.raises(ValueError, match=r"mode must be one of .*got \['reflect'\]"):
        mirror_apply(th, plan, ["reflect"])
    dense = make_mirror("dense", 9)
    with pytest.raises(TypeError, match="theta must have the plan's dtype"):
        mirror_apply(th.float(), dense._plan(th), "project")
    out, c = mirror_apply(th, plan, "reflect")  # valid call unchanged
    assert out.shape == (2, 9) and c.shape == (2, plan.k)


def test_make_mirror_plan_needs_dense_or_index_and_value():
    # without dense, a None index / value used to reach index.reshape: AttributeError on NoneType
    for index, value in ((None, None), (torch.tensor([[0]]), None), (None, torch.ones(1, 1))):
        with pytest.raises(TypeError, match="needs dense, or both index and value"):
            make_mirror_plan(3, index, value, None, F64, "cpu")
    plan = make_mirror_plan(3, torch.tensor([[0]]), torch.ones(1, 1, dtype=F64), None, F64, "cpu")
    assert plan.k == 1 and plan.disjoint and plan.rest.tolist() == [1, 2]


def test_integer_inputs_never_truncate_the_plan():
    """A plan cast to an integer input's dtype would truncate O (0.6 → 0): every op that builds a
    plan from its input's dtype rejects integer inputs naming the argument, instead of a silent
    wrong answer (expand used to return int64 zeros); floating inputs are unchanged."""
    for kind in KINDS:
        m = make_mirror(kind, 9)
        c = torch.ones(2, m.k, dtype=torch.long)
        for dt in (torch.long, torch.int32, torch.uint8, torch.bool):
            with pytest.raises(TypeError, match=f"c must be a floating tensor, got dtype {dt}"):
                m.expand(c.to(dt))
        ref = m.to_dense() @ torch.ones(m.k, dtype=F64)
        assert_close(m.expand(c.double())[0], ref)
        assert_close(m.expand(c.float())[1], ref)
        th = torch.ones(2, 9, dtype=torch.long)
        for op in (m.coefficients, m.reflect, m.project, m.breaking, m.group_norms):
            with pytest.raises(TypeError, match="theta must be a floating tensor"):
                op(th)
        with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
            m.to_dense(torch.long)
        with pytest.raises(TypeError, match="a mirror plan needs a floating dtype"):
            m._plan(th)
    O = torch.tensor([[0.6, 0.0], [0.8, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=F64)
    with pytest.raises(TypeError, match="c must be a floating tensor, got dtype torch.int64"):
        Mirror.dense(O).expand(torch.ones(2, dtype=torch.long))
    assert Mirror.dense(O).expand(torch.ones(2, dtype=F64)).tolist() == [0.6, 0.8, 1.0, 0.0]


def test_plain_eager_mirror_calls_run_the_kernel_without_the_custom_op(monkeypatch):
    """As for the orbit ops: a plain eager call runs the kernel directly (half the cost of
    Mirror.reflect on a small θ), autograd included (every mode, with and without a shift b;
    second derivatives too); only traced calls take the op."""
    import symkern.ops.mirror as mirror_module

    op, calls = mirror_module._mirror_apply_op, []

    def spy(*args):
        calls.append(args[-1])
        return op(*args)

    monkeypatch.setattr(mirror_module, "_mirror_apply_op", spy)
    m = make_mirror("rescaling_pairs", 13)
    th = torch.randn(4, 13, generator=gen(11), dtype=F64)
    ref_r, ref_p, ref_c = dense_reference(m, th)
    assert_close(m.reflect(th), ref_r)
    assert_close(m.project(th), ref_p)
    assert_close(m.coefficients(th), ref_c)
    assert calls == []
    tg = th.clone().requires_grad_()
    r = m.reflect(tg)
    assert_close(r, ref_r)
    r.backward(torch.ones_like(r))  # the reflection is symmetric: its VJP is itself
    assert_close(tg.grad, dense_reference(m, torch.ones_like(th))[0])
    plan = m._plan(th)
    b = torch.randn(4, plan.k, generator=gen(12), dtype=F64, requires_grad=True)
    t2 = th[:, :].clone().requires_grad_()
    for mode in ("reflect", "project"):
        assert torch.autograd.gradcheck(
            lambda t, s, mode=mode: mirror_apply(t, plan, mode, shift=s), (t2, b)
        )
        assert torch.autograd.gradgradcheck(
            lambda t, s, mode=mode: [v**2 for v in mirror_apply(t, plan, mode, shift=s)], (t2, b)
        )
    assert torch.autograd.gradcheck(lambda t: mirror_apply(t, plan, "coefficients")[1], (t2,))
    assert calls == []


def test_torch_func_transforms():
    """torch.func on the Mirror ops (grad, jvp, vmap incl. a vmapped shift only, jacrev =
    jacfwd in θ and b), against the dense reflection."""
    F = torch.func
    m = make_mirror("rescaling_pairs", 13)
    g = gen(13)
    th, tt = (torch.randn(2, 13, generator=g, dtype=F64) for _ in range(2))
    O = m.to_dense()
    R = torch.eye(13, dtype=F64) - 2 * O @ O.T
    assert_close(F.grad(lambda a: (m.reflect(a) ** 2).sum())(th), 2 * (th @ R) @ R)
    assert_close(F.jvp(m.reflect, (th,), (tt,))[1], tt @ R)
    ths = torch.randn(4, 2, 13, generator=g, dtype=F64)
    assert_close(F.vmap(m.reflect)(ths), ths @ R)
    assert_close(F.vmap(m.coefficients)(ths), ths @ O)
    plan = m._plan(th)
    b = torch.randn(2, plan.k, generator=g, dtype=F64)
    bs = torch.randn(3, 2, plan.k, generator=g, dtype=F64)
    got = F.vmap(lambda s: mirror_apply(th, plan, "project", shift=s)[0])(bs)
    assert_close(got, th - (th @ O - bs) @ O.T)  # out = θ + O(b − c)

    def out(a, s):
        return mirror_apply(a, plan, "reflect", shift=s)[0]

    for rev, fwd in zip(F.jacrev(out, argnums=(0, 1))(th, b), F.jacfwd(out, argnums=(0, 1))(th, b),
                        strict=True):  # fmt: skip
        assert_close(rev, fwd)


def test_mirror_routes_that_keep_the_custom_op_and_plans_built_in_a_transform():
    """jacobian(vectorize=True) (legacy batched gradients: the op's fallback) works; a plan
    first built inside torch.func.grad holds plain tensors, so the Triton kernel can read it on
    every later call (it cached wrapped tensors, and every later triton call raised)."""
    m = make_mirror("rescaling_pairs", 7)
    th = torch.randn(7, generator=gen(14), dtype=F64)
    R = torch.eye(7, dtype=F64) - 2 * m.to_dense() @ m.to_dense().T
    assert_close(torch.autograd.functional.jacobian(m.reflect, th, vectorize=True), R)
    if not get_backend("triton").has_kernel("mirror_apply"):
        pytest.skip("triton backend unavailable")
    fresh = make_mirror("rescaling_pairs", 7)
    t = th.to(TRITON_DEVICE)
    g = torch.func.grad(lambda a: (fresh.reflect(a, backend="triton") ** 2).sum())(t)
    assert_close(g.cpu(), 2 * th)  # a reflection keeps the norm
    plan = fresh._plan(t)
    assert not torch._C._functorch.is_functorch_wrapped_tensor(plan.value)
    assert_close(fresh.reflect(t, backend="triton").cpu(), th @ R)
