"""Mean-field particle step: symkern cpp multi-step kernel vs torch eager (and torch.compile).

PERF.md targets (matrix unit, C2 = ``groups.c2_swap()``, B = 20, paper hyperparameters):

* N = 5000, R = 1, vanilla and DA: ≤ 60 µs/step (≥ 20× torch eager);
* N = 50, R = 1: ≤ 3 µs/step (≥ 100× eager);
* R = 120 runs (4 schemes × 3 teachers × 10 seeds) at N = 500 in one call vs 120 eager runs
  (float32 and float64; float64 also at N = 5000, the paper preset's largest cell).

What is timed, in the same run on the same inputs:

* ``symkern``: the cpp ``particle_steps`` kernel, 2000 steps per call (particles stay in
  cache, RNG in-kernel); µs/step = call time / steps.
* ``torch_eager``: the step a user would write in plain torch (torch.randn data and noise,
  ``torch.func.grad``, DA as the orbit-augmented batch) — the baseline of the speedups;
* ``torch_compile``: the same step with the gradient function under ``torch.compile``;
* ``symkern_torch_reference``: symkern's own torch reference kernel (same Philox streams as the
  kernel, so ~10x slower than natural torch: Philox in torch ops dominates) — recorded, not
  used for the speedups.
* R = 120 case: one eager run (R = 1) is timed and multiplied by 120 (said in extra_info).
* ``model_output`` (the differentiable fused Φ_θ(x)): forward + backward through the cpp kernel
  vs ``unit.output`` under autograd, the code a user plugging particles into training writes.

Correctness before timing: cpp vs the float64 reference on a short run of the same problem.
``--benchmark-disable`` (smoke): tiny N and steps, checks only.
"""

from __future__ import annotations

import pytest
import torch
from conftest import drop_per_call_speedups  # noqa: E402
from device_ceilings import H100_TF32_TFLOPS  # noqa: E402

pytest.importorskip("symkern._C")


import symkern  # noqa: E402
from symkern import groups  # noqa: E402
from symkern.meanfield import MatrixUnit, Teacher  # noqa: E402
from symkern.meanfield.trainer import initial_particles  # noqa: E402
from symkern.testing import assert_close  # noqa: E402

DTYPE = torch.float32
UNIT = MatrixUnit(2, 2)
TEACHERS = ("arbitrary", "WI", "SI")


def _args(scheme, R=1, teacher="arbitrary"):
    return dict(
        teacher=Teacher.paper(teacher).particles,
        group=groups.c2_swap(),
        scheme=scheme,
        alpha=50.0,
        tau=1e-4,
        beta=1e-6,
        batch=20,
        sigma_pi=4.0,
        seed=0,
    )


def _steps_fn(theta, args, steps, backend):
    def fn():
        return symkern.particle_steps(theta, UNIT, steps=steps, backend=backend, **args)

    return fn


def _check_against_reference(theta, args):
    def check():
        th = theta[:, : min(theta.shape[1], 64)]
        ref = symkern.particle_steps(th.double(), UNIT, steps=5, backend="torch", **args)
        out = symkern.particle_steps(th, UNIT, steps=5, backend="cpp", **args)
        assert_close(out.theta.double(), ref.theta, rtol=1e-4, atol=1e-4)
        out64 = symkern.particle_steps(th.double(), UNIT, steps=5, backend="cpp", **args)
        assert_close(out64.theta, ref.theta, rtol=1e-10, atol=1e-12)

    return check


