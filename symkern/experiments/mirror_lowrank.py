"""``symkern run mirror-lowrank`` (SPEC_MIRROR E2): rotation symmetry → low rank.

M = U Wᵀ, U ∈ R^{m×k}, W ∈ R^{n×k}, trained by GD on ‖UWᵀ − A‖²_F + γ(‖U‖² + ‖W‖²). The rotation
symmetry U → UR, W → WR contains the Householder mirrors R = I − 2nnᵀ; their constraint Un = Wn = 0
lowers the rank. Closed form (nuclear-norm penalty 2γ): σ_i(UWᵀ) = max(0, σ_i(A) − γ), so the
rank is #{σ_i(A) > γ} — checked on this run's own draw of A.

Symmetry-broken variant: M = (U + C) Wᵀ with a fixed random C (m×k). No rotation leaves C fixed,
so the constraint disappears and M stays full rank (its spectrum shrinks, no σ_i reaches 0).

Gradient noise at γ = 0: entrywise label noise σΞ_t on A each step (``noise_sigmas``); the ranks
are reported (a trend, no closed form).

Every γ (and every noise level) is one model of one ``mirror_sweep`` call; training runs in chunks
of ``record_every`` steps (continuing the same Philox stream via step0) to record the rank during
training. Outputs: results.json, lowrank.csv, rank_curve.csv, fig_mirror_lowrank.png,
cells/*.json (``--resume``).
"""

from __future__ import annotations

import csv
import io
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from symkern.experiments import common
from symkern.meanfield import rng
from symkern.mirror.sweeps import closed_form_singular_values, effective_rank, train_sweep

__all__ = ["Config", "PRESETS", "main", "run"]

_f = common.config_field


@dataclass
class Config:
    """Every parameter (preset < config file < CLI)."""

    m: int = _f(20, "rows of A")
    n: int = _f(15, "columns of A")
    k: int = _f(15, "inner dimension of U Wᵀ")
    seed: int = _f(0, "Philox seed (A, C, inits)")
    gammas: list[float] = _f([0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0], "weight decays γ")
    steps: int = _f(3000, "GD steps")
    eta: float = _f(0.02, "step size")
    init_scale: float = _f(0.1, "std of the initial U, W entries")
    eps: float = _f(1e-3, "rank = #σ_i > eps")
    break_scale: float = _f(1.0, "std of the fixed symmetry-breaking C")
    noise_sigmas: list[float] = _f([0.0, 1.0, 3.0], "label-noise σ for the γ = 0 noise runs")
    noise_eta: float = _f(0.01, "step size of the noise runs")
    record_every: int = _f(250, "record the rank every K steps")
    dtype: str = _f("float64", "float64 or float32")
    backend: str = _f("auto", "mirror_sweep backend")
    figures: bool = _f(True, "write the PNG figure")


PRESETS: dict[str, dict[str, Any]] = {
    "quick": {},
    "full": {"gammas": [0.05 * i for i in range(61)], "steps": 10000, "record_every": 500},
}
_NOT_IN_HASH = {"figures", "backend"}


