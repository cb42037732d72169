"""The ``mirror_sweep`` op (symkern.mirror.sweeps): torch kernel vs a per-model autograd loop on
the same Philox data, closed forms (sparsity, singular values), batching independence, bad input.
All float64, one torch thread, small sizes."""

import numpy as np
import pytest
import torch

import symkern.backends.reference.mirror_sweeps  # noqa: F401 — registers the torch kernel
from symkern.backends.registry import BackendUnavailableError
from symkern.meanfield import rng
from symkern.mirror.sweeps import (
    closed_form_singular_values,
    closed_form_sparsity,
    effective_rank,
    soft_threshold,
    sparsity,
    train_sweep,
)
from symkern.testing import assert_close

F64 = torch.float64


# small torch ops: one torch thread is faster than two (and keeps timings stable on shared cores)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- a plain per-model loop with autograd: the oracle --------------------------------------------


def _loss_one(model, p, t, i, *, seed, B, beta=None, A=None, C=None, teacher=None, noise=0.0,
              act="tanh"):  # fmt: skip
    ids = torch.tensor([i])
    if model == "rescaling":
        d = beta.numel()
        theta = p["u"] * p["w"]
        if B is None:
            return ((theta - beta) ** 2).sum()
        x = rng.normal(seed, ids, t, rng.STREAM_DATA, B * d)[0].view(B, d)
        e = rng.normal(seed, ids, t, rng.STREAM_NOISE, B)[0]
        y = x @ beta + noise * e
        return ((x @ theta - y) ** 2).mean()
    if model == "factorization":
        m, n = A.shape
        target = A
        if noise > 0:
            target = A + noise * rng.normal(seed, ids, t, rng.STREAM_NOISE, m * n)[0].view(m, n)
        U = p["U"] if C is None else p["U"] + C
        return ((U @ p["W"].T - target) ** 2).sum()
    d = p["W1"].shape[1]
    x = rng.normal(seed, ids, t, rng.STREAM_DATA, B * d)[0].view(B, d)
    e = rng.normal(seed, ids, t, rng.STREAM_NOISE, B)[0]
    phi = torch.tanh if act == "tanh" else torch.relu

    def f(P):
        return phi(x @ P["W1"].T + P["b1"]) @ P["a"]

    y = f(teacher) + noise * e
    return ((f(p) - y) ** 2).mean()


def loop_reference(model, params, gammas, etas, steps, **kw):
    """Per-model Python loop, autograd gradients of ℓ + γ‖θ‖²."""
    out = {k: [] for k in params}
    M = next(iter(params.values())).shape[0]
    noise = kw.pop("noise", torch.zeros(M, dtype=F64))
    for i in range(M):
        p = {k: v[i].clone().requires_grad_(True) for k, v in params.items()}
        for t in range(steps):
            loss = _loss_one(model, p, t, i, noise=float(noise[i]), **kw)
            loss = loss + gammas[i] * sum((v**2).sum() for v in p.values())
            grads = torch.autograd.grad(loss, list(p.values()))
            with torch.no_grad():
                p = {k: (v - etas[i] * g).requires_grad_(True)
                     for (k, v), g in zip(p.items(), grads, strict=True)}  # fmt: skip
        for k in p:
            out[k].append(p[k].detach())
    return {k: torch.stack(v) for k, v in out.items()}


def _rand(shape, g, scale=0.3):
    return scale * torch.randn(*shape, generator=g, dtype=F64)


@pytest.mark.parametrize("B", [None, 1, 7])
def test_rescaling_kernel_matches_loop(B):
    g = gen(1)
    M, d, steps = 3, 5, 12
    beta = torch.randn(d, generator=g, dtype=F64)
    p = {"u": _rand((M, d), g), "w": _rand((M, d), g)}
    gam = torch.tensor([0.0, 0.3, 1.1], dtype=F64)
    eta = torch.tensor([0.05, 0.02, 0.08], dtype=F64)
    noise = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    r = train_sweep("rescaling", p, gam, eta, steps, B, 11, target=beta, noise=noise,
                    backend="torch")  # fmt: skip
    ref = loop_reference("rescaling", p, gam, eta, steps, seed=11, B=B, beta=beta, noise=noise)
    for k in ("u", "w"):
        assert_close(r.params[k], ref[k], msg=k)
    assert r.backend == "torch"


def test_factorization_kernel_matches_loop_noise_and_offset():
    g = gen(2)
    M, m, n, k, steps = 2, 4, 3, 3, 10
    A = torch.randn(m, n, generator=g, dtype=F64)
    C = torch.randn(m, k, generator=g, dtype=F64)
    p = {"U": _rand((M, m, k), g), "W": _rand((M, n, k), g)}
    gam, eta = torch.tensor([0.1, 0.7], dtype=F64), torch.tensor([0.02, 0.03], dtype=F64)
    noise = torch.tensor([0.3, 0.0], dtype=F64)
    for off in (None, C):
        r = train_sweep("factorization", p, gam, eta, steps, None, 5, target=A, noise=noise,
                        offset=off)  # fmt: skip
        ref = loop_reference("factorization", p, gam, eta, steps, seed=5, B=None, A=A, C=off,
                             noise=noise)  # fmt: skip
        for key in ("U", "W"):
            assert_close(r.params[key], ref[key], msg=f"{key} offset={off is not None}")


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_mlp_kernel_matches_loop(act):
    g = gen(3)
    M, h, ht, d, B, steps = 3, 4, 2, 3, 5, 8
    teacher = {"W1": torch.randn(ht, d, generator=g, dtype=F64),
               "b1": torch.randn(ht, generator=g, dtype=F64),
               "a": torch.randn(ht, generator=g, dtype=F64)}  # fmt: skip
    p = {"W1": _rand((M, h, d), g), "b1": _rand((M, h), g), "a": _rand((M, h), g)}
    gam = torch.tensor([0.0, 0.05, 0.2], dtype=F64)
    eta = torch.tensor([0.1, 0.05, 0.1], dtype=F64)
    noise = torch.tensor([0.1, 0.0, 0.2], dtype=F64)
    r = train_sweep("mlp", p, gam, eta, steps, B, 9, target=teacher, noise=noise, activation=act)
    ref = loop_reference("mlp", dict(p), gam, eta, steps, seed=9, B=B, teacher=teacher,
                         noise=noise, act=act)  # fmt: skip
    for key in p:
        assert_close(r.params[key], ref[key], msg=key)


