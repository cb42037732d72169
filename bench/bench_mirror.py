"""Fused mirror ops (``Mirror.reflect`` / ``Mirror.coefficients``) for many models at once.

θ holds M = 300 models × d = 1e5 parameters (fp32, 120 MB). Mirrors (every one with O(d) storage):

* ``rescaling_pairs``  u_i = i, w_i = d/4 + i for i < d/4: k = d/2 columns (S = 1); the other half
                       of θ lies outside every support
* ``neuron_swap``      1000 neurons of 100 parameters, neuron 2i ↔ 2i + 1 for every i: k = d/2
                       columns (e_p − e_q)/√2 (S = 2) covering all of θ
* ``householder``      θ = [vec U, vec W], U, W ∈ R^{500×100}, hidden index 100: k = 1000
                       columns of S = 100 entries (U n and W n)
* ``dense_k4``         a dense orthonormal O ∈ R^{d×4}

Timed in the same run on the same θ (after checking symkern against the float64 reference on a
few rows and against every baseline):

* ``symkern``                  ``mirror.reflect(θ, backend=...)``: cpp on CPU, triton on CUDA
* ``torch_gather_index_add``   the natural torch code (the torch kernel of the op = what
                               ``Mirror`` ran before: gather + sum, ``index_add``)
* ``torch_compile``            that gather + index_add code under ``torch.compile`` (sparse
                               mirrors; compiled once, outside the timing)
* ``dense_matmul``             θ − 2 (θ O) Oᵀ with O as a dense (d, k) tensor, where that fits in
                               ``DENSE_MAX_BYTES`` (Householder: 400 MB; the k = d/2 cases: 20 GB,
                               not timed)
* ``copy_into_fresh_tensor``   ``torch.empty_like(θ).copy_(θ)`` — the floor for an op that returns a
                               new tensor (allocation + first-touch page faults included, like
                               symkern's call, which also allocates c); the conftest copy floor
                               (reused buffer) gives ``ratio_vs_copy_floor``. The op also writes c
                               (M, k): ``bytes_moved`` counts read θ + write out + write c.
* ``kernel_into_preallocated_out`` (cpp) the same C++ kernel writing into reused out and c
                               buffers: its own cost, comparable with the copy floor

``coefficients`` cases time c = Oᵀθ alone (``Mirror.coefficients``, i.e. ``breaking`` without the
norm) against ``(θ[:, index] * value).sum(-1)`` (eager and compiled) and ``θ @ O``.

``--benchmark-disable`` (CI smoke): M = 8 models, d = 2000, every check still runs (the triton
cases without a GPU in the Triton interpreter on CPU tensors; timed on CUDA only).
"""

from __future__ import annotations

import pytest
import torch

from symkern.backends.reference.mirror import mirror_apply as torch_mirror_apply
from symkern.backends.registry import get_backend
from symkern.mirror import Mirror

DENSE_MAX_BYTES = 1e9


def _rescaling(d: int) -> Mirror:
    q = d // 4
    return Mirror.rescaling_pairs(torch.arange(q), q + torch.arange(q), d)


def _neuron_swap(d: int) -> Mirror:
    fan_in = 100 if d >= 1000 else 10
    blocks = torch.arange(d).view(-1, 2, fan_in)  # (neuron pairs, 2, fan_in)
    return Mirror.neuron_swap(blocks[:, 0].reshape(-1), blocks[:, 1].reshape(-1), d)


