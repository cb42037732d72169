"""Particle engine: every backend vs the float64 reference, RNG, theory checks, bad input."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import symkern
from symkern import groups
from symkern.backends.registry import get_backend, select_kernel
from symkern.meanfield import MatrixUnit, ParticleTrainer, StandardUnit, Teacher, rng
from symkern.meanfield.trainer import initial_particles
from symkern.ops.particles import group_matrices, particle_problem
from symkern.testing import TRITON_DEVICE, assert_close, backend_cases

SCHEMES = ["vanilla", "DA", "DA-sample", "FA", "EA"]


def reference_kernel():
    return select_kernel("particle_steps", {}, "torch").fn


def _problem_args(unit, group, R, scheme, teacher, alpha=(20.0, 50.0)):
    return dict(
        unit=unit,
        teacher=teacher,
        group=group,
        scheme=scheme,
        alpha=torch.linspace(*alpha, R),
        tau=1e-3,
        beta=1e-4,  # large enough that the noise matters over 100 steps
        batch=5,
        sigma_pi=2.0,
        seed=2024,
        project_noise=[r % 2 == 1 for r in range(R)],
    )


def _matrix_case(R, N, scheme, alpha=(20.0, 50.0)):
    unit = MatrixUnit(2, 2)
    teacher = Teacher.paper("arbitrary").particles
    theta = initial_particles(R, N, unit.D, seed=7)
    return theta, _problem_args(unit, groups.c2_swap(), R, scheme, teacher, alpha)


def _standard_case(R, N, scheme, activation):
    unit = StandardUnit(d=3, c=2, activation=activation)
    # α ≤ 1 here: with α = 5-10 the relu FA run diverges in the reference itself (θ ~ 1e61)
    rep_x = groups.cyclic(3)
    rep_y = rep_x.group.trivial_rep(2)  # invariant outputs
    g = torch.Generator().manual_seed(3)
    teacher = torch.randn(4, unit.D, generator=g, dtype=torch.float64)
    theta = initial_particles(R, N, unit.D, seed=11, std=0.5)
    return theta, _problem_args(unit, (rep_x, rep_y), R, scheme, teacher, alpha=(0.5, 1.0))


def _run(theta, args, backend, dtype, steps, every):
    return symkern.particle_steps(
        theta.to(dtype), steps=steps, snapshot_every=every, backend=backend, **args
    )


def _compare(out, ref, dtype):
    rtol, atol = {torch.float64: (1e-9, 1e-10), torch.float32: (2e-5, 2e-5)}[dtype]
    assert_close(out.theta, ref.theta, rtol=rtol, atol=atol, msg="theta: ")
    assert_close(out.snapshots, ref.snapshots, rtol=rtol, atol=atol, msg="snapshots: ")
    assert_close(out.losses, ref.losses, rtol=rtol * 10, atol=atol, msg="losses: ")


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("N", [1, 7, 129])
def test_one_step_matches_reference(particle_backend, scheme, N):
    theta, args = _matrix_case(3, N, scheme)
    ref = _run(theta, args, "torch", torch.float64, 1, 1)
    for dtype in (torch.float64, torch.float32):
        out = _run(theta.to(particle_backend.device), args, particle_backend.backend, dtype, 1, 1)
        _compare(out, ref, dtype)


@pytest.mark.parametrize("scheme", ["vanilla", "FA"])
def test_standard_unit_steps_at_block_sizes(scheme):
    """Training steps of a standard unit at sizes that reach every register block of the C++
    pass 1 / pass 2 (d = 19; B = 11 inputs, or B|G| = 11 x 19 = 209 under FA with C19 permuting
    the inputs; N = 300: two tiles with a ragged tail), float32 and float64 against the float64
    reference. C++ only: the blocks are its own (the Triton interpreter takes minutes here)."""
    pytest.importorskip("symkern._C")
    unit = StandardUnit(d=19, c=2, activation="tanh")
    g = torch.Generator().manual_seed(8)
    teacher = torch.randn(3, unit.D, generator=g, dtype=torch.float64)
    theta = initial_particles(2, 300, unit.D, seed=12, std=0.3)
    args = dict(_problem_args(unit, (groups.cyclic(19), groups.cyclic(19).group.trivial_rep(2)),
                              2, scheme, teacher, alpha=(0.5, 1.0)), batch=11)  # fmt: skip
    ref = _run(theta, args, "torch", torch.float64, 3, 1)
    for dtype in (torch.float64, torch.float32):
        _compare(_run(theta, args, "cpp", dtype, 3, 1), ref, dtype)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_matrix_unit_steps_over_tiles(scheme):
    """Training steps of the paper's matrix unit (c = d = 2) over several particle tiles: N = 300
    is a full tile of 256 and a ragged one of 44, which the C++ pass 2's register-blocked
    gradient (groups of 16 or 32 particles, reading past the tail inside the tile rows) and its
    fused weight decay (τ = 0.1, so a wrong decay term shows in float32 too) must get right;
    float32 and float64 against the float64 reference, runs with and without noise projection."""
    pytest.importorskip("symkern._C")
    theta, args = _matrix_case(2, 300, scheme, alpha=(5.0, 10.0))
    args["tau"] = 0.1
    ref = _run(theta, args, "torch", torch.float64, 3, 1)
    for dtype in (torch.float64, torch.float32):
        _compare(_run(theta, args, "cpp", dtype, 3, 1), ref, dtype)


@pytest.mark.parametrize(
    "unit",
    [MatrixUnit(2, 2), MatrixUnit(3, 2), StandardUnit(3, 2, "relu"), StandardUnit(2, 1, "tanh")],
    ids=repr,
)
def test_teacher_labels_over_several_batch_blocks(unit):
    """The C++ kernel's in-kernel teacher labels run over the batch in blocks of up to 64 samples,
    padded to a multiple of 8: B = 77 takes a full block, a ragged one and 3 padding samples. The
    per-step losses are the labels' residuals, so a wrong or shifted label shows in them
    directly; float32 and float64 against the float64 reference."""
    pytest.importorskip("symkern._C")
    g = torch.Generator().manual_seed(21)
    teacher = torch.randn(3, unit.D, generator=g, dtype=torch.float64)
    theta = initial_particles(2, 7, unit.D, seed=5, std=0.5)
    args = dict(unit=unit, teacher=teacher, alpha=torch.tensor([0.5, 1.0]), tau=1e-3, beta=1e-4,
                batch=77, sigma_pi=1.5, seed=404)  # fmt: skip
    ref = _run(theta, args, "torch", torch.float64, 2, 1)
    for dtype in (torch.float64, torch.float32):
        _compare(_run(theta, args, "cpp", dtype, 2, 1), ref, dtype)


@pytest.mark.parametrize(
    "unit",
    [MatrixUnit(2, 4), StandardUnit(d=5, c=2, activation="tanh"),
     StandardUnit(d=2, c=2, activation="tanh")],
    ids=["matrix-D8", "standard-D8", "standard-D5"],
)  # fmt: skip
def test_noise_paths_match_reference(particle_backend, unit):
    """Every way a kernel draws the Langevin noise gives rng.normal4's numbers: D = 8 (two Philox
    counters per particle; the C++ float32 register path for D % 4 == 0 other than the 2x2 matrix
    unit's fused pass 2) and D = 5 (counters straddle particles; the buffered path), projected and
    not (R = 2: run 1 projects its noise), float32 and float64. Noise dominates the update here
    (beta = 0.05), so a wrong slot or counter moves theta by O(0.1)."""
    rep_x = groups.cyclic(unit.d)  # invariant outputs; vanilla uses P only to project noise
    group = (rep_x, rep_x.group.trivial_rep(unit.c))
    g = torch.Generator().manual_seed(5)
    teacher = torch.randn(3, unit.D, generator=g, dtype=torch.float64)
    theta = initial_particles(2, 37, unit.D, seed=13, std=0.5)
    args = dict(_problem_args(unit, group, 2, "vanilla", teacher, alpha=(0.5, 1.0)), beta=0.05)
    steps = 2 if particle_backend.backend == "triton" else 6
    ref = _run(theta, args, "torch", torch.float64, steps, 1)
    noiseless = _run(theta, dict(args, beta=0.0), "torch", torch.float64, steps, 1)
    assert (ref.theta - noiseless.theta).abs().max() > 0.1
    for dtype in (torch.float64, torch.float32):
        out = _run(theta.to(particle_backend.device), args, particle_backend.backend, dtype,
                   steps, 1)  # fmt: skip
        _compare(out, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_hundred_steps_match_reference(particle_backend, dtype):
    """100 noisy steps, one run per scheme in ONE call (R = 5), same trajectory as the reference.

    The per-particle step α/N is kept moderate (≤ ~7 in float64, ≤ ~2 in float32): with
    α/N ≈ 17 the dynamics are chaotic and amplify rounding by ~1e7 over 100 steps (the float32
    *reference* itself then drifts ~3e-2 from float64), which would test the dynamics, not the
    kernel. One-step agreement is checked at α up to 50 above.
    """
    N = 3 if particle_backend.backend == "triton" else 13  # interpreter: ~80 ms per step
    alpha = (10.0, 20.0) if dtype == torch.float64 else (2.0, 5.0)
    theta, args = _matrix_case(5, N, SCHEMES, alpha)
    ref = _run(theta, args, "torch", torch.float64, 100, 25)
    assert ref.snapshots.shape == (5, 4, N, 4) and ref.losses.shape == (5, 4)
    out = _run(theta.to(particle_backend.device), args, particle_backend.backend, dtype, 100, 25)
    _compare(out, ref, dtype)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
@pytest.mark.parametrize("scheme", ["vanilla", "DA", "FA", "EA"])
def test_standard_unit_matches_reference(particle_backend, activation, scheme):
    theta, args = _standard_case(2, 7, scheme, activation)
    steps = 4 if particle_backend.backend == "triton" else 20
    ref = _run(theta, args, "torch", torch.float64, steps, 2)
    dev = particle_backend.device
    out = _run(theta.to(dev), args, particle_backend.backend, torch.float64, steps, 2)
    _compare(out, ref, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("unit", [MatrixUnit(2, 2), StandardUnit(3, 2, "sigmoid")], ids=repr)
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_diverging_run_turns_nonfinite_like_reference(particle_backend, unit, dtype):
    """Documented propagation of a mid-call divergence: run 1 (α = 1e8 in float32, 1e60 in
    float64, τ = 1: the weight decay multiplies θ by ~1 − 2α/N per step) overflows within a few
    steps; from there its θ and losses must stay non-finite, starting at the step the same
    dtype's reference's do (± 1: which step first lands past the largest finite value is
    rounding) — the activations' range clamps must keep NaN,
    never turn an overflowed pre-activation back into a finite output (a NaN taken as the clamp
    bound gives a finite sigmoid and a finite loss). Run 0 (moderate α) shares the call and must
    stay finite and on the float64 reference."""
    N = 5 if particle_backend.backend == "triton" else 40  # C++: the 16-lane paths and a tail
    g = torch.Generator().manual_seed(9)
    teacher = torch.randn(3, unit.D, generator=g, dtype=torch.float64)
    theta = initial_particles(2, N, unit.D, seed=14, std=0.5)
    big = 1e8 if dtype == torch.float32 else 1e60
    args = dict(unit=unit, teacher=teacher, alpha=[0.5, big], tau=[1e-3, 1.0], beta=0.0,
                batch=5, sigma_pi=2.0, seed=31)  # fmt: skip
    steps, every = 10, 1
    want = _run(theta, args, "torch", dtype, steps, every)
    dev = particle_backend.device
    got = _run(theta.to(dev), args, particle_backend.backend, dtype, steps, every)

    def onset(values):
        """First snapshot with a non-finite value; every later one must be non-finite too."""
        finite = torch.isfinite(values.reshape(steps, -1)).all(1)
        first = int((~finite).nonzero()[0]) if not finite.all() else steps
        assert finite[:first].all() and not finite[first:].any(), finite
        return first

    for name in ("snapshots", "losses"):
        w, o = getattr(want, name)[1], getattr(got, name)[1].cpu()
        first = onset(w)
        assert 1 <= first <= steps - 2, f"{name}: the reference run diverges at step {first}"
        assert abs(onset(o) - first) <= 1, f"{name}: {o} vs the reference {w}"
    ref64 = _run(theta[:1], dict(args, alpha=0.5, tau=1e-3), "torch", torch.float64, steps, every)
    assert_close(got.snapshots[:1].cpu(), ref64.snapshots, rtol=2e-5, atol=2e-5, msg="run 0: ")


def test_mixed_schemes_in_one_call_equal_separate_calls():
    """A run's trajectory depends on its (seed, run_id), not on what it is batched with."""
    theta, args = _matrix_case(5, 9, SCHEMES)
    together = _run(theta, args, "auto", torch.float64, 30, 30)
    for r, scheme in enumerate(SCHEMES):
        alone_args = dict(args, scheme=scheme, alpha=args["alpha"][r : r + 1],
                          project_noise=args["project_noise"][r])  # fmt: skip
        alone = symkern.particle_steps(
            theta[r : r + 1], steps=30, snapshot_every=30, run_ids=torch.tensor([r]), **alone_args
        )
        assert_close(together.theta[r : r + 1], alone.theta.double())


def test_resume_continues_the_same_trajectory():
    theta, args = _matrix_case(2, 9, "vanilla")
    full = _run(theta, args, "auto", torch.float64, 40, 40)
    half = _run(theta, args, "auto", torch.float64, 20, 20)
    rest = symkern.particle_steps(half.theta, steps=20, step0=20, **args)
    assert_close(rest.theta, full.theta)