def test_trajectory_independent_of_batching_and_resumable():
    """Model i's data are keyed by (seed, model id): training it alone with its id, or in two
    chunks via step0, gives the same result as the full batched call."""
    g = gen(4)
    M, d = 4, 6
    beta = torch.randn(d, generator=g, dtype=F64)
    p = {"u": _rand((M, d), g), "w": _rand((M, d), g)}
    gam = torch.linspace(0, 1, M, dtype=F64)
    full = train_sweep("rescaling", p, gam, 0.03, 20, 3, 7, target=beta, noise=0.5,
                       record_every=5)  # fmt: skip
    one = train_sweep("rescaling", {k: v[2:3] for k, v in p.items()}, gam[2:3], 0.03, 20, 3, 7,
                      target=beta, noise=0.5, model_ids=[2])  # fmt: skip
    assert torch.equal(one.params["u"][0], full.params["u"][2])
    a = train_sweep("rescaling", p, gam, 0.03, 8, 3, 7, target=beta, noise=0.5)
    b = train_sweep("rescaling", a.params, gam, 0.03, 12, 3, 7, target=beta, noise=0.5, step0=8)
    assert torch.equal(b.params["w"], full.params["w"])
    assert full.losses.shape == (M, 4) and full.loss_steps.tolist() == [4, 9, 14, 19]


def test_record_every_longer_than_the_call_is_rejected():
    """record_every > steps would record nothing (losses (M, 0)): a ValueError naming both, not a
    silent empty result; record_every == steps records the last step."""
    for steps, every in ((3, 5), (5, 10)):
        msg = rf"record_every must be <= steps \({steps}\), got {every}"
        with pytest.raises(ValueError, match=msg):
            train_sweep("rescaling", _resc(), 0.1, 0.1, steps, None, target=torch.ones(3),
                        record_every=every)  # fmt: skip
    r = train_sweep("rescaling", _resc(), 0.1, 0.1, 3, None, target=torch.ones(3), record_every=3)
    assert r.losses.shape == (2, 1) and r.loss_steps.tolist() == [2]
    r = train_sweep("rescaling", _resc(), 0.1, 0.1, 10, None, target=torch.ones(3),
                    record_every=3, step0=4)  # fmt: skip
    assert r.losses.shape == (2, 3) and r.loss_steps.tolist() == [6, 9, 12]


def test_rng_block_matches_rng_normal():
    from symkern.backends.reference.mirror_sweeps import normal_block

    ids = torch.tensor([0, 5, 2**31])
    z = normal_block(123, ids, 40, 3, rng.STREAM_DATA, 7)
    for k in range(3):
        assert torch.equal(z[k], rng.normal(123, ids, 40 + k, rng.STREAM_DATA, 7))


# --- closed forms ---------------------------------------------------------------------------------


def test_sparsity_matches_closed_form_population_gd():
    """Population loss ‖u⊙w − β‖² + γ(‖u‖² + ‖w‖²), exact GD: the fraction |u_i w_i| < 1e-3
    equals P(|β_i| ≤ γ) on the realised β, and θ is the soft threshold. The γ are chosen ≥ 0.03
    away from every |β_i| (a coordinate at distance δ from the threshold converges at rate 2ηδ,
    so every coordinate settles in the step budget)."""
    g = gen(5)
    d = 60
    beta = torch.randn(d, generator=g, dtype=F64)
    grid = torch.linspace(0.05, 2.0, 400, dtype=F64)
    dist = (grid[:, None] - beta.abs()[None, :]).abs().min(1).values
    cands = grid[dist >= 0.03]
    gammas = cands[torch.linspace(0, len(cands) - 1, 6).round().long()]
    M = len(gammas)
    assert M >= 4
    p = {"u": _rand((M, d), g, 0.1), "w": _rand((M, d), g, 0.1)}
    r = train_sweep("rescaling", p, gammas, 0.05, 4000, None, target=beta)
    sp = sparsity(r.params["u"], r.params["w"], 1e-3)
    cf = torch.tensor([closed_form_sparsity(beta, float(x)) for x in gammas], dtype=F64)
    assert (sp - cf).abs().max() <= 1e-3, (sp, cf)
    assert cf.min() < 0.2 and cf.max() > 0.8  # the check covers a wide range of sparsity
    theta = r.params["u"] * r.params["w"]
    for i, x in enumerate(gammas):
        assert (theta[i] - soft_threshold(beta, float(x))).abs().max() < 1e-3


def test_singular_values_match_closed_form():
    """‖UWᵀ − A‖²_F + γ(‖U‖² + ‖W‖²) ⇒ σ_i(UWᵀ) = max(0, σ_i(A) − γ) (γ away from σ_i(A))."""
    g = gen(6)
    m, n, k = 8, 6, 6
    A = torch.randn(m, n, generator=g, dtype=F64)
    s = torch.linalg.svdvals(A)
    gammas = torch.cat([torch.zeros(1, dtype=F64), (s[1:] + s[:-1])[[0, 2, 4]] / 2])
    M = len(gammas)
    p = {"U": _rand((M, m, k), g, 0.1), "W": _rand((M, n, k), g, 0.1)}
    r = train_sweep("factorization", p, gammas, 0.03, 3000, None, target=A)
    P = r.params["U"] @ r.params["W"].transpose(1, 2)
    for i, x in enumerate(gammas):
        cf = closed_form_singular_values(A, float(x))
        assert (torch.linalg.svdvals(P[i]) - cf).abs().max() <= 1e-3
    ranks = effective_rank(P, 1e-3).tolist()
    assert ranks == [6, 1, 3, 5]


