"""experiments/defences.py on a tiny config: the files it writes, its intervals and detection rates recomputed
from the per-seed values in metrics.csv, the attack budget, and the honest-minority scenario."""

import math
import os

import numpy as np
import pandas as pd
from scipy import stats

import _binaries

binary = _binaries.load("defences_binary", "experiments", "defences.py")
configs = _binaries.load("defences_config", "experiments", "configs", "defences.py")


def _tiny_config():
  return _binaries.tiny(configs.get_config("quick"), seeds=3, attacks=("none", "dist"),
                        defences=("none", "outlier"), settings={"synthetic": float("inf")})


def test_tiny_run_tables_intervals_detection_and_minority(tmp_path):
  config = _tiny_config()
  out = binary.run(config, str(tmp_path), level=0.95)

  names = {"metrics.csv", "metrics.json", "summary.csv", "summary.json", "heatmap.png", "detection.png",
           "reward.png", "minority.png"}
  assert names <= set(os.listdir(tmp_path))
  for name in names:
    assert os.path.getsize(tmp_path / name) > 0

  T, n_seeds = config.iterations, config.seeds
  metrics = pd.read_csv(tmp_path / "metrics.csv")
  summary = pd.read_csv(tmp_path / "summary.csv")
  cells = {(s, a, d) for s in ("synthetic",) for a in ("none", "dist") for d in ("none", "outlier")}
  cells |= {("minority", "none", "none"), ("minority", "none", "outlier")}
  assert set(map(tuple, summary[["setting", "attack", "defence"]].values)) == cells
  assert len(metrics) == len(cells) * n_seeds * (T + 1)

  for row in summary.itertuples():
    rows = metrics[(metrics.setting == row.setting) & (metrics.attack == row.attack)
                   & (metrics.defence == row.defence)]
    values = rows[rows.iteration == T].sort_values("seed").expected_reward.to_numpy(np.float64)
    mean = values.mean()
    half = stats.t.ppf(0.975, n_seeds - 1) * values.std(ddof=1) / math.sqrt(n_seeds)
    np.testing.assert_allclose([row.final_reward_mean, row.final_reward_low, row.final_reward_high],
                               [mean, mean - half, mean + half], rtol=1e-6, atol=1e-6)
    assert row.seconds > 0
    assert row.eps == (0.5 if row.defence == "outlier" else 0.0)
    steps = rows[rows.iteration < T]
    if row.defence == "outlier":
      # detection rates: the mean over seeds and steps of the per-step rates in metrics.csv
      np.testing.assert_allclose(row.flagged_share, steps.n_flagged.mean() / config.n_pairs, rtol=1e-6)
      if row.attack == "dist":
        np.testing.assert_allclose(row.flag_recall, steps.flag_recall.mean(), rtol=1e-6)
        assert 0 <= row.flag_precision <= 1 and 0 <= row.flag_recall <= 1
      else:
        assert np.isnan(row.flag_recall)  # nothing flipped: recall undefined, every flag a false alarm
    else:
      assert np.isnan(row.flag_precision) and np.isnan(row.flag_recall)
    budget = math.floor(config.kappa * config.n_pairs) if row.attack == "dist" else 0
    assert (steps.n_flips == budget).all()

  # the minority's modes on Gaussian-8 (target -7): the two neighbours of the worst mode, 3 and 5
  assert binary.minority_modes(binary.cells(config)[("minority", "none", "none")], -7.0) == [3, 5]
  minority = summary[summary.setting == "minority"].set_index("defence")
  for defence in ("none", "outlier"):
    rows = metrics[(metrics.setting == "minority") & (metrics.defence == defence) & (metrics.iteration == T)]
    np.testing.assert_allclose(minority.loc[defence, "minority_mass"],
                               (rows.mode_props_3 + rows.mode_props_5).mean(), rtol=1e-6)
  assert out["table"]["synthetic"]["dist"]["outlier"]["mean"] == summary[
      (summary.attack == "dist") & (summary.defence == "outlier") & (summary.setting == "synthetic")
  ].final_reward_mean.item()
