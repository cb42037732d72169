"""The Triton ``mirror_sweep`` kernel beyond the cross-backend contract of test_mirror_sweeps.py:
several batch chunks per step, the largest experiment shape, Philox keys past 2^31, many steps
with a partial last record interval, the size limit reported through the registry, bad input.
Each case is compared with the float64 torch reference on the same Philox data. Small sizes: the
interpreter costs ~2 ms per Triton function call."""

import pytest
import torch

from symkern.backends.reference.mirror_sweeps import mirror_sweep as reference_sweep
from symkern.backends.registry import BackendUnavailableError, get_backend
from symkern.mirror.sweeps import sweep_problem, train_sweep
from symkern.testing import TRITON_DEVICE as DEV
from symkern.testing import assert_close

F64 = torch.float64

pytestmark = [
    pytest.mark.skipif(
        bool(get_backend("triton").availability_reasons()),
        reason="; ".join(get_backend("triton").availability_reasons()),
    ),
    # small torch ops: one torch thread is faster than two (and keeps timings stable)
    pytest.mark.usefixtures("one_torch_thread"),
]


def _rand(shape, g, scale=0.5):
    return scale * torch.randn(*shape, generator=g, dtype=F64)


def _teacher(ht, d, g):
    return {"W1": torch.randn(ht, d, generator=g, dtype=F64),
            "b1": torch.randn(ht, generator=g, dtype=F64),
            "a": torch.randn(ht, generator=g, dtype=F64)}  # fmt: skip


def _run_both(model, p, gam, eta, steps, *, step0=0, record_every=1, dtype=F64, block_b=None,
              **kw):  # fmt: skip
    """(triton (params, losses), float64 reference (params, losses)) on the same problem."""
    from symkern.backends.triton.mirror_sweep import mirror_sweep_triton

    ref_p, ref_problem = sweep_problem(model, p, gam, eta, **kw)
    ref = reference_sweep(ref_p, ref_problem, step0, steps, record_every)

    def move(x):
        return x.to(DEV, dtype) if isinstance(x, torch.Tensor) else x

    p_in = {k: move(v) for k, v in p.items()}
    kw_in = {k: ({kk: move(vv) for kk, vv in v.items()} if isinstance(v, dict) else move(v))
             for k, v in kw.items()}  # fmt: skip
    before = {k: v.clone() for k, v in p_in.items()}
    tp, problem = sweep_problem(model, p_in, move(gam), move(eta), **kw_in)
    out = mirror_sweep_triton(tp, problem, step0, steps, record_every, block_b=block_b)
    for k in p_in:  # the inputs are not modified
        assert torch.equal(p_in[k], before[k]), k
    return out, ref


def _assert_match(out, ref, msg=""):
    for k in ref[0]:
        assert out[0][k].shape == ref[0][k].shape
        assert_close(out[0][k].cpu(), ref[0][k], msg=f"{msg} {k}: ")
    assert out[1].shape == ref[1].shape
    assert_close(out[1].cpu(), ref[1], msg=f"{msg} losses: ")


@pytest.mark.parametrize("model", ["rescaling", "mlp_tanh", "mlp_relu"])
def test_batch_split_in_several_chunks(model):
    """B = 11 in chunks of 4: two full chunks and a partial one (masked rows) per step."""
    g = torch.Generator().manual_seed(1)
    gam = torch.tensor([0.05, 0.4], dtype=F64)
    eta = torch.tensor([0.05, 0.03], dtype=F64)
    noise = torch.tensor([0.3, 0.0], dtype=F64)
    if model == "rescaling":
        d = 6
        p = {"u": _rand((2, d), g), "w": _rand((2, d), g)}
        kw = {"target": torch.randn(d, generator=g, dtype=F64)}
    else:
        h, d = 3, 5
        p = {"W1": _rand((2, h, d), g), "b1": _rand((2, h), g), "a": _rand((2, h), g)}
        kw = {"target": _teacher(2, d, g), "activation": model.removeprefix("mlp_")}
        model = "mlp"
    out, ref = _run_both(model, p, gam, eta, 4, step0=2, record_every=2, batch=11, seed=3,
                         noise=noise, block_b=4, **kw)  # fmt: skip
    _assert_match(out, ref, model)


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
def test_factorization_experiment_shape(dtype):
    """The E2 shape m = 20, n = 15, k = 15 (padded 32·16·16), offset, one noisy model."""
    g = torch.Generator().manual_seed(2)
    m, n, k = 20, 15, 15
    p = {"U": _rand((2, m, k), g, 0.3), "W": _rand((2, n, k), g, 0.3)}
    out, ref = _run_both(
        "factorization", p, torch.tensor([0.0, 0.5], dtype=F64), 0.01, 5, record_every=2,
        batch=None, seed=4, target=torch.randn(m, n, generator=g, dtype=F64),
        offset=torch.randn(m, k, generator=g, dtype=F64), noise=torch.tensor([0.2, 0.0]),
        dtype=dtype,
    )  # fmt: skip
    _assert_match(out, ref, "factorization")


