"""experiments/adversarial.py on a tiny config: the files it writes, its confidence intervals recomputed from
the per-seed values in metrics.csv, the attack budget floor(κ n_pairs) and the recipes' kept-dist fractions."""

import json
import math
import os

import numpy as np
import pandas as pd
from scipy import stats

import _binaries

binary = _binaries.load("adversarial_binary", "experiments", "adversarial.py")
configs = _binaries.load("adversarial_config", "experiments", "configs", "adversarial.py")


def _tiny_config():
  return _binaries.tiny(configs.get_config("quick"), kappa=0.2, seeds=2,
                        attacks=("none", "random", "gradient"), recipes=("paper", "robust"),
                        settings={"synthetic": float("inf")})


def test_tiny_run_tables_intervals_and_budget(tmp_path):
  config = _tiny_config()
  out = binary.run(config, str(tmp_path), level=0.95)

  names = {"metrics.csv", "metrics.json", "summary.csv", "summary.json", "reward.png", "modes.png",
           "covariance.png"}
  assert names <= set(os.listdir(tmp_path))
  for name in names:
    assert os.path.getsize(tmp_path / name) > 0

  T, n_seeds = config.iterations, config.seeds
  metrics = pd.read_csv(tmp_path / "metrics.csv")
  summary = pd.read_csv(tmp_path / "summary.csv")
  cells = {("synthetic", "none", "any"), ("synthetic", "random", "any"), ("synthetic", "gradient", "paper"),
           ("synthetic", "gradient", "robust")}
  assert set(map(tuple, summary[["setting", "attack", "recipe"]].values)) == cells
  assert len(metrics) == len(cells) * n_seeds * (T + 1)
  assert set(metrics.seed) == set(range(n_seeds))

  # Final reward mean and Student-t 95% interval, recomputed from the per-seed rows of metrics.csv.
  for row in summary.itertuples():
    final = metrics[(metrics.setting == row.setting) & (metrics.attack == row.attack)
                    & (metrics.recipe == row.recipe) & (metrics.iteration == T)]
    values = final.sort_values("seed").expected_reward.to_numpy(np.float64)
    assert len(values) == n_seeds == row.n_seeds
    mean = values.mean()
    half = stats.t.ppf(0.975, n_seeds - 1) * values.std(ddof=1) / math.sqrt(n_seeds)
    np.testing.assert_allclose(row.final_reward_mean, mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(row.final_reward_low, mean - half, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(row.final_reward_high, mean + half, rtol=1e-6, atol=1e-6)
    assert row.final_reward_low <= row.final_reward_mean <= row.final_reward_high
    assert row.seconds > 0

  # The attacker flips exactly floor(κ n_pairs) labels at every attacked step; benign curation flips none.
  steps = metrics[metrics.iteration < T]
  budget = math.floor(config.kappa * config.n_pairs)
  assert (steps[steps.attack != "none"].n_flips == budget).all()
  assert (steps[steps.attack == "none"].n_flips == 0).all()

  # The paper recipe never keeps the dist heuristic's flips; the robust recipe's fraction is a frequency.
  grad = summary[summary.attack == "gradient"].set_index("recipe")
  assert grad.loc["paper", "kept_dist_fraction"] == 0.0
  assert 0.0 <= grad.loc["robust", "kept_dist_fraction"] <= 1.0
  paper_steps = steps[(steps.attack == "gradient") & (steps.recipe == "paper")]
  assert (paper_steps.attack_kept_dist == 0).all()
  robust_steps = steps[(steps.attack == "gradient") & (steps.recipe == "robust")]
  np.testing.assert_allclose(robust_steps.attack_kept_dist.mean(), grad.loc["robust", "kept_dist_fraction"])
  assert summary[summary.attack != "gradient"].kept_dist_fraction.isna().all()

  # summary.json: the recipe-independent attacks appear in both recipe columns with the same numbers.
  on_disk = json.loads((tmp_path / "summary.json").read_text())
  table = on_disk["table"]["synthetic"]
  for attack in ("none", "random"):
    assert table[attack]["paper"] == table[attack]["robust"]
    assert table[attack]["paper"]["shared"] is True
  assert table["gradient"]["paper"]["shared"] is False
  assert out["table"]["synthetic"]["gradient"]["robust"]["mean"] == table["gradient"]["robust"]["mean"]
  records = json.loads((tmp_path / "metrics.json").read_text())
  assert records["seeds"] == list(range(n_seeds))
  assert np.asarray(records["metrics"]["synthetic"]["gradient"]["paper"]["expected_reward"]).shape == (
      n_seeds, T + 1)