def test_symmetry_broken_factorization_stays_full_rank():
    g = gen(7)
    m, n, k = 8, 6, 6
    A = torch.randn(m, n, generator=g, dtype=F64)
    C = torch.randn(m, k, generator=g, dtype=F64)
    gammas = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=F64)
    p = {"U": _rand((4, m, k), g, 0.1), "W": _rand((4, n, k), g, 0.1)}
    sym = train_sweep("factorization", p, gammas, 0.03, 2000, None, target=A)
    brk = train_sweep("factorization", p, gammas, 0.03, 2000, None, target=A, offset=C)
    P_sym = sym.params["U"] @ sym.params["W"].transpose(1, 2)
    P_brk = (brk.params["U"] + C) @ brk.params["W"].transpose(1, 2)
    assert effective_rank(P_brk, 1e-3).tolist() == [6, 6, 6, 6]
    assert effective_rank(P_sym, 1e-3)[-1] < 6


# --- dispatch and bad input ---------------------------------------------------------------------


def _resc(M=2, d=3):
    return {"u": torch.ones(M, d, dtype=F64), "w": torch.ones(M, d, dtype=F64)}


def test_forced_backend_without_kernel_fails_loudly(monkeypatch):
    """A forced backend without a mirror_sweep kernel raises, naming the op (never a silent
    fallback to the torch reference)."""
    from symkern.backends import registry

    registry._load_kernels("cpp")
    monkeypatch.delitem(registry._KERNELS, ("mirror_sweep", "cpp"), raising=False)
    with pytest.raises(BackendUnavailableError, match="mirror_sweep"):
        train_sweep("rescaling", _resc(), 0.1, 0.1, 1, None, target=torch.ones(3), backend="cpp")


# --- every kernel vs the float64 torch reference -----------------------------------------------


@pytest.fixture
def sweep_backend(backend_case):
    """A backend_case that implements ``mirror_sweep`` (skipped with the reason otherwise)."""
    from symkern.backends.registry import get_backend

    if not get_backend(backend_case.backend).has_kernel("mirror_sweep"):
        pytest.skip(f"no {backend_case.backend!r} kernel for op 'mirror_sweep' is implemented")
    return backend_case


def _noncontig(t: torch.Tensor) -> torch.Tensor:
    """The same values as a non-contiguous view (a strided slice of a wider tensor)."""
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    wide[..., ::2] = t
    out = wide[..., ::2]
    assert not out.is_contiguous() or t.shape[-1] == 1
    return out


def _sweep_case(name: str):
    """(model, params, kwargs) with odd shapes, per-model γ / η / noise, random (never zero)."""
    g = gen(17)
    M = 5
    gam = torch.tensor([0.0, 0.05, 0.3, 1.1, 0.7], dtype=F64)
    noise = torch.tensor([0.0, 0.4, 1.0, 0.2, 0.7], dtype=F64)
    if name.startswith("rescaling"):
        d = 7
        p = {"u": _rand((M, d), g, 0.5), "w": _rand((M, d), g, 0.5)}
        kw = {"batch": None if name == "rescaling_population" else 9,
              "target": torch.randn(d, generator=g, dtype=F64)}  # fmt: skip
        eta = torch.tensor([0.05, 0.02, 0.08, 0.03, 0.04], dtype=F64)
        return "rescaling", p, gam, eta, noise, kw
    if name.startswith("factorization"):
        m, n, k = 5, 3, 4
        p = {"U": _rand((M, m, k), g, 0.5), "W": _rand((M, n, k), g, 0.5)}
        kw = {"batch": None, "target": torch.randn(M, m, n, generator=g, dtype=F64)}
        if name == "factorization_offset":
            kw["offset"] = torch.randn(m, k, generator=g, dtype=F64)
        eta = torch.tensor([0.02, 0.03, 0.01, 0.025, 0.015], dtype=F64)
        return "factorization", p, gam, eta, noise, kw
    h, ht, d = 5, 3, 6
    teacher = {"W1": torch.randn(ht, d, generator=g, dtype=F64),
               "b1": torch.randn(ht, generator=g, dtype=F64),
               "a": torch.randn(ht, generator=g, dtype=F64)}  # fmt: skip
    p = {"W1": _rand((M, h, d), g, 0.6), "b1": _rand((M, h), g), "a": _rand((M, h), g)}
    kw = {"batch": 11, "target": teacher, "activation": name.removeprefix("mlp_")}
    eta = torch.tensor([0.1, 0.05, 0.08, 0.02, 0.06], dtype=F64)
    return "mlp", p, 0.1 * gam, eta, noise, kw


SWEEP_CASES = ["rescaling_population", "rescaling_batch", "factorization", "factorization_offset",
               "mlp_tanh", "mlp_relu"]  # fmt: skip


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", SWEEP_CASES)
def test_kernel_matches_float64_reference(sweep_backend, case, dtype):
    """Every backend's mirror_sweep vs the float64 torch reference on the same Philox data:
    parameters after 13 steps (from step0 = 3), and the recorded losses; non-contiguous
    parameter views in."""
    model, p, gam, eta, noise, kw = _sweep_case(case)
    common = {"seed": 23, "noise": noise, "step0": 3, "record_every": 4}
    ref = train_sweep(model, p, gam, eta, 13, backend="torch", **common, **kw)
    dev = sweep_backend.device

    def move(x):
        return x.to(dev, dtype) if isinstance(x, torch.Tensor) else x

    p_in = {k: _noncontig(v).to(dev, dtype) if dev == "cpu" else move(v) for k, v in p.items()}
    kw_in = {k: ({kk: move(vv) for kk, vv in v.items()} if isinstance(v, dict) else move(v))
             for k, v in kw.items()}  # fmt: skip
    out = train_sweep(model, p_in, move(gam), move(eta), 13, backend=sweep_backend.backend,
                      **{**common, "noise": move(noise)}, **kw_in)  # fmt: skip
    assert out.backend == sweep_backend.backend
    for k in p:
        assert out.params[k].dtype == dtype and out.params[k].shape == p[k].shape
        assert_close(out.params[k].cpu(), ref.params[k], msg=f"{case} {k}: ")
    assert out.losses.shape == ref.losses.shape == (5, 3)
    assert_close(out.losses.cpu(), ref.losses, msg=f"{case} losses: ")
    assert torch.equal(out.loss_steps, ref.loss_steps)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"gammas": -0.1}, "gamma"),
        ({"gammas": torch.tensor([0.1, -1.0])}, "gamma"),
        ({"gammas": torch.tensor([0.1, 0.2, 0.3])}, "gamma"),
        ({"gammas": float("nan")}, "gamma"),
        ({"etas": 0.0}, "eta"),
        ({"steps": 0}, "steps"),
        ({"batch": 0}, "batch"),
        ({"target": torch.ones(4)}, "beta"),
        ({"target": None}, "target"),
        ({"noise": -1.0}, "noise"),
        ({"model": "conv"}, "model"),
        ({"params": {"u": torch.ones(2, 3, dtype=F64)}}, "keys"),
        (
            {"params": {"u": torch.ones(2, 3, dtype=F64), "w": torch.ones(2, 4, dtype=F64)}},
            "shape|\\(M, d\\)",
        ),
        ({"model_ids": [0, 0, 1]}, "model_ids"),
        ({"offset": torch.ones(3, 3)}, "offset"),
    ],
)
def test_bad_input(kwargs, match):
    args = {"model": "rescaling", "params": _resc(), "gammas": 0.1, "etas": 0.1, "steps": 2,
            "batch": None, "target": torch.ones(3)}  # fmt: skip
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        train_sweep(
            args.pop("model"),
            args.pop("params"),
            args.pop("gammas"),
            args.pop("etas"),
            args.pop("steps"),
            args.pop("batch"),
            target=args.pop("target"),
            **args,
        )


