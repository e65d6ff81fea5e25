r"""Defences against label-flip attacks on Gaussian-8: every attack against every defence, over seeds.

    python experiments/defences.py --workdir=runs/defences \
        [--config=experiments/configs/defences.py[:quick]] [--config.seeds=5] [--config.eps.outlier=0.4]

For each real-data setting in ``config.settings`` (name -> λ), each attack in ``config.attacks`` and each
defence in ``config.defences`` (at strength ``config.eps[defence]``), runs the loop with the platform's
defended reward curating over ``range(config.seeds)`` seeds in one ``scl.sweep`` call (a "cell"). With
``config.minority.share > 0`` it also runs the honest heterogeneous users (setting ``minority``: no attacker,
fully synthetic, a share of the pairs labelled by a minority preferring rewards near ``config.minority.target``)
with every defence: what a defence flags there is a false alarm, and the minority's final mass is what the
defence costs it. Writes into ``--workdir``:
  metrics.csv    long table: one row per (setting, attack, defence, seed, iteration), every metric a column
  metrics.json   {setting: {attack: {defence: {metric: [seed][iteration]...}}}} and the seeds
  summary.csv    one row per cell: final expected true reward mean and Student-t interval over seeds
                 (``level``), ε, the detection precision and recall (mean over seeds and attacked steps;
                 NaN for defences that do not flag), the share of pairs flagged, the final corr(e^r, e^R~),
                 the final mass on the minority's modes, seconds per cell (including compilation)
  summary.json   the same, the pivot ``table`` {setting: {attack: {defence: {mean, low, high}}}}, the config
                 and the total seconds
  heatmap.png    final expected true reward, attack × defence, one panel per setting (the interval printed)
  detection.png  flag precision and recall, attack × flagging defence, one panel per setting and metric
  reward.png     expected true reward per iteration, one line per attack with seed bands, one panel per
                 setting × defence
  minority.png   (minority scenario) final mass on the minority's modes and share of honest pairs flagged,
                 per defence
  cells/         each finished cell's metrics, written as it finishes: a rerun with the same workdir loads the
                 unchanged cells instead of running them again (``experiments/_cells.py``)
λ and ε are traced, so cells that differ only in the setting reuse one compiled program. On a CPU-only
machine the CLI lays the seeds over the cores as XLA devices (as ``experiments/adversarial.py`` does).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # every CPU core an XLA device, so the seeds of a cell run in parallel; before JAX
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # experiments/, also under python -m
  import _devices  # experiments/_devices.py
  _devices.cpu_cores_as_devices()

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # Run from a checkout.

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from experiments import _cells  # noqa: E402
import scl  # noqa: E402
from scl import files  # noqa: E402
from scl import preferences  # noqa: E402
from scl import task as task_lib  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402  (Agg, selected by scl.plotting)

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "defences.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment configuration file.",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", "runs/defences", "Where to write metrics and plots.")
_LEVEL = flags.DEFINE_float("level", 0.95, "Confidence level of the intervals over seeds.")

_BINARY_FIELDS = ("seeds", "attacks", "defences", "eps", "settings", "minority")
MINORITY = "minority"   # the setting name of the honest heterogeneous users scenario
COLUMNS = ("setting", "attack", "defence")   # a cell's key


def minority_label_mode(share: float, target: float) -> str:
  """Register (once) the label mode of :func:`scl.preferences.minority_labels` and return its name (the name
  carries the parameters, so a compiled program is never reused for other ones)."""
  name = f"minority_{share!r}_{target!r}"  # repr, not :g (0.3 and 0.3000004 were one name, so one saved cell)
  if name not in scl.registry.LABELS:
    scl.register("labels", name, preferences.minority_labels(share, target))
  return name


def cells(config) -> dict[tuple[str, str, str], scl.Config]:
  """(setting, attack, defence) -> validated Config; every combination is built before any compute."""
  make = scl.configs.from_flags(config, _BINARY_FIELDS)  # keywords left None keep the builder's defaults
  _cells.check_nonempty(config, "attacks", "defences", "settings")
  share, target = float(config.minority.share), float(config.minority.target)
  if not (0.0 <= share < 1.0) or not np.isfinite(target):
    raise ValueError(f"invalid config: minority=(share={share!r}, target={target!r}): the share must lie in [0, 1) "
                     "(0: no minority scenario) and the target be finite")
  eps = dict(config.eps)
  missing = [d for d in config.defences if d not in eps]
  if missing:
    raise ValueError(f"invalid config: eps has no strength for defence(s) {missing}")
  out = {}
  settings = sorted(config.settings.items(), key=lambda kv: -float(kv[1]))   # fully synthetic first
  for setting, lam in settings:
    if setting == MINORITY:
      raise ValueError(f"invalid config: settings: the name {MINORITY!r} is the minority scenario's")
    for attack in config.attacks:
      for defence in config.defences:
        out[(setting, attack, defence)] = make(attack=attack, defence=defence, eps=float(eps[defence]), lam=float(lam))
  if share > 0:
    labels = minority_label_mode(share, target)
    for defence in config.defences:
      out[(MINORITY, "none", defence)] = make(attack="none", defence=defence, labels=labels, eps=float(eps[defence]),
                                                 lam=float("inf"))
  scl.configs.check_runs(make)  # a top-level lam, attack, defence or eps every cell replaces
  if any(cfg.iterations < 1 for cfg in out.values()):
    raise ValueError("invalid config: iterations must be >= 1 (the table reads the last attacked step)")
  if out and task_lib.build(next(iter(out.values())))[1].modes is None:
    raise ValueError(f"invalid config: dataset={config.dataset!r} has no modes; the defences' table measures the "
                     "mass on the minority's modes (use a data set with modes, such as gaussian8)")
  return out


def run_cells(config, workdir: str | None = None) -> tuple[dict, dict]:
  """Run every cell over ``range(config.seeds)``: ({cell: SweepResult}, {cell: seconds}); with ``workdir``,
  each finished cell is saved there and an unchanged cell saved by an earlier run is loaded, not run again."""
  return _cells.run_cells(cells(config), config.seeds, "defence cells", workdir)


def minority_modes(cfg: scl.Config, target: float, tol: float = 1.0) -> list[int]:
  """The modes whose true reward is within ``tol`` of the minority's ``target``."""
  task, data = task_lib.build(cfg)
  rewards = np.asarray(task.reward(data.reward, data.modes))
  return [j for j in range(rewards.shape[0]) if abs(rewards[j] - target) <= tol]


