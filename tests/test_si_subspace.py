"""``symkern run si-subspace``: discovering E^G by iterated free training (SI teacher)."""

import json

import numpy as np
import pytest

from symkern.experiments import si_subspace as si
from symkern.testing import assert_usage_error


def test_principal_angles():
    e = np.eye(4)
    assert np.allclose(si.principal_angles(e[:, :2], e[:, :2]), [0, 0])
    assert np.allclose(si.principal_angles(e[:, :2], e[:, 2:]), [90, 90])
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    q = np.stack([e[:, 0], c * e[:, 1] + s * e[:, 2]], 1)
    assert np.allclose(si.principal_angles(q, e[:, :2]), [0, 30])


def test_noise_projected_on_subspace_stays_there():
    """Training on E_j with β > 0: the projected noise adds nothing outside E_j (so all escape
    comes from the gradient), and β = 0 vs β > 0 differ only inside E_j at the first step."""
    import torch

    from symkern.meanfield.trainer import initial_particles

    cfg = si.build_config("quick", None, {"n_particles": 20, "beta": 1e-2, "tau": 0.0})
    unit, _, teacher, proj = si._instance("c2", cfg)
    q = np.array([[0.5**0.5, 0, 0, 0.5**0.5]]).T
    pj = torch.from_numpy(q @ q.T)
    th0 = initial_particles(2, 20, 4, 0, proj=pj)
    ids = torch.arange(2)
    noisy = si.train_on_subspace(th0, unit, teacher, pj, cfg, ids, 1)
    cfg0 = si.build_config("quick", None, {"n_particles": 20, "beta": 0.0, "tau": 0.0})
    quiet = si.train_on_subspace(th0, unit, teacher, pj, cfg0, ids, 1)
    diff = (noisy - quiet).reshape(-1, 4).numpy()
    assert np.abs(diff).max() > 1e-3  # there is noise ...
    assert np.abs(diff - diff @ (q @ q.T)).max() < 1e-14  # ... and it lies in E_j


def test_recovers_eg_for_c2(tmp_path):
    cfg = si.build_config("quick", None, {"groups": ["c2"], "n_particles": 100, "figures": True})
    res = si.run(cfg, tmp_path, show_progress=False)
    r = res["instances"][0]
    assert r["converged"] and r["dim"] == 2 == r["dim_EG"]
    assert max(r["principal_angles_deg"]) < cfg.angle_tol
    assert r["recovered"]
    # the RMD sequence ends below the threshold, every earlier one above it
    rmds = [it["rmd"] for it in r["iterations"]]
    assert rmds[-1] <= cfg.threshold < min(rmds[:-1])
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["instances"][0]["dim"] == 2
    import matplotlib.image as mpimg

    img = mpimg.imread(tmp_path / "fig_si_subspace.png")
    assert img.shape[0] > 300 and img.std() > 0.05


@pytest.mark.slow
def test_recovers_eg_for_s3(tmp_path):
    """~16 s on 2 cores (2026-11-23). At N = 100 this instance returns a 4-D space containing
    E^G (the finite-N escape exceeds the threshold); at the quick preset's N = 300 it recovers
    E^G."""
    cfg = si.build_config("quick", None, {"groups": ["s3"], "figures": False})
    r = si.run(cfg, tmp_path, show_progress=False)["instances"][0]
    assert r["recovered"], (r["dim"], r["principal_angles_deg"])
    assert r["dim"] == 2 and max(r["principal_angles_deg"]) < cfg.angle_tol


BAD_VALUES = [
    ("--n-particles", "0"), ("--runs", "0"), ("--horizon", "nan"), ("--horizon", "-1"),
    ("--horizon", "1e12"), ("--seed", "-1"), ("--alpha", "0"), ("--alpha", "inf"),
    ("--tau", "nan"), ("--beta", "-1"), ("--batch", "0"), ("--sigma-pi", "inf"),
    ("--threshold", "-1"), ("--threshold", "nan"), ("--sv-tol", "nan"), ("--max-iter", "0"),
    ("--threshold", "0"), ("--threshold", "1"), ("--sv-tol", "0"), ("--sv-tol", "1.5"),
    ("--angle-tol", "0"), ("--start", "bogus"), ("--teacher", "XI"),
    ("--teacher-particles", "0"), ("--teacher-seed", "-1"), ("--dtype", "float16"),
    ("--backend", "bogus"), ("--groups", "c5"),
]  # fmt: skip


@pytest.mark.parametrize(("flag", "value"), BAD_VALUES, ids=[f"{f}={v}" for f, v in BAD_VALUES])
def test_bad_value_is_a_usage_error_naming_the_flag(flag, value, tmp_path, capsys):
    out = tmp_path / "out"
    assert_usage_error(
        si.main, [flag, value, "--no-progress", "--out", str(out)], flag, out, capsys
    )


def test_presets_pass_validation():
    for preset in si.PRESETS:
        si.build_config(preset)
    assert si.build_config("quick", None, {"sv_tol": "none"}).sv_tol is None
    assert si.build_config("quick", None, {"sv_tol": "0.1"}).sv_tol == 0.1


def test_s3_teacher_does_not_share_a_stream_with_the_students():
    """The S3 teacher's random particles come from run id 2^31, not 0: with --seed equal to
    --teacher-seed they were exactly twice the first student run's initial particles."""
    import torch

    from symkern.meanfield.trainer import initial_particles

    cfg = si.build_config("quick", None, {"seed": 1, "teacher_seed": 1, "teacher": "SI"})
    unit, _, teacher, proj = si._instance("s3", cfg)
    M = teacher.particles.shape[0]
    student = initial_particles(1, M, unit.D, 1)[0] @ proj.T  # run 0, projected as the teacher
    ratio = teacher.particles / (2 * student)  # 0.5 x N(0, 1) vs 0.25 x N(0, 1) on one stream
    assert not torch.allclose(ratio, torch.ones_like(ratio), atol=1e-6)


def test_max_iter_reports_the_last_subspace_it_measured(tmp_path):
    """Stopping at --max-iter without converging, the result was E_j plus the directions picked
    from the last iteration's escape, a subspace never trained or measured (its angles shown as
    the final ones). Now it is the last measured E_j, and the last iteration adds nothing."""
    cfg = si.build_config("quick", None, {"groups": ["c2"], "n_particles": 100, "max_iter": 1,
                                          "figures": False})  # fmt: skip
    r = si.run(cfg, tmp_path, show_progress=False)["instances"][0]
    last = r["iterations"][-1]
    assert not r["converged"] and last["rmd"] > cfg.threshold
    assert r["dim"] == last["dim"] == 0 and "added" not in last
    assert not r["recovered"]
