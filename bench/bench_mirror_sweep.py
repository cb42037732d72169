"""mirror_sweep: 300 small models trained in one C++ call vs the torch loop a user would write.

Cases (float64, the mirror experiments' default dtype; M = 300 models = 20 weight decays γ ×
15 seeds; a seed fixes a model's initialisation and its Philox data id, so the γ of one seed see
the same data):

* (a) rescaling θ = u ⊙ w, d = 50, SGD batch 8, label noise σ = 0.5;
* (b) mlp h = 16, d = 10, batch 16, tanh, teacher width 4, σ = 0.1;
* (c) factorization U Wᵀ ≈ A, 20 × 15, k = 15, full matrix with entrywise label noise σ = 0.1.

What is timed, in the same run on the same problem:

* ``symkern``: the cpp kernel, all 300 models × ``STEPS_CPP`` steps in one call (OpenMP over
  models, every thread of the machine);
* ``torch_loop``: what a user writes without symkern — for each model a Python loop over steps
  with ``torch.randn`` data, ``loss.backward()`` on ℓ + γ‖θ‖² and an SGD update under
  ``torch.no_grad()``. Same shapes and math; torch's generator instead of the Philox stream. At
  ~0.1–0.5 ms per model-step, 300 × ``STEPS_CPP`` would take minutes, so it is timed on
  ``LOOP_MODELS`` models × ``LOOP_STEPS`` steps and compared per model-step (each model costs
  the same; extra_info ``torch_loop_note`` says so);
* ``torch_compile_loop``: that loop with the SGD step (loss, ``torch.func.grad``, update)
  under ``torch.compile``, data drawn eagerly outside it; checked against the eager loop (same
  seed and data) and timed like it, per model-step;
* ``symkern_torch_reference``: symkern's own vectorised torch kernel (``backend="torch"``, all
  300 models batched, same Philox data as cpp) for ``REF_STEPS`` steps.

Both torch baselines run with one torch intra-op thread. On the shared 2-core machine this was
written on, a second torch thread that gets descheduled stalls every op's barrier: measured
(loadavg 3.5–5) 0.5 ms vs 2–72 ms per step for the factorization loop and 0.14 vs 6 ms per
model-step for the rescaling reference (2 steps) at 1 vs 2 threads — it would inflate the
speedups. cpp runs one
model per thread with no barrier per step and uses every thread, so extra_info also gives the
speedups per thread (``..._per_thread``): one torch process per core would at best divide the
baselines' time by the thread count.

Reported (extra_info and stdout): wall µs per model-step of each and the per-model-step
speedups of cpp over both; the target is cpp ≥ 20× the torch loop. Also the process CPU time
per model-step of cpp (summed over its threads) and of the torch loop, and their ratio: on a
shared machine wall time includes waiting for a core, CPU time does not. The harness's per-call
speedup_vs_* compare calls of different sizes and are dropped.

Correctness before timing: cpp vs the float64 torch reference on the same problem (all models,
5 steps, float64 tolerance), and the float32 kernel vs that reference (float32 tolerance).
``--benchmark-disable`` (smoke): 4 models, 3 steps, checks only.

GPU cases (``test_mirror_sweep_3000_models_gpu``, the same three models): the Triton kernels
(``backend="triton"``: one program per model, every step in one launch) on CUDA with M = 3000
models (20 γ × 150 seeds), float64, ``GPU_STEPS`` steps, timed with ``triton.testing.do_bench``
against, on the same GPU, symkern's vectorised torch reference (all models batched) and the
per-model torch autograd loop (timed on ``LOOP_MODELS`` × ``LOOP_STEPS`` and compared per
model-step, as above). extra_info: µs per model-step of each, the per-model-step speedups, the
device name. Before timing, triton in float64 and float32 is checked against the float64 torch
reference on the CPU (all models, same Philox data). Without CUDA they are skipped, except in the
smoke run, which executes them (4 models, 3 steps) in the Triton interpreter on CPU tensors.
"""

from __future__ import annotations

import os
import time

import pytest
import torch
from conftest import drop_per_call_speedups  # noqa: E402

pytest.importorskip("symkern._C")

