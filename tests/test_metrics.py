"""symkern.meanfield.metrics: W₂ / RMD against exact closed forms and POT, test risk."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from symkern.groups import c2_swap
from symkern.meanfield import MatrixUnit, StandardUnit, Teacher, metrics
from symkern.ops.particles import group_matrices


def _c2():
    _, _, m_z, proj = group_matrices(
        MatrixUnit(2, 2), c2_swap(), torch.float64, torch.device("cpu")
    )
    return m_z, proj


def test_w2_closed_forms():
    # two Diracs: W₂² = ‖x − y‖²
    assert metrics.w2_squared([[0.0, 0.0]], [[3.0, 4.0]]).value == pytest.approx(25.0)
    # a translated cloud: W₂²(μ, μ + v) = ‖v‖² (translation is the optimal map)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    v = np.array([0.3, -1.0, 2.0])
    d = metrics.w2_squared(x, x + v)
    assert d.method == "exact"
    assert d.value == pytest.approx(float(v @ v), rel=1e-9)
    # invariant to the order of the atoms; zero between a set and itself
    assert metrics.w2_squared(x, x[::-1]).value == pytest.approx(0.0, abs=1e-12)
    # the cost matrix against a float64 brute force, at a size with several row blocks
    y = rng.normal(size=(5000, 3))
    brute = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(metrics._sq_cost(x, y), brute, rtol=1e-15, atol=0)
    np.testing.assert_allclose(metrics._sq_cost(y, x), brute.T, rtol=1e-15, atol=0)
    # points of R^0: every distance is 0
    assert metrics.w2_squared(np.zeros((2, 0)), np.zeros((3, 0))).value == 0.0


def test_w2_weights():
    # μ = ½δ_0 + ½δ_2, ν = δ_1 (1-D): W₂² = 1; with weights (¾, ¼): ¾·1 + ¼·1 = 1; vs δ_0: ¼·4
    x, y = [[0.0], [2.0]], [[1.0]]
    assert metrics.w2_squared(x, y).value == pytest.approx(1.0)
    assert metrics.w2_squared(x, [[0.0]], a=[0.75, 0.25]).value == pytest.approx(1.0)
    with pytest.raises(ValueError, match="sum to 1"):
        metrics.w2_squared(x, y, a=[0.5, 0.6])
    with pytest.raises(ValueError, match="shape"):
        metrics.w2_squared(x, y, a=[1.0])


def test_rmd_definition_and_moment_factor():
    # W₂² = 4, M₂(μ) + M₂(ν) = 2 → RMD = √2 (the maximum: W₂² ≤ 2(M₂ + M₂))
    d = metrics.rmd([[1.0, 0.0]], [[-1.0, 0.0]])
    assert d.value == pytest.approx(math.sqrt(2.0))
    # the public reproduction's 2∫‖z‖² divides RMD by √2
    d2 = metrics.rmd([[1.0, 0.0]], [[-1.0, 0.0]], moment_factor=2.0)
    assert d2.value == pytest.approx(1.0)
    # both laws at 0: defined as 0
    assert metrics.rmd([[0.0, 0.0]], [[0.0, 0.0]]).value == 0.0


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 30), seed=st.integers(0, 10_000), k=st.integers(0, 4))
def test_rmd_to_projection_equals_exact_ot(n, seed, k):
    """The closed form W₂²(ν, P#ν) = mean ‖(I − P)θ‖² agrees with POT's exact OT for any
    orthogonal projection of rank k."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    p = q[:, :k] @ q[:, :k].T
    closed = metrics.rmd_to_projection(x, p)
    exact = metrics.rmd(x, x @ p.T, method="exact")
    assert closed.method == "projection"
    assert closed.value == pytest.approx(exact.value, rel=1e-7, abs=1e-9)


def test_rmd_to_projection_on_eg():
    m_z, proj = _c2()
    si = Teacher.paper("SI").particles
    assert metrics.rmd_to_projection(si, proj).value < 1e-15
    arb = Teacher.paper("arbitrary").particles
    assert metrics.rmd_to_projection(arb, proj).value > 0.3


def test_rmd_to_symmetrized():
    m_z, _ = _c2()
    wi = Teacher.paper("WI").particles  # the 5 particles and their images: a WI law
    assert metrics.rmd_to_symmetrized(wi, m_z).value < 1e-7
    arb = Teacher.paper("arbitrary").particles
    assert metrics.rmd_to_symmetrized(arb, m_z).value > 0.1


def test_rmd_to_symmetrized_of_fixed_atoms_is_zero_without_a_solve(monkeypatch):
    """A law whose atoms are all fixed by M_g (SI particles, as DA / FA / EA keep them) is its own
    symmetrisation: RMD 0, what the network simplex gives, but without calling POT. One atom off
    E^G by one ulp goes to the solver again."""
    m_z, proj = _c2()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=g, dtype=torch.float64) @ proj.T
    x = (x + x @ m_z[1].T) * 0.5  # fixed bit for bit (proj's rounding would leave ulps)
    assert torch.equal(x @ m_z[1].T, x)
    solved = metrics.rmd(x, torch.cat([x, x @ m_z[1].T]), method="exact")
    assert solved.value == 0.0

    def no_pot():
        raise AssertionError("POT called for a law on E^G")

    monkeypatch.setattr(metrics, "_pot", no_pot)
    assert metrics.rmd_to_symmetrized(x, m_z) == metrics.Distance(0.0, "exact")
    x[7, 0] = torch.nextafter(x[7, 0], torch.tensor(10.0, dtype=torch.float64))
    with pytest.raises(AssertionError, match="POT called"):
        metrics.rmd_to_symmetrized(x, m_z)


