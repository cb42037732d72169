"""symkern.meanfield.metrics: W₂ / RMD against exact closed forms and POT, test risk."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from symkern.groups import c2_swap
from symkern.meanfield import MatrixUnit, Teacher, metrics
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


def test_sinkhorn_close_to_exact():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(150, 4)), rng.normal(size=(150, 4)) + 0.5
    exact = metrics.rmd(x, y)
    approx = metrics.rmd(x, y, exact_max=100)  # forces the entropic path
    assert exact.method == "exact" and approx.method == "sinkhorn"
    assert approx.value == pytest.approx(exact.value, rel=0.05)


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


def test_risk_inputs_fixed_and_scaled():
    a = metrics.risk_inputs(20_000, 2, 4.0, seed=3)
    b = metrics.risk_inputs(20_000, 2, 4.0, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, metrics.risk_inputs(20_000, 2, 4.0, seed=4))
    assert a.std().item() == pytest.approx(4.0, rel=0.03)


def test_monte_carlo_risk():
    unit = MatrixUnit(2, 2)
    teacher = Teacher.paper("arbitrary")
    x = metrics.risk_inputs(1000, 2, 4.0)
    y = teacher(x)
    # the teacher's own risk is 0; a uniform-weight particle network equals the teacher here
    assert metrics.monte_carlo_risk(None, x, y, unit=unit, theta=teacher.particles) < 1e-28
    # fast matrix-unit path == the generic unit.output path, chunked or not
    th = torch.randn(7, 4, dtype=torch.float64)
    r1 = metrics.monte_carlo_risk(None, x, y, unit=unit, theta=th, chunk=64)
    r2 = metrics.monte_carlo_risk(lambda z: unit.output(z, th), x, y)
    assert r1 == pytest.approx(r2, rel=1e-12)
    assert r1 == pytest.approx(float(((unit.output(x, th) - y) ** 2).sum(-1).mean()), rel=1e-12)
    with pytest.raises(ValueError, match="exactly one"):
        metrics.monte_carlo_risk(None, x, y)
