"""``symkern run teacher-student``: the paper's claims on a small preset, outputs, config
precedence, and checkpoint / resume (after an exception and after SIGKILL).

The claims grid (N ∈ {5, 10, 50, 100}, 2 seeds, T = 20, all teachers and schemes: 24 runs per
N, one engine call per snapshot) takes ~20 s on 2 cores with the C++ engine; it runs once per
module.
"""

import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from symkern.experiments import teacher_student as ts
from symkern.meanfield import Teacher
from symkern.meanfield.trainer import initial_particles
from symkern.testing import assert_close, assert_usage_error

CLAIMS_GRID = {"n_values": [5, 10, 50, 100], "seeds": 2, "figures": True}
TINY_GRID = {
    "n_values": [5, 8, 12],
    "seeds": 1,
    "horizon": 3.0,
    "teachers": ["arbitrary", "WI"],
    "test_samples": 256,
    "figures": False,
}


@pytest.fixture(scope="module")
def claims(tmp_path_factory):
    out = tmp_path_factory.mktemp("ts_claims")
    cfg = ts.build_config("quick", None, CLAIMS_GRID)
    res = ts.run(cfg, out, show_progress=False)
    return res, out


def _final(res, teacher, scheme, n):
    return [
        r for r in res["runs"] if r["teacher"] == teacher and r["scheme"] == scheme and r["N"] == n
    ]


def test_da_ea_stay_in_eg_from_si_init(claims):
    """SI init: DA and EA keep every snapshot of every run in E^G (RMD(ν, P#ν) ≤ 1e-6)."""
    res, _ = claims
    for r in res["runs"]:
        if r["scheme"] in ("DA", "EA"):
            assert max(r["rmd_si"]) <= 1e-6, (r["teacher"], r["scheme"], r["N"], r["rmd_si"])


def test_fa_stays_in_eg_from_si_init(claims):
    """FA likewise, for N >= 10 (N = 5: see the next test)."""
    res, _ = claims
    for r in res["runs"]:
        if r["scheme"] == "FA" and r["N"] >= 10:
            assert max(r["rmd_si"]) <= 1e-6, (r["teacher"], r["N"], r["rmd_si"])


def test_fa_stays_in_eg_from_si_init_n5(claims):
    """At N = 5 (per-particle step α/N = 10) E^G is linearly unstable under FA: a rounding-level
    off-E^G part grows ~30x per 20 steps, to 1e-9..1e-6 at T = 20 on the torch reference. The C++
    engine rounds the two copies of every C2 orbit alike (test_particles.py::
    test_cpp_da_fa_keep_c2_fixed_points_exactly), so there FA keeps E^G bit for bit: RMD exactly
    0. (This was a non-strict xfail written for the reference; it passed on the C++ engine.)"""
    res, _ = claims
    if res["backend"] != ["cpp"]:  # the backends the cells ran on
        pytest.xfail(f"backend {res['backend']}: rounds the orbit copies apart at N = 5")
    for r in res["runs"]:
        if r["scheme"] == "FA" and r["N"] == 5:
            assert max(r["rmd_si"]) == 0.0, (r["teacher"], r["N"], r["rmd_si"])


def test_wi_teacher_vanilla_approaches_eg_as_n_grows(claims):
    res, _ = claims
    ns = sorted(CLAIMS_GRID["n_values"])
    means = [np.mean([r["rmd_si"][-1] for r in _final(res, "WI", "vanilla", n)]) for n in ns]
    slope = np.polyfit(np.log(ns), np.log(means), 1)[0]
    assert slope < 0 and means[-1] < means[0], means
    # and it is close to E^G at the largest N, far below the arbitrary teacher's escape
    assert means[-1] < 0.05


def test_arbitrary_teacher_vanilla_leaves_eg(claims):
    res, _ = claims
    for n in CLAIMS_GRID["n_values"]:
        for r in _final(res, "arbitrary", "vanilla", n):
            assert r["rmd_si"][-1] >= 0.05, (n, r["rmd_si"])