import symkern._C as _C  # noqa: E402

from symkern.mirror.sweeps import train_sweep  # noqa: E402
from symkern.testing import assert_close  # noqa: E402

DT = torch.float64
N_GAMMA, N_SEEDS = 20, 15
STEPS_CPP = 200
LOOP_MODELS, LOOP_STEPS = 3, 40
REF_STEPS = 10
RECORD_EVERY = 5


def _problem(case: str, smoke: bool, n_seeds: int = N_SEEDS) -> dict:
    """Parameters and keyword arguments of ``train_sweep`` for one bench case (M = N_GAMMA x
    ``n_seeds`` models; smoke: 2 x 2)."""
    n_gamma, n_seeds = (2, 2) if smoke else (N_GAMMA, n_seeds)
    M = n_gamma * n_seeds
    seed_of = torch.arange(M) % n_seeds  # model i: seed i mod S, gamma i // S

    def init(*shape, scale):
        out = torch.empty(M, *shape, dtype=DT)
        for s in range(n_seeds):
            g = torch.Generator().manual_seed(1000 + s)
            out[seed_of == s] = scale * torch.randn(*shape, generator=g, dtype=DT)
        return out

    g = torch.Generator().manual_seed(7)
    if case == "rescaling":
        d = 50
        params = {"u": init(d, scale=0.5), "w": init(d, scale=0.5)}
        gmax, eta, kw = 1.5, 0.01, {"batch": 8, "target": torch.randn(d, generator=g, dtype=DT),
                                    "noise": 0.5}  # fmt: skip
    elif case == "mlp":
        h, d, ht = 16, 10, 4
        teacher = {"W1": torch.randn(ht, d, generator=g, dtype=DT) / d**0.5,
                   "b1": torch.randn(ht, generator=g, dtype=DT),
                   "a": torch.randn(ht, generator=g, dtype=DT)}  # fmt: skip
        params = {"W1": init(h, d, scale=d**-0.5), "b1": init(h, scale=1.0),
                  "a": init(h, scale=1.0 / h)}  # fmt: skip
        gmax, eta, kw = 0.05, 0.05, {"batch": 16, "target": teacher, "noise": 0.1,
                                     "activation": "tanh"}  # fmt: skip
    else:
        m, n, k = 20, 15, 15
        params = {"U": init(m, k, scale=0.1), "W": init(n, k, scale=0.1)}
        gmax, eta, kw = 2.0, 0.01, {"batch": None, "noise": 0.1,
                                    "target": torch.randn(m, n, generator=g, dtype=DT)}  # fmt: skip
    gammas = torch.linspace(0.0, gmax, n_gamma, dtype=DT).repeat_interleave(n_seeds)
    return {"model": case, "params": params, "gammas": gammas, "eta": eta,
            "model_ids": seed_of, "kw": kw}  # fmt: skip


def _sweep_fn(pb: dict, steps: int, backend: str, dtype=DT):
    params = {k: v.to(dtype) for k, v in pb["params"].items()}

    def cast(v):
        if isinstance(v, dict):
            return {k: cast(x) for k, x in v.items()}
        return v.to(dtype) if isinstance(v, torch.Tensor) else v

    kw = cast(pb["kw"])
    gammas = pb["gammas"].to(dtype)

    def fn():
        return train_sweep(pb["model"], params, gammas, pb["eta"], steps, seed=11,
                           model_ids=pb["model_ids"], record_every=min(RECORD_EVERY, steps),
                           backend=backend, **kw)  # fmt: skip

    return fn


def _check(pb: dict):
    def check():
        ref = _sweep_fn(pb, 5, "torch")()
        for dtype in (DT, torch.float32):
            out = _sweep_fn(pb, 5, "cpp", dtype)()
            assert out.backend == "cpp"
            for k in ref.params:
                assert_close(out.params[k], ref.params[k], msg=f"{k}: ")
            assert_close(out.losses, ref.losses, msg="losses: ")

    return check


