"""Triton kernels (CUDA tensors; CPU tensors under TRITON_INTERPRET=1 when forced).

Importing this package imports triton and registers the kernels with the dispatcher; the registry
does that lazily, only when the triton backend is available.
"""

import functools
from collections.abc import Mapping

import torch


def on_tensor_device(launcher):
    """Decorator for a launcher: run it under ``torch.cuda.device`` of its first argument (a
    tensor, or the first tensor of a mapping of tensors), so a launch for cuda:1 tensors goes to
    cuda:1 whatever the current device is (Triton launches on the current device). For CPU
    tensors (the interpreter) it does nothing and never initialises CUDA."""

    @functools.wraps(launcher)
    def wrapper(*args, **kwargs):
        first = args[0] if args else None
        if isinstance(first, Mapping):
            first = next(iter(first.values()), None)
        if isinstance(first, torch.Tensor) and first.is_cuda:
            with torch.cuda.device(first.device.index):
                return launcher(*args, **kwargs)
        return launcher(*args, **kwargs)

    return wrapper


from symkern.backends.triton import fixed_point as _fixed_point  # noqa: E402, F401
from symkern.backends.triton import mirror as _mirror  # noqa: E402, F401
from symkern.backends.triton import mirror_sweep as _mirror_sweep  # noqa: E402, F401
from symkern.backends.triton import orbit as _orbit  # noqa: E402, F401
from symkern.backends.triton import particles as _particles  # noqa: E402, F401
