r"""Exact population dynamics of curated loops (``scl.exact_sweep``) on two finite supports, with the monitors.

    python experiments/exact_dynamics.py --workdir=runs/exact \
        --config=experiments/configs/exact_dynamics.py[:quick] --config.iterations=20

Supports (both built by ``scl.configs``, ``(p_data, r, r~)`` from ``scl.task.support_arrays``, ``p_0 = p_data``):
* ``cifar10``: 10 classes (``scl.configs.points`` on the atoms 0..9), reward ``10 - class`` (the papers'
  CIFAR-10 evaluation reward), ``p_0`` uniform; atoms are grouped by class.
* ``gaussian8``: ``n_atoms`` points sampled from the Gaussian-8 ring (``scl.configs.gaussian8`` with the
  categorical model; reward ``-10 max(|x - (2, 0)| - 3, 0)``), ``p_0`` uniform; atoms are grouped by
  nearest mode.

Two exact sweeps per support: the K × λ grid (benign users) and a φ sweep at ``K = phi_K``, λ = ∞ with the
malicious users' reward ``r~ = -r``. Ferbach Theorem 2.4 is drawn at the grid point with ``λ (K - 1) < 1``
and K nearest 4 (the default grid has K = 4, λ = 0.25).

Writes into ``--workdir``:
  metrics.csv, metrics.json  one row per (support, sweep, K, λ, φ, iteration): every metric and monitor of
                             ``scl.exact.run`` and ``group_props_<j>`` (share of class / mode ``j``)
  summary.json               final expected rewards, the φ sweep, monitor violation counts, the config
  <support>_expected_reward.png   E_p[r] against iteration, one panel per λ, one line per K
  <support>_proportions.png       class / mode proportions (bias amplification), K ≈ 2, λ = ∞ and λ ≈ 1
  <support>_bounds.png            Lemma 2.2, Theorem 2.3, Theorem 2.4 beside the quantity each bounds
                                  (K nearest 4; λ = ∞, λ nearest 1, the Theorem 2.4 point)
  <support>_phi_sweep.png         φ sweep: E_p[r], its final value against φ, Lemma 3.3 (e^{r~max} and
                                  signed forms) beside E_p[e^r], and the steps where each fails
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import NamedTuple

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # Run from a checkout.

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import scl  # noqa: E402
from scl import files  # noqa: E402
from scl import plotting  # noqa: E402
from scl import task as task_lib  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402  (Agg, selected by scl.plotting)

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "exact_dynamics.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment configuration file.",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", "runs/exact_dynamics", "Where to write the tables and figures.")

INF = float("inf")
MONITORS = ("lemma22_holds", "thm23_holds", "thm24_holds", "lemma33_holds", "lemma33_signed_holds",
            "lemma34_holds")


class Support(NamedTuple):
  """A finite support: ``p_0 = p_data``, ``r``, ``r~`` ``[n]`` and each atom's group ``[n]``."""
  p0: np.ndarray
  r: np.ndarray
  r_tilde: np.ndarray
  group: np.ndarray
  group_name: str       # "class" or "mode"
  n_groups: int


def cifar10_reward(x):
  return 10.0 - x[:, 0]


def build_supports(config) -> dict[str, Support]:
  """The two supports, from scl configs (invalid fields raise ValueError here, before any compute)."""
  cifar = scl.configs.points(np.arange(10.0)[:, None], reward="custom", reward_fn=cifar10_reward)
  p, r, r_tilde = task_lib.support_arrays(cifar)
  supports = {"cifar10": Support(p, r, r_tilde, np.arange(10), "class", 10)}

  ring = scl.configs.gaussian8(model="categorical", n_atoms=config.n_atoms, data_seed=config.data_seed)
  p, r, r_tilde = task_lib.support_arrays(ring)
  _, data = task_lib.build(ring)
  support, modes = np.asarray(data.support), np.asarray(data.modes)
  nearest = np.argmin(np.linalg.norm(support[:, None, :] - modes[None], axis=-1), axis=-1)
  supports["gaussian8"] = Support(p, r, r_tilde, nearest, "mode", len(modes))
  return supports


def _values(name: str, x) -> list[float]:
  return scl.configs.flag_values(name, x)


def _nearest(values, target: float) -> float:
  values = np.asarray(values, np.float64)
  if np.isinf(target):  # the largest value is the nearest to inf (|v - inf| is inf for every finite v)
    return float(np.max(values))
  return float(values[np.argmin(np.abs(np.where(np.isinf(values), 1e30, values) - target))])


def _fmt(v: float) -> str:
  return "inf" if math.isinf(v) else f"{v:g}"


