"""Images in the loop: classifier rewards against their definitions, the image metrics against closed forms,
and short digits loops (curation amplifies the rewarded class; the gradient attack lowers the reward)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import linalg

import scl
from scl import classifier as classifier_lib
from scl import image_data
from scl import loop
from scl import metrics


def _linear_classifier(num_classes=10):
  """A 'classifier' whose logits are ``x @ W`` on flattened inputs (features: the inputs)."""
  def apply(params, x):
    f = x.reshape(x.shape[0], -1)
    return f @ params["W"], f
  return classifier_lib.Classifier(apply=apply, num_classes=num_classes, feature_dim=3, arch="linear")


@pytest.mark.parametrize("num_classes", [10, 100])
def test_rewards_match_their_definitions_on_hand_made_logits(num_classes):
  rng = np.random.default_rng(0)
  W = rng.normal(size=(3, num_classes)).astype(np.float32) * 3
  x = rng.normal(size=(50, 3)).astype(np.float32)
  dataset = scl.task.Dataset(classifier=(_linear_classifier(num_classes), {"W": jnp.asarray(W)}))
  logits = x @ W
  cfg = scl.Config().replace(reward="class_prob", gamma=5.0, target_class=3)
  prob = scl.images.class_prob(cfg, dataset)(jnp.asarray(x))
  softmax = np.exp(logits - logits.max(1, keepdims=True))
  softmax /= softmax.sum(1, keepdims=True)
  np.testing.assert_allclose(prob, 5.0 * softmax[:, 3], rtol=1e-5, atol=1e-6)
  index = scl.images.class_index(cfg, dataset)(jnp.asarray(x))
  np.testing.assert_array_equal(index, 10 - (10 * logits.argmax(1)) // num_classes)
  with pytest.raises(ValueError, match="target_class=12"):
    scl.images.class_prob(cfg.replace(target_class=12), scl.task.Dataset(
        classifier=(_linear_classifier(10), {"W": jnp.asarray(W[:, :10])})))


def test_frechet_distance_matches_scipy_and_the_diagonal_closed_form():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
  cov1, cov2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * np.real(linalg.sqrtm(cov1 @ cov2)))
  got = metrics.frechet_distance(*(jnp.asarray(v, jnp.float32) for v in (mu1, cov1, mu2, cov2)))
  assert float(got) == pytest.approx(expected, rel=1e-3)
  d1, d2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])   # diagonal: sum (sqrt a - sqrt b)^2 = 2
  got = metrics.frechet_distance(jnp.zeros(3), jnp.diag(d1), jnp.zeros(3), jnp.diag(d2))
  assert float(got) == pytest.approx(2.0, abs=1e-4)


def test_precision_recall_of_identical_and_disjoint_sets():
  rng = np.random.default_rng(2)
  real = jnp.asarray(rng.normal(size=(200, 4)), jnp.float32)
  radii = metrics.knn_radii(real, 3)
  same = metrics.precision_recall(real, radii, real, 3)
  assert float(same["precision"]) == 1.0 and float(same["recall"]) == 1.0
  far = metrics.precision_recall(real, radii, real + 100.0, 3)
  assert float(far["precision"]) == 0.0 and float(far["recall"]) == 0.0
  # Half the samples on the real set, half far away: precision 1/2.
  half = metrics.precision_recall(real, radii, jnp.concatenate([real[:100], real[100:] + 100.0]), 3)
  assert float(half["precision"]) == pytest.approx(0.5)


def test_knn_radii_match_a_brute_force_count_and_too_few_points_fail():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(50, 3))
  d = ((x[:, None] - x[None]) ** 2).sum(-1)
  np.fill_diagonal(d, np.inf)
  np.testing.assert_allclose(metrics.knn_radii(jnp.asarray(x, jnp.float32), 3), np.sort(d, 1)[:, 2], rtol=1e-4)
  with pytest.raises(ValueError, match=r"k=3 needs 1 <= k < n .*3"):  # the index would clamp, silently
    metrics.knn_radii(jnp.zeros((3, 2)), 3)
  with pytest.raises(ValueError, match="at least 2 points; got 1"):
    metrics.gaussian_stats(jnp.zeros((1, 2)))


@pytest.mark.parametrize("field", ["n_eval", "pool_size"])
def test_image_metrics_on_too_few_images_fail_before_compute(field):
  overrides = dict(n_eval=3) if field == "n_eval" else dict(pool_size=3, n_keep=1, n_pairs=2)
  with pytest.raises(ValueError, match=rf"{field}=3.*more than k = 3"):
    scl.run(scl.configs.digits(**overrides, iterations=1))


def test_frechet_distance_of_held_out_digits_is_near_zero_and_noise_is_far():
  splits = image_data.load("digits")
  clf, params, info = classifier_lib.get(splits)
  features = lambda x: np.asarray(jax.jit(clf.apply)(params, jnp.asarray(x))[1], np.float64)
  train = metrics.gaussian_stats(jnp.asarray(features(splits.train_x)))
  fd = lambda x: float(metrics.frechet_distance(*metrics.gaussian_stats(jnp.asarray(features(x))), *train))
  noise = np.random.default_rng(3).uniform(-1, 1, splits.test_x.shape).astype(np.float32)
  held_out, far = fd(splits.test_x), fd(noise)
  assert held_out < 0.1 * far, (held_out, far)


SMALL_DIGITS = dict(pool_size=600, n_keep=300, n_eval=300, iterations=2, width=64, depth=1, init_steps=300,
                    train_steps=60, sample_steps=8, batch_size=128, n_pairs=300, K_max=4)


def test_digits_curation_amplifies_the_rewarded_class():
  res = scl.run(scl.configs.digits(**SMALL_DIGITS, K=4), seed=0)
  er, props = res.metrics["expected_reward"], res.metrics["class_props"]
  assert props.shape == (3, 10) and np.allclose(props.sum(1), 1.0)
  assert er[-1] > er[0] + 0.2, er                  # 5 P(class 0): about 0.5 at the start
  assert props[-1, 0] > props[0, 0] + 0.05, props[:, 0]
  assert res.samples.shape == (3, 600, 8, 8, 1)   # min(N_SNAPSHOT, pool_size) images per iteration
  for name in ("frechet_distance", "precision", "recall"):
    assert np.all(np.isfinite(res.metrics[name])), name


def test_digits_gradient_attack_ends_below_benign_and_sweeps_trace_once():
  cfg = scl.configs.digits(**SMALL_DIGITS, reward="class_index", kappa=0.3)
  benign = scl.run(cfg.replace(learned_reward=True), seed=1).metrics["expected_reward"]
  attacked = scl.run(cfg.replace(attack="gradient"), seed=1).metrics["expected_reward"]
  assert attacked[-1] < benign[-1], (attacked, benign)
  # Other K and κ: the same compiled program.
  scl.run(cfg.replace(attack="gradient", K=2, kappa=0.1), seed=2)
  compiled, _ = loop._jitted_run(cfg.replace(attack="gradient").static())
  assert compiled._cache_size() == 1
