"""The experiment binaries check their own fields before any compute, and run on data sets without modes."""

import os

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