def test_identical_laws_are_at_distance_zero_without_a_solve(monkeypatch):
    """The same atoms with the same weights (DA vs FA from SI init in float32) are at W₂ = 0 by
    the identity coupling: no solver call, whichever method was asked. A one-ulp change of one atom
    or different weights go to the solver."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 4))
    w = rng.uniform(0.5, 1.5, size=30)
    w /= w.sum()
    assert metrics.w2_squared(x, x.copy(), w, w.copy(), method="exact").value == 0.0  # solved

    def no_pot():
        raise AssertionError("POT called for identical laws")

    monkeypatch.setattr(metrics, "_pot", no_pot)
    for method in ("auto", "exact", "sinkhorn"):
        assert metrics.w2_squared(x, x.copy(), method=method) == metrics.Distance(0.0, "exact")
        assert metrics.rmd(x, x.copy(), w, w.copy(), method=method).value == 0.0
    y = x.copy()
    y[11, 2] = np.nextafter(y[11, 2], np.inf)
    # one ulp apart: not identical, but the identity plan is certified optimal (no solve either;
    # test_identity_plan_certificate below)
    one_ulp = metrics.w2_squared(x, y, method="exact")
    assert one_ulp == metrics.Distance((y[11, 2] - x[11, 2]) ** 2 / 30, "exact")
    with pytest.raises(AssertionError, match="POT called"):
        metrics.w2_squared(x, x.copy(), w)  # weights w against uniform
    with pytest.raises(AssertionError, match="POT called"):
        metrics.w2_squared(x, x[::-1].copy())  # the same law, atoms reordered: solved


def _pot_w2(x, y, a=None, b=None):
    """W₂² straight from POT's network simplex, the reference of the identity-plan shortcut."""
    import ot

    a = np.full(len(x), 1 / len(x)) if a is None else a
    b = np.full(len(y), 1 / len(y)) if b is None else b
    return float(ot.emd2(a, b, metrics._sq_cost(x, y), numItermax=10**8))


@pytest.mark.parametrize("n, dim", [(1, 2), (2, 1), (7, 3), (129, 4), (600, 2)])
@pytest.mark.parametrize("noise", [1e-9, 1e-3, 0.05, 1.0])
@pytest.mark.parametrize("weights", ["uniform", "equal random"])
def test_identity_plan_certificate(monkeypatch, n, dim, noise, weights):
    """Laws with the same weights and atoms in corresponding order (the same particles trained two
    ways): when "atom i to atom i" is optimal, W₂² is that plan's cost, certified by Bellman-Ford
    potentials without POT; otherwise POT solves. Either way the value is POT's (to 1e-12) on
    random laws, from nearly equal to unrelated (noise 1: the identity is rarely optimal)."""
    rng = np.random.default_rng(n * 1000 + dim)
    x = rng.normal(size=(n, dim))
    y = x + noise * rng.normal(size=(n, dim))
    a = None if weights == "uniform" else rng.uniform(0.2, 1.0, size=n)
    a = None if a is None else a / a.sum()
    want = _pot_w2(x, y, a, a)
    certified = metrics._identity_plan_is_optimal(metrics._sq_cost(x, y))
    identity = float((np.full(n, 1 / n) if a is None else a) @ ((x - y) ** 2).sum(1))
    # the certificate is sound: it never accepts a plan costlier than the optimum
    assert not certified or identity <= want * (1 + 1e-12) + 1e-300
    if noise == 1e-9:  # max |x_i − y_i| < ½ min |x_i − x_j| (a.s. here): the identity is optimal
        assert certified
    got = metrics.w2_squared(x, y, a, a)
    assert got.method == "exact"
    assert got.value == pytest.approx(want, rel=1e-12, abs=1e-300)
    if certified:

        def no_pot():
            raise AssertionError("POT called")

        monkeypatch.setattr(metrics, "_pot", no_pot)
        assert metrics.w2_squared(x, y, a, a) == got
        assert metrics.rmd(x, y, a, a).value > 0


