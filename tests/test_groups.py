"""Tests for symkern.groups: group axioms, orders, fixed-space dimensions, reps, validation."""

from __future__ import annotations

import math
import pickle
import time
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import symkern
import symkern.groups as G
from symkern.groups import GroupTooLargeError
from symkern.groups import _native as nat
from symkern.groups import schreier_sims as ss
from symkern.groups.group import Group
from symkern.groups.orbits import orbit_labels
from symkern.groups.reps import Representation
from symkern.groups.schreier_sims import schreier_sims_order
from symkern.testing import assert_close

HYP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SMALL_CONSTRUCTORS = {
    "cyclic5": lambda: G.cyclic(5),
    "cyclic1": lambda: G.cyclic(1),
    "dihedral4": lambda: G.dihedral(4),
    "dihedral5": lambda: G.dihedral(5),
    "symmetric1": lambda: G.symmetric(1),
    "symmetric2": lambda: G.symmetric(2),
    "symmetric4": lambda: G.symmetric(4),
    "alternating3": lambda: G.alternating(3),
    "alternating4": lambda: G.alternating(4),
    "alternating5": lambda: G.alternating(5),
    "sign_flips3": lambda: G.sign_flips(3),
    "hyperoctahedral2": lambda: G.hyperoctahedral(2),
    "hyperoctahedral3": lambda: G.hyperoctahedral(3),
    "c2_swap": lambda: G.c2_swap(),
    "perm_rep": lambda: G.perm_rep([[1, 2, 0, 3], [0, 1, 3, 2]]),
    "signed_perm_rep": lambda: G.signed_perm_rep([[1, 0]], [[1.0, -1.0]]),
    "matrix_rep": lambda: G.matrix_rep(G.dihedral(4).generator_matrices()),
    "direct_product": lambda: G.direct_product(G.cyclic(3), G.sign_flips(2), "sum"),
}

BELL = [1, 2, 5, 15, 52]


def _random_perm_gens(draw_perms: list[list[int]]) -> np.ndarray:
    return np.asarray(draw_perms, dtype=np.int64)


@st.composite
def perm_gens(draw, max_points: int = 7, max_gens: int = 3):
    n = draw(st.integers(1, max_points))
    k = draw(st.integers(1, max_gens))
    return np.asarray([draw(st.permutations(list(range(n)))) for _ in range(k)], dtype=np.int64)


@st.composite
def signed_gens(draw, max_points: int = 5, max_gens: int = 3):
    p = draw(perm_gens(max_points, max_gens))
    s = np.asarray(
        [[draw(st.sampled_from([1.0, -1.0])) for _ in range(p.shape[1])] for _ in range(p.shape[0])]
    )
    return p, s


# ----------------------------------------------------------------------------- group axioms
def _as_matrices(rep):
    return rep.element_matrices()


@pytest.mark.parametrize("name", sorted(SMALL_CONSTRUCTORS))
def test_group_axioms(name):
    rep = SMALL_CONSTRUCTORS[name]()
    mats = _as_matrices(rep)
    n = mats.shape[0]
    assert n == rep.order() == rep.group.order()
    keys = set(nat.keys("matrix", mats))
    assert len(keys) == n, "elements must be distinct in the (faithful) defining rep"
    eye = torch.eye(rep.dim, dtype=torch.float64)
    assert nat.keys("matrix", eye[None])[0] in keys, "identity missing"
    # closure: all products a @ b
    prods = (mats[:, None] @ mats[None, :]).reshape(-1, rep.dim, rep.dim)
    assert set(nat.keys("matrix", prods)) <= keys, "not closed under products"
    # inverses (orthogonal: transpose)
    assert set(nat.keys("matrix", mats.transpose(1, 2))) <= keys, "inverses missing"
    # native elements agree with element_matrices and the group's BFS enumeration
    assert len(list(rep.elements())) == n == len(rep.group.elements())


def test_element_matrices_are_fresh_tensors_of_the_cached_images():
    """element_matrices keeps small images on the rep (the particle engine asks every call);
    callers still get their own tensor in the dtype they ask for."""
    rep = G.hyperoctahedral(3)
    first = rep.element_matrices()
    first.zero_()  # the caller's tensor, not the cache
    again = rep.element_matrices()
    assert again.abs().sum() > 0 and again.data_ptr() != first.data_ptr()
    f32 = rep.element_matrices(torch.float32)
    assert f32.dtype == torch.float32 and torch.equal(f32.double(), again)
    fresh = G.hyperoctahedral(3).element_matrices()  # a new rep computes its own
    assert torch.equal(fresh, again)


def test_elements_native_forms_and_bfs_tree():
    rep = G.hyperoctahedral(2)
    els = list(rep.elements())
    assert all(
        isinstance(e, tuple) and e[0].dtype == np.int64 and e[1].dtype == np.float64 for e in els
    )
    mats = rep.element_matrices()
    for (p, s), m in zip(els, mats, strict=True):
        x = torch.randn(2, dtype=torch.float64)
        assert torch.allclose(m @ x, torch.as_tensor(s) * x[torch.as_tensor(p)])
    parent, gen = rep.group.bfs_tree()
    gm = rep.generator_matrices()
    assert parent[0] == -1 and gen[0] == -1
    for e in range(1, len(parent)):
        assert torch.equal(mats[e], mats[parent[e]] @ gm[gen[e]])
    perm_els = list(G.symmetric(3).elements())
    assert all(p.dtype == np.int64 and p.shape == (3,) for p in perm_els)
    mat_els = list(G.matrix_rep(G.cyclic(3).generator_matrices()).elements())
    assert all(isinstance(m, torch.Tensor) and m.shape == (3, 3) for m in mat_els)


def test_perm_convention():
    rep = G.perm_rep([[2, 0, 1]])
    M = rep.generator_matrices()[0]
    x = torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64)
    assert torch.equal(M @ x, x[[2, 0, 1]])
    assert M[0, 2] == 1 and M[1, 0] == 1 and M[2, 1] == 1
    s = G.signed_perm_rep([[1, 0]], [[-1.0, 1.0]])
    Ms = s.generator_matrices()[0]
    assert torch.equal(Ms, torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64))


# ----------------------------------------------------------------------------- orders
def test_known_orders():
    assert G.symmetric(5).order() == 120
    assert G.alternating(5).order() == 60
    assert G.dihedral(8).order() == 16
    assert G.hyperoctahedral(3).order() == 48
    assert G.cyclic(7).order() == 7
    assert G.sign_flips(5).order() == 32
    assert G.c2_swap().order() == 2
    assert isinstance(G.symmetric(30).order(), int) and G.symmetric(30).order() == math.factorial(
        30
    )
    assert G.alternating(100).order() == math.factorial(100) // 2


def test_schreier_sims_matches_formulas():
    # perm_rep has no formula: the order comes from Schreier-Sims.
    assert G.perm_rep(G.symmetric(7).permutations()).order() == 5040
    assert G.perm_rep(G.alternating(8).permutations()).order() == math.factorial(8) // 2
    assert G.perm_rep(G.alternating(20).permutations()).order() == math.factorial(20) // 2
    assert G.perm_rep(G.alternating(30).permutations()).order() == math.factorial(30) // 2
    assert G.perm_rep(G.dihedral(9).permutations()).order() == 18
    # signed: via the action on the 2D points
    H = G.hyperoctahedral(4)
    assert G.signed_perm_rep(H.permutations(), H.signs()).order() == 2**4 * 24
    assert G.signed_perm_rep(np.tile(np.arange(6), (6, 1)), 1 - 2 * np.eye(6)).order() == 64
    # trivial generators
    assert schreier_sims_order(np.arange(5)[None]) == 1
    # Mathieu group M11 on 11 points (order 7920).
    m11 = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0], [0, 1, 6, 9, 5, 3, 10, 2, 8, 4, 7]]
    assert G.perm_rep(m11).order() == 7920


@HYP
@given(perm_gens())
def test_schreier_sims_equals_bfs(gens):
    rep = G.perm_rep(gens)
    n_bfs = len(rep.group.elements())
    assert schreier_sims_order(gens) == n_bfs
    assert rep.order() == n_bfs


def _wreath_gens(k: int, m: int) -> np.ndarray:
    """Generators of S_k wr S_m on k*m points (blocks of k): S_k on block 0 (k-cycle and a
    transposition), the cyclic shift of the blocks, and the swap of blocks 0 and 1."""
    n = k * m
    cycle, swap_pts, shift, swap_blocks = (np.arange(n) for _ in range(4))
    cycle[:k] = np.roll(np.arange(k), -1)
    swap_pts[[0, 1]] = [1, 0]
    shift = (shift + k) % n
    swap_blocks[: 2 * k] = np.r_[np.arange(k, 2 * k), np.arange(k)]
    return np.stack([cycle, swap_pts, shift, swap_blocks])


def test_schreier_sims_large_degree():
    """Degrees where the one-generator-at-a-time implementation took seconds to minutes (S_60 from
    an n-cycle and a transposition: 61 s; A_100: ~16 s); and an imprimitive group whose order the
    orbit/parity bound cannot certify, so the Schreier-generator verification runs."""
    for n in (60, 100):
        cycle_and_transposition = np.stack([np.roll(np.arange(n), -1), np.r_[1, 0, 2:n]])
        assert schreier_sims_order(cycle_and_transposition) == math.factorial(n)
    assert G.perm_rep(G.alternating(100).permutations()).order() == math.factorial(100) // 2
    assert schreier_sims_order(_wreath_gens(4, 8)) == math.factorial(4) ** 8 * math.factorial(8)
    assert schreier_sims_order(_wreath_gens(3, 5)) == 6**5 * 120


@HYP
@given(perm_gens(max_points=8))
def test_schreier_sims_each_phase_alone_is_exact(gens):
    """The verification alone (no random phase, no bound shortcut) and the random phase plus the
    verification both give the BFS order: neither relies on the other being complete."""
    n_bfs = len(G.perm_rep(gens).group.elements())
    with mock.patch.object(ss, "_RANDOM_TRIVIAL_RUN", 0):
        assert schreier_sims_order(gens) == n_bfs
    with mock.patch.object(ss, "_order_upper_bound", lambda gens: -1):
        assert schreier_sims_order(gens) == n_bfs
    assert ss._order_upper_bound(gens) >= n_bfs


def test_schreier_sims_order_upper_bound():
    """Orbits and parities: Sym of each orbit, Alt where every generator is even on it, and the
    even permutations when every generator is."""
    double_swap = np.array([[1, 0, 3, 2]])  # odd on both orbits, even overall: order 2
    assert ss._order_upper_bound(double_swap) == 2
    a4 = np.array([[1, 2, 0, 3], [0, 2, 3, 1]])  # 3-cycles, transitive: A_4
    assert ss._order_upper_bound(a4) == 12 == schreier_sims_order(a4)
    s3_times_a4 = np.array([[1, 0, 2, 3, 4, 5, 6], [1, 2, 0, 3, 4, 5, 6], [0, 1, 2, 4, 5, 3, 6]])
    s3_times_a4 = np.concatenate([s3_times_a4, [[0, 1, 2, 3, 5, 6, 4]]])
    assert ss._order_upper_bound(s3_times_a4) == 6 * 12 == schreier_sims_order(s3_times_a4)


