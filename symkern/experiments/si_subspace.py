"""``symkern run si-subspace``: discover the strongly invariant subspace E^G by free training.

The heuristic of Maass & Fontbona (SPEC_MEANFIELD.md, partly inferred). Data come from an
equivariant (WI) teacher; the group is never given to the learner, only used to score the answer:

    E_0 = {0}  (or the 1-D seed span{vec(I)}, ``--start identity``)
    for j = 0, 1, ...:
        initialise N particles on E_j (iid N(0, 1/16) entries projected by P_j = P_{E_j});
        train freely (vanilla particle SGD, N·T steps), Langevin noise projected on E_j;
        d_j = RMD(ν_T, P_j#ν_T)                       (closed form, metrics.rmd_to_projection)
        if d_j ≤ threshold: return E_j
        escaped components Y = (I − P_j) θ_i (all runs pooled);
        E_{j+1} = E_j ⊕ span of the right singular vectors v_k of Y whose share of the escape,
                  r_k = s_k / sqrt(Σ_i ‖θ_i‖² + ‖P_j θ_i‖²)   (so that d_j² = Σ_k r_k²),
                  is ≥ ``sv_tol`` (at least the top one).
    after ``max_iter`` iterations without d_j ≤ threshold: return the last E_j (not converged).

Each iteration reports dim E_j, d_j, the singular spectrum of the escape and the principal
angles between E_j and the true E^G. Instances: C2 on 2×2 matrix units and S3 on 3×3 matrix
units (dim E^G = 2 for both), each with an equivariant teacher: ``--teacher SI`` (default:
the paper's SI teacher for C2; for S3 random particles projected onto E^G) or ``--teacher WI``
(the paper's WI teacher; for S3 random particles symmetrised over S3 — equivariant but not SI:
vanilla training then *leaves* E^G at finite N: its iterations in results.json show it).

Noise projection. The noise must be projected on E_j, not on E^G: the engine call passes
``projector=P_j`` with ``project_noise=True`` (the learner is never given the group), so the
whole run is one engine call and the noise is the engine's own stream (STREAM_NOISE, rng.normal4).

Usage::

    symkern run si-subspace                      # quick preset: C2 and S3
    symkern run si-subspace --groups s3 --n-particles 100 --threshold 0.02
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from symkern.experiments import common
from symkern.groups import c2_swap, symmetric
from symkern.meanfield import metrics, rng
from symkern.meanfield.teachers import Teacher
from symkern.meanfield.trainer import initial_particles
from symkern.meanfield.units import MatrixUnit
from symkern.ops.particles import group_matrices, particle_steps

__all__ = ["Config", "PRESETS", "discover", "main", "principal_angles", "run"]

GROUPS = ("c2", "s3")


_f = common.config_field  # one Config field with its --help text


@dataclass
class Config:
    """Every parameter (preset < config file < CLI)."""

    groups: list[str] = _f(list(GROUPS), "instances: c2 (2x2 matrix units), s3 (3x3)")
    n_particles: int = _f(100, "particles N per run")
    runs: int = _f(2, "independent runs per iteration (escapes pooled)")
    horizon: float = _f(20.0, "mean-field time T per iteration (round(N·T) steps)")
    seed: int = _f(0, "Philox seed")
    alpha: float = _f(50.0, "step size α")
    tau: float = _f(1e-4, "weight decay τ")
    beta: float = _f(1e-6, "temperature β (noise projected on E_j)")
    batch: int = _f(200, "batch size B (large: the heuristic reads the population gradient)")
    sigma_pi: float = _f(4.0, "input scale σ_π")
    threshold: float = _f(0.05, "stop when RMD(ν_T, P_j#ν_T) <= threshold")
    sv_tol: float | None = _f(
        None, "add escape directions with share r_k >= sv_tol (default: the threshold)"
    )
    max_iter: int = _f(6, "maximum number of iterations")
    angle_tol: float = _f(5.0, "E^G counts as recovered when every principal angle < this (deg)")
    start: str = _f("zero", "E_0: zero ({0}) or identity (span{vec(I)})")
    teacher: str = _f("SI", "equivariant teacher: SI (particles in E^G) or WI (symmetrised)")
    teacher_particles: int = _f(5, "S3 teacher: random particles before symmetrisation")
    teacher_seed: int = _f(1, "S3 teacher: Philox seed of its particles")
    dtype: str = _f("float64", "float64 or float32")
    backend: str = _f("auto", "particle engine backend")
    figures: bool = _f(True, "write the PNG figure")


PRESETS: dict[str, dict[str, Any]] = {
    # N = 300: at N = 100 the S3 instance's finite-N escape from E^G (share ~0.12) exceeds the
    # threshold and the answer is a 4-D space containing E^G; at N = 300 both C2 and S3 recover E^G
    "quick": {"n_particles": 300},
    "paper": {"n_particles": 500, "runs": 4},
}


_TEACHER_RUN = 2**31  # Philox run id of the S3 teacher's particles (STREAM_INIT)


def _instance(name: str, cfg: Config):
    """(unit, group rep, teacher, P_{E^G}) of an instance."""
    if cfg.teacher not in ("SI", "WI"):
        raise ValueError(f"teacher must be SI or WI, got {cfg.teacher!r}")
    if name == "c2":
        unit, group = MatrixUnit(2, 2), c2_swap()
        teacher = Teacher.paper(cfg.teacher)
    elif name == "s3":
        unit, group = MatrixUnit(3, 3), symmetric(3)
        _, _, m_z, proj = group_matrices(unit, group, torch.float64, torch.device("cpu"))
        z = rng.normal(  # run id 2^31: not a student's (0..runs-1), even when seeds coincide
            cfg.teacher_seed,
            torch.tensor([_TEACHER_RUN]),
            0,
            rng.STREAM_INIT,
            cfg.teacher_particles * unit.D,
        )
        base = 0.5 * z.view(cfg.teacher_particles, unit.D)
        if cfg.teacher == "SI":  # the random particles projected onto E^G
            teacher = Teacher(unit, base @ proj.T, name="s3-SI")
        else:  # the random particles and all their images: an equivariant, non-SI teacher
            teacher = Teacher(unit, base, name="s3-random").symmetrized(m_z, name="s3-WI")
    else:
        raise ValueError(f"unknown instance {name!r}; choose from {list(GROUPS)}")
    _, _, m_z, proj = group_matrices(unit, group, torch.float64, torch.device("cpu"))
    return unit, group, teacher, proj


def _basis_of(proj: torch.Tensor | np.ndarray) -> np.ndarray:
    p = proj.double().numpy() if isinstance(proj, torch.Tensor) else np.asarray(proj)
    w, v = np.linalg.eigh(0.5 * (p + p.T))
    return v[:, w > 0.5]


def principal_angles(q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """Principal angles (degrees, ascending) between span(q1) and span(q2), both orthonormal
    (D, k1), (D, k2): arccos of the singular values of q1ᵀ q2 (min(k1, k2) angles)."""
    if q1.shape[1] == 0 or q2.shape[1] == 0:
        return np.zeros(0)
    s = np.linalg.svd(q1.T @ q2, compute_uv=False)
    return np.degrees(np.arccos(np.clip(s, -1.0, 1.0)))  # s descending → angles ascending


def train_on_subspace(
    theta: torch.Tensor,
    unit,
    teacher: Teacher,
    proj_j: torch.Tensor,
    cfg: Config,
    run_ids: torch.Tensor,
    steps: int,
    used_backends: set[str] | None = None,
) -> torch.Tensor:
    """Vanilla particle SGD for ``steps`` steps with Langevin noise projected by ``proj_j``.

    One engine call for all steps: ``projector=proj_j`` replaces P_{E^G} for the projected noise
    (the learner is never given the group).
    """
    with common.torch_threads(1):
        out = particle_steps(
            theta,
            unit,
            teacher=teacher.particles.to(theta.dtype),
            teacher_weights=teacher.weights.to(theta.dtype),
            group=None,
            scheme="vanilla",
            alpha=cfg.alpha,
            tau=cfg.tau,
            beta=cfg.beta,
            batch=cfg.batch,
            sigma_pi=cfg.sigma_pi,
            seed=cfg.seed,
            run_ids=run_ids,
            steps=steps,
            project_noise=True,
            projector=proj_j.to(torch.float64),
            backend=cfg.backend,
        )
    if used_backends is not None:
        used_backends.add(out.backend)
    return out.theta


def discover(
    name: str, cfg: Config, on_iter=None, used_backends: set[str] | None = None
) -> dict[str, Any]:
    """Run the heuristic on one instance; returns its iterations and the answer."""
    unit, _, teacher, proj_true = _instance(name, cfg)
    D = unit.D
    dtype = getattr(torch, cfg.dtype)
    e_true = _basis_of(proj_true)
    if cfg.start == "zero":
        q = np.zeros((D, 0))
    elif cfg.start == "identity":
        k = int(round(math.sqrt(D)))
        q = np.eye(k).reshape(D, 1) / math.sqrt(k)
    else:
        raise ValueError(f"start must be 'zero' or 'identity', got {cfg.start!r}")
    steps = max(1, round(cfg.n_particles * cfg.horizon))
    iterations = []
    converged = False
    for j in range(cfg.max_iter):
        t0 = time.perf_counter()
        pj = torch.from_numpy(q @ q.T)
        # fresh random streams per iteration: run ids j·R .. j·R + R − 1
        run_ids = torch.arange(j * cfg.runs, (j + 1) * cfg.runs, dtype=torch.int64)
        theta0 = initial_particles(
            cfg.runs, cfg.n_particles, D, cfg.seed, proj=pj, run_ids=run_ids, dtype=dtype
        )
        theta = train_on_subspace(
            theta0, unit, teacher, pj, cfg, run_ids, steps, used_backends
        ).double()
        if not torch.isfinite(theta).all():
            raise FloatingPointError(f"{name}: particles diverged at iteration {j}")
        d_runs = [metrics.rmd_to_projection(theta[r], pj).value for r in range(cfg.runs)]
        d = float(np.mean(d_runs))
        th = theta.reshape(-1, D).numpy()
        esc = th - th @ q @ q.T
        m2 = float((th * th).sum() + ((th @ q @ q.T) ** 2).sum())
        _, s, vt = np.linalg.svd(esc, full_matrices=False)
        share = s / math.sqrt(m2) if m2 > 0 else np.zeros_like(s)
        ang = principal_angles(q, e_true)
        it = {
            "iteration": j,
            "dim": int(q.shape[1]),
            "rmd": d,
            "rmd_runs": d_runs,
            "escape_shares": share.tolist(),
            "angles_to_EG_deg": ang.tolist(),
            "in_EG": float(np.linalg.norm(q - e_true @ (e_true.T @ q))) if q.shape[1] else 0.0,
            "wall_s": 0.0,
        }
        if d <= cfg.threshold:
            converged = True
        elif j + 1 < cfg.max_iter:  # after the last iteration E_j stays the one measured
            tol = cfg.threshold if cfg.sv_tol is None else cfg.sv_tol
            keep = [k for k in range(len(s)) if share[k] >= tol] or [0]
            new = vt[keep].T
            q_new, _ = np.linalg.qr(np.concatenate([q, new - q @ (q.T @ new)], axis=1))
            q = q_new[:, : min(D, q.shape[1] + len(keep))]  # E_j ⊕ the new directions, ≤ D
            it["added"] = len(keep)
        it["wall_s"] = time.perf_counter() - t0
        iterations.append(it)
        if on_iter is not None:
            on_iter(it)
        if converged:
            break
    final_angles = principal_angles(q, e_true)
    return {
        "instance": name,
        "unit": repr(unit),
        "teacher": teacher.name,
        "teacher_atoms": int(teacher.particles.shape[0]),
        "dim_EG": int(e_true.shape[1]),
        "converged": converged,
        "dim": int(q.shape[1]),
        "basis": q.tolist(),
        "principal_angles_deg": final_angles.tolist(),
        "max_angle_deg": float(final_angles.max()) if final_angles.size else float("nan"),
        "recovered": bool(
            converged
            and q.shape[1] == e_true.shape[1]
            and final_angles.size
            and final_angles.max() < cfg.angle_tol
        ),
        "iterations": iterations,
        "steps_per_iteration": steps,
    }


def figure(results: list[dict[str, Any]], cfg: Config, path: Path) -> None:
    plt = common.pyplot()

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.2), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        its = res["iterations"]
        j = [it["iteration"] for it in its]
        d = [max(it["rmd"], 1e-17) for it in its]
        ax.semilogy(j, d, marker="o", label="RMD(ν_T, P_{E_j}#ν_T)")
        ax.axhline(cfg.threshold, color="k", ls="--", lw=1, label=f"threshold {cfg.threshold:g}")
        for it, y in zip(its, d, strict=True):
            ang = it["angles_to_EG_deg"]
            txt = f"dim {it['dim']}" + (f"\nmax∠ {max(ang):.2g}°" if ang else "")
            ax.annotate(
                txt, (it["iteration"], y), textcoords="offset points", xytext=(6, 6), fontsize=8
            )
        ax.set_xlabel("iteration j")
        ax.set_ylabel("RMD to the current subspace E_j")
        verdict = "recovered E^G" if res["recovered"] else "did NOT recover E^G"
        ax.set_title(
            f"{res['instance'].upper()} on {res['unit']}: {verdict}\n"
            f"(dim E^G = {res['dim_EG']}, final max angle "
            f"{res['max_angle_deg']:.2g}°)",
            fontsize=9,
        )
        ax.set_xticks(j)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"SI-subspace discovery: N={cfg.n_particles}, {cfg.runs} runs, T={cfg.horizon:g}, "
        f"α={cfg.alpha:g}, β={cfg.beta:g}, sv_tol="
        f"{cfg.threshold if cfg.sv_tol is None else cfg.sv_tol:g}",
        fontsize=10,
    )
    common.save_figure(fig, path)


def run(cfg: Config, out: str | Path, *, show_progress: bool = True, log=print) -> dict[str, Any]:
    """Run every instance; write results.json, iterations.csv and the figure into ``out``."""
    _validate(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wall0 = time.perf_counter()
    bar = common.progress(
        len(cfg.groups) * cfg.max_iter, "si-subspace", enabled=show_progress, unit="iteration"
    )
    results = []
    used: set[str] = set()
    for name in cfg.groups:
        results.append(discover(name, cfg, on_iter=lambda it: bar.update(1), used_backends=used))
    bar.close()
    rows = [
        [
            r["instance"],
            it["iteration"],
            it["dim"],
            it["rmd"],
            max(it["angles_to_EG_deg"]) if it["angles_to_EG_deg"] else float("nan"),
            ", ".join(f"{x:.3g}" for x in it["escape_shares"][:4]),
        ]
        for r in results
        for it in r["iterations"]
    ]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["instance", "iteration", "dim", "rmd", "max_angle_to_EG_deg", "escape_shares"])
    for r in results:
        for it in r["iterations"]:
            w.writerow(
                [
                    r["instance"],
                    it["iteration"],
                    it["dim"],
                    repr(it["rmd"]),
                    repr(max(it["angles_to_EG_deg"])) if it["angles_to_EG_deg"] else "",
                    " ".join(repr(x) for x in it["escape_shares"]),
                ]
            )
    if cfg.figures:
        figure(results, cfg, out / "fig_si_subspace.png")
    payload = {
        "experiment": "si-subspace",
        "config": asdict(cfg),
        "versions": common.versions(),
        "backend": sorted(used),
        "wall_time_s": time.perf_counter() - wall0,
        "noise_projection": "engine noise (STREAM_NOISE) projected by projector=P_j",
        "instances": results,
        "table": rows,
    }
    common.atomic_write_json(out / "results.json", payload)
    common.atomic_write_text(out / "iterations.csv", buf.getvalue())
    return payload


def build_config(
    preset: str = "quick", file_values: dict | None = None, cli_values: dict | None = None
) -> Config:
    """The effective :class:`Config` (preset < config file < CLI values), validated."""
    cfg = common.build_config(Config, PRESETS, preset, file_values, cli_values or {})
    _validate(cfg)
    return cfg


_RULES = {
    "n_particles": "int >= 1",
    "runs": "int >= 1",
    "horizon": "finite > 0",
    "seed": "seed",
    "alpha": "finite > 0",
    "tau": "finite >= 0",
    "beta": "finite >= 0",
    "batch": "int >= 1",
    "sigma_pi": "finite > 0",
    "threshold": "finite > 0",
    "sv_tol": "finite > 0",
    "max_iter": "int >= 1",
    "angle_tol": "finite > 0",
    "teacher_particles": "int >= 1",
    "teacher_seed": "seed",
}


def _validate(cfg: Config) -> None:
    """Every field checked before any work (ValueError naming the flag; a usage error on the
    command line)."""
    bad = [g for g in cfg.groups if g not in GROUPS]
    if bad or not cfg.groups:
        raise ValueError(f"--groups must be a non-empty subset of {list(GROUPS)}, got {cfg.groups}")
    common.check_fields(cfg, _RULES)
    # RMD(ν, P#ν) ≤ 1 and every escape share ≤ 1 (W₂² = Σ‖(I − P)θ‖² ≤ M₂(ν)): a threshold
    # ≥ 1 stopped at once with dim 0 "converged", an sv_tol > 1 could add nothing
    for name, value in (("threshold", cfg.threshold), ("sv_tol", cfg.sv_tol)):
        if value is not None and value >= 1:
            raise ValueError(f"--{name.replace('_', '-')} must be < 1 (RMD and escape shares "
                             f"are at most 1), got {value:g}")  # fmt: skip
    if cfg.start not in ("zero", "identity"):
        raise ValueError(f"--start must be zero or identity, got {cfg.start!r}")
    if cfg.teacher not in ("SI", "WI"):
        raise ValueError(f"--teacher must be SI or WI, got {cfg.teacher!r}")
    common.torch_dtype(cfg)
    common.check_backend(cfg.backend)
    steps = round(cfg.n_particles * cfg.horizon)  # per iteration, one engine call from step 0
    if steps > common.PHILOX_STEP_LIMIT:
        raise ValueError(
            f"--horizon {cfg.horizon:g} x --n-particles {cfg.n_particles} = {steps} steps per "
            "iteration; at most 2^32 are possible"
        )


def main(argv: list[str] | None = None) -> int:
    args, cfg = common.parse_experiment_args(
        argv,
        prog="symkern run si-subspace",
        description="Discover E^G by iterated free training.",
        config_cls=Config,
        presets=PRESETS,
        default_out="runs/si-subspace",
        validate=_validate,
        resume=False,
    )
    res = run(cfg, args.out, show_progress=not args.no_progress)
    print()
    print(
        common.format_table(
            res["table"], ["instance", "iter", "dim E_j", "RMD", "max angle°", "top escape shares"]
        )
    )
    print()
    for r in res["instances"]:
        ang = ", ".join(f"{a:.3g}" for a in r["principal_angles_deg"])
        print(
            f"{r['instance']}: dim {r['dim']} (E^G: {r['dim_EG']}), converged={r['converged']}, "
            f"principal angles to E^G [{ang}] deg -> "
            f"{'recovered' if r['recovered'] else 'NOT recovered'}"
        )
    print(
        f"backend: {', '.join(res['backend'])}; wall time {res['wall_time_s']:.1f} s; "
        f"results in {Path(args.out) / 'results.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