def test_identity_plan_certificate_against_every_permutation():
    """On 400 small random problems (N ≤ 6: Bellman-Ford settles within its 10 rounds) the
    certificate holds exactly when no permutation beats the identity (uniform laws: an optimal
    plan is a permutation, Birkhoff)."""
    import itertools

    rng = np.random.default_rng(7)
    accepted = rejected = 0
    for trial in range(400):
        n = int(rng.integers(1, 7))
        x = rng.normal(size=(n, 2))
        y = x + rng.choice([0.01, 0.3, 1.0, 3.0]) * rng.normal(size=(n, 2))
        cost = metrics._sq_cost(x, y)
        costs = [cost[np.arange(n), list(p)].sum() for p in itertools.permutations(range(n))]
        identity, best = costs[0], min(costs)
        if 0 < identity - best < 1e-9 * (1 + best):
            continue  # a near tie: either answer is right to rounding
        optimal = identity <= best
        assert metrics._identity_plan_is_optimal(cost) == optimal, (trial, n, identity, best)
        accepted += optimal
        rejected += not optimal
    assert accepted > 50 and rejected > 50  # both outcomes exercised


@pytest.mark.parametrize("n", [7, 50])
def test_identity_plan_certificate_sees_long_cycles(n):
    """Points on a circle and the same points shifted by one place: the optimum moves nothing
    (cost 0) but swapping any two atoms only makes the identity worse, so only the whole n-cycle
    improves it. A certificate that looked at pairs would accept the identity."""
    angle = 2 * np.pi * np.arange(n) / n
    x = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    y = np.roll(x, -1, axis=0)  # y_i = x_{i+1}
    cost = metrics._sq_cost(x, y)
    diag = np.diagonal(cost)
    swaps = cost + cost.T - diag[:, None] - diag[None, :]
    assert (swaps[~np.eye(n, dtype=bool)] > 0).all()  # no improving 2-cycle
    assert not metrics._identity_plan_is_optimal(cost)
    assert metrics.w2_squared(x, y).value == pytest.approx(0.0, abs=1e-12)  # POT: the shift


def test_sinkhorn_close_to_exact():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(150, 4)), rng.normal(size=(150, 4)) + 0.5
    exact = metrics.rmd(x, y)
    approx = metrics.rmd(x, y, exact_max=100)  # forces the entropic path
    assert exact.method == "exact" and approx.method == "sinkhorn"
    assert approx.value == pytest.approx(exact.value, rel=0.05)
    assert approx.value > exact.value  # S_ε is biased high at this ε (0.4 % here)


def test_unconverged_sinkhorn_raises(monkeypatch):
    """A plan whose marginals are still off after the iteration cap is an error, not a value."""
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(40, 3)), rng.normal(size=(30, 3)) + 1.0
    monkeypatch.setattr(metrics, "SINKHORN_MAX_ITER", 5)
    with pytest.raises(RuntimeError, match="did not converge in 5 iterations"):
        metrics.w2_squared(x, y, method="sinkhorn")


def test_exact_solver_status_is_checked(monkeypatch):
    """A network simplex that stops before the optimum raises; its value is never returned."""
    import ot

    def capped(a, b, M, numItermax, log):
        return 1.0, {"result_code": 2, "warning": "numItermax reached before optimality"}

    monkeypatch.setattr(ot, "emd2", capped)
    with pytest.raises(RuntimeError, match="did not reach the optimum"):
        metrics.w2_squared(np.ones((3, 2)), np.zeros((4, 2)))


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((3,)), r"\(N, D\)"),
        (np.full((2, 2), np.nan), "NaN"),
        (np.zeros((0, 2)), "at least"),
    ],
)
def test_bad_particle_sets(bad, match):
    with pytest.raises(ValueError, match=match):
        metrics.rmd(bad, np.zeros((2, 2)))


def test_dimension_mismatch():
    with pytest.raises(ValueError, match="different dimensions"):
        metrics.w2_squared(np.zeros((2, 2)), np.zeros((2, 3)))


