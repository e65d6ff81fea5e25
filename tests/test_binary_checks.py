"""The experiment binaries check their own fields before any compute, and run on data sets without modes."""

import os

import numpy as np

import ml_collections
import pytest

import _binaries


def _no_compute(*args, **kwargs):
  pytest.fail("computed before the check")


@pytest.mark.parametrize("name", ["adversarial", "defences"])
def test_attack_binaries_check_the_level_before_compute(name, tmp_path, monkeypatch):
  configs = _binaries.load(f"{name}_config_checks", "experiments", "configs", f"{name}.py")
  binary = _binaries.load(f"{name}_binary_checks", "experiments", f"{name}.py")
  monkeypatch.setattr(binary, "run_cells", _no_compute)
  for level in (1.5, 0.0, 1.0):
    with pytest.raises(ValueError, match=rf"level={level!r}: the confidence level must lie in \(0, 1\)"):
      binary.run(_binaries.tiny(configs.get_config("quick"), seeds=1), str(tmp_path), level=level)
  assert not os.listdir(tmp_path)


def test_defences_need_modes_and_an_attacked_step_before_compute():
  configs = _binaries.load("defences_config_checks", "experiments", "configs", "defences.py")
  binary = _binaries.load("defences_binary_checks", "experiments", "defences.py")
  with pytest.raises(ValueError, match="dataset='two_moons' has no modes"):
    binary.cells(_binaries.tiny(configs.get_config("quick"), dataset="two_moons"))
  with pytest.raises(ValueError, match="iterations must be >= 1"):
    binary.cells(_binaries.tiny(configs.get_config("quick"), iterations=0))


def test_adversarial_on_a_data_set_without_modes_writes_all_but_the_mode_plot(tmp_path):
  configs = _binaries.load("adversarial_config_moons", "experiments", "configs", "adversarial.py")
  binary = _binaries.load("adversarial_binary_moons", "experiments", "adversarial.py")
  config = _binaries.tiny(configs.get_config("quick"), dataset="two_moons", seeds=2, attacks=("none", "random"),
                          settings={"synthetic": float("inf")})
  binary.run(config, str(tmp_path), level=0.9)
  names = set(os.listdir(tmp_path))
  assert {"metrics.csv", "metrics.json", "summary.csv", "summary.json", "reward.png", "covariance.png"} <= names
  assert "modes.png" not in names


def test_variants_whose_file_names_collide_and_bad_image_fields_fail_before_compute():
  configs = _binaries.load("gaussian8_config_checks", "experiments", "configs", "gaussian8.py")
  loop_binary = _binaries.load("curated_loop_checks", "experiments", "curated_loop.py")
  config = configs.get_config()
  config.variants = {"Mixed run": {"lam": 0.25}, "mixed-run": {"lam": 1.0}}
  with pytest.raises(ValueError, match="variants 'Mixed run' and 'mixed-run' have the same file name 'mixed_run'"):
    loop_binary.build_configs(config)
  config.variants = {"a (x)": {"lam": 0.25}, "a (y)": {"lam": 1.0}}  # files named by the whole variant name
  assert sorted(loop_binary.slug(name) for name in loop_binary.build_configs(config)) == ["a_x", "a_y"]

  configs = _binaries.load("images_config_checks", "experiments", "configs", "images.py")
  images = _binaries.load("images_binary_checks", "experiments", "images.py")
  for field, value in (("grid_rows", 0), ("save_samples", -1)):
    config = configs.get_config("quick")
    setattr(config, field, value)
    with pytest.raises(ValueError, match=rf"{field}={value!r}: must be an integer >= 1"):
      images.build_configs(config)
  config = configs.get_config("quick")
  first = next(iter(config.variants))
  config.variants = {first: dict(config.variants[first]), first.upper(): dict(config.variants[first])}
  with pytest.raises(ValueError, match="have the same file name"):
    images.build_configs(config)


def test_the_adaptive_gradient_attack_has_a_cell_per_recipe():
  configs = _binaries.load("adversarial_config_recipes", "experiments", "configs", "adversarial.py")
  binary = _binaries.load("adversarial_binary_recipes", "experiments", "adversarial.py")
  config = _binaries.tiny(configs.get_config("quick"), attacks=("random", "gradient_adaptive"),
                          recipes=("paper", "robust"), settings={"synthetic": float("inf")})
  cells = binary.cells(config)
  assert set(cells) == {("synthetic", "random", "any"), ("synthetic", "gradient_adaptive", "paper"),
                        ("synthetic", "gradient_adaptive", "robust")}
  assert cells[("synthetic", "gradient_adaptive", "robust")].platform.attack_recipe == "robust"


