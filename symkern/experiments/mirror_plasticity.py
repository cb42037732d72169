"""``symkern run mirror-plasticity`` (SPEC_MIRROR "Loss of plasticity").

Task A with a large weight decay γ_A (or large gradient noise), then task B — a new target, γ = 0
— continuing from task A's parameters (``step0`` continues the Philox stream). Theorem 1(1): at
Oᵀθ = 0 exactly, Oᵀ∇ℓ = 0 for every loss, so gradient descent on task B never leaves the
constraint task A put it on. In floating point task A only brings θ geometrically close to the
constraint, so "stuck" is a finite-horizon statement: this experiment measures how long task B
would need, instead of assuming forever.

**Rescaling model** θ = u ⊙ w, population loss ‖u⊙w − β‖² (exact GD), task A: β_A, decay γ_A per
model; task B: β_B, γ = 0 (its optimum θ = β_B has no zero coordinate). Measured along both
tasks: the collapsed fraction |u_i w_i| < ε. Each collapsed coordinate at the end of task B is one
of

* *exact zero*: u_i = w_i = 0 (the sign mirror's constraint, exactly; never leaves);
* *sign-trapped*: u_i = −sign(β_B,i) w_i ≠ 0 bit for bit. The loss ℓ(u w) + γ(u² + w²) is also
  symmetric under the mirrors (u, w) → (w, u) and (u, w) → (−w, −u), with constraints u = ±w.
  Weight decay balances |u_i| = |w_i| during task A, to the last bit, with u_i = sign(β_A,i) w_i;
  where task B flips the sign, θ_i = u_i w_i = −sign(β_B,i) u_i² cannot cross zero, so GD on task
  B drives it to 0 and it stays there: a permanent trap (this holds for coordinates that task A
  did *not* collapse too; it is counted when B collapses them);
* *escaping*: near 0, growing on task B at the linearised rate (u, w) ← (u + 2ηβ w, w + 2ηβ u),
  i.e. |u_i w_i| ∝ (1 + 2η|β_B,i|)^{2t}. Its rate is measured over the last record interval and
  compared with 2 ln(1 + 2η|β_B,i|); the steps it still needs to reach ε are extrapolated;
* *not growing*: neither of the above, e.g. |u_i|, |w_i| at the bottom of the subnormal range,
  where one step's relative growth rounds away (a floating-point floor, reported as a count).

A noise variant (``noise_sigma`` > 0): task A at γ = 0 with SGD, batch ``noise_batch``, label
noise σ and step sizes ``noise_etas`` (dimension ``noise_d``), then the same GD task B.

**Factorization** M = (U + C) Wᵀ, ‖M − A‖²_F + γ(‖U‖² + ‖W‖²), task A: A_A with γ_A, task B: A_B
with γ = 0 (its optimum is full rank). Symmetric variant C = 0: task A's rank is
#{σ_i(A_A) > γ_A}; broken variant: a fixed random C (the ``offset`` of train_sweep) removes the
rotation mirror, so the rank never collapses and task B starts from a full-rank point. The
rescaling model has no symmetry-breaking argument in train_sweep (whose signature is fixed), so
"a fixed random bias recovers" is shown on the factorization only. Measured: the rank (σ_i > ε)
along both tasks, the collapsed singular values at the end of task A, and the first task-B step
at which the symmetric variant is full rank again (or, if it is not within task B, an
extrapolation from the growth rate of the largest σ_i below ε). Unlike u_i, w_i, the collapsed
direction Un of the factorization mixes all entries of U, so rounding (~1e-16 ‖U‖ per step) keeps
it off exact zero and task B regrows it at rate ~2ησ(residual): the symmetric factorization's loss
of plasticity is a plateau of finite length.

Measured with the quick preset (d = 200, η = 0.05, 4000 + 4000 steps; 12×10 factorization,
η = 0.02, 3000 + 3000 steps; torch and C++ backends agree up to rounding): at γ_A = 0.5 / 1 / 2
task A collapses 78 / 136 / 189 of 200 coordinates and 53 / 74 / 88 % of them are still collapsed
after task B; ~70–91 collapsed coordinates per model are sign-trapped, none exactly zero; the
escaping ones grow at the linearised rate (median relative error ~1e-15) and would need a median
~4800 (max ~2·10⁵) more steps of task B. γ_A = 0 learns task B (0 collapsed). The symmetric
factorization collapses to rank 9 / 7 / 5 at γ_A = 1 / 2 / 3 (collapsed σ_i ~4e-16 ‖·‖, the
rounding floor), keeps that rank at the first task-B record and is full rank again after
700–900 task-B steps; the broken variant is full rank throughout (its task-B loss converges
more slowly, ~1e-6 against ~1e-29 after 3000 steps: the offset C worsens the conditioning).

Claims (computed from the data; each can fail): at the largest γ_A most (≥ half) of the
coordinates collapsed by task A are still collapsed after task B, and that fraction does not
decrease as γ_A grows (at small γ_A it is ~½: the sign-trapped half stays, the barely decayed
rest escapes within task B); the exact traps (exact zero, sign-trapped) at the end of task A are all
still on their constraint after task B; escaping coordinates grow at the linearised rate; without
decay (γ_A = 0) task B is learned (no more collapsed coordinates than β_B itself has); the
symmetric factorization's rank collapse carries into task B; the broken factorization is full
rank throughout; the symmetric factorization regrows its rank within task B (finite horizon).

Outputs in ``--out``: results.json, plasticity.csv (curves), fig_mirror_plasticity.png,
cells/*.json (``--resume``).
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
from symkern.meanfield import rng
from symkern.mirror.sweeps import effective_rank, train_sweep

__all__ = ["Config", "PRESETS", "classify", "main", "run"]

_f = common.config_field


@dataclass
class Config:
    """Every parameter (preset < config file < CLI)."""

    seed: int = _f(0, "Philox seed (targets, inits, data)")
    d: int = _f(200, "rescaling: coordinates")
    gammas_a: list[float] = _f([0.0, 0.5, 1.0, 2.0], "rescaling: task-A weight decays γ_A")
    eta: float = _f(0.05, "rescaling: GD step size (both tasks)")
    steps_a: int = _f(4000, "rescaling: task-A steps")
    steps_b: int = _f(4000, "rescaling: task-B steps")
    record_every: int = _f(250, "rescaling: record every K steps")
    init_scale: float = _f(0.1, "rescaling: std of the initial u, w")
    eps: float = _f(1e-3, "collapsed: |u_i w_i| < eps; rank: σ_i > eps")
    noise_sigma: float = _f(4.0, "noise variant: task-A label noise σ (0: skip the variant)")
    noise_d: int = _f(20, "noise variant: coordinates")
    noise_etas: list[float] = _f([0.005, 0.01], "noise variant: task-A SGD step sizes")
    noise_batch: int = _f(1, "noise variant: task-A batch size")
    m: int = _f(12, "factorization: rows")
    n: int = _f(10, "factorization: columns")
    k: int = _f(10, "factorization: inner dimension")
    f_gammas_a: list[float] = _f([0.0, 1.0, 2.0, 3.0], "factorization: task-A decays γ_A")
    f_eta: float = _f(0.02, "factorization: GD step size")
    f_steps_a: int = _f(3000, "factorization: task-A steps")
    f_steps_b: int = _f(3000, "factorization: task-B steps")
    f_record_every: int = _f(100, "factorization: record every K steps")
    f_init_scale: float = _f(0.1, "factorization: std of the initial U, W")
    break_scale: float = _f(1.0, "factorization: std of the fixed symmetry-breaking C")
    dtype: str = _f("float64", "float64 or float32")
    backend: str = _f("auto", "mirror_sweep backend")
    threads: int = _f(1, "torch threads (1 is fastest for these small models)")
    figures: bool = _f(True, "write the PNG figure")


PRESETS: dict[str, dict[str, Any]] = {
    # quick: measured 12 s with the torch reference, 6 s with the C++ kernel (2 shared cores,
    # load ~5): population GD and full-batch factorization draw no random numbers
    "quick": {},
    # full: larger models, finer γ_A grids, longer tasks
    "full": {
        "d": 1000,
        "gammas_a": [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0],
        "steps_a": 10000,
        "steps_b": 10000,
        "record_every": 500,
        "noise_etas": [0.0025, 0.005, 0.01, 0.02],
        "m": 30,
        "n": 20,
        "k": 20,
        "f_gammas_a": [0.0, 1.0, 2.0, 3.0, 4.0, 6.0],
        "f_steps_a": 6000,
        "f_steps_b": 6000,
        "f_record_every": 200,
    },
}
_NOT_IN_HASH = {"figures", "backend", "threads"}
_RUN = 2**31  # Philox run ids of the targets (STREAM_INIT); the inits use run 0


def _draw(cfg: Config, run: int, n: int) -> torch.Tensor:
    return rng.normal(cfg.seed, torch.tensor([_RUN + run]), 0, rng.STREAM_INIT, n)[0]


def _chunked(model, p, gam, eta, steps, batch, target, noise, offset, step0, every, cfg, record,
             flag):  # fmt: skip
    """Train ``steps`` steps in chunks of ``every`` (continuing the Philox stream through step0);
    ``record(absolute_step, params, last_loss)`` after each chunk. Returns (params, backend).
    FloatingPointError naming ``flag`` (the step size) when a model diverges."""
    t, backend = 0, None
    while t < steps:
        k = min(every, steps - t)
        r = train_sweep(model, p, gam, eta, k, batch, cfg.seed, target=target, noise=noise,
                        offset=offset, step0=step0 + t, record_every=k,
                        backend=cfg.backend)  # fmt: skip
        p, backend = r.params, r.backend
        t += k
        common.check_diverged(p, f"{model} model at step {step0 + t}; lower {flag}")
        record(step0 + t, p, r.losses[:, -1])
    return p, backend


# --- rescaling ----------------------------------------------------------------------------------


def _log_abs_theta(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """ln|u_i w_i| as ln|u_i| + ln|w_i| in float64 (the product itself underflows)."""
    return torch.log(u.double().abs()) + torch.log(w.double().abs())


def classify(u, w, beta_b, log_prev, eps: float, eta: float, interval: int) -> dict[str, Any]:
    """Classify the collapsed coordinates (|u_i w_i| < eps) of each model (rows of u, w (M, d))
    at the end of task B: exact zero, sign-trapped (u_i = −sign(β_B,i) w_i ≠ 0 bit for bit),
    escaping (ln|u_i w_i| grew over the last ``interval`` steps: log_prev → now) or not growing.
    For the escaping ones: measured rate vs the linearised 2 ln(1 + 2η|β_B,i|) per step, and
    the steps still needed to reach eps."""
    col = (u * w).abs() < eps
    exact = (u == 0) & (w == 0)
    trapped = (u == -torch.sign(beta_b) * w) & ~exact
    log_now = _log_abs_theta(u, w)
    slope = (log_now - log_prev) / interval
    growing = col & ~exact & ~trapped & (slope > 0)
    pred = 2.0 * torch.log1p(2.0 * eta * beta_b.double().abs()).expand_as(slope)
    rel = ((slope - pred) / pred)[growing].abs()
    need = ((math.log(eps) - log_now) / slope)[growing]
    return {
        "collapsed": col.sum(1).tolist(),
        "exact_zero": (col & exact).sum(1).tolist(),
        "sign_trapped": (col & trapped).sum(1).tolist(),
        "escaping": growing.sum(1).tolist(),
        "not_growing": (col & ~exact & ~trapped & ~(slope > 0)).sum(1).tolist(),
        "rate_rel_err_median": float(rel.median()) if rel.numel() else float("nan"),
        "rate_rel_err_within_1pct": float((rel <= 0.01).double().mean()) if rel.numel() else 0.0,
        "escape_steps_needed": {
            "min": float(need.min()) if need.numel() else 0.0,
            "median": float(need.median()) if need.numel() else 0.0,
            "max": float(need.max()) if need.numel() else 0.0,
        },
    }


def rescaling_cell(cfg: Config, noise: bool) -> dict[str, Any]:
    """Task A (decay γ_A, or label-noise SGD at γ = 0) then task B (γ = 0) for the u ⊙ w model."""
    dtype = common.torch_dtype(cfg)
    d = cfg.noise_d if noise else cfg.d
    beta_a, beta_b = _draw(cfg, 0, d), _draw(cfg, 1, d)
    eta_a: float | torch.Tensor
    gam_a: float | torch.Tensor
    if noise:
        values, batch_a, sigma_a, gam_a = cfg.noise_etas, cfg.noise_batch, cfg.noise_sigma, 0.0
        eta_a = torch.tensor(cfg.noise_etas, dtype=torch.float64)
    else:
        values, eta_a, batch_a, sigma_a = cfg.gammas_a, cfg.eta, None, 0.0
        gam_a = torch.tensor(cfg.gammas_a, dtype=torch.float64)
    M = len(values)
    # every model starts from the same (u, w): the grid varies task A only
    z = cfg.init_scale * rng.normal(cfg.seed, torch.zeros(M, dtype=torch.int64), 0,
                                    rng.STREAM_INIT, 2 * d)  # fmt: skip
    p = {"u": z[:, :d].to(dtype), "w": z[:, d:].to(dtype)}
    sb = torch.sign(beta_b).to(dtype)
    curve: dict[str, list] = {"step": [], "collapsed": [], "exact_zero": [], "sign_trapped": [],
                              "loss": []}  # fmt: skip
    last_logs: list[torch.Tensor] = []

    def record(step, q, loss):
        u, w = q["u"], q["w"]
        curve["step"].append(step)
        curve["collapsed"].append(((u * w).abs() < cfg.eps).double().mean(1).tolist())
        curve["exact_zero"].append(((u == 0) & (w == 0)).double().mean(1).tolist())
        curve["sign_trapped"].append(((u == -sb * w) & (u != 0)).double().mean(1).tolist())
        curve["loss"].append(loss.tolist())
        last_logs[:] = [*last_logs[-1:], _log_abs_theta(u, w)]

    p, backend = _chunked("rescaling", p, gam_a, eta_a, cfg.steps_a, batch_a, beta_a.to(dtype),
                          sigma_a, None, 0, cfg.record_every, cfg, record,
                          "--noise-etas" if noise else "--eta")  # fmt: skip
    u, w = p["u"], p["w"]
    col_a = (u * w).abs() < cfg.eps
    exact_a = (u == 0) & (w == 0)
    trap_a = (u == -sb * w) & ~exact_a
    floor_a = torch.minimum(u.double().abs(), w.double().abs()).min(1)[0]
    p, _ = _chunked("rescaling", p, 0.0, cfg.eta, cfg.steps_b, None, beta_b.to(dtype), 0.0, None,
                    cfg.steps_a, cfg.record_every, cfg, record, "--eta")  # fmt: skip
    u, w = p["u"], p["w"]
    col_b = (u * w).abs() < cfg.eps
    interval = curve["step"][-1] - curve["step"][-2]
    cls = classify(u, w, beta_b.to(dtype), last_logs[0], cfg.eps, cfg.eta, interval)
    # exact traps of task A: still exactly on the same constraint, and collapsed, after task B
    kept = ((exact_a & (u == 0) & (w == 0)) | (trap_a & (u == -sb * w) & col_b)) | ~(
        exact_a | trap_a
    )
    n_col_a = col_a.sum(1)
    return {
        "variant": "noise" if noise else "decay",
        "d": d,
        "values": list(values),
        "task_a": {
            "gamma": gam_a.tolist() if torch.is_tensor(gam_a) else [gam_a] * M,
            "eta": eta_a.tolist() if torch.is_tensor(eta_a) else [eta_a] * M,
            "batch": batch_a,
            "noise": sigma_a,
        },  # fmt: skip
        "switch_step": cfg.steps_a,
        "curve": curve,
        "collapsed_a": n_col_a.tolist(),
        "exact_zero_a": exact_a.sum(1).tolist(),
        "sign_trapped_a": trap_a.sum(1).tolist(),
        "collapsed_b": col_b.sum(1).tolist(),
        "collapsed_a_still_collapsed_b": (col_a & col_b).sum(1).tolist(),
        "exact_traps_kept": kept.all(1).tolist(),
        "optimum_b_collapsed": int((beta_b.abs() < cfg.eps).sum()),
        "min_abs_u_w_end_a": floor_a.tolist(),
        "end_b": cls,
        "backend": backend,
    }


# --- factorization ------------------------------------------------------------------------------


def factorization_cell(cfg: Config, broken: bool) -> dict[str, Any]:
    dtype = common.torch_dtype(cfg)
    m, n, k = cfg.m, cfg.n, cfg.k
    A_a = _draw(cfg, 2, m * n).view(m, n).to(dtype)
    A_b = _draw(cfg, 3, m * n).view(m, n).to(dtype)
    C = (cfg.break_scale * _draw(cfg, 4, m * k).view(m, k)).to(dtype) if broken else None
    gam = torch.tensor(cfg.f_gammas_a, dtype=torch.float64)
    M = len(gam)
    z = cfg.f_init_scale * rng.normal(cfg.seed, torch.zeros(M, dtype=torch.int64), 0,
                                      rng.STREAM_INIT, (m + n) * k)  # fmt: skip
    p = {"U": z[:, : m * k].reshape(M, m, k).to(dtype),
         "W": z[:, m * k :].reshape(M, n, k).to(dtype)}  # fmt: skip
    curve: dict[str, list] = {"step": [], "rank": [], "singular_values": [], "loss": []}

    def record(step, q, loss):
        U = q["U"] if C is None else q["U"] + C
        mats = (U @ q["W"].transpose(1, 2)).double()
        curve["step"].append(step)
        curve["rank"].append(effective_rank(mats, cfg.eps).tolist())
        curve["singular_values"].append(torch.linalg.svdvals(mats).tolist())
        curve["loss"].append(loss.tolist())

    p, backend = _chunked("factorization", p, gam, cfg.f_eta, cfg.f_steps_a, None, A_a, 0.0, C, 0,
                          cfg.f_record_every, cfg, record, "--f-eta")  # fmt: skip
    na = len(curve["step"])
    p, _ = _chunked("factorization", p, 0.0, cfg.f_eta, cfg.f_steps_b, None, A_b, 0.0, C,
                    cfg.f_steps_a, cfg.f_record_every, cfg, record, "--f-eta")  # fmt: skip
    full = min(m, n, k)
    rank = np.asarray(curve["rank"])  # (S, M)
    sv = np.asarray(curve["singular_values"])  # (S, M, full)
    recovered_at, need = [], []
    for j in range(M):
        hit = [s for s, r in zip(curve["step"][na:], rank[na:, j], strict=True) if r == full]
        recovered_at.append(hit[0] - cfg.f_steps_a if hit else None)
        if hit:
            need.append(0.0)
            continue
        # not full rank at the end of B: extrapolate the largest σ_i below eps at its last rate
        i = int(np.argmax(sv[-1, j] <= cfg.eps))
        s1, s0 = sv[-1, j, i], sv[-2, j, i]
        rate = (math.log(s1) - math.log(s0)) / (curve["step"][-1] - curve["step"][-2]) \
            if min(s0, s1) > 0 else 0.0  # fmt: skip
        need.append((math.log(cfg.eps) - math.log(s1)) / rate if rate > 0 else math.inf)
    end_a = sv[na - 1]  # (M, full)
    return {
        "variant": "broken" if broken else "symmetric",
        "gammas_a": gam.tolist(),
        "switch_step": cfg.f_steps_a,
        "full_rank": full,
        "curve": curve,
        "rank_end_a": rank[na - 1].tolist(),
        "rank_first_b_record": rank[na].tolist(),
        "rank_end_b": rank[-1].tolist(),
        "collapsed_sv_end_a_max": [
            float(s[s <= cfg.eps].max()) if (s <= cfg.eps).any() else None for s in end_a
        ],
        "b_steps_to_full_rank": recovered_at,
        "b_steps_still_needed": need,
        "loss_end_b": curve["loss"][-1],
        "backend": backend,
    }


# --- claims, outputs ----------------------------------------------------------------------------


def claims_from(cfg: Config, cells: dict[str, dict[str, Any]]) -> dict[str, Any]:
    dec = cells["rescaling_decay"]
    resc = [dec] + ([cells["rescaling_noise"]] if "rescaling_noise" in cells else [])
    # fraction of task A's collapsed coordinates still collapsed after task B, per γ_A > 0 in
    # increasing order; about half of them are sign-trapped for good (β_B flips the sign with
    # probability ½), the others escape after ~ (decay accumulated in A) / (growth rate in B)
    # steps, so the fraction grows with γ_A
    frac = sorted(
        (g, b / a)
        for g, a, b in zip(dec["values"], dec["collapsed_a"], dec["collapsed_a_still_collapsed_b"],
                           strict=True)
        if g > 0 and a > 0
    )  # fmt: skip
    fr = [f for _, f in frac]
    n_traps = sum(sum(c["exact_zero_a"]) + sum(c["sign_trapped_a"]) for c in resc)
    cls = dec["end_b"]
    sym, brk = cells["factorization_symmetric"], cells["factorization_broken"]
    full = sym["full_rank"]
    collapsed = [j for j, r in enumerate(sym["rank_end_a"]) if r < full]
    claims: dict[str, Any] = {
        "collapsed_coordinates_persist_through_B": {
            "fraction_of_A_collapsed_still_collapsed": frac,
            "optimum_b_collapsed": dec["optimum_b_collapsed"],
            "holds": bool(fr) and fr[-1] >= 0.5 and fr == sorted(fr)},
        "exact_traps_are_permanent": {
            "exact_or_sign_trapped_at_end_of_A": n_traps,
            "holds": n_traps > 0 and all(all(c["exact_traps_kept"]) for c in resc)},
        "escape_rate_matches_linearisation": {
            "escaping": sum(cls["escaping"]), "median_rel_err": cls["rate_rel_err_median"],
            "fraction_within_1pct": cls["rate_rel_err_within_1pct"],
            "escape_steps_needed": cls["escape_steps_needed"],
            "holds": sum(cls["escaping"]) > 0 and cls["rate_rel_err_median"] <= 0.01},
        "factorization_symmetric_collapse_carries_into_B": {
            "gammas_a": [sym["gammas_a"][j] for j in collapsed],
            "rank_end_a": [sym["rank_end_a"][j] for j in collapsed],
            "rank_first_b_record": [sym["rank_first_b_record"][j] for j in collapsed],
            "holds": bool(collapsed) and all(sym["rank_first_b_record"][j] < full
                                             for j in collapsed)},
        "factorization_broken_full_rank_throughout": {
            "min_rank": int(np.min(brk["curve"]["rank"])), "full_rank": full,
            "holds": bool(np.all(np.asarray(brk["curve"]["rank"]) == full))},
        "factorization_symmetric_recovers_within_B": {
            "b_steps_to_full_rank": [sym["b_steps_to_full_rank"][j] for j in collapsed],
            "b_steps_still_needed": [sym["b_steps_still_needed"][j] for j in collapsed],
            "collapsed_sv_end_a_max": [sym["collapsed_sv_end_a_max"][j] for j in collapsed],
            "holds": bool(collapsed) and all(sym["b_steps_to_full_rank"][j] is not None
                                             for j in collapsed)},
    }  # fmt: skip
    if 0.0 in dec["values"]:
        j = dec["values"].index(0.0)
        claims["no_decay_stays_plastic"] = {
            "collapsed_b": dec["collapsed_b"][j], "optimum_b_collapsed": dec["optimum_b_collapsed"],
            "holds": dec["collapsed_b"][j] <= dec["optimum_b_collapsed"]}  # fmt: skip
    return claims


def figure(cfg: Config, cells: dict[str, dict[str, Any]], path: Path) -> None:
    plt = common.pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.3))
    ax = axes[0]
    for name, lab in (("rescaling_decay", "γ_A"), ("rescaling_noise", "noise, η_A")):
        if name not in cells:
            continue
        c = cells[name]
        st = c["curve"]["step"]
        col, trap = np.asarray(c["curve"]["collapsed"]), np.asarray(c["curve"]["sign_trapped"])
        for j, v in enumerate(c["values"]):
            (line,) = ax.plot(st, col[:, j], "-" if name.endswith("decay") else "-.",
                              label=f"{lab}={v:g} (d={c['d']})")  # fmt: skip
            ax.plot(st, trap[:, j], ":", color=line.get_color())
    ax.axvline(cfg.steps_a, color="k", lw=0.8)
    ax.set_xlabel("step (task A | task B, γ = 0)")
    ax.set_ylabel("collapsed |u_i w_i| < ε (solid); sign-trapped (dotted)")
    ax.set_title("u ⊙ w: collapsed coordinates")
    ax.legend(fontsize=7)
    for ax, key, ylab in ((axes[1], "rank", "rank (σ_i > ε)"), (axes[2], "loss", "data loss")):
        for name, ls in (("factorization_symmetric", "-"), ("factorization_broken", "--")):
            c = cells[name]
            y = np.asarray(c["curve"][key], dtype=float)
            for j, g in enumerate(c["gammas_a"]):
                ax.plot(c["curve"]["step"], y[:, j], ls, color=f"C{j}",
                        label=f"{c['variant']}, γ_A={g:g}")  # fmt: skip
        ax.axvline(cfg.f_steps_a, color="k", lw=0.8)
        ax.set_xlabel("step (task A | task B, γ = 0)")
        ax.set_ylabel(ylab)
    axes[1].set_title("(U + C) Wᵀ: symmetric C = 0 (solid), broken C ≠ 0 (dashed)")
    axes[1].legend(fontsize=6, ncol=2)
    axes[2].set_yscale("log")
    axes[2].set_title("factorization: loss (plateau = loss of plasticity)")
    common.save_figure(fig, path)


_RULES = {
    "seed": "seed",
    "d": "int >= 1",
    "gammas_a": "finite >= 0",
    "eta": "finite > 0",
    "steps_a": "int >= 1",
    "steps_b": "int >= 1",
    "record_every": "int >= 1",
    "init_scale": "finite",
    "eps": "finite > 0",
    "noise_sigma": "finite >= 0",
    "noise_d": "int >= 1",
    "noise_etas": "finite > 0",
    "noise_batch": "int >= 1",
    "m": "int >= 1",
    "n": "int >= 1",
    "k": "int >= 1",
    "f_gammas_a": "finite >= 0",
    "f_eta": "finite > 0",
    "f_steps_a": "int >= 1",
    "f_steps_b": "int >= 1",
    "f_record_every": "int >= 1",
    "f_init_scale": "finite",
    "break_scale": "finite",
    "threads": "int >= 1",
}


def _validate(cfg: Config) -> None:
    """Every field checked before any work (ValueError naming the flag; a usage error on the
    command line)."""
    common.check_fields(cfg, _RULES, allow_empty=("noise_etas",))
    # the escape rates need two records in task B, the first-B-record rank one record
    for steps, every in (("steps_b", "record_every"), ("f_steps_b", "f_record_every")):
        n, k = getattr(cfg, steps), getattr(cfg, every)
        if n < 2 * k:
            raise ValueError(
                f"task B must span at least two records: {common.option(steps)} must be >= 2 x "
                f"{common.option(every)} = {2 * k}, got {n}"
            )
    if cfg.noise_sigma > 0 and not cfg.noise_etas:
        raise ValueError(
            "--noise-etas must be non-empty when --noise-sigma > 0 (0 skips the variant)"
        )
    common.torch_dtype(cfg)
    common.check_backend(cfg.backend)


def run(
    cfg: Config, out: str | Path, *, resume: bool = False, show_progress: bool = True, log=print
) -> dict[str, Any]:
    """Run (or resume) the plasticity experiment into ``out``; return the results dict."""
    _validate(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wall0 = time.perf_counter()
    names = ["rescaling_decay"] + (["rescaling_noise"] if cfg.noise_sigma > 0 else [])
    names += ["factorization_symmetric", "factorization_broken"]

    def compute(name: str) -> dict[str, Any]:
        if name.startswith("rescaling"):
            return rescaling_cell(cfg, name.endswith("noise"))
        return factorization_cell(cfg, name.endswith("broken"))

    with common.torch_threads(cfg.threads):
        cells = common.run_cells(out, names, compute, asdict(cfg), _NOT_IN_HASH, resume=resume,
                                 desc="mirror-plasticity", show_progress=show_progress,
                                 log=log)  # fmt: skip
    claims = claims_from(cfg, cells)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["cell", "value", "step", "task", "measure", "measured"])
    for name in names:
        c = cells[name]
        keys = (
            ("collapsed", "sign_trapped", "loss") if name.startswith("resc") else ("rank", "loss")
        )
        vals = c["values"] if name.startswith("resc") else c["gammas_a"]
        for s, step in enumerate(c["curve"]["step"]):
            task = "A" if step <= c["switch_step"] else "B"
            for key in keys:
                for j, v in enumerate(vals):
                    w.writerow([name, repr(v), step, task, key, repr(c["curve"][key][s][j])])
    if cfg.figures:
        figure(cfg, cells, out / "fig_mirror_plasticity.png")
    payload = {
        "experiment": "mirror-plasticity",
        "config": asdict(cfg),
        "versions": common.versions(),
        "wall_time_s": time.perf_counter() - wall0,
        "backend": sorted({cells[n]["backend"] for n in names}),
        "loss": "rescaling: population ‖u⊙w − β‖² (+σ²) with GD (noise variant task A: SGD); "
        "factorization: ‖(U + C)Wᵀ − A‖²_F with GD; + γ‖θ‖² in task A, γ = 0 in task B",
        "cells": cells,
        "claims": claims,
    }
    common.atomic_write_json(out / "results.json", payload)
    common.atomic_write_text(out / "plasticity.csv", buf.getvalue())
    return payload


def main(argv: list[str] | None = None) -> int:
    args, cfg = common.parse_experiment_args(
        argv,
        prog="symkern run mirror-plasticity",
        description="Loss of plasticity: task A with decay/noise, then task B with γ = 0.",
        config_cls=Config,
        presets=PRESETS,
        default_out="runs/mirror-plasticity",
        validate=_validate,
    )
    res = run(cfg, args.out, resume=args.resume, show_progress=not args.no_progress)
    rows = []
    for name in ("rescaling_decay", "rescaling_noise"):
        c = res["cells"].get(name)
        for j, v in enumerate(c["values"] if c else []):
            e = c["end_b"]
            rows.append([name, v, c["collapsed_a"][j], c["collapsed_b"][j],
                         c["collapsed_a_still_collapsed_b"][j], e["exact_zero"][j],
                         e["sign_trapped"][j], e["escaping"][j], e["not_growing"][j]])  # fmt: skip
    print(common.format_table(rows, ["u⊙w", "γ_A / η_A", "collapsed A", "collapsed B", "A∩B",
                                     "exact 0", "sign-trap", "escaping",
                                     "not growing"]))  # fmt: skip
    rows = []
    for name in ("factorization_symmetric", "factorization_broken"):
        c = res["cells"][name]
        for j, g in enumerate(c["gammas_a"]):
            rows.append([c["variant"], g, c["rank_end_a"][j], c["rank_first_b_record"][j],
                         c["rank_end_b"][j], str(c["b_steps_to_full_rank"][j]),
                         c["loss_end_b"][j]])  # fmt: skip
    print(common.format_table(rows, ["factorization", "γ_A", "rank A", "rank B first", "rank B",
                                     "B steps to full", "loss B"]))  # fmt: skip
    common.print_claims(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
