"""The floor every memory-bound op is measured against: a plain copy of the same bytes.

Checks that the harness's copy floor is a real copy (the destination equals the source) and
records the achieved bandwidth (bytes read + written) on this machine.
"""

import torch


def test_copy_floor(compare, smoke):
    n = 1 << 16 if smoke else 100_000_000  # 400 MB of fp32 at full size (PERF.md's measurement)
    x = torch.randn(n)
    out = torch.empty_like(x)

    def check():
        out.copy_(x)
        assert torch.equal(out, x)

    info = compare(lambda: out.copy_(x), floor_of=x, check=check, bytes_moved=2 * x.nbytes)
    if info:
        # The copy measured twice (pytest-benchmark and the floor helper) must roughly agree;
        # otherwise the harness is measuring something else.
        assert 0.5 < info["ratio_vs_copy_floor"] < 2.0, info