def draw(cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """A (m, n) and C (m, k), entries N(0, 1) / N(0, break_scale²) from Philox STREAM_INIT."""
    z = rng.normal(cfg.seed, torch.tensor([2**31, 2**31 + 1]), 0, rng.STREAM_INIT,
                   cfg.m * max(cfg.n, cfg.k))  # fmt: skip
    A = z[0, : cfg.m * cfg.n].view(cfg.m, cfg.n)
    C = cfg.break_scale * z[1, : cfg.m * cfg.k].view(cfg.m, cfg.k)
    return A, C


def _init(cfg: Config, M: int, dtype) -> dict[str, torch.Tensor]:
    mk, nk = cfg.m * cfg.k, cfg.n * cfg.k
    z = cfg.init_scale * rng.normal(cfg.seed, torch.arange(M), 0, rng.STREAM_INIT, mk + nk)
    return {"U": z[:, :mk].reshape(M, cfg.m, cfg.k).to(dtype),
            "W": z[:, mk:].reshape(M, cfg.n, cfg.k).to(dtype)}  # fmt: skip


def _train(cfg: Config, gammas, eta, noise, offset, steps_total: int, flag: str = "--eta"):
    """Chunks of record_every steps; returns final params, rank curve (S, M), steps (S,).
    FloatingPointError naming ``flag`` (the step size) when a model diverges."""
    dtype = common.torch_dtype(cfg)
    A, _ = draw(cfg)
    M = len(gammas)
    p = _init(cfg, M, dtype)
    curve, at = [], []
    t = 0
    backend = None
    while t < steps_total:
        k = min(cfg.record_every, steps_total - t)
        r = train_sweep("factorization", p, gammas, eta, k, None, cfg.seed, target=A.to(dtype),
                        noise=noise, offset=offset, step0=t, backend=cfg.backend)  # fmt: skip
        p, backend = r.params, r.backend
        t += k
        common.check_diverged(p, f"after {t} steps at step size {flag} {eta:g}; lower {flag}")
        mats = _product(p, offset)
        curve.append(effective_rank(mats, cfg.eps).tolist())
        at.append(t)
    return p, curve, at, backend


def _product(p, offset) -> torch.Tensor:
    U = p["U"] if offset is None else p["U"] + offset
    return (U @ p["W"].transpose(1, 2)).double()


def lowrank_cell(cfg: Config, broken: bool) -> dict[str, Any]:
    A, C = draw(cfg)
    dtype = common.torch_dtype(cfg)
    gammas = torch.tensor(cfg.gammas, dtype=torch.float64)
    offset = C.to(dtype) if broken else None
    p, curve, at, backend = _train(cfg, gammas, cfg.eta, 0.0, offset, cfg.steps)
    mats = _product(p, offset)
    sv = torch.linalg.svdvals(mats)
    cell = {
        "variant": "broken" if broken else "symmetric",
        "gammas": gammas.tolist(),
        "rank": effective_rank(mats, cfg.eps).tolist(),
        "singular_values": sv.tolist(),
        "rank_curve": curve,
        "rank_curve_steps": at,
        "backend": backend,
    }
    if not broken:
        cf = [closed_form_singular_values(A, float(g)) for g in gammas]
        cell["closed_form_singular_values"] = [c.tolist() for c in cf]
        cell["closed_form_rank"] = [int((c > cfg.eps).sum()) for c in cf]
        cell["max_abs_sv_err"] = [float((s - c).abs().max()) for s, c in zip(sv, cf, strict=True)]
    return cell


def noise_cell(cfg: Config) -> dict[str, Any]:
    sig = torch.tensor(cfg.noise_sigmas, dtype=torch.float64)
    p, curve, at, backend = _train(cfg, torch.zeros(len(sig)), cfg.noise_eta, sig, None,
                                   cfg.steps, "--noise-eta")  # fmt: skip
    mats = _product(p, None)
    return {
        "noise_sigmas": sig.tolist(),
        "rank": effective_rank(mats, cfg.eps).tolist(),
        "singular_values": torch.linalg.svdvals(mats).tolist(),
        "rank_curve": curve,
        "rank_curve_steps": at,
        "backend": backend,
    }


def figure(sym, brk, noise, sv_A, path: Path) -> None:
    plt = common.pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    g = sym["gammas"]
    gg = torch.linspace(0, max(g) if g else 1.0, 400)
    cf_rank = [(torch.tensor(sv_A) > x).sum().item() for x in gg]
    ax = axes[0]
    ax.plot(gg, cf_rank, "-", label="closed form #{σ_i(A) > γ}")
    ax.plot(g, sym["rank"], "o", label="U Wᵀ (symmetric)")
    ax.plot(g, brk["rank"], "s", label="(U + C) Wᵀ (broken)")
    ax.set_xlabel("weight decay γ")
    ax.set_ylabel("rank (σ_i > ε)")
    ax.legend(fontsize=8)
    ax.set_title("rotation symmetry → low rank")
    ax = axes[1]
    for i, gam in enumerate(g):
        (line,) = ax.plot(sym["singular_values"][i], "o", ms=3)
        ax.plot(sym["closed_form_singular_values"][i], "-", color=line.get_color(),
                label=f"γ={gam:g}")  # fmt: skip
    ax.set_xlabel("index i")
    ax.set_ylabel("σ_i: measured (dots), max(0, σ_i(A) − γ) (lines)")
    ax.legend(fontsize=6)
    ax = axes[2]
    for i, s in enumerate(noise["noise_sigmas"]):
        ax.plot(noise["rank_curve_steps"], [r[i] for r in noise["rank_curve"]], "o-",
                label=f"γ=0, label noise σ={s:g}")  # fmt: skip
    ax.set_xlabel("step")
    ax.set_ylabel("rank")
    ax.legend(fontsize=8)
    ax.set_title("rank during training (γ = 0)")
    common.save_figure(fig, path)


def run(
    cfg: Config, out: str | Path, *, resume: bool = False, show_progress: bool = True, log=print
) -> dict[str, Any]:
    """Run (or resume) E2 into ``out``; return the results dict (also results.json)."""
    _validate(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wall0 = time.perf_counter()
    names = ["symmetric", "broken", "noise"]

    def compute(name: str) -> dict[str, Any]:
        return noise_cell(cfg) if name == "noise" else lowrank_cell(cfg, name == "broken")

    cells = common.run_cells(out, names, compute, asdict(cfg), _NOT_IN_HASH, resume=resume,
                      desc="mirror-lowrank", show_progress=show_progress, log=log)  # fmt: skip
    sym, brk, noise = cells["symmetric"], cells["broken"], cells["noise"]
    A, _ = draw(cfg)
    sv_A = torch.linalg.svdvals(A).tolist()
    # σ_i(A) within `margin` of γ converge at rate ~2η|σ_i(A) − γ|: too slow to resolve
    margin = max(cfg.eps, 10.0 / (2.0 * cfg.eta * cfg.steps))
    resolvable = [all(abs(s - g) >= margin for s in sv_A) for g in sym["gammas"]]
    sv_err = common.nan_max(
        [e for e, ok in zip(sym["max_abs_sv_err"], resolvable, strict=True) if ok]
    )
    # a NaN spectrum has no rank (σ_i > ε is False): the rank claims also need it finite; and a
    # claim with no γ to check does not hold
    sym_finite = common.all_finite(sym["singular_values"])
    brk_finite = common.all_finite(brk["singular_values"])
    rank_ok = sym_finite and any(resolvable) and all(
        r == c for r, c, ok in zip(sym["rank"], sym["closed_form_rank"], resolvable,
                                   strict=True) if ok)  # fmt: skip
    full = min(cfg.m, cfg.n, cfg.k)
    claims = {
        "rank_matches_closed_form": {"holds": rank_ok, "resolvable_gammas": resolvable,
                                     "all_finite": sym_finite},
        "singular_values_match_closed_form": {
            "max_abs_err": sv_err, "tolerance": 1e-3, "holds": sv_err <= 1e-3},
        "broken_variant_stays_full_rank": {
            "ranks": brk["rank"], "full_rank": full, "all_finite": brk_finite,
            "holds": brk_finite and all(r == full for r in brk["rank"])},
    }  # fmt: skip
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["gamma", "rank", "closed_form_rank", "rank_broken", "max_abs_sv_err"])
    for i, g in enumerate(sym["gammas"]):
        w.writerow([repr(g), sym["rank"][i], sym["closed_form_rank"][i], brk["rank"][i],
                    repr(sym["max_abs_sv_err"][i])])  # fmt: skip
    cbuf = io.StringIO()
    cw = csv.writer(cbuf)
    cw.writerow(["run", "value", "step", "rank"])
    for name, key in (("symmetric", "gammas"), ("broken", "gammas"), ("noise", "noise_sigmas")):
        c = cells[name]
        for j, st in enumerate(c["rank_curve_steps"]):
            for i, v in enumerate(c[key]):
                cw.writerow([name, repr(v), st, c["rank_curve"][j][i]])
    if cfg.figures:
        figure(sym, brk, noise, sv_A, out / "fig_mirror_lowrank.png")
    payload = {
        "experiment": "mirror-lowrank",
        "config": asdict(cfg),
        "versions": common.versions(),
        "wall_time_s": time.perf_counter() - wall0,
        "singular_values_A": sv_A,
        "near_threshold_margin": margin,
        "cells": cells,
        "claims": claims,
    }
    common.atomic_write_json(out / "results.json", payload)
    common.atomic_write_text(out / "lowrank.csv", buf.getvalue())
    common.atomic_write_text(out / "rank_curve.csv", cbuf.getvalue())
    return payload


_RULES = {
    "m": "int >= 1",
    "n": "int >= 1",
    "k": "int >= 1",
    "seed": "seed",
    "gammas": "finite >= 0",
    "steps": "int >= 1",
    "eta": "finite > 0",
    "init_scale": "finite",
    "eps": "finite > 0",
    "break_scale": "finite",
    "noise_sigmas": "finite >= 0",
    "noise_eta": "finite > 0",
    "record_every": "int >= 1",
}


def _validate(cfg: Config) -> None:
    """Every field checked before any work (ValueError naming the flag; a usage error on the
    command line)."""
    common.check_fields(cfg, _RULES)
    if cfg.k < min(cfg.m, cfg.n):
        raise ValueError(
            f"--k must be >= min(--m, --n) = {min(cfg.m, cfg.n)} (the closed form needs it), "
            f"got {cfg.k}"
        )
    common.torch_dtype(cfg)
    common.check_backend(cfg.backend)


def main(argv: list[str] | None = None) -> int:
    args, cfg = common.parse_experiment_args(
        argv,
        prog="symkern run mirror-lowrank",
        description="E2: rotation symmetry -> low rank.",
        config_cls=Config,
        presets=PRESETS,
        default_out="runs/mirror-lowrank",
        validate=_validate,
    )
    res = run(cfg, args.out, resume=args.resume, show_progress=not args.no_progress)
    c = res["cells"]
    rows = [[g, r, cr, b, e] for g, r, cr, b, e in zip(
        c["symmetric"]["gammas"], c["symmetric"]["rank"], c["symmetric"]["closed_form_rank"],
        c["broken"]["rank"], c["symmetric"]["max_abs_sv_err"], strict=True)]  # fmt: skip
    print(common.format_table(rows, ["gamma", "rank", "closed form", "broken", "max |Δσ|"]))
    print("noise (γ = 0): " + ", ".join(
        f"σ={s:g}: rank {r}" for s, r in zip(c["noise"]["noise_sigmas"], c["noise"]["rank"],
                                              strict=True)))  # fmt: skip
    common.print_claims(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