# --- theory checks -----------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["DA", "FA", "EA"])
def test_symmetric_schemes_keep_si_particles_in_fixed_space(scheme):
    """Matrix unit, C2, symmetric data (the WI teacher), SI init: every particle stays in E^G to
    ≤ 1e-6 relative over 1000 steps (with noise projected on E^G)."""
    tr = ParticleTrainer(MatrixUnit(2, 2), scheme, groups.c2_swap(), dtype=torch.float64)
    res = tr.run(n_particles=50, steps=1000, runs=2, seed=3, teacher=Teacher.paper("WI"))
    theta = res.theta
    off = (theta - theta @ tr.proj.T).norm(dim=-1) / theta.norm(dim=-1)
    assert off.max() <= 1e-6
    # and training did something: the particles moved
    assert (res.theta - res.theta0).norm() > 1e-2 * res.theta0.norm()


def test_vanilla_leaves_fixed_space_for_arbitrary_teacher():
    """The counterpart that can fail the other way: without symmetrisation, SI particles leave."""
    tr = ParticleTrainer(MatrixUnit(2, 2), "vanilla", groups.c2_swap(), dtype=torch.float64)
    res = tr.run(n_particles=50, steps=1000, runs=1, seed=3, teacher=Teacher.paper("arbitrary"))
    off = (res.theta - res.theta @ tr.proj.T).norm() / res.theta.norm()
    assert off > 0.05


@pytest.mark.parametrize(
    "unit,rep_x,rep_y",
    [
        (MatrixUnit(2, 2), groups.c2_swap(), None),
        (MatrixUnit(3, 3), groups.symmetric(3), None),
        (MatrixUnit(2, 3), groups.cyclic(3), "trivial"),
        (StandardUnit(3, 1, "tanh"), groups.cyclic(3), "trivial"),
        (StandardUnit(4, 4, "relu"), groups.dihedral(4), None),
        (StandardUnit(3, 3, "sigmoid"), groups.hyperoctahedral(3), None),
    ],
)
def test_joint_equivariance(unit, rep_x, rep_y):
    """σ*(ρ_g x, M_g z) = ρ̂_g σ*(x, z) for every element g."""
    rep_y = rep_x if rep_y is None else rep_x.group.trivial_rep(unit.c)
    rho_x, rho_y, m_z, _ = group_matrices(unit, (rep_x, rep_y), torch.float64, torch.device("cpu"))
    x = torch.randn(6, unit.d, dtype=torch.float64)
    z = torch.randn(5, unit.D, dtype=torch.float64)
    base = unit.features(x, z)  # (B, N, c)
    for g in range(rho_x.shape[0]):
        lhs = unit.features(x @ rho_x[g].T, z @ m_z[g].T)
        assert_close(lhs, base @ rho_y[g].T)
    # and the check can fail: a wrong parameter action breaks it
    if not torch.allclose(m_z[-1], torch.eye(unit.D, dtype=torch.float64)):
        lhs = unit.features(x @ rho_x[-1].T, z)
        assert not torch.allclose(lhs, base @ rho_y[-1].T)


def test_fa_trains_the_feature_averaged_model_when_the_unit_is_not_jointly_equivariant():
    """FA is Q_G Φ(x) = (1/|G|) Σ_g ρ̂_g⁻¹ Φ(ρ_g x). Sign flips acting on both x and y do not make
    the matrix unit jointly equivariant (sigmoid(−u) ≠ −sigmoid(u)), so Φ of the symmetrised
    particles is another model: the reference trained that one silently. It now trains Q_G Φ
    (checked against autograd of the definition, with the noise off), and the compiled kernels,
    which evaluate the symmetrised-particle form, decline the call with the reason."""
    from symkern.backends.registry import BackendUnavailableError

    unit, flips = MatrixUnit(2, 2), groups.sign_flips(2)
    teacher = Teacher.paper("WI").particles
    theta = initial_particles(2, 7, unit.D, seed=3)
    kw = dict(teacher=teacher, group=flips, scheme="FA", alpha=[20.0, 50.0], tau=1e-3, beta=0.0)
    got = symkern.particle_step(theta, unit, backend="torch", **kw).theta

    rho = flips.element_matrices().double()  # (4, 2, 2), ρ̂ = ρ
    x = 4.0 * rng.normal(0, torch.arange(2), 0, rng.STREAM_DATA, 20 * 2, torch.float64)
    x = x.view(2, 20, 2)
    weights = torch.full((10,), 0.1, dtype=torch.float64)  # the default 1 / M
    y = torch.einsum("rbmc,m->rbc", unit.features(x, teacher), weights)
    th = theta.clone().requires_grad_(True)
    phi = torch.stack([unit.output(x @ r.T, th) @ torch.linalg.inv(r).T for r in rho]).mean(0)
    loss = ((phi - y) ** 2).sum(-1).mean(-1) + 1e-3 * (th**2).sum(-1).mean(-1)
    (grad,) = torch.autograd.grad(loss.sum(), th)
    want = theta - torch.tensor([20.0, 50.0], dtype=torch.float64).view(2, 1, 1) * grad
    assert_close(got, want, rtol=1e-12, atol=1e-14)
    symmetrised = torch.einsum("gij,rnj->rgni", group_matrices(unit, flips, torch.float64,
                               torch.device("cpu"))[2], th).flatten(1, 2)  # fmt: skip
    assert not torch.allclose(unit.output(x, symmetrised), phi, atol=1e-3)  # another model
    for case in backend_cases():
        if case.backend != "torch":
            on = {**kw, "teacher": teacher.to(case.device)}
            with pytest.raises(BackendUnavailableError, match="permutation rho_y"):
                symkern.particle_step(theta.to(case.device), unit, backend=case.backend, **on)


# --- RNG ---------------------------------------------------------------------------------------


def test_philox_known_answers():
    """Random123's published Philox4x32-10 test vectors."""
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for ctr, key, expected in cases:
        out = rng.philox4x32(*(torch.tensor(c) for c in ctr), *key)
        assert tuple(int(o) for o in out) == expected


def test_normal_and_randint_streams():
    z = rng.normal(5, torch.arange(4), step=3, stream=rng.STREAM_NOISE, n=50_000)
    assert z.shape == (4, 50_000)
    assert abs(z.mean()) < 0.01 and abs(z.var() - 1) < 0.02
    assert z.abs().max() < 6.0  # Box–Muller on 24-bit uniforms caps |z| at ~5.9
    # keyed by (index, step, run, stream): any change gives different numbers
    z2 = rng.normal(5, torch.arange(4), step=4, stream=rng.STREAM_NOISE, n=50_000)
    z3 = rng.normal(5, torch.arange(4), step=3, stream=rng.STREAM_DATA, n=50_000)
    assert not torch.equal(z, z2) and not torch.equal(z, z3) and not torch.equal(z[0], z[1])
    k = rng.randint(5, torch.arange(2), step=0, stream=rng.STREAM_AUGMENT, n=10_000, high=6)
    assert k.min() == 0 and k.max() == 5
    counts = torch.bincount(k.flatten(), minlength=6).double()
    assert (counts / counts.mean() - 1).abs().max() < 0.1


def test_normal4_layout_and_statistics():
    """normal4 element 4c + s is slot s of counter c's Box–Muller pairs, for any n (ragged last
    counter), and the stream is standard normal with its cos and sin slots uncorrelated."""
    runs = torch.tensor([3, 9])
    z = rng.normal4(11, runs, step=2, stream=rng.STREAM_NOISE, n=4 * 50_000 + 3)
    assert z.shape == (2, 200_003)
    c = torch.tensor([0, 1, 777, 50_000])
    o = rng.philox4x32(c.view(1, -1), 2, runs.view(-1, 1), rng.STREAM_NOISE, 11, 0)
    u = [rng.uniform_from_bits(w) for w in o]
    rho0, rho2 = torch.sqrt(-2 * torch.log(u[0])), torch.sqrt(-2 * torch.log(u[2]))
    a1, a3 = 2 * torch.pi * u[1], 2 * torch.pi * u[3]
    expected = torch.stack(
        [rho0 * torch.cos(a1), rho0 * torch.sin(a1), rho2 * torch.cos(a3), rho2 * torch.sin(a3)], -1
    )
    got = torch.stack([z[:, 4 * c[:3] + s] for s in range(4)], -1)
    assert_close(got, expected[:, :3], rtol=0, atol=1e-15)
    assert_close(z[:, 200_000:], expected[:, 3, :3], rtol=0, atol=1e-15)  # the ragged counter
    assert torch.equal(z[:, :1001], rng.normal4(11, runs, 2, rng.STREAM_NOISE, 1001))
    assert abs(z.mean()) < 0.01 and abs(z.var() - 1) < 0.01 and z.abs().max() < 6.0
    slots = z[:, :200_000].reshape(2, -1, 4)
    for s, t in [(0, 1), (2, 3), (0, 2), (1, 3)]:  # 1e5 pairs: |corr| ~ 3e-3 if independent
        assert abs((slots[..., s] * slots[..., t]).mean()) < 0.015
    assert not torch.equal(z[:, :1000], rng.normal(11, runs, 2, rng.STREAM_NOISE, 1000))


def test_cpp_normal4_matches_reference():
    """The C++ normal4 generators against rng.normal4 at ragged offsets: the float64 Box–Muller
    (every ISA copy's noise for float64 runs) to rounding, the float32 one (the noise of float32
    runs in the AVX-512 and AVX2 copies) to 1 float ulp of |z| <= 6 (measured 6.0e-7 / 6.1e-7
    over 4e6 normals)."""
    C = pytest.importorskip("symkern._C")
    import numpy as np

    has_float_normals = C.particle_isa() in ("avx512", "avx2")

    for idx0, n in [(0, 1), (1, 2), (3, 1001), (6, 77), (0, 100_000)]:
        ref = rng.normal4(7, torch.tensor([5]), 11, rng.STREAM_NOISE, idx0 + n)[0, idx0:].numpy()
        z64 = C.philox_normals4(7, 5, 11, rng.STREAM_NOISE, n, idx0)
        assert z64.shape == (n,) and np.abs(z64 - ref).max() <= 4e-15
        z32 = C.philox_normals4(7, 5, 11, rng.STREAM_NOISE, n, idx0, float32=True)
        assert (z32 is not None) == has_float_normals, C.particle_isa()
        if z32 is not None:
            assert z32.dtype == np.float32 and np.abs(z32 - ref).max() <= 8e-7


def test_cpp_normals_match_reference():
    """C++ rng.normal (the in-kernel data x of float64 runs; the C++ draws 16 counters at a time
    and drops the surplus of the last block) against the float64 reference, to rounding, at
    lengths inside one block, at a block's end and past it."""
    C = pytest.importorskip("symkern._C")
    import numpy as np

    for n in (1, 15, 16, 17, 154, 5000):
        ref = rng.normal(7, torch.tensor([5]), 11, rng.STREAM_DATA, n)[0].numpy()
        z = C.philox_normals(7, 5, 11, rng.STREAM_DATA, n)
        assert z.shape == (n,) and np.abs(z - ref).max() <= 4e-15


# --- bad input ---------------------------------------------------------------------------------


def test_per_call_fast_paths_build_the_same_problem():
    """The shortcuts that cut the per-call cost (plain Python numbers, one scheme name, a bool
    project_noise, cached group matrices) build exactly what the general paths build."""
    unit, G = MatrixUnit(2, 2), groups.c2_swap()
    teacher = Teacher.paper("WI").particles
    theta = torch.randn(3, 7, 4)

    def problem(**kw):
        return particle_problem(theta, unit, **dict(dict(teacher=teacher, group=G), **kw))

    general = problem(alpha=torch.tensor([50.0] * 3), tau=[1e-4] * 3, beta=np.float64(1e-6),
                      scheme=["DA"] * 3, project_noise=[True] * 3)  # fmt: skip
    for alpha in (50, 50.0):
        fast = problem(alpha=alpha, tau=1e-4, beta=1e-6, scheme="DA", project_noise=True)
        for name in ("alpha", "tau", "beta", "scheme", "project_noise"):
            a, b = getattr(fast, name), getattr(general, name)
            assert a.dtype == b.dtype and torch.equal(a, b), name
    with pytest.raises(ValueError, match="alpha must be finite and >= 0, got inf"):
        problem(alpha=10**400)  # too large for a float: refused as not finite, not trained on
    # group matrices: built once per (unit shape, reps, dtype, device), then the same tensors
    f64, cpu = torch.float64, torch.device("cpu")
    first = group_matrices(unit, G, f64, cpu)
    assert all(a is b for a, b in zip(first, group_matrices(unit, G, f64, "cpu"), strict=True))
    f32 = group_matrices(unit, G, torch.float32, cpu)  # another dtype: another entry
    assert f32[2].dtype == torch.float32 and torch.equal(f32[2], first[2].float())
    std_unit = StandardUnit(2, c=2)  # another unit on the same rep: its own M_g (D = 5)
    std = group_matrices(std_unit, G, f64, cpu)
    rho = G.element_matrices(dtype=f64)
    assert torch.equal(std[2], std_unit.param_action(rho, rho)) and std[2].shape == (2, 5, 5)
    assert torch.equal(first[2], unit.param_action(rho, rho))
    trivial = group_matrices(unit, None, f64, cpu)
    assert trivial[0].shape == (1, 2, 2) and group_matrices(unit, None, f64, cpu)[3] is trivial[3]
    for _ in range(2):  # a refused group is refused every time (nothing half-built is cached)
        with pytest.raises(ValueError, match=r"rep_x acts on R\^3"):
            group_matrices(unit, groups.symmetric(3), f64, cpu)


