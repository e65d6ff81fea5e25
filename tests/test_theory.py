"""The papers' bounds checked with the exact engine (float64), and the concrete counterexamples we found.

Every step ``p -> p'`` here is computed by ``scl.exact`` (whose accuracy against brute-force enumeration is
checked in test_exact.py); the monitors' verdicts are cross-checked against direct numpy formulas.
"""

import itertools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from scl import exact, theory

N = 6
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def probs():
  return hnp.arrays(np.float64, N, elements=st.floats(0.02, 1.0)).map(lambda w: w / w.sum())


def rewards(scale=4.0):
  return hnp.arrays(np.float64, N, elements=st.floats(-scale, scale))


Ks = st.sampled_from([1.0, 2.0, 3.0, 4.0, 7.5, 16.0, 256.0, np.inf])


def brute_force(p, r, K):
  out = np.zeros(len(p))
  for tup in itertools.product(range(len(p)), repeat=K):
    idx = list(tup)
    e = np.exp(r[idx] - r[idx].max())
    np.add.at(out, idx, np.prod(p[idx]) * e / e.sum())
  return out


def step(p, r, K, share=0.0, p_data=None, r_tilde=None, phi=0.0):
  p_data = p if p_data is None else p_data
  return np.asarray(exact.step(jnp.asarray(p), jnp.asarray(r), K, share, jnp.asarray(p_data),
                               None if r_tilde is None else jnp.asarray(r_tilde), phi))


def exp_mean(p, r):
  return float(np.sum(p * np.exp(r)))


# ----------------------------------------------------------------------------- Ferbach et al.


@SETTINGS
@given(p=probs(), r=rewards(), K=Ks)
def test_lemma22_holds_and_reward_rises(p, r, K):
  q = step(p, r, K)
  m = theory.monitors(jnp.asarray(p), jnp.asarray(q), jnp.asarray(r), K, 0.0, jnp.asarray(p))
  a = np.exp(r)
  var = np.sum(p * a ** 2) - np.sum(p * a) ** 2
  c_K = 1.0 if np.isinf(K) else (K - 1) / K
  rhs = exp_mean(p, r) + c_K * var / np.exp(r.max())
  np.testing.assert_allclose(m["lemma22_rhs"], rhs, rtol=1e-9)
  assert exp_mean(q, r) >= rhs * (1 - 1e-7)
  assert m["lemma22_holds"] == 1.0
  assert np.sum(q * r) >= np.sum(p * r) - 1e-9             # expected reward non-decreasing (φ = 0)
  assert np.isnan(m["lemma33_holds"]) == False and m["lemma33_holds"] == 1.0   # φ = 0: Lemma 3.3 = 2.2


@SETTINGS
@given(p=probs(), r=rewards(), K=st.sampled_from([2.0, 3.0, 4.0, 16.0, np.inf]),
       lam=st.sampled_from([0.1, 0.5, 1.0, 4.0]))
def test_thm23_and_expected_reward_with_real_data(p, r, K, lam):
  share = 1.0 / (1.0 + lam)
  traj, metrics = exact.run(jnp.asarray(p), jnp.asarray(r), K, lam, iterations=8)
  traj = np.asarray(traj)
  c_K = 1.0 if np.isinf(K) else (K - 1) / K
  a = np.exp(r)
  var_d = np.sum(p * a ** 2) - np.sum(p * a) ** 2
  rhs = exp_mean(p, r) + lam / (1 + lam) ** 3 * c_K * var_d / np.exp(r.max())
  for t in range(1, 9):
    assert exp_mean(traj[t], r) >= rhs * (1 - 1e-7)
    assert np.sum(traj[t] * r) >= np.sum(traj[t - 1] * r) - 1e-9   # p_0 = p_data: monotone too
  np.testing.assert_allclose(metrics["thm23_rhs"][1:], rhs, rtol=1e-9)
  assert np.all(metrics["thm23_holds"][1:] == 1.0)
  assert np.all(np.isnan(metrics["lemma22_holds"]))                  # real data mixed: not applicable
  del share


