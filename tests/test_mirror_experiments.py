"""The mirror experiments (mirror-sparsity, mirror-lowrank, mirror-dcs, mirror-ensemble,
mirror-plasticity) on tiny configs: each writes its outputs, the claims it checks hold, and
``--resume`` reuses finished cells. Plus the E3 / plasticity measurements on hand-built inputs."""

import json
import math
import re

import numpy as np
import pytest
import torch

import symkern.backends.reference.mirror_sweeps  # noqa: F401 — registers the torch kernel
from symkern import cli
from symkern.experiments import (
    common,
    mirror_dcs,
    mirror_ensemble,
    mirror_lowrank,
    mirror_plasticity,
    mirror_sparsity,
)
from symkern.testing import assert_usage_error

# small torch ops: one torch thread is faster than two (and keeps timings stable on shared cores)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


SPARSITY_ARGS = [
    "--d-values", "30", "--seeds", "1", "--n-gammas", "6", "--steps", "3000",
    "--noise-d", "20", "--noise-etas", "0.02", "--noise-batches", "1,16",
    "--noise-steps", "1500", "--no-progress",
]  # fmt: skip


def _resigned(data: dict) -> dict:
    """A cell record whose cell a test edited on purpose (to show a claim can fail), with its
    digest recomputed: run_cells recomputes a cell whose digest does not match (an edit)."""
    return {**data, "digest": common._cell_digest(data["name"], data["cell"])}


def _outputs(out, names):
    for n in names:
        assert (out / n).exists() and (out / n).stat().st_size > 0, n
    return json.loads((out / "results.json").read_text())


def test_mirror_sparsity_quick(tmp_path, capsys):
    out = tmp_path / "e1"
    assert mirror_sparsity.main([*SPARSITY_ARGS, "--out", str(out)]) == 0
    res = _outputs(out, ["results.json", "sparsity.csv", "noise.csv", "fig_mirror_sparsity.png"])
    claims = res["claims"]
    assert claims["gd_sparsity_matches_closed_form"]["holds"], claims
    assert claims["plain_linear_never_sparse"]["holds"]
    noise = claims["noise_trend_small_batch_sparser"]
    assert noise["holds"] and noise["max_sparsity_batch_1"] >= 0.2 and \
        noise["max_sparsity_batch_16"] == 0.0, noise  # fmt: skip
    cell = res["cells"][0]
    assert max(cell["closed_form"]) > 0.5  # the γ range reaches a sizeable sparsity

    # resume: every cell is loaded, nothing recomputed (a poisoned cell value shows it is reused)
    path = out / "cells" / "noise_b16.json"
    data = json.loads(path.read_text())
    data["cell"]["sparsity"] = [0.123]
    path.write_text(json.dumps(_resigned(data)))
    capsys.readouterr()
    assert mirror_sparsity.main([*SPARSITY_ARGS, "--out", str(out), "--resume"]) == 0
    assert "resume: 3 finished cell(s) loaded" in capsys.readouterr().out
    res2 = json.loads((out / "results.json").read_text())
    assert res2["cells"][-1]["sparsity"] == [0.123]
    # a changed parameter invalidates the checkpoints
    assert mirror_sparsity.main([*SPARSITY_ARGS, "--out", str(out), "--resume",
                                 "--noise-sigma", "4.5"]) == 0  # fmt: skip
    res3 = json.loads((out / "results.json").read_text())
    assert res3["cells"][-1]["sparsity"] != [0.123]

    # claims computed from NaN θ must fail (|θ_i| < ε is False for NaN: "not sparse")
    path = out / "cells" / "d30_s0.json"
    data = json.loads(path.read_text())
    data["cell"]["max_abs_err_vs_soft_threshold"][0] = float("nan")
    data["cell"]["linear_max_abs_err_vs_beta_over_1_plus_gamma"] = float("inf")
    path.write_text(json.dumps(_resigned(data)))
    assert mirror_sparsity.main([*SPARSITY_ARGS, "--out", str(out), "--resume",
                                 "--noise-sigma", "4.5", "--figures", "false"]) == 0  # fmt: skip
    c = json.loads((out / "results.json").read_text())["claims"]
    assert not c["gd_sparsity_matches_closed_form"]["holds"]
    assert not c["plain_linear_never_sparse"]["holds"]
    # a diverged but finite plain-linear run (|θ| ~ 1e146 at --eta 5) is not sparse either: the
    # claim, about the converged β / (1 + γ), held vacuously on it
    data["cell"]["linear_max_abs_err_vs_beta_over_1_plus_gamma"] = 1.5e146
    data["cell"]["max_abs_err_vs_soft_threshold"][0] = 0.0
    path.write_text(json.dumps(_resigned(data)))
    assert mirror_sparsity.main([*SPARSITY_ARGS, "--out", str(out), "--resume",
                                 "--noise-sigma", "4.5", "--figures", "false"]) == 0  # fmt: skip
    c = json.loads((out / "results.json").read_text())["claims"]["plain_linear_never_sparse"]
    assert c["all_finite"] and c["max_sparsity"] == 0.0 and not c["holds"]