def _cpu_seconds(fn, rounds: int = 3) -> float:
    """Least process CPU time (all threads) of ``fn()`` over ``rounds`` calls: on a shared
    machine it does not count the time a thread waits for a core, unlike wall time."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def _one_torch_thread(fn):
    """``fn`` run with one torch intra-op thread (see the module docstring for why)."""

    def run():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(threads)

    return run


def _torch_model(pb: dict, device: torch.device | str = "cpu"):
    """(draw, data_loss) of the code a user writes: ``draw()`` the step's random tensors with
    torch.randn, ``data_loss(p, batch)`` the model's data loss on them."""
    model, kw = pb["model"], pb["kw"]
    sigma, B, target = float(kw["noise"]), kw["batch"], kw["target"]
    params = pb["params"]

    def draw():
        if model in ("rescaling", "mlp"):
            d = params["u"].shape[1] if model == "rescaling" else params["W1"].shape[2]
            x = torch.randn(B, d, dtype=DT, device=device)
            return x, torch.randn(B, dtype=DT, device=device)
        return (torch.randn(target.shape, dtype=DT, device=device),)

    def data_loss(p, batch):
        if model == "rescaling":
            x, noise = batch
            y = x @ target + sigma * noise
            return ((x @ (p["u"] * p["w"]) - y) ** 2).mean()
        if model == "mlp":
            x, noise = batch
            y = torch.tanh(x @ target["W1"].T + target["b1"]) @ target["a"] + sigma * noise
            return ((torch.tanh(x @ p["W1"].T + p["b1"]) @ p["a"] - y) ** 2).mean()
        return ((p["U"] @ p["W"].T - (target + sigma * batch[0])) ** 2).sum()

    return draw, data_loss


def _torch_loop(pb: dict, n_models: int, steps: int, device: torch.device | str = "cpu"):
    """The per-model Python loop a user writes: torch.randn data, autograd, SGD (on ``device``,
    where ``pb``'s tensors must be)."""
    draw, data_loss = _torch_model(pb, device)
    eta = float(pb["eta"])

    def run():
        for i in range(n_models):
            gamma = float(pb["gammas"][i])
            p = {k: v[i].clone().requires_grad_(True) for k, v in pb["params"].items()}
            for _ in range(steps):
                loss = data_loss(p, draw()) + gamma * sum((v**2).sum() for v in p.values())
                loss.backward()
                with torch.no_grad():
                    for v in p.values():
                        v -= eta * v.grad
                        v.grad = None
        return p

    return run


def _compiled_loop(pb: dict, n_models: int, steps: int):
    """The same loop with the SGD step (loss, gradient by torch.func.grad, update) under
    ``torch.compile``: the usual way to compile a training step, data drawn eagerly outside it.
    γ goes in as a 0-d tensor so the 20 weight decays share one compiled graph."""
    draw, data_loss = _torch_model(pb)
    eta = float(pb["eta"])

    def step(p, batch, gamma):
        def loss(q):
            return data_loss(q, batch) + gamma * sum((v**2).sum() for v in q.values())

        grads = torch.func.grad(loss)(p)
        return {k: v - eta * grads[k] for k, v in p.items()}

    compiled_step = torch.compile(step, dynamic=False)

    def run():
        for i in range(n_models):
            gamma = pb["gammas"][i].to(DT)
            p = {k: v[i].clone() for k, v in pb["params"].items()}
            for _ in range(steps):
                p = compiled_step(p, draw(), gamma)
        return p

    return run


def _check_compiled_loop(pb: dict):
    """The compiled step takes the eager loop's steps: same seed, same data, float64 tolerance."""

    def check():
        results = []
        for fn in (_torch_loop(pb, 1, 3), _compiled_loop(pb, 1, 3)):
            torch.manual_seed(5)
            results.append({k: v.detach() for k, v in fn().items()})
        for k in results[0]:
            assert_close(results[1][k], results[0][k], msg=f"compiled step, {k}: ")

    return check


