"""The Triton ``particle_forward`` / ``particle_forward_backward`` kernels beyond the contract
test of test_particles.py: several sample and particle tiles, a split reduced axis, odd sizes
(1, 7, 129), non-contiguous inputs, float32 and float64, gradcheck through ``model_output``, the
size limits reported through the registry, bad input. Every case is compared with the float64
torch reference (``Unit.output`` and its autograd). Small sizes: the interpreter costs ~1-2 ms
per Triton op."""

import pytest
import torch

from symkern.backends.reference.particles import particle_forward_backward as reference_backward
from symkern.backends.registry import BackendUnavailableError, get_backend, select_kernel
from symkern.meanfield.units import MatrixUnit, StandardUnit
from symkern.ops.particles import model_output
from symkern.testing import TRITON_DEVICE as DEV
from symkern.testing import assert_close

F64 = torch.float64

pytestmark = pytest.mark.skipif(
    bool(get_backend("triton").availability_reasons()),
    reason="; ".join(get_backend("triton").availability_reasons()),
)

UNITS = [
    MatrixUnit(2, 2),
    MatrixUnit(3, 5),
    StandardUnit(5, 3, "tanh"),
    StandardUnit(3, 1, "sigmoid"),
    StandardUnit(4, 2, "relu"),
]


def _kernels():
    from symkern.backends.triton.particles import (
        particle_forward_backward_triton,
        particle_forward_triton,
    )

    return particle_forward_triton, particle_forward_backward_triton


def _inputs(unit, B, N, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, unit.d, generator=g, dtype=F64)
    theta = torch.randn(N, unit.D, generator=g, dtype=F64)
    grad_phi = torch.randn(B, unit.c, generator=g, dtype=F64)
    return x, theta, grad_phi


def _check(unit, x, theta, grad_phi, dtype, **blocks):
    """Triton forward and backward on (x, theta, grad_phi) cast to dtype vs the float64 oracle."""
    fwd, bwd = _kernels()
    xd, td, gd = (t.to(device=DEV, dtype=dtype) for t in (x, theta, grad_phi))
    phi = fwd(xd, td, unit, **blocks)
    g_theta, g_x = bwd(xd, td, unit, gd, **blocks)
    assert phi.dtype == g_theta.dtype == g_x.dtype == dtype
    ref_gt, ref_gx = reference_backward(x, theta, unit, grad_phi)
    assert_close(phi, unit.output(x, theta), msg="phi: ")
    assert_close(g_theta, ref_gt, msg="grad theta: ")
    assert_close(g_x, ref_gx, msg="grad x: ")


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
@pytest.mark.parametrize("unit", UNITS, ids=repr)
def test_tiles_and_split_match_reference(unit, dtype):
    # 16-wide tiles: 3 sample tiles × 3 particle tiles, the reduced axes split over 2 programs
    x, theta, grad_phi = _inputs(unit, 37, 41, seed=1)
    _check(unit, x, theta, grad_phi, dtype, block_b=16, block_n=16, split=2)


@pytest.mark.parametrize(
    "unit, B, N",
    [
        (MatrixUnit(2, 3), 1, 129),
        (StandardUnit(3, 2, "tanh"), 129, 1),
        (MatrixUnit(1, 1), 7, 7),
        (StandardUnit(1, 1, "sigmoid"), 7, 129),
    ],  # fmt: skip
    ids=lambda v: repr(v) if not isinstance(v, int) else str(v),
)
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
def test_odd_sizes_match_reference(unit, B, N, dtype):
    x, theta, grad_phi = _inputs(unit, B, N, seed=2)
    _check(unit, x, theta, grad_phi, dtype)


@pytest.mark.parametrize("unit", [MatrixUnit(3, 2), StandardUnit(3, 2, "tanh")], ids=repr)
def test_non_contiguous_inputs(unit):
    # x column-major, theta every other row, grad_phi transposed: the kernels read strides
    x, theta, grad_phi = _inputs(unit, 23, 2 * 19, seed=3)
    x_nc = x.T.contiguous().T
    theta_nc = theta[::2]
    g_nc = grad_phi.T.contiguous().T
    assert not (x_nc.is_contiguous() or theta_nc.is_contiguous() or g_nc.is_contiguous())
    _check(unit, x_nc, theta_nc, g_nc, F64, block_b=16, block_n=16)


def test_model_output_gradients_float32_and_non_contiguous():
    unit = StandardUnit(4, 2, "sigmoid")
    x, theta, grad_phi = _inputs(unit, 9, 2 * 11, seed=4)
    x32 = x.T.contiguous().T.float().to(DEV).requires_grad_()
    t32 = theta[::2].float().to(DEV).requires_grad_()
    out = model_output(x32, t32, unit, backend="triton")
    out.backward(grad_phi.float().to(DEV))
    ref_gt, ref_gx = reference_backward(x, theta[::2], unit, grad_phi)
    assert_close(out, unit.output(x, theta[::2]))
    assert_close(t32.grad, ref_gt)
    assert_close(x32.grad, ref_gx)


