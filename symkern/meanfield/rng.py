"""Counter-based random numbers shared by every backend (torch reference, C++, Triton).

Philox4x32-10 (Salmon et al., SC'11 — the generator of Random123, cuRAND and Triton) maps a
128-bit counter and a 64-bit key to four 32-bit words. symkern keys every random number by
*what it is for*, never by a generator's state, so the three backends draw identical numbers
and a run's trajectory does not depend on how runs are batched, ordered or resumed:

    key     = (seed mod 2^32, seed >> 32 mod 2^32)
    counter = (index, step, run_id, stream)          all uint32

``stream`` says what the number is for (:data:`STREAM_DATA` inputs x, :data:`STREAM_NOISE`
Langevin noise, :data:`STREAM_AUGMENT` sampled group elements, :data:`STREAM_INIT` initial
particles, :data:`STREAM_TEST` test-risk samples); ``index`` enumerates the numbers
of one (run, step, stream), e.g. ``b * d + k`` for the k-th coordinate of sample b.

Number formats on the four output words (o0, o1, o2, o3):

* uniform:  u(o) = ((o >> 8) + 0.5) · 2^-24 — exact in float32 and float64, in (0, 1);
* normal:   z = sqrt(-2 ln u(o0)) · cos(2π u(o1))   (Box–Muller; |z| ≤ 5.9 by construction),
  one per counter;
* normal4:  four per counter, both Box–Muller pairs with their cos and sin branches —
  element j of the stream is slot j mod 4 of counter j div 4, with ρ_a = sqrt(-2 ln u(o_a)):

      slot 0: ρ0 cos(2π u(o1))   slot 1: ρ0 sin(2π u(o1))
      slot 2: ρ2 cos(2π u(o3))   slot 3: ρ2 sin(2π u(o3))

  Only the particles' Langevin noise uses it: it is the one stream drawn at N·D numbers per step,
  where one Philox-10 evaluation per normal was ~40 % of the C++ step (4x fewer counters);
* integer in [0, n):  (o0 · n) >> 32             (exact integer arithmetic, no float rounding).

The C++ (csrc/philox.h) and Triton implementations follow this file line by line; the float
functions (log, cos, sqrt) differ between them only by rounding.
"""

from __future__ import annotations

import math

import torch

from symkern.groups._native import MAX_ELEMENT_ENTRIES

__all__ = [
    "MAX_DRAW",
    "STREAM_AUGMENT",
    "STREAM_DATA",
    "STREAM_INIT",
    "STREAM_NOISE",
    "STREAM_TEST",
    "check_draw_size",
    "normal",
    "normal4",
    "philox4x32",
    "randint",
    "uniform_from_bits",
]

STREAM_DATA = 0
STREAM_NOISE = 1
STREAM_AUGMENT = 2
STREAM_INIT = 3
STREAM_TEST = 4

# The most numbers one host-side draw (initial particles, the test-risk sample) may return: the
# entry limit of element_matrices. The torch Philox pass below holds ~120 bytes per number at its
# peak (int64 words and their temporaries; measured 1.15 GB for 1e7 numbers on the 2-core
# EPYC), so the cap keeps a call near 12 GB; n_particles=10**9 asked the allocator for 32 GB at
# the first arange, and a count past 2^32 would repeat the 32-bit index words' numbers.
MAX_DRAW = MAX_ELEMENT_ENTRIES


def check_draw_size(count: int, what: str) -> None:
    """ValueError when a draw of ``count`` numbers would pass :data:`MAX_DRAW`; ``what`` names
    the arguments whose product ``count`` is (e.g. "n * d"), checked before anything is
    allocated."""
    if count > MAX_DRAW:
        raise ValueError(
            f"{what} = {count} random numbers in one call exceeds the limit {MAX_DRAW} (the "
            "Philox draw holds ~120 bytes per number at its peak); draw fewer per call"
        )


_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product a·b, a a uint32 constant, b uint32 in int64.

    Split b in 16-bit halves so no intermediate exceeds 2^49: int64 overflow is never relied on.
    """
    p_lo = a * (b & 0xFFFF)
    p_hi = a * (b >> 16)
    mid = p_lo + ((p_hi & 0xFFFF) << 16)
    lo = mid & _MASK32
    hi = ((p_hi >> 16) + (mid >> 32)) & _MASK32
    return hi, lo


def philox4x32(
    c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, k0: int, k1: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32-10 on int64 tensors holding uint32 values (broadcastable); returns 4 words."""
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) & _MASK32 for c in (c0, c1, c2, c3))
    c0, c1, c2, c3 = torch.broadcast_tensors(c0, c1, c2, c3)
    k0, k1 = k0 & _MASK32, k1 & _MASK32
    for _ in range(10):
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
    return c0, c1, c2, c3


def _key(seed: int) -> tuple[int, int]:
    if not isinstance(seed, int) or seed < 0 or seed >= 2**64:
        raise ValueError(f"seed must be an int in [0, 2^64), got {seed!r}")
    return seed & _MASK32, (seed >> 32) & _MASK32


def _counters(
    run_ids: torch.Tensor, step: int, stream: int, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    index = torch.arange(n, dtype=torch.int64).view(1, n)
    runs = torch.as_tensor(run_ids, dtype=torch.int64).view(-1, 1)
    return index, torch.tensor(step, dtype=torch.int64), runs, torch.tensor(stream)


def uniform_from_bits(bits: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """u = ((bits >> 8) + 0.5) · 2^-24 ∈ (0, 1), exact in float32 and float64."""
    return ((bits >> 8).to(dtype) + 0.5) * 2.0**-24


def normal(
    seed: int, run_ids: torch.Tensor, step: int, stream: int, n: int,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:  # fmt: skip
    """Standard normals, shape (R, n): element [r, i] is keyed by (i, step, run_ids[r], stream)."""
    o0, o1, _, _ = philox4x32(*_counters(run_ids, step, stream, n), *_key(seed))
    u1 = uniform_from_bits(o0, torch.float64)
    u2 = uniform_from_bits(o1, torch.float64)
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
    return z.to(dtype)


def normal4(
    seed: int, run_ids: torch.Tensor, step: int, stream: int, n: int,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:  # fmt: skip
    """Standard normals, shape (R, n), four per Philox counter (the ``normal4`` format above).

    Element [r, j] is slot j mod 4 of counter (j div 4, step, run_ids[r], stream).
    """
    words = philox4x32(*_counters(run_ids, step, stream, (n + 3) // 4), *_key(seed))
    u = [uniform_from_bits(o, torch.float64) for o in words]
    rho = torch.sqrt(-2.0 * torch.log(torch.stack([u[0], u[2]], -1)))  # (R, counters, pair)
    angle = (2.0 * math.pi) * torch.stack([u[1], u[3]], -1)
    # (R, counters, pair, cos|sin) -> (R, 4 * counters): slots 0..3 in the order documented above
    z = rho.unsqueeze(-1) * torch.stack([torch.cos(angle), torch.sin(angle)], -1)
    return z.reshape(z.shape[0], -1)[:, :n].to(dtype)


def randint(seed: int, run_ids: torch.Tensor, step: int, stream: int, n: int, high: int):
    """Integers in [0, high), shape (R, n): (o0 · high) >> 32, keyed like :func:`normal`."""
    if high < 1 or high > 2**31:
        raise ValueError(f"high must be in [1, 2^31], got {high}")
    o0, _, _, _ = philox4x32(*_counters(run_ids, step, stream, n), *_key(seed))
    return (o0 * high) >> 32