def test_malformed_particle_data_named():
    """Ragged lists raised numpy's "setting an array element with a sequence" (no argument
    named); None, strings and bools were read as NaN, 1.5 and 1.0 (None got "x must be a (N, D)
    particle set, got shape (1,)")."""
    y = np.zeros((2, 2))
    with pytest.raises(TypeError, match=r"x must be a tensor .* \(one shape, not ragged\)"):
        metrics.w2_squared([[1.0, 2.0], [3.0]], y)
    for bad in (None, [[1.0, None]], [["1.5", "2"]], [[True, False]]):
        with pytest.raises(TypeError, match=r"x must be a tensor or a \(nested\) sequence"):
            metrics.rmd(bad, y)
    with pytest.raises(TypeError, match=r"a must be a tensor or a \(nested\) sequence"):
        metrics.second_moment(y, [0.5, None])
    with pytest.raises(TypeError, match=r"particles must be a tensor .* not ragged"):
        Teacher(MatrixUnit(2, 2), [[0.0, 0.0, 0.0, 0.0], [0.0]])
    # what numpy reads as numbers still is: Python ints past int64, NumPy scalars
    assert metrics.second_moment([[2**70, 0]]) == 2.0**140
    assert metrics.second_moment([[np.float32(3.0), 4]]) == 25.0


def test_meta_tensors_refused_by_name():
    """A meta tensor (shape and dtype only) has no values to measure: every metric raised torch's
    "Cannot copy out of meta tensor" / "not on the expected device" naming no argument."""
    x, meta = torch.randn(3, 4, dtype=torch.float64), torch.zeros(3, 4, device="meta")
    m_z, proj = _c2()
    calls = {
        "x": lambda: metrics.w2_squared(meta, x),
        "y": lambda: metrics.rmd(x, meta),
        "a": lambda: metrics.second_moment(x, torch.full((3,), 1 / 3, device="meta")),
        "proj": lambda: metrics.rmd_to_projection(x, proj.to("meta")),
        "m_z": lambda: metrics.rmd_to_symmetrized(x, m_z.to("meta")),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=f"^{name} must hold values, got a meta tensor"):
            call()
    unit, teacher = MatrixUnit(2, 2), Teacher.paper("SI")
    xt = metrics.risk_inputs(5, 2, 4.0)
    yt = teacher(xt)
    risk = metrics.monte_carlo_risk
    for name, kw in (
        ("x_test", dict(x_test=xt.to("meta"))),
        ("y_test", dict(y_test=yt.to("meta"))),
        ("theta", dict(theta=teacher.particles.to("meta"))),
    ):
        args = dict(x_test=xt, y_test=yt, unit=unit, theta=teacher.particles) | kw
        with pytest.raises(ValueError, match=f"^{name} must hold values, got a meta tensor"):
            risk(None, args.pop("x_test"), args.pop("y_test"), **args)
    with pytest.raises(ValueError, match="the model's output must hold values"):
        risk(lambda z: torch.zeros(len(z), 2, device="meta"), xt, yt)


def test_risk_inputs_fixed_and_scaled():
    a = metrics.risk_inputs(20_000, 2, 4.0, seed=3)
    b = metrics.risk_inputs(20_000, 2, 4.0, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, metrics.risk_inputs(20_000, 2, 4.0, seed=4))
    assert a.std().item() == pytest.approx(4.0, rel=0.03)


