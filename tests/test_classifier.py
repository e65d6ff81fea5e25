"""scl.classifier: the digits CNN learns (held-out accuracy against the labels), get() caches it on disk,
a bad cache file gives a clear error, and the CNN runs at CIFAR's 32×32×3."""

from __future__ import annotations

import os
import time

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scl import classifier, image_data


@pytest.fixture(scope="module")
def digits():
  return image_data.load("digits")


def test_digits_cnn_reaches_95_percent_held_out_and_get_reloads_it(digits, tmp_path, monkeypatch):
  # One test (not a shared fixture), so that pytest-xdist trains the classifier once, in one worker.
  cache_dir = str(tmp_path)
  clf, params, info = classifier.get(digits, "cnn", cache_dir=cache_dir)
  assert not info["loaded"] and info["train_seconds"] > 0
  assert info["test_accuracy"] >= 0.95, info
  # Independent check: argmax of the logits against the held-out labels.
  logits, features = jax.jit(clf.apply)(params, jnp.asarray(digits.test_x))
  acc = float(np.mean(np.argmax(np.asarray(logits), -1) == digits.test_y))
  assert acc == pytest.approx(info["test_accuracy"], abs=1e-6) and acc >= 0.95
  assert logits.shape == (len(digits.test_y), 10) and features.shape == (len(digits.test_y), clf.feature_dim)
  assert clf.num_classes == 10 and clf.arch == "cnn"

  # The second get loads the saved file: same parameters, no training, fast.
  assert os.path.exists(info["path"]) and os.path.dirname(info["path"]) == cache_dir
  assert os.path.basename(info["path"]).startswith("digits_cnn_8x8x1_10c_")
  assert info["path"] == classifier.cache_path(digits, "cnn", cache_dir)

  def no_training(*args, **kwargs):
    raise AssertionError("get() trained again instead of loading the cache")

  monkeypatch.setattr(classifier, "train", no_training)
  t0 = time.perf_counter()
  clf2, params2, info2 = classifier.get(digits, "cnn", cache_dir=cache_dir)
  assert time.perf_counter() - t0 < 10.0
  assert info2["loaded"] and info2["path"] == info["path"] and clf2 is clf
  assert info2["test_accuracy"] == pytest.approx(info["test_accuracy"])
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_cache_key_follows_settings_and_data(digits, tmp_path):
  path = classifier.cache_path(digits, "cnn", str(tmp_path))
  assert path == classifier.cache_path(digits, "cnn", str(tmp_path), steps=classifier.DEFAULT_TRAIN["steps"])
  assert classifier.cache_path(digits, "cnn", str(tmp_path), steps=7) != path
  assert classifier.cache_path(digits, "cnn", str(tmp_path), lr=3e-4) != path
  assert classifier.cache_path(digits, "mlp", str(tmp_path)) != path
  other = image_data.load("digits", seed=1)  # other training images
  assert classifier.cache_path(other, "cnn", str(tmp_path)) != path


def test_default_cache_dir_honours_scl_cache(monkeypatch, tmp_path):
  monkeypatch.setenv("SCL_CACHE", str(tmp_path))
  assert classifier.default_cache_dir() == os.path.join(str(tmp_path), "classifiers")
  monkeypatch.delenv("SCL_CACHE")
  assert classifier.default_cache_dir() == os.path.expanduser(os.path.join("~", ".cache", "scl", "classifiers"))


@pytest.mark.parametrize("content", ["garbage", "wrong_shape", "wrong_structure"])
def test_bad_cache_file_gives_a_clear_error(digits, tmp_path, content):
  clf = classifier.make_classifier("cnn", digits.train_x.shape[1:], 10)
  params = classifier.init_params(clf, jax.random.PRNGKey(0))
  path = classifier.cache_path(digits, "cnn", str(tmp_path))
  state = jax.tree.map(np.asarray, params)
  if content == "garbage":
    data = b"\x00not msgpack at all"
  elif content == "wrong_shape":
    state["Dense_1"]["kernel"] = np.zeros((3, 3), np.float32)
    data = flax.serialization.msgpack_serialize(state)
  else:
    state = {"Dense_0": state["Dense_0"]}
    data = flax.serialization.msgpack_serialize(state)
  with open(path, "wb") as f:
    f.write(data)
  with pytest.raises(ValueError, match="delete") as err:
    classifier.get(digits, "cnn", cache_dir=str(tmp_path))
  assert path in str(err.value)


def test_apply_at_cifar_shape_with_random_params():
  clf = classifier.make_classifier("cnn", (32, 32, 3), 100)
  assert clf is classifier.make_classifier("cnn", [32, 32, 3], 100)  # same apply: jit compiles once
  params = classifier.init_params(clf, jax.random.PRNGKey(0))
  x = jax.random.uniform(jax.random.PRNGKey(1), (5, 32, 32, 3), minval=-1, maxval=1)
  logits, features = jax.jit(clf.apply)(params, x)
  assert logits.shape == (5, 100) and features.shape == (5, clf.feature_dim) and clf.feature_dim == 128
  assert np.all(np.isfinite(logits)) and np.all(np.asarray(features) >= 0)
  # Flat images are accepted too (what a generative model on vectors produces).
  flat_logits, _ = jax.jit(clf.apply)(params, x.reshape(5, -1))
  np.testing.assert_allclose(flat_logits, logits, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="expects images"):
    clf.apply(params, jnp.zeros((2, 8, 8, 1)))


def test_unknown_arch_and_settings():
  with pytest.raises(ValueError, match="cnn"):
    classifier.make_classifier("resnet", (8, 8, 1), 10)
  with pytest.raises(TypeError, match="unknown training settings"):
    classifier.cache_path(image_data.load("digits"), "cnn", "/tmp", epochs=3)


def test_predict_in_batches_matches_one_call_and_handles_edge_sizes():
  """Batched predict (the last batch padded) against the argmax of one jitted call; no images give no classes."""
  clf = classifier.make_classifier("cnn", (8, 8, 1), 10)
  params = classifier.init_params(clf, jax.random.PRNGKey(0))
  x = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (7, 8, 8, 1), minval=-1, maxval=1))
  whole = np.asarray(jax.jit(clf.apply)(params, x)[0]).argmax(-1)
  np.testing.assert_array_equal(classifier.predict(clf, params, x, batch_size=3), whole)
  assert classifier.predict(clf, params, x[:0]).shape == (0,)
  assert classifier.accuracy(clf, params, x, whole) == 1.0
  with pytest.raises(ValueError, match="batch_size=0"):
    classifier.predict(clf, params, x, batch_size=0)
  with pytest.raises(ValueError, match=r"0 images and labels of shape \(0,\)"):
    classifier.accuracy(clf, params, x[:0], whole[:0])
  # labels [n, 1] broadcast against the predictions [n] to an [n, n] comparison: a meaningless accuracy
  with pytest.raises(ValueError, match=r"7 images and labels of shape \(7, 1\)"):
    classifier.accuracy(clf, params, x, whole[:, None])