def test_odd_shapes_rescaling_and_mlp():
    """d = 129 (padded 256) for the rescaling model; h = 17, h_t = 5, d = 9 for the MLP."""
    g = torch.Generator().manual_seed(3)
    d = 129
    p = {"u": _rand((2, d), g), "w": _rand((2, d), g)}
    beta = torch.randn(2, d, generator=g, dtype=F64)
    for batch in (None, 7):
        out, ref = _run_both("rescaling", p, torch.tensor([0.1, 0.9]), 0.02, 3, batch=batch,
                             seed=5, target=beta, noise=0.4)  # fmt: skip
        _assert_match(out, ref, f"rescaling batch={batch}")
    h, ht, d = 17, 5, 9
    p = {"W1": _rand((2, h, d), g), "b1": _rand((2, h), g), "a": _rand((2, h), g)}
    out, ref = _run_both("mlp", p, 0.01, 0.05, 2, batch=5, seed=6, target=_teacher(ht, d, g),
                         noise=0.1, activation="tanh")  # fmt: skip
    _assert_match(out, ref, "mlp")


@pytest.mark.parametrize(
    "model, shapes",
    [
        ("rescaling", {"d": 0}),
        ("factorization", {"m": 0, "n": 4, "k": 3}),
        ("factorization", {"m": 3, "n": 0, "k": 3}),
        ("factorization", {"m": 3, "n": 4, "k": 0}),
        ("mlp", {"h": 0, "ht": 2, "d": 3}),
        ("mlp", {"h": 2, "ht": 0, "d": 3}),
        ("mlp", {"h": 2, "ht": 2, "d": 0}),
    ],
)
def test_empty_dimensions_match_the_reference(model, shapes):
    """A zero-size d, m, n, k, h or h_t: the reference's result (empty parameters come back
    empty, the losses are the target's / the noise's); it used to be a ZeroDivisionError
    (CHUNK_DRAW // 0) or an empty tl.arange."""
    g = torch.Generator().manual_seed(7)
    gam, eta = torch.tensor([0.1, 0.4], dtype=F64), 0.05
    if model == "rescaling":
        d = shapes["d"]
        p = {"u": _rand((2, d), g), "w": _rand((2, d), g)}
        for batch in (None, 3):
            out, ref = _run_both(model, p, gam, eta, 3, batch=batch, noise=0.5, seed=1,
                                 target=torch.zeros(d, dtype=F64))  # fmt: skip
            _assert_match(out, ref, f"rescaling d=0 batch={batch}")
            assert (ref[1] > 0).all()  # σ² / (σε)²: not a trivially zero loss
        # through the public entry point, as reported
        p_dev = {name: v.to(DEV) for name, v in p.items()}
        tri = train_sweep("rescaling", p_dev, gam.to(DEV), eta, 3, 2, noise=0.5,
                          target=torch.zeros(0, device=DEV), backend="triton")  # fmt: skip
        ref = train_sweep("rescaling", p, gam, eta, 3, 2, target=torch.zeros(0), noise=0.5,
                          backend="torch")  # fmt: skip
        assert tri.params["u"].shape == (2, 0)
        assert_close(tri.losses.cpu(), ref.losses)
        return
    if model == "factorization":
        m, n, k = shapes["m"], shapes["n"], shapes["k"]
        p = {"U": _rand((2, m, k), g), "W": _rand((2, n, k), g)}
        for offset in (None, _rand((m, k), g)):
            out, ref = _run_both(model, p, gam, eta, 3, batch=None, noise=0.3, seed=2,
                                 offset=offset, target=torch.randn(m, n, generator=g,
                                                                   dtype=F64))  # fmt: skip
            _assert_match(out, ref, f"factorization {shapes} offset={offset is not None}")
        return
    h, ht, d = shapes["h"], shapes["ht"], shapes["d"]
    p = {"W1": _rand((2, h, d), g), "b1": _rand((2, h), g), "a": _rand((2, h), g)}
    out, ref = _run_both(model, p, gam, eta, 3, batch=4, noise=0.2, seed=3,
                         target=_teacher(ht, d, g), activation="tanh")  # fmt: skip
    _assert_match(out, ref, f"mlp {shapes}")
    assert (ref[1] > 0).all()