def test_risk_inputs_refuses_huge_samples_before_allocating():
    """n = 10**12 asked the allocator for 16 TB (torch's "can't allocate memory"), and past
    n·d = 2^32 the 32-bit Philox index would repeat its numbers; the draw's ~120 bytes per
    number make even 1e9 an out-of-memory kill on a small machine."""
    from symkern.meanfield import rng

    sizes = [(10**12, 2), (2**31 + 1, 2), (1, 10**15)]
    for n, d in [*sizes, (rng.MAX_DRAW // 2 + 1, 2)]:  # and the first size past the limit
        with pytest.raises(ValueError, match=r"n \* d = \d+ random numbers in one call exceeds"):
            metrics.risk_inputs(n, d, 4.0)


def test_monte_carlo_risk():
    unit = MatrixUnit(2, 2)
    teacher = Teacher.paper("arbitrary")
    x = metrics.risk_inputs(1000, 2, 4.0)
    y = teacher(x)
    # the teacher's own risk is 0; a uniform-weight particle network equals the teacher here
    assert metrics.monte_carlo_risk(None, x, y, unit=unit, theta=teacher.particles) < 1e-28
    # the fused model_output path == the unit's torch reference output, chunked or not
    th = torch.randn(7, 4, dtype=torch.float64)
    r1 = metrics.monte_carlo_risk(None, x, y, unit=unit, theta=th, chunk=64)
    r2 = metrics.monte_carlo_risk(lambda z: unit.output(z, th), x, y)
    assert r1 == pytest.approx(r2, rel=1e-12)
    assert r1 == pytest.approx(float(((unit.output(x, th) - y) ** 2).sum(-1).mean()), rel=1e-12)
    # the standard unit too, from float32 particles (evaluated in float64)
    std = StandardUnit(3, activation="tanh")
    xs = torch.randn(300, 3, dtype=torch.float64)
    ys = torch.randn(300, 1, dtype=torch.float64)
    th32 = torch.randn(129, std.D)
    want = float(((std.output(xs, th32.double()) - ys) ** 2).sum(-1).mean())
    got = metrics.monte_carlo_risk(None, xs, ys, unit=std, theta=th32, chunk=100)
    assert got == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="exactly one"):
        metrics.monte_carlo_risk(None, x, y)


def test_monte_carlo_risk_feeds_a_module_on_its_parameters_device():
    """A module is fed each chunk on its parameters' device and its outputs are compared with
    y_test on y_test's device. Before, a CUDA module got the CPU sample (torch's "Expected all
    tensors to be on the same device"). Without a GPU the module's parameters are on "meta": the
    chunk must arrive there; the forward then returns CPU values. The CUDA case is the gpu test
    below."""
    seen = []

    class OnMeta(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.empty(2, device="meta", dtype=torch.float32))

        def forward(self, x):
            seen.append((x.device.type, x.dtype))
            return torch.full((x.shape[0], 1), 0.5, dtype=torch.float32)

    x = torch.randn(5, 2, dtype=torch.float64)
    y = torch.ones(5, 1, dtype=torch.float64)
    assert metrics.monte_carlo_risk(OnMeta(), x, y, chunk=2) == 0.25
    assert seen == [("meta", torch.float32)] * 3


@pytest.mark.gpu
def test_monte_carlo_risk_cuda_module_cpu_sample():
    lin = torch.nn.Linear(2, 1).cuda()
    x = torch.randn(300, 2, dtype=torch.float64)
    y = torch.randn(300, 1, dtype=torch.float64)
    want = float(((lin.cpu().double()(x) - y) ** 2).sum() / 300)
    lin = lin.float().cuda()
    assert metrics.monte_carlo_risk(lin, x, y, chunk=128) == pytest.approx(want, rel=1e-5)


# --- bad input: every argument checked, with a message naming it --------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "sinkhorn", "sinkhorn_reg": -1.0}, "sinkhorn_reg must be a finite number > 0"),
        ({"method": "sinkhorn", "sinkhorn_reg": 0.0}, "sinkhorn_reg must be a finite number > 0"),
        ({"sinkhorn_reg": float("nan")}, "sinkhorn_reg must be a finite number > 0"),
        ({"sinkhorn_reg": True}, "sinkhorn_reg must be a finite number > 0"),
        ({"exact_max": "a"}, "exact_max must be an int >= 0"),
        ({"exact_max": -1}, "exact_max must be an int >= 0"),
        ({"exact_max": True}, "exact_max must be an int >= 0"),
        ({"method": "simplex"}, "method must be 'auto', 'exact' or 'sinkhorn'"),
    ],
)
def test_w2_options_checked(kwargs, match):
    x, y = np.zeros((3, 2)), np.ones((4, 2))
    with pytest.raises(ValueError, match=match):
        metrics.w2_squared(x, y, **kwargs)
    with pytest.raises(ValueError, match=match):
        metrics.rmd_to_symmetrized(x, np.eye(2)[None], **kwargs)


def test_w2_cost_overflow_and_complex_input():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(6, 3))
    with pytest.raises(ValueError, match="cost matrix overflows float64"):
        metrics.w2_squared(x * 1e200, y * 1e200)
    with pytest.raises(ValueError, match="overflows float64"):
        metrics.w2_squared(x * 1e200, y * 1e200, method="sinkhorn")
    with pytest.raises(ValueError, match="overflows float64"):
        metrics.w2_squared(x, y, method="sinkhorn", sinkhorn_reg=1e308)
    for bad in (x + 1j, torch.from_numpy(x).to(torch.complex128)):
        with pytest.raises(TypeError, match="x must be real"):
            metrics.w2_squared(bad, y)
    with pytest.raises(TypeError, match="a must be real"):
        metrics.w2_squared(x, y, a=np.full(5, 0.2 + 0j))
    with pytest.raises(TypeError, match=r"y must be a tensor or a \(nested\) sequence of real"):
        metrics.w2_squared(x, [["a", "b", "c"]])