def test_mirror_lowrank_quick(tmp_path):
    out = tmp_path / "e2"
    args = ["--m", "8", "--n", "6", "--k", "6", "--gammas", "0,1,2,3", "--steps", "2000",
            "--eta", "0.03", "--noise-sigmas", "0", "--record-every", "500", "--no-progress",
            "--out", str(out)]  # fmt: skip
    assert mirror_lowrank.main(args) == 0
    res = _outputs(out, ["results.json", "lowrank.csv", "rank_curve.csv",
                         "fig_mirror_lowrank.png"])  # fmt: skip
    c = res["claims"]
    assert c["rank_matches_closed_form"]["holds"]
    assert c["singular_values_match_closed_form"]["holds"]
    assert c["broken_variant_stays_full_rank"]["holds"]
    sym = res["cells"]["symmetric"]
    assert sym["rank"] == sym["closed_form_rank"] and min(sym["rank"]) < 6
    assert len(sym["rank_curve"]) == 4  # 2000 steps / 500

    # claims computed from NaN must fail (a NaN spectrum has rank 0 and a NaN error)
    for name in ("symmetric", "broken"):
        path = out / "cells" / f"{name}.json"
        data = json.loads(path.read_text())
        data["cell"]["singular_values"][-1][0] = float("nan")
        if name == "symmetric":
            data["cell"]["max_abs_sv_err"] = [float("nan")] * len(data["cell"]["gammas"])
        path.write_text(json.dumps(_resigned(data)))
    assert mirror_lowrank.main([*args, "--resume", "--figures", "false"]) == 0
    c = json.loads((out / "results.json").read_text())["claims"]
    for name in ("rank_matches_closed_form", "singular_values_match_closed_form",
                 "broken_variant_stays_full_rank"):  # fmt: skip
        assert not c[name]["holds"], (name, c[name])


def test_mirror_dcs_quick(tmp_path, capsys):
    out = tmp_path / "dcs"
    args = ["--d", "12", "--k-constrained", "8", "--gammas", "0,0.5,1.5", "--steps", "2000",
            "--m", "5", "--n", "4", "--no-progress", "--out", str(out)]  # fmt: skip
    assert mirror_dcs.main(args) == 0
    res = _outputs(out, ["results.json", "dcs.csv", "fig_mirror_dcs.png"])
    for name, c in res["claims"].items():
        assert c["holds"], (name, c)
    rows = res["cells"]["regression"]["rows"]
    assert rows[-1]["zeros_constrained"] > 0  # exact zeros appear at γ = 1.5

    # claims computed from NaN must fail: poison the finished cells (θ NaN: no zeros, NaN
    # error — the closed form's zero counts would still match) and resume
    for name in ("regression", "lowrank"):
        path = out / "cells" / f"{name}.json"
        data = json.loads(path.read_text())
        for r in data["cell"]["rows"]:
            r["max_abs_err"] = float("nan")
            if name == "regression":
                r["zeros_constrained"] = r["zeros_constrained_closed_form"]
        path.write_text(json.dumps(_resigned(data)))
    res = mirror_dcs.run(mirror_dcs.Config(**{**res["config"], "figures": False}), out,
                         resume=True, show_progress=False)  # fmt: skip
    for name, c in res["claims"].items():
        assert not c["holds"], (name, c)

    # a truncated cell file is recomputed on --resume (it used to be a JSONDecodeError)
    path = out / "cells" / "lowrank.json"
    path.write_text(path.read_text()[:100])
    capsys.readouterr()
    assert mirror_dcs.main([*args, "--resume", "--figures", "false"]) == 0
    assert "cells/lowrank.json unreadable: recomputing" in capsys.readouterr().out
    c = json.loads((out / "results.json").read_text())["claims"]
    assert c["lowrank_dcs_matches_closed_form"]["holds"]  # recomputed: no longer NaN
    assert not c["dcs_matches_soft_threshold"]["holds"]  # the poisoned regression cell: loaded


