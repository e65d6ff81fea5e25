"""experiments/images.py on its :quick preset (digits, tiny sizes; two of its variant families): the files it
writes, the expected reward recomputed from the saved samples with the classifier loaded independently,
class proportions that sum to 1 and match the class-index reward, and a resumed run that reproduces the table.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from scl import classifier as classifier_lib
from scl import image_data

import _binaries

binary = _binaries.load("images_binary", "experiments", "images.py")
configs = _binaries.load("images_config", "experiments", "configs", "images.py")


def _quick_config():
  config = configs.get_config("quick")
  # Two of the four families (benign class_prob, random flips on the learned class_index reward), each
  # fully synthetic and with real data: two compiled programs instead of four.
  config.variants = configs.variants(("benign_prob", "random"))
  config.iterations = 1
  config.gamma, config.target_class = 2.0, 3  # not the preset's 5 and 0: labels and scores must follow them
  return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("images"))
  config = _quick_config()
  return config, workdir, binary.train_and_evaluate(config, workdir)


def test_files_tables_and_variants(run):
  config, workdir, results = run
  names = list(config.variants)
  assert names == ["benign_prob", "random", "benign_prob_real", "random_real"]
  expected = {"metrics.csv", "metrics.json", "summary.csv", "summary.json", "reward.png", "rewards_both.png",
              "classes.png", "quality.png"}
  expected |= {f"samples_{n}.png" for n in names} | {f"samples_{n}.npz" for n in names}
  assert expected <= set(os.listdir(workdir))
  for n in names:
    assert os.path.exists(os.path.join(workdir, n, "checkpoint.msgpack"))

  table = pd.read_csv(os.path.join(workdir, "metrics.csv"))
  T = config.iterations
  assert list(table.variant.unique()) == names
  assert (table.groupby("variant").size() == T + 1).all()
  props = table[[f"class_props_{c}" for c in range(10)]].to_numpy()
  np.testing.assert_allclose(props.sum(1), 1.0, atol=1e-5)
  for column in ("expected_reward", "frechet_distance", "precision", "recall"):
    assert np.isfinite(table[column]).all(), column
  # The class-index reward 10 - class, averaged over the n_eval samples whose classes class_props counts.
  index = table[table.variant.str.startswith("random")]
  np.testing.assert_allclose(index.expected_reward, index[[f"class_props_{c}" for c in range(10)]].to_numpy()
                             @ (10.0 - np.arange(10)), rtol=1e-5)
  # Every variant starts from the same p_0 (same seed, same real data) and draws the same first pool.
  first = table[table.iteration == 0]
  np.testing.assert_allclose(first.class_props_0, first.class_props_0.iloc[0])

  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  assert [row["variant"] for row in summary["variants"]] == names
  assert summary["variants"][2]["lam"] == 1.0 and summary["variants"][0]["lam"] == "inf"   # standard JSON
  for row in summary["variants"]:  # the rewarded class's share, from the metrics table's class proportions
    rows = table[table.variant == row["variant"]]
    assert row["target_class"] == 3
    assert row["target_share_first"] == pytest.approx(rows.class_props_3.iloc[0])
    assert row["target_share_last"] == pytest.approx(rows.class_props_3.iloc[-1])
  assert binary.reward_label(results["benign_prob"].config) == "2 P(class 3)"
  assert binary.reward_label(results["random"].config) == "10 - class"


def test_expected_reward_recomputed_from_saved_samples(run):
  """5 · softmax(classifier logits)[class 0], averaged over the saved samples of each iteration, with the
  classifier loaded from its cache by scl.classifier directly (not through the loop's task)."""
  config, workdir, results = run
  clf, params, _ = classifier_lib.get(image_data.load("digits"))
  logits_of = jax.jit(lambda x: clf.apply(params, x)[0])
  table = pd.read_csv(os.path.join(workdir, "metrics.csv"))
  n_eval = config.n_eval
  for name in config.variants:
    saved = np.load(os.path.join(workdir, f"samples_{name}.npz"))
    samples, classes = saved["samples"], saved["classes"]
    assert samples.shape == (config.iterations + 1, config.save_samples, 8, 8, 1)
    np.testing.assert_array_equal(samples, results[name].samples[:, :config.save_samples])
    rows = table[table.variant == name]
    for t in range(config.iterations + 1):
      logits = np.asarray(logits_of(jnp.asarray(samples[t, :n_eval])), np.float64)
      np.testing.assert_array_equal(classes[t], logits.argmax(1))
      p = np.exp(logits - logits.max(1, keepdims=True))
      p /= p.sum(1, keepdims=True)
      props = np.bincount(logits.argmax(1), minlength=10) / n_eval
      np.testing.assert_allclose(rows[[f"class_props_{c}" for c in range(10)]].to_numpy()[t], props, atol=1e-6)
      if name.startswith("benign_prob"):
        assert rows.expected_reward.iloc[t] == pytest.approx(2.0 * p[:, 3].mean(), rel=1e-4, abs=1e-5)
      else:
        assert rows.expected_reward.iloc[t] == pytest.approx(np.mean(10.0 - logits.argmax(1)), rel=1e-5)


def test_both_rewards_scored_on_every_variant_with_its_target_class(run):
  """summary.json's scored rewards: γ P(class c) and 10 − class over each iteration's saved samples (the first
  n_eval of them), recomputed with the classifier loaded directly."""
  config, workdir, results = run
  clf, params, _ = classifier_lib.get(image_data.load("digits"))
  logits_of = jax.jit(lambda x: clf.apply(params, x)[0])
  with open(os.path.join(workdir, "summary.json")) as f:
    scored = json.load(f)["scored_rewards"]
  for name, res in results.items():
    n = min(config.n_eval, res.samples.shape[1])
    for t in range(config.iterations + 1):
      logits = np.asarray(logits_of(jnp.asarray(res.samples[t, :n])), np.float64)
      p = np.exp(logits - logits.max(1, keepdims=True))
      p /= p.sum(1, keepdims=True)
      assert scored[name]["class_prob"][t] == pytest.approx(2.0 * p[:, 3].mean(), rel=1e-4, abs=1e-5)
      assert scored[name]["class_index"][t] == pytest.approx(np.mean(10.0 - logits.argmax(1)), rel=1e-5)


def test_rerun_resumes_from_checkpoints_with_the_same_table(run):
  config, workdir, _ = run
  before = pd.read_csv(os.path.join(workdir, "metrics.csv"))
  binary.train_and_evaluate(config, workdir)
  after = pd.read_csv(os.path.join(workdir, "metrics.csv"))
  pd.testing.assert_frame_equal(before, after)


def test_cifar_without_the_data_set_fails_fast_with_the_library_message(tmp_path):
  config = configs.get_config("cifar10")
  config.data_dir = str(tmp_path / "no_tfds_here")
  with pytest.raises((FileNotFoundError, ImportError), match="cifar10|tensorflow-datasets"):
    binary.train_and_evaluate(config, str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")
