"""Preferences, attacks and the learned reward inside the scanned loop (Wei & Zhang's system).

Compiling a loop that fits a reward model is the slow part (~20 s per attack on 2 cores), so the tests share
one compiled program per attack through module-scoped fixtures.
"""

import functools

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


@pytest.fixture(scope="module")
def malicious_program():
  """The `dist` attack's loop with ``learned_for="malicious"`` (R~ is the φ share's r~), jitted once."""
  cfg = scl.configs.gaussian8(attack="dist", learned_for="malicious", **SMALL)
  run_fn, data = loop.make_run_fn(cfg)
  fn = jax.jit(chex.assert_max_traces(run_fn, n=1))
  return lambda seed, **hyper: fn(cfg.replace(**hyper).hyper.arrays(), jax.random.PRNGKey(seed), data)[1]


def test_learned_for_malicious_spans_no_platform_to_platform_for_all(malicious_program, dist_program):
  # φ = 0: every user is honest and curates with r, so the attacked platform changes nothing: the loop is the
  # one without a platform, bit for bit (the platform's draws use a key of their own).
  plain = scl.run(scl.configs.gaussian8(**{**SMALL, "learned_reward": False}), seed=0)
  at_zero = malicious_program(0, phi=0.0)
  np.testing.assert_array_equal(at_zero["expected_reward"], plain.metrics["expected_reward"])
  # φ = 1: every user curates with the attacked R~, which is learned_for="all" without malicious users.
  np.testing.assert_array_equal(malicious_program(0, phi=1.0)["expected_reward"],
                                dist_program[1](0, phi=0.0)["expected_reward"])
  # In between, the step is Wei & Zhang's mixed-user step with r~ = R~: Lemma 3.3 is monitored and holds in
  # its signed form (the e^{r~max} form is no bound when Cov < 0, as a learned R~'s often is: scl.theory);
  # with learned_for="all" (honest users curate through R~) no theorem describes the step.
  half = malicious_program(0, phi=0.5)
  assert np.all(half["lemma33_signed_holds"][1:] == 1.0), half["lemma33_signed_slack"]
  assert np.all(np.isnan(dist_program[1](0, phi=0.5)["lemma33_signed_holds"]))
  # The pool covariance is that of the malicious users' reward: R~ here (cov_r_learned); without the platform
  # the task's fixed r~ = -r, whose exact covariance under p_0 the monitors report (row 1 describes p_0 -> p_1;
  # 700 pool samples: observed errors 0.004-0.006 over seeds 0-2, against the exact -0.058).
  np.testing.assert_allclose(half["cov_r_rtilde_pool"][:-1], half["cov_r_learned"][:-1], rtol=1e-6)
  exact_cov = plain.metrics["cov_r_rtilde_scaled"][1]
  assert exact_cov < -0.05 and abs(plain.metrics["cov_r_rtilde_pool"][0] - exact_cov) < 0.015


def test_learned_for_is_checked_and_refuses_an_r_tilde_it_would_ignore():
  with pytest.raises(ValueError, match="learned_for='bad'"):
    scl.configs.gaussian8(learned_for="bad")
  with pytest.raises(ValueError, match="r_tilde_fn=.*would be ignored"):
    scl.configs.gaussian8(learned_for="malicious", r_tilde_fn=lambda x: x[:, 0])
  assert scl.configs.gaussian8(learned_for="malicious").platform.active  # it turns the platform on


def test_learned_for_malicious_step_is_the_exact_mixed_step_with_learned_r_tilde():
  """One sampled step against :func:`scl.exact.step` with ``r~ = R~`` on the support (independent engine).

  10,000 kept samples, each an exact 4-choice among fresh candidates, λ = ∞: the step's ``E[e^{r - r*}]``
  is the exact step's within 4 of its standard errors (``monitor_se``, Kish's effective sample size).
  """
  from scl import platform
  from scl import task as task_lib
  cfg = scl.configs.gaussian8(**{**SMALL, "attack": "dist", "learned_for": "malicious", "phi": 0.5,
                                 "lam": float("inf"), "n_keep": 10_000, "pool_size": 40_000,
                                 "fresh_candidates": True, "iterations": 1})
  task, data = task_lib.build(cfg)
  hyper, key = cfg.hyper.arrays(), jax.random.PRNGKey(3)
  params = loop.init(hyper, key, data, task)
  params_next, out = jax.jit(functools.partial(loop.step, task=task))(params, hyper, data, key)
  # R~ of this step on the atoms: the platform's fit from the step's preference key (loop.step's 4th key).
  k_pool, _, _, k_prefs = jax.random.split(key, 4)
  points = task.to_points(data, task.model.sample(params, k_pool, cfg.curation.pool_size))
  r_pool = task.reward(data.reward, points)
  learned = jax.jit(lambda k, x: platform.learned_reward(k, x, r_pool, hyper, data, task, support=data.support)
                    )(k_prefs, points)
  r = task.reward(data.reward, data.support)
  a = np.exp(np.asarray(r - r.max(), np.float64))
  p, p_next = task.model.probs(params), np.asarray(task.model.probs(params_next), np.float64)
  exact = lambda r_tilde: np.asarray(scl.exact.step(p, r, 4.0, 0.0, data.p_data, r_tilde, 0.5), np.float64) @ a
  se = float(out["monitors"]["monitor_se"])
  assert 0 < se < 0.01, se
  assert abs(p_next @ a - exact(learned.support)) < 4 * se, (p_next @ a, exact(learned.support), se)
  # The fixed r~ (= -r) for the malicious share would give a different step, far beyond the noise.
  assert abs(p_next @ a - exact(task.r_tilde(data.r_tilde, data.support))) > 10 * se
