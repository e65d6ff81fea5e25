r"""Adversarial curation (Wei & Zhang 2025) on Gaussian-8: every attack and recipe, over seeds.

    python experiments/adversarial.py --workdir=runs/adversarial \
        [--config=experiments/configs/adversarial.py[:quick|:code_toy]] [--config.seeds=5]

For each real-data setting in ``config.settings`` (name -> λ), each attack in ``config.attacks`` and, for the
gradient attack, each recipe in ``config.recipes`` (``paper`` | ``robust``), runs the loop with a learned
Bradley–Terry reward curating for the platform over ``range(config.seeds)`` seeds in one ``scl.sweep`` call
(a "cell"). The other attacks do not depend on the recipe: they run once (recipe ``any`` in the tables) and
are shown in every recipe's column and panel. Writes into ``--workdir``:
  metrics.csv    long table: one row per (setting, attack, recipe, seed, iteration), every metric a column
  metrics.json   {setting: {attack: {recipe: {metric: [seed][iteration]...}}}} and the seeds
  summary.csv    one row per cell: final expected true reward mean and Student-t interval over seeds
                 (``level``), the fraction of (iteration, seed) pairs in which the robust recipe kept the
                 dist heuristic's flips (``kept_dist_fraction``; NaN for other attacks), seconds per cell
                 (including compilation)
  summary.json   the same, the pivot ``table`` {setting: {attack: {recipe: {mean, low, high}}}} with the
                 recipe-independent attacks in every recipe column, the config and the total seconds
  reward.png     expected true reward per iteration, one line per attack with seed bands, one panel per
                 setting × recipe
  modes.png      final mode proportions (mean over seeds) per attack, one panel per setting × recipe
                 (penalised modes hatched); only for a data set with modes (Gaussian-8)
  covariance.png corr(e^r, e^{R~}) (the platform's learned reward against the users') per iteration, bands
  cells/         each finished cell's metrics, written as it finishes: a rerun with the same workdir loads the
                 unchanged cells instead of running them again (``experiments/_cells.py``)
λ, κ and α are traced, so cells that differ only in the setting reuse one compiled program. On a CPU-only
machine the CLI lays the seeds over the cores as XLA devices (as ``experiments/sweep.py`` does).
"""

from __future__ import annotations

import os
import sys
import types

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
from scl import plotting  # noqa: E402
from scl import task as task_lib  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402  (Agg, selected by scl.plotting)

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "adversarial.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment configuration file.",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", "runs/adversarial", "Where to write metrics and plots.")
_LEVEL = flags.DEFINE_float("level", 0.95, "Confidence level of the intervals over seeds.")

_BINARY_FIELDS = ("seeds", "attacks", "recipes", "settings")
ANY = "any"   # the recipe label of attacks that do not depend on the recipe
RECIPE_ATTACKS = ("gradient", "gradient_adaptive")   # the attacks that take an attack_recipe
COLUMNS = ("setting", "attack", "recipe")   # a cell's key


def cells(config) -> dict[tuple[str, str, str], scl.Config]:
  """(setting, attack, recipe) -> validated Config; every combination is built before any compute."""
  make = scl.configs.from_flags(config, _BINARY_FIELDS)  # keywords left None keep the builder's defaults
  _cells.check_nonempty(config, "attacks", "settings")
  if not len(config.recipes):  # the tables and plots have a column or panel per recipe, even without a gradient
    dropped = [a for a in config.attacks if a in RECIPE_ATTACKS]
    raise ValueError("invalid config: recipes is empty" + (f", so the attacks {dropped} would not run" if dropped
                     else ": the tables and plots have one panel per recipe") + "; give at least one of "
                     f"{tuple(scl.attacks.RECIPES)}")
  out = {}
  settings = sorted(config.settings.items(), key=lambda kv: -float(kv[1]))   # fully synthetic first
  for setting, lam in settings:
    for attack in config.attacks:
      recipes = tuple(config.recipes) if attack in RECIPE_ATTACKS else (ANY,)
      for recipe in recipes:
        extra = {} if recipe == ANY else {"attack_recipe": recipe}
        out[(setting, attack, recipe)] = make(attack=attack, lam=float(lam), **extra)
  scl.configs.check_runs(make)  # a top-level lam or attack every cell replaces
  return out


def run_cells(config, workdir: str | None = None) -> tuple[dict, dict]:
  """Run every cell over ``range(config.seeds)``: ({cell: SweepResult}, {cell: seconds}); with ``workdir``,
  each finished cell is saved there and an unchanged cell saved by an earlier run is loaded, not run again."""
  return _cells.run_cells(cells(config), config.seeds, "adversarial cells", workdir)