def test_problem_memo_reuses_only_what_is_the_same(particle_backend, monkeypatch):
    """particle_steps remembers the problems it built (a loop of single-step calls builds its
    problem once): a call with equal arguments gets the same problem, and every change that
    matters — a teacher edited in place, a scheme list edited in place, another value, a bool
    for an int, a NaN in theta — is seen."""
    from symkern.ops.particles import _PROBLEM_MEMO

    monkeypatch.setattr(_PROBLEM_MEMO, "_entries", type(_PROBLEM_MEMO._entries)())
    unit, G = MatrixUnit(2, 2), groups.c2_swap()
    dev, backend = particle_backend.device, particle_backend.backend
    teacher = Teacher.paper("WI").particles.to(dev)
    theta = initial_particles(2, 7, unit.D, seed=3).to(dev)
    schemes = ["vanilla", "DA"]
    args = dict(unit=unit, teacher=teacher, group=G, scheme=schemes, alpha=30.0, steps=3,
                backend=backend)  # fmt: skip

    def fresh(**kw):  # the same call with the memo emptied first: what a first call gives
        _PROBLEM_MEMO._entries.clear()
        return symkern.particle_steps(theta, **dict(args, **kw))

    first = symkern.particle_steps(theta, **args)
    assert len(_PROBLEM_MEMO._entries) == 1
    (entry,) = _PROBLEM_MEMO._entries.values()
    again = symkern.particle_steps(theta.clone(), **args)  # hit: the same problem object
    assert len(_PROBLEM_MEMO._entries) == 1 and next(iter(_PROBLEM_MEMO._entries.values())) is entry
    assert torch.equal(again.theta, first.theta)
    # equal values in new objects hit too (a teacher rebuilt every call)
    symkern.particle_steps(theta, **dict(args, teacher=teacher.clone(), scheme=list(schemes)))
    assert len(_PROBLEM_MEMO._entries) == 1
    # in-place edits are seen: the teacher's content and the scheme list's
    teacher[0, 0] += 0.5
    edited = symkern.particle_steps(theta, **args)
    assert not torch.equal(edited.theta, first.theta)
    assert torch.equal(edited.theta, fresh().theta)
    schemes[1] = "EA"
    assert torch.equal(symkern.particle_steps(theta, **args).theta, fresh().theta)
    # another hyperparameter value, another problem; -0.0 and 0.0 build the same one
    assert torch.equal(symkern.particle_steps(theta, **dict(args, tau=2e-3)).theta,
                       fresh(tau=2e-3).theta)  # fmt: skip
    zero, minus_zero = (symkern.particle_steps(theta, **dict(args, beta=b)) for b in (0.0, -0.0))
    assert torch.equal(zero.theta, minus_zero.theta)
    # a bool where an int was accepted is still refused; so is a NaN in theta (the cpp kernel
    # checks it itself on a hit)
    symkern.particle_steps(theta, **dict(args, batch=1))
    with pytest.raises(ValueError, match="batch must be a positive int, got True"):
        symkern.particle_steps(theta, **dict(args, batch=True))
    bad = theta.clone()
    bad[1, 6, 3] = float("inf")
    for _ in range(2):
        with pytest.raises(ValueError, match="theta contains NaN or inf"):
            symkern.particle_steps(bad, **args)
    # bounded: old entries go
    for k in range(_PROBLEM_MEMO.size + 3):
        symkern.particle_steps(theta, **dict(args, alpha=1.0 + k))
    assert len(_PROBLEM_MEMO._entries) == _PROBLEM_MEMO.size


@pytest.mark.parametrize("name", ["teacher", "teacher_weights", "projector", "run_ids", "alpha",
                                  "project_noise"])  # fmt: skip
def test_problem_memo_keeps_no_reference_to_the_callers_tensors(name, monkeypatch):
    """A tensor argument that needs no conversion (already theta's dtype, device and layout)
    would be kept as it is by the problem: the memo builds from its own copies, so editing the
    tensor after the call cannot change what a later call with the old values gets."""
    from symkern.ops.particles import _PROBLEM_MEMO

    monkeypatch.setattr(_PROBLEM_MEMO, "_entries", type(_PROBLEM_MEMO._entries)())
    unit, G, R = MatrixUnit(2, 2), groups.c2_swap(), 2
    theta = initial_particles(R, 7, unit.D, seed=3)
    proj = group_matrices(unit, G, torch.float64, "cpu")[3]
    teacher = Teacher.paper("WI").particles
    M = teacher.shape[0]
    values = {  # each already in the form the problem stores (R, M, D) float64, int64 (R,), ...
        "teacher": teacher.expand(R, -1, -1).contiguous(),
        "teacher_weights": torch.full((R, M), 1 / M, dtype=torch.float64),
        "projector": proj.clone(),
        "run_ids": torch.tensor([4, 9]),
        "alpha": torch.tensor([30.0, 20.0], dtype=torch.float64),
        "project_noise": torch.tensor([True, False]),
    }
    edits = {
        "teacher": lambda t: t.mul_(3.0),
        "teacher_weights": lambda t: t.mul_(-2.0),
        "projector": lambda t: t.copy_(torch.eye(unit.D)),
        "run_ids": lambda t: t.add_(100),
        "alpha": lambda t: t.mul_(0.5),
        "project_noise": lambda t: t.logical_not_(),
    }
    args = dict(teacher=values["teacher"], teacher_weights=values["teacher_weights"], group=G,
                scheme=["EA", "vanilla"], beta=1e-3, steps=3)  # fmt: skip
    original = values[name].clone()
    args[name] = values[name]
    first = symkern.particle_steps(theta, unit, **args)
    edits[name](values[name])  # the caller reuses their buffer
    again = symkern.particle_steps(theta, unit, **dict(args, **{name: original.clone()}))
    assert torch.equal(again.theta, first.theta)
    _PROBLEM_MEMO._entries.clear()
    edited = symkern.particle_steps(theta, unit, **dict(args, **{name: values[name]}))
    assert not torch.equal(edited.theta, first.theta)  # the edit matters


def test_problem_memo_leaves_data_and_large_tensors_alone(monkeypatch):
    """Calls with x_data / y_data, or with a tensor argument over the size limit, build their
    problem every time (comparing them would cost what the memo saves)."""
    from symkern.ops.particles import _PROBLEM_MEMO

    monkeypatch.setattr(_PROBLEM_MEMO, "_entries", type(_PROBLEM_MEMO._entries)())
    unit, theta = MatrixUnit(2, 2), torch.randn(2, 5, 4)
    x, y = torch.randn(2, 2, 3, 2), torch.randn(2, 2, 3, 2)
    symkern.particle_steps(theta, unit, x_data=x, y_data=y, steps=2, batch=3)
    monkeypatch.setattr(_PROBLEM_MEMO, "max_tensor_elements", 10)
    symkern.particle_steps(theta, unit, teacher=Teacher.paper("WI").particles)  # 40 elements
    assert len(_PROBLEM_MEMO._entries) == 0
    with pytest.raises(ValueError, match="y_data needs x_data"):
        symkern.particle_steps(theta, unit, teacher=Teacher.paper("WI").particles, y_data=y)


def test_cached_kernel_choice_follows_the_environment(monkeypatch):
    """particle_steps remembers its kernel choice per problem, and chooses again when
    SYMKERN_BACKEND changes or the chosen kernel is unregistered."""
    from symkern.backends import registry

    if registry.get_backend("cpp").availability_reasons():
        pytest.skip("the cpp extension is not built")
    monkeypatch.delenv("SYMKERN_BACKEND", raising=False)
    unit, theta = MatrixUnit(2, 2), torch.randn(2, 5, 4)
    args = dict(teacher=Teacher.paper("WI").particles, alpha=10.0)
    assert symkern.particle_step(theta, unit, **args).backend == "cpp"
    monkeypatch.setenv("SYMKERN_BACKEND", "torch")
    assert symkern.particle_step(theta, unit, **args).backend == "torch"
    monkeypatch.delenv("SYMKERN_BACKEND")
    assert symkern.particle_step(theta, unit, **args).backend == "cpp"
    monkeypatch.delitem(registry._KERNELS, ("particle_steps", "cpp"))
    registry._warned_fallback.clear()
    with pytest.warns(registry.ReferenceFallbackWarning, match="no cpp kernel"):
        assert symkern.particle_step(theta, unit, **args).backend == "torch"
    with pytest.raises(registry.BackendUnavailableError, match="no 'cpp' kernel"):
        symkern.particle_step(theta, unit, **args, backend="cpp")


def test_all_finite_matches_the_elementwise_test():
    from symkern._checks import all_finite

    cases = [
        torch.randn(50, 4),
        torch.tensor([1.0, float("nan")]),
        torch.tensor([float("inf"), -float("inf")]),  # inf - inf: the sum is NaN, not finite
        torch.tensor([1e308, 1e308], dtype=torch.float64),  # finite, but the sum overflows
        torch.tensor([1e308, 1e308, float("inf")], dtype=torch.float64),
        torch.tensor([3e38, 3e38, 3e38]),  # float32 near its max: the float64 sum is finite
        torch.tensor([6e4, 6e4], dtype=torch.float16),
        torch.empty(0),
        torch.randn(6, 8).t()[::2],  # non-contiguous
    ]
    for t in cases:
        assert all_finite(t) == bool(torch.isfinite(t).all()), t


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_kernel_refuses_nonfinite_particles(dtype):
    """The cpp particle kernel scans theta itself (the op leaves that to it on a remembered
    problem): every NaN / ±inf, wherever it sits, is refused with the op's message; the largest
    finite and the subnormal values pass."""
    if select_kernel("particle_steps", {}, "auto").backend != "cpp":
        pytest.skip("the cpp extension is not built")
    unit, teacher = MatrixUnit(2, 2), Teacher.paper("WI").particles
    theta = initial_particles(3, 5, unit.D, seed=1).to(dtype)
    symkern.particle_step(theta, unit, teacher=teacher, backend="cpp")  # remembered from here
    for value in (float("nan"), float("inf"), -float("inf")):
        for index in ((0, 0, 0), (1, 2, 3), (2, 4, 3)):
            bad = theta.clone()
            bad[index] = value
            with pytest.raises(ValueError, match="theta contains NaN or inf"):
                symkern.particle_step(bad, unit, teacher=teacher, backend="cpp")
    info = torch.finfo(dtype)
    edge = theta.clone()
    edge[0, 0, 0], edge[2, 4, 3] = info.max, info.smallest_normal / 4  # finite: both pass
    out = symkern.particle_step(edge, unit, teacher=teacher, alpha=0.0, beta=0.0, backend="cpp")
    assert out.theta[0, 0, 0] == info.max and out.theta[2, 4, 3] == info.smallest_normal / 4


def test_bad_inputs_raise_clear_errors():
    unit = MatrixUnit(2, 2)
    teacher = Teacher.paper("SI").particles
    ok = dict(teacher=teacher, group=groups.c2_swap(), scheme="DA")
    theta = torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match="theta must have shape \\(R, N, D\\)"):
        symkern.particle_steps(torch.randn(5, 4), unit, **ok)
    with pytest.raises(ValueError, match="N >= 1 particles"):
        symkern.particle_steps(torch.randn(2, 0, 4), unit, **ok)
    with pytest.raises(ValueError, match="theta has 3 parameters per particle"):
        symkern.particle_steps(torch.randn(2, 5, 3), unit, **ok)
    for name in ("alpha", "beta", "tau"):
        with pytest.raises(ValueError, match=f"{name} must be finite and >= 0"):
            symkern.particle_steps(theta, unit, **ok, **{name: -1.0})
    bad = theta.clone()
    bad[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="theta contains NaN"):
        symkern.particle_steps(bad, unit, **ok)
    bad_teacher = teacher.clone()
    bad_teacher[0, 1] = float("inf")
    with pytest.raises(ValueError, match="teacher contains NaN or inf"):
        symkern.particle_steps(theta, unit, **dict(ok, teacher=bad_teacher))
    with pytest.raises(ValueError, match="teacher contains NaN or inf"):  # overflows float32
        symkern.particle_steps(theta, unit, **dict(ok, teacher=teacher * 1e300))
    with pytest.raises(ValueError, match="teacher_weights contains NaN or inf"):
        symkern.particle_steps(
            theta, unit, **ok, teacher_weights=[float("nan")] + [0.5] * (teacher.shape[0] - 1)
        )
    x_data, y_data = torch.randn(3, 2, 4, 2), torch.randn(3, 2, 4, 2)
    data = dict(group=groups.c2_swap(), scheme="DA", steps=3, batch=4)
    for name in ("x_data", "y_data"):
        nan_data = dict(x_data=x_data, y_data=y_data)
        nan_data[name] = nan_data[name].clone()
        nan_data[name][2, 1, 3, 0] = float("nan")
        with pytest.raises(ValueError, match=f"{name} contains NaN or inf"):
            symkern.particle_steps(theta, unit, **data, **nan_data)
    with pytest.raises(
        ValueError, match=r"rep_x acts on R\^3, but the unit's inputs x live in R\^2"
    ):
        symkern.particle_steps(theta, unit, teacher=teacher, group=groups.symmetric(3), scheme="DA")
    with pytest.raises(ValueError, match="group is required"):
        symkern.particle_steps(theta, unit, teacher=teacher, scheme="FA")
    with pytest.raises(ValueError, match="scheme must be one of"):
        symkern.particle_steps(theta, unit, **dict(ok, scheme="augment"))
    with pytest.raises(ValueError, match="teacher must be"):
        symkern.particle_steps(theta, unit, **dict(ok, teacher=torch.randn(5, 3)))
    with pytest.raises(ValueError, match="alpha must be a scalar or have one value per run"):
        symkern.particle_steps(theta, unit, **ok, alpha=torch.ones(3))
    # Philox's 32-bit counter words: N·D element indices and steps (an expanded view: no memory)
    huge = torch.zeros(1, 1, 4).expand(1, 2**30, 4)
    with pytest.raises(ValueError, match="the Philox element index is 32-bit"):
        symkern.particle_steps(huge, unit, **ok)
    with pytest.raises(ValueError, match="step0 \\+ steps must be <= 2\\^32"):
        symkern.particle_steps(theta, unit, **ok, step0=2**32 - 1, steps=2)


