"""Backend selection (DESIGN.md §3): auto order, forcing, loud failures, no silent fallback."""

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

import symkern
from symkern.backends import registry
from symkern.backends.registry import (
    BackendUnavailableError,
    NoBackendError,
    ReferenceFallbackWarning,
    register_kernel,
    select_kernel,
)
from symkern.testing import TRITON_DEVICE


@pytest.fixture
def test_ops():
    """Register throw-away ops whose kernels say which backend ran; unregister afterwards."""
    added = []

    def add(op, backend, **kw):
        def fn(*args):
            return backend

        register_kernel(op, backend, **kw)(fn)
        added.append((op, backend))

    yield add
    for key in added:
        registry._KERNELS.pop(key, None)
    registry._warned_fallback.clear()


@pytest.fixture
def no_forcing(monkeypatch):
    monkeypatch.delenv("SYMKERN_BACKEND", raising=False)


def test_auto_prefers_cpp_for_cpu_tensors(test_ops, no_forcing):
    for b in ("cpp", "torch"):
        test_ops("_t_auto", b)
    kernel = select_kernel("_t_auto", {"x": torch.randn(3)})
    assert kernel.backend == "cpp"
    assert kernel.fn() == "cpp"


def test_auto_skips_backend_without_kernel_and_says_so(test_ops, no_forcing):
    test_ops("_t_only_torch", "torch")
    with pytest.warns(ReferenceFallbackWarning, match="no cpp kernel for it is implemented"):
        assert select_kernel("_t_only_torch", {"x": torch.randn(3)}).backend == "torch"
    reasons = registry.get_backend("cpp").not_supported_reasons("_t_only_torch", {})
    assert reasons == ["no 'cpp' kernel for op '_t_only_torch' is implemented"]