def test_philox_keys_beyond_int32():
    """seed ≥ 2^32 (both key words), model ids ≥ 2^31 and step0 ≥ 2^31 (int64 step argument,
    counter taken mod 2^32) draw the reference's numbers."""
    g = torch.Generator().manual_seed(4)
    d = 5
    p = {"u": _rand((2, d), g), "w": _rand((2, d), g)}
    out, ref = _run_both("rescaling", p, 0.1, 0.05, 3, step0=2**31 + 7, batch=3,
                         seed=2**40 + 12345, model_ids=[2**31 + 1, 2**32 - 1], noise=0.5,
                         target=torch.randn(d, generator=g, dtype=F64))  # fmt: skip
    _assert_match(out, ref, "keys")


def test_many_steps_partial_last_interval():
    """100 steps recorded every 7: 14 losses, the 2 steps after the last record still update."""
    g = torch.Generator().manual_seed(5)
    d = 7
    p = {"u": _rand((3, d), g, 0.1), "w": _rand((3, d), g, 0.1)}
    gam = torch.tensor([0.0, 0.3, 1.5], dtype=F64)
    out, ref = _run_both("rescaling", p, gam, 0.05, 100, record_every=7, batch=None,
                         target=torch.randn(d, generator=g, dtype=F64), noise=0.5)  # fmt: skip
    assert out[1].shape == (3, 14)
    _assert_match(out, ref, "100 steps")
    short, ref_short = _run_both("rescaling", p, gam, 0.05, 3, record_every=5, batch=None,
                                 target=torch.ones(d, dtype=F64))  # fmt: skip
    assert short[1].shape == (3, 0)  # fewer steps than record_every: nothing recorded
    _assert_match(short, ref_short, "3 steps")


def _triton_reasons(model, params, **kw):
    p, problem = sweep_problem(model, params, 0.1, 0.1, **kw)
    return get_backend("triton").not_supported_reasons(
        "mirror_sweep", {**p, "problem": problem}, forced=True
    )


def test_too_large_model_is_refused_with_the_reason():
    """At the register limits the check passes; one past them it says why, and a forced triton
    call raises with that reason (no launch, no fallback)."""
    from symkern.backends.triton.mirror_sweep import MAX_ROW, MAX_TILE

    U = torch.ones(1, 33, 16, dtype=F64, device=DEV)
    W = torch.ones(1, 32, 16, dtype=F64, device=DEV)
    with pytest.raises(BackendUnavailableError, match=f"at most {MAX_TILE} elements"):
        train_sweep("factorization", {"U": U, "W": W}, 0.1, 0.1, 1, None,
                    target=torch.ones(33, 32), backend="triton")  # fmt: skip
    assert not _triton_reasons("factorization", {"U": U[:, :32], "W": W}, batch=None,
                               target=torch.ones(32, 32))  # fmt: skip
    for d, ok in ((MAX_ROW, True), (MAX_ROW + 1, False)):
        u = torch.ones(1, d, dtype=F64, device=DEV)
        reasons = _triton_reasons("rescaling", {"u": u, "w": u}, batch=4, target=torch.ones(d))
        assert (not reasons) if ok else any(f"d = {d}" in r for r in reasons), (d, reasons)
    h, d = 64, MAX_ROW // 64
    for dd, ok in ((d, True), (d + 1, False)):
        p = {"W1": torch.ones(1, h, dd, dtype=F64, device=DEV),
             "b1": torch.ones(1, h, dtype=F64, device=DEV),
             "a": torch.ones(1, h, dtype=F64, device=DEV)}  # fmt: skip
        t = {"W1": torch.ones(2, dd), "b1": torch.ones(2), "a": torch.ones(2)}
        reasons = _triton_reasons("mlp", p, batch=4, target=t)
        assert (not reasons) if ok else any("max(h, h_t)·d" in r for r in reasons), reasons


def test_bad_direct_calls_raise():
    """The launcher re-checks what sweep_problem guarantees, for direct calls."""
    from symkern.backends.triton.mirror_sweep import mirror_sweep_triton

    u = torch.ones(2, 3, dtype=F64, device=DEV)
    p, problem = sweep_problem("rescaling", {"u": u, "w": u}, 0.1, 0.1, batch=None,
                               target=torch.ones(3))  # fmt: skip
    with pytest.raises(ValueError, match="record_every must be an int >= 1"):
        mirror_sweep_triton(p, problem, 0, 2, 0)
    with pytest.raises(ValueError, match="params must have keys"):
        mirror_sweep_triton({"u": u}, problem, 0, 2, 1)
    problem.target["beta"] = torch.ones(2, 4, dtype=F64, device=DEV)
    with pytest.raises(ValueError, match=r"problem.target\['beta'\] must have shape \(2, 3\)"):
        mirror_sweep_triton(p, problem, 0, 2, 1)
    problem.target["beta"] = torch.ones(2, 3, dtype=F64, device="meta")
    reasons = get_backend("triton").not_supported_reasons(
        "mirror_sweep", {**p, "problem": problem}, forced=True
    )
    assert any("problem.target['beta'] is on meta" in r for r in reasons), reasons