def test_ea_loses_expressivity_on_arbitrary_teacher(claims):
    """EA's risk stays at the equivariant floor (the risk of Q_G f*), vanilla goes far below."""
    res, _ = claims
    n = max(CLAIMS_GRID["n_values"])
    floor = res["reference_risk_equivariant"]["arbitrary"]
    ea = np.mean([r["test_risk"][-1] for r in _final(res, "arbitrary", "EA", n)])
    van = np.mean([r["test_risk"][-1] for r in _final(res, "arbitrary", "vanilla", n)])
    assert floor > 0.01
    assert ea >= 0.5 * floor
    assert van <= 0.1 * ea


def test_da_fa_ea_coincide_from_si_init(claims):
    """From SI init, full-orbit DA, FA and EA take the same step in exact arithmetic (the DA and
    FA gradients at SI particles equal P times the plain gradient), so their test risks agree —
    which is why the issue's "DA/FA beat EA on the arbitrary teacher" does not come out."""
    res, _ = claims
    for n in CLAIMS_GRID["n_values"][1:]:
        for s in range(CLAIMS_GRID["seeds"]):
            risk = {
                sch: next(
                    r["test_risk"][-1] for r in _final(res, "arbitrary", sch, n) if r["seed"] == s
                )
                for sch in ("DA", "FA", "EA")
            }
            assert risk["DA"] == pytest.approx(risk["EA"], rel=1e-6)
            assert risk["FA"] == pytest.approx(risk["EA"], rel=1e-6)
    # so the claim is reported as not reproduced, not passed on a last-bit rounding difference
    (below_ea,) = [c for c in res["claims"] if "lower test risk than EA" in c["claim"]]
    assert below_ea["holds"] is False


def test_outputs(claims):
    res, out = claims
    data = json.loads((out / "results.json").read_text())
    for key in (
        "config",
        "versions",
        "backend",
        "wall_time_s",
        "summary",
        "claims",
        "runs",
        "pairwise",
        "metric_definitions",
    ):
        assert key in data
    assert data["backend"], "the backend that ran the engine is recorded"
    n_runs = 3 * 4 * CLAIMS_GRID["seeds"] * len(CLAIMS_GRID["n_values"])
    assert len(data["runs"]) == n_runs
    assert len((out / "runs.csv").read_text().strip().splitlines()) == n_runs + 1
    assert all(len(r["rmd_si"]) == 5 for r in data["runs"])  # 5 snapshots
    assert {p["method"] for p in data["pairwise"]} == {"exact"}
    import matplotlib.image as mpimg

    for name in ("fig_rmd_si.png", "fig_pairwise.png", "fig_test_risk.png", "fig_scatter.png"):
        img = mpimg.imread(out / name)
        assert img.shape[0] > 300 and img.shape[1] > 600, name
        assert img.std() > 0.05, f"{name} looks blank"


def test_config_precedence(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("seeds = 4\nalpha = 10.0\nn_values = [5, 7]\n")
    cfg = ts.build_config("paper", ts.common.load_config_file(toml), {"alpha": "3"})
    assert cfg.seeds == 4 and cfg.n_values == [5, 7] and cfg.alpha == 3.0  # file < CLI
    assert cfg.tau == 1e-4  # default
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"init": "WI", "batch": 7}))
    cfg = ts.build_config("quick", ts.common.load_config_file(js), {"n_values": "5,10"})
    assert cfg.init == "WI" and cfg.batch == 7 and cfg.n_values == [5, 10]
    assert cfg.seeds == ts.PRESETS["quick"]["seeds"]
    with pytest.raises(ValueError, match="unknown parameter"):
        ts.build_config("quick", {"sedes": 3}, {})
    with pytest.raises(ValueError, match="init"):
        ts.build_config("quick", None, {"init": "XI"})


