"""Curation against closed forms: Luce choice probabilities, the e^r tilt, exact top-k counts.

Statistical tests use a fixed seed and reject at p < 1e-4 (chi-square), so a correct implementation fails
with probability 1e-4 per test for a random seed, and a biased one (wrong probabilities by a few percent
at these sample sizes) fails with near certainty.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from scl import curation

P_REJECT = 1e-4


def chi2_pvalue(counts, probs):
  counts = np.asarray(counts, np.float64)
  probs = np.asarray(probs, np.float64)
  expected = probs / probs.sum() * counts.sum()
  keep = expected > 0
  assert counts[~keep].sum() == 0, "mass on outcomes of probability 0"
  if keep.sum() == 1:
    return 1.0  # A single possible outcome: the assertion above is the whole test.
  return stats.chisquare(counts[keep], expected[keep]).pvalue


@pytest.mark.parametrize("K", [1, 2, 3, 5])
def test_choice_frequencies_match_softmax(K):
  k_max, n = 5, 200_000
  r = jnp.array([0.3, -1.0, 2.0, 0.0, 1.5])
  idx = curation.choice_indices(jax.random.PRNGKey(K), jnp.broadcast_to(r, (n, k_max)), K)
  counts = np.bincount(np.asarray(idx), minlength=k_max)
  assert counts[K:].sum() == 0, "a masked candidate (beyond K) was chosen"
  assert chi2_pvalue(counts[:K], jax.nn.softmax(r[:K])) > P_REJECT


def test_choice_is_stable_for_huge_rewards():
  r = jnp.array([[1e6, 1e6 + 1.0, -1e6]])
  idx = curation.choice_indices(jax.random.PRNGKey(0), jnp.broadcast_to(r, (50_000, 3)), 3)
  counts = np.bincount(np.asarray(idx), minlength=3)
  assert chi2_pvalue(counts, [1 / (1 + np.e), np.e / (1 + np.e), 0.0]) > P_REJECT


def _kept_histogram(key, p, r, K, K_max, n_keep, **kw):
  """Fresh candidates from categorical p; returns the kept histogram over atoms."""
  k_pool, k_cur = jax.random.split(key)
  pool = jax.random.choice(k_pool, p.shape[0], (n_keep * K_max,), p=p)
  w = curation.choice_weights(k_cur, r[pool], K, n_keep=n_keep, K_max=K_max, fresh=True, **kw)
  return np.asarray(jax.ops.segment_sum(w, pool, num_segments=p.shape[0])) * n_keep


def test_K1_leaves_distribution_unchanged():
  p = jnp.array([0.1, 0.2, 0.3, 0.4])
  r = jnp.array([5.0, -3.0, 0.0, 10.0])  # Rewards must not matter when only one candidate is shown.
  counts = _kept_histogram(jax.random.PRNGKey(1), p, r, K=1, K_max=4, n_keep=100_000)
  assert chi2_pvalue(np.round(counts), p) > P_REJECT


def test_choice_K2_matches_closed_form():
  # With K = 2 the kept law is p(x) * sum_y p(y) 2 e^{r(x)} / (e^{r(x)} + e^{r(y)}) (DESIGN §1, H_2).
  p = np.array([0.5, 0.3, 0.2])
  r = np.array([0.0, 1.0, -1.0])
  e = np.exp(r)
  h2 = np.array([sum(p[j] * 2 * e[i] / (e[i] + e[j]) for j in range(3)) for i in range(3)])
  counts = _kept_histogram(jax.random.PRNGKey(2), jnp.asarray(p), jnp.asarray(r), K=2, K_max=2,
                           n_keep=100_000)
  assert chi2_pvalue(np.round(counts), p * h2) > P_REJECT


def test_large_K_approaches_tilt():
  p = jnp.array([0.4, 0.3, 0.2, 0.1])
  r = jnp.array([0.0, 0.5, 1.0, 2.0])
  tilt = np.asarray(p * jnp.exp(r) / jnp.sum(p * jnp.exp(r)))
  tv = lambda a, b: 0.5 * np.abs(a - b).sum()
  n_keep = 20_000
  small = _kept_histogram(jax.random.PRNGKey(3), p, r, K=2, K_max=256, n_keep=n_keep) / n_keep
  large = _kept_histogram(jax.random.PRNGKey(3), p, r, K=256, K_max=256, n_keep=n_keep) / n_keep
  # H_K -> e^r / E[e^r] with an O(1/K) bias; the sampling error at n_keep = 20,000 is ~0.005.
  assert tv(large, tilt) < 0.02
  assert tv(small, tilt) > 0.1
  assert tv(np.asarray(p), tilt) > 0.2


def test_mixed_users_phi_one_uses_adversarial_reward():
  n, k_max = 100_000, 3
  r = jnp.array([0.0, 1.0, 2.0])
  idx = curation.choice_indices(jax.random.PRNGKey(4), jnp.broadcast_to(r, (n, k_max)), 3,
                                r_tilde_cand=jnp.broadcast_to(-r, (n, k_max)), phi=1.0)
  assert chi2_pvalue(np.bincount(np.asarray(idx), minlength=3), jax.nn.softmax(-r)) > P_REJECT


def test_mixed_users_phi_half_is_the_mixture():
  n, k_max = 200_000, 3
  r = jnp.array([0.0, 1.0, 2.0])
  idx = curation.choice_indices(jax.random.PRNGKey(5), jnp.broadcast_to(r, (n, k_max)), 3,
                                r_tilde_cand=jnp.broadcast_to(-r, (n, k_max)), phi=0.5)
  expected = 0.5 * jax.nn.softmax(r) + 0.5 * jax.nn.softmax(-r)
  assert chi2_pvalue(np.bincount(np.asarray(idx), minlength=3), expected) > P_REJECT


@pytest.mark.parametrize("beta,n", [(0.5, 100), (0.7, 10), (0.2, 50), (0.33, 1000)])
def test_topk_keeps_exactly_the_best_fraction(beta, n):
  r = jax.random.normal(jax.random.PRNGKey(6), (n,))
  w = np.asarray(curation.topk_weights(jax.random.PRNGKey(0), r, beta))
  m = int(np.floor(beta * n + 1e-9))
  kept = np.flatnonzero(w > 0)
  assert kept.size == m
  assert set(kept) == set(np.argsort(-np.asarray(r))[:m])
  np.testing.assert_allclose(w[kept], 1.0 / m, rtol=1e-6)


def test_luce_pool_first_pick_follows_softmax():
  # Keeping 1 of 5 by Plackett–Luce sampling without replacement is one Luce choice: softmax(r).
  r = jnp.array([0.0, 1.0, 2.0, -1.0, 0.5])
  keys = jax.random.split(jax.random.PRNGKey(7), 50_000)
  w = jax.vmap(lambda k: curation.luce_pool_weights(k, r, 0.2))(keys)
  counts = np.asarray(jnp.sum(w > 0, 0))
  assert counts.sum() == 50_000
  assert chi2_pvalue(counts, jax.nn.softmax(r)) > P_REJECT


def test_luce_pool_second_pick_without_replacement():
  # Keeping 2 of 3: P(item i kept) = sum over ordered pairs containing i of the Plackett–Luce probability.
  r = np.array([0.0, 1.0, 2.0])
  e = np.exp(r)
  pair = lambda i, j: e[i] / e.sum() * e[j] / (e.sum() - e[i])
  incl = np.array([sum(pair(i, j) + pair(j, i) for j in range(3) if j != i) for i in range(3)])
  keys = jax.random.split(jax.random.PRNGKey(8), 50_000)
  w = jax.vmap(lambda k: curation.luce_pool_weights(k, jnp.asarray(r), 2 / 3))(keys)
  counts = np.asarray(jnp.sum(w > 0, 0))
  assert counts.sum() == 100_000
  assert chi2_pvalue(counts, incl / 2) > P_REJECT


def test_luce_pool_is_stable_for_huge_rewards():
  r = jnp.array([1e6, 1e6 + 1.0, 1e6 - 1.0])
  keys = jax.random.split(jax.random.PRNGKey(9), 50_000)
  w = jax.vmap(lambda k: curation.luce_pool_weights(k, r, 1 / 3))(keys)
  assert chi2_pvalue(np.asarray(jnp.sum(w > 0, 0)), jax.nn.softmax(r - 1e6)) > P_REJECT


def test_pool_filter_groups_with_mixed_users():
  # φ = 1: every judgement uses r~ = -r, so top-k keeps the lowest true rewards.
  r = jnp.arange(10.0)
  w = np.asarray(curation.topk_weights(jax.random.PRNGKey(0), r, 0.3, r_tilde_pool=-r, phi=1.0))
  assert set(np.flatnonzero(w > 0)) == {0, 1, 2}


def test_keep_count_is_robust_to_float32():
  for frac, n, want in [(0.7, 10, 7), (0.2, 50, 10), (0.29, 100, 29), (0.0, 100, 0), (1.0, 77, 77),
                        (0.5, 50_000, 25_000), (0.1, 3, 0)]:
    assert int(curation.keep_count(frac, n)) == want, (frac, n)


@pytest.mark.parametrize("name", ["topk", "luce_pool"])
@pytest.mark.parametrize("beta, pool, phi", [(0.01, 100, 0.5), (0.7, 10, 0.3), (0.5, 1001, 0.37)])
def test_pool_filters_with_malicious_users_keep_exactly_floor_beta_pool(name, beta, pool, phi):
  """Each user group rounded its own β share down: β = 0.01 of 100 samples split between two groups kept none
  (weights summing to 0), β = 0.7 of 10 kept 6. Now together they keep floor(β P), the malicious group the
  nearest count to β times its size."""
  fn = curation.topk_weights if name == "topk" else curation.luce_pool_weights
  keep = int(curation.keep_count(beta, pool))
  for seed in range(30):
    k_r, k_t, k_c = jax.random.split(jax.random.PRNGKey(seed), 3)
    r, r_tilde = jax.random.normal(k_r, (pool,)), jax.random.normal(k_t, (pool,))
    w = np.asarray(fn(k_c, r, beta, r_tilde_pool=r_tilde, phi=phi))
    assert int(np.sum(w > 0)) == keep and np.isclose(w.sum(), 1.0), (seed, int(np.sum(w > 0)), keep)
    # the malicious group (the same Bernoulli draw the filter makes) keeps round(β n_mal), or what is left
    k_group = k_c if name == "topk" else jax.random.split(k_c)[0]
    malicious = np.asarray(jax.random.bernoulli(k_group, phi, (pool,)))
    assert int(np.sum((w > 0) & malicious)) == min(round(beta * malicious.sum()), keep), seed