def _natural_torch_steps(
    theta0, scheme, steps, compiled=False, *, unit=UNIT, teacher=None, batch=20, sigma_pi=4.0
):
    """The step a user would write in plain torch: torch.randn data and noise, autograd for the
    gradient, DA as the orbit-augmented batch. Same math and sizes as the kernel (not the same
    random numbers: torch's generator instead of the shared Philox stream), so it is the fair
    cost baseline — the reference kernel also spends most of its time on Philox in torch ops.
    Runs on theta0's device in its dtype; run 0 of theta0 (R, N, D) is trained."""
    dev, dt = theta0.device, theta0.dtype
    if teacher is None:
        teacher = Teacher.paper("arbitrary").particles
    teacher = teacher.to(dev, dt)
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=dt, device=dev)
    N = theta0.shape[1]
    alpha, tau, beta = 50.0, 1e-4, 1e-6
    noise_std = (2.0 * beta * alpha / N) ** 0.5

    def loss_fn(theta, x, y):
        if scheme == "DA":
            x, y = torch.cat([x, x @ swap.T]), torch.cat([y, y @ swap.T])
        data = ((unit.output(x, theta) - y) ** 2).sum(-1).mean()
        return data + tau * (theta**2).sum(-1).mean()

    grad_fn = torch.func.grad(loss_fn)
    if compiled:
        grad_fn = torch.compile(grad_fn, dynamic=False)

    def run():
        theta = theta0[0].clone()
        for _ in range(steps):
            x = sigma_pi * torch.randn(batch, unit.d, dtype=dt, device=dev)
            y = unit.output(x, teacher)
            theta = theta - alpha * grad_fn(theta, x, y) + noise_std * torch.randn_like(theta)
        return theta

    return run


@pytest.mark.parametrize("N", [50, 5000])
@pytest.mark.parametrize("scheme", ["vanilla", "DA"])
def test_particle_step_paper_size(compare, smoke, scheme, N):
    if smoke:
        N = min(N, 16)
    # 2000 steps per call at every N: the paper's runs call the kernel for thousands of steps at
    # a time (teacher-student: one call per snapshot interval, 5000-10000 steps at N = 5000), so
    # the ~0.4 ms per-call setup is amortised as in use (at 200 steps it added ~2 us/step)
    steps_cpp = 4 if smoke else 2000
    steps_eager = 1 if smoke else 5
    theta = initial_particles(1, N, UNIT.D, seed=0).to(DTYPE)
    args = _args(scheme)
    steps_natural = 2 if smoke else 50
    baselines = {
        "torch_eager": _natural_torch_steps(theta, scheme, steps_natural),
        "torch_compile": _natural_torch_steps(theta, scheme, steps_natural, compiled=True),
        "symkern_torch_reference": _steps_fn(theta, args, steps_eager, "torch"),
    }
    info = compare(
        _steps_fn(theta, args, steps_cpp, "cpp"),
        baselines=baselines,
        check=_check_against_reference(theta, args),
    )
    if smoke:
        return
    ex = compare.benchmark.extra_info
    drop_per_call_speedups(ex)  # the calls run different step counts: only per-step ratios mean
    us = info["symkern_ms"] * 1e3 / steps_cpp
    ex["symkern_us_per_step"] = us
    ex["torch_eager_us_per_step"] = info["torch_eager_ms"] * 1e3 / steps_natural
    ex["speedup_per_step_vs_torch_eager"] = ex["torch_eager_us_per_step"] / us
    ex["torch_compile_us_per_step"] = info["torch_compile_ms"] * 1e3 / steps_natural
    ex["speedup_per_step_vs_torch_compile"] = ex["torch_compile_us_per_step"] / us
    ex["symkern_torch_reference_us_per_step"] = (
        info["symkern_torch_reference_ms"] * 1e3 / steps_eager
    )
    ex["steps_per_call_cpp"] = steps_cpp
    ex["steps_timed_natural_torch"] = steps_natural
    ex["target_us_per_step"] = 60.0 if N >= 5000 else 3.0
    ex["isa"] = symkern._C.particle_isa()
    ex["threads"] = symkern._C.build_info()["max_threads"]
    print(
        f"\n  N={N} {scheme}: cpp {us:.2f} us/step, eager {ex['torch_eager_us_per_step']:.0f} "
        f"us/step, x{ex['speedup_per_step_vs_torch_eager']:.0f}"
    )