@pytest.mark.parametrize("factor", [-1.0, 0.0, float("nan"), float("inf"), True])
def test_moment_factor_checked(factor):
    m_z, proj = _c2()
    x = Teacher.paper("arbitrary").particles
    match = "moment_factor must be a finite number > 0"
    with pytest.raises(ValueError, match=match):
        metrics.rmd(x, x + 1.0, moment_factor=factor)
    with pytest.raises(ValueError, match=match):
        metrics.rmd_to_projection(x, proj, moment_factor=factor)
    with pytest.raises(ValueError, match=match):
        metrics.rmd_to_symmetrized(x, m_z, moment_factor=factor)


def test_rmd_to_projection_requires_an_orthogonal_projector():
    x = np.random.default_rng(3).normal(size=(6, 3))
    with pytest.raises(ValueError, match="proj must be an orthogonal projector"):
        metrics.rmd_to_projection(x, 2 * torch.eye(3, dtype=torch.float64))
    oblique = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # P @ P = P, not sym.
    with pytest.raises(ValueError, match="proj must be an orthogonal projector"):
        metrics.rmd_to_projection(x, oblique)
    with pytest.raises(ValueError, match=r"proj must be \(3, 3\)"):
        metrics.rmd_to_projection(x, np.eye(2))
    with pytest.raises(ValueError, match="proj contains NaN"):
        metrics.rmd_to_projection(x, np.full((3, 3), np.nan))
    # particles too large for their squared norms: computed at a power-of-two scale instead
    assert metrics.rmd_to_projection(x * 1e200, np.zeros((3, 3))).value == pytest.approx(
        metrics.rmd_to_projection(x, np.zeros((3, 3))).value, rel=1e-12
    )
    # a float32 projector is accepted at its own precision, with the float64 value
    _, proj = _c2()
    th = Teacher.paper("arbitrary").particles
    assert metrics.rmd_to_projection(th, proj.float()).value == pytest.approx(
        metrics.rmd_to_projection(th, proj).value, rel=1e-6
    )


def test_rmd_to_symmetrized_checks_m_z():
    m_z, _ = _c2()
    x = Teacher.paper("arbitrary").particles
    with pytest.raises(ValueError, match="m_z must hold orthogonal matrices"):
        metrics.rmd_to_symmetrized(x, 2 * m_z)
    with pytest.raises(ValueError, match=r"m_z must be \(G, 4, 4\) with G >= 1"):
        metrics.rmd_to_symmetrized(x, torch.eye(3)[None].expand(2, 3, 3))  # wrong D
    with pytest.raises(ValueError, match=r"m_z must be \(G, 4, 4\) with G >= 1"):
        metrics.rmd_to_symmetrized(x, torch.eye(4))  # 2-D
    with pytest.raises(ValueError, match=r"m_z must be \(G, 4, 4\) with G >= 1"):
        metrics.rmd_to_symmetrized(x, torch.zeros(0, 4, 4))  # G = 0


def test_monte_carlo_risk_bad_inputs():
    unit = MatrixUnit(2, 2)
    x = metrics.risk_inputs(7, 2, 4.0)
    y = Teacher.paper("arbitrary")(x)
    th = Teacher.paper("arbitrary").particles

    def risk(**kw):
        args = dict(model=None, x_test=x, y_test=y, unit=unit, theta=th)
        args.update(kw)
        return metrics.monte_carlo_risk(args.pop("model"), args.pop("x_test"),
                                        args.pop("y_test"), **args)  # fmt: skip

    assert risk() < 1e-28 and risk(chunk=3) < 1e-28  # the valid call
    for chunk in (-1, 0, 2.5, True):
        with pytest.raises(ValueError, match="chunk must be a positive int"):
            risk(chunk=chunk)
    with pytest.raises(ValueError, match=r"x_test / y_test must be \(n, 2\) / \(n, 2\)"):
        risk(y_test=y[:, :1])  # (7, 1) would broadcast against c = 2
    with pytest.raises(ValueError, match=r"x_test / y_test must be \(n, 2\) / \(n, 2\)"):
        risk(x_test=torch.zeros(7, 3, dtype=torch.float64))
    for bad in (torch.zeros(4, 6), torch.zeros(2, 5, 4), torch.zeros(0, 4), torch.zeros(5, 3)):
        with pytest.raises(ValueError, match=r"theta must be \(N, 4\) particles with N >= 1"):
            risk(theta=bad)
    with pytest.raises(ValueError, match=r"x_test must be \(n, d\) with n >= 1"):
        risk(x_test=x[:0], y_test=y[:0])
    with pytest.raises(ValueError, match=r"y_test must be \(n, c\) with the n = 7"):
        risk(y_test=y[:5])
    with pytest.raises(TypeError, match="unit is required with theta"):
        risk(unit=None)
    with pytest.raises(TypeError, match="unit must be a symkern.meanfield Unit"):
        risk(unit="matrix")
    with pytest.raises(TypeError, match="x_test must be real"):
        risk(x_test=x.to(torch.complex128))
    # a model whose output does not match y_test is reported, not broadcast
    with pytest.raises(ValueError, match=r"model must map .* to \(7, 2\) outputs like y_test"):
        metrics.monte_carlo_risk(lambda z: z[:, :1], x, y)
    with pytest.raises(TypeError, match="model must be a callable"):
        metrics.monte_carlo_risk(3.0, x, y)


