"""``symkern run mirror-ensemble`` (SPEC_MIRROR E3): permutation symmetry → homogeneous ensembling.

Teacher–student regression with a 2-layer network f(x) = Σ_i a_i φ(w_iᵀx + b_i), x ~ N(0, I_d),
y = f_teacher(x) + σε (teacher width h_t, student width h > h_t), trained by SGD on
mean_b (f(x_b) − y_b)² + γ‖θ‖² (``train_sweep("mlp", ...)``; every (γ, σ, seed) is one model of one
call). Two mirror symmetries compete for the surplus neurons:

* the permutation mirror (swap neurons i ↔ j, normal ∝ e_i − e_j in each of a, w, b): constraint
  θ_i = θ_j — neurons **merge** (homogeneous ensembling). For odd φ = tanh the signed swap
  θ_i ↔ −θ_j is a mirror too (constraint θ_i = −θ_j), so neurons are compared after sign-aligning
  by sign(a_i);
* for tanh the sign mirror θ_i → −θ_i of one neuron (constraint θ_i = 0): neurons **die**.

Measured per model, after training:

* live neurons: ‖(a_i, w_i, b_i)‖ > ``live_eps``;
* clusters: connected components (union-find) of the live neurons under "cosine similarity of
  s_i (w_i, b_i) and s_j (w_j, b_j) > ``cos_threshold``" (s_i = sign(a_i) for tanh, 1 for relu):
  neurons pointing the same way (SPEC_MIRROR's "cos > 0.99" measure of merging);
* identical groups: the same with "‖s_iθ_i − s_jθ_j‖ ≤ ``same_tol`` · max(‖θ_i‖, ‖θ_j‖)" on the
  full θ_i = (w_i, b_i, a_i): the permutation mirror's constraint itself, not only alignment;
* the test loss on ``n_test`` fresh inputs (Philox STREAM_TEST) against the noiseless teacher.

Counts are also taken at steps/2 (``*_half``) so a run still changing is visible in the results.

What was tried, to find where merging shows. A first scan (a torch.randn teacher, not this
module's) over γ, label noise, step size and relu guided the grid; the numbers below are this
module's quick preset (d = 4, h_t = 3, h = 32, tanh, η = 0.1, batch 16, 10⁴ steps, means over
2 seeds; the torch and C++ backends gave the same counts), with the full preset (h = 48, 4 seeds,
2·10⁴ steps at η = 0.05) in brackets:

* γ = 0, σ = 0: no structure — 32 live, 30 clusters, 32 identical groups [48 / 46 / 48];
* γ = 1e-2: surplus neurons **die** — 4 live, 3 clusters = the teacher width [4 / 3]: the sign
  mirror wins; the 4th live neuron is an identical copy of another (3 identical groups);
* γ ≥ 0.1: surplus neurons **merge** — at γ = 0.1, 28.5 live neurons in 2 directions (23
  identical groups: aligned, unequal magnitudes); at γ = 0.3, 13 live neurons, all identical
  (1 group; the other 19 died) [γ = 0.6: all 48 alive and identical]. The permutation mirror's
  constraint θ_i = θ_j holds: a homogeneous ensemble of the shrunken, nearly linear function
  (test loss 0.7 against 0.01 at γ = 1e-2). The live count is not monotone in γ (mixtures of
  dying and merging at 3e-3 and 3e-2–0.3);
* label noise at γ = 0 (batch 4, η = 0.05) kills neurons — 31.5 / 11.5 / 6 live at
  σ = 0.5 / 1 / 2 — without merging them (clusters ≈ live): noise drives the sign mirror's
  constraint here, not the permutation one;
* relu (full preset; the relu teacher has the same draw; relu diverges at η = 0.1, hence η = 0.05
  there): directions merge for γ ≥ 3e-3 (≈ 7 → 1 clusters among ~30 live neurons) but the neurons
  are not identical (identical groups ≈ live), since relu's rescaling a_i → c a_i,
  (w_i, b_i) → (w_i, b_i) / c leaves the magnitudes along a shared direction free; relu has no
  sign mirror and its neurons do not die (≈ 30 of 48 stay live up to γ = 0.6).

Claims (each computed from the data, each can fail): at some γ at least ``dead_fraction`` of the
surplus neurons are dead while γ = 0 keeps all h; at the largest γ the neurons merge (more than
h_t live, at most 2 clusters and at most 2 identical groups); without decay or noise there is
neither dying nor merging (all live, clusters ≥ h − 2); label noise at γ = 0 lowers the live
count; with relu in the run: at the largest γ, clusters < live but identical groups ≥ live − 2.

Outputs in ``--out``: results.json, ensemble.csv (one row per model), fig_mirror_ensemble.png,
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

import numpy as np
import torch

from symkern.experiments import common
from symkern.meanfield import rng
from symkern.mirror.sweeps import train_sweep

__all__ = ["Config", "PRESETS", "main", "neuron_stats", "run"]

_f = common.config_field


@dataclass
class Config:
    """Every parameter (preset < config file < CLI)."""

    d: int = _f(4, "input dimension")
    teacher_width: int = _f(3, "teacher neurons h_t")
    width: int = _f(32, "student neurons h")
    seed: int = _f(0, "Philox seed (teacher, inits, data)")
    seeds: int = _f(2, "student inits / data streams per grid point")
    activations: list[str] = _f(["tanh"], "activations of the γ sweep (tanh first; relu optional)")
    gammas: list[float] = _f([0.0, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3], "weight decays γ")
    gamma_eta: float = _f(0.1, "step size of the γ sweep")
    gamma_batch: int = _f(16, "batch size of the γ sweep")
    gamma_noise: float = _f(0.0, "label noise σ of the γ sweep")
    noise_sigmas: list[float] = _f([0.0, 0.5, 1.0, 2.0], "label noise σ of the noise sweep")
    noise_gamma: float = _f(0.0, "weight decay of the noise sweep")
    noise_eta: float = _f(0.05, "step size of the noise sweep")
    noise_batch: int = _f(4, "batch size of the noise sweep")
    steps: int = _f(10000, "SGD steps")
    init_scale: float = _f(1.0, "student init: w ~ N(0, s²/d), b ~ N(0, s²), a ~ N(0, s²/h)")
    teacher_a: float = _f(2.0, "teacher output weights a ~ N(0, teacher_a²)")
    teacher_b: float = _f(0.5, "teacher biases b ~ N(0, teacher_b²); w ~ N(0, I_d)")
    live_eps: float = _f(1e-2, "a neuron is live when ‖(a_i, w_i, b_i)‖ > live_eps")
    cos_threshold: float = _f(0.99, "same cluster when cos(s_i(w_i, b_i), s_j(w_j, b_j)) > this")
    same_tol: float = _f(1e-2, "identical when ‖s_iθ_i − s_jθ_j‖ ≤ same_tol·max norm")
    n_test: int = _f(2000, "test inputs for the test loss")
    dead_fraction: float = _f(0.8, "claim: 'surplus neurons die' when this fraction is dead")
    threads: int = _f(1, "torch threads (1 is fastest for these small models)")
    dtype: str = _f("float64", "float64 or float32")
    backend: str = _f("auto", "mirror_sweep backend")
    figures: bool = _f(True, "write the PNG figure")


PRESETS: dict[str, dict[str, Any]] = {
    # quick: measured 36 s with the torch reference (Philox draws dominate), 9 s with the C++
    # kernel, one torch thread, on 2 cores shared with other jobs (load ~5)
    "quick": {},
    # full: finer γ grid, relu too, 4 seeds, wider student; twice the steps at half the step
    # size (relu diverges at η = 0.1: most models were NaN after 500 steps)
    "full": {
        "activations": ["tanh", "relu"],
        "gamma_eta": 0.05,
        "gammas": [0.0, 3e-4, 1e-3, 3e-3, 1e-2, 2e-2, 3e-2, 6e-2, 0.1, 0.2, 0.3, 0.6],
        "noise_sigmas": [0.0, 0.25, 0.5, 1.0, 1.5, 2.0],
        "seeds": 4,
        "steps": 20000,
        "width": 48,
    },
}
_NOT_IN_HASH = {"figures", "backend", "threads"}
_TEACHER_RUN = 2**31  # Philox run id of the teacher (STREAM_INIT); students use 0..seeds−1


def draw_teacher(cfg: Config, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """Teacher {"W1": (h_t, d), "b1": (h_t,), "a": (h_t,)} from Philox STREAM_INIT."""
    ht, d = cfg.teacher_width, cfg.d
    z = rng.normal(cfg.seed, torch.tensor([_TEACHER_RUN]), 0, rng.STREAM_INIT, ht * (d + 2))[0]
    return {
        "W1": z[: ht * d].view(ht, d).to(dtype),
        "b1": (cfg.teacher_b * z[ht * d : ht * (d + 1)]).to(dtype),
        "a": (cfg.teacher_a * z[ht * (d + 1) :]).to(dtype),
    }


def init_students(cfg: Config, seed_idx: torch.Tensor, dtype) -> dict[str, torch.Tensor]:
    """Student inits (M, ...) keyed by the seed index only: every γ / σ of a seed starts from the
    same network (common random numbers across the grid)."""
    h, d = cfg.width, cfg.d
    z = cfg.init_scale * rng.normal(cfg.seed, seed_idx, 0, rng.STREAM_INIT, h * (d + 2))
    M = len(seed_idx)
    return {
        "W1": (z[:, : h * d].reshape(M, h, d) / d**0.5).to(dtype),
        "b1": z[:, h * d : h * (d + 1)].to(dtype),
        "a": (z[:, h * (d + 1) :] / h**0.5).to(dtype),
    }


def _components(adj: np.ndarray) -> int:
    """Number of connected components of a symmetric boolean adjacency matrix (union-find)."""
    n = adj.shape[0]
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(adj, 1)), strict=True):
        ri, rj = find(int(i)), find(int(j))
        if ri != rj:
            parent[ri] = rj
    return len({find(i) for i in range(n)})


def neuron_stats(
    W1: torch.Tensor,
    b1: torch.Tensor,
    a: torch.Tensor,
    activation: str,
    live_eps: float,
    cos_threshold: float,
    same_tol: float,
) -> dict[str, list]:
    """Per model (W1 (M, h, d), b1 (M, h), a (M, h)): live neurons, clusters, identical groups.

    live: ‖θ_i‖ > live_eps with θ_i = (w_i, b_i, a_i). Among live neurons, s_i = sign(a_i) for
    tanh (the signed swap θ_i ↔ −θ_j is a mirror of an odd φ), 1 for relu; clusters = components
    of cos(s_i(w_i, b_i), s_j(w_j, b_j)) > cos_threshold; identical groups = components of
    ‖s_iθ_i − s_jθ_j‖ ≤ same_tol·max(‖θ_i‖, ‖θ_j‖). Returns lists of length M (NaN parameters:
    the model diverged, counts −1).
    """
    theta = torch.cat([W1, b1[..., None], a[..., None]], -1).double()  # (M, h, d + 2)
    sign = torch.sign(a).double() if activation == "tanh" else torch.ones_like(a, dtype=theta.dtype)
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    out: dict[str, list] = {"live": [], "clusters": [], "identical": [], "norms": []}
    for m in range(theta.shape[0]):
        th = theta[m]
        norms = th.norm(dim=1)
        if not torch.isfinite(th).all():
            for k in ("live", "clusters", "identical"):
                out[k].append(-1)
            out["norms"].append([float("nan")] * th.shape[0])
            continue
        live = norms > live_eps
        s = (sign[m][:, None] * th)[live]
        n = norms[live]
        wb = s[:, :-1]
        wbn = wb / wb.norm(dim=1, keepdim=True).clamp_min(torch.finfo(wb.dtype).tiny)
        cos = (wbn @ wbn.T).numpy() > cos_threshold
        same = (torch.cdist(s, s) <= same_tol * torch.maximum(n[:, None], n[None, :])).numpy()
        out["live"].append(int(live.sum()))
        out["clusters"].append(_components(cos))
        out["identical"].append(_components(same))
        out["norms"].append(sorted(norms.tolist(), reverse=True))
    return out


def _forward(x: torch.Tensor, p: dict[str, torch.Tensor], activation: str) -> torch.Tensor:
    """f(x) for x (n, d) and p with leading model dimension (M, ...): (M, n)."""
    z = torch.einsum("nd,mhd->mnh", x, p["W1"]) + p["b1"][:, None, :]
    s = torch.tanh(z) if activation == "tanh" else torch.relu(z)
    return torch.einsum("mnh,mh->mn", s, p["a"])


def sweep_cell(cfg: Config, kind: str, activation: str) -> dict[str, Any]:
    """One train_sweep call over (values × seeds): kind "gamma" sweeps γ, "noise" sweeps σ."""
    dtype = common.torch_dtype(cfg)
    if kind == "gamma":
        values, eta, batch = cfg.gammas, cfg.gamma_eta, cfg.gamma_batch
    else:
        values, eta, batch = cfg.noise_sigmas, cfg.noise_eta, cfg.noise_batch
    S = cfg.seeds
    vals = torch.tensor(values, dtype=torch.float64).repeat_interleave(S)
    seed_idx = torch.arange(S).repeat(len(values))
    gam = vals if kind == "gamma" else torch.full_like(vals, cfg.noise_gamma)
    sig = torch.full_like(vals, cfg.gamma_noise) if kind == "gamma" else vals
    teacher = draw_teacher(cfg, dtype)
    p = init_students(cfg, seed_idx, dtype)
    stats_half = None
    backend = None
    half = cfg.steps // 2
    losses: list[torch.Tensor] = []
    # two calls (the second continues the Philox stream via step0) to record the counts at
    # steps/2: a run whose counts still change between the halves has not settled
    for t0, k in ((0, half), (half, cfg.steps - half)):
        r = train_sweep("mlp", p, gam, eta, k, batch, cfg.seed, target=teacher, noise=sig,
                        model_ids=seed_idx, activation=activation, step0=t0,
                        record_every=max(1, k // 10), backend=cfg.backend)  # fmt: skip
        p, backend = r.params, r.backend
        losses.append(r.losses)
        if t0 == 0:
            stats_half = neuron_stats(p["W1"], p["b1"], p["a"], activation, cfg.live_eps,
                                      cfg.cos_threshold, cfg.same_tol)  # fmt: skip
            # train_sweep refuses NaN parameters: a model that diverged in the first half is
            # zeroed for the second call, then NaN again below, so it is counted as diverged
            # (counts −1, excluded from the means) rather than as a network of dead neurons
            bad = ~torch.stack([torch.isfinite(v).flatten(1).all(1) for v in p.values()]).all(0)
            p = {key: torch.where(bad.view(-1, *[1] * (v.dim() - 1)), 0.0, v)
                 for key, v in p.items()}  # fmt: skip
    p = {key: torch.where(bad.view(-1, *[1] * (v.dim() - 1)), float("nan"), v)
         for key, v in p.items()}  # fmt: skip
    stats = neuron_stats(p["W1"], p["b1"], p["a"], activation, cfg.live_eps, cfg.cos_threshold,
                         cfg.same_tol)  # fmt: skip
    x = rng.normal(cfg.seed, torch.tensor([_TEACHER_RUN]), 0, rng.STREAM_TEST, cfg.n_test * cfg.d)
    x = x.view(cfg.n_test, cfg.d)
    y = _forward(x, {k: v.double()[None] for k, v in teacher.items()}, activation)
    f = _forward(x, {k: v.double() for k, v in p.items()}, activation)
    test = ((f - y) ** 2).mean(-1)
    assert stats_half is not None  # set in the loop's first half (t0 == 0)
    return {
        "kind": kind,
        "activation": activation,
        "values": list(values),
        "gamma": gam.tolist(),
        "noise": sig.tolist(),
        "eta": eta,
        "batch": batch,
        "seed_index": seed_idx.tolist(),
        "live": stats["live"],
        "clusters": stats["clusters"],
        "identical": stats["identical"],
        "neuron_norms": stats["norms"],
        "live_half": stats_half["live"],
        "clusters_half": stats_half["clusters"],
        "test_loss": test.tolist(),
        "train_loss_curve": torch.cat(losses, 1).tolist(),
        "diverged": (~torch.isfinite(test)).tolist(),
        "backend": backend,
    }


def _means(cell: dict[str, Any], key: str) -> list[float]:
    """Mean of ``key`` over seeds, per grid value (diverged models excluded; NaN if all)."""
    S = len(cell["seed_index"]) // len(cell["values"])
    out = []
    for v in range(len(cell["values"])):
        xs = [cell[key][v * S + s] for s in range(S) if not cell["diverged"][v * S + s]]
        out.append(float(np.mean(xs)) if xs else float("nan"))
    return out


def summarize(cell: dict[str, Any]) -> dict[str, Any]:
    keys = ("live", "clusters", "identical", "live_half", "clusters_half", "test_loss")
    return {"values": cell["values"], **{k + "_mean": _means(cell, k) for k in keys}}


def claims_from(cfg: Config, cells: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ht, h = cfg.teacher_width, cfg.width
    g = summarize(cells["gamma_tanh"])
    nz = summarize(cells["noise_tanh"])
    gammas = g["values"]
    live, clus, ident = g["live_mean"], g["clusters_mean"], g["identical_mean"]
    i0 = gammas.index(min(gammas))
    ib = gammas.index(max(gammas))
    # "most surplus neurons dead": at least dead_fraction of the h − h_t surplus neurons
    live_max = ht + (1.0 - cfg.dead_fraction) * (h - ht)
    dying = [x for x, v in zip(gammas, live, strict=True) if v <= live_max]
    claims: dict[str, Any] = {
        "decay_kills_surplus_neurons": {
            "gamma_zero_live": live[i0], "min_live": min(live), "teacher_width": ht,
            "live_threshold": live_max, "gammas_with_most_surplus_dead": dying,
            "clusters_there": [c for x, c in zip(gammas, clus, strict=True) if x in dying],
            "holds": bool(dying) and live[i0] == h},
        "large_decay_merges_neurons": {
            "gamma": gammas[ib], "live": live[ib], "clusters": clus[ib], "identical": ident[ib],
            "holds": live[ib] > ht and clus[ib] <= 2 and ident[ib] <= 2},
        "no_structure_without_decay_or_noise": {
            "gamma": gammas[i0], "live": live[i0], "clusters": clus[i0],
            "holds": live[i0] == h and clus[i0] >= h - 2},
    }  # fmt: skip
    sig = nz["values"]
    j0, jb = sig.index(min(sig)), sig.index(max(sig))
    claims["label_noise_kills_neurons"] = {
        "gamma": cfg.noise_gamma, "noise": [sig[j0], sig[jb]],
        "live": [nz["live_mean"][j0], nz["live_mean"][jb]],
        "clusters": [nz["clusters_mean"][j0], nz["clusters_mean"][jb]],
        "holds": nz["live_mean"][jb] < nz["live_mean"][j0]}  # fmt: skip
    if "gamma_relu" in cells:
        r = summarize(cells["gamma_relu"])
        claims["relu_merges_directions_not_magnitudes"] = {
            "gamma": gammas[ib], "live": r["live_mean"][ib], "clusters": r["clusters_mean"][ib],
            "identical": r["identical_mean"][ib],
            "holds": r["clusters_mean"][ib] < r["live_mean"][ib]
            and r["identical_mean"][ib] >= r["live_mean"][ib] - 2}  # fmt: skip
    return claims


def figure(cfg: Config, cells: dict[str, dict[str, Any]], path: Path) -> None:
    plt = common.pyplot()

    panels = [
        ("gamma_tanh", "weight decay γ (tanh)"),
        ("noise_tanh", f"label noise σ (tanh, γ = {cfg.noise_gamma:g}, batch {cfg.noise_batch})"),
    ]
    if "gamma_relu" in cells:
        panels.append(("gamma_relu", "weight decay γ (relu)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (name, xlabel) in zip(axes[0], panels, strict=True):
        c = cells[name]
        s = summarize(c)
        x = np.asarray(s["values"], dtype=float)
        for key, mk, lab in (("live", "o-", "live neurons"), ("clusters", "s-", "clusters (cos)"),
                             ("identical", "^--", "identical groups")):  # fmt: skip
            (line,) = ax.plot(x, s[key + "_mean"], mk, label=lab)
            ax.plot(np.repeat(x, cfg.seeds), c[key], ".", color=line.get_color(), alpha=0.4)
        ax.axhline(cfg.teacher_width, color="k", ls=":", label=f"teacher width {cfg.teacher_width}")
        ax.axhline(cfg.width, color="0.6", ls=":", label=f"student width {cfg.width}")
        if c["kind"] == "gamma" and (x > 0).any():
            ax.set_xscale("symlog", linthresh=float(x[x > 0].min()))
            ax.set_xlim(0.0, 1.5 * float(x.max()))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count (mean over seeds; dots: seeds)")
        ax.legend(fontsize=7)
    axes[0, 0].set_title("dying (live ↓) vs merging (clusters < live)")
    common.save_figure(fig, path)


_RULES = {
    "d": "int >= 1",
    "teacher_width": "int >= 1",
    "width": "int >= 1",
    "seed": "seed",
    "seeds": "int >= 1",
    "gammas": "finite >= 0",
    "gamma_eta": "finite > 0",
    "gamma_batch": "int >= 1",
    "gamma_noise": "finite >= 0",
    "noise_sigmas": "finite >= 0",
    "noise_gamma": "finite >= 0",
    "noise_eta": "finite > 0",
    "noise_batch": "int >= 1",
    "steps": "int >= 1",
    "init_scale": "finite",
    "teacher_a": "finite",
    "teacher_b": "finite",
    "live_eps": "finite >= 0",
    "cos_threshold": "finite",
    "same_tol": "finite >= 0",
    "n_test": "int >= 1",
    "dead_fraction": "finite > 0",
    "threads": "int >= 1",
}


def _validate(cfg: Config) -> None:
    """Every field checked before any work (ValueError naming the flag; a usage error on the
    command line)."""
    common.check_fields(cfg, _RULES)
    if cfg.steps < 2:
        raise ValueError(f"--steps must be an integer >= 2 (counts at steps/2), got {cfg.steps}")
    if cfg.seeds >= 2**32:
        raise ValueError(f"--seeds must be < 2^32 (Philox model ids), got {cfg.seeds}")
    if cfg.dead_fraction > 1.0:
        raise ValueError(f"--dead-fraction must be in (0, 1], got {cfg.dead_fraction}")
    if not -1.0 <= cfg.cos_threshold <= 1.0:
        raise ValueError(f"--cos-threshold must be in [-1, 1], got {cfg.cos_threshold}")
    if cfg.teacher_width >= cfg.width:
        raise ValueError(
            f"--width must exceed --teacher-width (surplus neurons are the point), got "
            f"--width {cfg.width}, --teacher-width {cfg.teacher_width}"
        )
    if (
        not cfg.activations
        or cfg.activations[0] != "tanh"
        or len(set(cfg.activations)) != len(cfg.activations)
        or not set(cfg.activations) <= {"tanh", "relu"}
    ):
        raise ValueError(f"--activations must be tanh or tanh,relu, got {cfg.activations}")
    if min(cfg.gammas) != 0.0 or max(cfg.gammas) <= 0.0:
        raise ValueError(
            f"--gammas needs 0 (the baseline) and at least one γ > 0, got {cfg.gammas}"
        )
    if len(cfg.noise_sigmas) < 2:
        raise ValueError(f"--noise-sigmas needs at least two values >= 0, got {cfg.noise_sigmas}")
    common.torch_dtype(cfg)
    common.check_backend(cfg.backend)


def run(
    cfg: Config, out: str | Path, *, resume: bool = False, show_progress: bool = True, log=print
) -> dict[str, Any]:
    """Run (or resume) E3 into ``out``; return the results dict (also results.json)."""
    _validate(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wall0 = time.perf_counter()
    names = [f"gamma_{a}" for a in cfg.activations] + ["noise_tanh"]

    def compute(name: str) -> dict[str, Any]:
        kind, act = name.split("_")
        return sweep_cell(cfg, kind, act)

    with common.torch_threads(cfg.threads):
        cells = common.run_cells(out, names, compute, asdict(cfg), _NOT_IN_HASH, resume=resume,
                                 desc="mirror-ensemble", show_progress=show_progress,
                                 log=log)  # fmt: skip
    claims = claims_from(cfg, cells)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["cell", "activation", "gamma", "noise", "eta", "batch", "seed_index", "live",
                "clusters", "identical", "live_half", "clusters_half", "test_loss",
                "diverged"])  # fmt: skip
    for n in names:
        c = cells[n]
        for i in range(len(c["gamma"])):
            w.writerow([n, c["activation"], repr(c["gamma"][i]), repr(c["noise"][i]), c["eta"],
                        c["batch"], c["seed_index"][i], c["live"][i], c["clusters"][i],
                        c["identical"][i], c["live_half"][i], c["clusters_half"][i],
                        repr(c["test_loss"][i]), c["diverged"][i]])  # fmt: skip
    if cfg.figures:
        figure(cfg, cells, out / "fig_mirror_ensemble.png")
    payload = {
        "experiment": "mirror-ensemble",
        "config": asdict(cfg),
        "versions": common.versions(),
        "wall_time_s": time.perf_counter() - wall0,
        "backend": sorted({cells[n]["backend"] for n in names}),
        "loss": "SGD on mean_b (f(x_b) − y_b)² + γ‖θ‖², y = teacher(x) + σε",
        "summary": {n: summarize(cells[n]) for n in names},
        "cells": cells,
        "claims": claims,
    }
    common.atomic_write_json(out / "results.json", payload)
    common.atomic_write_text(out / "ensemble.csv", buf.getvalue())
    return payload


def main(argv: list[str] | None = None) -> int:
    args, cfg = common.parse_experiment_args(
        argv,
        prog="symkern run mirror-ensemble",
        description="E3: permutation symmetry -> homogeneous ensembling (dying vs merging).",
        config_cls=Config,
        presets=PRESETS,
        default_out="runs/mirror-ensemble",
        validate=_validate,
    )
    res = run(cfg, args.out, resume=args.resume, show_progress=not args.no_progress)
    rows = []
    for name, s in res["summary"].items():
        c = res["cells"][name]
        for i, v in enumerate(s["values"]):
            gam = v if c["kind"] == "gamma" else cfg.noise_gamma
            sig = v if c["kind"] == "noise" else cfg.gamma_noise
            rows.append([c["activation"], gam, sig, s["live_mean"][i], s["clusters_mean"][i],
                         s["identical_mean"][i], s["test_loss_mean"][i]])  # fmt: skip
    print(common.format_table(rows, ["act", "gamma", "noise", "live", "clusters", "identical",
                                     "test loss"]))  # fmt: skip
    common.print_claims(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