def test_mirror_dcs_claims_need_a_resolvable_gamma(tmp_path):
    """With too few steps no γ is far enough from every |β_i| to converge: the claims that only
    look at resolvable γ must not hold vacuously."""
    args = [
        "--d",
        "5",
        "--k-constrained",
        "3",
        "--gammas",
        "0,0.5",
        "--steps",
        "20",
        "--lowrank",
        "false",
        "--figures",
        "false",
        "--no-progress",
        "--out",
        str(tmp_path),
    ]
    assert mirror_dcs.main(args) == 0  # fmt: skip
    c = json.loads((tmp_path / "results.json").read_text())["claims"]
    assert not any(c["dcs_matches_soft_threshold"]["resolvable_gammas"])
    assert not c["dcs_matches_soft_threshold"]["holds"]
    assert not c["zeros_at_predicted_gamma"]["holds"]


# --- input validation: a bad value is a usage error (rc 2) naming the flag, before any work ----

BAD_VALUES = {
    mirror_sparsity: [
        ("--seeds", "0"), ("--seeds", "-2"), ("--d-values", "0"), ("--d-values", ","),
        ("--n-gammas", "0"), ("--steps", "0"), ("--eta", "-1"), ("--eta", "0"), ("--eta", "nan"),
        ("--gamma-max", "inf"), ("--gamma-max", "-1"), ("--init-scale", "nan"), ("--eps", "0"),
        ("--sgd-batch", "-1"), ("--sgd-eta", "inf"), ("--sgd-steps", "0"),
        ("--label-noise", "-1"), ("--noise-d", "0"), ("--noise-sigma", "nan"),
        ("--noise-etas", "0.01,-1"), ("--noise-batches", "0"), ("--noise-steps", "0"),
        ("--seed", "-1"), ("--backend", "bogus"), ("--dtype", "float16"),
    ],
    mirror_dcs: [
        ("--steps", "0"), ("--steps", "-3"), ("--eta", "0"), ("--eta", "-1"), ("--eta", "nan"),
        ("--init-scale", "nan"), ("--init-scale", "inf"), ("--init-scale", "-0.1"),
        ("--k-constrained", "0"),
        ("--k-constrained", "41"), ("--d", "0"), ("--gammas", "-1"), ("--gammas", "0,nan"),
        ("--m", "0"), ("--n", "-1"), ("--lowrank-eta", "inf"), ("--eps", "nan"),
        ("--seed", "-1"),
    ],
    mirror_lowrank: [
        ("--m", "0"), ("--k", "2"), ("--steps", "0"), ("--eta", "nan"), ("--eta", "-0.1"),
        ("--gammas", ","), ("--gammas", "-1"), ("--noise-sigmas", "-1"), ("--noise-eta", "0"),
        ("--record-every", "0"), ("--break-scale", "inf"), ("--init-scale", "nan"),
        ("--eps", "-1"), ("--seed", "-1"), ("--backend", "bogus"),
    ],
    mirror_ensemble: [
        ("--steps", "1"), ("--seeds", "0"), ("--d", "0"), ("--gamma-eta", "0"),
        ("--noise-eta", "nan"), ("--gamma-batch", "0"), ("--noise-batch", "-1"),
        ("--gamma-noise", "-1"), ("--noise-gamma", "inf"), ("--cos-threshold", "2"),
        ("--cos-threshold", "nan"), ("--dead-fraction", "0"), ("--dead-fraction", "1.5"),
        ("--live-eps", "-1"), ("--same-tol", "nan"), ("--teacher-a", "inf"),
        ("--teacher-b", "nan"), ("--init-scale", "inf"), ("--n-test", "0"), ("--threads", "0"),
        ("--gammas", "0,-0.1"), ("--gammas", "0,0"), ("--noise-sigmas", "0,nan"), ("--seed", "-1"),
        ("--backend", "bogus"),
    ],
    mirror_plasticity: [
        ("--eta", "-1"), ("--eta", "nan"), ("--steps-a", "0"), ("--steps-b", "0"),
        ("--record-every", "0"), ("--d", "0"), ("--gammas-a", "-1"), ("--gammas-a", "inf"),
        ("--init-scale", "nan"), ("--eps", "0"), ("--noise-sigma", "nan"),
        ("--noise-sigma", "-1"), ("--noise-etas", "0"), ("--noise-d", "0"),
        ("--noise-batch", "0"), ("--m", "0"), ("--f-gammas-a", "-2"), ("--f-eta", "inf"),
        ("--f-steps-a", "0"), ("--f-record-every", "0"), ("--f-init-scale", "nan"),
        ("--break-scale", "inf"), ("--threads", "0"), ("--seed", "-1"), ("--backend", "bogus"),
    ],
}  # fmt: skip
_BAD_CASES = [(m, flag, v) for m, cases in BAD_VALUES.items() for flag, v in cases]