@pytest.mark.parametrize("case", ["rescaling", "mlp", "factorization"])
def test_mirror_sweep_300_models(compare, smoke, case):
    pb = _problem(case, smoke)
    M = pb["gammas"].numel()
    steps = 3 if smoke else STEPS_CPP
    loop_models, loop_steps = (1, 2) if smoke else (LOOP_MODELS, LOOP_STEPS)
    ref_steps = 2 if smoke else REF_STEPS
    cpp_fn = _sweep_fn(pb, steps, "cpp")
    loop_fn = _one_torch_thread(_torch_loop(pb, loop_models, loop_steps))
    compiled_fn = _one_torch_thread(_compiled_loop(pb, loop_models, loop_steps))
    check_cpp, check_compiled = _check(pb), _check_compiled_loop(pb)
    info = compare(
        cpp_fn,
        baselines={
            "torch_loop": loop_fn,
            "torch_compile_loop": compiled_fn,
            "symkern_torch_reference": _one_torch_thread(_sweep_fn(pb, ref_steps, "torch")),
        },
        check=lambda: (check_cpp(), check_compiled()),
    )
    if smoke:
        return
    ex = compare.benchmark.extra_info
    drop_per_call_speedups(ex)
    cpp_us = info["symkern_ms"] * 1e3 / (M * steps)
    loop_us = info["torch_loop_ms"] * 1e3 / (loop_models * loop_steps)
    compiled_us = info["torch_compile_loop_ms"] * 1e3 / (loop_models * loop_steps)
    ref_us = info["symkern_torch_reference_ms"] * 1e3 / (M * ref_steps)
    threads = _C.build_info()["max_threads"]
    cpp_cpu_us = _cpu_seconds(cpp_fn) * 1e6 / (M * steps)
    loop_cpu_us = _cpu_seconds(loop_fn) * 1e6 / (loop_models * loop_steps)
    ex.update({
        "models": M, "steps_cpp": steps, "cpp_us_per_model_step": cpp_us,
        "torch_loop_us_per_model_step": loop_us, "torch_reference_us_per_model_step": ref_us,
        "speedup_per_model_step_vs_torch_loop": loop_us / cpp_us,
        "speedup_per_model_step_vs_torch_loop_per_thread": loop_us / cpp_us / threads,
        "torch_compile_loop_us_per_model_step": compiled_us,
        "speedup_per_model_step_vs_torch_compile_loop": compiled_us / cpp_us,
        "speedup_per_model_step_vs_torch_reference": ref_us / cpp_us,
        "speedup_per_model_step_vs_torch_reference_per_thread": ref_us / cpp_us / threads,
        "cpp_cpu_us_per_model_step": cpp_cpu_us, "torch_loop_cpu_us_per_model_step": loop_cpu_us,
        "speedup_cpu_time_vs_torch_loop": loop_cpu_us / cpp_cpu_us,
        "target_speedup_vs_torch_loop": 20.0,
        "torch_loop_note": f"timed on {loop_models} models x {loop_steps} steps, per model-step",
        "threads": threads, "isa": _C.mirror_sweep_isa(),
        "loadavg_1min": os.getloadavg()[0],
    })  # fmt: skip
    print(
        f"\n  {case}: cpp {cpp_us:.3f} us/model-step ({M} models x {steps} steps, "
        f"{ex['threads']} threads, {ex['isa']}); torch loop {loop_us:.1f} us "
        f"(x{loop_us / cpp_us:.0f}, x{loop_us / cpp_us / threads:.0f} per thread); "
        f"compiled step {compiled_us:.1f} us (x{compiled_us / cpp_us:.0f}); "
        f"torch reference {ref_us:.2f} us (x{ref_us / cpp_us:.1f}); CPU time per model-step: "
        f"cpp {cpp_cpu_us:.2f} us, torch loop {loop_cpu_us:.1f} us "
        f"(x{loop_cpu_us / cpp_cpu_us:.0f}); loadavg {ex['loadavg_1min']:.2f}"
    )


# --- GPU: the Triton mirror_sweep kernels on CUDA ------------------------------------------------
# Timed on CUDA only. The smoke run (--benchmark-disable) without a GPU still executes them, at
# tiny sizes under the Triton interpreter on CPU tensors, so CI runs their correctness checks.

GPU_SEEDS = 150  # 20 weight decays x 150 seeds = 3000 models (one Triton program each)
GPU_STEPS = 200


