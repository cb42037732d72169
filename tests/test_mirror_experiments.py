"""The mirror experiments (mirror-sparsity, mirror-lowrank, mirror-dcs, mirror-ensemble,
mirror-plasticity) on tiny configs: each writes its outputs, the claims it checks hold, and
``--resume`` reuses finished cells. Plus the E3 / plasticity measurements on hand-built inputs."""

import json
import math

import pytest
import torch

import symkern.backends.reference.mirror_sweeps  # noqa: F401 — registers the torch kernel
from symkern.experiments import (
    mirror_dcs,
    mirror_ensemble,
    mirror_lowrank,
    mirror_plasticity,
    mirror_sparsity,
)

# small torch ops: one torch thread is faster than two (and keeps timings stable on shared cores)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


SPARSITY_ARGS = [
    "--d-values", "30", "--seeds", "1", "--n-gammas", "6", "--steps", "3000",
    "--noise-d", "20", "--noise-etas", "0.02", "--noise-batches", "1,16",
    "--noise-steps", "1500", "--no-progress",
]  # fmt: skip


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
    path.write_text(json.dumps(data))
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


def test_mirror_dcs_quick(tmp_path):
    out = tmp_path / "dcs"
    args = ["--d", "12", "--k-constrained", "8", "--gammas", "0,0.5,1.5", "--steps", "2000",
            "--m", "5", "--n", "4", "--no-progress", "--out", str(out)]  # fmt: skip
    assert mirror_dcs.main(args) == 0
    res = _outputs(out, ["results.json", "dcs.csv", "fig_mirror_dcs.png"])
    for name, c in res["claims"].items():
        assert c["holds"], (name, c)
    rows = res["cells"]["regression"]["rows"]
    assert rows[-1]["zeros_constrained"] > 0  # exact zeros appear at γ = 1.5


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
    path.write_text(json.dumps(data))
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
    path.write_text(json.dumps(data))
    capsys.readouterr()
    args = [*PLASTICITY_ARGS, "--out", str(out), "--resume", "--figures", "false"]
    assert mirror_plasticity.main(args) == 0
    assert "resume: 4 finished cell(s) loaded" in capsys.readouterr().out
    res2 = json.loads((out / "results.json").read_text())
    assert not res2["claims"]["factorization_broken_full_rank_throughout"]["holds"]