@SETTINGS
@given(p=probs(), r=rewards(), K=st.sampled_from([1.0, 2.0, 3.0, 4.0, 11.0]), frac=st.floats(0.05, 0.98))
def test_thm24_kl_bound(p, r, K, frac):
  lam = frac / (K - 1) if K > 1 else 10.0
  traj, metrics = exact.run(jnp.asarray(p), jnp.asarray(r), K, lam, iterations=10)
  kl = np.array([np.sum(q * np.log(q / p)) for q in np.asarray(traj)])
  bound = -np.log(1 - lam * (K - 1))
  assert np.all(kl[1:] <= bound + 1e-9)
  np.testing.assert_allclose(metrics["thm24_rhs"][1:], bound, rtol=1e-9, atol=1e-12)
  assert np.all(metrics["thm24_holds"][1:] == 1.0)
  if K > 1:                                                  # λ (K-1) >= 1: not applicable
    _, metrics = exact.run(jnp.asarray(p), jnp.asarray(r), K, 1.5 / (K - 1), iterations=10)
    assert np.all(np.isnan(metrics["thm24_rhs"])) and np.all(np.isnan(metrics["thm24_holds"]))




def test_huge_rewards_monitors_are_finite_in_scaled_space():
  p = jnp.full(N, 1 / N, jnp.float32)
  r = jnp.linspace(1e4, 1e4 + 5, N, dtype=jnp.float32)
  with jax.enable_x64(False):
    _, metrics = exact.run(p.astype(jnp.float32), r.astype(jnp.float32), 2, jnp.inf, iterations=3)
  assert np.all(metrics["lemma22_holds"][1:] == 1.0)
  assert np.all(np.isfinite(metrics["lemma22_slack"][1:])) and np.all(np.isfinite(metrics["log_exp_reward"]))


# ----------------------------------------------------------------------------- Wei & Zhang, mixed users


@SETTINGS
@given(p=probs(), r=rewards(), noise=rewards(1.0), phi=st.floats(0.0, 1.0))
def test_kinf_nonnegative_covariance_means_rising_exp_reward(p, r, noise, phi):
  """K = inf: E_{p'}[e^r] - E_p[e^r] = (1-φ) Var[e^r]/E[e^r] + φ Cov[e^r, e^r~]/E[e^r~] (closed form)."""
  r_tilde = r + noise
  a, b = np.exp(r), np.exp(r_tilde)
  cov = np.sum(p * a * b) - np.sum(p * a) * np.sum(p * b)
  assume(cov >= 0)
  q = step(p, r, np.inf, r_tilde=r_tilde, phi=phi)
  delta = exp_mean(q, r) - exp_mean(p, r)
  var = np.sum(p * a ** 2) - np.sum(p * a) ** 2
  np.testing.assert_allclose(delta, (1 - phi) * var / np.sum(p * a) + phi * cov / np.sum(p * b),
                             rtol=1e-6, atol=1e-12)
  assert delta >= -1e-12
  m = theory.monitors(jnp.asarray(p), jnp.asarray(q), jnp.asarray(r), np.inf, 0.0, jnp.asarray(p),
                      jnp.asarray(r_tilde), phi)
  assert m["lemma33_holds"] == 1.0                          # K = inf and Cov >= 0: Lemma 3.3 holds


# The finite-K counterexample: three equally likely atoms (plus three of zero mass), K = 2, all users
# adversarial. e^r = (1, 0.001, 1.05), e^r~ = (e^-20, 0.5, 1): Cov[e^r, e^r~] = 1/120 > 0, yet E[e^r] falls,
# because H_2^{r~} is a concave, saturating function of e^{r~} (the middle atom gains almost as much as the top).
CEX_P = np.array([1 / 3, 1 / 3, 1 / 3])
CEX_R = np.log(np.array([1.0, 1e-3, 1.05]))
CEX_RTILDE = np.array([-20.0, np.log(0.5), 0.0])


