"""Tuning sweep of the Triton particle paths on a GPU: one device call, many variants.

    python bench/tune_particles_gpu.py [--out DIR] [--only split,grid,two_pass]

1. split (paper regime: matrix unit, C2, B = 20): µs/step of the fused kernel (one
   program per run) and of the split path at several programs per run P, over N and R, with
   split == fused (float32, same arithmetic up to the order of the particle sum) checked first
   and the split path against the float64 reference at N = 5000;
2. grid: the paper grid's cells as the teacher-student experiment runs them, R = 120 runs (4
   schemes x 3 teachers x 10 seeds; here the 4 schemes x 30 seeds of one teacher) at its larger
   N, fused against split at P = 2 ... 16: the auto rule splits only when 2R < SMs, and at R = 64
   the split path was 3.3x faster (2026-11-24), so does it pay at R = 120 too?
3. two-pass tiles (GPU regime: standard unit, d = 100, c = 1, B = 1e4, N = 1e6, TF32): ms/step
   for (batch block, particle block, warps, stages) of the forward kernel with the backward at
   its default, and of the backward with the forward at its default.

Every compile happens first, in a pool of processes (the kernels land in Triton's on-disk
cache), so the timed loop in this process compiles nothing. Prints a line per variant; the
numbers go to DIR/tune.json, rewritten after each. Timings: CUDA events around whole calls,
median of 3 after one warm-up call.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PAPER = dict(alpha=50.0, tau=1e-4, beta=1e-6, batch=20, sigma_pi=4.0, seed=0)
SPLIT_NS = (256, 512, 2000, 5000, 20000)
SPLIT_PS = (None, 16, 64)  # None: the launcher's choice
SPLIT_RS = (4, 16, 64)  # N = 5000: when do the runs alone fill the GPU?
GRID_R, GRID_NS, GRID_PS = 120, (500, 1000, 5000), (2, 4, 8, 16)
GRID_SCHEMES = ("vanilla", "DA", "FA", "EA")
LARGE = dict(N=1_000_000, B=10_000, d=100)
FWD_CFGS = [(64, 64, 8, 3), (128, 64, 8, 3), (128, 128, 8, 2), (256, 64, 8, 2)]
BWD_CFGS = [(64, 64, 8, 3), (64, 128, 8, 3), (128, 128, 8, 2), (32, 128, 8, 3)]


def _paper_problem(R: int, N: int, scheme):
    from symkern import groups
    from symkern.meanfield import MatrixUnit, Teacher
    from symkern.meanfield.trainer import initial_particles
    from symkern.ops.particles import particle_problem

    unit = MatrixUnit(2, 2)
    theta = initial_particles(R, N, unit.D, seed=0).to("cuda", torch.float32)
    args = dict(PAPER, unit=unit, teacher=Teacher.paper("WI").particles, group=groups.c2_swap(),
                scheme=scheme)  # fmt: skip
    return theta, args, particle_problem(theta, steps=1, **args)


def _large_problem():
    from symkern.meanfield import StandardUnit
    from symkern.ops.particles import particle_problem

    unit = StandardUnit(d=LARGE["d"], c=1, activation="tanh")
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(4, unit.D, generator=g, dtype=torch.float64)
    theta = 0.3 * torch.randn(1, LARGE["N"], unit.D, generator=g, dtype=torch.float64)
    theta = theta.to("cuda", torch.float32)
    args = dict(unit=unit, teacher=teacher, alpha=1.0, tau=1e-4, beta=1e-6, batch=LARGE["B"],
                sigma_pi=1.0, seed=0)  # fmt: skip
    return theta, particle_problem(theta, steps=3, **args)


def _split_call(R, N, scheme, path, P, steps):
    from symkern.backends.triton.particles import particle_steps_triton

    theta, _, problem = _paper_problem(R, N, scheme)
    return lambda: particle_steps_triton(theta, problem, 0, steps, steps, path=path, split=P)


def _large_call(cfg):
    from symkern.backends.triton.particles import particle_steps_triton

    theta, problem = _large_problem()
    return lambda: particle_steps_triton(theta, problem, 0, 3, 3, path="two_pass",
                                         allow_tf32=True, tile_config=cfg)  # fmt: skip


def _cases(parts):
    """(part, builder args) of every timed variant of the given parts."""
    cases = []
    if "grid" in parts:
        # one scheme per run, cycling as the experiment's run list does
        schemes = tuple(GRID_SCHEMES[r % 4] for r in range(GRID_R))
        for N in GRID_NS:
            steps = 50 if N <= 1000 else 20
            cases.append(("split", (GRID_R, N, schemes, "fused", None, steps)))
            for P in GRID_PS:
                cases.append(("split", (GRID_R, N, schemes, "split", P, steps)))
    if "split" not in parts:
        return cases + _two_pass_cases() if "two_pass" in parts else cases
    for scheme in ("vanilla", "DA"):
        for N in SPLIT_NS:
            steps = 200 if N <= 2000 else 50
            cases.append(("split", (1, N, scheme, "fused", None, steps)))
            for P in SPLIT_PS:
                if P is None or P <= (N + 31) // 32:
                    cases.append(("split", (1, N, scheme, "split", P, steps)))
    for R in SPLIT_RS:
        cases.append(("split", (R, 5000, "vanilla", "fused", None, 20)))
        cases.append(("split", (R, 5000, "vanilla", "split", None, 20)))
    return cases + _two_pass_cases() if "two_pass" in parts else cases


def _two_pass_cases():
    return [("two_pass", ({"fwd": cfg},)) for cfg in FWD_CFGS] + [
        ("two_pass", ({"bwd": cfg},)) for cfg in BWD_CFGS[1:]
    ]


def _build(part, args):
    return _split_call(*args) if part == "split" else _large_call(*args)


def _compile_one(case):
    part, args = case
    try:
        _build(part, args)()
        torch.cuda.synchronize()
        return None
    except Exception as exc:  # a config that does not compile is reported, not fatal
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def _time(fn) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _checks() -> list[str]:
    """split == fused at N = 5000 (3 steps, DA and vanilla); split vs float64 at N = 5000."""
    import symkern
    from symkern.backends.triton.particles import particle_steps_triton
    from symkern.testing import assert_close

    lines = []
    for scheme in ("vanilla", "DA", "FA", "EA"):
        theta, args, problem = _paper_problem(2, 5000, scheme)
        fused = particle_steps_triton(theta, problem, 0, 3, 1, path="fused")
        split = particle_steps_triton(theta, problem, 0, 3, 1, path="split")
        # two float32 results (assert_close takes its reference in float64)
        assert_close(split[0], fused[0].double(), rtol=1e-4, atol=1e-5, msg=f"{scheme} theta: ")
        assert_close(split[2], fused[2].double(), rtol=1e-4, atol=1e-7, msg=f"{scheme} loss: ")
        ref = symkern.particle_steps(theta.double().cpu(), steps=3, backend="torch", **args)
        assert_close(split[0].double().cpu(), ref.theta, rtol=1e-4, atol=1e-4, msg=f"{scheme}: ")
        lines.append(f"check {scheme}: split == fused == float64 reference (N = 5000, R = 2)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "device-out"))
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--only", default="split,grid,two_pass",
                    help="comma-separated parts to run: split, grid, two_pass")  # fmt: skip
    opts = ap.parse_args()
    parts = set(opts.only.split(","))
    if not parts or not parts <= {"split", "grid", "two_pass"}:
        ap.error(f"--only takes split, grid and / or two_pass, got {opts.only!r}")
    os.makedirs(opts.out, exist_ok=True)
    cases = _cases(parts)
    t0 = time.time()
    with mp.get_context("spawn").Pool(opts.workers) as pool:
        errors = pool.map(_compile_one, cases, chunksize=1)
    print(f"compiled {len(cases)} variants in {time.time() - t0:.0f} s", flush=True)
    try:
        for line in _checks() if parts & {"split", "grid"} else []:
            print(line, flush=True)
    except (AssertionError, ValueError) as exc:  # reported; the timings still run
        print(f"CHECK FAILED: {exc}", flush=True)
    rows = []
    out_json = os.path.join(opts.out, "tune.json")
    for case, err in zip(cases, errors, strict=True):
        part, args = case
        ms = None if err else _time(_build(part, args))
        if part == "split" and not isinstance(args[2], str):  # the grid's scheme per run
            args = (*args[:2], "mixed", *args[3:])
        rows.append({"part": part, "args": repr(args), "ms": ms, "error": err})
        if part == "split":
            R, N, scheme, path, P, steps = args
            us = "-" if ms is None else f"{ms * 1e3 / steps:9.1f}"
            print(f"split  R={R:3d} N={N:6d} {scheme:7s} {path:6s} P={P!s:5s} us/step {us}"
                  + (f"  {err}" if err else ""), flush=True)  # fmt: skip
        else:
            step = "-" if ms is None else f"{ms / 3:8.2f}"
            print(f"two_pass {args[0]} ms/step {step}" + (f"  {err}" if err else ""), flush=True)
        # after every row, atomically: a call cut at its time limit keeps what it measured
        with open(out_json + ".tmp", "w") as fh:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, fh, indent=1)
        os.replace(out_json + ".tmp", out_json)


if __name__ == "__main__":
    main()