def run_sweeps(sup: Support, config) -> dict[str, scl.SweepResult]:
  """The K × λ grid (benign users) and the φ sweep (the support's ``r~``: ``-r``)."""
  T, Ks, lams = config.iterations, _values("K", config.K), _values("lam", config.lam)
  results = {
      "grid": scl.exact_sweep(sup.p0, sup.r, iterations=T, K=Ks, lam=lams, keep_trajectory=True),
      "phi": scl.exact_sweep(sup.p0, sup.r, iterations=T, K=config.phi_K, lam=INF,
                             phi=np.linspace(0.0, 1.0, config.n_phi), r_tilde=sup.r_tilde,
                             keep_trajectory=True),
  }
  onehot = np.eye(sup.n_groups)[sup.group]                    # [n, groups]
  for res in results.values():
    res.metrics["group_props"] = res.samples @ onehot         # [*grid, T + 1, groups]
  return results


def thm24_point(Ks, lams) -> tuple[float, float] | None:
  """A grid point where Ferbach Theorem 2.4 applies (1 < K < inf, λ (K - 1) < 1): K nearest 4, then the
  largest such λ; None if the grid has none."""
  points = [(k, l) for k in Ks for l in lams if 1 < k < INF and l * (k - 1) < 1]
  return min(points, key=lambda kl: (abs(kl[0] - 4.0), -kl[1])) if points else None


def table(name: str, results: dict[str, scl.SweepResult]) -> pd.DataFrame:
  """One row per (sweep, K, λ, φ, iteration) of one support."""
  frames = []
  for sweep, res in results.items():
    frame = res.to_frame()
    for field in ("K", "lam", "phi"):
      if field not in frame:
        frame[field] = float(res.fixed.get(field, 0.0))
    frame.insert(0, "sweep", sweep)
    frame.insert(0, "support", name)
    frames.append(frame)
  frame = pd.concat(frames, ignore_index=True)
  first = ["support", "sweep", "K", "lam", "phi", "iteration"]
  return frame[first + [c for c in frame.columns if c not in first]]


# ----------------------------------------------------------------------------------------------------------
# Figures.


def _stack(ax, props: np.ndarray, group_name: str, title: str) -> None:
  ax.stackplot(np.arange(props.shape[0]), props.T, labels=[f"{group_name} {g}" for g in range(props.shape[1])])
  ax.set_ylim(0, 1)
  ax.set_xlabel("iteration t")
  ax.set_title(title, fontsize=9)


def _bound(ax, m: dict, quantity: str, bound: str, qlabel: str, blabel: str, title: str) -> None:
  ax.plot(m[quantity], "o-", ms=3, label=qlabel)
  ax.plot(m[bound], "x--", label=blabel)
  ax.set_xlabel("iteration t")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8)