@pytest.mark.parametrize("phi", [1.0, 0.9])
def test_finite_k_counterexample_positive_covariance_falling_reward(phi):
  a, b = np.exp(CEX_R), np.exp(CEX_RTILDE)
  cov = np.sum(CEX_P * a * b) - np.sum(CEX_P * a) * np.sum(CEX_P * b)
  assert cov > 0
  # Independent: brute-force enumeration of the K = 2 choice.
  q_bf = (1 - phi) * brute_force(CEX_P, CEX_R, 2) + phi * brute_force(CEX_P, CEX_RTILDE, 2)
  assert exp_mean(q_bf, CEX_R) < exp_mean(CEX_P, CEX_R) - 0.02
  assert np.sum(q_bf * CEX_R) < np.sum(CEX_P * CEX_R)
  # The engine agrees, and the monitor reports Lemma 3.3 (seed form) as violated.
  q = np.asarray(exact.curate(jnp.asarray(CEX_P), jnp.asarray(CEX_R), 2, jnp.asarray(CEX_RTILDE), phi))
  np.testing.assert_allclose(q, q_bf, rtol=1e-6)
  m = theory.monitors(jnp.asarray(CEX_P), jnp.asarray(q), jnp.asarray(CEX_R), 2, 0.0, jnp.asarray(CEX_P),
                      jnp.asarray(CEX_RTILDE), phi)
  assert m["g_cov"] > 0 and m["lemma33_holds"] == 0.0
  np.testing.assert_allclose(m["cov_r_rtilde"], cov, rtol=1e-9)


def test_counterexample_disappears_as_k_grows():
  """The same instance: E[e^r] falls for K <= 4 and rises for K >= 16 (tending to the K = inf closed form)."""
  deltas = {}
  for K in (2.0, 4.0, 16.0, 64.0, np.inf):
    q = np.asarray(exact.curate(jnp.asarray(CEX_P), jnp.asarray(CEX_R), K, jnp.asarray(CEX_RTILDE), 1.0))
    deltas[K] = exp_mean(q, CEX_R) - exp_mean(CEX_P, CEX_R)
  assert deltas[2.0] < 0 and deltas[4.0] < 0 and deltas[16.0] > 0 and deltas[64.0] > 0
  a, b = np.exp(CEX_R), np.exp(CEX_RTILDE)
  cov = np.sum(CEX_P * a * b) - np.sum(CEX_P * a) * np.sum(CEX_P * b)
  np.testing.assert_allclose(deltas[np.inf], cov / np.sum(CEX_P * b), rtol=1e-6)


def test_lemma33_fails_for_negative_covariance_even_at_k_inf():
  """φ = 1, K = inf: the exact change is Cov/E[e^r~] < Cov/e^{r~*} = g_cov when Cov < 0."""
  p = np.array([0.5, 0.5])
  r = np.array([0.0, 1.0])
  r_tilde = -r
  q = step(p, r, np.inf, r_tilde=r_tilde, phi=1.0)
  m = theory.monitors(jnp.asarray(p), jnp.asarray(q), jnp.asarray(r), np.inf, 0.0, jnp.asarray(p),
                      jnp.asarray(r_tilde), 1.0)
  a, b = np.exp(r), np.exp(r_tilde)
  cov = np.sum(p * a * b) - np.sum(p * a) * np.sum(p * b)
  np.testing.assert_allclose(exp_mean(q, r) - exp_mean(p, r), cov / np.sum(p * b), rtol=1e-9)
  np.testing.assert_allclose(m["g_cov"], cov / b.max(), rtol=1e-9)
  assert m["lemma33_holds"] == 0.0


def test_lemma33_violation_rate_finite_k():
  """Documented measurement (not a bound): how often the seed form of Lemma 3.3 fails on random instances."""
  rng = np.random.default_rng(0)
  fails_pos, fails_neg, n_pos, n_neg = 0, 0, 0, 0
  for _ in range(60):
    p = rng.dirichlet(np.ones(N))
    r, r_tilde = rng.normal(size=N) * 2, rng.normal(size=N) * 2
    phi = rng.uniform()
    q = step(p, r, 2.0, r_tilde=r_tilde, phi=phi)
    m = theory.monitors(jnp.asarray(p), jnp.asarray(q), jnp.asarray(r), 2.0, 0.0, jnp.asarray(p),
                        jnp.asarray(r_tilde), phi)
    if m["cov_r_rtilde"] >= 0:
      n_pos += 1
      fails_pos += int(m["lemma33_holds"] == 0.0)
    else:
      n_neg += 1
      fails_neg += int(m["lemma33_holds"] == 0.0)
  assert n_pos > 0 and n_neg > 0
  assert fails_neg > 0          # the seed form is not a valid lower bound in general
