"""``symkern run mirror-threshold``: the quick preset end to end (its claims hold), ``--resume``
reuses finished cells, claims fail on poisoned data, bad values are usage errors naming the flag,
and the Lanczos γ* equal their closed forms (and the dense Hessian) on the experiment's models."""

import json

import pytest
import torch

from symkern import cli
from symkern.experiments import common, mirror_threshold
from symkern.mirror import Mirror, critical_decay
from symkern.testing import assert_usage_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")

F64 = torch.float64


def _resigned(data: dict) -> dict:
    """A cell record edited on purpose, with its digest recomputed (else it is recomputed)."""
    return {**data, "digest": common._cell_digest(data["name"], data["cell"])}


def test_quick_preset_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "thr"
    assert cli.main(["run", "mirror-threshold", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("results.json", "threshold.csv", "fig_mirror_threshold.png"):
        assert (out / name).stat().st_size > 0, name
    res = json.loads((out / "results.json").read_text())
    assert res["config"] == mirror_threshold.Config().__dict__  # the quick preset is the default
    for name, c in res["claims"].items():
        assert c["holds"], (name, c)
        assert f"{name}: holds" in printed
    cells = {f"{c['model']}_s{c['seed']}": c for c in res["cells"]}
    assert sorted(cells) == sorted(f"{m}_s{s}" for m in mirror_threshold.MODELS for s in (0, 1))
    for c in cells.values():
        deltas = [r["delta"] for r in c["trials"]]
        assert deltas == [-0.3, -0.1, 0.1, 0.3]
        for r in c["trials"]:
            # the breaking norm is ≤ 1e-8 of its start above γ*, ≥ 1e-2 below it
            assert r["landed"] is r["predicted_on"] and r["off"] is not r["predicted_on"], r
    # the rescaling and whole-network thresholds do not move with γ: on ⟺ δ > 0
    for model in ("rescaling", "tanh_net"):
        for s in (0, 1):
            c = cells[f"{model}_s{s}"]
            assert [r["predicted_on"] for r in c["trials"]] == [False, False, True, True]
            assert c["lanczos_exhausted"] and c["lanczos_iters"] == c["k"]
    # a dead neuron is unstable while the rest of the net lives (γ*_0(γ) > γ below γ*_net);
    # above γ*_net its constrained equilibrium is θ_∥ = 0, where γ*_0 = γ*_net
    for s in (0, 1):
        c = cells[f"tanh_neuron_s{s}"]
        for r, e in zip(c["trials"], c["estimates"], strict=True):
            if r["delta"] < 0:
                assert e["gamma_star"] > r["gamma"] and e["breaking_on_constraint"] == 0.0
            else:
                assert e["gamma_star"] == pytest.approx(c["gamma_star_net"], rel=1e-10)
        assert max(c["constrained_grad_norm"][2:]) < 1e-10  # θ_∥ = 0 is an exact equilibrium
    assert res["claims"]["tanh_neuron_below_stays_off_constraint"]["trials_judged"] >= 2

    # resume: every cell loaded (a poisoned cell value shows it is reused, and the claim fails)
    path = out / "cells" / "tanh_net_s1.json"
    data = json.loads(path.read_text())
    data["cell"]["trials"][3]["rel_breaking_final"] = 0.5
    data["cell"]["trials"][3]["landed"] = False
    path.write_text(json.dumps(_resigned(data)))
    args = ["--no-progress", "--out", str(out), "--resume", "--figures", "false"]
    assert mirror_threshold.main(args) == 0
    assert "resume: 6 finished cell(s) loaded" in capsys.readouterr().out
    c = json.loads((out / "results.json").read_text())["claims"]
    assert not c["tanh_net_above_lands_on_constraint"]["holds"]
    assert c["tanh_net_below_stays_off_constraint"]["holds"]

    # claims on NaN data must fail: a NaN trajectory, a NaN γ*
    data["cell"]["trials"][0]["rel_breaking_curve"][-1] = float("nan")
    data["cell"]["gamma_star"] = float("nan")
    path.write_text(json.dumps(_resigned(data)))
    res = mirror_threshold.run(mirror_threshold.Config(figures=False), out, resume=True,
                               show_progress=False, log=lambda _: None)  # fmt: skip
    c = res["claims"]
    assert not c["tanh_net_below_stays_off_constraint"]["holds"]
    assert not c["lanczos_matches_closed_form"]["holds"]
    assert not c["lanczos_matches_dense_hessian"]["holds"]
    assert c["rescaling_above_lands_on_constraint"]["holds"]  # other models are untouched


def test_claims_need_judged_trials(tmp_path):
    """With too few steps no trial is resolvable: the training claims must not hold vacuously."""
    args = ["--seeds", "1", "--steps", "20", "--record-every", "10", "--figures", "false",
            "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    assert mirror_threshold.main(args) == 0
    c = json.loads((tmp_path / "results.json").read_text())["claims"]
    assert c["lanczos_matches_closed_form"]["holds"]  # γ* does not depend on training
    for model in mirror_threshold.MODELS:
        for side in ("above_lands_on_constraint", "below_stays_off_constraint"):
            claim = c[f"{model}_{side}"]
            assert claim["trials_judged"] == 0 and not claim["holds"], claim


def test_gamma_star_closed_forms():
    """critical_decay on the experiment's three instances against their closed forms and the
    dense Hessian: max|β_i| (per pair |β_i|), ‖mean(y (x, 1))‖, ‖mean(r (x, 1))‖ at θ_∥."""
    cfg = mirror_threshold.Config(n_samples=64, width=3, d=5)
    g = torch.Generator().manual_seed(0)
    beta = torch.tensor([0.3, -1.7, 0.9, -0.2, 1.1], dtype=F64)
    d = 5
    m = Mirror.rescaling_pairs(range(d), range(d, 2 * d), 2 * d)
    theta = torch.randn(2 * d, generator=g, dtype=F64)

    def loss(t):
        return ((t[:d] * t[d:] - beta) ** 2).sum()

    e = mirror_threshold.estimate(cfg, loss, theta, m, 0)
    assert e["gamma_star"] == pytest.approx(1.7, rel=1e-12)
    assert e["gamma_star_dense"] == pytest.approx(1.7, rel=1e-12)
    assert e["lanczos_iters"] == 10 and e["lanczos_exhausted"]
    per = critical_decay(loss, theta, m, per_group=True, generator=g)
    torch.testing.assert_close(per, beta.abs(), rtol=0, atol=1e-12)
    # fewer Lanczos iterations than k: not exhausted, and a Ritz value bounds λ_min above
    few = mirror_threshold.estimate(mirror_threshold.Config(lanczos_iters=3), loss, theta, m, 0)
    assert few["lanczos_iters"] == 3 and not few["lanczos_exhausted"]
    assert few["gamma_star"] <= 1.7 + 1e-12

    X, y = mirror_threshold.draw_data(cfg, 3)
    h, dx = cfg.width, cfg.input_dim
    D = h * dx + 2 * h
    net = mirror_threshold.net_loss(X, y, h)
    Xt = torch.cat([X, torch.ones(len(X), 1, dtype=F64)], 1)
    want = float((y @ Xt / len(X)).norm())
    whole = Mirror.coordinates(range(D), D)
    e = mirror_threshold.estimate(cfg, net, torch.randn(D, generator=g, dtype=F64), whole, 0)
    assert e["gamma_star"] == pytest.approx(want, rel=1e-10)
    assert e["gamma_star_dense"] == pytest.approx(want, rel=1e-10)
    # one neuron at a point where the other neurons live: γ* = ‖mean(r (x, 1))‖, r = f_θ∥ − y
    one = mirror_threshold.neuron_mirror(1, h, dx)
    theta = torch.randn(D, generator=g, dtype=F64)
    at = one.project(theta)
    assert float(one.breaking(at)[1]) == 0.0 and torch.equal(at[one.index[:, 0]], torch.zeros(5))
    want = mirror_threshold.residual_correlation(X, y, h, at)
    assert want != pytest.approx(float((y @ Xt / len(X)).norm()), rel=1e-3)  # not the θ = 0 one
    e = mirror_threshold.estimate(cfg, net, theta, one, 0)
    assert e["gamma_star"] == pytest.approx(want, rel=1e-10)
    assert e["gamma_star_dense"] == pytest.approx(want, rel=1e-10)


def test_net_gd_matches_autograd():
    """The hand-written batched gradient step equals autograd's on mean (f − y)² + γ‖θ‖²."""
    cfg = mirror_threshold.Config(n_samples=32, width=3)
    X, y = mirror_threshold.draw_data(cfg, 1)
    h, D = 3, 3 * cfg.input_dim + 6
    theta = torch.randn(2, D, generator=torch.Generator().manual_seed(1), dtype=F64)
    gammas = torch.tensor([0.0, 0.7], dtype=F64)
    got = mirror_threshold.net_gd(X, y, h, theta, gammas, 0.05, 1)
    loss = mirror_threshold.net_loss(X, y, h)
    for i in range(2):
        x = theta[i].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(x) + gammas[i] * (x * x).sum(), x)
        torch.testing.assert_close(got[i], theta[i] - 0.05 * g, rtol=0, atol=1e-14)


BAD_VALUES = [
    ("--seeds", "0"), ("--seed", "-1"), ("--deltas", "0"), ("--deltas", "0.1,1"),
    ("--deltas", "nan"), ("--deltas", ","), ("--steps", "0"), ("--record-every", "0"),
    ("--record-every", "5000"), ("--eta-scale", "0"), ("--eta-scale", "inf"),
    ("--lanczos-iters", "0"), ("--tol-on", "0"), ("--tol-on", "0.5"), ("--tol-off", "-1"),
    ("--dense-max", "-1"), ("--d", "0"), ("--init-scale", "0"), ("--input-dim", "0"),
    ("--width", "0"), ("--teacher-width", "0"), ("--n-samples", "0"), ("--label-noise", "-1"),
    ("--perturb", "nan"), ("--backend", "bogus"), ("--figures", "maybe"),
]  # fmt: skip


@pytest.mark.parametrize(("flag", "value"), BAD_VALUES, ids=[f"{f}={v}" for f, v in BAD_VALUES])
def test_bad_value_is_a_usage_error_naming_the_flag(flag, value, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [flag, value, "--no-progress", "--out", str(out)]
    assert_usage_error(mirror_threshold.main, argv, flag, out, capsys)


def test_bad_config_raises_value_error_naming_the_flag(tmp_path):
    cfg = mirror_threshold.Config(deltas=[0.5, 1.5])
    with pytest.raises(ValueError, match=r"--deltas must lie in \(0, 1\)"):
        mirror_threshold.run(cfg, tmp_path / "o", show_progress=False)
    with pytest.raises(ValueError, match="--tol-on must be < --tol-off"):
        mirror_threshold.run(mirror_threshold.Config(tol_on=0.1, tol_off=0.01), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_presets_pass_validation():
    for preset in mirror_threshold.PRESETS:
        cfg = common.build_config(mirror_threshold.Config, mirror_threshold.PRESETS, preset, None,
                                  {})  # fmt: skip
        mirror_threshold._validate(cfg)
