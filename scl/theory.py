"""Theorem monitors: the papers' bounds, evaluated on one step ``p_{t-1} -> p_t`` of the loop.

Notation: ``r*`` the maximum reward over the atoms, ``ā = e^{r - r*} ∈ (0, 1]`` and, for the adversarial reward,
``b̄ = e^{r~ - r~*}``. Every bound is compared in this scaled space (``E[e^r] = e^{r*} E[ā]``), so nothing
overflows for large rewards; ``*_rhs`` is reported in natural units (comparable to ``exp_reward`` /
``kl_to_data``), ``*_slack`` = lhs - rhs in scaled units and ``*_holds`` is 1.0 / 0.0 (NaN where the bound does
not apply). ``c_K = (K-1)/K`` (1 for ``K = inf``), ``s = 1/(1+λ)`` the real-data share.

* **Ferbach Lemma 2.2** (fully synthetic, benign: ``s = 0``, ``φ = 0``):
  ``E_{p_t}[e^r] >= E_{p_{t-1}}[e^r] + c_K Var_{p_{t-1}}[e^r] / e^{r*}``.
* **Ferbach Theorem 2.3** (``φ = 0``; assumes ``p_0 = p_data``, ``t >= 1``):
  ``E_{p_t}[e^r] >= E_{p_data}[e^r] + λ/(1+λ)^3 (K-1) Var_{p_data}[e^r] / (K e^{r*})``;
  ``λ/(1+λ)^3 = (1-s) s^2``.
* **Ferbach Theorem 2.4** (``φ = 0``, applies iff ``λ (K-1) < 1``; assumes ``p_0 = p_data``):
  ``KL(p_t || p_data) <= -log(1 - λ(K-1)) = log s - log(s - (1-s)(K-1))``.
* **Wei Lemma 3.3** (fully synthetic, mixed users), in the form of the seed summary:
  ``E_{p_t}[e^r] >= E_{p_{t-1}}[e^r] + g_var + g_cov`` with
  ``g_var = (1-φ) c_K Var_{p_{t-1}}[e^r] / e^{r*}`` and ``g_cov = φ c_K Cov_{p_{t-1}}[e^r, e^{r~}] / e^{r~*}``.
  Normalisation: Lemma 2.2's variance term is ``c_K Cov[e^r, e^r] / e^{r*}``, the covariance of the measured
  quantity with the *curating* weight divided by the curating weight's maximum; ``g_cov`` is the same
  expression with the curating reward ``r~`` (so ``g_cov`` has the units of ``e^r``, is invariant to shifting
  ``r~``, and ``φ = 0`` gives back Lemma 2.2 exactly).

Findings with the exact engine (``scl.exact``; tests in ``tests/test_theory.py``; see ``docs/theory.md``):

* Lemma 2.2, Theorem 2.3 and Theorem 2.4 held on every random instance tried.
* With ``K = inf`` the adversarial users move ``E[e^r]`` by exactly ``φ Cov[e^r, e^{r~}] / E[e^{r~}]``, so
  ``Cov[e^r, e^{r~}] >= 0`` implies a non-decreasing ``E[e^r]``.
* For **finite K this implication is false**: the adversarial part moves ``E[e^r]`` by
  ``φ Cov[e^r, H_K^{r~}]`` and ``H_K^{r~}`` is a concave, saturating function of ``e^{r~}``, whose covariance with
  ``e^r`` can be negative while ``Cov[e^r, e^{r~}] > 0``. A three-atom counterexample with ``K = 2`` is kept in
  the tests.
* Lemma 3.3 in this form therefore **fails** for finite K with a positive covariance (the same
  counterexample), and it also fails with a negative covariance even for ``K = inf`` (the exact adversarial
  term ``φ Cov / E[e^{r~}]`` is more negative than ``φ Cov / e^{r~*}`` because ``E[e^{r~}] <= e^{r~*}``). It
  holds when ``φ = 0`` (it is Lemma 2.2) and held on the instances tried with ``K = inf`` and ``Cov >= 0``.
"""

from __future__ import annotations

from typing import Any

import chex
import jax.numpy as jnp

from scl import metrics as metrics_lib

Array = chex.Array


def _scaled_exp(r: Array) -> tuple[Array, Array]:
  """``(e^{r - r*}, r*)`` with ``r* = max r``."""
  r_star = jnp.max(r)
  return jnp.exp(r - r_star), r_star


def _mean(p: Array, x: Array) -> Array:
  return jnp.sum(p * x)


def _cov(p: Array, x: Array, y: Array) -> Array:
  return jnp.sum(p * (x - _mean(p, x)) * (y - _mean(p, y)))


def _holds(lhs_minus_rhs: Array, scale: Array, rtol: float, applies: Array) -> Array:
  """1.0 if ``lhs >= rhs`` up to ``rtol * scale`` (the numerical accuracy of the inputs), NaN if not applicable."""
  ok = (lhs_minus_rhs >= -rtol * scale).astype(lhs_minus_rhs.dtype)
  return jnp.where(applies, ok, jnp.nan)


