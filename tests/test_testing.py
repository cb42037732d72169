"""symkern.testing.assert_close, the float64-reference comparison every kernel test relies on:
it must fail where the kernel is wrong, including around NaN and inf."""

import math

import pytest
import torch

from symkern.testing import assert_close, tolerance

INF, NAN = math.inf, math.nan


def f64(*v):
    return torch.tensor(v, dtype=torch.float64)


def test_within_and_beyond_tolerance():
    ref = f64(1.0, -2.0, 3.0)
    assert_close(ref.float(), ref)  # float32 rounding of the reference: within float32 tolerance
    rtol, atol = tolerance(torch.float32)
    assert_close(torch.tensor([1.0, -2.0, 3.0 + 0.5 * (rtol * 3 + atol * 3)]), ref)
    with pytest.raises(AssertionError, match=r"mismatch at \(2,\)"):
        assert_close(torch.tensor([1.0, -2.0, 3.0 + 2 * (rtol * 3 + atol * 3)]), ref)
    with pytest.raises(AssertionError, match=r"mismatch at \(0,\)"):
        assert_close(ref + f64(1e-9, 0, 0), ref)  # float64 result: float64 tolerance


def test_scale_is_max_abs_reference_or_given():
    ref = f64(1000.0, 1e-9)
    assert_close(f64(1000.0, 1e-9 + 5e-10), ref)  # 5e-10 <= atol 1e-12 x 1000
    with pytest.raises(AssertionError):
        assert_close(f64(1000.0, 1e-9 + 5e-10), ref, scale=1.0)


def test_nan_must_sit_where_the_reference_has_nan():
    assert_close(f64(NAN, 1.0), f64(NAN, 1.0))
    with pytest.raises(AssertionError, match="NaN mismatch at"):
        assert_close(f64(NAN, 1.0), f64(0.0, 1.0))
    with pytest.raises(AssertionError, match="NaN mismatch at"):
        assert_close(f64(0.0, 1.0), f64(NAN, 1.0))


def test_inf_must_match_exactly_and_not_widen_the_tolerance():
    assert_close(f64(INF, -INF, 1.0), f64(INF, -INF, 1.0))
    with pytest.raises(AssertionError, match="inf mismatch at"):
        assert_close(f64(-INF, 1.0), f64(INF, 1.0))
    with pytest.raises(AssertionError, match="inf mismatch at"):
        assert_close(f64(1e300, 1.0), f64(INF, 1.0))
    # an inf in the reference once made the scale infinite: 5 passed for 1
    with pytest.raises(AssertionError, match=r"mismatch at \(1,\)"):
        assert_close(f64(INF, 5.0), f64(INF, 1.0))
    with pytest.raises(AssertionError, match=r"mismatch at \(1,\)"):
        assert_close(f64(1.0, INF), f64(1.0, 2.0))  # inf where the reference is finite


def test_bad_arguments():
    with pytest.raises(ValueError, match="reference must be float64"):
        assert_close(torch.ones(2), torch.ones(2))
    with pytest.raises(AssertionError, match="shape"):
        assert_close(torch.ones(2, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="two tensors"):
        assert_close([1.0], f64(1.0))
    assert_close(torch.ones(0), torch.ones(0, dtype=torch.float64))  # empty: nothing to compare


def _interpreter_test_kernels():
    """(device function, kernel) defined at module level: the interpreter resolves the kernel's
    calls through the module's globals."""
    global _square, _sum_of_squares_kernel
    import triton
    import triton.language as tl

    @triton.jit
    def _square(v):
        return v * v

    @triton.jit
    def _sum_of_squares_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        acc = tl.zeros((BLOCK,), dtype=tl.float64)
        for start in range(0, n, BLOCK):
            acc += _square(tl.load(x_ptr + start + offs, mask=start + offs < n, other=0.0))
        tl.store(out_ptr, tl.sum(acc, axis=0))

    return _sum_of_squares_kernel


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter runs only without CUDA")
def test_interpreter_shim_keeps_kernels_and_restores_the_language():
    """The conftest's skip_triton_interpreter_repatching is installed, a kernel that calls
    device functions (its own and Triton's tl.sum, tl.zeros) still computes the right numbers
    with it, and the launch still restores triton.language's builtins when it ends."""
    pytest.importorskip("triton")
    import triton.language as tl
    import triton.runtime.interpreter as interp

    from symkern.testing import skip_triton_interpreter_repatching

    assert interp._patch_lang._symkern_once  # installed by tests/conftest.py
    assert skip_triton_interpreter_repatching() is False  # and only once
    kernel = _interpreter_test_kernels()
    exp_before = tl.exp
    x = torch.randn(37, dtype=torch.float64)
    out = torch.empty(1, dtype=torch.float64)
    for _ in range(2):  # the second launch starts from the state the first left
        kernel[(1,)](x, out, x.numel(), BLOCK=16)
        assert_close(out[0], (x * x).sum())
    assert tl.exp is exp_before  # the launch's patch was undone


def test_assert_close_refuses_a_tolerance_that_disables_it():
    """A NaN scale (e.g. scale=x.abs().max().item() of an x holding NaN), rtol or atol made every
    comparison False, so anything passed; a negative one is no tolerance either."""
    got, want = torch.tensor([100.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    for kw in ({"scale": float("nan")}, {"atol": float("nan")}, {"rtol": float("nan")},
               {"scale": float("inf")}, {"atol": -1e-3}):  # fmt: skip
        name = next(iter(kw))
        with pytest.raises(ValueError, match=f"assert_close: {name} must be finite and >= 0"):
            assert_close(got, want, **kw)