@HYP
@given(signed_gens())
def test_signed_schreier_sims_equals_bfs(gs):
    p, s = gs
    rep = G.signed_perm_rep(p, s)
    fresh = G.signed_perm_rep(p, s)
    assert rep.order() == len(fresh.group.elements())


def test_matrix_group_bfs_order_and_limit():
    # rotation by 2 pi / 7 and a reflection: dihedral group of order 14
    t = 2 * math.pi / 7
    rot = torch.tensor(
        [[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]], dtype=torch.float64
    )
    refl = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    rep = G.matrix_rep(torch.stack([rot, refl]))
    assert rep.order() == 14
    assert rep.fixed_dim() == 0
    big = G.matrix_rep(G.symmetric(9).generator_matrices())
    big.group.max_order = 1000
    with pytest.raises(GroupTooLargeError, match="enumeration limit"):
        big.order()
    # not enumerable -> nullspace path still works
    assert big.fixed_dim() == 1


def test_group_too_large_to_enumerate():
    with pytest.raises(GroupTooLargeError):
        next(iter(G.symmetric(10).elements()))
    with pytest.raises(GroupTooLargeError):
        G.alternating(100).tensor_power(2).character()
    assert issubclass(GroupTooLargeError, ValueError)


def test_size_checks_fail_fast_before_the_exact_order():
    """S50 from bare generators (order unknown): element_matrices computed the exact order by
    Schreier--Sims (~20 s) before refusing |G|·D² > the limit; the checks that need only a bound
    (a BFS that stops at the limit) now come first. The basis / fixed_dim of its matrix rep take
    the null space without it too."""
    rep = G.perm_rep(G.symmetric(50).permutations())
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"\|G\| \* D\^2 exceeds the limit"):
        rep.element_matrices()
    assert time.perf_counter() - start < 5  # was ~20 s
    assert rep.group._order is None  # the exact order was never needed
    small = G.perm_rep(G.symmetric(20).permutations()).to_matrix_rep()
    start = time.perf_counter()
    assert small.fixed_dim() == 1 and symkern.fixed_point_basis(small).shape == (20, 1)
    assert time.perf_counter() - start < 5
    assert small.group._order is None
    with pytest.raises(GroupTooLargeError):  # above max_order, below the entries limit: as before
        G.perm_rep(G.symmetric(9).permutations()).element_matrices()


# ----------------------------------------------------------------------------- fixed_dim
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_bell_numbers_orbits(k):
    assert G.symmetric(5).tensor_power(k).fixed_dim() == BELL[k - 1]


@pytest.mark.parametrize("n,k", [(3, 1), (3, 2), (3, 3), (4, 4), (5, 5)])
def test_bell_numbers_character_agrees(n, k):
    T = G.symmetric(n).tensor_power(k)
    via_orbits = T.fixed_dim("orbits")
    via_char = T.fixed_dim("character")
    assert via_orbits == via_char
    if n >= k:
        assert via_char == BELL[k - 1]


def test_small_nullspace_path_agrees():
    T = G.symmetric(3).tensor_power(3)
    assert T.fixed_dim("nullspace") == T.fixed_dim("orbits") == 5
    assert G.hyperoctahedral(2).tensor_power(2).fixed_dim("nullspace") == 1


@pytest.mark.parametrize("n", [4, 5, 6])
def test_alternating_t2(n):
    T = G.alternating(n).tensor_power(2)
    assert T.fixed_dim() == 2
    assert T.fixed_dim("character") == 2


def test_alternating_100_t2_fast():
    T = G.alternating(100).tensor_power(2)
    t0 = time.perf_counter()
    assert T.fixed_dim() == 2
    assert T.dim == 10_000
    assert time.perf_counter() - t0 < 5.0  # generous sanity bound, not a benchmark


def test_orbit_labels_speed_targets():
    p = G.alternating(100).tensor_power(2).permutations()
    q = G.symmetric(5).tensor_power(5).permutations()
    best_a = best_s = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        la, _ = orbit_labels(p, None)
        best_a = min(best_a, time.perf_counter() - t0)
        t0 = time.perf_counter()
        ls, _ = orbit_labels(q, None)
        best_s = min(best_s, time.perf_counter() - t0)
    assert len(np.unique(la)) == 2 and len(np.unique(ls)) == 52
    # targets are 20 ms / 10 ms; assert 10x slack so loaded CI machines do not flake
    assert best_a < 0.2 and best_s < 0.1


def test_more_fixed_dims():
    assert G.symmetric(5).tensor_power(3).fixed_dim() == 5
    assert G.hyperoctahedral(3).tensor_power(2).fixed_dim() == 1
    assert G.hyperoctahedral(3).tensor_power(2).fixed_dim("character") == 1
    assert G.c2_swap().conjugation().fixed_dim() == 2
    assert G.c2_swap().conjugation().fixed_dim("character") == 2
    for n in (1, 3, 6):
        assert G.sign_flips(n).fixed_dim() == 0
        assert G.sign_flips(n).fixed_dim("character") == 0
        assert G.cyclic(n).fixed_dim() == 1
    assert G.sign_flips(3).tensor_power(2).fixed_dim() == 3  # diagonal entries
    assert G.dihedral(6).tensor_power(2).fixed_dim() == G.dihedral(6).tensor_power(2).fixed_dim(
        "character"
    )


def test_conjugation_is_tensor_power_2():
    r = G.dihedral(5)
    c, t = r.conjugation(), r.tensor_power(2)
    assert np.array_equal(c.permutations(), t.permutations())
    # z -> g z g^T, flattened row-major
    g = r.generator_matrices()[0]
    z = torch.randn(5, 5, dtype=torch.float64)
    assert torch.allclose(c.generator_matrices()[0] @ z.reshape(-1), (g @ z @ g.T).reshape(-1))
    m = G.matrix_rep(r.generator_matrices())
    mc = m.conjugation()
    assert isinstance(mc, G.MatrixRep)
    assert torch.allclose(mc.generator_matrices()[0] @ z.reshape(-1), (g @ z @ g.T).reshape(-1))


def test_conjugation_of_minus_identity_is_non_faithful():
    rep = G.matrix_rep(-torch.eye(3, dtype=torch.float64)[None])
    assert rep.order() == 2
    conj = rep.conjugation()
    ch = conj.character()
    assert ch.tolist() == [9.0, 9.0]  # (tr g)^2 and the image of -I is the identity
    assert conj.fixed_dim() == 9 and conj.fixed_dim("nullspace") == 9
    assert torch.equal(conj.element_matrices()[1], torch.eye(9, dtype=torch.float64))


@HYP
@given(perm_gens(max_points=6))
def test_character_formula_equals_orbit_count(gens):
    rep = G.perm_rep(gens)
    assert rep.fixed_dim("character") == rep.fixed_dim("orbits")
    T = rep.tensor_power(2)
    assert T.fixed_dim("character") == T.fixed_dim("orbits")


@HYP
@given(signed_gens())
def test_signed_character_equals_orbit_rule(gs):
    p, s = gs
    rep = G.signed_perm_rep(p, s)
    assert rep.fixed_dim("character") == rep.fixed_dim("orbits") == rep.fixed_dim("nullspace")


@HYP
@given(signed_gens(max_points=4, max_gens=2), st.integers(0, 2**31 - 1))
def test_fixed_point_basis_and_symmetrize_on_random_groups(gs, seed):
    """The public ops on random signed-permutation groups: fixed_point_basis has dim E^G
    columns by the character formula, orthonormal and invariant; symmetrize makes a random
    nonlinear map equivariant, f(ρ_g x) = ρ_g f(x) for every generator."""
    from symkern.testing import assert_close

    p, s = gs
    rep = G.signed_perm_rep(p, s)
    q = symkern.fixed_point_basis(rep)
    assert q.shape == (rep.dim, rep.fixed_dim("character"))
    if q.shape[1]:
        assert_close(q.T @ q, torch.eye(q.shape[1], dtype=torch.float64))
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rep.dim, rep.dim, generator=g, dtype=torch.float64)
    b = torch.randn(rep.dim, generator=g, dtype=torch.float64)
    f = symkern.symmetrize(lambda x: torch.tanh(x @ w.T + b), rep, rep)
    x = torch.randn(5, rep.dim, generator=g, dtype=torch.float64)
    fx = f(x)
    for m in rep.generator_matrices():
        assert_close(m @ q, q)
        assert_close(f(x @ m.T), fx @ m.T)


@HYP
@given(perm_gens(max_points=5))
def test_matrix_rep_from_perm_rep_agrees(gens):
    rep = G.perm_rep(gens)
    m = G.matrix_rep(rep.generator_matrices())
    assert m.order() == rep.order()
    assert m.fixed_dim() == rep.fixed_dim()
    assert m.fixed_dim("nullspace") == rep.fixed_dim()


def test_character_perm_and_power():
    rep = G.symmetric(4)
    ch = rep.character()
    fixed = torch.tensor(
        [float((p == np.arange(4)).sum()) for p in rep.elements()], dtype=torch.float64
    )
    assert torch.equal(ch, fixed)
    assert torch.equal(rep.tensor_power(3).character(), ch**3)
    # dense check of the tensor-power character
    assert torch.allclose(
        rep.tensor_power(2).character(),
        torch.diagonal(rep.tensor_power(2).element_matrices(), dim1=1, dim2=2).sum(1),
    )
    s = rep.direct_sum(rep.tensor_power(2))
    assert torch.equal(s.character(), ch + ch**2)
    assert s.fixed_dim() == 1 + 2 == s.fixed_dim("character")
    # signed: sum of signs at fixed points
    h = G.hyperoctahedral(2)
    sc = h.character()
    dense = torch.diagonal(h.element_matrices(), dim1=1, dim2=2).sum(1)
    assert torch.equal(sc, dense)


def test_large_power_character_never_materialises():
    # D = 5**9 ~ 2e6: the character must come from the base character only
    T = G.symmetric(5).tensor_power(9)
    ch = T.character()
    assert ch.shape == (120,) and float(ch[0]) == 5.0**9
    assert "gens" not in T._cache


# ----------------------------------------------------------------------------- products
def test_tensor_product_and_direct_sum_kinds():
    p = G.symmetric(3)
    pp = p.tensor_product(p)
    assert isinstance(pp, G.PermRep) and pp.dim == 9
    assert np.array_equal(
        pp.permutations()[0],
        (p.permutations()[0][:, None] * 3 + p.permutations()[0][None, :]).ravel(),
    )
    ps = p.direct_sum(p)
    assert isinstance(ps, G.PermRep) and ps.dim == 6
    assert np.array_equal(
        ps.permutations()[1], np.concatenate([p.permutations()[1], p.permutations()[1] + 3])
    )
    h = G.hyperoctahedral(2)
    assert isinstance(h.tensor_product(h), G.SignedPermRep)
    assert isinstance(h.direct_sum(h), G.SignedPermRep)
    m = G.matrix_rep(p.generator_matrices())
    mm = p.to_matrix_rep()
    assert isinstance(p.tensor_product(mm), G.MatrixRep)
    assert isinstance(mm.direct_sum(p), G.MatrixRep)
    assert p.tensor_product(mm).fixed_dim() == 2
    assert torch.allclose(p.tensor_product(mm).generator_matrices(), pp.generator_matrices())
    so = G.so3()
    assert isinstance(so.tensor_product(so), G.ContinuousRep)
    assert isinstance(so.direct_sum(so), G.ContinuousRep)
    with pytest.raises(ValueError, match="same Group"):
        p.tensor_product(m)  # m lives on a different (matrix) group object