def summary_frame(results, seconds, config, level: float) -> pd.DataFrame:
  rows = []
  modes = None
  for cell, res in results.items():
    if modes is None:
      modes = minority_modes(res.config, float(config.minority.target))
    ci = res.final().mean_ci("expected_reward", level)
    props = np.asarray(res.final().metrics["mode_props"], np.float64)       # [seed, n_modes]
    rows.append(dict(zip(COLUMNS, cell), eps=float(res.config.hyper.eps),
                     final_reward_mean=float(ci.mean), final_reward_low=float(ci.low),
                     final_reward_high=float(ci.high), n_seeds=ci.n, level=level,
                     initial_reward=float(np.mean(res.metrics["expected_reward"][..., 0])),
                     n_flips=_cells.step_mean(res, "n_flips"),
                     flag_precision=_cells.step_mean(res, "flag_precision"),
                     flag_recall=_cells.step_mean(res, "flag_recall"),
                     flagged_share=_cells.step_mean(res, "n_flagged") / res.config.platform.n_pairs,
                     final_corr_r_learned=float(np.mean(np.asarray(res.metrics["corr_r_learned"])[..., -2])),
                     minority_mass=float(np.mean(props[..., modes].sum(-1))), seconds=seconds[cell]))
  return pd.DataFrame(rows)


def pivot(summary: pd.DataFrame) -> dict:
  """{setting: {attack: {defence: {mean, low, high, flag_precision, flag_recall}}}}."""
  table: dict = {}
  for row in summary.itertuples():
    table.setdefault(row.setting, {}).setdefault(row.attack, {})[row.defence] = dict(
        mean=row.final_reward_mean, low=row.final_reward_low, high=row.final_reward_high,
        flag_precision=row.flag_precision, flag_recall=row.flag_recall)
  return table