def _householder(d: int) -> Mirror:
    h = 100 if d >= 1000 else 10
    m = d // (2 * h)
    n = torch.randn(h, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return Mirror.householder(n / n.norm(), [(0, (m, h), 1), (m * h, (m, h), 1)], d)


def _dense_k4(d: int) -> Mirror:
    g = torch.Generator().manual_seed(2)
    Q, _ = torch.linalg.qr(torch.randn(d, 4, generator=g, dtype=torch.float64))
    return Mirror.dense(Q)


CASES = {
    "rescaling_pairs": _rescaling,
    "neuron_swap": _neuron_swap,
    "householder": _householder,
    "dense_k4": _dense_k4,
}


def _setup(request, smoke: bool, case: str, backend: str):
    # triton: on CUDA, or (smoke run only) in the interpreter on CPU tensors — the gpu_device
    # fixture skips the timed run without a GPU
    device = request.getfixturevalue("gpu_device") if backend == "triton" else "cpu"
    if not get_backend(backend).has_kernel("mirror_apply"):
        pytest.skip(f"no {backend!r} kernel for mirror_apply on this machine")
    M, d = (8, 2000) if smoke else (300, 100_000)
    mirror = CASES[case](d)
    g = torch.Generator().manual_seed(0)
    theta = (torch.randn(M, d, generator=g, dtype=torch.float64) + 0.5).to(device, torch.float32)
    return mirror, theta, device


def _close(out: torch.Tensor, ref: torch.Tensor, scale: float, rtol: float = 2e-5) -> None:
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != {tuple(ref.shape)}"
    err = (out.double().cpu() - ref.double().cpu()).abs().max().item()
    assert err <= rtol * scale, f"max error {err:.3g} > {rtol:g} x {scale:.3g}"


def _oracle_coefficients(mirror: Mirror, rows: torch.Tensor) -> torch.Tensor:
    """c = Oᵀθ in float64 with O as a torch sparse (d, k) matrix (dense for a dense mirror): a
    formulation independent of the kernels, and small at full size (a dense O would be 40 GB)."""
    rows = rows.double().cpu()
    if mirror.index is None:
        return rows @ mirror.to_dense()
    return torch.sparse.mm(_sparse_o(mirror).t(), rows.T).T


def _oracle_reflect(mirror: Mirror, rows: torch.Tensor) -> torch.Tensor:
    c = _oracle_coefficients(mirror, rows)
    rows = rows.double().cpu()
    if mirror.index is None:
        return rows - 2 * c @ mirror.to_dense().T
    return rows - 2 * torch.sparse.mm(_sparse_o(mirror), c.T).T


def _sparse_o(mirror: Mirror) -> torch.Tensor:
    cols = torch.arange(mirror.k)[:, None].expand_as(mirror.index)
    coords = torch.stack([mirror.index.reshape(-1), cols.reshape(-1)])
    return torch.sparse_coo_tensor(
        coords, mirror.value.reshape(-1), (mirror.d, mirror.k), check_invariants=True
    )


def _dense_o(mirror: Mirror, theta: torch.Tensor) -> torch.Tensor | None:
    if mirror.d * mirror.k * theta.element_size() > DENSE_MAX_BYTES:
        return None
    return mirror.to_dense(theta.dtype).to(theta.device)


def _prealloc_kernel(mirror: Mirror, theta: torch.Tensor):
    """The bare C++ reflect into reused out / c buffers (no allocation, no page faults); the
    returned function gives the out buffer, which the case checks before timing."""
    import symkern._C as ext

    plan = mirror._plan(theta)
    out, c = torch.empty_like(theta), theta.new_empty((theta.shape[0], mirror.k))
    if plan.dense_t is not None:
        args = (theta.numpy(), plan.dense_t.numpy(), None, 2.0, out.numpy(), c.numpy())
        kernel = ext.mirror_dense
    else:
        args = (theta.numpy(), plan.index.numpy(), plan.value.numpy(), None, 2.0, out.numpy(),
                c.numpy())  # fmt: skip
        kernel = ext.mirror_sparse

    def run() -> torch.Tensor:
        kernel(*args)
        return out

    return run


def _compiled_reference(theta: torch.Tensor, mirror: Mirror, mode: str):
    """The torch_gather baselines (symkern's torch kernel of ``mirror_apply``: gather + sum for
    c, index_add to scatter O c) under ``torch.compile``, for ``mode`` "reflect" (returns out)
    or "coefficients" (returns c). Static shapes; the first call, which compiles, is the check
    or the timing's warm-up."""
    plan = mirror._plan(theta)
    fn = torch.compile(torch_mirror_apply, dynamic=False)
    args = (theta, None, plan.index, plan.value, plan.dense_t, plan.rest, mode, plan.disjoint)
    which = 0 if mode == "reflect" else 1
    return lambda: fn(*args)[which]


@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("case", list(CASES))
def test_mirror_reflect(request, compare, smoke, case, backend):
    mirror, theta, device = _setup(request, smoke, case, backend)
    O = _dense_o(mirror, theta)
    M, d, k = theta.shape[0], mirror.d, mirror.k

    def symkern_fn():
        return mirror.reflect(theta, backend=backend)

    def torch_fn():
        return mirror.reflect(theta, backend="torch")

    compiled = None if mirror.index is None else _compiled_reference(theta, mirror, "reflect")
    prealloc = _prealloc_kernel(mirror, theta) if backend == "cpp" else None

    def check():
        out = symkern_fn()
        scale = theta.abs().max().item()
        _close(out[:4], _oracle_reflect(mirror, theta[:4]), scale)  # the float64 oracle
        _close(out, torch_fn(), scale)
        if prealloc is not None:
            _close(prealloc(), out, scale)
        if compiled is not None:
            _close(out, compiled(), scale)
        if O is not None:
            _close(out, theta - 2 * (theta @ O) @ O.T, scale, rtol=1e-4)

    baselines = {
        "torch_gather_index_add": torch_fn,
        "copy_into_fresh_tensor": lambda: torch.empty_like(theta).copy_(theta),
    }
    if compiled is not None:
        baselines["torch_compile"] = compiled
    if O is not None:
        baselines["dense_matmul"] = lambda: theta - 2 * (theta @ O) @ O.T
    if prealloc is not None:
        baselines["kernel_into_preallocated_out"] = prealloc
    compare.benchmark.extra_info.update(
        M=M, d=d, k=k, S=mirror.index.shape[1] if mirror.index is not None else d,
        dense_timed=O is not None,
    )  # fmt: skip
    compare(
        symkern_fn,
        baselines=baselines,
        floor_of=theta,
        check=check,
        device=device,
        bytes_moved=(2 * M * d + M * k) * theta.element_size(),
    )


@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("case", ["rescaling_pairs", "householder"])
def test_mirror_coefficients(request, compare, smoke, case, backend):
    mirror, theta, device = _setup(request, smoke, case, backend)
    O = _dense_o(mirror, theta)
    M, d, k = theta.shape[0], mirror.d, mirror.k
    index = mirror.index.to(device)
    value = mirror.value.to(device, theta.dtype)

    def symkern_fn():
        return mirror.coefficients(theta, backend=backend)

    def torch_fn():
        return (theta[:, index] * value).sum(-1)

    compiled = _compiled_reference(theta, mirror, "coefficients")

    def check():
        c = symkern_fn()
        scale = theta.abs().max().item()
        _close(c[:4], _oracle_coefficients(mirror, theta[:4]), scale)
        _close(c, torch_fn(), scale)
        _close(c, compiled(), scale)

    baselines = {"torch_gather_sum": torch_fn, "torch_compile": compiled}
    if O is not None:
        baselines["dense_matmul"] = lambda: theta @ O
    compare.benchmark.extra_info.update(M=M, d=d, k=k, dense_timed=O is not None)
    compare(
        symkern_fn,
        baselines=baselines,
        floor_of=theta,
        check=check,
        device=device,
        bytes_moved=(M * d + M * k) * theta.element_size(),
    )