def _one_step_per_call(theta, args, steps):
    """A user's own loop: ``symkern.particle_step`` once per step (e.g. to log or change
    something between steps), each call continuing the streams with ``step0``."""

    def run():
        th = theta
        for k in range(steps):
            th = symkern.particle_step(th, UNIT, step0=k, backend="cpp", **args).theta
        return th

    return run


@pytest.mark.parametrize("N", [50, 500])
def test_particle_step_one_call_per_step(compare, smoke, N):
    """The per-call cost of the low-level API: one ``particle_step`` call per step (argument
    checks, problem build, dispatch, one kernel launch each time) vs the natural torch eager step
    — the regime where Python overhead, not the kernel, sets the time."""
    if smoke:
        N = 8
    steps = 3 if smoke else 200
    theta = initial_particles(1, N, UNIT.D, seed=0).to(DTYPE)
    args = _args("vanilla")
    loop = _one_step_per_call(theta, args, steps)

    reference = _check_against_reference(theta, args)

    def check():  # a loop of single steps continues the streams: it is the multi-step call
        reference()  # ... whose kernel matches the float64 reference
        one_call = symkern.particle_steps(theta, UNIT, steps=steps, backend="cpp", **args)
        assert_close(loop().double(), one_call.theta.double(), rtol=1e-5, atol=1e-6)

    info = compare(
        loop, baselines={"torch_eager": _natural_torch_steps(theta, "vanilla", steps)}, check=check
    )
    if smoke:
        return
    ex = compare.benchmark.extra_info
    ex["symkern_us_per_step"] = info["symkern_ms"] * 1e3 / steps
    ex["torch_eager_us_per_step"] = info["torch_eager_ms"] * 1e3 / steps
    ex["steps_per_call"] = 1
    print(
        f"\n  N={N} one particle_step call per step: {ex['symkern_us_per_step']:.0f} us/step, "
        f"eager {ex['torch_eager_us_per_step']:.0f} us/step"
    )


def _grid_problem(N, schemes, teachers, seeds):
    """The paper grid's runs (scheme × teacher × seed, run id = seed) as one particle_steps
    problem: (theta (R, N, D) float32 on the CPU, keyword arguments)."""
    runs = [(s, t, k) for s in schemes for t in teachers for k in range(seeds)]
    R = len(runs)
    theta = initial_particles(R, N, UNIT.D, seed=0).to(DTYPE)
    teacher = torch.zeros(R, 10, UNIT.D, dtype=torch.float64)
    weights = torch.zeros(R, 10, dtype=torch.float64)
    for r, (_, t, _) in enumerate(runs):
        tp = Teacher.paper(t).particles
        teacher[r, : tp.shape[0]] = tp
        weights[r, : tp.shape[0]] = 1.0 / tp.shape[0]
    args = dict(_args("vanilla"), teacher=teacher, teacher_weights=weights,
                scheme=[s for s, _, _ in runs], run_ids=torch.tensor([k for _, _, k in runs]),
                project_noise=[t == "SI" for _, t, _ in runs])  # fmt: skip
    return theta, args