def summary_frame(results, seconds, level: float) -> pd.DataFrame:
  rows = []
  for cell, res in results.items():
    ci = res.final().mean_ci("expected_reward", level)
    rows.append(dict(zip(COLUMNS, cell), final_reward_mean=float(ci.mean),
                     final_reward_low=float(ci.low), final_reward_high=float(ci.high), n_seeds=ci.n,
                     level=level, initial_reward=float(np.mean(res.metrics["expected_reward"][..., 0])),
                     n_flips=_cells.step_mean(res, "n_flips"),
                     kept_dist_fraction=_cells.step_mean(res, "attack_kept_dist"),
                     seconds=seconds[cell]))
  return pd.DataFrame(rows)


def pivot(summary: pd.DataFrame, recipes) -> dict:
  """{setting: {attack: {recipe: {mean, low, high, kept_dist_fraction}}}}, shared runs in every column."""
  table: dict = {}
  for row in summary.itertuples():
    for recipe in (recipes if row.recipe == ANY else (row.recipe,)):
      table.setdefault(row.setting, {}).setdefault(row.attack, {})[recipe] = dict(
          mean=row.final_reward_mean, low=row.final_reward_low, high=row.final_reward_high,
          kept_dist_fraction=row.kept_dist_fraction, shared=row.recipe == ANY)
  return table


def _panels(results, recipes) -> dict[str, dict[str, scl.SweepResult]]:
  """'setting · recipe' -> {attack: result}: recipe-independent attacks appear in every recipe's panel."""
  panels: dict = {}
  for (setting, attack, recipe), res in results.items():
    for r in (recipes if recipe == ANY else (recipe,)):
      panels.setdefault(f"{setting} · {r} recipe", {})[attack] = res
  return panels


def write_outputs(results, seconds, config, workdir: str, level: float = 0.95) -> dict:
  recipes = tuple(config.recipes)
  os.makedirs(workdir, exist_ok=True)
  files.write_csv(os.path.join(workdir, "metrics.csv"), _cells.metrics_frame(results, COLUMNS))
  files.write_json(os.path.join(workdir, "metrics.json"),
                   {"seeds": list(range(config.seeds)), "metrics": _cells.nested_metrics(results)})
  summary = summary_frame(results, seconds, level)
  files.write_csv(os.path.join(workdir, "summary.csv"), summary)
  out = {"cells": summary.to_dict(orient="records"), "table": pivot(summary, recipes),
         "total_seconds": float(sum(seconds.values())), "level": level, "config": scl.configs.set_keywords(config)}
  files.write_json(os.path.join(workdir, "summary.json"), out)

  panels = _panels(results, recipes)
  files.save_figure(os.path.join(workdir, "reward.png"),
                    _cells.band_panels(panels, "expected_reward", "E_{p_t}[r] (true reward)",
                                "expected true reward under label-flip attacks", level))
  files.save_figure(os.path.join(workdir, "covariance.png"),
                    _cells.band_panels(panels, "corr_r_learned", "corr(e^r, e^{R~})",
                                "alignment of the platform's learned reward with the users'", level))
  first = next(iter(results.values()))
  task, data = task_lib.build(first.config)
  if data.modes is not None:  # a data set without modes (two moons, points) has no mode proportions to show
    mode_rewards = np.asarray(task.reward(data.reward, data.modes))
    rewarded = [j for j in range(mode_rewards.shape[0]) if mode_rewards[j] > -1e-6]
    means = {name: {a: types.SimpleNamespace(metrics={"mode_props": r.metrics["mode_props"].mean(0)})
                    for a, r in by.items()} for name, by in panels.items()}
    files.save_figure(os.path.join(workdir, "modes.png"), plotting.final_mode_bars(means, rewarded))
  plt.close("all")
  return out


def print_table(out: dict, recipes) -> None:
  for setting, by_attack in out["table"].items():
    print(f"final expected true reward, {setting} (mean [{int(round(out['level'] * 100))}% CI] over seeds)")
    rows = {a: {r: f"{v[r]['mean']:.3f} [{v[r]['low']:.3f}, {v[r]['high']:.3f}]" for r in recipes}
            for a, v in by_attack.items()}
    print(pd.DataFrame(rows).T.to_string())
  kept = [c for c in out["cells"] if c["attack"] in RECIPE_ATTACKS]
  for c in kept:
    print(f"{c['setting']} {c['attack']}/{c['recipe']}: kept dist's flips in {c['kept_dist_fraction']:.0%} of "
          f"attack steps")


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
  print_table(out, tuple(_CONFIG.value.recipes))
  print(f"{out['total_seconds']:.0f} s in all; wrote metrics, summary and plots to "
        f"{os.path.abspath(_WORKDIR.value)}")


if __name__ == "__main__":
  app.run(main)