def _bad_input_case():
    unit = MatrixUnit(2, 2)
    teacher = Teacher.paper("SI").particles
    ok = dict(teacher=teacher, group=groups.c2_swap(), scheme="DA")
    return unit, teacher, ok, torch.randn(2, 5, 4, dtype=torch.float64)


def test_run_ids_must_fit_the_32_bit_philox_word():
    """run ids 2^32 apart would alias (the Philox run word is 32-bit): rejected, not wrapped."""
    unit, _, ok, theta = _bad_input_case()
    for ids in ([2**32, 2**32 + 1], [2**70, 0], [-1, 0], torch.tensor([0, 2**32])):
        with pytest.raises(ValueError, match=r"run_ids must be .* in \[0, 2\^32\)"):
            symkern.particle_steps(theta, unit, **ok, run_ids=ids)
    with pytest.raises(ValueError, match=r"run_ids must be one integer per run \(2\).*shape"):
        symkern.particle_steps(theta, unit, **ok, run_ids=[0, 1, 2])
    with pytest.raises(ValueError, match="run_ids must be .*float"):
        symkern.particle_steps(theta, unit, **ok, run_ids=[0.0, 1.0])
    for ids in ([2**32], [-1], [2**70]):
        with pytest.raises(ValueError, match=r"run_ids must be .* in \[0, 2\^32\)"):
            initial_particles(1, 3, 4, 0, run_ids=ids)
    with pytest.raises(ValueError, match=r"run_ids must be one integer per run \(2\)"):
        initial_particles(2, 3, 4, 0, run_ids=[5])
    # the largest valid id is accepted, and an int32 tensor is compared without wrapping
    top = initial_particles(1, 3, 4, 0, run_ids=[2**32 - 1])
    assert not torch.equal(top, initial_particles(1, 3, 4, 0, run_ids=[0]))
    ids32 = torch.tensor([3, 4], dtype=torch.int32)
    assert torch.equal(initial_particles(2, 3, 4, 0, run_ids=ids32),
                       initial_particles(2, 3, 4, 0, run_ids=[3, 4]))  # fmt: skip


def test_initial_particles_bad_inputs():
    with pytest.raises(TypeError, match="dtype must be a floating torch dtype"):
        initial_particles(1, 3, 4, 0, dtype=torch.int32)
    for args, name in (((-1, 3, 4, 0), "n_runs"), ((1, 0, 4, 0), "n_particles"),
                       ((1, 3, 2.5, 0), "dim"), ((True, 3, 4, 0), "n_runs")):  # fmt: skip
        with pytest.raises(ValueError, match=f"{name} must be a positive int"):
            initial_particles(*args)
    with pytest.raises(ValueError, match="seed must be an int"):
        initial_particles(1, 3, 4, True)
    with pytest.raises(ValueError, match="std must be a finite number >= 0"):
        initial_particles(1, 3, 4, 0, std=float("nan"))
    with pytest.raises(ValueError, match=r"proj must be \(4, 4\)"):
        initial_particles(1, 3, 4, 0, proj=torch.eye(3))