def test_direct_product():
    a, b = G.cyclic(3), G.symmetric(3)
    s = G.direct_product(a, b, "sum")
    t = G.direct_product(a, b, mode="tensor")
    assert s.group is t.group
    assert s.order() == 18 == len(list(s.elements()))
    assert s.dim == 6 and t.dim == 9
    assert s.fixed_dim() == 2 == s.fixed_dim("character")
    assert t.fixed_dim() == 1 == t.fixed_dim("character")
    assert s.n_generators == a.n_generators + b.n_generators
    gm = s.generator_matrices()
    assert torch.equal(gm[0][:3, :3], a.generator_matrices()[0]) and torch.equal(
        gm[0][3:, 3:], torch.eye(3, dtype=torch.float64)
    )
    # mixed kinds
    h = G.direct_product(G.sign_flips(2), G.cyclic(2), "tensor")
    assert isinstance(h, G.SignedPermRep) and h.order() == 8 and h.fixed_dim() == 0
    mm = G.direct_product(G.matrix_rep(a.generator_matrices()), b, "sum")
    assert isinstance(mm, G.MatrixRep) and mm.order() == 18 and mm.fixed_dim() == 2
    with pytest.raises(ValueError, match="mode"):
        G.direct_product(a, b, "kron")
    with pytest.raises(ValueError, match="finite"):
        G.direct_product(G.so2(), b)


def test_restrict():
    s4 = G.symmetric(4)
    c4 = s4.restrict([[1]])  # subgroup generated by the 4-cycle
    assert c4.order() == 4 and c4.fixed_dim() == 1
    a4 = s4.restrict([[0, 1], [1, 0]])  # two 3-cycles
    assert a4.order() == 12
    assert a4.tensor_power(2).fixed_dim() == 2 == a4.tensor_power(2).fixed_dim("character")
    # same words -> same subgroup object, so restricted reps can be combined
    t = s4.tensor_power(2).restrict([[0, 1], [1, 0]])
    assert t.group is a4.group
    assert a4.tensor_product(a4).fixed_dim() == t.fixed_dim() == 2
    # inverses and restriction of a non-faithful (conjugation) rep of a matrix group
    assert s4.restrict([[-2, -2]]).order() == 2
    rep = G.matrix_rep(-torch.eye(2, dtype=torch.float64)[None])
    assert rep.conjugation().restrict([[0]]).fixed_dim() == 4
    with pytest.raises(ValueError, match="words"):
        s4.restrict([[5]])
    with pytest.raises(ValueError, match="words"):
        s4.restrict([1])
    with pytest.raises(ValueError, match="words: each word must be a list"):
        s4.restrict([torch.tensor(1)])
    # a float index is refused, not truncated to generator 1 (the 4-cycle)
    with pytest.raises(ValueError, match="words: a generator index must be an int, got 1.5"):
        s4.restrict([[1.5]])
    assert s4.restrict([[np.int64(1)], torch.tensor([1])]).order() == 4
    with pytest.raises(ValueError, match="restrict"):
        G.so2().restrict([[0]])


