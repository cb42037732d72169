"""Test set-up. Without CUDA, the Triton kernels run in the interpreter on CPU tensors, so they
are tested on every machine: TRITON_INTERPRET must be set before triton compiles anything, i.e.
before symkern (which imports triton lazily) is imported by any test."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from symkern.testing import backend_cases, skip_triton_interpreter_repatching  # noqa: E402

skip_triton_interpreter_repatching()

BACKEND_CASES = backend_cases()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(params=BACKEND_CASES, ids=[c.id for c in BACKEND_CASES])
def backend_case(request):
    """Every (backend, device) pair this machine can run."""
    return request.param


@pytest.fixture
def particle_backend(backend_case):
    """A backend_case that implements ``particle_steps``; skipped, with the registry's reason,
    for a backend whose kernel is not written yet (the dispatcher says so too)."""
    from symkern.backends.registry import get_backend

    if not get_backend(backend_case.backend).has_kernel("particle_steps"):
        pytest.skip(f"no {backend_case.backend!r} kernel for op 'particle_steps' is implemented")
    return backend_case


@pytest.fixture
def one_torch_thread():
    """Run the test with one torch intra-op thread (restored afterwards)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