@pytest.mark.parametrize(
    "dtype, n_full",
    [(torch.float32, 500), (torch.float64, 500), (torch.float32, 5000), (torch.float64, 5000)],
    ids=["float32", "float64", "float32-N5000", "float64-N5000"],
)
def test_particle_grid_120_runs(compare, smoke, dtype, n_full):
    """4 schemes × 3 teachers × 10 seeds (run_ids) at N = 500 in one call vs 120 eager runs.
    float64 is the teacher-student experiment's default (its sigmoid is exp_d of csrc/vmath.h,
    vectorised since 2026-11-22: it was 3.9x slower with std::exp); N = 5000 is the paper
    preset's largest cell (~90 % of the float64 preset's time; in float32 its training is ~70 % of
    the preset's; the preset projects the noise of every run, the bench that of the SI third)."""
    N = 8 if smoke else n_full
    steps = 2 if smoke else (200 if n_full <= 500 else 50)
    seeds = 2 if smoke else 10
    schemes = ["vanilla", "DA", "FA", "EA"]
    theta, args = _grid_problem(N, schemes, TEACHERS, seeds)
    theta = theta.to(dtype)
    R = theta.shape[0]
    steps_eager = 2 if smoke else 50
    tol = 1e-4 if dtype == torch.float32 else 1e-10

    def check():
        ref = symkern.particle_steps(theta[:, :16].double(), UNIT, steps=3, backend="torch", **args)
        out = symkern.particle_steps(theta[:, :16], UNIT, steps=3, backend="cpp", **args)
        assert_close(out.theta.double(), ref.theta, rtol=tol, atol=tol)

    info = compare(
        _steps_fn(theta, args, steps, "cpp"),
        baselines={"torch_eager_one_run": _natural_torch_steps(theta[:1], "vanilla", steps_eager)},
        check=check,
    )
    if smoke:
        return
    ex = compare.benchmark.extra_info
    drop_per_call_speedups(ex)
    cpp_us = info["symkern_ms"] * 1e3 / steps  # all R runs, per step
    eager_one = info["torch_eager_one_run_ms"] * 1e3 / steps_eager
    ex["note"] = (f"eager: one natural-torch vanilla run (the cheapest scheme, so a lower "
                  f"bound) timed for {steps_eager} steps and multiplied by {R}; "
                  f"cpp: all {R} runs (4 schemes) in one call, {steps} steps")  # fmt: skip
    ex["symkern_us_per_step_all_runs"] = cpp_us
    ex["torch_eager_us_per_step_all_runs_est"] = eager_one * R
    ex["speedup_vs_eager_loop"] = eager_one * R / cpp_us
    ex["runs"] = R
    ex["dtype"] = str(dtype)
    print(
        f"\n  R={R} N={N} {dtype}: cpp {cpp_us:.1f} us/step for all runs, eager loop est "
        f"{eager_one * R:.0f} us/step, x{eager_one * R / cpp_us:.0f}"
    )


# --- the fused model output Φ_θ(x) and its gradient (symkern.model_output) -----------------------


@pytest.mark.parametrize(
    "unit_name, N, B",
    [("matrix2x2", 5000, 1000), ("standard_tanh_d100", 20000, 1000)],
)
def test_model_output_forward_backward(compare, smoke, unit_name, N, B):
    """Φ = (1/N) Σ_i σ*(x_b, θ_i) and ∂(Σ Φ·G)/∂(θ, x) through ``symkern.model_output`` (cpp:
    fused forward, backward recomputes the activations, no B×N buffer) vs the natural torch code
    (``unit.output`` with autograd, which materialises B×N×c activations)."""
    from symkern.meanfield import StandardUnit

    if smoke:
        N, B = 37, 11
    unit = UNIT if unit_name == "matrix2x2" else StandardUnit(d=100, c=1, activation="tanh")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, unit.d, generator=g, dtype=DTYPE)
    theta = 0.3 * torch.randn(N, unit.D, generator=g, dtype=DTYPE)
    grad_phi = torch.randn(B, unit.c, generator=g, dtype=DTYPE)

    def run(fn):
        xs, ts = x.clone().requires_grad_(), theta.clone().requires_grad_()
        phi = fn(xs, ts)
        phi.backward(grad_phi)
        return phi.detach(), ts.grad, xs.grad

    def sym():
        return run(lambda a, t: symkern.model_output(a, t, unit, backend="cpp"))

    def natural():
        return run(lambda a, t: unit.output(a, t))

    def check():
        got = sym()
        x64, t64 = x.double().requires_grad_(), theta.double().requires_grad_()
        phi = unit.output(x64, t64)
        phi.backward(grad_phi.double())
        for a, b, name in zip(got, (phi.detach(), t64.grad, x64.grad), ("phi", "dtheta", "dx"),
                              strict=True):  # fmt: skip
            assert_close(a, b, msg=f"{name}: ")

    compare(sym, baselines={"torch_autograd": natural}, check=check, rounds=5)
    if smoke:
        return
    compare.benchmark.extra_info.update(N=N, B=B, unit=unit_name)