# ----------------------------------------------------------------------------- continuous
@pytest.mark.parametrize("ctor,det", [(G.so2, 1.0), (G.so3, 1.0)])
def test_sample_orthogonal_det1(ctor, det):
    rep = ctor()
    gen = torch.Generator().manual_seed(0)
    mats = rep.sample(64, generator=gen)
    D = rep.dim
    assert mats.shape == (64, D, D)
    assert torch.allclose(
        mats @ mats.transpose(1, 2), torch.eye(D, dtype=torch.float64).expand(64, D, D), atol=1e-12
    )
    assert torch.allclose(
        torch.linalg.det(mats), torch.full((64,), det, dtype=torch.float64), atol=1e-12
    )
    # T(2) samples are kron products of defining samples with the same generator seed
    t2 = rep.tensor_power(2).sample(4, generator=torch.Generator().manual_seed(1))
    g = rep.sample(4, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(t2, torch.stack([torch.kron(x, x) for x in g]))


def test_o2_sample_has_both_components_and_haar_moments():
    gen = torch.Generator().manual_seed(0)
    mats = G.o2().sample(4000, generator=gen)
    dets = torch.linalg.det(mats)
    assert torch.allclose(dets.abs(), torch.ones_like(dets))
    frac = float((dets < 0).double().mean())
    assert 0.4 < frac < 0.6
    # Haar mean of rho(g) on the defining rep is 0 (no fixed vectors)
    assert mats.mean(0).abs().max() < 0.1
    so3 = G.so3().sample(4000, generator=gen)
    assert so3.mean(0).abs().max() < 0.1


def test_continuous_fixed_dims():
    assert G.so2().tensor_power(2).fixed_dim() == 2
    assert G.so3().tensor_power(2).fixed_dim() == 1
    assert G.o2().tensor_power(2).fixed_dim() == 1
    assert G.o2().fixed_dim() == 0
    assert G.so2().fixed_dim() == 0
    assert G.so3().tensor_power(3).fixed_dim() == 1  # epsilon_ijk
    assert G.o2().tensor_power(3).fixed_dim() == 0
    assert G.so2().tensor_power(4).fixed_dim() == 6  # C(4, 2)
    assert [G.so2().tensor_power(k).fixed_dim("quadrature") for k in range(1, 7)] == [
        0,
        2,
        0,
        6,
        0,
        20,
    ]
    assert [G.so3().tensor_power(k).fixed_dim("quadrature") for k in range(1, 7)] == [
        0,
        1,
        1,
        3,
        6,
        15,
    ]
    assert G.so3().tensor_power(4).fixed_dim() == 3
    assert G.so3().direct_sum(G.so3().tensor_power(2)).fixed_dim() == 1
    # character path without dense matrices, beyond the dense limit (D = 3^8 = 6561)
    assert G.so3().tensor_power(8).fixed_dim("quadrature") == 91  # Riordan number R(8)


@pytest.mark.parametrize(
    "make",
    [
        lambda: G.so2().tensor_power(2),
        lambda: G.so3().tensor_power(2),
        lambda: G.o2().tensor_power(2),
        lambda: G.so3().tensor_power(3),
        lambda: G.so2().tensor_power(4),
        lambda: G.so3().tensor_power(4),
        lambda: G.o2().direct_sum(G.o2().tensor_power(2)),
        lambda: G.so3().tensor_product(G.so3().direct_sum(G.so3().tensor_power(2))),
    ],
)
def test_quadrature_character_matches_nullspace(make):
    rep = make()
    w, mats = rep.quadrature(rep.degree)
    assert abs(float(w.sum()) - 1.0) < 1e-12
    assert mats.shape == (w.shape[0], rep.dim, rep.dim)
    assert rep.fixed_dim("quadrature") == rep.fixed_dim("nullspace")
    # the exact Haar average of rho(g) is the orthogonal projector onto E^G
    P = (w[:, None, None] * mats).sum(0)
    assert torch.allclose(P @ P, P, atol=1e-10) and torch.allclose(P, P.T, atol=1e-10)
    assert abs(float(torch.trace(P)) - rep.fixed_dim()) < 1e-9
    # and a higher-degree rule gives the same average (all coefficients integrated exactly)
    w2, m2 = rep.quadrature(rep.degree + 3)
    assert torch.allclose((w2[:, None, None] * m2).sum(0), P, atol=1e-10)


def test_quadrature_values():
    w, m = G.so3().tensor_power(2).quadrature(2)
    assert abs(float((w * torch.diagonal(m, dim1=1, dim2=2).sum(1)).sum()) - 1.0) < 1e-12
    w, m = G.so2().tensor_power(2).quadrature(2)
    assert abs(float((w * torch.diagonal(m, dim1=1, dim2=2).sum(1)).sum()) - 2.0) < 1e-12
    # trig polynomials of degree < m are integrated exactly by m equispaced angles
    for m_pts in (1, 3, 6):
        w, mats = G.so2().quadrature(m_pts - 1)
        assert w.shape == (m_pts,)
        theta = torch.atan2(mats[:, 1, 0], mats[:, 0, 0])
        for k in range(1, m_pts):
            assert abs(float((w * torch.cos(k * theta)).sum())) < 1e-12
            assert abs(float((w * torch.sin(k * theta)).sum())) < 1e-12
        # degree m is NOT integrated exactly (cos(m theta) = 1 at the nodes)
        assert abs(float((w * torch.cos(m_pts * theta)).sum()) - 1.0) < 1e-12
    w, mats = G.o2().quadrature(3)
    assert w.shape == (8,) and (torch.linalg.det(mats) < 0).sum() == 4
    # SO(3) rule: 3-d sizes from the spec (M^2 * (degree // 2 + 1))
    w, mats = G.so3().quadrature(4)
    assert w.shape == (5 * 5 * 3,)


def test_continuous_lie_algebra_and_generators():
    J = G.so2().lie_algebra_matrices()
    assert torch.equal(J, torch.tensor([[[0.0, -1.0], [1.0, 0.0]]], dtype=torch.float64))
    L = G.so3().lie_algebra_matrices()
    assert L.shape == (3, 3, 3) and torch.allclose(L, -L.transpose(1, 2))
    # [L_x, L_y] = L_z
    assert torch.allclose(L[0] @ L[1] - L[1] @ L[0], L[2])
    assert G.so2().generator_matrices().shape == (0, 2, 2)
    assert G.so3().generator_matrices().shape == (0, 3, 3)
    assert torch.equal(
        G.o2().generator_matrices()[0], torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    )
    # derivation rule for T(2)
    t2 = G.so3().tensor_power(2)
    dL = t2.lie_algebra_matrices()
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(dL[2], torch.kron(L[2], eye) + torch.kron(eye, L[2]))
    # d/dt rho(exp(tA)) at 0 == d rho(A)
    h = 1e-6
    g = torch.linalg.matrix_exp(h * L[0])
    fd = (t2.matrix_of(g) - t2.matrix_of(torch.linalg.matrix_exp(-h * L[0]))) / (2 * h)
    assert torch.allclose(fd, dL[0], atol=1e-8)
    # finite groups: no Lie algebra
    assert G.symmetric(3).lie_algebra_matrices().shape == (0, 3, 3)
    assert (
        t2.degree == 2
        and G.so3().direct_sum(t2).degree == 2
        and t2.tensor_product(G.so3()).degree == 3
    )


def test_character_of_matches_dense_trace():
    rep = G.o2().tensor_power(2).direct_sum(G.o2())
    g = G.o2().sample(5, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(
        rep.character_of(g), torch.diagonal(rep.matrix_of(g), dim1=1, dim2=2).sum(1)
    )


def test_matrix_of():
    rep = G.so3().direct_sum(G.so3().tensor_power(2))
    g = G.so3().sample(3, generator=torch.Generator().manual_seed(3))
    m = rep.matrix_of(g)
    assert m.shape == (3, 12, 12)
    assert torch.allclose(m[0][:3, :3], g[0]) and torch.allclose(
        m[0][3:, 3:], torch.kron(g[0], g[0])
    )
    assert torch.allclose(rep.matrix_of(g[1]), m[1])
    with pytest.raises(ValueError, match="g"):
        rep.matrix_of(torch.eye(2))


def test_continuous_meaningless_methods_raise():
    r = G.so3()
    for f in (
        r.order,
        r.character,
        r.element_matrices,
        lambda: list(r.elements()),
        r.group.elements,
    ):
        with pytest.raises(ValueError, match="infinite"):
            f()
    assert r.is_finite is False and r.group.is_finite is False and G.symmetric(3).is_finite


def test_finite_quadrature_and_sample():
    rep = G.dihedral(5).tensor_power(2)
    w, mats = rep.quadrature()
    assert w.shape == (10,) and abs(float(w.sum()) - 1) < 1e-12
    assert (
        abs(float((w * torch.diagonal(mats, dim1=1, dim2=2).sum(1)).sum()) - rep.fixed_dim())
        < 1e-12
    )
    s = rep.sample(7, generator=torch.Generator().manual_seed(0))
    keys = set(nat.keys("matrix", mats))
    assert s.shape == (7, 25, 25) and set(nat.keys("matrix", s)) <= keys
    assert rep.sample(np.int64(0)).shape == (0, 25, 25)
    for bad in (2.7, -1, True):  # 2.7 drew 2 elements, -1 raised torch's RuntimeError
        with pytest.raises(ValueError, match="n must be a non-negative int"):
            G.cyclic(3).sample(bad)


@pytest.mark.parametrize("make", [lambda: G.cyclic(3), G.so2, G.o2, G.so3])
@pytest.mark.parametrize("bad", [5, "seed", np.random.default_rng(0)], ids=["int", "str", "numpy"])
def test_sample_refuses_a_generator_that_is_not_a_torch_one(make, bad):
    """generator=5 (or a NumPy Generator) surfaced torch's randint / randn overload listing: a
    TypeError naming generator, for the reps' sample and the continuous groups' sampler."""
    rep = make()
    want = f"generator must be a torch.Generator or None, got {type(bad).__name__}"
    with pytest.raises(TypeError, match=want):
        rep.sample(2, generator=bad)
    if not rep.is_finite:
        with pytest.raises(TypeError, match=want):
            rep.group.sample_defining(2, generator=bad)
    assert rep.sample(2, generator=torch.Generator().manual_seed(0)).shape == (2, rep.dim, rep.dim)


@pytest.mark.parametrize(
    "make", [lambda: G.cyclic(3), G.so3, lambda: G.so3().tensor_power(2)], ids=["C3", "SO3", "T2"]
)
def test_sample_caps_the_entries_of_its_result(make):
    """sample(n) builds (n, D, D) matrices: past element_matrices' entry limit a ValueError naming
    n, before allocating (n = 10**12 asked the allocator for terabytes)."""
    rep = make()
    cap = nat.MAX_ELEMENT_ENTRIES // rep.dim**2
    with pytest.raises(ValueError, match=rf"^n: sample returns \(n, {rep.dim}, {rep.dim}\)"):
        rep.sample(cap + 1)
    with pytest.raises(ValueError, match="^n: "):
        rep.sample(10**12)
    if not rep.is_finite:
        with pytest.raises(ValueError, match="^n: "):
            rep.group.sample_defining(10**12)
        with pytest.raises(ValueError, match="^n must be a non-negative int"):
            rep.group.sample_defining(-1)
    assert rep.sample(3).shape == (3, rep.dim, rep.dim)


# ----------------------------------------------------------------------------- API surface
@pytest.mark.parametrize(
    "make",
    [
        lambda: G.symmetric(3),
        lambda: G.hyperoctahedral(2),
        lambda: G.symmetric(3).to_matrix_rep(),
        lambda: G.so2(),
    ],
)
def test_common_api(make):
    rep = make()
    for attr in (
        "dim",
        "group",
        "is_finite",
        "n_generators",
        "order",
        "generator_matrices",
        "lie_algebra_matrices",
        "elements",
        "element_matrices",
        "character",
        "fixed_dim",
        "tensor_power",
        "tensor_product",
        "direct_sum",
        "conjugation",
        "restrict",
        "quadrature",
        "sample",
    ):
        assert hasattr(rep, attr), attr
    gm = rep.generator_matrices(dtype=torch.float32)
    assert gm.dtype == torch.float32 and gm.shape == (rep.n_generators, rep.dim, rep.dim)
    assert rep.lie_algebra_matrices().shape[1:] == (rep.dim, rep.dim)


def test_defining_rep():
    for rep in (
        G.symmetric(4),
        G.hyperoctahedral(2),
        G.matrix_rep(G.cyclic(3).generator_matrices()),
        G.so3(),
    ):
        d = rep.group.defining_rep()
        assert d is rep.group.defining_rep() and d.group is rep.group and type(d) is type(rep)
        assert torch.equal(d.generator_matrices(), rep.generator_matrices())
    w, mats = G.so3().tensor_power(2).group.defining_rep().quadrature(2)
    assert mats.shape[1:] == (3, 3)


def test_permutations_and_signs_cached():
    r = G.symmetric(4).tensor_power(2)
    p = r.permutations()
    assert p.shape == (2, 16) and p.dtype == np.int64 and p is r.permutations()
    h = G.hyperoctahedral(3)
    assert h.signs().shape == (3, 3) and h.signs().dtype == np.float64 and h.signs() is h.signs()
    assert r.orbit_labels() is r.orbit_labels()


# ----------------------------------------------------------------------------- orbit_labels
def test_orbit_labels_signed_semantics():
    # x -> (-x1, -x0, -x2, x3): coordinates 0 <-> 1 with a sign, 2 flipped onto itself, 3 fixed
    perms = np.array([[1, 0, 2, 3]])
    signs = np.array([[-1.0, -1.0, -1.0, 1.0]])
    labels, rel = orbit_labels(perms, signs)
    assert labels.tolist() == [0, 0, 2, 3]
    assert rel.tolist() == [1.0, -1.0, 0.0, 1.0]
    # check rel sign definition: some g maps e_0 to rel[1] * e_1
    M = G.signed_perm_rep(perms, signs).element_matrices()
    e0 = torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)
    imgs = [(m @ e0) for m in M]
    assert any(
        torch.allclose(v, rel[1] * torch.tensor([0, 1.0, 0, 0], dtype=torch.float64)) for v in imgs
    )
    # x -> (x1, -x0) has order 4 and squares to -I: the orbit {e0, e1} averages to zero
    labels, rel = orbit_labels(np.array([[1, 0]]), np.array([[1.0, -1.0]]))
    assert labels.tolist() == [0, 0] and rel.tolist() == [0.0, 0.0]


@HYP
@given(signed_gens(max_points=5))
def test_orbit_labels_against_element_orbits(gs):
    p, s = gs
    rep = G.signed_perm_rep(p, s)
    labels, rel = orbit_labels(p, s)
    D = p.shape[1]
    assert (labels <= np.arange(D)).all() and (labels[labels] == labels).all()
    mats = rep.element_matrices().numpy()
    for i in range(D):
        r = labels[i]
        # images of e_r: column r of each element matrix, rows where it is nonzero
        imgs = {(int(np.flatnonzero(m[:, r])[0]), float(m[:, r].sum())) for m in mats}
        orbit = sorted({j for j, _ in imgs})
        assert labels[orbit].tolist() == [r] * len(orbit) and i in orbit
        both = any((j, 1.0) in imgs and (j, -1.0) in imgs for j in orbit)
        if both:
            assert rel[i] == 0
        else:
            assert (i, float(rel[i])) in imgs
    assert rep.fixed_dim("orbits") == int(((labels == np.arange(D)) & (rel != 0)).sum())


def test_orbit_labels_unsigned_canonical():
    labels, rel = orbit_labels(np.array([[0, 3, 2, 4, 1], [0, 1, 2, 3, 4]]), None)
    assert labels.tolist() == [0, 1, 2, 1, 1] and (rel == 1).all()
    labels, _ = orbit_labels(np.zeros((0, 3), dtype=np.int64), None)
    assert labels.tolist() == [0, 1, 2]


# ----------------------------------------------------------------------------- trivial group
def test_empty_generators_trivial_group():
    r = G.perm_rep([], dim=3)
    assert r.order() == 1 and r.dim == 3 and r.n_generators == 0
    assert r.fixed_dim() == 3 == r.fixed_dim("character") == r.fixed_dim("nullspace")
    assert r.generator_matrices().shape == (0, 3, 3)
    assert G.matrix_rep([], dim=2).order() == 1
    assert G.signed_perm_rep([], [], dim=2).fixed_dim() == 2
    # products of a group without generators (kron reshaped with -1, which fails for 0 rows)
    for triv in (G.perm_rep([], dim=2), G.signed_perm_rep([], [], dim=2), G.matrix_rep([], dim=2),
                 G.symmetric(3).restrict([])):  # fmt: skip
        for prod in (triv.tensor_power(2), triv.conjugation(), triv.tensor_product(triv)):
            assert prod.order() == 1 and prod.fixed_dim() == prod.dim == triv.dim**2
            x = torch.randn(3, prod.dim)
            assert torch.equal(symkern.orbit_average(x, prod), x), type(triv).__name__
    both = G.direct_product(G.perm_rep([], dim=2), G.c2_swap(), mode="tensor")
    assert both.dim == 4 and both.order() == 2 and both.fixed_dim() == 2
    with pytest.raises(ValueError, match="perms.*dim"):
        G.perm_rep([])
    with pytest.raises(ValueError, match="matrices.*dim"):
        G.matrix_rep([])


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "perms,match",
    [
        ([[0, 0, 1]], "perms.*not a permutation"),
        ([[0, 1, 3]], r"perms.*\[0, 3\)"),
        ([[0, -1, 1]], r"perms.*\[0, 3\)"),
        (np.array([[0.0, 1.0, 2.0]]), "perms.*integer dtype"),
        (np.array([True, False])[None], "perms.*integer dtype"),
        ([0, 1, 2], "perms.*2-D"),
        ([[[0, 1]]], "perms.*2-D"),
        ([[0, 1], [0, 1, 2]], "perms.*same dimension"),
        # uint64 entries >= 2^63 are shown as given (the int64 cast showed -9223372036854775808)
        (
            torch.tensor([[2**63, 0, 1]], dtype=torch.uint64),
            r"got range \[0, 9223372036854775808\]",
        ),
        (np.array([[0, 2**64 - 1, 1]], dtype=np.uint64), r"range \[0, 18446744073709551615\]"),
    ],
)
def test_bad_perms(perms, match):
    with pytest.raises(ValueError, match=match):
        G.perm_rep(perms)


