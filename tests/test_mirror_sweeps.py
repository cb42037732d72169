"""The ``mirror_sweep`` op (symkern.mirror.sweeps): torch kernel vs a per-model autograd loop on
the same Philox data, closed forms (sparsity, singular values), batching independence, bad input.
All float64, one torch thread, small sizes."""

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


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


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