def test_a_setting_the_binary_controls_per_run_is_refused_at_the_top_level():
  """``--config.lam=0.5`` was accepted and every cell or variant replaced it silently (adversarial and defences by
  their settings, curated_loop and images by their variants)."""
  cases = (("adversarial", "adversarial", "quick", "cells"), ("defences", "defences", "quick", "cells"),
           ("curated_loop", "gaussian8", "", "build_configs"), ("images", "images", "quick", "build_configs"))
  for binary_name, config_name, level, build in cases:
    configs = _binaries.load(f"{config_name}_config_clash", "experiments", "configs", f"{config_name}.py")
    binary = _binaries.load(f"{binary_name}_binary_clash", "experiments", f"{binary_name}.py")
    config = configs.get_config(level) if level else configs.get_config()
    getattr(binary, build)(config)  # the presets themselves are consistent
    config.lam = 0.5
    with pytest.raises(ValueError, match=r"lam=0.5: every run of this binary sets lam itself"):
      getattr(binary, build)(config)
  # a base setting that some variants vary is no error: the others run with it
  config = configs.get_config("quick")
  config.kappa = 0.4
  assert [cfg.hyper.kappa for cfg in binary.build_configs(config).values()].count(0.4) > 0


def test_empty_lists_and_bad_minority_fail_before_compute():
  """``recipes=()`` dropped the gradient attack's cells silently and the run crashed after computing the others
  (a division by zero in the band panels); empty attacks, settings or defences crashed after compute too."""
  configs = _binaries.load("adversarial_config_empty", "experiments", "configs", "adversarial.py")
  binary = _binaries.load("adversarial_binary_empty", "experiments", "adversarial.py")
  for field, value, message in (("recipes", (), r"recipes is empty, so the attacks \['gradient'\]"),
                                ("attacks", (), "attacks is empty"), ("settings", {}, "settings is empty")):
    config = _binaries.tiny(configs.get_config("quick"))
    setattr(config, field, value)
    with pytest.raises(ValueError, match=message):
      binary.cells(config)
  # without a gradient attack too: every table and plot has a panel per recipe (none: a division by zero)
  config = _binaries.tiny(configs.get_config("quick"))
  config.attacks, config.recipes = ("none", "random"), ()
  with pytest.raises(ValueError, match="recipes is empty: the tables and plots have one panel per recipe"):
    binary.cells(config)
  configs = _binaries.load("defences_config_empty", "experiments", "configs", "defences.py")
  binary = _binaries.load("defences_binary_empty", "experiments", "defences.py")
  for field, value, message in (("attacks", (), "attacks is empty"), ("defences", (), "defences is empty"),
                                ("settings", {}, "settings is empty")):
    config = _binaries.tiny(configs.get_config("quick"))
    setattr(config, field, value)
    with pytest.raises(ValueError, match=message):
      binary.cells(config)
  for share, target in ((-0.1, -7.0), (float("nan"), -7.0), (1.0, -7.0), (0.3, float("nan"))):
    config = _binaries.tiny(configs.get_config("quick"))
    config.minority.share, config.minority.target = share, target
    with pytest.raises(ValueError, match="minority="):
      binary.cells(config)
  # the label mode's name holds the parameters exactly: 0.3 and 0.3000004 are two modes (and two saved cells)
  assert binary.minority_label_mode(0.3, -7.0) != binary.minority_label_mode(0.3000004, -7.0)


def test_seed_and_checkpoint_every_fail_before_any_data_set_is_built(monkeypatch):
  configs = _binaries.load("images_config_seed", "experiments", "configs", "images.py")
  images = _binaries.load("images_binary_seed", "experiments", "images.py")
  monkeypatch.setattr(images.task_lib, "build", _no_compute)
  for field, value in (("seed", -1), ("checkpoint_every", 0)):
    config = configs.get_config("quick")
    setattr(config, field, value)
    with pytest.raises(ValueError, match=rf"invalid {field}={value!r}"):
      images.train_and_evaluate(config, "/nonexistent/never_written")