@pytest.mark.parametrize("dim", [-1, 0, 2.5, "3", True])
def test_bad_dim(dim):
    for build in (lambda: G.perm_rep([], dim=dim), lambda: G.matrix_rep([], dim=dim)):
        with pytest.raises(ValueError, match="dim must be a positive int"):
            build()


def test_sign_flips_too_large():
    with pytest.raises(ValueError, match="n: sign_flips stores n generators.*n=1000000"):
        G.sign_flips(10**6)


def test_bad_signs():
    with pytest.raises(ValueError, match="signs.*\\+1 or -1"):
        G.signed_perm_rep([[1, 0]], [[1.0, 0.5]])
    with pytest.raises(ValueError, match="signs.*shape"):
        G.signed_perm_rep([[1, 0]], [[1.0, -1.0, 1.0]])
    with pytest.raises(ValueError, match="signs.*shape"):
        G.signed_perm_rep([[1, 0], [0, 1]], [[1.0, -1.0]])
    with pytest.raises(ValueError, match="perms.*not a permutation"):
        G.signed_perm_rep([[1, 1]], [[1.0, -1.0]])


def test_bad_matrices():
    with pytest.raises(ValueError, match="matrices.*orthogonal"):
        G.matrix_rep(torch.tensor([[[1.0, 0.1], [0.0, 1.0]]]))
    with pytest.raises(ValueError, match="matrices.*orthogonal"):
        G.matrix_rep(torch.eye(2)[None] * (1 + 1e-6))
    G.matrix_rep(torch.eye(2, dtype=torch.float64)[None] * (1 + 1e-12))  # within tolerance
    with pytest.raises(ValueError, match="matrices.*square"):
        G.matrix_rep(torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="matrices.*same dimension"):
        G.matrix_rep([torch.eye(2), torch.eye(3)])
    with pytest.raises(ValueError, match="matrices.*ndim"):
        G.matrix_rep(torch.eye(2))
    with pytest.raises(ValueError, match=r"matrices: 0 x 0 matrices \(D=0\)"):
        G.matrix_rep(torch.zeros(1, 0, 0))  # was a RuntimeError from amax


def test_generator_count_mismatch():
    g = G.symmetric(3).group
    with pytest.raises(ValueError, match="perms.*generators"):
        G.PermRep(g, [[0, 1, 2]])
    with pytest.raises(ValueError, match="matrices.*generators"):
        G.MatrixRep(g, torch.eye(3, dtype=torch.float64)[None])


def test_generator_and_lie_algebra_matrices_are_new_tensors():
    """generator_matrices() of a MatrixRep (float64) and of so3() / o2() handed back the cached
    images themselves: editing the result changed the rep, and for the singleton SO(3) / O(2)
    groups every rep of them in the process."""
    R = torch.tensor([[[0.0, -1.0], [1.0, 0.0]]], dtype=torch.float64)  # C4 on R^2
    mat = G.matrix_rep(R)
    reps = [mat, mat.conjugation(), mat.to_matrix_rep(), G.dihedral(4), G.hyperoctahedral(2)]
    reps += [G.o2(), G.o2().tensor_power(2), G.so3(), G.so3().tensor_power(2)]
    for rep in reps:
        before = (rep.generator_matrices(), rep.lie_algebra_matrices(), rep.fixed_dim("nullspace"))
        rep.generator_matrices().fill_(7.0)  # the caller's tensor, not the rep's
        rep.lie_algebra_matrices().fill_(7.0)
        assert torch.equal(rep.generator_matrices(), before[0]), rep
        assert torch.equal(rep.lie_algebra_matrices(), before[1]), rep
        assert rep.fixed_dim("nullspace") == before[2], rep
    assert G.so3().fixed_dim() == 0 and G.so3().tensor_power(2).fixed_dim("nullspace") == 1
    assert G.o2().tensor_power(2).fixed_dim("nullspace") == 1


def test_group_constructor_validates_generators():
    """Group(...) took its generators unchecked: a non-permutation made order() (Schreier--Sims)
    loop forever, a plain list raised AttributeError, a contradicting dim was accepted."""
    with pytest.raises(ValueError, match=r"generators: row 0 is not a permutation of range\(3\)"):
        G.Group("bad", "perm", np.array([[0, 0, 2]]), dim=3)
    with pytest.raises(ValueError, match=r"generators\[0\] \(perms\): row 0 is not a perm"):
        G.Group("bad", "signed", (np.array([[1, 1, 2]]), np.ones((1, 3))), dim=3)
    with pytest.raises(ValueError, match=r"generators\[1\] \(signs\).*\+1 or -1"):
        G.Group("bad", "signed", ([[1, 0]], [[1.0, 2.0]]), dim=2)
    with pytest.raises(ValueError, match=r"generators: a 'signed' group takes a pair"):
        G.Group("bad", "signed", np.array([[1, 0]]), dim=2)
    with pytest.raises(ValueError, match=r"generators: expected D=3 columns, got 2"):
        G.Group("bad", "perm", [[1, 0]], dim=3)
    with pytest.raises(ValueError, match=r"generators: expected D=3, got 2"):
        G.Group("bad", "matrix", torch.eye(2, dtype=torch.float64)[None], dim=3)
    with pytest.raises(ValueError, match=r"generators: matrices must be orthogonal"):
        G.Group("bad", "matrix", [[[1.0, 0.5], [0.0, 1.0]]], dim=2)
    with pytest.raises(ValueError, match=r"generators: expected an integer dtype"):
        G.Group("bad", "perm", [[1.0, 0.0]], dim=2)
    with pytest.raises(ValueError, match="dim"):
        G.Group("bad", "perm", [[1, 0]], dim=0)
    # lists and tensors are fine, and the group keeps its own copy
    gens = [[1, 0, 2], [0, 2, 1]]
    g = G.Group("S3", "perm", gens, dim=3)
    gens[0][0] = 2
    assert g.order() == 6 and g.generators().tolist() == [[1, 0, 2], [0, 2, 1]]
    assert G.Group("C2", "signed", ([[1, 0]], [[1, 1]]), dim=2).order() == 2
    assert G.Group("C4", "matrix", [[[0, -1], [1, 0]]], dim=2).order() == 4
    assert G.Group("e", "perm", [], dim=2).order() == 1


def test_subgroup_of_nearly_orthogonal_generators_is_not_revalidated():
    """Subgroup generators are words in validated ones: the cube of a rotation accepted within
    ORTHO_TOL (defect 6.6e-9) has defect ~2e-8 and must not be refused by Group's checks."""
    th = 2 * math.pi / 12
    R = np.round([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]], 8)
    rep = G.matrix_rep(R[None])
    sub = rep.restrict([[0, 0, 0]])  # the quarter turn R^3
    assert sub.order() == 4 and sub.conjugation().fixed_dim("nullspace") == 2


def test_schreier_sims_validates_gens():
    """schreier_sims_order([[0, 0, 2]]) never returned: the random phase sifts a non-permutation
    forever."""
    for bad, match in [
        ([[0, 0, 2]], r"gens: row 0 is not a permutation of range\(3\)"),
        ([[-1, 0, 1]], r"gens: entries must be indices in \[0, 3\)"),
        ([[1.0, 0.0]], "gens: expected an integer dtype"),
        ([0, 1, 2], "gens: expected a 2-D integer array"),
    ]:
        with pytest.raises(ValueError, match=match):
            schreier_sims_order(bad)
        with pytest.raises(ValueError, match=match):
            ss.schreier_sims(bad)
    assert schreier_sims_order([]) == 1 == schreier_sims_order(np.zeros((0, 4), dtype=np.int64))
    assert schreier_sims_order([[1, 0, 2]]) == 2


@pytest.mark.parametrize(
    "perms,signs,match",
    [
        ([[-1, 0, 1]], None, r"perms: entries must be indices in \[0, 3\)"),
        ([[0, 0, 1]], None, r"perms: row 0 is not a permutation"),
        ([[1.7, 0.2, 2.0]], None, "perms: expected an integer dtype"),
        ([], None, "perms: expected a \\(G, D\\) integer array"),
        ([0, 1], None, "perms: expected a 2-D"),
        ([[1, 0]], [[1.0, 0.5]], r"signs.*\+1 or -1"),
        ([[1, 0]], [[1.0 + 5j, -1.0]], "signs.*complex"),
        ([[1, 0]], [[1.0, -1.0, 1.0]], "signs.*shape"),
    ],
)
def test_orbit_labels_validates_input(perms, signs, match):
    """The numpy orbit_labels wrapped negative entries, truncated floats and labelled the
    components of non-permutations, where the C++ one raises."""
    with pytest.raises(ValueError, match=match):
        orbit_labels(perms, signs)


def test_signed_perm_rep_rejects_complex_signs():
    """1 + 5j passed the +-1 check after a cast to float64 dropped its imaginary part."""
    with pytest.raises(ValueError, match="signs: expected real entries.*complex"):
        G.signed_perm_rep([[1, 0]], np.array([[1 + 5j, -1 + 0j]]))
    with pytest.raises(ValueError, match="signs: expected real entries.*complex"):
        G.signed_perm_rep([[1, 0]], np.array([[1 + 0j, -1 + 0j]]))  # even with zero imaginary


@pytest.mark.parametrize("n", [12, 60])
def test_nearly_orthogonal_generators_keep_their_invariants(n):
    """A C_n rotation rounded to 8 decimals is accepted (|R R^T - I| <= ORTHO_TOL = 1e-8), so
    every fixed-space method must find the 2 invariants a*I + b*J of its conjugation rep: the
    null space cut at 1e-9 found 0, below the generator's defect."""
    th = 2 * math.pi / n
    R = np.round([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]], 8)
    assert 1e-9 < np.abs(R @ R.T - np.eye(2)).max() <= nat.ORTHO_TOL
    rep = G.matrix_rep(R[None])
    T2 = rep.conjugation()
    assert T2.fixed_dim("character") == T2.fixed_dim("nullspace") == T2.fixed_dim() == 2
    assert rep.fixed_dim("nullspace") == 0 == rep.fixed_dim("character")  # no false invariants
    # a group past max_order (as any non-enumerable one) takes the null space for "auto"
    big = G.matrix_rep(R[None], max_order=n - 2).conjugation()
    assert big.fixed_dim() == 2
    # T(4): defect ~4x the generator's; 6 = the weight-0 words of (e^{i th}, e^{-i th})^{(x)4}
    assert (
        big.tensor_power(2).fixed_dim("nullspace") == 6 == T2.tensor_power(2).fixed_dim("nullspace")
    )
    # the character mean too: for C60 it is 6.0000026 (the traces drift with the defect), which
    # raised "the generator images probably do not define a representation"
    assert T2.tensor_power(2).fixed_dim("character") == 6
    # exact reps keep the relative cut: their defect is rounding-sized
    assert G.matrix_rep(G.dihedral(5).generator_matrices())._orthogonality_defect() == 0.0
    assert 0 < T2._orthogonality_defect() < 1e-7