@pytest.mark.parametrize(
    ("module", "flag", "value"),
    _BAD_CASES,
    ids=[f"{m.__name__.rsplit('.', 1)[-1]}{f}={v}" for m, f, v in _BAD_CASES],
)
def test_bad_value_is_a_usage_error_naming_the_flag(module, flag, value, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [flag, value, "--no-progress", "--out", str(out)]
    assert_usage_error(module.main, argv, flag, out, capsys)


@pytest.mark.parametrize("module", list(BAD_VALUES), ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_presets_pass_validation(module):
    for preset in module.PRESETS:
        module._validate(common.build_config(module.Config, module.PRESETS, preset, None, {}))


def test_unwritable_out_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(SystemExit) as e:
            mirror_dcs.main(["--out", str(out)])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "--out" in err and "Traceback" not in err, err


def test_cli_bad_value_and_divergence(tmp_path, capsys):
    """Through ``symkern run``: a bad value exits 2; a run that diverges with valid but too
    large parameters is a one-line error (rc 1), not a LAPACK traceback."""
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "mirror-lowrank", "--eta", "nan", "--out", str(tmp_path / "a")])
    assert e.value.code == 2 and "--eta" in capsys.readouterr().err
    args = ["--m", "6", "--n", "5", "--k", "5", "--gammas", "0,1", "--steps", "200",
            "--record-every", "100", "--eta", "5", "--no-progress",
            "--figures", "false"]  # fmt: skip
    assert cli.main(["run", "mirror-lowrank", *args, "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "diverged" in err and "--eta" in err, err


def test_cli_negative_init_scale_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "mirror-dcs", "--init-scale", "-0.1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--init-scale" in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("bad.json", b'{"d": 3,\n', "Expecting"),
        ("bad.toml", b"d = \n", "Invalid value"),
        ("latin1.toml", b"d = 3 # \xff\n", "cannot decode the text"),
        ("latin1.json", b'{"d": 3, "x": "\xff"}', "cannot decode the text"),
        ("list.json", b"[1, 2]", "the config must be a table / object"),
        ("deep.json", b"[" * 100_000, "recursion"),
    ],
)
def test_bad_config_file_is_a_usage_error_naming_the_file(tmp_path, capsys, name, data, reason):
    """A config file that cannot be decoded or parsed: ValueError ``--config PATH: reason``, a
    usage error (rc 2) on the command line, never a bare parser message or a traceback."""
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ValueError, match=rf"^--config {re.escape(str(path))}: .*{reason}"):
        common.load_config_file(path)
    with pytest.raises(SystemExit) as e:
        mirror_dcs.main(["--config", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"--config {path}" in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_valid_config_files_still_load(tmp_path):
    (tmp_path / "a.json").write_bytes(b'\xef\xbb\xbf{"d": 12, "gammas": [0.5]}')  # UTF-8 BOM
    (tmp_path / "b.toml").write_text("d = 12\ngammas = [0.5]\n# caf\u00e9\n", encoding="utf-8")
    for name in ("a.json", "b.toml"):
        assert common.load_config_file(tmp_path / name) == {"d": 12, "gammas": [0.5]}


def test_atomic_save_npz_refuses_an_array_named_allow_pickle(tmp_path):
    # np.savez_compressed takes allow_pickle= for its flag: such an array was silently not saved
    path = tmp_path / "a.npz"
    with pytest.raises(ValueError, match="cannot be named 'allow_pickle'"):
        common.atomic_save_npz(path, x=np.zeros(2), allow_pickle=np.ones(3))
    assert not path.exists()
    common.atomic_save_npz(path, x=np.zeros(2), y=np.ones(3))
    with np.load(path) as z:
        assert sorted(z.files) == ["x", "y"]


def test_nan_max_and_all_finite():
    nan, inf = float("nan"), float("inf")
    assert max([0.0, nan]) == 0.0  # the pitfall: Python's max skips a NaN that is not first
    assert math.isnan(common.nan_max([0.0, nan])) and math.isnan(common.nan_max([nan, 0.0]))
    assert common.nan_max({"a": 1.0, "b": [2.0, 3.0]}.values()) == 3.0
    assert math.isnan(common.nan_max([])) and common.nan_max([], default=0.0) == 0.0
    assert not (common.nan_max([1e-9, nan]) <= 1e-3)  # a tolerance claim on NaN fails
    assert common.all_finite([1.0, [2.0, None], {"x": 3}])
    assert not common.all_finite([1.0, [inf]]) and not common.all_finite({"x": [nan]})
    assert not common.all_finite(torch.tensor([0.0, nan]))


def test_bad_config_is_rejected(tmp_path):
    with pytest.raises(SystemExit):
        mirror_dcs.main(["--k-constrained", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        mirror_lowrank.main(["--k", "2", "--out", str(tmp_path)])
    for bad in (["--activations", "relu"], ["--teacher-width", "32"], ["--gammas", "0.1,0.3"]):
        with pytest.raises(SystemExit):
            mirror_ensemble.main([*bad, "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        mirror_plasticity.main(["--steps-b", "300", "--record-every", "250", "--out",
                                str(tmp_path)])  # fmt: skip


# --- mirror-ensemble (E3) -----------------------------------------------------------------------


def test_neuron_stats_counts_dying_aligned_and_identical_neurons():
    # n0; n1 = n0; n2 = −n0 (a signed copy); n3 ∥ n0 with another norm; n4 another direction;
    # n5 dead. tanh identifies n2 with n0 (odd φ: the signed swap is a mirror), relu does not.
    W1 = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1e-4, 0.0]]])
    b1 = torch.tensor([[0.5, 0.5, -0.5, 1.0, 0.0, 1e-4]])
    a = torch.tensor([[1.0, 1.0, -1.0, 0.5, 1.0, 1e-4]])
    args = (1e-2, 0.99, 1e-2)
    tanh = mirror_ensemble.neuron_stats(W1, b1, a, "tanh", *args)
    assert (tanh["live"], tanh["clusters"], tanh["identical"]) == ([5], [2], [3])
    relu = mirror_ensemble.neuron_stats(W1, b1, a, "relu", *args)
    assert (relu["live"], relu["clusters"], relu["identical"]) == ([5], [3], [4])
    nan = mirror_ensemble.neuron_stats(W1 * float("nan"), b1, a, "tanh", *args)
    assert nan["live"] == [-1]