def test_help_shows_the_preset_defaults():
    """--help gives the value each flag defaults to: where the presets set a field (n_values,
    seeds), each preset's value, not the dataclass default that no run uses."""
    import argparse

    parser = argparse.ArgumentParser()
    ts.common.add_config_arguments(parser, ts.Config, ts.PRESETS)
    helps = {a.dest: a.help for a in parser._actions}
    quick, paper = ts.PRESETS["quick"]["n_values"], ts.PRESETS["paper"]["n_values"]
    assert f"--preset quick: {quick!r}; --preset paper: {paper!r}" in helps["n_values"]
    assert "(default: 0.0001)" in helps["tau"]  # no preset sets it


def _metrics_only(res):
    return {k: res[k] for k in ("runs", "pairwise", "summary", "claims")}


def test_resume_after_exception_matches_uninterrupted(tmp_path):
    cfg = ts.build_config("quick", None, TINY_GRID)
    ref = ts.run(cfg, tmp_path / "ref", show_progress=False)
    with pytest.raises(RuntimeError, match="test hook"):
        ts.run(cfg, tmp_path / "crash", show_progress=False, crash_after_cells=1)
    assert not (tmp_path / "crash" / "results.json").exists()
    assert (tmp_path / "crash" / "cells" / "N5.json").exists()
    res = ts.run(cfg, tmp_path / "crash", resume=True, show_progress=False)
    assert res["resumed_cells"] == 1
    assert _metrics_only(res) == _metrics_only(ref)


def test_resume_ignores_cells_of_another_config(tmp_path):
    cfg = ts.build_config("quick", None, TINY_GRID)
    with pytest.raises(RuntimeError):
        ts.run(cfg, tmp_path, show_progress=False, crash_after_cells=1)
    other = ts.build_config("quick", None, {**TINY_GRID, "alpha": 40.0})
    res = ts.run(other, tmp_path, resume=True, show_progress=False)
    assert res["resumed_cells"] == 0