def monitors(p_prev: Array, p_next: Array, r: Array, K: Any, real_share: Any, p_data: Array,
             r_adv: Array | None = None, phi: Any = 0.0, *, rtol: float = 1e-6) -> dict[str, Array]:
  """The papers' bounds for one step ``p_{t-1} -> p_t`` of the loop, each with whether it holds.

  Args:
    p_prev: [n] ``p_{t-1}``, the model that was curated.
    p_next: [n] ``p_t``, the retrained model.
    r: [n] users' reward ``r``.
    K: candidates per choice ``K`` (``inf`` allowed).
    real_share: ``s = 1/(1+λ)`` (0 = fully synthetic).
    p_data: [n] real data distribution.
    r_adv: optional [n] adversarial reward ``r~`` (without it ``φ`` is taken as 0 and ``cov_r_radv`` is NaN).
    phi: fraction ``φ`` of malicious users.
    rtol: relative tolerance of the ``*_holds`` comparisons: the numerical accuracy of ``p_next`` (e.g. 2e-4
      for the float32 exact engine, 0 for an exact comparison). It is never used to weaken a bound: the
      ``*_slack`` values report the exact margins.
  Returns:
    Scalars (dtype of ``p_prev``): ``exp_reward_prev`` (E_{p_{t-1}}[e^r]); ``lemma22_rhs``,
    ``lemma22_slack``, ``lemma22_holds``; ``thm23_rhs``, ``thm23_slack``, ``thm23_holds``; ``thm24_rhs``,
    ``thm24_slack`` (rhs - KL), ``thm24_holds``; ``cov_r_radv`` (Cov_{p_{t-1}}[e^r, e^{r~}], natural units),
    ``cov_r_radv_scaled`` (Cov[ā, b̄]), ``g_var``, ``g_cov`` (natural units of e^r), ``lemma33_rhs``,
    ``lemma33_slack``, ``lemma33_holds``.
  """
  chex.assert_rank(p_prev, 1)
  chex.assert_equal_shape([p_prev, p_next, r, p_data])
  dtype = p_prev.dtype
  r = jnp.asarray(r, dtype)
  K = jnp.asarray(K, dtype)
  s = jnp.asarray(real_share, dtype)
  nan = jnp.asarray(jnp.nan, dtype)
  benign = r_adv is None
  phi = jnp.zeros((), dtype) if benign else jnp.asarray(phi, dtype)

  a, r_star = _scaled_exp(r)
  scale = jnp.exp(r_star)                                    # e^{r*} (may overflow; only for *_rhs)
  c_K = 1.0 - 1.0 / K                                        # (K-1)/K, 1 for K = inf
  e_prev, e_next, e_data = _mean(p_prev, a), _mean(p_next, a), _mean(p_data, a)
  var_prev, var_data = _cov(p_prev, a, a), _cov(p_data, a, a)

  out = {"exp_reward_prev": scale * e_prev}

  # Ferbach Lemma 2.2 (fully synthetic, benign users).
  applies = (s == 0) & (phi == 0)
  rhs = e_prev + c_K * var_prev
  out["lemma22_rhs"] = jnp.where(applies, scale * rhs, nan)
  out["lemma22_slack"] = jnp.where(applies, e_next - rhs, nan)
  out["lemma22_holds"] = _holds(e_next - rhs, e_next, rtol, applies)

  # Ferbach Theorem 2.3 (real data, benign users).
  applies = phi == 0
  rhs = e_data + (1.0 - s) * s ** 2 * c_K * var_data
  out["thm23_rhs"] = jnp.where(applies, scale * rhs, nan)
  out["thm23_slack"] = jnp.where(applies, e_next - rhs, nan)
  out["thm23_holds"] = _holds(e_next - rhs, e_next, rtol, applies)

  # Ferbach Theorem 2.4: λ(K-1) < 1  <=>  (1-s)(K-1) < s; bound -log(1 - λ(K-1)).
  Km1 = jnp.where(jnp.isinf(K), 0.0, K - 1.0)
  lam_km1_lt_1 = jnp.where(jnp.isinf(K), s == 1, (1.0 - s) * Km1 < s)
  applies = (phi == 0) & lam_km1_lt_1
  denom = jnp.where(applies, s - (1.0 - s) * Km1, 1.0)
  rhs = jnp.where(applies, jnp.log(jnp.where(applies, s, 1.0)) - jnp.log(denom), nan)
  kl = metrics_lib.kl(p_next, p_data)
  out["thm24_rhs"] = rhs
  out["thm24_slack"] = jnp.where(applies, rhs - kl, nan)
  out["thm24_holds"] = _holds(rhs - kl, jnp.maximum(rhs, 1.0), rtol, applies)

  # Wei Lemma 3.3 (fully synthetic, mixed users).
  g_var = (1.0 - phi) * c_K * var_prev
  if benign:
    cov_scaled = nan
    g_cov = jnp.zeros((), dtype)
    adv_scale = nan
  else:
    b, r_adv_star = _scaled_exp(jnp.asarray(r_adv, dtype))
    cov_scaled = _cov(p_prev, a, b)
    g_cov = phi * c_K * cov_scaled
    adv_scale = jnp.exp(r_adv_star)
  applies = s == 0
  rhs = e_prev + g_var + g_cov
  out["cov_r_radv"] = scale * adv_scale * cov_scaled
  out["cov_r_radv_scaled"] = cov_scaled
  out["g_var"] = scale * g_var
  out["g_cov"] = scale * g_cov
  out["lemma33_rhs"] = jnp.where(applies, scale * rhs, nan)
  out["lemma33_slack"] = jnp.where(applies, e_next - rhs, nan)
  out["lemma33_holds"] = _holds(e_next - rhs, e_next, rtol, applies)
  return {k: jnp.asarray(v, dtype) for k, v in out.items()}