ENSEMBLE_ARGS = [
    "--width", "12", "--seeds", "1", "--gammas", "0,0.01,0.3", "--noise-sigmas", "0,2",
    "--steps", "5000", "--no-progress",
]  # fmt: skip


def test_mirror_ensemble_quick(tmp_path, capsys):
    out = tmp_path / "e3"
    assert mirror_ensemble.main([*ENSEMBLE_ARGS, "--out", str(out)]) == 0
    res = _outputs(out, ["results.json", "ensemble.csv", "fig_mirror_ensemble.png"])
    for name, c in res["claims"].items():
        assert c["holds"], (name, c)
    g = res["summary"]["gamma_tanh"]
    assert g["live_mean"][1] <= 4 <= g["live_mean"][2]  # γ = 0.01 kills, γ = 0.3 keeps ...
    assert g["identical_mean"][2] == 1  # ... every live neuron, all identical (merged)
    assert res["backend"] and res["cells"]["gamma_tanh"]["backend"] in res["backend"]

    # resume: both cells loaded, nothing recomputed (a poisoned cell shows in the summary)
    path = out / "cells" / "noise_tanh.json"
    data = json.loads(path.read_text())
    data["cell"]["live"] = [12, 1]
    path.write_text(json.dumps(_resigned(data)))
    capsys.readouterr()
    args = [*ENSEMBLE_ARGS, "--out", str(out), "--resume", "--figures", "false"]
    assert mirror_ensemble.main(args) == 0
    assert "resume: 2 finished cell(s) loaded" in capsys.readouterr().out
    res2 = json.loads((out / "results.json").read_text())
    assert res2["summary"]["noise_tanh"]["live_mean"] == [12.0, 1.0]


