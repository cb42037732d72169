"""What the Triton compiler makes of our kernels for a GPU, checked without one.

Triton's combine pass rewrites ``tl.sum(x[:, :, None] * y[None, :, :], axis=1)`` into a matrix
product (``tt.dot``), and up to Triton 3.6 that product is TF32 for float32 on a GPU: 10-bit
mantissas, ~1e-3 relative error. The interpreter never shows it (it runs the sum as written).
It was found on an H100 (2026-11-22): the float32 mirror sweep of a factorisation was 2e-4 off
the float64 reference while the interpreter agreed with it to 1e-7.

The kernels below use plain multiply-add reductions only (no ``tl.dot``) and promise IEEE
float32. Each is compiled here for sm_90 with the arguments its launcher passes on a real call,
and its Triton IR must contain no ``tt.dot``. The two-pass particle kernels (the GPU's large-N
path, which write TF32 ``tl.dot`` products on purpose and have never run on a GPU) are compiled
for sm_90 as the launcher configures them on CUDA: they must compile, with exactly the products
their source writes. The compiling runs in a subprocess without
``TRITON_INTERPRET`` (under the interpreter the kernels are not compilable JIT functions); the
launchers are called directly with the kernel replaced by a recorder, so nothing runs.

The same compiles check shared memory: a launch config whose kernel needs more than the H100's
227 KiB per block compiles fine and fails only at launch on a GPU (OutOfResources). Configs that
once needed 248-456 KiB, and the worst case of each two-pass tile regime, are compiled as their
launchers now configure them for CUDA and must fit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

_PTR = {
    torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32",
    torch.float64: "*fp64", torch.int32: "*i32", torch.int64: "*i64",
    torch.int8: "*i8", torch.uint8: "*u8", torch.bool: "*i1",
}  # fmt: skip


class _Recorder:
    """Stands in for a kernel: records the launch's arguments instead of running it."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.calls: list[tuple[tuple, dict]] = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((args, dict(kwargs)))


def _triton_ir(kernel, args: tuple, kwargs: dict) -> str:
    """Triton IR (after the combine pass) of ``kernel`` compiled for sm_90 with these launch
    arguments: tensors become typed pointers, ints i32/i64, floats fp32, constexprs constants."""
    return _compile_sm90(kernel, args, kwargs).asm["ttir"]