def test_groups_with_a_cached_direct_product_pickle():
    """direct_product caches the product group on both factors with a lambda order formula, so
    once any code had formed C3 x C2, pickling cyclic(3) (torch.save of a symmetrized module)
    failed: Can't pickle local object 'Group.direct_product.<locals>.<lambda>'."""
    a, b = G.cyclic(3), G.c2_swap()
    G.direct_product(a, b)
    assert pickle.loads(pickle.dumps(a)).order() == 3
    prod = pickle.loads(pickle.dumps(G.direct_product(a, b)))
    assert prod.order() == 6 and prod.fixed_dim() == 2


def test_named_groups_are_canonical():
    assert G.cyclic(3).group is G.cyclic(3).group
    assert G.symmetric(4).group is G.symmetric(4).group is not G.alternating(4).group
    assert G.hyperoctahedral(3).group is G.hyperoctahedral(3).group
    s = G.cyclic(3).direct_sum(G.cyclic(3))
    assert s.fixed_dim() == 2 and s.order() == 3
    # but generic constructors always make a new group
    p = G.symmetric(3).permutations()
    assert G.perm_rep(p).group is not G.perm_rep(p).group


def test_different_groups_rejected():
    p = G.symmetric(3).permutations()
    a, b = G.perm_rep(p), G.perm_rep(p)
    with pytest.raises(ValueError, match="same Group"):
        a.tensor_product(b)
    with pytest.raises(ValueError, match="same Group"):
        a.direct_sum(b)
    with pytest.raises(ValueError, match="same Group"):
        G.so2().tensor_product(G.o2())
    # the Lie groups are singletons: separate so3() calls combine
    assert G.so3().group is G.so3().group
    assert G.so3().tensor_product(G.so3()).fixed_dim() == 1
    assert a.tensor_product(a).dim == 9


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_bad_tensor_power(k):
    with pytest.raises(ValueError, match="k"):
        G.symmetric(3).tensor_power(k)


@pytest.mark.parametrize(
    "ctor,bad",
    [
        (G.cyclic, 0),
        (G.dihedral, 2),
        (G.symmetric, 0),
        (G.alternating, 2),
        (G.sign_flips, 0),
        (G.hyperoctahedral, 0),
        (G.symmetric, 2.0),
        (G.cyclic, -3),
    ],
)
def test_bad_n(ctor, bad):
    with pytest.raises(ValueError, match="n"):
        ctor(bad)


def test_integer_arguments_accept_numpy_and_0d_tensor_ints():
    for n in (np.int64(4), np.uint8(4), torch.tensor(4)):
        assert G.cyclic(n).group.order() == 4
        assert G.symmetric(3).tensor_power(n).dim == 81
        assert G.so2().sample(n).shape == (4, 2, 2)
    w, mats = G.so2().quadrature(torch.tensor(3))
    assert torch.equal(w, G.so2().quadrature(3)[0]) and mats.shape[1:] == (2, 2)
    with pytest.raises(ValueError, match=r"n \(cyclic\) must be a positive int, got tensor\(2.5"):
        G.cyclic(torch.tensor(2.5))
    with pytest.raises(ValueError, match="n must be a non-negative int"):
        G.so2().sample(-1)


def test_max_order_is_a_constructor_argument():
    """The enumeration limit the GroupTooLargeError message tells users to raise."""
    rot = torch.tensor([[[0.0, -1.0], [1.0, 0.0]]], dtype=torch.float64)  # generates C4
    with pytest.raises(GroupTooLargeError, match="more than 3 elements"):
        G.matrix_rep(rot, max_order=3).order()
    assert G.matrix_rep(rot, max_order=4).order() == 4
    s6 = G.perm_rep(G.symmetric(6).permutations(), max_order=100)
    assert s6.order() == 720  # Schreier-Sims: no enumeration, no limit
    with pytest.raises(GroupTooLargeError, match="720 elements, above the enumeration limit 100"):
        s6.group.elements()
    flips = G.signed_perm_rep([[0, 1, 2]] * 3, torch.ones(3, 3) - 2 * torch.eye(3), max_order=7)
    with pytest.raises(GroupTooLargeError, match="above the enumeration limit 7"):
        flips.element_matrices()
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="max_order must be a positive int"):
            G.matrix_rep(rot, max_order=bad)


def test_dense_dimension_guard():
    T = G.symmetric(5).tensor_power(6)  # D = 15625
    with pytest.raises(ValueError, match="D=15625"):
        T.generator_matrices()
    with pytest.raises(ValueError, match="D=15625"):
        T.element_matrices()
    with pytest.raises(ValueError, match="D=15625"):
        T.to_matrix_rep()
    # partitions of 6 labelled slots into <= 5 blocks: Bell(6) - 1 (orbit path, no dense matrices)
    assert T.fixed_dim() == 202
    with pytest.raises(ValueError, match="D=6561"):
        G.so3().tensor_power(8).lie_algebra_matrices()
    with pytest.raises(ValueError, match="element_matrices"):
        G.symmetric(8).tensor_power(3).element_matrices()  # 40320 * 512^2 entries


def test_bad_fixed_dim_method():
    with pytest.raises(ValueError, match="method"):
        G.symmetric(3).fixed_dim("magic")
    with pytest.raises(ValueError, match="method"):
        G.symmetric(3).to_matrix_rep().fixed_dim("orbits")
    with pytest.raises(ValueError, match="method"):
        G.so2().fixed_dim("orbits")
    with pytest.raises(ValueError, match="degree"):
        G.so2().quadrature(-1)


def test_trivial_rep_of_a_group():
    g = G.dihedral(5).group
    triv = g.trivial_rep(3)
    assert triv.group is g and triv.dim == 3 and triv.fixed_dim() == 3
    assert torch.equal(triv.element_matrices()[-1], torch.eye(3, dtype=torch.float64))
    assert len(list(triv.elements())) == g.order() == 10
    for bad in (0, True, 1.5):  # True was taken as dim 1
        with pytest.raises(ValueError, match="dim must be a positive int"):
            g.trivial_rep(bad)
    assert g.trivial_rep(np.int64(3)).dim == 3


@pytest.mark.parametrize("make", [G.so2, G.o2, G.so3], ids=["SO2", "O2", "SO3"])
def test_trivial_rep_of_a_continuous_group(make):
    """A compact group's trivial rep: identity matrices, zero Lie algebra, degree 0; in a direct
    sum it adds its dimension to E^G, in a tensor product it multiplies it (it raised: the
    finite-group method built a PermRep)."""
    rep = make()
    triv = rep.group.trivial_rep(2)
    assert isinstance(triv, G.ContinuousRep) and triv.dim == 2 and triv.degree == 0
    g = rep.group.sample_defining(3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(triv.matrix_of(g), torch.eye(2, dtype=torch.float64).expand(3, 2, 2))
    assert torch.equal(triv.character_of(g), torch.full((3,), 2.0, dtype=torch.float64))
    assert not triv.lie_algebra_matrices().any()
    assert triv.fixed_dim() == triv.fixed_dim("quadrature") == 2
    base = rep.fixed_dim()
    both = rep.direct_sum(triv)
    assert both.fixed_dim() == both.fixed_dim("quadrature") == base + 2
    # the sum's matrices are the defining ones with an identity block
    m = both.matrix_of(g)
    eye2 = torch.eye(2, dtype=torch.float64).expand(3, 2, 2)
    assert torch.equal(m[:, rep.dim :, rep.dim :], eye2)
    assert torch.equal(m[:, : rep.dim, : rep.dim], rep.matrix_of(g))
    tp = rep.tensor_product(triv)
    assert tp.degree == rep.degree and tp.fixed_dim() == tp.fixed_dim("quadrature") == 2 * base
    Q = symkern.fixed_point_basis(both)
    assert Q.shape == (both.dim, base + 2)
    x = torch.randn(4, both.dim, dtype=torch.float64)
    projected = symkern.project_fixed(x, both)
    assert_close(projected[:, rep.dim :], x[:, rep.dim :], rtol=1e-12, atol=1e-12)
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="dim must be a positive int"):
            rep.group.trivial_rep(bad)


def test_continuous_fixed_dim_of_large_tensor_powers():
    """D > 4096: "auto" takes the character formula (the null space needs dense D x D matrices;
    it raised about a permutation form a continuous rep does not have). Its integer rounding
    tolerates float64 rounding of terms as large as the traces (SO(3) T(24), D = 3^24: Riordan
    R(24), which a fixed 1e-6 tolerance refused), and a mean beyond float64's reach is an error
    (SO(3) T(40) came out off by 121)."""
    assert G.so3().tensor_power(8).fixed_dim() == 91  # D = 6561, Riordan R(8)
    assert G.so3().tensor_power(24).fixed_dim("quadrature") == 834086421
    assert G.so2().tensor_power(40).fixed_dim("quadrature") == math.comb(40, 20)
    with pytest.raises(ValueError, match="too large for float64 to pin down"):
        G.so3().tensor_power(40).fixed_dim("quadrature")
    with pytest.raises(ValueError, match=r"only \(signed\) permutation representations work"):
        G.so3().tensor_power(8).fixed_dim("nullspace")


# ------------------------------------------------------------------------ size and dtype limits
_ROT60 = torch.tensor([[[0.5, -(3**0.5) / 2], [3**0.5 / 2, 0.5]]], dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool], ids=str)
@pytest.mark.parametrize(
    "make",
    [G.so3, G.o2, lambda: G.matrix_rep(_ROT60), lambda: G.cyclic(3), lambda: G.sign_flips(2)],
    ids=["SO3", "O2", "C6_rotation", "C3_perm", "Z2^2_signed"],
)
def test_group_matrices_refuse_non_floating_dtypes(make, dtype):
    """An integer dtype truncated the matrices (SO(3) samples and a 60-degree rotation's elements
    came out 0 / 1, sign flips -1 as 255 in uint8) and bool made every entry True: every rep's
    generator_matrices / element_matrices / sample raise TypeError naming dtype, also when the
    float64 element images are already cached."""
    rep = make()
    if rep.is_finite:
        rep.element_matrices()  # cached: the int request used to be a cast of the cache
    want = "dtype must be a floating torch dtype"
    with pytest.raises(TypeError, match=want):
        rep.generator_matrices(dtype)
    with pytest.raises(TypeError, match=want):
        rep.element_matrices(dtype)
    with pytest.raises(TypeError, match=want):
        rep.sample(2, dtype=dtype)
    with pytest.raises(TypeError, match=want):  # (m, D, D), m = 0 for a finite group
        rep.lie_algebra_matrices(dtype)
    # floating dtypes still give the matrices, rounded only
    for flt in (torch.float16, torch.float32):
        gens = rep.generator_matrices(flt)
        assert gens.dtype == flt and gens.shape == (rep.n_generators, rep.dim, rep.dim)
        assert_close(gens, rep.generator_matrices())
        s = rep.sample(3, generator=torch.Generator().manual_seed(0), dtype=flt)
        assert s.dtype == flt
        assert_close(s, rep.sample(3, generator=torch.Generator().manual_seed(0)))
        if rep.is_finite:
            assert_close(rep.element_matrices(flt), rep.element_matrices())


