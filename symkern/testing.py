"""Test and benchmark helpers: one tolerance table, the float64-reference comparison, and the list
of (backend, device) pairs this machine can run.

Every kernel is checked against a reference computed in float64::

    ref = reference_fn(x.double())            # the math, in float64
    out = kernel(x)                           # any backend, any dtype
    assert_close(out, ref)                    # tolerance from out.dtype

The error measure is elementwise ``|out - ref| <= atol * scale + rtol * |ref|`` with
``scale = max|ref|`` by default (so sums with cancellation are judged against the size of the
data, not of a near-zero entry). Where the exact result can be zero (a projection onto a trivial
subspace), pass the size of the inputs as ``scale``: the float64 reference is then rounding noise
(~1e-17) and only the inputs say what "small" means. NaN in ``out`` fails unless it sits where
``ref`` has NaN too; an inf in ``ref`` must be matched by the same inf in ``out``, and an inf in
``out`` where ``ref`` is finite fails (the scale is taken over the finite entries of ``ref``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from symkern.backends.registry import (
    BACKEND_PRIORITY,
    get_backend,
    triton_interpreter_enabled,
)

__all__ = [
    "TOLERANCES",
    "BackendCase",
    "assert_close",
    "assert_usage_error",
    "backend_cases",
    "interrupt_long_call",
    "skip_triton_interpreter_repatching",
    "tolerance",
]

# (rtol, atol relative to max|ref|) per dtype of the value under test.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 2e-6),
    torch.float16: (5e-3, 1e-3),
    torch.bfloat16: (3e-2, 8e-3),
}


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) for values computed in ``dtype``.

    Example::

        >>> from symkern.testing import tolerance
        >>> tolerance(torch.float32), tolerance(torch.float64)
        ((2e-05, 2e-06), (1e-10, 1e-12))
    """
    if dtype not in TOLERANCES:
        raise ValueError(f"no tolerance for dtype {dtype}; known: {list(TOLERANCES)}")
    return TOLERANCES[dtype]


def assert_close(
    actual: torch.Tensor,
    reference: torch.Tensor,
    *,
    dtype: torch.dtype | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    scale: float | None = None,
    msg: str = "",
) -> None:
    """Assert ``actual`` matches a float64 ``reference`` within the tolerance of ``dtype``.

    ``dtype`` defaults to ``actual.dtype`` (the precision the kernel computed in). ``scale``
    defaults to max|reference| (see the module docstring). Shapes must match exactly. Raises
    AssertionError with the worst element's position and the error ratio.

    Example::

        >>> from symkern.testing import assert_close
        >>> ref = torch.tensor([1.0, 2.0], dtype=torch.float64)  # the float64 oracle
        >>> assert_close(ref.float(), ref)  # float32 result within float32 tolerance: silent
        >>> assert_close(torch.tensor([1.0, 2.1]), ref)
        Traceback (most recent call last):
        ...
        AssertionError: mismatch at (1,): actual 2.099999905, reference 2, ...
    """
    if not isinstance(actual, torch.Tensor) or not isinstance(reference, torch.Tensor):
        raise TypeError("assert_close compares two tensors")
    if reference.dtype != torch.float64:
        raise ValueError(f"reference must be float64 (the oracle), got {reference.dtype}")
    if actual.shape != reference.shape:
        raise AssertionError(
            f"{msg}shape {tuple(actual.shape)} != reference {tuple(reference.shape)}"
        )
    d_rtol, d_atol = tolerance(dtype or actual.dtype)
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    a = actual.detach().to(device="cpu", dtype=torch.float64)
    r = reference.detach().to("cpu")
    if a.numel() == 0:
        return
    nan_a, nan_r = torch.isnan(a), torch.isnan(r)
    if not torch.equal(nan_a, nan_r):
        bad = (nan_a != nan_r).nonzero()[0].tolist()
        raise AssertionError(
            f"{msg}NaN mismatch at {bad}: actual {a[tuple(bad)]}, ref {r[tuple(bad)]}"
        )
    # ±inf in the reference must be matched exactly; it must not enter the scale (an infinite
    # scale would admit any error, and inf − inf is NaN, which no comparison flags)
    inf_r = torch.isinf(r)
    wrong_inf = inf_r & (a != r)
    if wrong_inf.any():
        bad = wrong_inf.nonzero()[0].tolist()
        raise AssertionError(
            f"{msg}inf mismatch at {bad}: actual {a[tuple(bad)]}, ref {r[tuple(bad)]}"
        )
    finite = torch.isfinite(r)
    if scale is None:
        scale = r[finite].abs().max().item() if finite.any() else 0.0
    # a NaN here would make every comparison below False: a check that cannot fail
    for value, name in ((scale, "scale"), (rtol, "rtol"), (atol, "atol")):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"assert_close: {name} must be finite and >= 0, got {value!r}")
    allowed = atol * scale + rtol * r.abs()
    err = (a - r).abs()
    excess = torch.where(finite, err - allowed, torch.zeros_like(err))
    if (excess > 0).any():
        worst = excess.argmax()
        idx = tuple(int(i) for i in torch.unravel_index(worst, excess.shape))
        raise AssertionError(
            f"{msg}mismatch at {idx}: actual {a[idx].item():.10g}, reference {r[idx].item():.10g}, "
            f"|err| {err[idx].item():.3g} > allowed {allowed[idx].item():.3g} "
            f"(rtol={rtol:g}, atol={atol:g} x max|ref|={scale:.3g}); "
            f"{int((excess > 0).sum())} of {excess.numel()} elements out of tolerance"
        )