# --- mirror-plasticity --------------------------------------------------------------------------


def test_classify_separates_traps_from_escaping_coordinates():
    eta, interval, eps = 0.05, 100, 1e-3
    beta_b = torch.tensor([[1.0, -1.0, 0.5, 2.0]], dtype=torch.float64)
    # 0: exact zero; 1: u = −sign(β_B) w ≠ 0 (sign trap); 2: growing at the linearised rate;
    # 3: not collapsed
    u = torch.tensor([[0.0, 1e-5, 1e-4, 2.0]], dtype=torch.float64)
    w = torch.tensor([[0.0, 1e-5, 1e-4, 2.0]], dtype=torch.float64)
    rate = 2.0 * math.log1p(2.0 * eta * 0.5)
    log_now = torch.log(u.abs()) + torch.log(w.abs())
    log_prev = log_now - interval * rate
    c = mirror_plasticity.classify(u, w, beta_b[0], log_prev, eps, eta, interval)
    assert c["collapsed"] == [3] and c["exact_zero"] == [1] and c["sign_trapped"] == [1]
    assert c["escaping"] == [1] and c["not_growing"] == [0]
    assert c["rate_rel_err_median"] < 1e-12
    need = (math.log(eps) - math.log(1e-8)) / rate
    assert c["escape_steps_needed"]["max"] == pytest.approx(need, rel=1e-12)


PLASTICITY_ARGS = [
    "--d", "40", "--gammas-a", "0,1,2", "--steps-a", "2000", "--steps-b", "2000",
    "--noise-d", "10", "--noise-etas", "0.01", "--m", "6", "--n", "5", "--k", "5",
    "--f-gammas-a", "0,2", "--f-steps-a", "1500", "--f-steps-b", "2000", "--no-progress",
]  # fmt: skip


