"""fixed_point_basis: orthonormal, invariant, of the right dimension; symmetrize and augment."""

import numpy as np
import pytest
import torch

import symkern
from symkern import groups, symmetrize
from symkern.ops import fixed_point as fp
from symkern.testing import assert_close

KNOWN_DIMS = [
    ("T2_Alt100", lambda: groups.alternating(100).tensor_power(2), 2),
    ("T5_S5", lambda: groups.symmetric(5).tensor_power(5), 52),
    ("T3_S5", lambda: groups.symmetric(5).tensor_power(3), 5),
    ("B3_T2", lambda: groups.hyperoctahedral(3).tensor_power(2), 1),
    ("C2_conj", lambda: groups.c2_swap().conjugation(), 2),
    ("SO2_T2", lambda: groups.so2().tensor_power(2), 2),
    ("SO3_T2", lambda: groups.so3().tensor_power(2), 1),
    ("O2_T2", lambda: groups.o2().tensor_power(2), 1),
    ("C4_matrix", lambda: groups.matrix_rep([[[0.0, -1.0], [1.0, 0.0]]]), 0),
    (
        "S3_matrix_T2",
        lambda: groups.matrix_rep(groups.symmetric(3).generator_matrices()).tensor_power(2),
        2,
    ),
]


def _check_basis(rep, q, k):
    assert q.shape == (rep.dim, k) and q.dtype == torch.float64
    assert_close(q.T @ q, torch.eye(k, dtype=torch.float64))
    # invariant: ρ(g) q = q for every generator, dρ(A) q = 0 for every Lie generator
    if isinstance(rep, groups.PermRep | groups.SignedPermRep):
        # structured check: ρ(g) q = sign ⊙ q[perm], no dense D×D matrix (D = 10⁴ here)
        perms = rep.permutations()
        signs = rep.signs() if isinstance(rep, groups.SignedPermRep) else np.ones(perms.shape)
        for perm, sign in zip(perms, signs, strict=True):
            assert_close(torch.tensor(sign)[:, None] * q[torch.tensor(perm)], q)
    else:
        for m in rep.generator_matrices(dtype=torch.float64):
            assert_close(m @ q, q)
        for a in rep.lie_algebra_matrices(dtype=torch.float64):
            assert (a @ q).abs().max() <= 1e-10


@pytest.mark.parametrize("name,factory,k", KNOWN_DIMS, ids=[n for n, _, _ in KNOWN_DIMS])
def test_known_dimensions(name, factory, k):
    rep = factory()
    q = symkern.fixed_point_basis(rep)
    _check_basis(rep, q, k)
    assert q.shape[1] == rep.fixed_dim()
    again = symkern.fixed_point_basis(rep)  # from the cache, as a copy the caller may edit
    assert again is not q and torch.equal(again, q)
    assert fp._cached_basis(rep) is fp._cached_basis(rep)


def test_c2_conjugation_basis_is_the_papers():
    """E^G = {[[a, b], [b, a]]} with orthonormal basis {I/√2, P/√2} (SPEC_MEANFIELD)."""
    q = symkern.fixed_point_basis(groups.c2_swap().conjugation())
    s = 2**-0.5
    expected = torch.tensor([[s, 0.0], [0.0, s], [0.0, s], [s, 0.0]], dtype=torch.float64)
    assert_close(q @ q.T, expected @ expected.T)


def test_matrix_rep_enumerated_and_nullspace_paths_agree():
    """Reynolds eigh (enumerable) and generator null space give the same subspace."""
    rep = groups.matrix_rep(groups.symmetric(4).generator_matrices()).tensor_power(2)
    q_eig = fp._matrix_basis(rep)
    old = fp._REYNOLDS_ENUMERATION_LIMIT
    try:
        fp._REYNOLDS_ENUMERATION_LIMIT = 0
        q_null = fp._matrix_basis(rep)
    finally:
        fp._REYNOLDS_ENUMERATION_LIMIT = old
    assert q_eig.shape == q_null.shape == (16, 2)
    assert_close(q_eig @ q_eig.T, q_null @ q_null.T)


def test_empty_fixed_space_projects_to_zero(backend_case):
    rep = groups.sign_flips(3)
    x = torch.randn(4, 3, device=backend_case.device)
    assert symkern.fixed_point_basis(rep).shape == (3, 0)
    out = symkern.project_fixed(x, rep, backend=backend_case.backend)
    assert torch.equal(out.cpu(), torch.zeros(4, 3))