# Where the Triton kernels run in tests: on the GPU when there is one, otherwise on CPU tensors
# under the interpreter (tests/conftest.py sets TRITON_INTERPRET=1 there).
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class BackendCase:
    """One (backend, device) pair available on this machine, for parametrising tests/bench.

    Example::

        >>> from symkern.testing import BackendCase
        >>> case = BackendCase("torch", "cpu")
        >>> case.backend, case.device, case.id  # id: the test parameter id
        ('torch', 'cpu', 'torch-cpu')
        >>> case == BackendCase("torch", "cpu"), len({case, BackendCase("torch", "cpu")})
        (True, 1)
    """

    backend: str
    device: str

    @property
    def id(self) -> str:
        return f"{self.backend}-{self.device}"


def backend_cases(include_reference: bool = True) -> list[BackendCase]:
    """Every (backend, device) pair this machine can run, in priority order.

    CPU: cpp when the extension imports; triton when ``TRITON_INTERPRET=1``; torch.
    CUDA (when present): triton and torch.

    Example::

        >>> from symkern.testing import BackendCase, backend_cases
        >>> BackendCase("torch", "cpu") in backend_cases()  # the reference runs everywhere
        True
        >>> any(c.backend == "torch" for c in backend_cases(include_reference=False))
        False
    """
    cases = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for name in BACKEND_PRIORITY:
            if name == "torch" and not include_reference:
                continue
            if get_backend(name).availability_reasons():
                continue
            if name == "cpp" and device != "cpu":
                continue
            if name == "triton" and device == "cpu" and not triton_interpreter_enabled():
                continue
            cases.append(BackendCase(name, device))
    return cases