def _compile_sm90(kernel, args: tuple, kwargs: dict):
    """``kernel`` compiled for sm_90 with these launch arguments (see _triton_ir)."""
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    params = list(inspect.signature(kernel.fn).parameters.values())
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
    bound = dict(zip([p.name for p in params], args, strict=False))
    bound.update(kwargs)
    signature, constexprs = {}, {}
    for p in params:
        value = bound[p.name]
        if "constexpr" in str(p.annotation):
            constexprs[p.name] = value
            signature[p.name] = "constexpr"
        elif isinstance(value, torch.Tensor):
            signature[p.name] = _PTR[value.dtype]
        elif isinstance(value, bool):
            signature[p.name] = "i1"
        elif isinstance(value, int):
            signature[p.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
        elif isinstance(value, float):
            signature[p.name] = "fp32"
        else:
            raise TypeError(f"{p.name}: cannot type {type(value).__name__} for compilation")
    src = ASTSource(kernel, signature, constexprs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def _record(module, kernel_names, call, *, all_launched=True) -> dict[str, _Recorder]:
    """Run ``call()`` with every named kernel of ``module`` replaced by a recorder (each of them
    must have been launched, unless ``all_launched`` is false)."""
    recorders = {name: _Recorder(getattr(module, name)) for name in kernel_names}
    for name, rec in recorders.items():
        setattr(module, name, rec)
    try:
        call()
    finally:
        for name, rec in recorders.items():
            setattr(module, name, rec.kernel)
    for name, rec in recorders.items():
        assert rec.calls or not all_launched, f"{name} was not launched"
    return recorders


def _dots(recorder: _Recorder, **override) -> list[int]:
    """tt.dot count in the Triton IR of every recorded launch (``override``: launch keywords
    replaced before compiling, e.g. the GPU's PRECISION)."""
    return [
        _triton_ir(recorder.kernel, a, {**k, **override}).count("tt.dot") for a, k in recorder.calls
    ]


def _explicit_dots(kernel) -> int:
    """How many ``tl.dot`` calls the kernel's own source writes (no loops unrolled there)."""
    import inspect

    return inspect.getsource(kernel.fn).count("tl.dot(")


def _cases():
    """(name, module, kernel, launcher call); shapes where every dimension of the 3-D
    broadcast-multiply-sums is >= 16, where the rewrite applies."""
    import symkern.backends.triton.mirror_sweep as ms
    import symkern.backends.triton.particles as tp
    from symkern import groups
    from symkern.meanfield import MatrixUnit, StandardUnit
    from symkern.meanfield.trainer import initial_particles
    from symkern.mirror.sweeps import sweep_problem
    from symkern.ops.particles import particle_problem

    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return (0.3 * torch.randn(*shape, generator=g, dtype=torch.float64)).float()

    def sweep(model, params, batch, **kw):
        p, problem = sweep_problem(model, params, 0.1, 0.01, batch=batch, noise=0.1, **kw)
        return lambda: ms.mirror_sweep_triton(p, problem, 0, 3, 1)

    yield (
        "mirror_sweep rescaling",
        ms,
        "_rescaling_kernel",
        sweep("rescaling", {"u": r(2, 40), "w": r(2, 40)}, 16, target=r(40)),
    )
    yield "mirror_sweep factorization", ms, "_factorization_kernel", sweep(
        "factorization", {"U": r(2, 20, 16), "W": r(2, 17, 16)}, None, target=r(20, 17),
        offset=r(20, 16),
    )  # fmt: skip
    yield "mirror_sweep mlp", ms, "_mlp_kernel", sweep(
        "mlp", {"W1": r(2, 17, 20), "b1": r(2, 17), "a": r(2, 17)}, 16,
        target={"W1": r(16, 20), "b1": r(16), "a": r(16)}, activation="tanh",
    )  # fmt: skip

    def particles(unit, group, scheme, path="fused"):
        theta = initial_particles(2, 40, unit.D, seed=3).float()
        problem = particle_problem(
            theta, unit, teacher=r(3, unit.D), group=group, scheme=scheme, alpha=1.0,
            tau=1e-3, beta=1e-4, batch=16, sigma_pi=1.0, seed=0, steps=2,
        )  # fmt: skip
        if path == "split":  # one step: a PHASE 1 and a PHASE 2 launch, 2 programs per run
            return lambda: tp.particle_steps_triton(theta, problem, 0, 1, 1, path=path, split=2)
        return lambda: tp.particle_steps_triton(theta, problem, 0, 2, 1, path=path)

    c4, c16 = groups.cyclic(4), groups.cyclic(16)
    yield (
        "particles matrix 4x4 FA",
        tp,
        "_particle_steps_fused_kernel",
        particles(MatrixUnit(4, 4), (c4, c4), "FA"),
    )
    yield (
        "particles matrix 4x4 FA split",
        tp,
        "_particle_steps_fused_kernel",
        particles(MatrixUnit(4, 4), (c4, c4), "FA", path="split"),
    )
    yield (
        "particles standard d=16 c=16 EA",
        tp,
        "_particle_steps_fused_kernel",
        particles(
            StandardUnit(d=16, c=16, activation="tanh"), (c16, c16.group.trivial_rep(16)), "EA"
        ),
    )


TWO_PASS_KERNELS = {  # kernel: launch keywords as on a GPU (float32 products on TF32 cores)
    "_tp_data_kernel": {},
    "_tp_forward_kernel": {"PRECISION": "tf32"},
    "_tp_residual_kernel": {},
    "_tp_backward_kernel": {"PRECISION": "tf32"},
}


def _two_pass_dots() -> dict[str, list]:
    """The GPU large-N path of particle_steps (four kernels per step, explicit tl.dot), never
    run on a GPU so far: {"<activation> <kernel>": [tt.dot per launch, tl.dot in the source]}."""
    import symkern.backends.triton.particles as tp
    from symkern.meanfield import StandardUnit
    from symkern.meanfield.trainer import initial_particles
    from symkern.ops.particles import particle_problem

    out = {}
    for activation in ("tanh", "relu"):
        unit = StandardUnit(d=100, c=1, activation=activation)
        theta = initial_particles(1, 300, unit.D, seed=3).float()
        teacher = torch.randn(4, unit.D, generator=torch.Generator().manual_seed(0))
        problem = particle_problem(theta, unit, teacher=teacher, batch=200, steps=1)
        recorders = _record(
            tp, TWO_PASS_KERNELS,
            lambda th=theta, pb=problem: tp.particle_steps_triton(th, pb, 0, 1, 1, path="two_pass"),
        )  # fmt: skip
        for name, override in TWO_PASS_KERNELS.items():
            rec = recorders[name]
            out[f"{activation} {name}"] = [_dots(rec, **override), _explicit_dots(rec.kernel)]
    return out


def _main() -> None:
    implicit = {name: _dots(_record(m, [k], call)[k]) for name, m, k, call in _cases()}
    print(json.dumps({"implicit": implicit, "explicit": _two_pass_dots()}))


H100_SHARED_PER_BLOCK = 232448  # bytes (227 KiB): the opt-in maximum per thread block on sm_90


def _shared_cases():
    """(name, module, kernel, launcher call, launch keywords as on a GPU): float64 / wide configs
    whose launch needed more shared memory than an H100 block has, and the worst case of each
    two-pass tile regime (comments: bytes on sm_90, Triton 3.9)."""
    import symkern.backends.triton.fixed_point as fp
    import symkern.backends.triton.particles as tp
    from symkern.meanfield import StandardUnit
    from symkern.meanfield.trainer import initial_particles
    from symkern.ops.particles import particle_problem

    f64 = torch.float64
    x, basis = torch.zeros(64, 100, dtype=f64), torch.zeros(100, 100, dtype=f64)
    yield (  # BLOCK_D 64 x BLOCK_K 128: 262144
        "project_lowrank float64 k=100 D=100", fp, "_project_lowrank_kernel",
        lambda: fp.project_lowrank_triton(x, basis), {},
    )  # fmt: skip

    def two_pass(unit, dtype):
        theta = initial_particles(1, 300, unit.D, seed=3).to(dtype)
        teacher = torch.zeros(4, unit.D, dtype=f64)
        problem = particle_problem(theta, unit, teacher=teacher, batch=200, steps=1)
        return lambda: tp.particle_steps_triton(theta, problem, 0, 1, 1, path="two_pass")

    # two-pass worst cases (c close to D) of each tile regime; before: 64 x 64 tiles, 3 stages
    gpu = {"num_warps": 8}
    yield (  # 64 x 64 (kept up to D_BLK = 128), 3 stages at c <= 64: 180224
        "two-pass forward float32 d=60 c=60", tp, "_tp_forward_kernel",
        two_pass(StandardUnit(d=60, c=60), torch.float32), {**gpu, "PRECISION": "tf32"},
    )  # fmt: skip
    yield (  # 64 x 64, 2 stages at c > 64 (3 stages: 229376)
        "two-pass forward float32 d=20 c=100", tp, "_tp_forward_kernel",
        two_pass(StandardUnit(d=20, c=100), torch.float32), {**gpu, "PRECISION": "tf32"},
    )  # fmt: skip
    yield (  # 32 x 32 at D_BLK = 256: 196608; before (64 x 64, 3 stages) 311296 at d=150, c=50
        "two-pass backward float32 d=20 c=200", tp, "_tp_backward_kernel",
        two_pass(StandardUnit(d=20, c=200), torch.float32), {**gpu, "PRECISION": "tf32"},
    )  # fmt: skip
    yield (  # 32 x 32, 2 stages; before 253952 (d=100, c=1)
        "two-pass backward float64 d=20 c=100", tp, "_tp_backward_kernel",
        two_pass(StandardUnit(d=20, c=100), f64), gpu,
    )  # fmt: skip
    yield (  # 16 x 16, 2 stages
        "two-pass backward float64 d=20 c=200", tp, "_tp_backward_kernel",
        two_pass(StandardUnit(d=20, c=200), f64), gpu,
    )  # fmt: skip
    # the tuned CUDA float32 tiles (tp.TWO_PASS_CUDA_F32_TILES: D_BLK <= 128, C_BLK <= 16) at
    # the largest D and c they serve (the launcher picks them only for CUDA tensors, so they are
    # passed here): forward 176128, backward 147456
    for which, kernel in (("fwd", "_tp_forward_kernel"), ("bwd", "_tp_backward_kernel")):
        bb, bn, warps, stages = tp.TWO_PASS_CUDA_F32_TILES[which]
        yield (
            f"two-pass {which} float32 tuned CUDA tiles d=100 c=16", tp, kernel,
            two_pass(StandardUnit(d=100, c=16), torch.float32),
            {"BB": bb, "BN": bn, "num_warps": warps, "num_stages": stages, "PRECISION": "tf32"},
        )  # fmt: skip
    unit = StandardUnit(d=4, c=129)
    xs, th = torch.zeros(100, unit.d, dtype=f64), torch.zeros(100, unit.D, dtype=f64)
    g = torch.zeros(100, unit.c, dtype=f64)
    yield (  # 32 x 32 tiles, 3 stages: 282624
        "particle_forward_backward grad_theta float64 d=4 c=129", tp, "_pf_grad_theta_kernel",
        lambda: tp.particle_forward_backward_triton(xs, th, unit, g), gpu,
    )  # fmt: skip


def _shared_main() -> None:
    out = {}
    for name, module, kernel, call, override in _shared_cases():
        # every kernel the launcher launches is recorded (an unrecorded one would try to run)
        names = [n for n in vars(module) if n.startswith(("_tp_", "_pf_")) and n.endswith("kernel")]
        rec = _record(module, names or [kernel], call, all_launched=False)[kernel]
        assert rec.calls, f"{kernel} was not launched"
        args, kwargs = rec.calls[0]
        out[name] = _compile_sm90(rec.kernel, args, {**kwargs, **override}).metadata.shared
    print(json.dumps(out))


def _run_main(*argv: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, __file__, *argv], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def dot_counts() -> dict[str, list[int]]:
    return _run_main()


@pytest.mark.parametrize(
    "case",
    [
        "mirror_sweep rescaling",
        "mirror_sweep factorization",
        "mirror_sweep mlp",
        "particles matrix 4x4 FA",
        "particles matrix 4x4 FA split",
        "particles standard d=16 c=16 EA",
    ],
)
def test_kernel_has_no_implicit_dot(dot_counts, case):
    counts = dot_counts["implicit"][case]
    assert counts and all(n == 0 for n in counts), (
        f"{case}: the compiler turned a broadcast-multiply-sum into tt.dot {counts} (TF32 in "
        "Triton <= 3.6 on a GPU): reduce over the last axis instead (see particles._apply_rows_t)"
    )


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("kernel", list(TWO_PASS_KERNELS))
def test_two_pass_kernels_compile_for_sm90_with_only_their_own_dots(dot_counts, activation, kernel):
    """The two-pass kernels compile for a GPU (TF32 products, as the launcher asks for on CUDA),
    and their IR has exactly the tl.dot products their source writes."""
    counts, written = dot_counts["explicit"][f"{activation} {kernel}"]
    assert counts and all(n == written for n in counts), (kernel, counts, written)


def test_launch_configs_fit_h100_shared_memory():
    """Launch configs that once needed 248-456 KiB of shared memory per block on sm_90 (float64
    tiles, wide two-pass tiles), each two-pass tile regime's worst case (c close to D) and the
    tuned CUDA float32 tiles fit in an H100 block (227 KiB)."""
    shared = _run_main("shared")
    assert len(shared) == 9, shared
    over = {name: n for name, n in shared.items() if n > H100_SHARED_PER_BLOCK}
    assert not over, f"shared memory per block over {H100_SHARED_PER_BLOCK} B on sm_90: {over}"


if __name__ == "__main__":
    _shared_main() if sys.argv[1:] == ["shared"] else _main()