@pytest.mark.parametrize(
    "unit, B, N", [(StandardUnit(2, 3, "tanh"), 2, 1), (MatrixUnit(2, 3), 3, 2)], ids=repr
)
def test_gradcheck_float64(unit, B, N):
    x, theta, _ = _inputs(unit, B, N, seed=5)
    xg = x.to(DEV).requires_grad_()
    tg = theta.to(DEV).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: model_output(a, b, unit, backend="triton"), (xg, tg)
    )


def _opcheck_args(backend="triton"):
    unit = StandardUnit(2, 2, "tanh")
    x, theta, _ = _inputs(unit, 3, 5, seed=6)
    dev = DEV if backend == "triton" else "cpu"
    return (x.to(dev).requires_grad_(), theta.to(dev).requires_grad_(), unit.code,
            unit.activation_code, unit.c, unit.d, backend)  # fmt: skip


# not "torch": its backward runs torch.func.vjp inside the op, whose functorch wrappers
# opcheck's schema checker cannot inspect ("Cannot access storage of TensorWrapper")
@pytest.mark.parametrize("backend", ["triton", "cpp"])
def test_opcheck(backend):
    """Every torch.library check (schema, fake tensors, autograd registration, AOT dispatch)
    of the forward op and of its backward op."""
    from symkern.backends.registry import get_backend
    from symkern.ops.particles import _particle_forward_backward_op, _particle_forward_op

    if get_backend(backend).availability_reasons():
        pytest.skip(f"{backend} unavailable")
    args = _opcheck_args(backend)
    torch.library.opcheck(_particle_forward_op, args)
    x, theta, *rest = args
    grad_phi = torch.randn(x.shape[0], rest[2], dtype=x.dtype, device=x.device)
    torch.library.opcheck(
        _particle_forward_backward_op, (x.detach(), theta.detach(), grad_phi, *rest)
    )


def test_empty_batch():
    fwd, bwd = _kernels()
    unit = MatrixUnit(2, 2)
    x = torch.empty(0, 2, dtype=F64, device=DEV)
    theta = torch.randn(3, 4, dtype=F64, device=DEV)
    assert fwd(x, theta, unit).shape == (0, 2)
    g_theta, g_x = bwd(x, theta, unit, torch.empty(0, 2, dtype=F64, device=DEV))
    assert g_x.shape == (0, 2)
    assert torch.equal(g_theta, torch.zeros(3, 4, dtype=F64, device=DEV))


def test_size_limits_reported():
    from symkern.backends.triton.particles import PF_MAX_C, PF_MAX_DIN

    d = PF_MAX_DIN + 1
    unit = StandardUnit(d, 1, "tanh")
    x = torch.randn(2, d, device=DEV)
    theta = torch.randn(3, unit.D, device=DEV)
    with pytest.raises(BackendUnavailableError, match=f"d <= {PF_MAX_DIN}, got d = {d}"):
        select_kernel("particle_forward", {"x": x, "theta": theta}, "triton")
    with pytest.raises(BackendUnavailableError, match=f"d <= {PF_MAX_DIN}"):
        model_output(x, theta, unit, backend="triton")
    fwd, _ = _kernels()
    wide = StandardUnit(2, PF_MAX_C + 1, "tanh")
    with pytest.raises(ValueError, match=f"c <= {PF_MAX_C}, got c = {PF_MAX_C + 1}"):
        fwd(torch.randn(2, 2, device=DEV), torch.randn(3, wide.D, device=DEV), wide)


def test_bad_inputs():
    fwd, bwd = _kernels()
    unit = MatrixUnit(2, 2)
    x = torch.randn(5, 2, device=DEV)
    theta = torch.randn(4, 4, device=DEV)
    with pytest.raises(TypeError, match="unit must be a MatrixUnit or a StandardUnit"):
        fwd(x, theta, "matrix")
    with pytest.raises(TypeError, match="x must be a floating"):
        fwd(x.long(), theta, unit)
    with pytest.raises(ValueError, match="x must be float32 or float64"):
        fwd(x.half(), theta.half(), unit)
    with pytest.raises(ValueError, match=r"x must be \(B, d\) with 2 columns"):
        fwd(torch.randn(5, 3, device=DEV), theta, unit)
    with pytest.raises(ValueError, match=r"theta must be \(N, D\) with 4 columns"):
        fwd(x, torch.randn(4, 3, device=DEV), unit)
    with pytest.raises(ValueError, match="theta must hold at least one particle"):
        fwd(x, theta[:0], unit)
    with pytest.raises(ValueError, match="x and theta must share dtype"):
        fwd(x, theta.double(), unit)
    with pytest.raises(ValueError, match=r"grad_phi must be \(5, 2\)"):
        bwd(x, theta, unit, torch.randn(5, 3, device=DEV))
    with pytest.raises(TypeError, match="grad_phi must be a floating"):
        bwd(x, theta, unit, torch.ones(5, 2, dtype=torch.int64, device=DEV))