def heatmaps(summary: pd.DataFrame, value: str, title: str, cmap: str = "viridis", with_ci: bool = False,
             vmin=None, vmax=None):
  """One panel per setting: attack (rows) × defence (columns) of ``value``, each cell annotated."""
  settings = [s for s in dict.fromkeys(summary.setting) if s != MINORITY]
  fig, axes = plt.subplots(1, len(settings), figsize=(1.3 * summary.defence.nunique() * len(settings) + 2,
                                                      0.6 * summary.attack.nunique() + 2), squeeze=False)
  for ax, setting in zip(axes[0], settings):
    part = summary[summary.setting == setting]
    grid = part.pivot(index="attack", columns="defence", values=value)
    grid = grid.reindex(index=list(dict.fromkeys(part.attack)), columns=list(dict.fromkeys(part.defence)))
    image = ax.imshow(grid.to_numpy(np.float64), cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax)
    for i, attack in enumerate(grid.index):
      for j, defence in enumerate(grid.columns):
        v = grid.loc[attack, defence]
        text = "–" if not np.isfinite(v) else f"{v:.2f}"
        if with_ci and np.isfinite(v):
          row = part[(part.attack == attack) & (part.defence == defence)].iloc[0]
          text += f"\n[{row.final_reward_low:.2f}, {row.final_reward_high:.2f}]"
        light = np.isfinite(v) and image.norm(v) > 0.6   # dark text on the light end of the colour map
        ax.text(j, i, text, ha="center", va="center", fontsize=7, color="k" if light else "w")
    ax.set_xticks(range(len(grid.columns)), grid.columns, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(grid.index)), grid.index, fontsize=8)
    ax.set_title(setting, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
  fig.suptitle(title)
  fig.tight_layout()
  return fig


def reward_panels(results, level: float):
  """One panel per (setting, defence), one line per attack: E_{p_t}[r] with its seed band."""
  panels: dict = {}
  for (setting, attack, defence), res in results.items():
    if setting != MINORITY:
      panels.setdefault(f"{setting} · {defence}", {})[attack] = res
  return _cells.band_panels(panels, "expected_reward", "E_{p_t}[r]", "expected true reward per iteration", level)


def minority_bars(summary: pd.DataFrame):
  part = summary[summary.setting == MINORITY]
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
  axes[0].bar(part.defence, part.minority_mass)
  axes[0].set_ylabel("final mass on the minority's modes")
  flagged = part.flagged_share.to_numpy(np.float64)
  axes[1].bar(part.defence, np.nan_to_num(flagged))
  for j, v in enumerate(flagged):
    if not np.isfinite(v):
      axes[1].text(j, 0, "does not flag", ha="center", va="bottom", fontsize=7, rotation=90)
  axes[1].set_ylabel("share of honest pairs flagged")
  for ax in axes:
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    ax.grid(alpha=0.3, axis="y")
  fig.suptitle("honest heterogeneous users, no attacker")
  fig.tight_layout()
  return fig


def write_outputs(results, seconds, config, workdir: str, level: float = 0.95) -> dict:
  os.makedirs(workdir, exist_ok=True)
  files.write_csv(os.path.join(workdir, "metrics.csv"), _cells.metrics_frame(results, COLUMNS))
  files.write_json(os.path.join(workdir, "metrics.json"),
                   {"seeds": list(range(config.seeds)), "metrics": _cells.nested_metrics(results)})
  summary = summary_frame(results, seconds, config, level)
  files.write_csv(os.path.join(workdir, "summary.csv"), summary)
  out = {"cells": summary.to_dict(orient="records"), "table": pivot(summary),
         "total_seconds": float(sum(seconds.values())), "level": level, "config": scl.configs.set_keywords(config)}
  files.write_json(os.path.join(workdir, "summary.json"), out)

  files.save_figure(os.path.join(workdir, "heatmap.png"),
                    heatmaps(summary, "final_reward_mean", "final expected true reward E_{p_T}[r] "
                             f"(mean [{int(round(level * 100))}% CI] over seeds)", with_ci=True))
  attacked = summary[(summary.attack != "none") & summary.flag_recall.notna()]
  if len(attacked):
    long = pd.concat([attacked.assign(setting=attacked.setting + " · precision", value=attacked.flag_precision),
                      attacked.assign(setting=attacked.setting + " · recall", value=attacked.flag_recall)])
    files.save_figure(os.path.join(workdir, "detection.png"),
                      heatmaps(long, "value", "flip detection (mean over seeds and steps)", cmap="magma",
                               vmin=0.0, vmax=1.0))
  files.save_figure(os.path.join(workdir, "reward.png"), reward_panels(results, level))
  if (summary.setting == MINORITY).any():
    files.save_figure(os.path.join(workdir, "minority.png"), minority_bars(summary))
  plt.close("all")
  return out


def print_tables(out: dict) -> None:
  summary = pd.DataFrame(out["cells"])
  pct = int(round(out["level"] * 100))
  for setting in dict.fromkeys(summary.setting):
    part = summary[summary.setting == setting]
    cell = lambda r: f"{r.final_reward_mean:.2f} [{r.final_reward_low:.2f}, {r.final_reward_high:.2f}]"
    table = part.assign(text=[cell(r) for r in part.itertuples()]).pivot(index="attack", columns="defence",
                                                                         values="text")
    print(f"final expected true reward, {setting} (mean [{pct}% CI] over seeds)")
    print(table.reindex(index=list(dict.fromkeys(part.attack)), columns=list(dict.fromkeys(part.defence)))
          .to_string())
  flags_ = summary[summary.flag_recall.notna() | summary.flagged_share.notna()]
  if len(flags_):
    print("detection (mean over seeds and steps): precision / recall / share flagged")
    print(flags_[["setting", "attack", "defence", "flag_precision", "flag_recall", "flagged_share"]]
          .round(3).to_string(index=False))
  if (summary.setting == MINORITY).any():
    print("honest minority: final mass on its modes, share of honest pairs flagged")
    print(summary[summary.setting == MINORITY][["defence", "minority_mass", "flagged_share",
                                                "final_reward_mean"]].round(3).to_string(index=False))
  print("seconds per cell: " + ", ".join(f"{s:.0f}" for s in summary.seconds))


def run(config, workdir: str, level: float = 0.95) -> dict:
  """The binary's work: run every cell, write the tables and figures into ``workdir``, return the summary."""
  _cells.check_level(level)
  results, seconds = run_cells(config, workdir)
  return write_outputs(results, seconds, config, workdir, level)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax
  logging.info("%d devices: %s", jax.device_count(), jax.devices())
  out = run(_CONFIG.value, _WORKDIR.value, _LEVEL.value)
  print_tables(out)
  print(f"{out['total_seconds']:.0f} s in all; wrote metrics, summary and plots to "
        f"{os.path.abspath(_WORKDIR.value)}")


if __name__ == "__main__":
  app.run(main)
