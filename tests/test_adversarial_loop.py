"""Preferences, attacks and the learned reward inside the scanned loop (Wei & Zhang's system).

Compiling a loop that fits a reward model is the slow part (~20 s per attack on 2 cores), so the tests share
one compiled program per attack through module-scoped fixtures.
"""

import chex
import jax
import numpy as np
import pytest

import scl
from scl import loop

# A pool of 700 samples and 400 pairs: fewer samples than the pairs' 800 rows, so the platform's fits and the
# gradient attack take the pairs as indices into the pool (tests/test_defences.py's SMALL, 2,000 samples and
# 200 pairs, runs the loop on the gathered pairs).
SMALL = dict(model="categorical", n_atoms=256, pool_size=700, n_keep=350, n_eval=2000, n_pairs=400,
             learned_reward=True, K=4, K_max=4, iterations=3, kappa=0.2, alpha=0.0)


@pytest.fixture(scope="module")
def benign():
  return scl.run(scl.configs.gaussian8(attack="none", **SMALL), seed=0)


@pytest.fixture(scope="module")
def dist_program():
  """The `dist` attack's loop, jitted once; fails if any later call retraces it."""
  cfg = scl.configs.gaussian8(attack="dist", **SMALL)
  run_fn, data = loop.make_run_fn(cfg)
  fn = jax.jit(chex.assert_max_traces(run_fn, n=1))
  return cfg, lambda seed, **hyper: fn(cfg.replace(**hyper).hyper.arrays(), jax.random.PRNGKey(seed), data)[1]


def test_gradient_attack_lowers_true_reward_against_benign_learned_curation(benign):
  attacked = scl.run(scl.configs.gaussian8(attack="gradient", **SMALL), seed=0)
  er_b, er_a = benign.metrics["expected_reward"], attacked.metrics["expected_reward"]
  # Benign curation with a learned reward climbs from about -3 to nearly 0 (the true reward's maximum).
  assert er_b[-1] > -0.5, er_b
  assert er_a[-1] < er_b[-1] - 0.5, (er_a, er_b)
  # The budget is exactly floor(κ n) = 80 flips of 400 pairs at every step; none without an attack.
  np.testing.assert_array_equal(attacked.metrics["n_flips"][:-1], 80)
  np.testing.assert_array_equal(benign.metrics["n_flips"][:-1], 0)
  # The platform's reward is aligned with the users' when nobody attacks (clean held-out accuracy),
  # and the attack breaks that alignment.
  assert benign.metrics["reward_accuracy"][0] > 0.9
  assert attacked.metrics["corr_r_learned"][0] < benign.metrics["corr_r_learned"][0]


def test_kappa_zero_attack_equals_benign(benign, dist_program):
  _, run = dist_program
  outs = run(0, kappa=0.0)
  np.testing.assert_allclose(outs["expected_reward"], benign.metrics["expected_reward"], atol=1e-6)


def test_kappa_alpha_phi_are_traced(dist_program):
  _, run = dist_program
  flips = [float(run(1, kappa=kappa, alpha=alpha, phi=phi)["n_flips"][0])
           for kappa, alpha, phi in ((0.1, 0.8, 0.5), (0.25, 2.0, 1.0), (0.2, 0.0, 0.0))]
  assert flips == [40.0, 100.0, 80.0]


def test_random_attack_runs_with_exact_budget():
  res = scl.run(scl.configs.gaussian8(attack="random", **{**SMALL, "iterations": 2, "kappa": 0.3}), seed=0)
  np.testing.assert_array_equal(res.metrics["n_flips"][:-1], 120)
  assert np.all(np.isfinite(res.metrics["expected_reward"]))
