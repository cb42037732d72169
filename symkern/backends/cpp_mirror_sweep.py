"""C++ batched small-model sweeps: registers ``mirror_sweep`` for backend ``"cpp"`` (float32,
float64).

The registry imports this module only when ``symkern._C`` is importable. The kernel
(csrc/mirror_sweep.cpp) runs all ``steps`` (S)GD steps of all M models in one call, with the GIL
released; the math is :mod:`symkern.mirror.sweeps`:

* OpenMP over models (``schedule(dynamic, 1)``): each model's whole trajectory runs on one
  thread, its parameters, data and gradients in a per-thread scratch allocated once per call (a
  few KiB, stays in L1); nothing is allocated per step;
* data are regenerated in-kernel from the Philox4x32-10 stream of :mod:`symkern.meanfield.rng`
  (csrc/philox.h) with the reference's keys (seed, model id, step, stream) and indices, normals
  by Box–Muller in float64 then rounded to the working dtype — exactly what the torch reference
  draws, so trajectories match it to float rounding (float64: ~1e-15 relative per step);
* gradients written by hand (the reference's formulas), inner loops unit-stride SIMD loops over
  rows padded to whole 64-byte lines (zero pads, which stay zero);
* precision: float64 throughout for float64; float32 runs accumulate in float32 (as the torch
  reference run in float32 does); tanh (mlp) is a vectorisable double-precision tanh, max error
  vs ``std::tanh`` ≤ 2.3e-16 absolute / 4.1e-16 relative, rounded to float for float32
  (``symkern._C.mirror_sweep_tanh_errors()`` re-measures it);
* the kernel is compiled for AVX-512, AVX2+FMA and baseline x86-64 and picks one at run time
  (``symkern._C.mirror_sweep_isa()``; ``SYMKERN_MIRROR_SWEEP_ISA=avx2|baseline`` forces a lower
  one).

Crossing the boundary: tensors become numpy arrays with ``Tensor.numpy()`` (zero-copy; the
public op hands over contiguous CPU tensors of one dtype); outputs are allocated here with torch
and filled in place. The binding validates every buffer (dtype, shape, C-contiguity) and raises
``ValueError`` naming the argument.
"""

from __future__ import annotations

import numpy as np
import torch

import symkern._C as _C
from symkern.backends.registry import register_kernel
from symkern.mirror.sweeps import MODELS, SweepProblem

__all__ = ["mirror_sweep"]

_MODEL_CODES = {"rescaling": 0, "factorization": 1, "mlp": 2}
_ACTIVATION_CODES = {"tanh": 0, "relu": 1}
_TARGET_KEYS = {"rescaling": ("beta",), "factorization": ("A",), "mlp": ("W1", "b1", "a")}


def _np(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    return t.detach().to("cpu", dtype).contiguous().numpy()


@register_kernel("mirror_sweep", "cpp", dtypes=(torch.float32, torch.float64))
def mirror_sweep(
    params: dict[str, torch.Tensor],
    problem: SweepProblem,
    step0: int,
    steps: int,
    record_every: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``steps`` (S)GD steps from absolute step ``step0`` for all M models in one C++ call.

    params {name: (M, ...)} → (params_out, losses (M, steps // record_every)); see the module
    docstring and :mod:`symkern.mirror.sweeps` for the math.
    """
    keys = MODELS[problem.model]
    dtype = params[keys[0]].dtype
    out = {k: torch.empty(params[k].shape, dtype=dtype, device="cpu") for k in keys}
    losses = torch.empty((problem.n_models, steps // record_every), dtype=dtype, device="cpu")
    _C.mirror_sweep(
        _MODEL_CODES[problem.model],
        [_np(params[k], dtype) for k in keys],
        [_np(problem.target[k], dtype) for k in _TARGET_KEYS[problem.model]],
        None if problem.offset is None else _np(problem.offset, dtype),
        _np(problem.gamma, dtype),
        _np(problem.eta, dtype),
        _np(problem.noise, dtype),
        _np(problem.model_ids, torch.int64),
        0 if problem.batch is None else int(problem.batch),
        _ACTIVATION_CODES[problem.activation],
        int(problem.seed),
        int(step0),
        int(steps),
        int(record_every),
        [out[k].numpy() for k in keys],
        losses.numpy(),
    )
    return out, losses