def test_mirror_plasticity_quick(tmp_path, capsys):
    out = tmp_path / "plast"
    assert mirror_plasticity.main([*PLASTICITY_ARGS, "--out", str(out)]) == 0
    res = _outputs(out, ["results.json", "plasticity.csv", "fig_mirror_plasticity.png"])
    for name, c in res["claims"].items():
        assert c["holds"], (name, c)
    dec = res["cells"]["rescaling_decay"]
    assert dec["collapsed_b"][0] == 0 and min(dec["collapsed_b"][1:]) > 0  # γ_A = 0 vs γ_A > 0
    sym = res["cells"]["factorization_symmetric"]
    assert sym["rank_end_a"] == [5, 3] and sym["rank_end_b"] == [5, 5]

    # resume: every cell loaded (a poisoned cell shows in the claims)
    path = out / "cells" / "factorization_broken.json"
    data = json.loads(path.read_text())
    data["cell"]["curve"]["rank"][0] = [5, 4]
    path.write_text(json.dumps(_resigned(data)))
    capsys.readouterr()
    args = [*PLASTICITY_ARGS, "--out", str(out), "--resume", "--figures", "false"]
    assert mirror_plasticity.main(args) == 0
    assert "resume: 4 finished cell(s) loaded" in capsys.readouterr().out
    res2 = json.loads((out / "results.json").read_text())
    assert not res2["claims"]["factorization_broken_full_rank_throughout"]["holds"]


def test_resume_recomputes_unreadable_cells(tmp_path):
    """--resume: a truncated, non-object or incomplete cell file is logged and recomputed (it
    used to crash with a JSONDecodeError / AttributeError), and so is another cell's file copied
    over it or an edited one (loaded as they were: a copy gave the wrong cell's numbers, an edit
    that removed a key crashed later); good cells are still loaded."""
    names = ["a", "b", "c", "d", "e", "f", "g", "h"]
    computed = []

    def compute(n):
        computed.append(n)
        return {"value": n * 2}

    def run(resume):
        logs = []
        cells = common.run_cells(tmp_path, names, compute, {"x": 1}, set(), resume=resume,
                                 desc="t", show_progress=False, log=logs.append)  # fmt: skip
        return cells, logs

    ref, _ = run(False)
    cells_dir = tmp_path / "cells"
    good = (cells_dir / "a.json").read_text()
    (cells_dir / "b.json").write_text(good[:20])  # truncated
    (cells_dir / "c.json").write_text("[1, 2]")  # not an object
    (cells_dir / "d.json").write_text('{"cell": {"value": "dd"}}')  # no hash
    (cells_dir / "e.json").write_bytes(b"\xff\xfe\x00")  # not text
    data = json.loads(good)
    (cells_dir / "f.json").write_text(json.dumps({**data, "cell": [1]}))  # right hash, bad cell
    # right hash, readable, but not this cell: a's file copied over g's, h's value edited
    (cells_dir / "g.json").write_text(good)
    edited = json.loads((cells_dir / "h.json").read_text())
    (cells_dir / "h.json").write_text(json.dumps({**edited, "cell": {"value": "hhh"}}))
    computed.clear()
    cells, logs = run(True)
    assert cells == ref
    assert computed == ["b", "c", "d", "e", "f", "g", "h"]
    for n in computed[:5]:
        assert any(m.startswith(f"cells/{n}.json unreadable: recomputing") for m in logs), logs
    for n in computed[5:]:
        message = f"cells/{n}.json is not this run's cell {n} (copied or edited): recomputing"
        assert message in logs, logs
    assert "resume: 1 finished cell(s) loaded" in logs
    # the recomputed cells were rewritten: a second resume loads all of them
    computed.clear()
    assert run(True)[0] == ref and computed == []


def test_mirror_dcs_init_scale_reaches_the_lowrank_cell():
    """--init-scale is the std of every DCS initialisation: the low-rank cell ignored it (always
    0.1), so its singular values did not change with the option."""
    small = {"steps": 20, "gammas": [0.5], "m": 4, "n": 3, "d": 6, "k_constrained": 4}
    cfgs = [common.build_config(mirror_dcs.Config, mirror_dcs.PRESETS, "quick", None,
                                {**small, "init_scale": s}) for s in (0.1, 0.7)]  # fmt: skip
    a, b = (mirror_dcs.lowrank_cell(c)["rows"][0]["singular_values"] for c in cfgs)
    assert a != b