def figures(name: str, sup: Support, results: dict[str, scl.SweepResult], workdir: str) -> None:
  grid, phi = results["grid"], results["phi"]
  Ks, lams, phis = grid.axes["K"], grid.axes["lam"], phi.axes["phi"]
  save = lambda fig, what: files.save_figure(os.path.join(workdir, f"{name}_{what}.png"), fig)

  # 1. Expected reward against iteration over the K × λ grid.
  panels = {f"{name}: λ={_fmt(l)}": {f"K={_fmt(k)}": grid.sel(K=k, lam=l) for k in Ks} for l in lams}
  save(plotting.curve_panels(panels, ylabel="E_p[r]"), "expected_reward")

  # 2. Class / mode proportions (bias amplification): K ≈ 2, fully synthetic and λ ≈ 1.
  K2 = _nearest(Ks, 2.0)
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
  for ax, lam in zip(axes, (_nearest(lams, INF), _nearest(lams, 1.0))):
    _stack(ax, grid.sel(K=K2, lam=lam).metrics["group_props"], sup.group_name,
           f"{name}: K={_fmt(K2)}, λ={_fmt(lam)}")
  axes[1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
  save(fig, "proportions")

  # 3. Each bound beside the quantity it bounds (K ≈ 4).
  K4, lam_syn, lam_mix = _nearest(Ks, 4.0), _nearest(lams, INF), _nearest(lams, 1.0)
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
  _bound(axes[0], grid.sel(K=K4, lam=lam_syn).metrics, "exp_reward", "lemma22_rhs", "E_{p_t}[e^r]",
         "Lemma 2.2 bound", f"K={_fmt(K4)}, λ={_fmt(lam_syn)}")
  _bound(axes[1], grid.sel(K=K4, lam=lam_mix).metrics, "exp_reward", "thm23_rhs", "E_{p_t}[e^r]",
         "Thm 2.3 bound", f"K={_fmt(K4)}, λ={_fmt(lam_mix)}")
  point = thm24_point(Ks, lams)
  if point is None:
    axes[2].text(0.5, 0.5, "Thm 2.4: no grid point\nwith 1 < K < inf, λ(K-1) < 1", ha="center", va="center")
  else:
    _bound(axes[2], grid.sel(K=point[0], lam=point[1]).metrics, "kl_to_data", "thm24_rhs",
           "KL(p_t || p_data)", "Thm 2.4 bound", f"K={_fmt(point[0])}, λ={_fmt(point[1])}")
  save(fig, "bounds")

  # 4. φ sweep with r~ = -r: E_p[r] per φ, final E_p[r] against φ, Lemma 3.3 in its e^{r~max} and signed
  #    forms beside E_p[e^r] at φ ≈ 0.3 (symlog: the signed bound divides a negative Cov by e^{r~min}), and
  #    the steps where each form fails, per φ.
  er = phi.metrics["expected_reward"]                         # [nφ, T + 1]
  fig, axes = plt.subplots(1, 4, figsize=(17, 3.2))
  for i, f in enumerate(phis):
    axes[0].plot(er[i], color=plt.cm.viridis(f), label=f"φ={f:g}")
  axes[0].set(title=f"{name}: K={_fmt(phi.fixed['K'])}, λ=inf, r~=-r", xlabel="iteration t", ylabel="E_p[r]")
  axes[0].legend(fontsize=6, ncol=2)
  axes[1].plot(phis, er[:, -1], "o-")
  axes[1].axhline(er[0, 0], color="gray", ls=":")
  axes[1].set(title=f"E_p[r] at iteration {er.shape[1] - 1}", xlabel="φ")
  phi_at = _nearest(phis, 0.3)
  m = phi.sel(phi=phi_at).metrics
  _bound(axes[2], m, "exp_reward", "lemma33_rhs", "E_{p_t}[e^r]", "Lemma 3.3 bound (e^{r~max})",
         f"Lemma 3.3 at φ={phi_at:.2f}")
  axes[2].plot(m["lemma33_signed_rhs"], "+:", label="Lemma 3.3 bound (signed)")
  axes[2].set_yscale("symlog")
  axes[2].legend(fontsize=8)
  for form, marker in (("lemma33", "x--"), ("lemma33_signed", "+:")):
    axes[3].plot(phis, (phi.metrics[f"{form}_holds"] == 0).sum(-1), marker, label=form)
  axes[3].set(title=f"Lemma 3.3: steps violated (of {er.shape[1] - 1})", xlabel="φ")
  axes[3].legend(fontsize=8)
  save(fig, "phi_sweep")
  plt.close("all")


# ----------------------------------------------------------------------------------------------------------


def summarise(sup: Support, results: dict[str, scl.SweepResult]) -> dict:
  grid, phi = results["grid"], results["phi"]
  er = phi.metrics["expected_reward"]
  rising = phi.axes["phi"][er[:, 1] > er[:, 0]]
  monitors = {}
  for key in MONITORS:
    vals = np.concatenate([res.metrics[key].ravel() for res in results.values()])
    vals = vals[~np.isnan(vals)]
    monitors[key] = dict(checked=int(vals.size), violated=int((vals == 0).sum()))
  final = grid.final().metrics["expected_reward"]
  return dict(
      n_atoms=int(sup.p0.shape[0]),
      initial_expected_reward=float(grid.metrics["expected_reward"][0, 0, 0]),
      final_expected_reward={f"K={_fmt(k)},lam={_fmt(l)}": float(final[i, j])
                             for i, k in enumerate(grid.axes["K"]) for j, l in enumerate(grid.axes["lam"])},
      phi_sweep_final_expected_reward={f"{f:g}": float(v) for f, v in zip(phi.axes["phi"], er[:, -1])},
      phi_first_step_rising_up_to=float(rising.max()) if rising.size else None,
      monitors=monitors)


def _check(config) -> None:
  """Checks of the binary's own fields and of every sweep value (the library's, before any compute)."""
  if isinstance(config.n_phi, bool) or not isinstance(config.n_phi, int) or config.n_phi < 1:
    raise ValueError(f"invalid config: n_phi={config.n_phi!r}: must be an integer >= 1")
  scl.exact.validate(iterations=config.iterations, K=_values("K", config.K), lam=_values("lam", config.lam))
  if config.iterations < 1:  # the summary compares the first step with p_0
    raise ValueError(f"invalid config: iterations={config.iterations!r}: must be >= 1")
  try:
    scl.exact.validate(K=config.phi_K)
  except ValueError as e:
    raise ValueError(f"invalid config: phi_K={config.phi_K!r}: {e}") from e


def run(config, workdir: str) -> dict:
  """Run every sweep of ``config`` on both supports and write tables, figures and the summary."""
  start = time.time()
  _check(config)
  supports = build_supports(config)
  results = {name: run_sweeps(sup, config) for name, sup in supports.items()}
  frame = pd.concat([table(name, res) for name, res in results.items()], ignore_index=True)
  os.makedirs(workdir, exist_ok=True)
  files.write_csv(os.path.join(workdir, "metrics.csv"), frame)
  files.write_json(os.path.join(workdir, "metrics.json"), frame.to_dict(orient="records"))
  for name, sup in supports.items():
    figures(name, sup, results[name], workdir)
  summary = {name: summarise(sup, results[name]) for name, sup in supports.items()}
  recorded = {**config.to_dict(), "K": _values("K", config.K), "lam": _values("lam", config.lam)}  # parsed
  summary.update(config=recorded, seconds=time.time() - start)
  files.write_json(os.path.join(workdir, "summary.json"), summary)
  logging.info("summary: %s", files.to_jsonable(summary))
  print(f"wrote metrics.csv, metrics.json, summary.json and figures to {os.path.abspath(workdir)} "
        f"in {summary['seconds']:.1f} s")
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