@pytest.mark.parametrize("arg", ["gammas", "etas", "noise"])
def test_hyperparameters_must_be_real_numbers(arg):
    """gammas / etas / noise: a bool (of any kind) or a non-number is a TypeError naming the
    argument (bools used to be read as 0 / 1, a string gave torch's "new(): invalid data type")."""
    args = {"gammas": 0.1, "etas": 0.1, "noise": 0.0}

    def call(value):
        kw = {**args, arg: value}
        return train_sweep("rescaling", _resc(), kw.pop("gammas"), kw.pop("etas"), 2, None,
                           target=torch.ones(3), backend="torch", **kw)  # fmt: skip

    bad = [True, np.bool_(True), torch.tensor(True), torch.tensor([True, False]),
           np.array([True, True]), [False, True], "0.1", [0.1, "a"], 0.5j, None]  # fmt: skip
    for value in bad:
        with pytest.raises(TypeError, match=rf"^{arg} must be a real number or one real number "
                           r"per model \(2\), got"):  # fmt: skip
            call(value)
    # real numbers of any kind still work, a list read in float64 (as the tensor)
    ref = call(torch.tensor([0.25, 0.1], dtype=F64))
    for value in ([0.25, 0.1], np.array([0.25, 0.1], np.float64), (0.25, 0.1)):
        out = call(value)
        for k in ref.params:
            assert torch.equal(out.params[k], ref.params[k]), (value, k)
    assert torch.equal(call(np.float32(0.5)).params["u"], call(0.5).params["u"])


def test_bad_input_factorization_and_mlp():
    U, W = torch.ones(2, 4, 3, dtype=F64), torch.ones(2, 5, 3, dtype=F64)
    with pytest.raises(ValueError, match="batch must be None"):
        train_sweep("factorization", {"U": U, "W": W}, 0.1, 0.1, 1, 8, target=torch.ones(4, 5))
    with pytest.raises(ValueError, match="target \\(A\\)"):
        train_sweep("factorization", {"U": U, "W": W}, 0.1, 0.1, 1, None, target=torch.ones(5, 4))
    with pytest.raises(ValueError, match="U \\(M, m, k\\)"):
        train_sweep("factorization", {"U": U, "W": W[:, :, :2]}, 0.1, 0.1, 1, None,
                    target=torch.ones(4, 5))  # fmt: skip
    p = {"W1": torch.ones(2, 3, 4, dtype=F64), "b1": torch.ones(2, 3, dtype=F64),
         "a": torch.ones(2, 3, dtype=F64)}  # fmt: skip
    t = {"W1": torch.ones(2, 4), "b1": torch.ones(2), "a": torch.ones(2)}
    with pytest.raises(ValueError, match="activation"):
        train_sweep("mlp", p, 0.1, 0.1, 1, 4, target=t, activation="gelu")
    with pytest.raises(ValueError, match="int batch"):
        train_sweep("mlp", p, 0.1, 0.1, 1, None, target=t)
    with pytest.raises(ValueError, match="teacher W1"):
        train_sweep("mlp", p, 0.1, 0.1, 1, 4, target={**t, "W1": torch.ones(2, 5)})
    with pytest.raises(TypeError, match="floating"):
        train_sweep("mlp", {**p, "a": torch.ones(2, 3, dtype=torch.int64)}, 0.1, 0.1, 1, 4,
                    target=t)  # fmt: skip


# =================================================================================================
# C++ kernel (csrc/mirror_sweep.cpp, symkern/backends/cpp_mirror_sweep.py): odd shapes, step and
# model-id counters at the 2^32 edge, instruction-set variants, tanh accuracy, and the binding's
# input validation (every bad buffer raises ValueError naming the argument).
# =================================================================================================


def _cpp_ext():
    try:
        import symkern._C as ext
    except ImportError:
        return None
    return ext if hasattr(ext, "mirror_sweep") else None


_EXT = _cpp_ext()
needs_cpp = pytest.mark.skipif(_EXT is None, reason="symkern._C with mirror_sweep is not built")

# (model, sizes, batch, extra kwargs): sizes of 1, sizes just past a 16-counter Philox block and
# a 64-byte row pad (17, 129), per-model noise with zeros, offset, relu / tanh.
CPP_ODD_CASES = {
    "rescaling_d1_B1": ("rescaling", {"d": 1}, 1, {}),
    "rescaling_d129_B3": ("rescaling", {"d": 129}, 3, {}),
    "rescaling_population_d17": ("rescaling", {"d": 17}, None, {}),
    "factorization_1x1_k1": ("factorization", {"m": 1, "n": 1, "k": 1}, None, {}),
    "factorization_9x17_k3_C": ("factorization", {"m": 9, "n": 17, "k": 3}, None, {"offset": 1}),
    "mlp_h1_ht1_d1_B1_tanh": ("mlp", {"h": 1, "ht": 1, "d": 1}, 1, {"activation": "tanh"}),
    "mlp_h17_ht9_d5_B3_relu": ("mlp", {"h": 17, "ht": 9, "d": 5}, 3, {"activation": "relu"}),
    "mlp_h17_ht9_d5_B3_tanh": ("mlp", {"h": 17, "ht": 9, "d": 5}, 3, {"activation": "tanh"}),
}