def test_resume_after_sigkill(tmp_path):
    """The CLI killed by SIGKILL after one cell, then resumed, gives the uninterrupted numbers."""
    args = [
        "--n-values",
        "5,8,12",
        "--seeds",
        "1",
        "--horizon",
        "3",
        "--teachers",
        "arbitrary,WI",
        "--test-samples",
        "256",
        "--figures",
        "false",
        "--no-progress",
    ]
    cmd = [sys.executable, "-m", "symkern.cli", "run", "teacher-student"]
    env = {**os.environ, ts.CRASH_ENV: "1"}
    killed = subprocess.run(
        [*cmd, *args, "--out", str(tmp_path / "k")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "k" / "results.json").exists()
    resumed = subprocess.run(
        [*cmd, *args, "--out", str(tmp_path / "k"), "--resume"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resume: 1 finished cell" in resumed.stdout
    assert "claims:" in resumed.stdout  # the terminal summary
    cfg = ts.build_config("quick", None, TINY_GRID)
    ref = ts.run(cfg, tmp_path / "ref", show_progress=False)
    got = json.loads((tmp_path / "k" / "results.json").read_text())
    assert _metrics_only(got) == json.loads(json.dumps(_metrics_only(ref)))


def test_ctrl_c_stops_the_cli_and_keeps_finished_cells(tmp_path):
    """Ctrl-C (SIGINT) while a cell trains: the C++ call stops within about a chunk, the CLI says
    so and exits 130 without a traceback, and the cell finished before stays on disk for
    --resume (test_resume_after_sigkill resumes from such a state). Uninterrupted, the second
    cell (N = 2000) trains for ~30 s on a 2-core machine."""
    import time

    from symkern.testing import _default_sigint

    out = tmp_path / "i"
    cmd = [sys.executable, "-m", "symkern.cli", "run", "teacher-student", "--n-values", "5,2000",
           "--seeds", "1", "--horizon", "20", "--teachers", "arbitrary", "--test-samples", "256",
           "--figures", "false", "--no-progress", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "cells" / "N5.json").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "the first cell never finished"
        time.sleep(0.05)
    time.sleep(0.5)  # into the N = 2000 cell's training
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert time.monotonic() - sent < 10
    assert "interrupted (Ctrl-C)" in err and "Traceback" not in err, err[-2000:]
    assert (out / "cells" / "N5.json").exists() and not (out / "cells" / "N2000.json").exists()
    assert not (out / "results.json").exists()


def test_rmd_wi_only_at_the_last_snapshot_above_wi_snapshots_max_n():
    """Above ``wi_snapshots_max_n`` the costly RMD to WI is measured at the last snapshot only
    (null before); the value measured there is the same as with every snapshot measured."""
    every = ts.run_cell(ts._Grid(ts.build_config("quick", None, TINY_GRID)), 8)
    last = ts.run_cell(
        ts._Grid(ts.build_config("quick", None, {**TINY_GRID, "wi_snapshots_max_n": 7})), 8
    )
    for a, b in zip(every["records"], last["records"], strict=True):
        assert all(v is not None for v in a["rmd_wi"])
        assert b["rmd_wi"][:-1] == [None] * (len(a["rmd_wi"]) - 1)
        assert b["rmd_wi"][-1] == a["rmd_wi"][-1] and b["rmd_si"] == a["rmd_si"]


def test_metrics_do_not_depend_on_metric_threads():
    """The per-run metrics run on a thread pool (POT's simplex releases the GIL); one thread and
    two give identical records and pairwise distances, in the same order."""
    cells = [
        ts.run_cell(ts._Grid(ts.build_config("quick", None, {**TINY_GRID, "metric_threads": k})), 8)
        for k in (1, 2)
    ]
    assert cells[0]["records"] == cells[1]["records"]
    assert cells[0]["pairwise"] == cells[1]["pairwise"] and len(cells[0]["pairwise"]) == 12


def test_equal_laws_share_one_w2_solve(monkeypatch):
    """Each distinct W₂ problem of a cell is solved once: in float32 from SI init DA and FA end
    bit for bit equal, so vanilla-DA and vanilla-FA (and DA-EA, FA-EA) are one solve each, and
    every pair still gets the value of its own direct computation."""
    from symkern.meanfield import metrics

    calls = []  # the arrays of every W₂ solve (rmd and rmd_to_symmetrized both end there)
    real = metrics.w2_squared

    def counted(x, y, *args, **kw):
        calls.append(tuple(np.asarray(a).tobytes() for a in (x, y, *args)))
        return real(x, y, *args, **kw)

    monkeypatch.setattr(metrics, "w2_squared", counted)
    cfg = ts.build_config("quick", None, {**TINY_GRID, "dtype": "float32"})
    grid = ts._Grid(cfg)
    cell = ts.run_cell(grid, 8)
    assert len(calls) == len(set(calls))  # no problem solved twice
    same = [p for p in cell["pairwise"] if p["pair"] == "DA-FA"]
    assert same and all(p["rmd"] == 0.0 for p in same)  # the premise: DA and FA coincide
    monkeypatch.undo()
    by_pair = {(p["teacher"], p["seed"], p["pair"]): p["rmd"] for p in cell["pairwise"]}
    assert len(by_pair) == 12
    for (tk, seed, pair), value in by_pair.items():  # each against its own direct solve
        s1, s2 = pair.split("-")
        th = {s: _final_particles(cell, tk, s, seed) for s in (s1, s2)}
        want = metrics.rmd(
            grid.law_particles(s1, th[s1]),
            grid.law_particles(s2, th[s2]),
            exact_max=cfg.exact_ot_max,
            sinkhorn_reg=cfg.sinkhorn_reg,
            moment_factor=cfg.moment_factor,
        )
        assert value == want.value, (tk, seed, pair)


def _final_particles(cell, teacher, scheme, seed):
    """Final particles of one run of a cell (seed 0 runs are kept in the cell's _particles)."""
    assert seed == 0
    runs = list(cell["_particles"]["runs"])
    return torch.from_numpy(cell["_particles"]["final"][runs.index(f"{teacher}|{scheme}")])


# --- input validation: a bad value is a usage error (rc 2) naming the flag, before any work ----

BAD_VALUES = [
    ("--moment-factor", "-1"), ("--moment-factor", "0"), ("--moment-factor", "nan"),
    ("--alpha", "-1"), ("--alpha", "inf"), ("--tau", "nan"), ("--tau", "-1"), ("--beta", "-1"),
    ("--seed", "-1"), ("--test-seed", "-1"), ("--seed", str(2**64)), ("--backend", "bogus"),
    ("--device", "bogus"), ("--device", "meta"), ("--horizon", "nan"), ("--horizon", "inf"),
    ("--horizon", "0"), ("--horizon", "1e9"), ("--sigma-pi", "inf"), ("--sigma-pi", "0"),
    ("--scatter-n", "-3"), ("--scatter-n", "7"), ("--n-values", "0"), ("--n-values", ","),
    ("--seeds", "0"),
    ("--batch", "0"), ("--batch", "1.5"), ("--snapshots", "0"), ("--test-samples", "0"),
    ("--exact-ot-max", "-1"), ("--metric-threads", "-1"), ("--wi-snapshots-max-n", "-1"),
    ("--sinkhorn-reg", "0"), ("--sinkhorn-reg", "nan"), ("--project-noise", "maybe"),
    ("--init", "XI"), ("--dtype", "float16"), ("--teachers", "bogus"), ("--schemes", "bogus"),
]  # fmt: skip


@pytest.mark.parametrize(("flag", "value"), BAD_VALUES, ids=[f"{f}={v}" for f, v in BAD_VALUES])
def test_bad_value_is_a_usage_error_naming_the_flag(flag, value, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--n-values", "5", "--seeds", "1", flag, value, "--out", str(out)]
    assert_usage_error(ts.main, argv, flag, out, capsys)


@pytest.mark.skipif(ts.torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        ts.main(["--device", "cuda", "--out", str(tmp_path / "out")])
    assert e.value.code == 2 and "CUDA is not available" in capsys.readouterr().err


def test_unwritable_out_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as e:
        ts.main(["--n-values", "5", "--seeds", "1", "--out", str(tmp_path / "file" / "sub")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--out" in err and "Traceback" not in err, err


def test_presets_pass_validation():
    for preset in ts.PRESETS:
        ts.build_config(preset)


def _summary(where=None, key=None, bad=None):
    """A summary (final-snapshot rows over N = 5, 10, 50) where every claim but "DA/FA lower
    than EA" holds, with ``key`` of the rows matching ``where`` (teacher, scheme, N; None: any)
    set to ``bad``."""
    rows = []
    for tk in ts.TEACHERS:
        for sch in ts.SCHEMES:
            for n in (5, 10, 50):
                rmd = 0.1 / n if sch == "vanilla" else 1e-9
                if tk == "arbitrary" and sch == "vanilla":
                    rmd = 0.2
                risk = 0.01 if sch == "vanilla" else 0.5
                row = {"teacher": tk, "scheme": sch, "N": n, "rmd_si_mean": rmd,
                       "rmd_si_max": rmd, "test_risk_mean": risk}  # fmt: skip
                here = (tk, sch, n)
                if where and all(w in (None, x) for w, x in zip(where, here, strict=True)):
                    row[key] = bad
                rows.append(row)
    return rows


def test_the_papers_constants_are_the_specs():
    """SPEC_MEANFIELD "Teachers" and "Defaults", written out here literally, so a mistyped row,
    a dropped 0.5 or a changed default fails (the other tests only check structure: SI teacher in
    E^G, WI = arbitrary + images)."""
    rows = [[-1, 0, 0, 0.5], [0.5, 1, 0, 1], [-0.5, 0.3, 1, 0], [0, -1, -0.5, 1],
            [0.7, -0.7, 0.5, 0.7]]  # fmt: skip
    arbitrary = 0.5 * torch.tensor(rows, dtype=torch.float64)
    assert torch.equal(Teacher.paper("arbitrary").particles, arbitrary)
    # M_P z = P z Pᵀ for the swap P: [[a, b], [c, d]] -> [[d, c], [b, a]]
    images = arbitrary[:, [3, 2, 1, 0]]
    assert torch.equal(Teacher.paper("WI").particles, torch.cat([arbitrary, images]))
    # SI: coordinates 0.5 c in the basis {I/√2, P/√2}: z = (c1 I + c2 P)/√2
    c = 0.5 * torch.tensor(
        [[1, 0], [0.5, 1], [-0.5, 0.3], [0, -1], [0.7, 0.7]], dtype=torch.float64
    )
    si = torch.stack([c[:, 0], c[:, 1], c[:, 1], c[:, 0]], 1) / math.sqrt(2.0)
    assert_close(Teacher.paper("SI").particles, si, rtol=1e-15, atol=0)
    for kind, m in (("arbitrary", 5), ("WI", 10), ("SI", 5)):
        assert torch.equal(
            Teacher.paper(kind).weights, torch.full((m,), 1.0 / m, dtype=torch.float64)
        )
    cfg = ts.build_config("paper")
    assert (cfg.alpha, cfg.tau, cfg.beta, cfg.batch, cfg.sigma_pi) == (50.0, 1e-4, 1e-6, 20, 4.0)
    assert (cfg.horizon, cfg.snapshots, cfg.seeds, cfg.init) == (20.0, 5, 10, "SI")
    assert cfg.n_values == [5, 10, 50, 100, 500, 1000, 5000]
    # students: WI init iid N(0, 1/16) entries (400k draws: std within 1 % of 1/4, mean ~0)
    wi = initial_particles(4, 25_000, 4, seed=0)
    assert abs(float(wi.std()) - 0.25) < 0.0025 and abs(float(wi.mean())) < 0.0025


def test_wi_teacher_schemes_approach_the_teacher_and_each_other(claims):
    """SPEC_MEANFIELD: "WI teacher: ... all schemes approach the teacher and each other as N
    grows": both claims hold on the claims grid, and their numbers are the summary's."""
    res, _ = claims
    found = {
        c["claim"].split(" as N grows")[0]: c for c in res["claims"] if "WI teacher:" in c["claim"]
    }
    teacher = found["WI teacher: every scheme approaches the teacher"]
    other = found["WI teacher: the schemes approach each other"]
    assert teacher["holds"] and other["holds"], (teacher, other)
    assert set(teacher["value"]) == {"vanilla", "DA", "FA", "EA"}
    assert all(v["slope"] < 0 for v in teacher["value"].values())
    assert all(v["slope"] < 0 for p, v in other["value"].items() if p.startswith("vanilla-"))


def test_wi_approach_claims_can_fail():
    """The two "approach" claims fail when a scheme's risk or a pair's RMD does not fall with N
    (a pair at rounding level at every N has coincided: that holds)."""
    cfg = ts.build_config("quick", None, {"n_values": [5, 10, 50], "seeds": 1})
    summary = _summary()
    for r in summary:  # risks falling with N for every scheme
        r["test_risk_mean"] = 1.0 / r["N"]
    pairs = [{"teacher": "WI", "pair": p, "N": n, "rmd_mean": rmd}
             for n in (5, 10, 50)
             for p, rmd in (("vanilla-DA", 0.5 / n), ("DA-EA", 1e-15))]  # fmt: skip

    def holds(summary, pairs):
        found = ts.check_claims(summary, cfg, None, pairs)
        return [c["holds"] for c in found if "approach" in c["claim"]]

    assert holds(summary, pairs) == [True, True]
    flat = [dict(r, test_risk_mean=0.3) if r["scheme"] == "FA" else r for r in summary]
    assert holds(flat, pairs) == [False, True]  # FA's risk does not fall
    apart = [dict(p, rmd_mean=0.1 * p["N"]) if p["pair"] == "vanilla-DA" else p for p in pairs]
    assert holds(summary, apart) == [True, False]  # vanilla and DA drift apart
    above = [dict(p, rmd_mean=1e-3) if p["pair"] == "DA-EA" else p for p in pairs]
    assert holds(summary, above) == [True, False]  # constant, not at rounding level
    nan = [dict(p, rmd_mean=float("nan")) if p["N"] == 10 else p for p in pairs]
    assert holds(summary, nan) == [True, False]


def test_claims_do_not_hold_on_nan_or_inf():
    """``nan <= tol`` is False, but max() skips a NaN that is not first, ``inf >= 0.05`` is True
    and np.polyfit raises on NaN: every claim must fail (not hold, not crash) on such data."""
    cfg = ts.build_config("quick", None, {"n_values": [5, 10, 50], "seeds": 1})
    floor = {"arbitrary": 0.49, "WI": 0.0, "SI": 0.0}  # EA's risk 0.5: at the floor
    names = {
        "stay": "SI init: DA/FA/EA stay in E^G",
        "decrease": "WI teacher: vanilla RMD",
        "leave": "arbitrary teacher: vanilla leaves E^G",
        "floor": "EA's test risk stays at the equivariant floor",
        "lower": "DA and FA reach a lower test risk",
    }

    def holds(*poison):
        claims = ts.check_claims(_summary(*poison), cfg, floor)
        return {k: next(c["holds"] for c in claims if v in c["claim"]) for k, v in names.items()}

    assert holds() == {**dict.fromkeys(names, True), "lower": False}  # DA = EA: not lower
    nan, inf = float("nan"), float("inf")
    assert not holds((None, "DA", 10), "rmd_si_max", nan)["stay"]  # NaN after the first value
    assert not holds(("WI", "vanilla", 10), "rmd_si_mean", nan)["decrease"]  # no polyfit crash
    for bad in (nan, inf):
        assert not holds(("arbitrary", "vanilla", 10), "rmd_si_mean", bad)["leave"]
        got = holds(("arbitrary", "EA", None), "test_risk_mean", bad)
        assert not got["floor"] and not got["lower"]  # DA/FA "below" an inf EA risk


def test_resume_recomputes_unreadable_cell_files(tmp_path):
    """--resume: a truncated .npz, a non-object JSON or a truncated JSON cell is logged and
    recomputed (they used to crash with BadZipFile / TypeError), giving the same numbers."""
    cfg = ts.build_config("quick", None, {**TINY_GRID, "n_values": [5]})
    ref = ts.run(cfg, tmp_path, show_progress=False)
    jpath, npath = tmp_path / "cells" / "N5.json", tmp_path / "cells" / "N5.npz"
    good_json, good_npz = jpath.read_text(), npath.read_bytes()
    damage = [
        (npath, good_npz[:300], "cells/N5.npz unreadable: recomputing"),
        (npath, b"\x93NUMPY" + good_npz[6:], "cells/N5.npz unreadable: recomputing"),
        (jpath, b"[1]", "cells/N5.json unreadable: recomputing"),
        (jpath, good_json[:100].encode(), "cells/N5.json unreadable: recomputing"),
        (jpath, json.dumps({"N": 5}).encode(), "cells/N5.json unreadable: recomputing"),
    ]
    for path, data, message in damage:
        path.write_bytes(data)
        logs = []
        res = ts.run(cfg, tmp_path, resume=True, show_progress=False, log=logs.append)
        assert res["resumed_cells"] == 0
        assert any(m.startswith(message) for m in logs), (data[:20], logs)
        assert _metrics_only(res) == _metrics_only(ref)
    logs = []  # rewritten: loaded again
    res = ts.run(cfg, tmp_path, resume=True, show_progress=False, log=logs.append)
    assert res["resumed_cells"] == 1 and not any("unreadable" in m for m in logs), logs


def test_resume_recomputes_edited_cell_files(tmp_path):
    """--resume: cell files that parse and carry the right hash but are not the cell N = n of
    this run (another N's files copied over it; a key, a record or a snapshot value removed; a
    particle array of the wrong shape) are logged and recomputed. The copied N = 5 cell used to
    load as N = 10, so results.json lost N = 10; a missing key crashed with KeyError."""
    cfg = ts.build_config("quick", None, {**TINY_GRID, "n_values": [5, 10]})
    ref = ts.run(cfg, tmp_path, show_progress=False)
    cells = tmp_path / "cells"
    good = {p.name: p.read_bytes() for p in cells.iterdir()}
    cell10 = json.loads(good["N10.json"])

    def edited(**changes):
        return json.dumps({**cell10, **changes}).encode()

    record = dict(cell10["records"][0], test_risk=cell10["records"][0]["test_risk"][:-1])
    damage = [
        {"N10.json": good["N5.json"], "N10.npz": good["N5.npz"]},  # the N = 5 cell copied over
        {"N10.json": json.dumps({k: v for k, v in cell10.items() if k != "records"}).encode()},
        {"N10.json": edited(records=cell10["records"][1:])},
        {"N10.json": edited(records=[record, *cell10["records"][1:]])},
        {"N10.json": edited(pairwise=cell10["pairwise"][:-1])},
        {"N10.npz": good["N5.npz"]},  # particles of N = 5 under N = 10's json
    ]
    for files in damage:
        for name, data in files.items():
            (cells / name).write_bytes(data)
        logs = []
        res = ts.run(cfg, tmp_path, resume=True, show_progress=False, log=logs.append)
        assert res["resumed_cells"] == 1, logs
        assert any(m.startswith("cells/N10.json is not this run's cell N = 10") for m in logs), logs
        assert _metrics_only(res) == _metrics_only(ref)
        for name, data in good.items():
            (cells / name).write_bytes(data)


def test_claims_that_could_not_fail_now_can():
    """The claim "EA stays at the equivariant floor" held for an EA risk 100x the floor (a lower
    bound, which no equivariant model can miss): it now needs EA within EA_FLOOR_RTOL of it.
    "vanilla leaves E^G" held untrained from a WI init (which starts outside E^G): it is now
    claimed from SI init only."""
    cfg = ts.build_config("quick", None, {"n_values": [5, 10, 50], "seeds": 1})

    def claim(cfg, floor, text):
        found = [c for c in ts.check_claims(_summary(), cfg, floor) if text in c["claim"]]
        return found[0]["holds"] if found else None

    at_floor = "EA's test risk stays at the equivariant floor"
    assert claim(cfg, {"arbitrary": 0.5, "WI": 0.0, "SI": 0.0}, at_floor)  # EA risk 0.5
    for f in (0.05, 0.005):  # EA 10x and 100x the floor
        assert claim(cfg, {"arbitrary": f, "WI": 0.0, "SI": 0.0}, at_floor) is False
    leaves = "arbitrary teacher: vanilla leaves E^G"
    floor = {"arbitrary": 0.5, "WI": 0.0, "SI": 0.0}
    assert claim(cfg, floor, leaves) is True
    wi = ts.build_config("quick", None, {"n_values": [5, 10, 50], "seeds": 1, "init": "WI"})
    assert claim(wi, floor, leaves) is None