# --- GPU: the Triton particle kernels on CUDA ----------------------------------------------------
# Timed on CUDA only. The smoke run (--benchmark-disable) without a GPU still executes them, at
# tiny sizes under the Triton interpreter on CPU tensors, so CI runs their correctness checks.

TF32_PEAK_TFLOPS = 495.0  # H100 SXM dense TF32, datasheet (PERF.md)


def _check_triton_against_reference(theta, args, unit=UNIT, rtol=1e-4, steps=3):
    def check():
        th = theta[:, : min(theta.shape[1], 64)]
        ref = symkern.particle_steps(th.double().cpu(), unit, steps=steps, backend="torch", **args)
        out = symkern.particle_steps(th, unit, steps=steps, backend="triton", **args)
        assert_close(out.theta.double(), ref.theta, rtol=rtol, atol=rtol)

    return check


@pytest.mark.parametrize("N", [50, 5000])
@pytest.mark.parametrize("scheme", ["vanilla", "DA"])
def test_particle_step_paper_size_gpu(compare, smoke, gpu_device, scheme, N):
    """Paper size on a GPU: the fused kernel (one program per run, every step in one launch)
    vs the natural torch step on the same GPU (eager and torch.compile)."""
    dev = gpu_device
    if smoke:
        N = min(N, 16)
    steps = 3 if smoke else 2000
    steps_natural = 2 if smoke else 50
    theta = initial_particles(1, N, UNIT.D, seed=0).to(dev, DTYPE)
    args = _args(scheme)
    baselines = {"torch_eager": _natural_torch_steps(theta, scheme, steps_natural)}
    if not smoke:
        baselines["torch_compile"] = _natural_torch_steps(
            theta, scheme, steps_natural, compiled=True
        )
    info = compare(
        _steps_fn(theta, args, steps, "triton"),
        baselines=baselines,
        check=_check_triton_against_reference(theta, args),
        device=dev,
    )
    if smoke:
        return
    ex = compare.benchmark.extra_info
    drop_per_call_speedups(ex)
    us = info["symkern_ms"] * 1e3 / steps
    ex["symkern_us_per_step"] = us
    for name in baselines:
        ex[f"{name}_us_per_step"] = info[f"{name}_ms"] * 1e3 / steps_natural
        ex[f"speedup_per_step_vs_{name}"] = ex[f"{name}_us_per_step"] / us
    ex.update(steps_per_call=steps, device_name=torch.cuda.get_device_name())
    print(f"\n  GPU N={N} {scheme}: triton {us:.2f} us/step, "
          f"x{ex['speedup_per_step_vs_torch_eager']:.0f} eager")  # fmt: skip


def test_particle_grid_120_runs_gpu(compare, smoke, gpu_device):
    """The paper grid's 120 runs of one N in ONE launch (one program per run) vs 120 eager runs
    on the same GPU (one timed, multiplied by 120)."""
    dev = gpu_device
    N, steps, seeds = (8, 1, 1) if smoke else (500, 1000, 10)
    schemes = ["vanilla", "DA", "FA", "EA"]
    teachers = TEACHERS[:1] if smoke else TEACHERS  # smoke: 4 runs (the interpreter is slow)
    theta, args = _grid_problem(N, schemes, teachers, seeds)
    theta = theta.to(dev)
    R = theta.shape[0]
    steps_eager = 1 if smoke else 50
    info = compare(
        _steps_fn(theta, args, steps, "triton"),
        baselines={"torch_eager_one_run": _natural_torch_steps(theta[:1], "vanilla", steps_eager)},
        check=_check_triton_against_reference(theta, args, steps=1 if smoke else 3),
        device=dev,
    )
    if smoke:
        return
    ex = compare.benchmark.extra_info
    drop_per_call_speedups(ex)
    us = info["symkern_ms"] * 1e3 / steps
    eager_one = info["torch_eager_one_run_ms"] * 1e3 / steps_eager
    ex.update(symkern_us_per_step_all_runs=us, torch_eager_us_per_step_all_runs_est=eager_one * R,
              speedup_vs_eager_loop=eager_one * R / us, runs=R,
              device_name=torch.cuda.get_device_name())  # fmt: skip