def _odd_problem(name: str):
    model, sz, batch, extra = CPP_ODD_CASES[name]
    g = gen(31)
    M = 3
    noise = torch.tensor([0.0, 0.6, 0.3], dtype=F64)
    kw = {"batch": batch, "noise": noise}
    if model == "rescaling":
        p = {"u": _rand((M, sz["d"]), g, 0.7), "w": _rand((M, sz["d"]), g, 0.7)}
        kw["target"] = torch.randn(M, sz["d"], generator=g, dtype=F64)
    elif model == "factorization":
        m, n, k = sz["m"], sz["n"], sz["k"]
        p = {"U": _rand((M, m, k), g, 0.6), "W": _rand((M, n, k), g, 0.6)}
        kw["target"] = torch.randn(m, n, generator=g, dtype=F64)
        if extra.get("offset"):
            kw["offset"] = torch.randn(M, m, k, generator=g, dtype=F64)
    else:
        h, ht, d = sz["h"], sz["ht"], sz["d"]
        p = {"W1": _rand((M, h, d), g, 0.8), "b1": _rand((M, h), g), "a": _rand((M, h), g)}
        kw["target"] = {"W1": torch.randn(M, ht, d, generator=g, dtype=F64),
                        "b1": torch.randn(ht, generator=g, dtype=F64),
                        "a": torch.randn(ht, generator=g, dtype=F64)}  # fmt: skip
        kw["activation"] = extra["activation"]
    gam = torch.tensor([0.0, 0.04, 0.2], dtype=F64)
    # step sizes below the stability limit (~1 / the largest Hessian eigenvalue, which grows with
    # d for the rescaling and with m, n for the factorisation): the trajectories stay bounded
    scale = 1.0 / max(sz.get("d", 1) if model == "rescaling" else 1, sz.get("m", 1), sz.get("n", 1))
    eta = scale * torch.tensor([0.03, 0.05, 0.02], dtype=F64)
    return model, p, gam, eta, kw


@needs_cpp
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(CPP_ODD_CASES))
def test_cpp_odd_shapes_and_counter_wrap(name, dtype):
    """cpp vs the float64 torch reference on odd sizes; steps end at the top of the 32-bit step
    counter (step0 = 2^32 − 7, last step 2^32 − 1: train_sweep allows no wrap) and a model id is
    2^32 − 1."""
    model, p, gam, eta, kw = _odd_problem(name)
    common = {"seed": 2**40 + 5, "step0": 2**32 - 7, "record_every": 2,
              "model_ids": [7, 2**32 - 1, 0]}  # fmt: skip
    ref = train_sweep(model, p, gam, eta, 7, backend="torch", **common, **kw)

    def cast(v):
        if isinstance(v, dict):
            return {k: cast(x) for k, x in v.items()}
        return v.to(dtype) if isinstance(v, torch.Tensor) else v

    out = train_sweep(model, cast(p), cast(gam), cast(eta), 7, **common, **cast(kw))
    assert out.backend == "cpp"  # auto picks the C++ kernel for CPU tensors
    for k in p:
        assert out.params[k].dtype == dtype
        assert_close(out.params[k], ref.params[k], msg=f"{name} {k}: ")
    assert_close(out.losses, ref.losses, msg=f"{name} losses: ")
    assert out.losses.shape == (3, 3)


@needs_cpp
def test_cpp_tanh_error_bound():
    """The vectorisable tanh of the mlp kernel vs std::tanh, as stated in csrc/mirror_sweep.cpp."""
    for lo, hi, n in ((-30.0, 30.0, 4_000_001), (-1.0, 1.0, 2_000_001)):
        e = _EXT.mirror_sweep_tanh_errors(lo, hi, n)
        assert e["double_abs"] <= 2.3e-16 and e["double_rel"] <= 4.1e-16, e
        assert e["float_abs"] <= 3.0e-8 and e["float_rel"] <= 6.0e-8, e


_ISA_SCRIPT = """
import torch, symkern._C as C
from symkern.mirror.sweeps import train_sweep
from symkern.testing import assert_close
g = torch.Generator().manual_seed(3)
r = lambda *s: 0.5 * torch.randn(*s, generator=g, dtype=torch.float64)
t = {"W1": r(3, 5), "b1": r(3), "a": r(3)}
cases = [("rescaling", {"u": r(2, 19), "w": r(2, 19)}, dict(batch=3, target=r(19))),
         ("factorization", {"U": r(2, 5, 3), "W": r(2, 9, 3)}, dict(batch=None, target=r(5, 9))),
         ("mlp", {"W1": r(2, 17, 5), "b1": r(2, 17), "a": r(2, 17)}, dict(batch=4, target=t))]
for model, p, kw in cases:
    for dt in (torch.float64, torch.float32):
        q = {k: v.to(dt) for k, v in p.items()}
        ref = train_sweep(model, p, 0.05, 0.03, 6, noise=0.4, backend="torch", **kw)
        out = train_sweep(model, q, 0.05, 0.03, 6, noise=0.4, backend="cpp", **kw)
        for k in p:
            assert_close(out.params[k], ref.params[k], msg=model + " " + k)
print(C.mirror_sweep_isa())
"""