def _on_device(pb: dict, dev: str) -> dict:
    """``pb`` with its parameters, weight decays and targets on ``dev`` (the model ids stay on
    the CPU: train_sweep's kernels take them from there)."""

    def move(v):
        if isinstance(v, dict):
            return {k: move(x) for k, x in v.items()}
        return v.to(dev) if isinstance(v, torch.Tensor) else v

    return {**pb, "params": move(pb["params"]), "gammas": pb["gammas"].to(dev),
            "kw": move(pb["kw"])}  # fmt: skip


def _check_triton(pb_cpu: dict, pb_dev: dict, steps: int):
    """Triton (float64 and float32, on the device) vs the float64 torch reference on the CPU:
    all models, the same Philox data."""

    def check():
        ref = _sweep_fn(pb_cpu, steps, "torch")()
        for dtype in (DT, torch.float32):
            out = _sweep_fn(pb_dev, steps, "triton", dtype)()
            assert out.backend == "triton"
            for k in ref.params:
                assert out.params[k].dtype == dtype
                assert_close(out.params[k], ref.params[k], msg=f"{dtype} {k}: ")
            assert_close(out.losses, ref.losses, msg=f"{dtype} losses: ")

    return check


@pytest.mark.parametrize("case", ["rescaling", "mlp", "factorization"])
def test_mirror_sweep_3000_models_gpu(compare, smoke, gpu_device, case):
    """M = 3000 models (20 γ x 150 seeds), float64, ``GPU_STEPS`` steps: the Triton kernel (one
    program per model, every step in one launch) vs, on the same GPU, symkern's vectorised torch
    reference (all models batched; its Philox draws are made on the CPU and copied over, as the
    reference always does) and the per-model torch autograd loop (timed on ``LOOP_MODELS`` models
    x ``LOOP_STEPS`` steps, compared per model-step)."""
    dev = gpu_device
    pb_cpu = _problem(case, smoke, n_seeds=GPU_SEEDS)
    pb = _on_device(pb_cpu, dev)
    M = pb["gammas"].numel()
    steps = 3 if smoke else GPU_STEPS
    loop_models, loop_steps = (1, 2) if smoke else (LOOP_MODELS, LOOP_STEPS)
    ref_steps = 2 if smoke else REF_STEPS
    info = compare(
        _sweep_fn(pb, steps, "triton"),
        baselines={
            "torch_loop": _torch_loop(pb, loop_models, loop_steps, device=dev),
            "symkern_torch_reference": _sweep_fn(pb, ref_steps, "torch"),
        },
        check=_check_triton(pb_cpu, pb, 2 if smoke else 5),
        device=dev,
    )
    if smoke:
        return
    ex = compare.benchmark.extra_info
    drop_per_call_speedups(ex)
    us = info["symkern_ms"] * 1e3 / (M * steps)
    loop_us = info["torch_loop_ms"] * 1e3 / (loop_models * loop_steps)
    ref_us = info["symkern_torch_reference_ms"] * 1e3 / (M * ref_steps)
    ex.update({
        "models": M, "steps_triton": steps, "steps_torch_reference": ref_steps, "dtype": "float64",
        "triton_us_per_model_step": us, "torch_loop_us_per_model_step": loop_us,
        "torch_reference_us_per_model_step": ref_us,
        "speedup_per_model_step_vs_torch_loop": loop_us / us,
        "speedup_per_model_step_vs_torch_reference": ref_us / us,
        "target_speedup_vs_torch_loop": 20.0,
        "target_note": "PERF.md has no mirror-sweep target; 20x the torch loop is this file's "
                       "(CPU) target, applied per model-step on the same GPU",
        "torch_loop_note": f"timed on {loop_models} models x {loop_steps} steps, per model-step",
        "torch_reference_note": "Philox normals drawn on the CPU and copied to the GPU per "
                                "block of steps (the reference's design)",
        "torch_threads": torch.get_num_threads(), "device_name": torch.cuda.get_device_name(),
    })  # fmt: skip
    print(f"\n  GPU {case}: triton {us:.4f} us/model-step ({M} models x {steps} steps); "
          f"torch loop {loop_us:.1f} us (x{loop_us / us:.0f}); torch reference {ref_us:.3f} us "
          f"(x{ref_us / us:.1f})")  # fmt: skip