def test_grid_text_with_inf_the_exact_engine_and_the_nearest_lambda(monkeypatch):
  """``--config.grid.lam="(0.5, 1.0, inf)"`` reaches the binary as text (ml_collections cannot read inf in a
  tuple) and crashed with a message naming no field; the exact engine silently ran K-choice curation for a
  config with an attack or another curation; exact_dynamics drew λ = 0.5 as the "λ = ∞" panel of a grid
  without ∞ (|v - inf| is inf for every v, so the first value won)."""
  import scl
  assert scl.configs.flag_values("lam", "(0.5, 1.0, inf)") == [0.5, 1.0, float("inf")]
  assert scl.configs.flag_values("K", "[1, 2]") == [1.0, 2.0] and scl.configs.flag_values("K", 3) == [3.0]
  for bad in ("(0.5, x)", True, (1, True)):
    with pytest.raises(ValueError, match="invalid config: lam="):
      scl.configs.flag_values("lam", bad)
  configs = _binaries.load("sweep_config_checks", "experiments", "configs", "sweep.py")
  sweep = _binaries.load("sweep_binary_checks", "experiments", "sweep.py")
  config = configs.get_config("exact")
  config.grid = ml_collections.ConfigDict({"K": ("(1, 2)",), "lam": ("(1.0, inf)",)})  # as the flag parser passes
  config.iterations, config.n_atoms = 2, 64
  result = sweep.run_sweep(config)
  assert result.axes["lam"].tolist() == [1.0, float("inf")] and result.axes["K"].tolist() == [1, 2]
  monkeypatch.setattr(sweep.sweeps, "exact_sweep", _no_compute)
  for field, value in (("attack", "random"), ("curation", "luce_pool"), ("learned_reward", True),
                       ("learned_for", "malicious"), ("keep_samples", True)):
    bad = configs.get_config("exact")
    setattr(bad, field, value)
    with pytest.raises(ValueError, match="the exact engine models K-choice curation"):
      sweep.run_sweep(bad)
  exact_dynamics = _binaries.load("exact_dynamics_binary_checks", "experiments", "exact_dynamics.py")
  assert exact_dynamics._nearest([0.5, 1.0, 4.0], float("inf")) == 4.0
  assert exact_dynamics._nearest([0.5, float("inf")], float("inf")) == float("inf")
  assert exact_dynamics._nearest([0.5, 1.0, 4.0], 0.9) == 1.0


def test_curated_loop_draws_variants_of_a_finite_and_a_continuous_model(tmp_path):
  """The distance plot took its metric from the first variant: a categorical variant (exact KL) beside a GMM
  one (energy distance only) ran both loops and then failed with KeyError before any figure was written."""
  configs = _binaries.load("gaussian8_config_mixed", "experiments", "configs", "gaussian8.py")
  binary = _binaries.load("curated_loop_mixed", "experiments", "curated_loop.py")
  config = _binaries.tiny(configs.get_config())
  config.variants = {"cat": {"model": "categorical", "n_atoms": 64}, "gmm": {"lam": 0.25}}
  binary.train_and_evaluate(config, str(tmp_path))
  assert {"distance.png", "modes.png", "reward.png", "samples_cat.png", "samples_gmm.png", "metrics.csv"} <= set(
      os.listdir(tmp_path))


def test_cells_whose_names_share_a_file_grid_axes_and_labels(tmp_path, monkeypatch):
  """Settings "real 1:1" and "real 1/1" were saved to one file (each run recomputed the other); a grid axis the
  preset does not declare failed in the flag parser with AttributeError; a band level of 0.58 was titled
  "57%"; exact_dynamics keyed its φ sweep by 2 decimals (201 values of φ left 101 keys, values under another φ)."""
  import scl
  cells = _binaries.load("cells_collisions", "experiments", "_cells.py")
  cfg = scl.configs.gaussian8()
  monkeypatch.setattr(cells.scl, "sweep", _no_compute)
  with pytest.raises(ValueError, match="would share the file"):
    cells.run_cells({("real 1:1", "none"): cfg, ("real 1/1", "none"): cfg}, 1, "x", workdir=str(tmp_path))
  configs = _binaries.load("sweep_config_axes", "experiments", "configs", "sweep.py")
  sweep = _binaries.load("sweep_binary_axes", "experiments", "sweep.py")
  config = configs.get_config("tiny")
  assert set(config.grid) == {"K", "lam", "phi", "kappa", "alpha", "beta", "lr", "l2", "eps"}
  config.grid.alpha = ("(0.1, inf)",)  # what the flag parser passes for --config.grid.alpha="(0.1, inf)"
  assert sweep._grid(config) == {"K": [1, 2, 4], "lam": [1.0, float("inf")], "alpha": [0.1, float("inf")]}
  rng = np.random.default_rng(0)
  res = scl.SweepResult(axes={"K": np.array([1, 2]), "seed": np.arange(3), "iteration": np.arange(2)},
                        metrics={"expected_reward": rng.normal(size=(2, 3, 2))})
  assert "58% bands" in sweep.curves(res, level=0.58).axes[0].get_title()
  exact_dynamics = _binaries.load("exact_dynamics_phi_keys", "experiments", "exact_dynamics.py")
  config = _binaries.load("exact_dynamics_config_keys", "experiments", "configs", "exact_dynamics.py").get_config(
      "quick")
  config.n_phi, config.iterations = 201, 2
  sup = next(iter(exact_dynamics.build_supports(config).values()))
  results = exact_dynamics.run_sweeps(sup, config)
  final = exact_dynamics.summarise(sup, results)["phi_sweep_final_expected_reward"]
  phis, er = results["phi"].axes["phi"], results["phi"].metrics["expected_reward"][:, -1]
  assert len(final) == 201 and all(final[f"{f:g}"] == float(v) for f, v in zip(phis, er))