@needs_cpp
@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_cpp_lower_instruction_sets_match_reference(isa):
    """The AVX2 and baseline x86-64 builds of the kernel (chosen once per process by
    SYMKERN_MIRROR_SWEEP_ISA) agree with the reference too."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "SYMKERN_MIRROR_SWEEP_ISA": isa, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", _ISA_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    ran = res.stdout.strip().splitlines()[-1]
    # a CPU without AVX2 runs baseline for either request; never a higher set than asked for
    assert ran in ({"avx2", "baseline"} if isa == "avx2" else {"baseline"}), ran


def _binding_args(model: str, dtype=np.float64) -> dict:
    """Valid arguments of symkern._C.mirror_sweep for a small problem of ``model``."""
    rs = np.random.default_rng(0)

    def f(*s):
        return rs.standard_normal(s).astype(dtype)

    M, steps, every = 3, 4, 2
    if model == "rescaling":
        code, params, target, batch = 0, [f(M, 5), f(M, 5)], [f(M, 5)], 2
    elif model == "factorization":
        code, params, target, batch = 1, [f(M, 4, 2), f(M, 3, 2)], [f(M, 4, 3)], 0
    else:
        code, batch = 2, 2
        params, target = [f(M, 6, 4), f(M, 6), f(M, 6)], [f(M, 2, 4), f(M, 2), f(M, 2)]
    return {
        "model": code, "params": params, "target": target, "offset": None,
        "gamma": np.full(M, 0.1, dtype), "eta": np.full(M, 0.05, dtype),
        "noise": np.full(M, 0.2, dtype), "model_ids": np.arange(M, dtype=np.int64),
        "batch": batch, "activation": 0, "seed": 1, "step0": 0, "steps": steps,
        "record_every": every, "params_out": [np.empty_like(a) for a in params],
        "losses": np.empty((M, steps // every), dtype),
    }  # fmt: skip


def _read_only(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.setflags(write=False)
    return a


def _noncontig_np(a: np.ndarray) -> np.ndarray:
    wide = np.repeat(a, 2, axis=-1)
    return wide[..., ::2]


# (model, mutation of the valid arguments, expected message)
BAD_BINDING_CASES = {
    "gamma_dtype": ("rescaling", lambda a: a.update(gamma=a["gamma"].astype(np.float32)),
                    r"'gamma' must have dtype float64"),
    "beta_shape": ("rescaling", lambda a: a.update(target=[np.zeros((3, 6))]),
                   r"'beta' has extent"),
    "u_noncontiguous": ("rescaling", lambda a: a["params"].__setitem__(0, _noncontig_np(
        a["params"][0])), r"'u' must be C-contiguous"),
    "u_int_dtype": ("rescaling", lambda a: a["params"].__setitem__(0, np.zeros((3, 5), np.int32)),
                    r"'u' must have dtype float32 or float64"),
    "w_shape": ("rescaling", lambda a: a["params"].__setitem__(1, np.zeros((3, 4))), r"'w' has"),
    "w_dtype_mixed": ("rescaling", lambda a: a["params"].__setitem__(
        1, a["params"][1].astype(np.float32)), r"'w' must have dtype float64"),
    "u_out_read_only": ("rescaling", lambda a: a["params_out"].__setitem__(
        0, _read_only(a["params_out"][0])), r"'u_out' must be writable"),
    "w_out_not_array": ("rescaling", lambda a: a["params_out"].__setitem__(1, [0.0] * 15),
                        r"'w_out' must be a writable numpy array"),
    "losses_shape": ("rescaling", lambda a: a.update(losses=np.empty((3, 3))), r"'losses' has"),
    "model_ids_dtype": ("rescaling", lambda a: a.update(model_ids=np.arange(3.0)),
                        r"'model_ids' must have dtype int64"),
    "model_ids_range": ("rescaling", lambda a: a.update(model_ids=np.array([0, 1, 2**32])),
                        r"'model_ids' must be in \[0, 2\^32\)"),
    "model_code": ("rescaling", lambda a: a.update(model=3), r"'model' must be 0"),
    "params_count": ("rescaling", lambda a: a.update(params=a["params"][:1]),
                     r"'params' must hold 2 arrays"),
    "batch_negative": ("rescaling", lambda a: a.update(batch=-1), r"'batch' must be >= 0"),
    "record_every": ("rescaling", lambda a: a.update(record_every=0), r"'record_every'"),
    "offset_rescaling": ("rescaling", lambda a: a.update(offset=np.zeros((3, 5, 5))),
                         r"'offset' is only used by the factorization"),
    "A_shape": ("factorization", lambda a: a.update(target=[np.zeros((3, 3, 4))]), r"'A' has"),
    "factorization_batch": ("factorization", lambda a: a.update(batch=4), r"'batch' must be 0"),
    "offset_shape": ("factorization", lambda a: a.update(offset=np.zeros((3, 4, 3))),
                     r"'offset' has extent"),
    "W_rank": ("factorization", lambda a: a["params"].__setitem__(1, np.zeros((3, 3, 5))),
               r"'W' has extent"),
    "mlp_activation": ("mlp", lambda a: a.update(activation=2), r"'activation' must be 0"),
    "mlp_batch": ("mlp", lambda a: a.update(batch=0), r"'batch' must be >= 1"),
    "teacher_W1_shape": ("mlp", lambda a: a["target"].__setitem__(0, np.zeros((3, 2, 5))),
                         r"'teacher_W1' has extent"),
    "b1_shape": ("mlp", lambda a: a["params"].__setitem__(1, np.zeros((3, 7))), r"'b1' has"),
    "teacher_a_dtype": ("mlp", lambda a: a["target"].__setitem__(2, np.zeros(
        (3, 2), np.float32)), r"'teacher_a' must have dtype float64"),
}  # fmt: skip


@needs_cpp
@pytest.mark.parametrize("model", ["rescaling", "factorization", "mlp"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_cpp_binding_valid_call(model, dtype):
    """The valid arguments the bad-input cases start from do run and fill every output."""
    args = _binding_args(model, dtype)
    for out in args["params_out"]:
        out.fill(np.nan)
    args["losses"].fill(np.nan)
    _EXT.mirror_sweep(**args)
    assert all(np.isfinite(o).all() for o in args["params_out"])
    assert np.isfinite(args["losses"]).all() and (args["losses"] > 0).all()


@needs_cpp
@pytest.mark.parametrize("model", ["rescaling", "factorization", "mlp"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_cpp_chunks_change_no_number(model, dtype):
    """The binding runs a call's steps in chunks (between them it checks for Ctrl-C); every
    chunking gives the numbers of one chunk bit for bit, with label noise, a factorization
    offset, and loss records that do not line up with the chunks."""
    args = _binding_args(model, dtype)
    M = len(args["gamma"])
    args.update(steps=10, record_every=4, losses=np.empty((M, 2), dtype))
    if model == "factorization":
        args["offset"] = np.random.default_rng(1).standard_normal((M, 4, 2)).astype(dtype)

    def run(chunk_steps):
        outs = [np.empty_like(a) for a in args["params"]]
        losses = np.empty_like(args["losses"])
        _EXT.mirror_sweep(**{**args, "params_out": outs, "losses": losses},
                          chunk_steps=chunk_steps)  # fmt: skip
        return outs, losses

    whole, whole_losses = run(0)
    assert not np.array_equal(whole[0], args["params"][0]) and np.isfinite(whole_losses).all()
    for chunk in (1, 3, 7, 10, 25):
        outs, losses = run(chunk)
        assert np.array_equal(losses, whole_losses), chunk
        for a, b in zip(outs, whole, strict=True):
            assert np.array_equal(a, b), chunk


_LONG_SWEEP_CALL = """
import numpy as np
import symkern._C as C
rs = np.random.default_rng(0)
M, h, d, B = 64, 32, 16, 32
args = dict(model=2, params=[rs.standard_normal(s) for s in ((M, h, d), (M, h), (M, h))],
            target=[rs.standard_normal(s) for s in ((M, 4, d), (M, 4), (M, 4))], offset=None,
            gamma=np.full(M, 1e-3), eta=np.full(M, 1e-3), noise=np.full(M, 0.1),
            model_ids=np.arange(M), batch=B, activation=0, seed=0, step0=0, record_every=1)
