"""Mean-field particle step: symkern cpp multi-step kernel vs torch eager (and torch.compile).

PERF.md targets (matrix unit, C2 = ``groups.c2_swap()``, B = 20, paper hyperparameters):

* N = 5000, R = 1, vanilla and DA: ≤ 60 µs/step (≥ 20× torch eager);
* N = 50, R = 1: ≤ 3 µs/step (≥ 100× eager);
* R = 120 runs (4 schemes × 3 teachers × 10 seeds) at N = 500 in one call vs 120 eager runs.

What is timed, in the same run on the same inputs:

* ``symkern``: the cpp ``particle_steps`` kernel, ``STEPS_CPP`` steps per call (particles stay in
  cache, RNG in-kernel); µs/step = call time / steps.
* ``torch_eager``: the torch reference kernel (symkern/backends/reference/particles.py — the
  natural autograd step, with the same Philox data/noise) for ``STEPS_EAGER`` steps only (it is
  ~1000× slower); µs/step likewise. The speedups in extra_info are per step.
* ``torch_compile``: ``torch.compile`` of one reference step, only with
  ``SYMKERN_BENCH_TORCH_COMPILE=1`` (compiling the autograd + Philox graph takes minutes on these
  2 cores, so it is off by default; extra_info says so).
* R = 120 case: one eager run (R = 1) is timed and multiplied by 120 (said in extra_info).

Correctness before timing: cpp vs the float64 reference on a short run of the same problem.
``--benchmark-disable`` (smoke): tiny N and steps, checks only.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("symkern._C")


import symkern  # noqa: E402
from symkern import groups  # noqa: E402
from symkern.backends.registry import select_kernel  # noqa: E402
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


def _torch_compile_step(theta, args):
    """torch.compile of one reference step (opt-in: compile time is minutes here)."""
    ref = select_kernel("particle_steps", {}, "torch").fn
    compiled = torch.compile(ref, dynamic=False)
    problem_holder = {}

    def capture(th, problem, step0, steps, every):
        problem_holder["p"] = problem
        return ref(th, problem, step0, 1, 1)

    # build the problem exactly as the public op does, by intercepting the dispatch
    import symkern.ops.particles as ops_mod

    real_select = ops_mod.select_kernel

    class _K:
        fn = staticmethod(capture)

    ops_mod.select_kernel = lambda *a, **k: _K
    try:
        symkern.particle_steps(theta, UNIT, steps=1, **args)
    finally:
        ops_mod.select_kernel = real_select
    problem = problem_holder["p"]

    def step():
        return compiled(theta, problem, 0, 1, 1)

    return step


@pytest.mark.parametrize("N", [50, 5000])
@pytest.mark.parametrize("scheme", ["vanilla", "DA"])
def test_particle_step_paper_size(compare, smoke, scheme, N):
    if smoke:
        N = min(N, 16)
    steps_cpp = 4 if smoke else (2000 if N <= 500 else 200)
    steps_eager = 1 if smoke else 5
    theta = initial_particles(1, N, UNIT.D, seed=0).to(DTYPE)
    args = _args(scheme)
    baselines = {"torch_eager": _steps_fn(theta, args, steps_eager, "torch")}
    want_compile = os.environ.get("SYMKERN_BENCH_TORCH_COMPILE", "0") == "1" and not smoke
    if want_compile:
        baselines["torch_compile"] = _torch_compile_step(theta, args)
    info = compare(
        _steps_fn(theta, args, steps_cpp, "cpp"),
        baselines=baselines,
        check=_check_against_reference(theta, args),
    )
    if smoke:
        return
    ex = compare.benchmark.extra_info
    us = info["symkern_ms"] * 1e3 / steps_cpp
    ex["symkern_us_per_step"] = us
    ex["torch_eager_us_per_step"] = info["torch_eager_ms"] * 1e3 / steps_eager
    ex["speedup_per_step_vs_torch_eager"] = ex["torch_eager_us_per_step"] / us
    ex["steps_per_call_cpp"] = steps_cpp
    ex["steps_timed_eager"] = steps_eager
    ex["target_us_per_step"] = 60.0 if N >= 5000 else 3.0
    ex["isa"] = symkern._C.particle_isa()
    ex["threads"] = symkern._C.build_info()["max_threads"]
    if want_compile:
        ex["torch_compile_us_per_step"] = info["torch_compile_ms"] * 1e3
        ex["speedup_per_step_vs_torch_compile"] = ex["torch_compile_us_per_step"] / us
    else:
        ex["torch_compile"] = (
            "not timed: set SYMKERN_BENCH_TORCH_COMPILE=1 (compiling the autograd + Philox step "
            "takes minutes on 2 cores)"
        )
    print(
        f"\n  N={N} {scheme}: cpp {us:.2f} us/step, eager {ex['torch_eager_us_per_step']:.0f} "
        f"us/step, x{ex['speedup_per_step_vs_torch_eager']:.0f}"
    )


def test_particle_grid_120_runs(compare, smoke):
    """4 schemes × 3 teachers × 10 seeds (run_ids) at N = 500 in one call vs 120 eager runs."""
    N = 8 if smoke else 500
    steps = 2 if smoke else 200
    seeds = 2 if smoke else 10
    schemes = ["vanilla", "DA", "FA", "EA"]
    runs = [(s, t, k) for s in schemes for t in TEACHERS for k in range(seeds)]
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
    one = dict(args, teacher=teacher[:1], teacher_weights=weights[:1], scheme=runs[0][0],
               run_ids=torch.tensor([0]), project_noise=False)  # fmt: skip
    steps_eager = 1 if smoke else 3

    def check():
        ref = symkern.particle_steps(theta[:, :16].double(), UNIT, steps=3, backend="torch", **args)
        out = symkern.particle_steps(theta[:, :16], UNIT, steps=3, backend="cpp", **args)
        assert_close(out.theta.double(), ref.theta, rtol=1e-4, atol=1e-4)

    info = compare(
        _steps_fn(theta, args, steps, "cpp"),
        baselines={"torch_eager_one_run": _steps_fn(theta[:1], one, steps_eager, "torch")},
        check=check,
    )
    if smoke:
        return
    ex = compare.benchmark.extra_info
    cpp_us = info["symkern_ms"] * 1e3 / steps  # all R runs, per step
    eager_one = info["torch_eager_one_run_ms"] * 1e3 / steps_eager
    ex["note"] = (f"eager: one run (R=1) timed for {steps_eager} steps and multiplied by {R}; "
                  f"cpp: all {R} runs in one call, {steps} steps")  # fmt: skip
    ex["symkern_us_per_step_all_runs"] = cpp_us
    ex["torch_eager_us_per_step_all_runs_est"] = eager_one * R
    ex["speedup_vs_eager_loop"] = eager_one * R / cpp_us
    ex["runs"] = R
    print(
        f"\n  R={R} N={N}: cpp {cpp_us:.1f} us/step for all runs, eager loop est "
        f"{eager_one * R:.0f} us/step, x{eager_one * R / cpp_us:.0f}"
    )
