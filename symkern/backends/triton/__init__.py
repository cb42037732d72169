"""Triton kernels (CUDA tensors; CPU tensors under TRITON_INTERPRET=1 when forced).

Importing this package imports triton and registers the kernels with the dispatcher; the registry
does that lazily, only when the triton backend is available.
"""

from symkern.backends.triton import fixed_point as _fixed_point  # noqa: F401
from symkern.backends.triton import mirror as _mirror  # noqa: F401
from symkern.backends.triton import mirror_sweep as _mirror_sweep  # noqa: F401
from symkern.backends.triton import orbit as _orbit  # noqa: F401
from symkern.backends.triton import particles as _particles  # noqa: F401