def test_fixed_point_basis_returns_a_copy_of_the_cached_basis():
    """Editing the returned basis in place must not reach the cache: .mul_(2) used to change every
    later project_fixed, and .zero_() on a permutation rep's basis every later basis."""
    for rep in (groups.c2_swap().conjugation(), groups.cyclic(3)):
        x = torch.randn(4, rep.dim, dtype=torch.float64)
        want = symkern.project_fixed(x, rep)
        q = symkern.fixed_point_basis(rep)
        q0 = q.clone()
        q.mul_(2)
        assert_close(symkern.project_fixed(x, rep), want)
        q.zero_()
        assert torch.equal(symkern.fixed_point_basis(rep), q0)
        assert_close(symkern.project_fixed(x, rep), want)


def test_nullspace_path_uses_fixed_dims_tolerance():
    """A rotation by 2π/30000 (|G| = 30000 > max_order: the generator null space) fixes only 0.
    The basis thresholded eigenvalues of Σ CᵀC at 1e-7, i.e. singular values at ~3e-4 (here
    ~2e-4): it returned the whole plane and orbit_average left x unchanged."""
    th = 2 * np.pi / 30000
    rot = torch.tensor([[[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]])
    rep = groups.matrix_rep(rot.double(), max_order=10)
    assert rep.fixed_dim() == 0
    assert symkern.fixed_point_basis(rep).shape == (2, 0)
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    assert torch.equal(symkern.orbit_average(x, rep), torch.zeros(1, 2, dtype=torch.float64))


@pytest.mark.parametrize("n,max_order", [(12, 10), (60, 100_000)])
def test_nearly_orthogonal_generators_keep_the_fixed_space(n, max_order):
    """A C_n rotation rounded to 8 decimals is accepted as orthogonal (defect <= 1e-8). With C12
    past max_order (the null space) the basis of its conjugation rep came out empty and
    project_fixed(I) gave 0: the cut 1e-9 lay below the defect; C60 enumerated (the Reynolds
    eigh) lost both invariants too, its eigenvalues 2.5e-7 away from 1."""
    th = 2 * np.pi / n
    R = np.round([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]], 8)
    rep = groups.matrix_rep(R[None], max_order=max_order).conjugation()
    q = symkern.fixed_point_basis(rep)
    assert q.shape == (4, 2)
    assert_close(q.T @ q, torch.eye(2, dtype=torch.float64))
    for m in rep.generator_matrices():
        assert (m @ q - q).abs().max() < 1e-7  # invariant up to the generators' own defect
    eye = torch.eye(2, dtype=torch.float64).reshape(1, 4)  # commutes with every rotation
    assert_close(symkern.project_fixed(eye, rep), eye)
    J = torch.tensor([[0.0, -1.0, 1.0, 0.0]], dtype=torch.float64)
    assert_close(symkern.project_fixed(J, rep), J)
    x = torch.tensor([[1.0, 0.0, 0.0, -1.0]], dtype=torch.float64)  # orthogonal to I and J
    assert (symkern.project_fixed(x, rep)).abs().max() < 1e-7


def test_matrix_rep_of_a_group_above_max_order_uses_the_nullspace():
    """S9 as 9×9 matrices: |G| = 362880 > max_order, but |G|·D² = 2.9e7 passed the Reynolds size
    check, and enumerating raised GroupTooLargeError while rep.fixed_dim() worked."""
    rep = groups.symmetric(9).to_matrix_rep()
    q = symkern.fixed_point_basis(rep)
    _check_basis(rep, q, rep.fixed_dim())
    x = torch.randn(3, 9, dtype=torch.float64)
    mean = x.mean(1, keepdim=True).expand(3, 9)  # E^G = the constants
    assert_close(symkern.orbit_average(x, rep), mean)
    assert_close(symkern.project_fixed(x, rep), mean)


# --- symmetrize / augment ------------------------------------------------------------------------


def test_symmetrize_invariant_mlp_is_invariant():
    torch.manual_seed(0)
    rep = groups.symmetric(4)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    calls = []
    net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    f = symmetrize(net, rep)
    x = torch.randn(5, 4)
    y = f(x)
    assert calls == [(24 * 5, 4)]  # the whole orbit in one call, no loop over G
    perm = torch.tensor([2, 0, 3, 1])
    assert_close(f(x[:, perm]), y.double())
    assert isinstance(f, torch.nn.Module) and len(list(f.parameters())) == 4


def test_symmetrize_equivariant_and_matches_definition():
    rep = groups.hyperoctahedral(3)
    w = torch.randn(3, 3, dtype=torch.float64)

    def fn(x):
        return torch.tanh(x @ w.T)

    f = symmetrize(fn, rep, rep)
    x = torch.randn(6, 3, dtype=torch.float64)
    mats = rep.element_matrices()
    expected = torch.stack([torch.tanh((x @ m.T) @ w.T) @ m for m in mats]).mean(0)
    assert_close(f(x), expected)
    for m in rep.generator_matrices():
        assert_close(f(x @ m.T), f(x) @ m.T)


