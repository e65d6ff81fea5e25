r"""Run the curated self-consuming loop and write metrics and plots into a work directory.

    python experiments/curated_loop.py --workdir=runs/g8 \
        --config=experiments/configs/gaussian8.py --config.K=4 --config.model=flow

Writes into ``--workdir``:
  metrics.csv, metrics.json   one row per (variant, iteration): expected_reward, reward_var, exp_reward,
                              mode proportions, energy distance (and KL on a finite support)
  reward.png                  expected true reward against iteration, one line per variant
  distance.png                distance to p_data (energy distance; KL for the categorical model)
  modes.png                   mode proportions over iterations (Gaussian-8)
  samples_<variant>.png       samples at several iterations, coloured by reward
  <variant>/checkpoint.msgpack  per-iteration checkpoints: rerunning with the same workdir resumes.
"""

from __future__ import annotations

import os
import sys

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

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "gaussian8.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment configuration file.",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", "runs/curated_loop", "Where to write metrics, plots, checkpoints.")

_BINARY_FIELDS = ("seed", "checkpoint_every", "variants")


def slug(name: str) -> str:
  """The file name of a variant, from its name in the results (``"<variant> (K=..., λ=..., φ=...)"``)."""
  return files.slug(name.rsplit(" (K=", 1)[0])


def build_configs(config) -> dict[str, scl.Config]:
  """One validated scl Config per variant (fails before any compute on a bad value)."""
  make = scl.configs.from_flags(config, _BINARY_FIELDS)  # keywords left None keep the builder's defaults
  variants = config.get("variants") or {"run": {}}
  scl.loop.check_run_args(config.seed, config.checkpoint_every)
  cfgs = {}
  files.unique_slugs(variants)  # their checkpoints and sample plots would share a file name
  for name, overrides in variants.items():
    cfg = make(**dict(overrides))
    cfgs[f"{name} (K={cfg.hyper.K}, λ={cfg.hyper.lam:g}, φ={cfg.hyper.phi:g})"] = cfg
  scl.configs.check_runs(make)  # a top-level setting every variant replaces (lam)
  return cfgs


def train_and_evaluate(config, workdir: str) -> dict[str, scl.Result]:
  """Run every variant of ``config`` (resuming from checkpoints) and write tables and figures."""
  cfgs = build_configs(config)
  results = {}
  for name, cfg in cfgs.items():
    logging.info("running %s: model=%s %s", name, cfg.model.name, cfg.hyper)
    results[name] = scl.run(cfg, seed=config.seed, workdir=os.path.join(workdir, slug(name)),
                            checkpoint_every=config.checkpoint_every)
  write_outputs(results, workdir)
  return results


def write_outputs(results: dict[str, scl.Result], workdir: str) -> None:
  frames = []
  for name, res in results.items():
    frame = res.table()
    frame.insert(0, "variant", name)
    frames.append(frame)
  table = pd.concat(frames, ignore_index=True)
  files.write_csv(os.path.join(workdir, "metrics.csv"), table)
  files.write_json(os.path.join(workdir, "metrics.json"),
                    {name: {"config": res.config.describe(), "seed": res.seed, "metrics": res.metrics}
                     for name, res in results.items()})

  files.save_figure(os.path.join(workdir, "reward.png"),
                     plotting.metric_curves(results, "expected_reward", "E_{p_t}[r]",
                                            "expected true reward of the model"))
  task_of = {name: task_lib.build(res.config) for name, res in results.items()}
  # the exact KL where every variant has one (a finite-support model), else the energy distance all report
  distance = "kl_to_data" if all("kl_to_data" in res.metrics for res in results.values()) else "energy_distance"
  files.save_figure(os.path.join(workdir, "distance.png"),
                     plotting.metric_curves(results, distance, distance.replace("_", " "),
                                            "distance of p_t to p_data"))
  with_modes = {name: res for name, res in results.items() if "mode_props" in res.metrics}
  if with_modes:
    rewarded = {}
    for name in with_modes:  # each variant's own reward (variants may set another x_star or reward)
      task, data = task_of[name]
      rewards = np.asarray(task.reward(data.reward, data.modes))
      rewarded[name] = [j for j in range(rewards.shape[0]) if rewards[j] > -1e-6]
    first_rewarded = next(iter(rewarded.values()))
    same = all(r == first_rewarded for r in rewarded.values())
    files.save_figure(os.path.join(workdir, "modes.png"),
                      plotting.mode_proportions(with_modes, first_rewarded if same else rewarded))
  for name, res in results.items():
    task, data = task_of[name]
    T = res.samples.shape[0] - 1
    steps = sorted({0, T // 4, T // 2, (3 * T) // 4, T})
    r = np.asarray(task.reward(data.reward, res.samples.reshape(-1, res.samples.shape[-1])))
    r = r.reshape(res.samples.shape[:2])
    files.save_figure(os.path.join(workdir, f"samples_{slug(name)}.png"),
                       plotting.sample_scatter(res.samples, r, steps, title=name))
  summary = {name: {"expected_reward_first": float(res.metrics["expected_reward"][0]),
                    "expected_reward_last": float(res.metrics["expected_reward"][-1]),
                    f"{distance}_last": float(res.metrics[distance][-1])} for name, res in results.items()}
  logging.info("summary: %s", summary)
  print(pd.DataFrame(summary).T.to_string(float_format=lambda v: f"{v:.4f}"))
  print(f"wrote metrics.csv, metrics.json and plots to {os.path.abspath(workdir)}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