def test_tensor_power_and_product_dimension_limits():
    """T(k) had no size bound: cyclic(2) T(64) had dim 2^64 and cyclic(3) T(10^9) was OOM-killed
    (k reps, each with a longer name). D^k above the kind's limit is a ValueError naming k and
    the dimension, raised before anything is built; likewise a tensor product."""
    with pytest.raises(ValueError, match=r"k \(tensor_power\): T\(64\) of C2 has dimension 2\^64"):
        G.cyclic(2).tensor_power(64)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"T\(1000000000\) of C3 has dimension 3\^1000000000,"):
        G.cyclic(3).tensor_power(10**9)
    assert time.perf_counter() - start < 1.0  # nothing built, D^k never computed
    limit = G.reps.MAX_PERM_DIM
    assert G.cyclic(2).tensor_power(26).dim == 2**26 <= limit < 2**27  # lazy: nothing built
    want = rf"2\^27 = 134217728, above the limit MAX_PERM_DIM = {limit} \(D int64 indices"
    with pytest.raises(ValueError, match=want):
        G.cyclic(2).tensor_power(27)
    with pytest.raises(ValueError, match=r"k \(tensor_power\).*3\^8 = 6561, above the limit 4096"):
        G.symmetric(3).to_matrix_rep().tensor_power(8)  # a MatrixRep: dense (D, D) matrices
    big = G.cyclic(10**4)
    with pytest.raises(ValueError, match=r"other: .*has dimension 1000000000000, above the limit"):
        big.tensor_product(big.tensor_power(2))
    # continuous reps build no D-sized arrays: only float64 traces bound them (SO(3) T(40) is
    # a valid rep whose character mean is beyond float64, see the test above)
    assert G.so3().tensor_power(40).dim == 3**40
    with pytest.raises(ValueError, match=r"T\(1024\) of SO\(2\) has dimension 2\^1024"):
        G.so2().tensor_power(1024)
    with pytest.raises(ValueError, match=r"other: .*above the limit 2\^1023"):
        G.so2().tensor_power(1000).tensor_product(G.so2().tensor_power(100))
    # a direct sum adds dimensions: bounded the same way (repeated self-sums doubled D unchecked)
    half = G.cyclic(2).tensor_power(26)
    with pytest.raises(ValueError, match=r"other: the direct sum .*has dimension 134217728, above"):
        half.direct_sum(half)
    assert half.direct_sum(G.cyclic(2)).dim == 2**26 + 2


def _tree_nodes(rep) -> list:
    """The distinct reps of a rep's construction tree."""
    seen, todo = {}, [rep]
    while todo:
        r = todo.pop()
        if id(r) not in seen:
            seen[id(r)] = r
            todo += [n for n in r._node[1:] if isinstance(n, G.Representation)]
    return list(seen.values())


def test_tensor_power_builds_by_squaring():
    """T(k) by square-and-multiply: the same generators, character and matrices as the chain of
    k - 1 tensor products, with O(log k) distinct reps of short names (the chain kept k reps
    whose names summed to O(k^2) characters), so the power of a 1-dimensional rep is cheap for
    any k; a 1-dimensional continuous rep's power is the trivial rep (the chain's matrices
    recursed k levels deep: RecursionError)."""
    s3, so3 = G.symmetric(3), G.so3()
    g = so3.sample(2, generator=torch.Generator().manual_seed(0))
    for k in range(1, 8):
        chain, cchain = s3, so3
        for _ in range(k - 1):
            chain, cchain = chain.tensor_product(s3), cchain.tensor_product(so3)
        T, cT = s3.tensor_power(k), so3.tensor_power(k)
        assert np.array_equal(T.permutations(), chain.permutations()), k
        assert torch.equal(T.character(), chain.character()) and T.fixed_dim() == chain.fixed_dim()
        assert T.name == (f"T{k}(S3)" if k > 1 else "S3")
        if k <= 5:
            assert_close(cT.matrix_of(g), cchain.matrix_of(g), rtol=1e-12, atol=1e-12)
            assert_close(cT.lie_algebra_matrices(), cchain.lie_algebra_matrices())
        assert cT.degree == k and cT.fixed_dim("quadrature") == cchain.fixed_dim("quadrature")
    line = G.cyclic(3).group.trivial_rep(1)
    nodes = _tree_nodes(line.tensor_power(2000))
    assert len(nodes) <= 2 * 11 + 1 and max(len(r.name) for r in nodes) < 40
    sign = G.signed_perm_rep([[0]], [[-1.0]])  # C2 acting on R by -1
    assert sign.tensor_power(2001).character().tolist() == [1.0, -1.0]
    assert sign.tensor_power(2000).fixed_dim() == 1
    ctriv = so3.group.trivial_rep(1).tensor_power(5000)
    assert ctriv.dim == 1 and ctriv.degree == 0
    assert ctriv.fixed_dim() == ctriv.fixed_dim("quadrature") == 1
    assert torch.equal(ctriv.matrix_of(g), torch.ones(2, 1, 1, dtype=torch.float64))
    for rep in (line, sign, so3.group.trivial_rep(1)):
        huge = rep.tensor_power(10**18)
        assert huge.dim == 1 and huge.name == f"T{10**18}({rep.name})"
        assert len(_tree_nodes(huge)) <= 2 * 60 + 1
    assert sign.tensor_power(10**18 + 1).character().tolist() == [1.0, -1.0]


def test_repeated_sums_and_products_have_short_unambiguous_names():
    """r = r.direct_sum(r) k times was named with 2^k copies of r's name (a continuous rep can be
    doubled ~1000 times), and C3(+)C2(x)C3 did not say which operation came first. Copies of one
    unit now fold into a count (k*name, and T{k}(name) as tensor_power writes it), an operand of
    the other operation is parenthesised, and any other growing name is capped."""
    c3 = G.cyclic(3)
    triv = c3.group.trivial_rep(1)
    r, s = c3, G.so2()
    for _ in range(12):
        r, s = r.direct_sum(r), s.direct_sum(s)
    assert (r.name, r.dim, s.name) == ("4096*C3", 3 * 4096, "4096*SO(2)")
    assert c3.direct_sum(c3).direct_sum(c3.direct_sum(c3)).name == "4*C3"
    assert c3.direct_sum(c3).direct_sum(c3).name == c3.direct_sum(c3.direct_sum(c3)).name == "3*C3"
    # tensor products of one unit are named as tensor_power names the same rep
    chain = c3.tensor_product(c3).tensor_product(c3)
    assert chain.name == c3.tensor_power(3).name == "T3(C3)"
    assert c3.tensor_power(2).tensor_product(c3.tensor_power(3)).name == "T5(C3)"
    # mixed operations: the inner one is parenthesised (so is a multiple inside a product)
    pair = c3.direct_sum(triv)
    assert pair.name == "C3(+)trivial(C3)"
    assert pair.tensor_product(c3).name == "(C3(+)trivial(C3))(x)C3"
    assert c3.tensor_product(c3).direct_sum(triv).name == "T2(C3)(+)trivial(C3)"
    assert c3.tensor_product(triv).direct_sum(c3).name == "(C3(x)trivial(C3))(+)C3"
    assert pair.direct_sum(pair).direct_sum(pair).name == "3*(C3(+)trivial(C3))"
    assert c3.direct_sum(c3).tensor_product(c3).name == "(2*C3)(x)C3"
    assert pair.tensor_product(pair).name == "T2(C3(+)trivial(C3))"
    # reps of two groups are not copies of one rep: parenthesised, never folded
    assert G.direct_product(c3, c3).name == "C3(+)C3"
    assert G.direct_product(c3.direct_sum(c3), c3, mode="tensor").name == "(2*C3)(x)C3"
    # distinct operands combined again and again: capped, not doubled each time
    so3 = G.so3()
    x = so3
    for _ in range(16):
        x = x.direct_sum(x.direct_sum(so3.group.trivial_rep(1)))
    assert len(x.name) <= G.reps._MAX_NAME_CHARS and "direct sum of dimension" in x.name
    renamed = c3.direct_sum(c3)
    renamed.name = "pair"  # a renamed rep is taken by its new name
    assert renamed.direct_sum(renamed).name == "2*pair"


