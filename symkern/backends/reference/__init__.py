"""The pure-torch reference backend: every device, float64-capable, the tests' oracle.

Importing this package registers its kernels with the dispatcher.
"""

from symkern.backends.reference import mirror as _mirror  # noqa: F401
from symkern.backends.reference import mirror_sweeps as _mirror_sweeps  # noqa: F401
from symkern.backends.reference import orbit as _orbit  # noqa: F401
from symkern.backends.reference import particles as _particles  # noqa: F401