@pytest.mark.parametrize("N", [100_000, 1_000_000])
def test_particle_step_large_standard_unit_gpu(compare, smoke, gpu_device, N):
    """The GPU regime: standard unit a·tanh(w·x + b), d = 100, c = 1, B = 1e4, vanilla. The
    two-pass step (forward reduction, then a backward that recomputes the activations: no B×N
    buffer, TF32 tensor cores) vs the natural eager step (autograd, which keeps B×N activations:
    4 GB at N = 1e5, 40 GB per buffer at N = 1e6 — the eager baseline runs at N = 1e5 only).
    Model FLOPs per step 6·B·N·d (PERF.md); the kernel does 8·B·N·d (recomputation)."""
    from symkern.backends.triton.particles import particle_steps_triton
    from symkern.meanfield import StandardUnit
    from symkern.ops.particles import particle_problem

    dev = gpu_device
    B, d = (32, 8) if smoke else (10_000, 100)
    if smoke:
        N = 64
    unit = StandardUnit(d=d, c=1, activation="tanh")
    steps = 1 if smoke else 10
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(4, unit.D, generator=g, dtype=torch.float64)
    theta = (0.3 * torch.randn(1, N, unit.D, generator=g, dtype=torch.float64)).to(dev, DTYPE)
    args = dict(teacher=teacher, alpha=1.0, tau=1e-4, beta=1e-6, batch=B, sigma_pi=1.0, seed=0)
    problem = particle_problem(theta, unit, steps=steps, **args)

    def sym():
        return particle_steps_triton(theta, problem, 0, steps, steps, path="two_pass",
                                     allow_tf32=True)  # fmt: skip

    def check():
        # 2 steps on the first particles: the update Δθ against the float64 reference (TF32
        # products: ~1e-3 relative in Z, so Δθ is compared at 2 % of its size)
        n = min(N, 4096)
        th = theta[:, :n].contiguous()
        small = particle_problem(th, unit, steps=2, **args)
        out = particle_steps_triton(th, small, 0, 2, 2, path="two_pass", allow_tf32=True)[0]
        ref = symkern.particle_steps(th.double().cpu(), unit, steps=2, backend="torch", **args)
        delta_ref = ref.theta - th.double().cpu()
        assert_close(out.double() - th.double(), delta_ref, rtol=0.0, atol=2e-2)

    baselines = {}
    if N <= 100_000 or smoke:
        baselines["torch_eager"] = _natural_torch_steps(
            theta, "vanilla", 2 if smoke else 3, unit=unit, teacher=teacher, batch=B,
            sigma_pi=1.0,
        )  # fmt: skip
    info = compare(sym, baselines=baselines, check=check, device=dev, rounds=3)
    if smoke:
        return
    ex = compare.benchmark.extra_info
    drop_per_call_speedups(ex)
    ms = info["symkern_ms"] / steps
    model_tflops = 6 * B * N * d / (ms / 1e3) / 1e12
    ex.update(symkern_ms_per_step=ms, model_TFLOPs=model_tflops,
              kernel_TFLOPs=model_tflops * 8 / 6,
              fraction_of_tf32_peak=model_tflops / TF32_PEAK_TFLOPS,
              fraction_of_measured_tf32_matmul=model_tflops / H100_TF32_TFLOPS,
              target_ms_per_step=25.0 if N >= 1_000_000 else None, N=N, B=B, d=d,
              device_name=torch.cuda.get_device_name())  # fmt: skip
    if "torch_eager" in baselines:
        ex["torch_eager_ms_per_step"] = info["torch_eager_ms"] / 3
        ex["speedup_per_step_vs_torch_eager"] = ex["torch_eager_ms_per_step"] / ms
