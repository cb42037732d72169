"""Benchmark harness (pytest-benchmark).

Every case goes through :func:`compare`: it checks symkern's result against the baselines'
before timing anything, then times — in the same run, on the same inputs — symkern (through
pytest-benchmark), each baseline a user would otherwise write, and, for memory-bound ops, a plain
copy of the same bytes (the floor). Ratios land in ``benchmark.extra_info`` and so in the JSON:

    pytest bench --benchmark-json=bench/results/<machine>.json

``pytest bench --benchmark-disable`` is the CI smoke test: every case runs once on small inputs
(``smoke`` fixture) and its correctness checks still apply.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from symkern.testing import skip_triton_interpreter_repatching  # noqa: E402

skip_triton_interpreter_repatching()  # the smoke run's interpreted Triton cases


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_seconds(
    fn: Callable[[], object],
    *,
    device: torch.device | str | None = "cpu",
    min_rounds: int = 5,
    max_rounds: int = 50,
    budget_s: float = 1.0,
) -> float:
    """Median wall time of ``fn()`` after one warm-up call. CUDA: ``triton.testing.do_bench``
    (CUDA events, L2 flushed between calls, median over ~``budget_s``/5 of repeats)."""
    if device is not None and torch.device(device).type == "cuda":
        from triton.testing import do_bench

        ms = do_bench(fn, warmup=25, rep=max(50, int(budget_s * 200)), return_mode="median")
        return ms / 1e3
    fn()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_rounds and (
        len(times) < min_rounds or time.perf_counter() - start < budget_s
    ):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_floor_seconds(x: torch.Tensor) -> float:
    """Time of a plain copy of x's bytes into a fresh buffer (read + write of the same bytes)."""
    src = x.contiguous()
    dst = torch.empty_like(src)
    return median_seconds(lambda: dst.copy_(src), device=src.device)


class Comparison:
    """Times one symkern callable against baselines and the copy floor; fills extra_info."""

    def __init__(self, benchmark, smoke: bool):
        self.benchmark = benchmark
        self.smoke = smoke

    def __call__(
        self,
        symkern_fn: Callable[[], object],
        *,
        baselines: dict[str, Callable[[], object]] | None = None,
        floor_of: torch.Tensor | None = None,
        check: Callable[[], None] | None = None,
        device: torch.device | str = "cpu",
        rounds: int = 10,
        bytes_moved: float | None = None,
        flops: float | None = None,
    ) -> dict[str, float]:
        if check is not None:
            check()  # correctness before any timing
        info = self.benchmark.extra_info
        if self.smoke:
            # --benchmark-disable: pedantic runs symkern_fn once, untimed
            self.benchmark.pedantic(symkern_fn, rounds=1, iterations=1)
            for fn in (baselines or {}).values():
                fn()
            return {}
        timed = symkern_fn
        if torch.device(device).type == "cuda":  # pytest-benchmark's clock: wait for the GPU

            def timed():
                symkern_fn()
                _sync(device)

        self.benchmark.pedantic(
            timed,
            rounds=rounds,
            iterations=1,
            warmup_rounds=1,
            setup=(lambda: _sync(device)),
        )
        t_sym = median_seconds(symkern_fn, device=device)
        info["symkern_ms"] = t_sym * 1e3
        for name, fn in (baselines or {}).items():
            t = median_seconds(fn, device=device, max_rounds=10)
            info[f"{name}_ms"] = t * 1e3
            info[f"speedup_vs_{name}"] = t / t_sym
        if floor_of is not None:
            t_copy = copy_floor_seconds(floor_of)
            info["copy_floor_ms"] = t_copy * 1e3
            info["ratio_vs_copy_floor"] = t_sym / t_copy
        if bytes_moved is not None:
            info["achieved_GBps"] = bytes_moved / t_sym / 1e9
        if flops is not None:
            info["achieved_TFLOPs"] = flops / t_sym / 1e12
        print("\n  " + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in info.items()
        ))  # fmt: skip
        return dict(info)


def drop_per_call_speedups(extra_info: dict) -> None:
    """Remove compare()'s speedup_vs_* ratios: they compare whole calls, meaningless when symkern
    and the baselines run different amounts of work per call (the cases then record per-step or
    per-model-step ratios instead)."""
    for key in [k for k in extra_info if k.startswith("speedup_vs_")]:
        del extra_info[key]


@pytest.fixture
def smoke(request) -> bool:
    """True under --benchmark-disable (CI smoke test): use small inputs, time nothing."""
    return bool(request.config.getoption("benchmark_disable"))


@pytest.fixture
def gpu_device(smoke) -> str:
    """Device of a GPU case: "cuda" when there is one. Without one the case is skipped, except
    in the smoke run, which executes it at tiny sizes on CPU tensors in the Triton interpreter
    (TRITON_INTERPRET=1, set above), so CI runs the GPU cases' correctness checks too."""
    if torch.cuda.is_available():
        return "cuda"
    if smoke:
        return "cpu"
    pytest.skip("GPU case: timed on CUDA only")


@pytest.fixture
def compare(benchmark, smoke) -> Comparison:
    return Comparison(benchmark, smoke)
