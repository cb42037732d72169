"""The mirror experiments (mirror-sparsity, mirror-lowrank, mirror-dcs) on tiny configs: each
writes its outputs, the claim it checks holds, and ``--resume`` reuses finished cells."""

import json

import pytest
import torch

import symkern.backends.reference.mirror_sweeps  # noqa: F401 — registers the torch kernel
from symkern.experiments import mirror_dcs, mirror_lowrank, mirror_sparsity


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


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