def call(steps):
    C.mirror_sweep(**args, steps=steps, params_out=[np.empty_like(a) for a in args["params"]],
                   losses=np.empty((M, steps)))
"""


@needs_cpp
def test_ctrl_c_stops_a_long_cpp_sweep():
    """Ctrl-C (SIGINT) during a long C++ sweep raises KeyboardInterrupt within about a chunk
    (~0.2 s), not when the call would have ended (~1 min here)."""
    from symkern.testing import interrupt_long_call

    out = interrupt_long_call(_LONG_SWEEP_CALL)
    assert out["outcome"] == "interrupted", out
    # the SIGINT comes at 0.5 s and a chunk takes ~0.2 s: 3 s leaves room for a loaded machine
    assert out["call_s"] > 30 and out["after_s"] < 3, out


@needs_cpp
@pytest.mark.parametrize("case", list(BAD_BINDING_CASES))
def test_cpp_binding_rejects_bad_buffers(case):
    model, mutate, match = BAD_BINDING_CASES[case]
    args = _binding_args(model)
    mutate(args)
    with pytest.raises(ValueError, match=match):
        _EXT.mirror_sweep(**args)


# --- input validation: Philox counter words, list precision, activation -----------------------


def test_step0_and_steps_must_fit_the_32bit_philox_step():
    """The step word of the Philox counter is 32-bit: step0 + steps <= 2^32 (no silent wrap to
    the data of step 0); the last allowed step is 2^32 − 1."""
    beta = torch.tensor([0.1, 0.2, 0.3], dtype=F64)

    def run(**kw):
        return train_sweep("rescaling", _resc(), 0.1, 0.1, 2, 4, target=beta, **kw)

    for step0 in (2**32, 2**40, 2**32 - 1):
        with pytest.raises(ValueError, match=r"step0 \+ steps must be <= 2\^32 \(32-bit Philox"):
            run(step0=step0)
    for step0 in (-1, 1.0, True, None):
        with pytest.raises(ValueError, match="step0 must be a non-negative int"):
            run(step0=step0)
    top = run(step0=2**32 - 2)  # steps 2^32 − 2 and 2^32 − 1: allowed, and not step 0's data
    assert top.loss_steps.tolist() == [2**32 - 1]
    assert not torch.equal(top.params["u"], run(step0=0).params["u"])


def test_element_index_and_model_ids_must_fit_32_bits():
    """The element index of a draw (x: batch·d numbers; factorization noise: m·n numbers) and the
    model id are 32-bit counter words too: checked before anything is allocated."""
    d = 2
    p = {"u": torch.ones(1, d, dtype=F64), "w": torch.ones(1, d, dtype=F64)}
    with pytest.raises(ValueError, match=r"batch·d must be <= 2\^32 \(32-bit Philox element"):
        train_sweep("rescaling", p, 0.1, 0.1, 1, 2**31 + 1, target=torch.ones(d))
    pm = {"W1": torch.ones(1, 1, 4, dtype=F64), "b1": torch.ones(1, 1, dtype=F64),
          "a": torch.ones(1, 1, dtype=F64)}  # fmt: skip
    t = {"W1": torch.ones(1, 4), "b1": torch.ones(1), "a": torch.ones(1)}
    with pytest.raises(ValueError, match=r"batch·d must be <= 2\^32"):
        train_sweep("mlp", pm, 0.1, 0.1, 1, 2**30 + 1, target=t)
    big = 2**16 + 1  # m·n > 2^32 with small U, W; the (m, n) target is never formed
    pf = {"U": torch.ones(1, big, 1, dtype=F64), "W": torch.ones(1, big, 1, dtype=F64)}
    with pytest.raises(ValueError, match=r"with noise > 0, m·n must be <= 2\^32"):
        train_sweep("factorization", pf, 0.1, 0.1, 1, None, target=torch.ones(1), noise=0.1)
    for ids in ([True, False], [2**32, 0], [2**64, 0], [0.0, 1.0], ["a", "b"], [-1, 0], [0]):
        with pytest.raises(ValueError, match=r"model_ids must be one integer per model \(2\), each "
                           r"in \[0, 2\^32\)"):  # fmt: skip
            train_sweep("rescaling", _resc(), 0.1, 0.1, 1, None, target=torch.ones(3),
                        model_ids=ids)  # fmt: skip


def test_list_targets_keep_float64_precision():
    """Python lists / numpy arrays are read in float64: a float64 sweep gives bit-identical results
    for a list target and the same values as a float64 tensor (no rounding through float32);
    likewise the mlp teacher dict; a float32 sweep rounds once, as from the float64 tensor."""
    import numpy as np

    vals = [0.1, 0.2, 0.3, 0.7]
    p = {"u": torch.full((2, 4), 0.3, dtype=F64), "w": torch.full((2, 4), 0.3, dtype=F64)}
    ref = train_sweep("rescaling", p, 0.1, 0.1, 3, 4, target=torch.tensor(vals, dtype=F64))
    for target in (vals, np.array(vals), [vals, vals]):
        out = train_sweep("rescaling", p, 0.1, 0.1, 3, 4, target=target)
        assert torch.equal(out.params["u"], ref.params["u"])
        assert torch.equal(out.params["w"], ref.params["w"])
        assert torch.equal(out.losses, ref.losses)
    p32 = {k: v.float() for k, v in p.items()}
    ref32 = train_sweep("rescaling", p32, 0.1, 0.1, 3, 4, target=torch.tensor(vals, dtype=F64))
    out32 = train_sweep("rescaling", p32, 0.1, 0.1, 3, 4, target=vals)
    assert torch.equal(out32.params["u"], ref32.params["u"])

    g = gen(5)
    pm = {"W1": _rand((2, 3, 2), g), "b1": _rand((2, 3), g), "a": _rand((2, 3), g)}
    teacher = {"W1": [[0.1, -0.3], [0.7, 0.2]], "b1": [0.1, -0.2], "a": [0.3, 0.9]}
    as_t = {k: torch.tensor(v, dtype=F64) for k, v in teacher.items()}
    a = train_sweep("mlp", pm, 0.1, 0.1, 2, 3, target=teacher)
    b = train_sweep("mlp", pm, 0.1, 0.1, 2, 3, target=as_t)
    for k in pm:
        assert torch.equal(a.params[k], b.params[k])
    with pytest.raises(TypeError, match=r"target \(beta\) must be a tensor or a \(nested\)"):
        train_sweep("rescaling", p, 0.1, 0.1, 1, None, target=["a", "b", "c", "d"])
    with pytest.raises(TypeError, match=r"target \(beta\) must be real"):
        train_sweep("rescaling", p, 0.1, 0.1, 1, None, target=torch.ones(4, dtype=torch.cfloat))


def test_activation_is_checked_for_every_model():
    """A bad activation is a ValueError listing the valid ones for every model (it used to reach
    the C++ kernel's code table as a KeyError for the rescaling and factorization models)."""
    for act in ("bogus", None, 0):
        with pytest.raises(ValueError, match=r"activation must be one of \('tanh', 'relu'\), got"):
            train_sweep("rescaling", _resc(), 0.1, 0.1, 1, 2, target=torch.ones(3), activation=act)
    U, W = torch.ones(1, 2, 1, dtype=F64), torch.ones(1, 2, 1, dtype=F64)
    with pytest.raises(ValueError, match="activation must be one of"):
        train_sweep("factorization", {"U": U, "W": W}, 0.1, 0.1, 1, None, target=torch.ones(2, 2),
                    activation="gelu")  # fmt: skip


def test_model_ids_of_any_integer_dtype():
    """model_ids of every integer dtype (numpy or torch, narrower than int64 or unsigned) give the
    run of the same int64 ids; out-of-range values are rejected after widening (no wrap)."""
    import numpy as np

    beta = torch.tensor([0.1, -0.2, 0.3], dtype=F64)

    def run(ids):
        return train_sweep("rescaling", _resc(), 0.1, 0.1, 2, 4, 5, target=beta, noise=0.3,
                           model_ids=ids)  # fmt: skip

    ref = run(torch.tensor([7, 100]))
    for dt in (np.int8, np.int16, np.int32, np.uint8, np.uint16, np.uint32, np.uint64):
        got = run(np.array([7, 100], dtype=dt))
        assert torch.equal(got.params["u"], ref.params["u"]), dt
    for dt in (torch.int16, torch.int32, torch.uint8, torch.uint32, torch.uint64):
        got = run(torch.tensor([7, 100], dtype=dt))
        assert torch.equal(got.params["u"], ref.params["u"]), dt
    assert torch.equal(run([np.uint64(7), np.uint64(100)]).params["w"], ref.params["w"])
    top = run(np.array([2**32 - 1, 0], dtype=np.uint32))  # the largest id is allowed
    assert torch.equal(top.params["u"], run([2**32 - 1, 0]).params["u"])
    for bad in (np.array([2**32, 0], dtype=np.uint64), np.array([-1, 0], dtype=np.int8)):
        with pytest.raises(ValueError, match=r"model_ids must be one integer per model \(2\)"):
            run(bad)


def test_sweep_integer_arguments_accept_numpy_and_0d_tensors():
    """steps / batch / seed / step0 / record_every as NumPy integers or integer 0-d tensors give
    the plain-int result; bools and floats are rejected naming the argument."""
    import numpy as np

    beta = torch.tensor([0.1, -0.2, 0.3], dtype=F64)
    ref = train_sweep("rescaling", _resc(), 0.1, 0.1, 4, 2, 3, target=beta, noise=0.2, step0=5,
                      record_every=2)  # fmt: skip
    got = train_sweep("rescaling", _resc(), 0.1, 0.1, np.int64(4), np.int32(2), torch.tensor(3),
                      target=beta, noise=0.2, step0=np.uint8(5),
                      record_every=torch.tensor(2))  # fmt: skip
    assert torch.equal(got.params["u"], ref.params["u"]) and torch.equal(got.losses, ref.losses)
    assert got.loss_steps.tolist() == ref.loss_steps.tolist() == [6, 8]

    def run(**kw):
        args = {"steps": 2, "batch": 2, "seed": 0, "step0": 0, "record_every": 1, **kw}
        return train_sweep("rescaling", _resc(), 0.1, 0.1, args.pop("steps"), args.pop("batch"),
                           args.pop("seed"), target=beta, **args)  # fmt: skip

    for name, bad in (("steps", 2.0), ("steps", True), ("record_every", np.float64(1.0)),
                      ("record_every", 0), ("step0", -1), ("batch", True), ("batch", 1.5),
                      ("seed", np.bool_(True)), ("seed", -1), ("seed", 2**64)):  # fmt: skip
        with pytest.raises(ValueError, match=f"{name} must be"):
            run(**{name: bad})
