"""experiments/exact_dynamics.py on its ``:quick`` preset: the files it writes and one value checked by hand."""

import json
import math
import os

import numpy as np
import pandas as pd
import pytest

import _binaries




binary = _binaries.load("exact_dynamics_binary", "experiments", "exact_dynamics.py")
configs = _binaries.load("exact_dynamics_config", "experiments", "configs", "exact_dynamics.py")


def test_quick_run_writes_tables_and_figures(tmp_path):
  config = configs.get_config("quick")
  summary = binary.run(config, str(tmp_path))

  names = {"metrics.csv", "metrics.json", "summary.json"}
  for support in ("cifar10", "gaussian8"):
    names |= {f"{support}_{what}.png" for what in ("expected_reward", "proportions", "bounds", "phi_sweep")}
  assert names <= set(os.listdir(tmp_path))
  for name in names:
    assert os.path.getsize(tmp_path / name) > 0

  table = pd.read_csv(tmp_path / "metrics.csv")
  T, nK, nlam, nphi = config.iterations, len(config.K), len(config.lam), config.n_phi
  assert len(table) == 2 * (nK * nlam + nphi) * (T + 1)
  records = json.loads((tmp_path / "metrics.json").read_text())
  assert len(records) == len(table)

  # K = inf, λ = inf, one exact step on the 10-class support is the tilt p e^r / E_p[e^r].
  p0, r = np.full(10, 0.1), 10.0 - np.arange(10.0)
  tilt = p0 * np.exp(r) / np.sum(p0 * np.exp(r))
  row = table[(table.support == "cifar10") & (table.sweep == "grid") & np.isinf(table.K) & np.isinf(table.lam)
              & (table.iteration == 1)]
  assert len(row) == 1
  row = row.iloc[0]
  np.testing.assert_allclose([row[f"group_props_{j}"] for j in range(10)], tilt, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(row["expected_reward"], np.sum(tilt * r), rtol=1e-5)
  np.testing.assert_allclose(row["exp_reward"], np.sum(tilt * np.exp(r)), rtol=1e-4)
  # K = 1 keeps p_0; the φ sweep at φ = 1 with r~ = -r lowers the reward; both supports are in summary.json.
  k1 = table[(table.support == "cifar10") & (table.sweep == "grid") & (table.K == 1)]
  np.testing.assert_allclose(k1.expected_reward, 5.5, rtol=1e-5)
  on_disk = json.loads((tmp_path / "summary.json").read_text())
  assert math.isclose(on_disk["cifar10"]["initial_expected_reward"], 5.5, rel_tol=1e-6)
  assert on_disk["cifar10"]["phi_sweep_final_expected_reward"]["1"] < 5.5
  assert summary["gaussian8"]["n_atoms"] == config.n_atoms
  assert summary["cifar10"]["monitors"]["lemma22_holds"]["violated"] == 0


@pytest.mark.parametrize("field,value,match", [("K", (0.0, 2.0), r"K=\[0\.0, 2\.0\]"),
                                               ("lam", (-1.0,), r"lam=\[-1\.0\]"),
                                               ("phi_K", 0.5, "phi_K=0.5"), ("n_phi", 0, "n_phi=0"),
                                               ("iterations", 0, "iterations=0: must be >= 1")])
def test_invalid_config_fails_before_compute(tmp_path, field, value, match):
  config = configs.get_config("quick")
  config[field] = value
  workdir = tmp_path / "out"
  with pytest.raises(ValueError, match=match):
    binary.run(config, str(workdir))
  assert not workdir.exists()
