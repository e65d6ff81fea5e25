"""The binaries' ``--config.<keyword>`` flags: every flat keyword of ``scl.Config`` can be set on the command
line, whether or not the config file sets it, and one left unset is the builder's default.

Parsed with absl and ml_collections as a binary parses them (``config_flags.DEFINE_config_file`` reads
``sys.argv`` when it is defined), into a private ``FlagValues``.
"""

from __future__ import annotations

import os
import sys

from absl import flags
from ml_collections import config_flags
import pytest

import scl
import _binaries

CONFIGS = ("gaussian8.py", "adversarial.py:quick", "defences.py:quick", "images.py:quick", "sweep.py:tiny")
BINARIES = dict(zip(CONFIGS, ("curated_loop.py", "adversarial.py", "defences.py", "images.py", "sweep.py")))


def _parse(monkeypatch, spec: str, *overrides: str):
  path = os.path.join(_binaries.ROOT, "experiments", "configs", spec)
  argv = ["binary", f"--config={path}", *overrides]
  monkeypatch.setattr(sys, "argv", argv)
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, flag_values=values, lock_config=False)
  values(argv)
  return holder.value


@pytest.mark.parametrize("spec", CONFIGS)
def test_every_keyword_is_a_flag_with_its_type(monkeypatch, spec):
  config = _parse(monkeypatch, spec, "--config.width=48", "--config.l2=0.25", "--config.fresh_candidates=true",
                  "--config.reward_hidden=(32, 16)", "--config.velocity=unet", "--config.data_dir=/data")
  assert (config.width, config.l2, config.fresh_candidates) == (48, 0.25, True)
  assert (config.reward_hidden, config.velocity, config.data_dir) == ((32, 16), "unet", "/data")
  assert isinstance(config.width, int) and isinstance(config.l2, float)
  declared = set(config.keys())
  assert set(scl.Config.keywords()) - set(scl.configs.NOT_ON_COMMAND_LINE) <= declared


@pytest.mark.parametrize("spec", CONFIGS)
def test_unset_keywords_are_the_builders_defaults(monkeypatch, spec):
  binary = _binaries.load(f"binary_for_flags_{spec[:4]}", "experiments", BINARIES[spec])
  config = _parse(monkeypatch, spec, "--config.depth=2")
  fields = (*binary._BINARY_FIELDS, "variants")
  assert set(scl.configs.set_keywords(config, fields)) <= set(scl.Config.keywords())
  make = scl.configs.from_flags(config, fields)   # as the binary builds its runs
  cfg = make()
  default = scl.configs.builder(config.dataset)()
  assert cfg.model.depth == 2
  assert make(depth=3).model.depth == 3   # a run's own override wins over the command line's
  scl.configs.check_runs(make)            # one run (make()) kept depth=2: a base the other run varies
  only_overrides = scl.configs.from_flags(config, fields)
  only_overrides(depth=3), only_overrides(depth=4)
  with pytest.raises(ValueError, match=r"depth=2: every run of this binary sets depth itself \(e.g. 3\)"):
    scl.configs.check_runs(only_overrides)  # no run used the command line's depth
  # keywords no file sets keep the builder's values
  assert cfg.model.em_steps == default.model.em_steps
  assert cfg.platform.knn_k == default.platform.knn_k
  assert cfg.hyper.l2 == default.hyper.l2


def test_a_bad_value_or_field_fails_at_parsing(monkeypatch):
  with pytest.raises(flags.IllegalFlagValueError, match="width"):
    _parse(monkeypatch, "gaussian8.py", "--config.width=wide")
  with pytest.raises(AttributeError, match="no_such_field"):   # ml_collections: no such field
    _parse(monkeypatch, "gaussian8.py", "--config.no_such_field=1")


def test_curated_loop_builds_a_flag_set_only_on_the_command_line(monkeypatch):
  binary = _binaries.load("curated_loop_for_flags", "experiments", "curated_loop.py")
  config = _parse(monkeypatch, "gaussian8.py", "--config.gmm_components=3", "--config.phi=0.5")
  cfgs = binary.build_configs(config)
  assert len(cfgs) == 2
  for cfg in cfgs.values():
    assert cfg.model.gmm_components == 3 and cfg.hyper.phi == 0.5
    assert cfg.model.width == scl.configs.gaussian8().model.width


def test_an_unknown_data_set_is_named_with_the_valid_ones(monkeypatch):
  binary = _binaries.load("curated_loop_for_flags", "experiments", "curated_loop.py")
  config = _parse(monkeypatch, "gaussian8.py", "--config.dataset=mnist")
  with pytest.raises(ValueError, match=r"dataset='mnist'.*'gaussian8'"):
    binary.build_configs(config)
  assert scl.configs.builder("two_moons") is scl.configs.two_moons