def test_symmetrize_continuous_quadrature_is_exact_for_polynomials():
    rep = groups.so2()
    a = torch.randn(2, 2, dtype=torch.float64)

    def fn(x):  # linear map: Q_G f = the projection of a onto the commutant of SO(2)
        return x @ a.T

    f = symmetrize(fn, rep, rep, mode="quadrature")
    x = torch.randn(5, 2, dtype=torch.float64)
    sym = (
        a
        + torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
        @ a
        @ torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    ) / 2
    assert_close(f(x), x @ sym.T)


def test_augment_orbit_and_sample():
    rep = groups.cyclic(4)
    x = torch.randn(3, 4)
    y = torch.randn(3, 1)
    xs, ys = symkern.augment(x, y, rep, mode="orbit")
    assert xs.shape == (12, 4) and ys.shape == (12, 1)
    # every orbit image of every sample appears, labels unchanged (invariant)
    for b in range(3):
        rows = {tuple(xs[i].tolist()) for i in range(12) if ys[i].item() == y[b].item()}
        assert rows == {tuple(torch.roll(x[b], s).tolist()) for s in range(4)}
    g = torch.Generator().manual_seed(1)
    xs1, ys1 = symkern.augment(x, y, rep, mode="sample", generator=g)
    assert xs1.shape == x.shape and torch.equal(ys1, y)
    for b in range(3):
        assert any(torch.equal(xs1[b], torch.roll(x[b], s)) for s in range(4))
    with pytest.raises(ValueError, match="mode must be"):
        symkern.augment(x, y, rep, mode="all")
    with pytest.raises(ValueError, match=r"x must be \(B, 4\)"):
        symkern.augment(torch.randn(3, 5), y, rep)


def test_augment_and_symmetrize_bad_input():
    """Each refused input names the argument; integer labels keep exact images under a
    permutation rep_out and are refused under a matrix one (120° rotation: ρ(g) y is not an
    integer vector, and was silently truncated to [[2, 0], [0, 0], [0, 0]])."""
    c, s = -0.5, 3**0.5 / 2
    rot = groups.matrix_rep([[[c, -s], [s, c]]])
    x = torch.randn(1, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match="y must be a floating tensor for a matrix rep_out"):
        symkern.augment(x, torch.tensor([[2, 0]]), rot, rot)
    _, ys = symkern.augment(x, torch.tensor([[2.0, 0.0]], dtype=torch.float64), rot, rot)
    want = torch.tensor([[2.0, 0.0], [-1.0, 3**0.5], [-1.0, -(3**0.5)]], dtype=torch.float64)
    assert_close(ys, want, rtol=1e-12, atol=1e-12)
    swap = groups.c2_swap()
    _, ys = symkern.augment(x, torch.tensor([[2, 0]]), swap, swap)  # permuted ints are exact
    assert ys.tolist() == [[2, 0], [0, 2]]
    with pytest.raises(ValueError, match="mode='orbit' needs a finite group.*mode='sample'"):
        symkern.augment(torch.randn(2, 3), torch.randn(2), groups.so3())  # (was symmetrize's text)
    with pytest.raises(ValueError, match=r"y must be a tensor with 1 rows.*got \(\)"):
        symkern.augment(x, torch.tensor(1.0), swap)
    empty = torch.zeros(0, 2)
    xs, ys = symkern.augment(empty, torch.zeros(0), swap, mode="sample")  # no sample: no draw
    assert xs.shape == (0, 2) and ys.shape == (0,)
    count = symmetrize(lambda v: (v[:, :2] > 0).sum(-1), groups.cyclic(3))  # int64 output
    with pytest.raises(TypeError, match="fn must return a floating.*got dtype torch.int64"):
        count(torch.tensor([[1.0, 2.0, -3.0]]))  # the weights 1/3 cast to int64 gave 0
    s3 = groups.symmetric(3)
    for bad in (2.5, True, 0):
        with pytest.raises(ValueError, match="samples: mode='sample' needs an int >= 1"):
            symmetrize(lambda v: v, s3, mode="sample", samples=bad)
    with pytest.raises(ValueError, match=r"fn must map an \(M, 3\) batch to an \(M, \.\.\.\)"):
        symmetrize(lambda v: v.sum(), s3)(torch.randn(2, 3))
    with pytest.raises(TypeError, match="fn must be a callable"):
        symmetrize(3, s3)
    torch.manual_seed(0)
    sampled = symmetrize(lambda v: v, s3, mode="sample", samples=torch.tensor(4))
    assert sampled(torch.randn(2, 3)).shape == (2, 3)
    with pytest.raises(ValueError, match="degree: 1000000 needs .* SO3 quadrature nodes"):
        symmetrize(lambda v: v, groups.so3(), mode="quadrature", degree=10**6)