@pytest.mark.parametrize("n", [2**63, 10**12], ids=["2^63", "1e12"])
@pytest.mark.parametrize(
    "ctor,low,high",
    [
        (G.cyclic, 1, G.reps.MAX_PERM_DIM),
        (G.dihedral, 3, G.reps.MAX_PERM_DIM),
        (G.symmetric, 1, 100_000),
        (G.alternating, 3, 100_000),
        (G.hyperoctahedral, 1, 100_000),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_huge_n_is_a_clear_error(ctor, low, high, n):
    """cyclic / dihedral(2^63) overflowed inside NumPy, symmetric / hyperoctahedral(2^63) raised
    IndexError, n = 1e12 a bare MemoryError: a ValueError naming n and the accepted range, before
    anything of size n is allocated (S_n, A_n, B_n stop at 1e5: their exact order n!)."""
    name = ctor.__name__
    with pytest.raises(ValueError, match=rf"n \({name}\) must be in \[{low}, {high}\] .*got n={n}"):
        ctor(n)
    if high == 100_000:  # just above the factorial families' bound: quick on the old code too
        with pytest.raises(ValueError, match=rf"n \({name}\) must be in \[{low}, {high}\]"):
            ctor(high + 1)


def test_named_family_generators():
    """The NumPy cycles of the named families (no Python list of n ints) are the documented
    generators."""
    assert G.cyclic(1).permutations().tolist() == [[0]]
    assert G.cyclic(4).permutations().tolist() == [[1, 2, 3, 0]]
    assert G.dihedral(5).permutations().tolist() == [[1, 2, 3, 4, 0], [0, 4, 3, 2, 1]]
    assert G.symmetric(4).permutations().tolist() == [[1, 0, 2, 3], [1, 2, 3, 0]]
    assert G.alternating(5).permutations().tolist() == [[1, 2, 0, 3, 4], [1, 2, 3, 4, 0]]
    assert G.alternating(6).permutations().tolist() == [[1, 2, 0, 3, 4, 5], [0, 2, 3, 4, 5, 1]]
    assert [G.alternating(n).order() for n in (3, 4, 5, 6)] == [3, 12, 60, 360]
    assert G.cyclic(10**6).fixed_dim() == 1


# ================================================================== resource limits and
# numerical robustness: the null-space SVD when LAPACK's gesdd fails to converge, the memory cap
# on enumerating matrix groups (fixed_dim, order), Schreier--Sims at large degree (found by
# fuzzing)
# ------------------------------------------------------------------ null space without gesdd
def _fail_square_svds(monkeypatch, dim):
    """Make torch.linalg.svd / svdvals raise gesdd's non-convergence error on any matrix with
    ``dim`` columns (the stacked constraints of a rep of dimension ``dim``), as MKL's did on T(7)
    of SO(3) (D = 2187, one thread) and T(10) of O(2) (two threads); smaller ones still work."""
    svd, svdvals = torch.linalg.svd, torch.linalg.svdvals

    def fail_svd(a, *args, **kwargs):
        if a.shape[-1] == dim:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return svd(a, *args, **kwargs)

    def fail_svdvals(a, *args, **kwargs):
        if a.shape[-1] == dim:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return svdvals(a, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", fail_svd)
    monkeypatch.setattr(torch.linalg, "svdvals", fail_svdvals)


def _rounded_rotation_conjugation():
    """C12 rotation rounded to 8 decimals (accepted: defect <= ORTHO_TOL), past max_order so the
    null space decides; E^G = {a I + b J}: dim 2 only with the cut widened by the defect."""
    th = 2 * math.pi / 12
    R = np.round([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]], 8)
    return G.matrix_rep(R[None], max_order=10).conjugation()


NULLSPACE_REPS = {
    "so3_T3": (lambda: G.so3().tensor_power(3), 1),  # the Levi-Civita symbol
    "so3_T4": (lambda: G.so3().tensor_power(4), 3),
    "o2_T6": (lambda: G.o2().tensor_power(6), 10),
    "so2_T5_empty": (lambda: G.so2().tensor_power(5), 0),
    "C12_rounded": (_rounded_rotation_conjugation, 2),
}


@pytest.mark.parametrize("name", list(NULLSPACE_REPS))
def test_fixed_space_survives_svd_non_convergence(monkeypatch, name):
    """gesdd raised LinAlgError ("The algorithm failed to converge") for T(7) of SO(3) after
    ~10 s, so fixed_point_basis / project_fixed / orbit_average failed while fixed_dim (svdvals)
    gave 36. With the SVD failing, the fixed space must come out the same: right dimension,
    orthonormal, invariant, and the same subspace as the SVD's to rounding."""
    make, k = NULLSPACE_REPS[name]
    rep = make()
    q_svd = rep._nullspace_basis()  # the SVD's, before the patch
    assert q_svd.shape == (rep.dim, k)
    _fail_square_svds(monkeypatch, rep.dim)
    with pytest.raises(torch.linalg.LinAlgError):  # the patch bites
        torch.linalg.svd(rep._constraints("test"), full_matrices=False)
    assert rep.fixed_dim("nullspace") == k
    q = symkern.fixed_point_basis(rep)
    assert q.shape == (rep.dim, k) and q.dtype == torch.float64
    assert_close(q.T @ q, torch.eye(k, dtype=torch.float64), atol=1e-13)
    tol = 1e-12 + 10 * rep._orthogonality_defect()  # rounding; the accepted generators' defect
    for m in rep.generator_matrices():
        assert (m @ q - q).norm() <= tol
    for a in rep.lie_algebra_matrices():
        assert (a @ q).norm() <= tol
    assert_close(q @ q.T, q_svd @ q_svd.T, atol=1e-12)
    x = torch.randn(3, rep.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert_close(symkern.project_fixed(x, rep), x @ q_svd @ q_svd.T, atol=1e-12)


def test_svd_fallback_is_exactly_invariant_for_continuous_reps(monkeypatch):
    """The fallback's basis of T(4) of SO(3): every Lie-algebra image annihilates it and Haar
    samples fix it, to rounding (the 1e-12 the fuzzer asked of T(7))."""
    rep = G.so3().tensor_power(4)
    _fail_square_svds(monkeypatch, rep.dim)
    q = symkern.fixed_point_basis(rep)
    assert q.shape == (81, 3)
    assert (rep.lie_algebra_matrices() @ q).abs().max() < 1e-12
    g = rep.sample(4, generator=torch.Generator().manual_seed(1))
    assert (g @ q - q).abs().max() < 1e-12
    y = symkern.orbit_average(torch.randn(2, 81, dtype=torch.float64), rep)
    assert (y @ g.mT - y).abs().max() < 1e-12


# ------------------------------------------------------------------ enumeration memory cap
@pytest.fixture
def enumeration_cap(monkeypatch):
    """A small enumeration budget (entries), and a guard on Group._enumerate: a BFS closure
    that is not cached yet may not be asked for more elements than the budget allows at the
    group's own D (the old code asked for max_order = 100 000 dense elements: 2.7 GB at D = 30,
    an allocation failure at D = 60)."""
    budget = 200_000
    monkeypatch.setattr(Representation, "_ENUMERATION_ENTRIES", budget, raising=False)
    enumerate_ = Group._enumerate

    def guarded(self, limit=None):
        asked = self.max_order if limit is None else int(limit)
        if self._bfs is None and self.kind == "matrix":
            assert asked * self.dim**2 <= budget, f"enumeration up to {asked} elements"
        return enumerate_(self, limit)

    monkeypatch.setattr(Group, "_enumerate", guarded)
    return budget


def _sym_matrix_rep(n):
    return G.matrix_rep(G.symmetric(n).generator_matrices())


def test_matrix_fixed_dim_falls_back_to_the_null_space_past_the_budget(enumeration_cap):
    """S_30 on R^30 as dense matrices: fixed_dim() ("auto") enumerated up to max_order elements
    before taking the null space; now only while |G| * D^2 fits the budget (222 elements)."""
    rep = _sym_matrix_rep(30)
    assert rep.fixed_dim() == 1  # the all-ones vector
    # a I + b J (J all ones) on R^144: the character of T(2) costs its factor's 144 entries per
    # element (1388 elements), not 144^2
    assert _sym_matrix_rep(12).conjugation().fixed_dim() == 2
    small = _sym_matrix_rep(4)  # 24 elements * 16 entries: the character formula still
    assert small._auto_fixed_method() == "character" and small.fixed_dim() == 1


def test_matrix_fixed_dim_character_names_the_limit(enumeration_cap):
    rep = _sym_matrix_rep(30)
    with pytest.raises(GroupTooLargeError, match=r"more than 222 elements.*200000.*nullspace"):
        rep.fixed_dim("character")
    with pytest.raises(GroupTooLargeError, match="max_order"):  # max_order binds first: as before
        G.matrix_rep(G.symmetric(4).generator_matrices(), max_order=5).fixed_dim("character")


def test_matrix_order_refuses_past_the_budget(enumeration_cap):
    """order() of a matrix group is a BFS closure keeping every element: refused past the
    budget, naming it (the old code kept up to 100 000 dense elements first)."""
    with pytest.raises(GroupTooLargeError, match=r"order: .*more than 222 elements.*200000"):
        _sym_matrix_rep(30).order()
    with pytest.raises(GroupTooLargeError, match=r"order: .*more than 222 elements.*200000"):
        _sym_matrix_rep(30).group.order()  # the group itself: the cap lives in Group.order
    assert _sym_matrix_rep(4).order() == 24  # within it: exact as before
    # orders known without enumeration are unaffected: a formula, or Schreier--Sims of perms
    perm_group = G.symmetric(30).group
    assert G.MatrixRep(perm_group, perm_group.defining_rep().generator_matrices()).order() == (
        math.factorial(30)
    )


def test_enumeration_budget_is_fixed_points_reynolds_budget():
    from symkern.ops import fixed_point as fp

    assert fp._REYNOLDS_ENUMERATION_LIMIT == Representation._ENUMERATION_ENTRIES == 50_000_000


# ------------------------------------------------------------------ Schreier--Sims, large degree
def _parity(p):
    n = len(p)
    return (n - int((ss.point_components(np.asarray(p)[None]) == np.arange(n)).sum())) % 2


@pytest.mark.parametrize("n", [1000, 2000])
def test_order_of_random_large_degree_permutations_is_exact(n):
    """Two random permutations of degree 1000 generate S_1000 or A_1000: order() grew to 5.3 GB
    and raised MemoryError (the chain's explicit transversals, ~n^3 / 2 entries); degree 2000
    gave no result in 100 s. Jordan's theorem now settles them exactly, in milliseconds."""
    rng = np.random.default_rng(0)
    perms = [rng.permutation(n), rng.permutation(n)]
    even = all(_parity(p) == 0 for p in perms)
    expected = math.factorial(n) // (2 if even else 1)
    assert G.perm_rep(perms).order() == expected
    assert ss.schreier_sims_order(np.stack(perms)) == expected


def _chain_order(gens):
    """The order by the stabiliser chain alone (Jordan's test off)."""
    old = ss._GIANT_TRIES
    ss._GIANT_TRIES = 0
    try:
        return ss.schreier_sims_order(gens)
    finally:
        ss._GIANT_TRIES = old


def test_jordan_shortcut_agrees_with_the_chain():
    """Sym / Alt of one orbit among fixed points, recognised by Jordan's theorem, give the same
    base sizes' product as the stabiliser chain; groups that are not giants are not mistaken for
    ones: the affine group of Z/37 (transitive, 37-cycles but no p-cycle with p <= m - 3), the
    imprimitive S_2 wr S_16, and S_20 acting diagonally on two orbits."""
    rng = np.random.default_rng(3)
    n, m = 50, 40  # orbit 0..39, points 40..49 fixed
    for even in (False, True):
        gens = []
        for _ in range(2):
            p = np.arange(n)
            p[:m] = rng.permutation(m)
            if even and _parity(p):
                p[[0, 1]] = p[[1, 0]]
            gens.append(p)
        gens = np.stack(gens)
        assert ss._giant_base(gens) is not None
        expected = math.factorial(m) // (2 if even else 1)
        assert ss.schreier_sims_order(gens) == expected == _chain_order(gens)
    affine = np.stack([(np.arange(37) + 1) % 37, (2 * np.arange(37)) % 37])  # 2: a generator
    shift = np.roll(np.arange(16), -1)
    pair = np.arange(32).reshape(16, 2)
    wreath = np.stack([np.array([1, 0, *range(2, 32)]), pair[shift].ravel()])
    wreath = np.concatenate([wreath, [pair[[1, 0, *range(2, 16)]].ravel()]])
    diag = np.stack([np.concatenate([c, c + 20]) for c in (np.roll(np.arange(20), -1),)])
    swap = np.arange(20)
    swap[[0, 1]] = [1, 0]
    diag = np.concatenate([diag, [np.concatenate([swap, swap + 20])]])
    for gens, order in (
        (affine, 37 * 36),
        (wreath, 2**16 * math.factorial(16)),
        (diag, math.factorial(20)),
    ):
        assert ss._giant_base(gens) is None
        assert ss.schreier_sims_order(gens) == order


def test_schreier_sims_transversal_limit_names_the_degree(monkeypatch):
    """A chain too large for the transversal budget raises GroupTooLargeError before allocating
    (signed permutations of a random pair on R^1000, 2000 points: MemoryError before, now this
    error in ~3.5 s); shown here with a small budget on S_2 wr S_50 (100 points, not a giant)."""
    monkeypatch.setattr(ss, "_TRANSVERSAL_ENTRIES", 1 << 14)
    pair = np.arange(100).reshape(50, 2)
    gens = np.stack(
        [
            np.array([1, 0, *range(2, 100)]),
            pair[np.roll(np.arange(50), -1)].ravel(),
            pair[[1, 0, *range(2, 50)]].ravel(),
        ]
    )
    with pytest.raises(GroupTooLargeError, match=r"degree 100 .*163 coset representatives"):
        ss.schreier_sims_order(gens)
    rng = np.random.default_rng(0)
    perms = np.stack([rng.permutation(60), rng.permutation(60)])
    signs = rng.choice([-1.0, 1.0], size=(2, 60))
    with pytest.raises(GroupTooLargeError, match="degree 120"):  # on the 2 * 60 points +-e_i
        G.signed_perm_rep(perms, signs).order()