def test_float32_computed_matrices_and_scalars_accepted():
    """A projector or rotations computed in float32 pass the checks whatever container they
    come in (a float64 copy, a list); float32 weights sum to 1 at their precision; NumPy scalars
    and 0-d tensors are numbers; a float32 nn.Module model is fed float32."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(4, 2, generator=g))
    p32 = q @ q.T  # idempotent to ~1e-7 only
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    want = metrics.rmd_to_projection(x, p32).value
    for p in (p32.double(), p32.tolist()):
        assert metrics.rmd_to_projection(x, p).value == pytest.approx(want, rel=1e-12)
    c, s = np.float32(np.cos(0.3)), np.float32(np.sin(0.3))
    rot = torch.tensor([[[1, 0], [0, 1]], [[c, -s], [s, c]]], dtype=torch.float32).double()
    pts = torch.randn(5, 2, generator=g, dtype=torch.float64)
    assert metrics.rmd_to_symmetrized(pts, rot).value > 0
    a = torch.full((6,), 1 / 6, dtype=torch.float32)
    b = torch.full((5,), 0.2, dtype=torch.float32)
    assert metrics.w2_squared(x, x[:5], a, b).value > 0
    assert metrics.rmd(x, x, moment_factor=np.float32(2.0)).value == 0.0
    assert metrics.rmd(x, x, moment_factor=torch.tensor(2.0), exact_max=np.int64(10)).value == 0
    xt = metrics.risk_inputs(np.int64(7), 2, np.float32(4.0))
    assert torch.equal(xt, metrics.risk_inputs(7, 2, 4.0))
    for bad in (-1, 0, 2.5):
        with pytest.raises(ValueError, match="n must be a positive int"):
            metrics.risk_inputs(bad, 2, 4.0)
    lin = torch.nn.Linear(2, 2)  # float32
    y = torch.randn(7, 2, generator=g, dtype=torch.float64)
    with torch.no_grad():
        want = float(((lin(xt.float()).double() - y) ** 2).sum(1).mean())
    assert metrics.monte_carlo_risk(lin, xt, y, chunk=torch.tensor(3)) == pytest.approx(want)


def test_strided_inputs_accepted():
    """A strided float64 view (weights a[::2], atoms x[::2]) is as good as a contiguous copy; POT's
    exact solver refused it ("ndarray is not C-contiguous")."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = torch.randn(5, 3, generator=g, dtype=torch.float64)
    a = (torch.zeros(8, dtype=torch.float64) + 0.25)[::2]
    want = metrics.w2_squared(x[::2].contiguous(), y, a.contiguous(), method="exact").value
    assert metrics.w2_squared(x[::2], y, a, method="exact").value == want