def test_initial_particles_refuses_huge_draws_and_valueless_projectors():
    """R·N·D past rng.MAX_DRAW is refused before allocating: n_runs=10**9 asked the allocator
    for 8 GB (torch's "can't allocate memory"; smaller excesses were an out-of-memory kill, the
    draw holding ~120 bytes per number). A meta proj gave particles of uninitialised memory, a
    NaN one all-NaN particles, without an error."""
    sizes = [(10**9, 10, 4, 0), (1, 2**30 - 1, 4, 0)]
    for args in [*sizes, (rng.MAX_DRAW // 4 + 1, 1, 4, 0)]:  # and the first R past the limit
        with pytest.raises(ValueError, match=r"n_runs \* n_particles \* dim = \d+ random numbers"):
            initial_particles(*args)
    trainer = ParticleTrainer(MatrixUnit(2, 2))
    for init in ("SI", "WI"):
        with pytest.raises(ValueError, match=r"runs \* n_particles \* D = 4000000000 random"):
            trainer.run(10**6, 1, runs=1000, teacher=Teacher.paper("WI"), init=init)
    with pytest.raises(ValueError, match="proj must hold values, got a meta tensor"):
        initial_particles(1, 3, 4, 0, proj=torch.eye(4, device="meta"))
    with pytest.raises(ValueError, match="proj contains NaN or inf"):
        initial_particles(1, 3, 4, 0, proj=torch.full((4, 4), float("nan")))
    for not_a_projector in (2 * torch.eye(4), torch.triu(torch.ones(4, 4))):  # were applied as is
        with pytest.raises(ValueError, match="proj must be an orthogonal projector"):
            initial_particles(1, 3, 4, 0, proj=not_a_projector)


def test_snapshots_past_the_device_memory_are_refused_naming_snapshot_every(monkeypatch):
    """steps=10**9, snapshot_every=1 raised numpy's MemoryError naming only a shape (or the
    allocation was an out-of-memory kill): S snapshots of θ past the device's whole memory are a
    ValueError naming snapshot_every, before any step; within it the call runs."""
    from symkern.ops import particles as ops_particles

    unit, _, ok, _ = _bad_input_case()
    theta = torch.randn(1, 1000, 4, dtype=torch.float64)  # 32 kB: 2^32 - 1 snapshots are 137 TB
    with pytest.raises(ValueError, match=r"^snapshot_every: 1 records 4294967295 snapshots"):
        symkern.particle_steps(theta, unit, **ok, steps=2**32 - 1, snapshot_every=1)
    monkeypatch.setattr(ops_particles, "_memory_bytes", lambda device: 10 * 32_000)
    with pytest.raises(ValueError, match=r"11 snapshots of theta \(1, 1000, 4\), 0.000352 GB"):
        symkern.particle_steps(theta, unit, **ok, steps=11, snapshot_every=1)
    assert (
        symkern.particle_steps(theta, unit, **ok, steps=11, snapshot_every=2).snapshots.shape[1]
        == 5
    )


def test_particle_steps_rejects_bools_and_bad_numbers():
    unit, _, ok, theta = _bad_input_case()
    for name in ("steps", "batch"):
        with pytest.raises(ValueError, match=f"{name} must be a positive int, got True"):
            symkern.particle_steps(theta, unit, **ok, **{name: True})
    with pytest.raises(ValueError, match="seed must be an int in \\[0, 2\\^64\\), got True"):
        symkern.particle_steps(theta, unit, **ok, seed=True)
    with pytest.raises(ValueError, match="step0 must be a non-negative int, got True"):
        symkern.particle_steps(theta, unit, **ok, step0=True)
    with pytest.raises(ValueError, match="snapshot_every must be a positive int, got True"):
        symkern.particle_steps(theta, unit, **ok, steps=2, snapshot_every=True)
    for v in (True, float("inf"), float("nan"), 0.0, -1.0, "4"):
        with pytest.raises(ValueError, match="sigma_pi must be a finite number > 0"):
            symkern.particle_steps(theta, unit, **ok, sigma_pi=v)
    with pytest.raises(ValueError, match=r"snapshot_every must be <= steps \(2\), got 3"):
        symkern.particle_steps(theta, unit, **ok, steps=2, snapshot_every=3)
    with pytest.raises(ValueError, match=r"snapshot_every must be <= steps"):
        ParticleTrainer(unit, "DA", groups.c2_swap()).run(
            3, 2, snapshot_every=5, teacher=Teacher.paper("WI")
        )
    for name in ("alpha", "tau", "beta"):
        for v in ("x", True, [1.0, "a"], 1j):
            with pytest.raises(TypeError, match=f"{name} must be a real number or one real"):
                symkern.particle_steps(theta, unit, **ok, **{name: v})
        for v in (10**400, -1, float("nan")):  # a Python int too large for a float: infinite
            with pytest.raises(ValueError, match=f"{name} must be finite and >= 0"):
                symkern.particle_steps(theta, unit, **ok, **{name: v})
    # project_noise is a yes or a no per run: bool("False") would be True, 0.5 neither
    for v in ("False", [0.5, 0.0], torch.tensor([1, 0]), 1, None):
        with pytest.raises(TypeError, match=r"project_noise must be a bool or one bool per run"):
            symkern.particle_steps(theta, unit, **ok, project_noise=v)
    flags = np.array([True, False])  # NumPy bools are bools
    a = symkern.particle_steps(theta, unit, **ok, beta=0.1, project_noise=flags)
    b = symkern.particle_steps(theta, unit, **ok, beta=0.1, project_noise=[True, False])
    assert torch.equal(a.theta, b.theta)
    # the data index b·d + k of the Philox stream is 32-bit: a batch it cannot number is refused
    with pytest.raises(ValueError, match=r"batch·d must be < 2\^32"):
        symkern.particle_steps(theta, unit, **ok, batch=2**31)


def test_particle_steps_scratch_too_large_is_a_memory_error():
    """A call whose kernel scratch cannot be allocated raises MemoryError naming the sizes. The
    scratch is allocated by each thread of a parallel region, where an escaping C++ exception
    would call std::terminate and abort the process: run in a subprocess so that an abort fails
    the test rather than killing pytest."""
    script = (
        "import torch, symkern\n"
        "from symkern.meanfield import MatrixUnit, Teacher\n"
        "theta = torch.randn({R}, 5, 4, dtype=torch.float64)\n"
        "try:\n"
        "    symkern.particle_steps(theta, MatrixUnit(2, 2), teacher=Teacher.paper('WI').particles,"
        " batch=2**30, backend='cpp')\n"
        "except MemoryError as e:\n"
        "    print('MemoryError:', e)\n"
    )
    for R in (1, 3):  # one run (a team of threads when N is large) and runs over threads
        out = subprocess.run([sys.executable, "-c", script.format(R=R)], capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        assert "MemoryError: particle_steps: the kernel's scratch for N = 5" in out.stdout, out


def test_particle_steps_clear_type_and_shape_errors():
    unit, teacher, ok, theta = _bad_input_case()
    G = ok["group"]
    for pair in ((G,), (G, G, G)):
        with pytest.raises(ValueError, match=r"group must be a Representation .* or a pair"):
            symkern.particle_steps(theta, unit, **dict(ok, group=pair))
    # a teacher with no particle (was a ZeroDivisionError)
    with pytest.raises(ValueError, match=r"teacher must hold at least one particle \(M >= 1\)"):
        symkern.particle_steps(theta, unit, **dict(ok, teacher=teacher[:0]))
    with pytest.raises(ValueError, match=r"particles must hold at least one teacher particle"):
        Teacher(unit, torch.zeros(0, 4))
    # wrong lengths are reported by the shape check, not a raw expand error
    with pytest.raises(ValueError, match=r"teacher_weights must be \(5,\) or \(2, 5\), got \(3,\)"):
        symkern.particle_steps(theta, unit, **ok, teacher_weights=[0.5] * 3)
    with pytest.raises(ValueError, match=r"project_noise must be a bool or one bool per run \(2\)"):
        symkern.particle_steps(theta, unit, **ok, project_noise=[True] * 3)
    # a unit that is not a Unit
    unit_msg = "unit must be a symkern.meanfield Unit"
    with pytest.raises(TypeError, match=unit_msg):
        symkern.particle_steps(theta, "matrix", **ok)
    with pytest.raises(TypeError, match=unit_msg):
        Teacher("u", torch.zeros(2, 4))
    with pytest.raises(TypeError, match=unit_msg):
        symkern.model_output(torch.zeros(3, 2), torch.zeros(2, 4), "m")
    with pytest.raises(TypeError, match=unit_msg):
        ParticleTrainer("matrix")
    # data that is not a tensor
    with pytest.raises(TypeError, match="x_data must be a torch.Tensor of shape"):
        symkern.particle_steps(theta, unit, x_data=[[0.0]], y_data=torch.zeros(1, 2, 20, 2))
    with pytest.raises(TypeError, match="y_data must be a torch.Tensor of shape"):
        symkern.particle_steps(theta, unit, x_data=torch.zeros(1, 2, 20, 2), y_data=[[0.0]])
    with pytest.raises(TypeError, match=r"teacher must be a tensor or a \(nested\) sequence"):
        symkern.particle_steps(theta, unit, **dict(ok, teacher=Teacher.paper("SI")))
    # schemes: not a name or a sequence of names
    for bad in (None, 3):
        with pytest.raises(TypeError, match=r"scheme must be one of \['vanilla', 'DA'"):
            symkern.particle_steps(theta, unit, **dict(ok, scheme=bad))
    with pytest.raises(ValueError, match="scheme must be one of .*got None"):
        symkern.particle_steps(theta, unit, **dict(ok, scheme=["DA", None]))
    with pytest.raises(ValueError, match=r"scheme must be one of \['vanilla'"):
        ParticleTrainer(unit, "augment")
    # devices other than CPU / CUDA (meta tensors cannot be checked or run)
    with pytest.raises(ValueError, match="theta must be a CPU or CUDA tensor.*meta"):
        symkern.particle_steps(theta.to("meta"), unit, **ok)
    with pytest.raises(ValueError, match="device must be a CPU or CUDA device, got meta"):
        ParticleTrainer(unit, device="meta")


def test_negative_teacher_weights_are_a_signed_mixture():
    """Documented as allowed: the labels are Σ_m w_m σ*(x, θ*_m) for any finite weights."""
    unit, teacher, _, theta = _bad_input_case()
    w = torch.tensor([1.5, -0.5, 0.25, -0.25, 0.0], dtype=torch.float64)
    x = torch.randn(6, 2, dtype=torch.float64)
    t = Teacher(unit, teacher, w)
    assert_close(t(x), (unit.features(x, teacher) * w[:, None]).sum(1))
    out = symkern.particle_steps(theta, unit, teacher=teacher, teacher_weights=w, steps=2)
    assert torch.isfinite(out.theta).all()


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_ea_with_projector_needs_no_group(backend):
    """EA (and projected noise) only use P: projector=P_{E^G} without a group gives exactly the
    trajectory of group=C2 (the kernels then get the trivial group's matrices, G = 1)."""
    if backend == "cpp":
        pytest.importorskip("symkern._C")
    unit = MatrixUnit(2, 2)
    _, _, _, proj = group_matrices(unit, groups.c2_swap(), torch.float64, torch.device("cpu"))
    teacher = Teacher.paper("WI")
    theta = initial_particles(3, 9, unit.D, seed=5)
    args = dict(teacher=teacher.particles, teacher_weights=teacher.weights, scheme="EA",
                alpha=30.0, tau=1e-3, beta=1e-4, batch=5, seed=7, steps=10, snapshot_every=5,
                project_noise=[False, True, False], backend=backend)  # fmt: skip
    with_group = symkern.particle_steps(theta, unit, group=groups.c2_swap(), **args)
    with_proj = symkern.particle_steps(theta, unit, projector=proj, **args)
    assert with_group.backend == with_proj.backend == backend
    assert torch.equal(with_group.theta, with_proj.theta)
    assert torch.equal(with_group.losses, with_proj.losses)
    assert (with_proj.theta - theta).abs().max() > 1e-2  # it trained
    # mixed with vanilla runs too; the group-acting schemes still need the group
    mixed = dict(args, scheme=["EA", "vanilla", "EA"])
    assert torch.equal(
        symkern.particle_steps(theta, unit, group=groups.c2_swap(), **mixed).theta,
        symkern.particle_steps(theta, unit, projector=proj, **mixed).theta,
    )
    for scheme in ("DA", "DA-sample", "FA"):
        with pytest.raises(ValueError, match="group is required for the DA, DA-sample and FA"):
            symkern.particle_steps(theta, unit, projector=proj, **dict(args, scheme=scheme))
    with pytest.raises(ValueError, match="group is required for the EA scheme.*projector="):
        symkern.particle_steps(theta, unit, **args)


def test_unit_outputs_and_teacher_labels_check_their_inputs():
    """Unit.features / output and Teacher's labels took a θ of the wrong width (the extra
    column silently dropped) and an x of the wrong width (broadcast by einsum) and returned
    numbers; an integer x or a mis-shaped m_z raised torch internals. Now each is an error naming
    the argument."""
    for unit in (MatrixUnit(2, 2), StandardUnit(2, 1, "tanh")):
        x = torch.randn(3, 2, dtype=torch.float64)
        theta = torch.randn(6, unit.D, dtype=torch.float64)
        assert unit.output(x, theta).shape == (3, unit.c)
        with pytest.raises(ValueError, match="theta has 5 parameters per particle"):
            unit.output(x, torch.randn(6, 5, dtype=torch.float64))
        with pytest.raises(ValueError, match=r"x must be \(\.\.\., B, d = 2\)"):
            unit.output(torch.randn(3, 1, dtype=torch.float64), theta)
        with pytest.raises(ValueError, match="x must be"):
            unit.features(torch.randn(2, dtype=torch.float64), theta)
        with pytest.raises(TypeError, match="x must be a floating"):
            unit.output(torch.ones(3, 2, dtype=torch.int64), theta)
        with pytest.raises(TypeError, match="must have the same dtype"):
            unit.output(x.float(), theta)
    teacher = Teacher.paper("WI")
    assert teacher(torch.randn(4, 2, dtype=torch.float64)).shape == (4, 2)
    with pytest.raises(ValueError, match="x must be"):
        teacher(torch.randn(4, 1, dtype=torch.float64))
    with pytest.raises(TypeError, match="x must be a floating"):
        teacher(torch.ones(4, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"m_z must have shape \(G >= 1, 4, 4\)"):
        teacher.symmetrized(torch.eye(3, dtype=torch.float64)[None])


def test_units_and_teachers_refuse_what_they_computed_wrongly_or_raised_raw():
    """A 0-d θ raised IndexError; leading dims that do not broadcast, einsum's message; an output
    over N = 0 particles was NaN. param_action did not check ρ, ρ̂: a wrong d raised a raw
    reshape / expand error, a list AttributeError, and a ρ̂ with fewer elements was broadcast
    against every ρ_g (M_g of mismatched pairs, returned). A meta teacher raised torch's
    ".item() cannot be called on meta tensors"; a NaN or meta m_z of symmetrized was reported
    as "particles contains NaN or inf"."""
    rho = groups.c2_swap().element_matrices(dtype=torch.float64)
    for unit in (MatrixUnit(2, 2), StandardUnit(2, 2, "tanh")):
        D = unit.D
        x = torch.randn(3, 2, dtype=torch.float64)
        with pytest.raises(ValueError, match=f"theta must have a last axis of D = {D}"):
            unit.features(x, torch.tensor(1.0, dtype=torch.float64))
        with pytest.raises(ValueError, match=r"leading dims of x \(7,\) and theta \(6,\)"):
            unit.features(torch.randn(7, 3, 2), torch.randn(6, 5, D))
        assert unit.features(torch.randn(7, 3, 2), torch.randn(1, 5, D)).shape == (7, 3, 5, 2)
        with pytest.raises(ValueError, match="theta must hold at least one particle"):
            unit.output(x, torch.zeros(0, D, dtype=torch.float64))
        assert unit.param_action(rho, rho).shape == (2, D, D)
        with pytest.raises(ValueError, match=r"rho_x must be \(G >= 1, 2, 2\)"):
            unit.param_action(torch.eye(3)[None], torch.eye(2)[None])
        with pytest.raises(ValueError, match=r"rho_y must be \(G >= 1, 2, 2\)"):
            unit.param_action(rho, rho[0])
        with pytest.raises(ValueError, match="rho_x and rho_y must hold the same G elements"):
            unit.param_action(rho, rho[:1])
        with pytest.raises(TypeError, match=r"rho_x must be a floating torch.Tensor"):
            unit.param_action(rho.tolist(), rho)
        with pytest.raises(TypeError, match="must share a dtype"):
            unit.param_action(rho, rho.float())
        with pytest.raises(ValueError, match=r"rho_x \(cpu\) and rho_y \(meta\) must share"):
            unit.param_action(rho, rho.to("meta"))
    unit = MatrixUnit(2, 2)
    for kw, name in ((dict(particles=torch.zeros(2, 4, device="meta")), "particles"),
                     (dict(weights=torch.zeros(2, device="meta")), "weights")):  # fmt: skip
        with pytest.raises(ValueError, match=f"{name} must hold values, got a meta tensor"):
            Teacher(unit, **(dict(particles=torch.zeros(2, 4)) | kw))
    m_z = unit.param_action(rho, rho)
    with pytest.raises(ValueError, match="m_z contains NaN or inf"):
        Teacher.paper("arbitrary").symmetrized(torch.full_like(m_z, float("nan")))
    with pytest.raises(ValueError, match="m_z must hold values, got a meta tensor"):
        Teacher.paper("arbitrary").symmetrized(m_z.to("meta"))


def test_units_compare_by_value_and_trainer_checks_its_teacher():
    assert MatrixUnit(2, 2) == MatrixUnit(2, 2) and hash(MatrixUnit(2, 2)) == hash(MatrixUnit())
    assert MatrixUnit(2, 2) != StandardUnit(2, 1)  # same D = 4, different unit
    assert StandardUnit(3, 2, "tanh") != StandardUnit(3, 2, "relu")
    assert MatrixUnit(2, 3) != MatrixUnit(3, 2)
    tr = ParticleTrainer(MatrixUnit(2, 2), "DA", groups.c2_swap())
    wi = Teacher.paper("WI")
    other = Teacher(StandardUnit(2, 1), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="teacher must be a network of the trainer's unit"):
        tr.run(3, 2, teacher=other)
    with pytest.raises(TypeError, match="teacher must be a symkern.meanfield Teacher"):
        tr.run(3, 2, teacher=wi.particles)
    with pytest.raises(ValueError, match=r"init must have shape .* = \(3, 7, 4\), got \(1, 5, 4\)"):
        tr.run(7, 2, runs=3, teacher=wi, init=torch.zeros(1, 5, 4))
    for args, kw, name in (((-1, 2), {}, "n_particles"), ((3, 2), {"runs": -2}, "runs"),
                           ((2.5, 2), {}, "n_particles"), ((3, True), {}, "steps")):  # fmt: skip
        with pytest.raises(ValueError, match=f"{name} must be a positive int"):
            tr.run(*args, teacher=wi, **kw)
    # a matching tensor init still runs
    init = initial_particles(3, 7, 4, seed=1)
    res = tr.run(7, 2, runs=3, teacher=wi, init=init)
    assert res.theta.shape == (3, 7, 4) and torch.equal(res.theta0, init.to(res.theta.dtype))
    # before and after are comparable: same dtype and device
    assert res.theta0.dtype == res.theta.dtype and res.theta0.device == res.theta.device
    assert torch.isfinite(res.theta - res.theta0).all()


@pytest.mark.parametrize(
    "unit",
    [StandardUnit(d=5, c=2, activation="tanh"), StandardUnit(d=5, c=2, activation="relu"),
     StandardUnit(d=150, c=3, activation="sigmoid")],
    ids=["d5-tanh", "d5-relu", "d150-sigmoid"],
)  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_triton_two_pass_large_n_path(unit, dtype):
    """The GPU large-N path (forward reduction, then a backward that recomputes activations: no
    B x N buffer), forced at a tiny size so the interpreter can run it. d = 150 (D_BLK = 256)
    takes the small-tile configs (32 x 32 float32, 16 x 16 float64) that keep shared memory
    under the H100's limit; N = 37 and B = 19 fill no tile exactly."""

    if get_backend("triton").availability_reasons():
        pytest.skip("; ".join(get_backend("triton").availability_reasons()))
    from symkern.backends.triton.particles import particle_steps_triton

    g = torch.Generator().manual_seed(5)
    teacher = torch.randn(3, unit.D, generator=g, dtype=torch.float64)
    theta = initial_particles(2, 37, unit.D, seed=9, std=0.5).to(TRITON_DEVICE, dtype)
    args = dict(unit=unit, teacher=teacher, alpha=1.0, tau=1e-3, beta=1e-4, batch=19,
                sigma_pi=1.0, seed=77, steps=3, snapshot_every=1)  # fmt: skip
    ref = symkern.particle_steps(theta.double(), backend="torch", **args)
    problem = particle_problem(theta, **{k: v for k, v in args.items() if k != "snapshot_every"})
    out = particle_steps_triton(theta, problem, 0, 3, 1, path="two_pass")
    assert out[0].dtype == dtype
    assert_close(out[0], ref.theta)
    assert_close(out[2], ref.losses)


@pytest.mark.parametrize(
    "unit, scheme, project_noise, dtype, user_data",
    [(MatrixUnit(2, 2), "DA", False, torch.float64, False),
     (MatrixUnit(2, 2), "DA", False, torch.float64, True),
     (MatrixUnit(2, 2), "FA", False, torch.float32, False),
     (MatrixUnit(2, 2), "EA", True, torch.float64, False),
     (StandardUnit(d=2, c=2, activation="tanh"), "DA-sample", True, torch.float32, False),
     (MatrixUnit(2, 2), ("vanilla", "DA", "FA", "EA"), (True, False, True, False), torch.float64,
      False)],
    ids=["matrix-DA-f64", "matrix-DA-userdata-f64", "matrix-FA-f32", "matrix-EA-projected-f64",
         "standard-DAsample-f32", "matrix-mixed-schemes-f64"],
)  # fmt: skip
def test_triton_split_path_matches_reference(unit, scheme, project_noise, dtype, user_data):
    """The split path (each run's particles over several programs, two launches per step: the
    paper's N = 5000 on a GPU) gives the reference's trajectory, snapshots and losses for every
    kind of scheme. R = 2, N = 37 in blocks of 4 over 3 programs per run: chunks of 16, 16 and 5
    particles, so the partial sums, the per-program residuals and a ragged block all count.
    user_data: batches (x, y) given per step instead of drawn and labelled by a teacher. A tuple
    of schemes is one per run, as in the teacher-student grid (R = 4, |G| = 2 data copies for
    DA and FA and one for the others in one launch)."""

    if get_backend("triton").availability_reasons():
        pytest.skip("; ".join(get_backend("triton").availability_reasons()))
    from symkern.backends.triton.particles import particle_steps_triton

    group = groups.c2_swap()
    if isinstance(unit, StandardUnit):  # swap the two inputs; the outputs are invariant
        group = (group, group.group.trivial_rep(unit.c))
    g = torch.Generator().manual_seed(2)
    teacher = torch.randn(3, unit.D, generator=g, dtype=torch.float64)
    R = 2 if isinstance(scheme, str) else len(scheme)
    theta = initial_particles(R, 37, unit.D, seed=9, std=0.5)
    args = dict(unit=unit, teacher=teacher, group=group, scheme=scheme, alpha=5.0, tau=1e-3,
                beta=1e-3, batch=7, sigma_pi=2.0, seed=11, project_noise=project_noise,
                steps=2)  # fmt: skip
    if user_data:
        del args["teacher"]
        args["x_data"] = torch.randn(2, 2, 7, unit.d, generator=g, dtype=torch.float64)
        args["y_data"] = torch.rand(2, 2, 7, unit.c, generator=g, dtype=torch.float64)
    ref = symkern.particle_steps(theta, backend="torch", snapshot_every=1, **args)
    th = theta.to(TRITON_DEVICE, dtype)
    out = particle_steps_triton(th, particle_problem(th, **args), 0, 2, 1, path="split",
                                block_n=4, split=3)  # fmt: skip
    rtol = 1e-10 if dtype == torch.float64 else 2e-5
    assert_close(out[0].double().cpu(), ref.theta, rtol=rtol, atol=rtol, msg="theta: ")
    assert_close(out[1].double().cpu(), ref.snapshots, rtol=rtol, atol=rtol, msg="snapshots: ")
    assert_close(out[2].double().cpu(), ref.losses, rtol=10 * rtol, atol=rtol, msg="losses: ")


@pytest.mark.gpu
def test_triton_two_pass_tf32_follows_torch_switch(monkeypatch):
    """The two-pass path's float32 products are TF32 exactly when torch's switch for float32
    matrix products allows them: off (torch's default) the step matches the float64 reference
    to float32 accuracy; on, the update Δθ matches it to TF32 accuracy (2 % of its size) and
    differs from the IEEE result (the switch took effect)."""
    from symkern.backends.triton.particles import particle_steps_triton

    unit = StandardUnit(d=100, c=1, activation="tanh")
    g = torch.Generator().manual_seed(3)
    teacher = torch.randn(4, unit.D, generator=g, dtype=torch.float64)
    theta = 0.3 * torch.randn(1, 2048, unit.D, generator=g, dtype=torch.float64)
    args = dict(unit=unit, teacher=teacher, alpha=1.0, tau=1e-4, beta=1e-6, batch=512,
                sigma_pi=1.0, seed=0, steps=2)  # fmt: skip
    ref = symkern.particle_steps(theta, backend="torch", **args)
    th = theta.to("cuda", torch.float32)
    problem = particle_problem(th, **args)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    ieee = particle_steps_triton(th, problem, 0, 2, 2, path="two_pass")[0].double().cpu()
    assert_close(ieee, ref.theta, rtol=2e-5, atol=2e-5)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    tf32 = particle_steps_triton(th, problem, 0, 2, 2, path="two_pass")[0].double().cpu()
    delta_ref = ref.theta - theta
    assert_close(tf32 - theta, delta_ref, rtol=0.0, atol=2e-2)
    assert not torch.equal(tf32, ieee)


@pytest.mark.parametrize(
    "unit, batch, match",
    [
        (StandardUnit(d=100, c=1), 20, r"padded B·D·d <= 16384, got B = 20, D = 102, d = 100"),
        (MatrixUnit(17, 2), 4, r"matrix unit: c <= 16, got 17"),
    ],
    ids=["standard-d100", "matrix-c17"],
)
def test_triton_fused_path_refuses_tiles_too_large_to_compile(unit, batch, match):
    """The fused kernel's (B, D, d) expansion tile and its unrolled matrix-unit heads are bounded:
    past the bounds an sm_90 compile takes many minutes (StandardUnit(100, 1) at B = 20 did not
    finish in 15), so the launcher refuses with the reason instead of hanging in the compiler."""

    if get_backend("triton").availability_reasons():
        pytest.skip("; ".join(get_backend("triton").availability_reasons()))
    from symkern.backends.triton.particles import particle_steps_triton

    teacher = torch.randn(2, unit.D, generator=torch.Generator().manual_seed(0))
    theta = initial_particles(1, 3, unit.D, seed=1).to(TRITON_DEVICE)
    problem = particle_problem(theta, unit, teacher=teacher, batch=batch, steps=1)
    with pytest.raises(ValueError, match=r"path 'fused' cannot run this problem: .*" + match):
        particle_steps_triton(theta, problem, 0, 1, 1, path="fused")


# --- the fused model output (autograd) ---------------------------------------------------------


@pytest.mark.parametrize(
    "unit",
    [
        MatrixUnit(2, 2),
        MatrixUnit(3, 2),
        StandardUnit(4, 2, "tanh"),
        StandardUnit(3, 1, "sigmoid"),
        StandardUnit(3, 2, "relu"),
    ],  # fmt: skip
    ids=repr,
)
def test_model_output_forward_and_gradients(backend_case, unit):
    from symkern.ops.particles import model_output

    if not get_backend(backend_case.backend).has_kernel("particle_forward"):
        pytest.skip(f"no {backend_case.backend!r} kernel for op 'particle_forward' is implemented")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, unit.d, generator=g, dtype=torch.float64).to(backend_case.device)
    theta = torch.randn(13, unit.D, generator=g, dtype=torch.float64).to(backend_case.device)
    out = model_output(x, theta, unit, backend=backend_case.backend)
    assert_close(out, unit.output(x, theta))
    xg, tg = x.clone().requires_grad_(), theta.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: model_output(a, b, unit, backend=backend_case.backend), (xg, tg)
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_model_output_standard_unit_at_block_sizes(backend_case, activation, dtype):
    """Sizes that reach every register block of the C++ standard-unit products: d = 21 and B = 71
    give 8-wide input / column blocks and their 4/2/1 remainders, N = 300 two particle tiles
    (256) with a ragged tail, B > 64 two batch chunks. Output and both gradients against float64
    autograd of the natural code (non-contiguous x)."""
    from symkern.ops.particles import model_output

    if not get_backend(backend_case.backend).has_kernel("particle_forward"):
        pytest.skip(f"no {backend_case.backend!r} kernel for op 'particle_forward' is implemented")
    unit = StandardUnit(d=21, c=3, activation=activation)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(21, 71, generator=g, dtype=torch.float64).T  # non-contiguous
    theta = 0.4 * torch.randn(300, unit.D, generator=g, dtype=torch.float64)
    g_phi = torch.randn(71, 3, generator=g, dtype=torch.float64)
    xr, tr = x.clone().requires_grad_(), theta.clone().requires_grad_()
    phi_ref = unit.output(xr, tr)
    phi_ref.backward(g_phi)
    dev = backend_case.device
    xs = x.to(dev, dtype).requires_grad_()
    ts = theta.to(dev, dtype).requires_grad_()
    phi = model_output(xs, ts, unit, backend=backend_case.backend)
    phi.backward(g_phi.to(dev, dtype))
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for got, want, name in [(phi, phi_ref, "phi"), (ts.grad, tr.grad, "dtheta"),
                            (xs.grad, xr.grad, "dx")]:  # fmt: skip
        assert_close(got.detach().double().cpu(), want, rtol=tol, atol=tol, msg=f"{name}: ")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(
    "unit",
    [MatrixUnit(2, 2), StandardUnit(3, 2, "tanh"), StandardUnit(3, 2, "sigmoid"),
     StandardUnit(3, 2, "relu")],
    ids=repr,
)  # fmt: skip
def test_model_output_propagates_nan(backend_case, unit, dtype):
    """A NaN sample gives a NaN output row and leaves the others finite (documented
    propagation): the vectorised activations' range clamps must keep NaN, not clamp it to a
    finite value (the first float64 exp_d did, silently giving sigmoid(NaN) = 1)."""
    from symkern.ops.particles import model_output

    if not get_backend(backend_case.backend).has_kernel("particle_forward"):
        pytest.skip(f"no {backend_case.backend!r} kernel for op 'particle_forward' is implemented")
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, unit.d, generator=g, dtype=torch.float64).to(dtype)
    x[1, 0] = float("nan")
    theta = torch.randn(300, unit.D, generator=g, dtype=torch.float64).to(dtype)
    dev = backend_case.device
    out = model_output(x.to(dev), theta.to(dev), unit, backend=backend_case.backend).cpu()
    assert torch.isnan(out[1]).all(), out
    assert torch.isfinite(out[[0, 2, 3, 4]]).all(), out


def test_model_output_eager_skips_the_custom_ops_and_refuses_second_derivatives(monkeypatch):
    """Eager model_output runs the kernels directly (the custom ops' dispatch doubled its cost
    on small inputs); fake tensors (torch.compile) still take the op. First-order only, like the
    op: a second derivative, or a gradient penalty built on create_graph=True gradients, raises
    a clear error instead of silently contributing nothing."""
    import symkern.ops.particles as particles_module
    from symkern.ops.particles import model_output

    op, calls = particles_module._particle_forward_op, []

    def spy(*args):
        calls.append(args[-1])
        return op(*args)

    monkeypatch.setattr(particles_module, "_particle_forward_op", spy)
    unit = MatrixUnit(2, 2)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    theta = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    out = model_output(x, theta, unit)
    assert_close(out, unit.output(x, theta))
    assert torch.autograd.gradcheck(lambda a, b: model_output(a, b, unit), (x, theta))
    assert calls == []
    grad_theta, grad_x = torch.autograd.grad(model_output(x, theta, unit).sum(), (theta, x),
                                             create_graph=True)  # fmt: skip
    ref_theta, ref_x = torch.autograd.grad(unit.output(x, theta).sum(), (theta, x))
    assert_close(grad_theta, ref_theta)  # the first derivatives are right under create_graph
    assert_close(grad_x, ref_x)
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        torch.autograd.grad(grad_theta.sum(), theta)
    penalty = model_output(x, theta, unit).pow(2).sum() + grad_x.pow(2).sum()
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        penalty.backward()
    from torch._subclasses.fake_tensor import FakeTensorMode

    xd, td = x.detach(), theta.detach()
    with FakeTensorMode() as mode:
        fake = model_output(mode.from_tensor(xd), mode.from_tensor(td), unit)
    assert fake.shape == (6, 2) and calls == ["cpp"]


def test_model_output_torch_func_transforms():
    """torch.func grad / vmap (over inputs, over particle sets, per-sample gradients) / jacrev
    of model_output against the plain torch formula; jvp and second derivatives raise."""
    F = torch.func
    from symkern.ops.particles import model_output

    unit = StandardUnit(3, 2, "tanh")
    g = torch.Generator().manual_seed(8)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    theta = torch.randn(7, unit.D, generator=g, dtype=torch.float64)
    assert_close(F.grad(lambda p: model_output(x, p, unit).sum())(theta),
                 F.grad(lambda p: unit.output(x, p).sum())(theta))  # fmt: skip
    thetas = torch.randn(3, 7, unit.D, generator=g, dtype=torch.float64)
    assert_close(F.vmap(lambda p: model_output(x, p, unit))(thetas),
                 torch.stack([unit.output(x, p) for p in thetas]))  # fmt: skip
    xs = torch.randn(4, 5, 3, generator=g, dtype=torch.float64)
    assert_close(F.vmap(lambda a: model_output(a, theta, unit))(xs),
                 torch.stack([unit.output(a, theta) for a in xs]))  # fmt: skip
    per_sample = F.vmap(F.grad(lambda xi, p: model_output(xi[None], p, unit).sum(), argnums=1),
                        in_dims=(0, None))(x, theta)  # fmt: skip
    want = F.vmap(F.grad(lambda xi, p: unit.output(xi[None], p).sum(), argnums=1),
                  in_dims=(0, None))(x, theta)  # fmt: skip
    assert_close(per_sample, want)
    assert_close(F.jacrev(lambda a: model_output(a, theta, unit))(x),
                 F.jacrev(lambda a: unit.output(a, theta))(x))  # fmt: skip
    param = torch.nn.Parameter(theta.clone())  # an nn.Module's particles: the eager route too
    assert_close(F.grad(lambda a: model_output(a, param, unit).sum())(x),
                 F.grad(lambda a: unit.output(a, theta).sum())(x))  # fmt: skip
    jac = torch.autograd.functional.jacobian(
        lambda p: model_output(x, p, unit), theta, vectorize=True
    )  # the legacy batched gradients
    assert_close(jac, F.jacrev(lambda p: unit.output(x, p))(theta))
    assert F.vmap(lambda p: model_output(x, p, unit))(thetas[:0]).shape == (0, 5, 2)
    with pytest.raises(NotImplementedError, match="jvp"):
        F.jvp(lambda a: model_output(a, theta, unit), (x,), (x,))
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        F.jacrev(F.grad(lambda p: model_output(x, p, unit).sum()))(theta)


def test_model_output_bad_inputs():
    from symkern.ops.particles import model_output

    unit = MatrixUnit(2, 2)
    with pytest.raises(ValueError, match="x must be 2-D with 2 columns"):
        model_output(torch.randn(5, 3), torch.randn(4, 4), unit)
    with pytest.raises(ValueError, match="theta must be 2-D with 4 columns"):
        model_output(torch.randn(5, 2), torch.randn(4, 3), unit)
    with pytest.raises(ValueError, match="at least one particle"):
        model_output(torch.randn(5, 2), torch.randn(0, 4), unit)
    with pytest.raises(TypeError, match="x must be a floating"):
        model_output(torch.ones(5, 2, dtype=torch.int64), torch.randn(4, 4), unit)


# --- team mode: the threads of the machine split ONE run's particles ------------------------------

_TEAM_SCRIPT = """
import json, torch, symkern, symkern._C as C
from symkern import groups
from symkern.meanfield import MatrixUnit, StandardUnit, Teacher
from symkern.meanfield.trainer import initial_particles
out = {"team_min_n": C.particle_team_min_n(), "threads": C.build_info()["max_threads"]}
N = 700
cases = [(MatrixUnit(2, 2), groups.c2_swap(), s, Teacher.paper("arbitrary").particles)
         for s in ("vanilla", "DA", "DA-sample", "FA", "EA")]
std = StandardUnit(d=3, c=2, activation="tanh")
cases.append((std, (groups.cyclic(3), groups.cyclic(3).group.trivial_rep(2)), "FA",
              0.5 * torch.randn(4, std.D, generator=torch.Generator().manual_seed(3),
                                dtype=torch.float64)))
for unit, group, scheme, teacher in cases:
    theta = initial_particles(1, N, unit.D, seed=5, std=0.5)
    kw = dict(unit=unit, teacher=teacher, group=group, scheme=scheme, alpha=5.0, tau=1e-3,
              beta=1e-4, batch=5, sigma_pi=2.0, seed=11, steps=20, snapshot_every=10)
    ref = symkern.particle_steps(theta, backend="torch", **kw)
    got = symkern.particle_steps(theta, backend="cpp", **kw)
    scale = ref.theta.abs().max().item()
    out[f"{unit.__class__.__name__}/{scheme}"] = max(
        (got.theta - ref.theta).abs().max().item() / scale,
        (got.losses - ref.losses).abs().max().item() / ref.losses.abs().max().item())
print(json.dumps(out))
"""


def test_team_mode_matches_reference():
    """R = 1 < threads and N ≥ the team threshold: two threads split the run's particles (one
    barrier per step, partial sums in a fixed order). 20 noisy float64 steps of every scheme
    (and an FA standard-unit run) agree with the torch reference. Run in a subprocess so the
    threshold (read once per process) and the thread count are set for it."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "SYMKERN_PARTICLES_TEAM_MIN_N": "256", "OMP_NUM_THREADS": "2"}
    res = subprocess.run([sys.executable, "-c", _TEAM_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if not symkern._C.build_info()["openmp"] or out["threads"] < 2:
        pytest.skip("built without OpenMP: no teams")
    assert out.pop("team_min_n") == 256 and out.pop("threads") == 2
    assert len(out) == 6
    for case, err in out.items():
        assert err < 1e-9, (case, err)


def test_team_threshold_below_two_teams_worth_of_particles():
    """SYMKERN_PARTICLES_TEAM_MIN_N below 512 with one run of N < 512 particles: a team would get
    fewer than 256 particles per thread, so the run goes unsplit (a team of N // 256 = 0 threads
    wrote into an empty buffer: a segfault). The numbers match the reference."""
    import subprocess
    import sys

    script = """
import torch, symkern
from symkern.meanfield import MatrixUnit, Teacher, initial_particles
unit, teacher = MatrixUnit(2, 2), Teacher.paper("WI").particles
for n in (16, 200, 511):
    theta = initial_particles(1, n, unit.D, seed=n)
    got = symkern.particle_steps(theta, unit, teacher=teacher, steps=3, backend="cpp")
    ref = symkern.particle_steps(theta, unit, teacher=teacher, steps=3, backend="torch")
    assert torch.allclose(got.theta, ref.theta, rtol=1e-10, atol=1e-12), n
print("ok", symkern._C.particle_team_min_n())
"""
    env = {**os.environ, "SYMKERN_PARTICLES_TEAM_MIN_N": "16", "OMP_NUM_THREADS": "2"}
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])
    assert res.stdout.split() == ["ok", "16"]


# --- chunks of one call, and Ctrl-C between them -------------------------------------------------


def _cpp_steps_in_chunks(theta, problem, steps, every, chunk_steps):
    """``_C.particle_steps`` on ``problem`` with a fixed chunk size (0: the binding's own)."""
    from symkern.backends.cpp_particles import _NP_DTYPES, _problem_args

    R, N, D = theta.shape
    dt = _NP_DTYPES[theta.dtype]
    out, snaps = np.empty((R, N, D), dt), np.empty((R, steps // every, N, D), dt)
    losses = np.empty((R, steps // every), dt)
    symkern._C.particle_steps(theta.numpy(), *_problem_args(problem, theta.dtype), 0, steps, every,
                              out, snaps, losses, chunk_steps=chunk_steps)  # fmt: skip
    return out, snaps, losses


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_chunks_change_no_number(dtype):
    """The C++ binding runs a call's steps in chunks (between them it checks for Ctrl-C); every
    chunking gives the numbers of one chunk bit for bit: three runs of mixed schemes (noise
    projected in one), one run of N = 2100 (a team of threads where there are two), and user
    data x_data / y_data, with snapshots that do not line up with the chunks."""
    pytest.importorskip("symkern._C")
    unit, G = MatrixUnit(2, 2), groups.c2_swap()
    teacher = Teacher.paper("arbitrary").particles
    cases = []
    theta = initial_particles(3, 300, unit.D, seed=4).to(dtype)
    args = dict(teacher=teacher, group=G, scheme=["vanilla", "DA", "EA"], alpha=[5.0, 8.0, 10.0],
                tau=1e-2, beta=1e-3, batch=5, project_noise=[False, True, False])  # fmt: skip
    cases.append((theta, particle_problem(theta, unit, steps=10, **args)))
    theta = initial_particles(1, 2100, unit.D, seed=5).to(dtype)
    cases.append((theta, particle_problem(theta, unit, steps=10, teacher=teacher, beta=1e-3)))
    g = torch.Generator().manual_seed(6)
    x = torch.randn(10, 1, 5, 2, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randn(10, 1, 5, 2, generator=g, dtype=torch.float64).to(dtype)
    theta = initial_particles(1, 40, unit.D, seed=6).to(dtype)
    cases.append((theta, particle_problem(theta, unit, steps=10, batch=5, x_data=x, y_data=y)))
    for theta, problem in cases:
        whole = _cpp_steps_in_chunks(theta, problem, 10, 4, 0)
        assert np.isfinite(whole[0]).all() and not np.array_equal(whole[0], theta.numpy())
        for chunk in (1, 3, 7, 10, 25):
            got = _cpp_steps_in_chunks(theta, problem, 10, 4, chunk)
            for name, a, b in zip(("theta", "snapshots", "losses"), got, whole, strict=True):
                assert np.array_equal(a, b), (name, chunk, tuple(theta.shape))


_LONG_PARTICLE_CALL = """
import symkern
from symkern.meanfield import MatrixUnit, Teacher, initial_particles
unit, teacher = MatrixUnit(2, 2), Teacher.paper("WI").particles
theta = initial_particles(1, 1000, unit.D, seed=0)
def call(steps):
    symkern.particle_steps(theta, unit, teacher=teacher, steps=steps)
"""


def test_ctrl_c_stops_a_long_cpp_call():
    """Ctrl-C (SIGINT) during a long C++ particle_steps call raises KeyboardInterrupt within
    about a chunk (~0.2 s), not when the call would have ended (~1 min here)."""
    pytest.importorskip("symkern._C")
    from symkern.testing import interrupt_long_call

    out = interrupt_long_call(_LONG_PARTICLE_CALL)
    assert out["outcome"] == "interrupted", out
    # the SIGINT comes at 0.5 s and a chunk takes ~0.2 s: 3 s leaves room for a loaded machine
    assert out["call_s"] > 30 and out["after_s"] < 3, out


def test_cpp_activation_errors_as_documented():
    """The error bounds csrc/particles.cpp states for its own activations, re-measured: float32
    fast sigmoid / tanh against double libm, float64 sigmoid (exp_d) against long-double libm,
    and the base-2 sigmoids 1 / (1 + 2^t) of the matrix unit's pass 1 (float32 and float64) in
    the AVX-512 and AVX2 copies (measured wherever they exist, never skipped there;
    test_lower_isa_copies_match_reference runs this test on the lower copies)."""
    ext = pytest.importorskip("symkern._C")
    has_base2 = ext.particle_isa() in ("avx512", "avx2")  # the matrix unit's pass 1 (d = 2)
    e = ext.particle_activation_errors(-87.0, 87.0, 400_001)
    assert e["sigmoid_abs"] <= 1e-7 and e["sigmoid_rel"] <= 3e-7, e
    assert math.isnan(e["sigmoid_base2_abs"]) != has_base2, e
    if has_base2:
        assert e["sigmoid_base2_abs"] <= 1e-7 and e["sigmoid_base2_rel"] <= 3e-7, e
    assert e["tanh_abs"] <= 1e-7 and e["tanh_rel"] <= 2e-7, e
    e = ext.particle_activation_errors(-708.0, 708.0, 400_001)
    assert e["sigmoid_f64_rel"] <= 3e-16, e
    assert math.isnan(e["sigmoid_f64_base2_abs"]) != has_base2, e
    if has_base2:
        assert e["sigmoid_f64_base2_abs"] <= 2e-16 and e["sigmoid_f64_base2_rel"] <= 3e-16, e
    e = ext.particle_activation_errors(-800.0, 800.0, 100_001)  # beyond the clamp: absolute
    assert e["sigmoid_f64_abs"] <= 2e-16, e
    if has_base2:
        assert e["sigmoid_f64_base2_abs"] <= 2e-16, e


# --- exact invariance of E^G under C2 (the paper's group) ----------------------------------------


def _c2_param_perm(unit):
    """The permutation of the 2x2 matrix unit's parameters that M_g of C2 swap is (z ↦ P z P)."""
    rho = groups.c2_swap().generator_matrices()  # (1, 2, 2): the swap
    m = unit.param_action(rho, rho)[0]
    perm = m.argmax(dim=1)
    assert torch.equal(m, torch.eye(unit.D, dtype=torch.float64)[perm])  # a permutation matrix
    return perm


def _c2_si_run(backend, N, scheme, dtype, steps, device="cpu"):
    """(θ₀, result, M_g as a parameter permutation) of a DA / FA run under C2 swap from
    particles in E^G bit for bit (θ₀ = M_g θ₀), paper hyperparameters, projected noise."""
    unit = MatrixUnit(2, 2)
    perm = _c2_param_perm(unit)
    theta = initial_particles(1, N, unit.D, seed=11).to(dtype)
    theta = ((theta + theta[..., perm]) * 0.5).to(device)  # in E^G bit for bit
    assert torch.equal(theta, theta[..., perm])
    out = symkern.particle_steps(
        theta, unit, teacher=Teacher.paper("arbitrary").particles, group=groups.c2_swap(),
        scheme=scheme, alpha=50.0, tau=1e-4, beta=1e-6, batch=20, sigma_pi=4.0, seed=5,
        steps=steps, snapshot_every=max(steps // 10, 1), project_noise=True, backend=backend,
    )  # fmt: skip
    assert torch.isfinite(out.theta).all()
    return theta, out, perm


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("scheme", ["DA", "FA"])
@pytest.mark.parametrize("N", [5, 2500])  # 2500: the threads split the run (a team) here
def test_cpp_da_fa_keep_c2_fixed_points_exactly(N, scheme, dtype):
    """With a group of order 2 acting by permutations and the 2x2 matrix unit (the paper's
    setting), the C++ DA and FA steps commute with M_g in floating point: from particles in
    E^G exactly (θ = M_g θ bit for bit) they stay there bit for bit, with projected noise. At
    N = 5 and the paper's step size E^G is a saddle that amplifies any asymmetric rounding (the
    float64 torch reference drifts to 6e-4 over the paper preset's steps), so a kernel that
    rounds the two copies of an orbit differently fails this at once."""
    pytest.importorskip("symkern._C")
    theta, out, perm = _c2_si_run("cpp", N, scheme, dtype, steps=1000)
    assert (out.theta - theta).abs().max() > 0.1  # the particles did move
    assert torch.equal(out.snapshots, out.snapshots[..., perm])
    assert torch.equal(out.theta, out.theta[..., perm])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("scheme", ["DA", "FA"])
def test_triton_da_fa_keep_c2_fixed_points_exactly(scheme, dtype):
    """The same for the Triton fused kernel (10 steps: ~1.5 s each under the interpreter). Its
    products are rounded before they are summed and DA / FA sum each group element's block on
    its own, so it holds under the interpreter (numpy: no fused multiply-add); on a GPU the
    compiler may fuse a product into a sum, which this checks there."""
    if get_backend("triton").availability_reasons():
        pytest.skip("; ".join(get_backend("triton").availability_reasons()))
    theta, out, perm = _c2_si_run("triton", 5, scheme, dtype, steps=10, device=TRITON_DEVICE)
    assert (out.theta - theta).abs().max() > 0.01
    assert torch.equal(out.snapshots, out.snapshots[..., perm])
    assert torch.equal(out.theta, out.theta[..., perm])


def test_torch_reference_rounds_the_c2_orbit_copies_apart():
    """The natural torch step (autograd, the reference) makes no such promise: from the same
    E^G particles FA leaves E^G by rounding, which the small-N saddle amplifies (measured after
    100 steps: 7.5e-5 in float64, 0.50 in float32). Shows the bit-for-bit tests above can fail."""
    _, out, perm = _c2_si_run("torch", 5, "FA", torch.float32, steps=100)
    assert (out.theta - out.theta[..., perm]).abs().max() > 1e-3


# --- the lower instruction-set copies of the C++ kernels ------------------------------------------


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_lower_isa_copies_match_reference(isa):
    """csrc/particles.cpp is compiled once per instruction set and dispatched on the CPU's
    features; a machine with AVX-512 only ever runs that copy. Force each lower copy
    (SYMKERN_PARTICLES_ISA, read once per process, so in a subprocess) and run the C++ cases of
    the one-step, block-size and multi-tile tests against the float64 reference, and the chunk
    test."""
    import os
    import subprocess
    import sys

    ext = pytest.importorskip("symkern._C")
    env = {**os.environ, "SYMKERN_PARTICLES_ISA": isa}
    probe_code = "import symkern._C as C; print(C.particle_isa())"
    probe = subprocess.run([sys.executable, "-c", probe_code], env=env, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    if probe.stdout.strip() != isa:
        pytest.skip(f"this build/CPU cannot run the {isa} copy (got {probe.stdout.strip()!r}; "
                    f"this process: {ext.particle_isa()!r})")  # fmt: skip
    select = (
        "(cpp and (one_step_matches or block_sizes or hundred_steps or noise_paths))"
        " or standard_unit_steps_at_block_sizes or activation_errors_as_documented"
        " or cpp_normal4_matches_reference or cpp_normals_match_reference"
        " or teacher_labels_over_several_batch_blocks or matrix_unit_steps_over_tiles"
        " or cpp_chunks_change_no_number or cpp_da_fa_keep_c2_fixed_points_exactly"
    )
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         __file__, "-k", select],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and "failed" not in res.stdout, res.stdout[-2000:]


def test_float32_projector_accepted_at_its_precision():
    """A float32 projector (here onto a random plane of R^4) is idempotent only to ~1e-7; the
    check (allclose: 1e-8 + 1e-5 relative) accepts it, and EA from particles in its range keeps
    them there."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(4, 2, generator=g))
    p32 = q @ q.T
    assert ((p32.double() @ p32.double() - p32.double()).abs().max()) > 1e-8
    unit = MatrixUnit(2, 2)
    theta = (initial_particles(1, 6, unit.D, seed=3).float() @ p32.T).contiguous()
    args = dict(teacher=Teacher.paper("WI").particles, scheme="EA", steps=3, batch=5)
    out = symkern.particle_steps(theta, unit, projector=p32, **args)
    off = out.theta[0].double() @ (torch.eye(4, dtype=torch.float64) - p32.double()).T
    assert off.abs().max() < 1e-5


def test_numpy_and_tensor_integers_are_ints():
    """Ints may come as NumPy integers or integer 0-d tensors (not bools): the same trajectory
    as plain ints; Teacher lists are read in float64 (not rounded through float32)."""
    import numpy as np

    unit = MatrixUnit(2, 2)
    teacher = Teacher(unit, [[0.1, 0.2, 0.3, 0.4]], weights=[0.7])
    assert teacher.particles.tolist() == [[0.1, 0.2, 0.3, 0.4]] and teacher.weights.tolist() == [
        0.7
    ]
    theta = initial_particles(np.int64(2), torch.tensor(5), np.int32(4), seed=np.uint64(3))
    assert torch.equal(theta, initial_particles(2, 5, 4, seed=3))
    args = dict(teacher=teacher.particles, teacher_weights=teacher.weights, alpha=5.0)
    want = symkern.particle_steps(theta, unit, steps=4, batch=5, seed=9, **args)
    got = symkern.particle_steps(
        theta, unit, steps=np.int64(4), batch=torch.tensor(5), seed=np.uint64(9),
        step0=np.int32(0), snapshot_every=np.int16(4), run_ids=np.array([0, 1], np.uint8), **args,
    )  # fmt: skip
    assert torch.equal(got.theta, want.theta) and torch.equal(got.losses, want.losses)
    for bad in (True, 4.0, torch.tensor(4.0)):
        with pytest.raises(ValueError, match="steps must be a positive int"):
            symkern.particle_steps(theta, unit, steps=bad, **args)


def test_trainer_without_group_and_device_checks():
    """Without a group (the trivial group, E^G = R^D) the default SI init trains like WI with
    unprojected noise, instead of asking for a group; a CUDA device on a machine without one is
    refused when the trainer is built."""
    unit = MatrixUnit(2, 2)
    trainer = ParticleTrainer(unit, batch=4, dtype=torch.float64)
    si = trainer.run(5, 2, runs=2, teacher=Teacher.paper("WI"))
    wi = trainer.run(5, 2, runs=2, teacher=Teacher.paper("WI"), init="WI")
    assert torch.equal(si.theta, wi.theta)
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda"):
        ParticleTrainer(unit, device="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            ParticleTrainer(unit, device="cuda")


def test_trainer_checks_its_arguments_when_built():
    """A bad dtype or hyperparameter is refused by the constructor, naming the argument (not
    at the first run(), as theta's dtype or by torch); project_noise is None or a bool."""
    unit = MatrixUnit(2, 2)
    for dtype in (torch.int32, "float32"):
        with pytest.raises(TypeError, match="dtype must be a floating torch dtype"):
            ParticleTrainer(unit, dtype=dtype)
    for v in ("False", 1, [True]):
        with pytest.raises(TypeError, match="project_noise must be None or a bool"):
            ParticleTrainer(unit, project_noise=v)
    for name, v in (("alpha", -1.0), ("tau", float("nan")), ("beta", True), ("sigma_pi", 0.0)):
        with pytest.raises(ValueError, match=f"{name} must be a finite number"):
            ParticleTrainer(unit, **{name: v})
    with pytest.raises(ValueError, match="batch must be a positive int"):
        ParticleTrainer(unit, batch=0)
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        ParticleTrainer(unit, backend="bogus")  # was accepted until run()
    # one alpha per run is still checked by run(), against the number of runs
    trainer = ParticleTrainer(unit, alpha=[30.0, 20.0], dtype=torch.float64)
    assert trainer.run(5, 1, runs=2, teacher=Teacher.paper("WI")).theta.shape == (2, 5, 4)
    with pytest.raises(ValueError, match="alpha must be a scalar or have one value per run"):
        trainer.run(5, 1, runs=3, teacher=Teacher.paper("WI"))


def test_trainer_run_normalises_snapshot_every_and_names_init():
    """A NumPy or tensor snapshot_every (accepted as an int) made snapshot_steps a list of NumPy
    scalars or 0-d tensors, not of ints; a meta init raised torch's "Cannot copy out of meta
    tensor", a NaN one was reported as theta's. An alpha past float32's range raised torch's
    "value cannot be converted to type float without overflow" (a float), or trained with
    α = inf (a tensor rounded to float32)."""
    trainer = ParticleTrainer(MatrixUnit(2, 2), dtype=torch.float64)
    wi = Teacher.paper("WI")
    for every in (np.int64(2), torch.tensor(2)):
        steps = trainer.run(3, 4, teacher=wi, snapshot_every=every).snapshot_steps
        assert steps == [2, 4] and all(type(s) is int for s in steps)
    with pytest.raises(ValueError, match="init must hold values, got a meta tensor"):
        trainer.run(3, 2, teacher=wi, init=torch.zeros(1, 3, 4, device="meta"))
    with pytest.raises(ValueError, match="init contains NaN or inf"):
        trainer.run(3, 2, teacher=wi, init=torch.full((1, 3, 4), float("nan")))
    for alpha in (1e308, torch.tensor([1e39], dtype=torch.float64)):
        with pytest.raises(
            ValueError, match=r"alpha must be finite in theta's dtype torch.float32"
        ):
            symkern.particle_steps(torch.zeros(1, 3, 4), MatrixUnit(2, 2), teacher=wi.particles,
                                   alpha=alpha)  # fmt: skip
    with pytest.raises(ValueError, match=r"alpha must be finite in theta's dtype torch.float32"):
        ParticleTrainer(MatrixUnit(2, 2), alpha=1e308).run(3, 2, teacher=wi)


def test_meanfield_exposes_metrics_and_rng():
    """The README lists metrics and rng under symkern.meanfield: after import symkern only."""
    script = "import symkern; m = symkern.meanfield; print(m.metrics.rmd, m.rng.normal)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=99)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize(
    "var, value",
    [("SYMKERN_PARTICLES_ISA", "AVX2"), ("SYMKERN_PARTICLES_ISA", "bogus"),
     ("SYMKERN_PARTICLES_TEAM_MIN_N", "1e3"), ("SYMKERN_PARTICLES_TEAM_MIN_N", "abc"),
     ("SYMKERN_MIRROR_SWEEP_ISA", "avx-2")],
)  # fmt: skip
def test_cpp_environment_variables_are_checked(var, value):
    """A value the C++ kernels cannot read is a ValueError naming the variable at the call that
    reads it (the ISA was silently the best one for a typo; the team threshold read '1e3' as 1
    and 'abc' as off)."""
    pytest.importorskip("symkern._C")
    call = (
        "symkern.mirror.train_sweep('rescaling', {'u': torch.ones(2, 3, dtype=torch.float64), "
        "'w': torch.ones(2, 3, dtype=torch.float64)}, 0.1, 0.1, 2, None, "
        "target=torch.ones(3), backend='cpp')"
        if "SWEEP" in var
        else "symkern.particle_steps(torch.randn(1, 5, 4), MatrixUnit(2, 2), "
        "teacher=Teacher.paper('WI').particles, backend='cpp')"
    )
    script = (
        "import torch, symkern\n"
        "from symkern.meanfield import MatrixUnit, Teacher\n"
        f"try:\n    {call}\n"
        "except ValueError as e:\n    print('ValueError:', e)\n"
    )
    env = {**os.environ, var: value}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"ValueError: the environment variable {var} must be" in out.stdout, out.stdout
    assert repr(value) in out.stdout


def test_default_teacher_weights_are_one_over_m_in_theta_dtype():
    """teacher_weights=None means 1/M exactly in float64 (a float32 1/5 scaled every label by
    1 + 1.5e-8): the same trajectory as explicit float64 weights, bit for bit."""
    unit, theta = MatrixUnit(2, 2), initial_particles(2, 7, 4, seed=1)
    teacher = Teacher.paper("arbitrary").particles  # M = 5: 1/5 is not a float32
    M = teacher.shape[0]
    w = torch.full((M,), 1.0 / M, dtype=torch.float64)
    for backend in ("torch", "cpp"):
        default = symkern.particle_steps(theta, unit, teacher=teacher, steps=3, backend=backend)
        given = symkern.particle_steps(theta, unit, teacher=teacher, teacher_weights=w, steps=3,
                                       backend=backend)  # fmt: skip
        assert torch.equal(default.theta, given.theta), backend


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize(
    "scheme, project_noise", [("vanilla", False), ("DA", True), ("FA", False), ("EA", False)]
)
def test_langevin_noise_is_sqrt_2_beta_alpha_over_n_times_the_philox_normals(
    backend, scheme, project_noise
):
    """SPEC_MEANFIELD's noise term sqrt(2 β s_N) ξ_i, s_N = α/N, checked against the formula
    rather than against another backend: one step at β and one at β = 0 from the same θ, data
    and stream differ by exactly sqrt(2 β α / N) ξ, ξ the standard normals of the shared Philox
    stream (rng.normal4, STREAM_NOISE, keyed by seed, run id and step), projected (P ξ) for EA
    and project_noise runs. Nothing else in a step depends on β. Per-run α and β, odd N."""
    if backend == "cpp":
        pytest.importorskip("symkern._C")
    unit = MatrixUnit(2, 2)
    R, N, seed, step0 = 3, 37, 123, 4
    theta = torch.randn(
        R, N, unit.D, generator=torch.Generator().manual_seed(5), dtype=torch.float64
    )
    alpha = torch.tensor([50.0, 5.0, 0.5], dtype=torch.float64)
    beta = torch.tensor([1e-2, 3e-4, 1.0], dtype=torch.float64)
    kw = dict(
        teacher=Teacher.paper("arbitrary").particles, group=groups.c2_swap(), scheme=scheme,
        alpha=alpha, tau=1e-4, batch=7, sigma_pi=4.0, seed=seed, step0=step0, steps=1,
        project_noise=project_noise, backend=backend,
    )  # fmt: skip
    hot = symkern.particle_steps(theta, unit, beta=beta, **kw).theta
    cold = symkern.particle_steps(theta, unit, beta=torch.zeros(R, dtype=torch.float64), **kw).theta
    xi = rng.normal4(seed, torch.arange(R), step0, rng.STREAM_NOISE, N * unit.D).view(R, N, -1)
    if scheme == "EA" or project_noise:
        rho = groups.c2_swap().element_matrices().to(torch.float64)
        proj = unit.param_action(rho, rho).mean(0)  # P onto E^G
        xi = xi @ proj.T
    want = torch.sqrt(2.0 * beta * alpha / N).view(R, 1, 1) * xi
    assert want.abs().max() > 1e-2  # the noise is not negligible against θ ~ 1
    assert_close(hot - cold, want, rtol=1e-12, atol=1e-14)


def test_compact_group_is_refused_with_the_projector_route():
    """The fused kernels sum over a finite group's elements, so SO(2) is refused (naming the
    representation); the message names the route for EA and projected noise, which need only P:
    projector= with no group. Under SO(2) rotating x, the standard unit's E^G is {w = 0}
    (param_action: the rotation acts on w and fixes a, b), P = diag(1, 0, 0, 1); EA then trains
    a and b only."""
    unit = StandardUnit(2, activation="tanh")
    theta = torch.randn(
        1, 9, unit.D, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    teacher = torch.tensor([[0.8, 0.0, 0.0, 0.3]], dtype=torch.float64)
    kw = dict(teacher=teacher, scheme="EA", steps=20, beta=1e-4, backend="cpp")
    with pytest.raises(ValueError, match=r"group: rep_x must be a finite group.*projector="):
        symkern.particle_steps(theta, unit, group=(groups.so2(), groups.so2()), **kw)
    pytest.importorskip("symkern._C")
    proj = torch.diag(torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64))
    out = symkern.particle_steps(theta, unit, projector=proj, **kw)
    # EA trains P θ (its gradient pulled back by Pᵀ, its noise projected): w is left as it was
    assert torch.equal(out.theta[..., 1:3], theta[..., 1:3])
    assert (out.theta[..., [0, 3]] - theta[..., [0, 3]]).abs().max() > 1e-3