def skip_triton_interpreter_repatching() -> bool:
    """Make the Triton interpreter skip re-patching ``triton.language`` on nested device-function
    calls it has already patched for the running kernel launch. Returns whether it applied.

    Why: Triton's interpreter (``triton.runtime.interpreter``, 3.6-3.9) swaps the language's
    builtins for interpreted ones when a kernel launches (``GridExecutor.__call__`` →
    ``_patch_lang``, undone when the launch ends) and again on EVERY ``@triton.jit`` device-function
    call inside it (``InterpretedFunction.__call__``), each time walking ``tl``, ``tl.math`` and
    ``tl.tensor`` with ``inspect.getmembers`` (~0.3 ms). Once a launch has patched the modules a
    device function's globals reach (``tl`` for symkern's kernels, ``tl.core`` for Triton's own
    ``tl.sum``, ``tl.zeros``...), patching them again changes nothing: the builtins are already
    replaced, and ``is_builtin`` is false for the replacements. Skipping it took the 100-step
    particle tests from 132 to 77 s (2026-11-23, 2-core EPYC, Triton 3.9; 185k of these calls).
    A device function reaching a module not yet patched in the launch is patched as before, and
    nothing changes outside a launch or when the interpreter is not in use.

    Only for tests and the bench smoke run (their conftest files call it), never in the library.
    """
    import inspect

    try:
        import triton.language as tl
        import triton.runtime.interpreter as interp
    except ImportError:
        return False
    original = getattr(interp, "_patch_lang", None)
    if original is None or getattr(original, "_symkern_once", False):
        return False
    patched: list[set[int]] = []  # per running launch: the lang modules patched so far in it

    def langs_of(fn) -> frozenset[int]:
        return frozenset(
            id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core)
        )

    def patch_lang_once(fn):
        langs = langs_of(fn)
        if patched and langs <= patched[-1]:
            return interp._LangPatchScope()  # a device call in a launch: nothing new to patch
        scope = original(fn)
        if patched:  # a device call reaching a module not yet patched in this launch (tl.core for
            patched[-1] |= langs  # Triton's own tl.sum, tl.zeros...): patched, never restored,
            return scope  # exactly as Triton does it
        patched.append(set(langs))
        restore = scope.restore

        def restore_and_end_launch() -> None:
            patched.pop()
            restore()

        scope.restore = restore_and_end_launch
        return scope

    patch_lang_once.__dict__["_symkern_once"] = True  # the marker read above (a function attribute)
    interp._patch_lang = patch_lang_once
    return True


_INTERRUPT_TEMPLATE = """
import json, os, signal, threading, time
{setup}
call(20)  # imports, first-call work
t0 = time.perf_counter()
call(200)
per_step = (time.perf_counter() - t0) / 200
steps = int({seconds} / per_step)
threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
t0 = time.perf_counter()
try:
    call(steps)
    outcome = "returned"
except KeyboardInterrupt:
    outcome = "interrupted"
print(json.dumps({{"outcome": outcome, "after_s": time.perf_counter() - t0,
                   "call_s": steps * per_step}}))
"""


def _default_sigint() -> None:
    """For a child process (``preexec_fn``): SIGINT back to its default disposition."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_long_call(setup: str, seconds: float = 60.0) -> dict:
    """Send Ctrl-C (SIGINT) 0.5 s into a long call and say when it stopped. In a fresh
    single-threaded interpreter (a test's own SIGINT would reach pytest), ``setup`` defines
    ``call(steps)``; it is timed at 200 steps, then called with enough steps to take about
    ``seconds``. Returns {"outcome": "interrupted" or "returned", "after_s": seconds from the call
    to its end, "call_s": the call's estimated length}."""
    import json
    import os
    import subprocess
    import sys

    script = _INTERRUPT_TEMPLATE.format(setup=setup, seconds=seconds)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # a process started in the background by a shell inherits SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler: the child gets the default disposition back
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=300 + seconds, preexec_fn=_default_sigint)  # fmt: skip
    if res.returncode != 0:
        raise RuntimeError(f"interrupt_long_call: the script failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def assert_usage_error(main, argv: list[str], flag: str, out, capsys) -> None:
    """An experiment's ``main(argv)`` refuses a bad value of ``flag`` as argparse does: exit
    status 2, an "error:" line on stderr naming the flag, no traceback, and nothing written to
    ``out`` (the value is checked before any work). ``capsys``: pytest's fixture."""
    import pytest  # noqa: PLC0415 (a test helper: pytest is a test dependency only)

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and flag in err and "Traceback" not in err, err
    assert not out.exists()  # rejected before any work