def test_auto_does_not_pick_triton_interpreter_for_cpu(test_ops, no_forcing, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    for b in ("triton", "torch"):
        test_ops("_t_interp", b)
    with pytest.warns(ReferenceFallbackWarning, match="'_t_interp' runs on the slow torch"):
        assert select_kernel("_t_interp", {"x": torch.randn(3)}).backend == "torch"
    assert select_kernel("_t_interp", {"x": torch.randn(3)}, backend="triton").backend == "triton"


def test_forced_backend_that_cannot_run_fails_loudly(test_ops, no_forcing):
    test_ops("_t_forced", "torch")
    with pytest.raises(BackendUnavailableError, match="'cpp' was forced.*no 'cpp' kernel"):
        select_kernel("_t_forced", {"x": torch.randn(3)}, backend="cpp")


def test_forced_backend_wrong_device_fails_loudly(test_ops, no_forcing):
    for b in ("cpp", "torch"):
        test_ops("_t_device", b)
    x = torch.empty(3, device="meta")
    with pytest.raises(BackendUnavailableError, match="x: tensor on meta; cpp runs CPU tensors"):
        select_kernel("_t_device", {"x": x}, backend="cpp")


def test_forced_triton_without_interpreter_or_gpu_fails(test_ops, no_forcing, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a GPU makes triton available")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    test_ops("_t_triton", "triton")
    with pytest.raises(BackendUnavailableError, match="no CUDA device"):
        select_kernel("_t_triton", {"x": torch.randn(3)}, backend="triton")


def test_env_var_forces_backend(test_ops, monkeypatch):
    for b in ("cpp", "torch"):
        test_ops("_t_env", b)
    monkeypatch.setenv("SYMKERN_BACKEND", "torch")
    assert select_kernel("_t_env", {"x": torch.randn(3)}).backend == "torch"
    # an explicit backend= argument wins over the environment
    assert select_kernel("_t_env", {"x": torch.randn(3)}, backend="cpp").backend == "cpp"


def test_unknown_backend_name_rejected(test_ops, monkeypatch):
    test_ops("_t_name", "torch")
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        select_kernel("_t_name", {}, backend="cuda")
    monkeypatch.setenv("SYMKERN_BACKEND", "fortran")
    with pytest.raises(ValueError, match="environment variable SYMKERN_BACKEND must be.*'fortran'"):
        select_kernel("_t_name", {})


def test_env_var_does_not_force_host_planning(monkeypatch):
    """SYMKERN_BACKEND=triton forces the tensor ops, not the host-side orbit_labels plan (numpy,
    no triton kernel): orbits, the orbit average and the fixed-point basis of a permutation rep
    still work with the variable set — the orbit average on the forced backend itself."""
    from symkern import groups

    monkeypatch.setenv("SYMKERN_BACKEND", "triton")
    rep = groups.symmetric(3)  # a fresh rep: nothing cached yet
    assert [o.indices.tolist() for o in symkern.orbits(rep)] == [[0, 1, 2]]
    # where triton runs: CUDA on a GPU machine, the interpreter (conftest) on CPU tensors else
    x = torch.randn(4, 3, dtype=torch.float64, device=TRITON_DEVICE)
    want = x.mean(1, keepdim=True).expand(4, 3)
    torch.testing.assert_close(symkern.orbit_average(x, rep), want)
    assert symkern.fixed_point_basis(groups.cyclic(4)).shape == (4, 1)
    with pytest.raises(BackendUnavailableError, match="'triton' was forced"):
        select_kernel("orbit_labels", {"perms": None, "signs": None})  # the op itself, forced


def test_no_backend_lists_every_reason(test_ops, no_forcing):
    test_ops("_t_none", "cpp", dtypes=(torch.float32,))
    with pytest.raises(NoBackendError) as err:
        select_kernel("_t_none", {"x": torch.randn(3, dtype=torch.float64)})
    msg = str(err.value)
    assert "cpp: x: dtype torch.float64 not supported (supports float32)" in msg
    assert "torch: no 'torch' kernel for op '_t_none'" in msg
    assert "triton:" in msg


def test_kernel_check_reasons_reported(test_ops, no_forcing):
    register_kernel("_t_check", "cpp", check=lambda inputs: ["rank too high"])(lambda: "cpp")
    test_ops("_t_check", "torch")
    try:
        with pytest.warns(ReferenceFallbackWarning, match="cpp kernel cannot run this call: rank"):
            assert select_kernel("_t_check", {"x": torch.randn(2)}).backend == "torch"
        with pytest.raises(BackendUnavailableError, match="rank too high"):
            select_kernel("_t_check", {"x": torch.randn(2)}, backend="cpp")
    finally:
        registry._KERNELS.pop(("_t_check", "cpp"))


def test_reference_fallback_when_cpp_declines_the_call_warns_once_per_reason(test_ops, no_forcing):
    """cpp is available but cannot run this call (a float16 tensor): auto's reference is not
    silent (DESIGN §3); the warning names the reason, once per op and reason, and points at the
    caller's line; backend="torch" is an explicit choice and says nothing."""
    test_ops("_t_declined", "cpp", dtypes=(torch.float32, torch.float64))
    test_ops("_t_declined", "torch")
    half = {"x": torch.randn(2, dtype=torch.float16)}
    with pytest.warns(ReferenceFallbackWarning, match="dtype torch.float16 not supported") as rec:
        assert select_kernel("_t_declined", half).backend == "torch"
    assert rec[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        select_kernel("_t_declined", half)  # the same reason again: silent
        assert select_kernel("_t_declined", {"x": torch.randn(2)}).backend == "cpp"
        assert select_kernel("_t_declined", half, backend="torch").backend == "torch"
    with pytest.warns(ReferenceFallbackWarning, match="bfloat16"):  # another reason
        select_kernel("_t_declined", {"x": torch.randn(2, dtype=torch.bfloat16)})


def test_reference_fallback_warns_once_when_extension_missing(test_ops, no_forcing, monkeypatch):
    for b in ("cpp", "torch"):
        test_ops("_t_fallback", b)
    monkeypatch.setattr(
        registry._BACKENDS["cpp"], "availability_reasons", lambda: ["extension missing (test)"]
    )
    with pytest.warns(ReferenceFallbackWarning, match="extension missing"):
        assert select_kernel("_t_fallback", {"x": torch.randn(2)}).backend == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        select_kernel("_t_fallback", {"x": torch.randn(2)})  # second call: silent


def test_register_rejects_unknown_backend_and_double_registration(test_ops):
    with pytest.raises(ValueError, match="backend must be one of"):
        register_kernel("_t_reg", "cuda")
    test_ops("_t_reg", "torch")
    with pytest.raises(RuntimeError, match="already registered"):
        register_kernel("_t_reg", "torch")(lambda: None)


def test_cpp_extension_is_built():
    """The install (pip install -e .) must build symkern._C; a broken build must not pass quietly
    as a slower reference run. Set SYMKERN_ALLOW_NO_CPP=1 only on machines without a compiler."""
    if os.environ.get("SYMKERN_ALLOW_NO_CPP") == "1":
        pytest.skip("SYMKERN_ALLOW_NO_CPP=1")
    assert registry.get_backend("cpp").availability_reasons() == []
    build = registry.get_backend("cpp").extension().build_info()
    assert build["max_threads"] >= 1 and isinstance(build["openmp"], bool)


def test_info_reports_backends():
    data = symkern.info()
    assert data["symkern"] == symkern.__version__
    names = [b["name"] for b in data["backends"]]
    assert names == ["cpp", "triton", "torch"]
    torch_be = data["backends"][-1]
    assert torch_be["available"] and torch_be["reasons"] == []
    for b in data["backends"]:
        assert b["available"] == (not b["reasons"])


def test_cli_info_runs():
    out = subprocess.run(
        [sys.executable, "-m", "symkern.cli", "info", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    data = json.loads(out.stdout)
    assert {b["name"] for b in data["backends"]} == {"cpp", "triton", "torch"}
    human = subprocess.run(
        [sys.executable, "-m", "symkern.cli", "info"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "backends (auto priority order):" in human.stdout
    assert "OpenMP:" in human.stdout and "triton:" in human.stdout


def test_cli_unknown_experiment_is_an_error():
    out = subprocess.run(
        [sys.executable, "-m", "symkern.cli", "run", "no-such-thing"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_cli_passes_options_after_name_to_the_experiment():
    out = subprocess.run(
        [sys.executable, "-m", "symkern.cli", "run", "teacher-student", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0
    assert "--resume" in out.stdout and "--preset" in out.stdout


def test_first_op_call_does_not_import_dynamo():
    """symkern's torch.library ops (symkern.ops._common.custom_op) call their implementation
    directly until torch._dynamo is imported. In a fresh process: every one of them carries that
    wrapper, eager calls of the orbit, fixed-point and particle-forward ops (forward and backward)
    leave torch._dynamo unimported (torch's own wrapper imports it on an op's first call: ~2.2 s),
    and torch.compile afterwards still traces and runs them, with the results of eager mode, and
    from then on through torch's own torch._dynamo.disable."""
    code = r"""
import sys, torch, symkern
from torch._library.custom_ops import CustomOpDef
from symkern import groups
from symkern.meanfield import MatrixUnit, initial_particles
from symkern.ops import _common, fixed_point, mirror, orbit, particles

ops = [v for m in (fixed_point, mirror, orbit, particles) for v in vars(m).values()
       if isinstance(v, CustomOpDef)]
assert len(ops) == 7, ops
for op in ops:
    for fn in op._backend_fns.values():
        cached = getattr(fn.__wrapped__, "__dynamo_disable")
        assert isinstance(cached, _common._DisableDynamoOnceImported), (op, cached)

g = torch.Generator().manual_seed(0)
x = torch.randn(6, 5, generator=g)
z = torch.randn(6, 9, generator=g)
s5, so3 = groups.symmetric(5), groups.so3().tensor_power(2)
unit = MatrixUnit(2, 2)
theta = initial_particles(1, 7, unit.D, seed=0)[0].requires_grad_()
inputs = torch.randn(5, 2, generator=g, dtype=torch.float64)

def f(x, z, theta):
    return (symkern.orbit_average(x * 2, s5).sum() + symkern.project_fixed(z, so3).sum(),
            symkern.model_output(inputs, theta, unit).sum())

eager = f(x, z, theta)
eager[1].backward()
symkern.orbit_average(x, s5, out=torch.empty_like(x))
symkern.project_fixed(z, so3, out=torch.empty_like(z))
assert "torch._dynamo" not in sys.modules, "an eager symkern op imported torch._dynamo"
compiled = torch.compile(f, fullgraph=True, backend="eager")(x, z, theta)
assert "torch._dynamo" in sys.modules
assert all(torch.allclose(a, b) for a, b in zip(compiled, eager))
for op in (orbit._orbit_mean_op, fixed_point._project_lowrank_op, particles._particle_forward_op):
    for fn in op._backend_fns.values():  # ran since the import: now torch's own disabled fn
        cached = getattr(fn.__wrapped__, "__dynamo_disable")
        assert not isinstance(cached, _common._DisableDynamoOnceImported), (op, cached)
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stdout + res.stderr[-3000:]


def test_triton_interpret_is_read_as_triton_reads_it(monkeypatch):
    """TRITON_INTERPRET: Triton's own true words (1, true, yes, on, y; any case) turn the
    interpreter on, its false words off; anything else (Triton would read it as false) is a
    ValueError naming the variable, and symkern info reports it instead of 'off'."""
    from symkern.backends.registry import triton_interpreter_enabled

    for v in ("1", "true", "True", "YES", "on", "y"):
        monkeypatch.setenv("TRITON_INTERPRET", v)
        assert triton_interpreter_enabled(), v
    for v in ("0", "false", "Off", "no", ""):
        monkeypatch.setenv("TRITON_INTERPRET", v)
        assert not triton_interpreter_enabled(), v
    for v in ("bogus", " 1", "2"):
        monkeypatch.setenv("TRITON_INTERPRET", v)
        with pytest.raises(ValueError, match="environment variable TRITON_INTERPRET must be"):
            triton_interpreter_enabled()
        if not torch.cuda.is_available():
            assert "INVALID" in symkern.info()["triton_interpreter"]
    monkeypatch.setenv("SYMKERN_BACKEND", "fortran")
    assert symkern.info()["forced_backend"].startswith("INVALID: the environment variable")


def test_triton_kernels_load_when_the_interpreter_is_turned_on_later():
    """A process that asked for the triton backend while it was unavailable (symkern.info(), or
    an auto dispatch) and then sets TRITON_INTERPRET=1 gets triton's kernels: the backend was
    marked loaded before its availability check, so a forced call said none was implemented."""
    if torch.cuda.is_available():
        pytest.skip("a GPU makes triton available from the start")
    script = (
        "import os, torch, symkern\n"
        "assert not symkern.info()['backends'][1]['available']\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "x = torch.randn(4, 5)\n"
        "rep = symkern.groups.symmetric(5)\n"
        "out = symkern.orbit_average(x, rep, backend='triton')\n"
        "ref = x.mean(1, keepdim=True).expand(4, 5)\n"
        "assert torch.allclose(out, ref, atol=1e-6), (out, ref)\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SYMKERN_BACKEND")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=300)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
