r"""Adversarial curation (Wei & Zhang 2025) on Gaussian-8: every attack, with and without real data.

    python experiments/adversarial.py --workdir=runs/adversarial [--config=experiments/configs/adversarial.py:quick]

For each attack in ``config.attacks`` and each real-data setting in ``config.settings`` (a λ value) runs the
loop with a learned Bradley–Terry reward curating for the platform, and writes into ``--workdir``:
  metrics.csv, metrics.json   one row per (setting, attack, iteration)
  reward.png                  expected true reward per iteration, one panel per setting, one line per attack
  modes.png                   final mode proportions per attack and setting (penalised modes hatched)
  covariance.png              correlation of e^r with e^{R~} (the platform's learned reward) per iteration
Each attack is compiled once: λ is a traced value, so the settings reuse the program.
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

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "adversarial.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment configuration file.",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", "runs/adversarial", "Where to write metrics and plots.")

_BINARY_FIELDS = ("seed", "attacks", "settings")


def run_grid(config) -> dict[str, dict[str, scl.Result]]:
  base = {k: v for k, v in config.to_dict().items() if k not in _BINARY_FIELDS}
  builder = getattr(scl.configs, base.pop("dataset"))
  # Validate every combination before any compute.
  cfgs = {(s, a): builder(**{**base, "attack": a, "lam": lam})
          for s, lam in config.settings.items() for a in config.attacks}
  results: dict[str, dict[str, scl.Result]] = {s: {} for s in config.settings}
  from tqdm.auto import tqdm
  for (setting, attack), cfg in tqdm(cfgs.items(), desc="adversarial runs"):
    logging.info("running %s / %s", setting, attack)
    results[setting][attack] = scl.run(cfg, seed=config.seed)
  return results


def write_outputs(results, workdir: str) -> None:
  frames = []
  for setting, by_attack in results.items():
    for attack, res in by_attack.items():
      frame = res.table()
      frame.insert(0, "attack", attack)
      frame.insert(0, "setting", setting)
      frames.append(frame)
  files.write_csv(os.path.join(workdir, "metrics.csv"), pd.concat(frames, ignore_index=True))
  files.write_json(os.path.join(workdir, "metrics.json"),
                    {s: {a: res.metrics for a, res in by.items()} for s, by in results.items()})
  files.save_figure(os.path.join(workdir, "reward.png"),
                     plotting.curve_panels(results, "expected_reward", "E_{p_t}[r] (true reward)",
                                           "expected true reward under label-flip attacks"))
  files.save_figure(os.path.join(workdir, "covariance.png"),
                     plotting.curve_panels(results, "corr_r_learned", "corr(e^r, e^{R~})",
                                           "alignment of the platform's learned reward with the users'"))
  first = next(iter(next(iter(results.values())).values()))
  task, data = task_lib.build(first.config)
  mode_rewards = np.asarray(task.reward(data.reward, data.modes))
  rewarded = [j for j in range(mode_rewards.shape[0]) if mode_rewards[j] > -1e-6]
  files.save_figure(os.path.join(workdir, "modes.png"), plotting.final_mode_bars(results, rewarded))
  final = pd.DataFrame({s: {a: float(res.metrics["expected_reward"][-1]) for a, res in by.items()}
                        for s, by in results.items()})
  print("final expected true reward (rows: attack, columns: real-data setting)")
  print(final.to_string(float_format=lambda v: f"{v:.3f}"))
  print(f"wrote metrics.csv, metrics.json and plots to {os.path.abspath(workdir)}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  os.makedirs(_WORKDIR.value, exist_ok=True)
  write_outputs(run_grid(_CONFIG.value), _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