def test_rmd_is_scale_free_at_any_scale():
    """RMD(cx, cy) = RMD(x, y). POT's network simplex has absolute tolerances, so on particles of
    ~1e-8 it stopped early with "optimal" (RMD 0.86 for 0.48; checked here against an
    assignment, the exact W₂ of uniform laws of equal size); around 1e154 M₂ overflowed (RMD 0)
    and around 1e-170 everything underflowed (0 / 0 gave 0). The particles are scaled by a power
    of two first, the cost matrix too."""
    from scipy.optimize import linear_sum_assignment

    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64).numpy()
    y = torch.randn(40, 3, generator=g, dtype=torch.float64).numpy() + 0.3
    cost = ((x[:, None] - y[None]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    m2 = (x * x).sum(1).mean() + (y * y).sum(1).mean()
    want = math.sqrt(cost[rows, cols].mean() / m2)
    P = np.diag([1.0, 1.0, 0.0])
    proj_want = metrics.rmd_to_projection(x, P).value
    for c in (1.0, 1e-8, 1e-9, 1e154, 1e-170):
        assert metrics.rmd(c * x, c * y).value == pytest.approx(want, rel=1e-9), c
        assert metrics.rmd_to_projection(c * x, P).value == pytest.approx(proj_want, rel=1e-12)
    for c in (1e-8, 1e-9):  # W₂² itself, scaled back
        w2 = metrics.w2_squared(c * x, c * y).value
        assert w2 == pytest.approx(c * c * cost[rows, cols].mean(), rel=1e-9)


def test_weights_must_sum_to_one_at_their_own_precision():
    """The tolerance was n·eps: float16 weights summing to 1.5 (n = 1000) passed and gave a
    second moment 1.5x too large, and rmd then failed inside POT. Weights normalised in their
    own dtype still pass, and are renormalised in float64."""
    x = torch.randn(1000, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    w = torch.rand(1000, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        ok = (w / w.sum()).to(dtype)
        want = float((w / w.sum()) @ (x * x).sum(1))
        assert metrics.second_moment(x, ok) == pytest.approx(want, rel=1e-2)
        with pytest.raises(ValueError, match="a must sum to 1"):
            metrics.second_moment(x, (1.5 * w / w.sum()).to(dtype))
    with pytest.raises(ValueError, match="a must sum to 1"):
        metrics.second_moment(x, (1.01 * w / w.sum()).float())
    a16 = (w / w.sum()).to(torch.float16)
    assert metrics.rmd(x, x[:500], a16).value > 0  # POT gets sums of exactly 1


def test_laws_shapes_and_their_checks():
    """projected_law with D = 0 raised "proj must be (0, 0) ..., got (0, 0)": the G >= 1 check of
    m_z was applied to the 2-D projector too."""
    from symkern.meanfield import laws

    theta = torch.randn(3, 2, dtype=torch.float64)
    P = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    assert torch.equal(laws.projected_law(theta, P), theta @ P.T)
    assert laws.projected_law(torch.zeros(3, 0), torch.zeros(0, 0)).shape == (3, 0)
    swap = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]], dtype=torch.float64)
    assert torch.equal(laws.symmetrized_law(theta, swap), torch.cat([theta, theta.flip(-1)]))
    with pytest.raises(ValueError, match=r"m_z must be \(G, 2, 2\) with G >= 1"):
        laws.symmetrized_law(theta, torch.zeros(0, 2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"proj must be \(2, 2\)"):
        laws.projected_law(theta, torch.zeros(1, 2, 2, dtype=torch.float64))
    # a bool matrix was read as 0 / 1 entries (an identity mask passed for the identity action)
    with pytest.raises(TypeError, match=r"proj must be a real \(not complex or bool\).*torch.bool"):
        laws.projected_law(theta, torch.eye(2, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"m_z must be a real \(not complex or bool\)"):
        laws.symmetrized_law(theta, swap.bool())


def test_pot_is_imported_without_its_jax_backend(tmp_path):
    """POT imported with its JAX backend initialises JAX, which preallocates 75 % of a GPU's
    memory (a test process on an H100 held 60 GiB, and the others' CUDA allocations failed), so
    the metrics import POT with the backends they never use off, and restore the environment. A
    fake jax package on the path records whether POT imported it."""
    marker = tmp_path / "jax-was-imported"
    (tmp_path / "jax").mkdir()
    (tmp_path / "jax" / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nraise ImportError('a fake jax')\n"
    )
    script = (
        "import os\n"
        "from symkern.meanfield.metrics import w2_squared\n"
        "print(w2_squared([[0.0]], [[3.0]]).value, w2_squared([[0.0]], [[3.0]], method='sinkhorn')"
        ".method, os.environ.get('POT_BACKEND_DISABLE_JAX'))\n"
    )
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=path), timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["9.0", "sinkhorn", "None"]
    assert not marker.exists()


def test_pot_first_import_from_many_threads():
    """The teacher-student experiment measures W₂ from a thread pool: threads that call the
    metrics while another thread is still importing POT must wait for the whole module (CI,
    2026-11-24: 'partially initialized module ot has no attribute emd2'). A fresh interpreter so
    the first import happens under the threads; their starts are staggered over the ~1 s that
    `import ot` takes, so that later threads arrive while the module is half initialised."""
    script = (
        "import threading, time\n"
        "from symkern.meanfield.metrics import w2_squared\n"
        "values, errors = [], []\n"
        "def measure(i):\n"
        "    time.sleep(0.02 * i)\n"
        "    try:\n"
        "        values.append(w2_squared([[0.0], [1.0]], [[3.0], [5.0]]).value)\n"
        "    except Exception as exc:\n"
        "        errors.append(repr(exc))\n"
        "threads = [threading.Thread(target=measure, args=(i,)) for i in range(16)]\n"
        "for t in threads: t.start()\n"
        "for t in threads: t.join()\n"
        "print(errors, sorted(set(values)))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[] [12.5]", out.stdout
