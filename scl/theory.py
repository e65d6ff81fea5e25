"""Theorem monitors: the papers' bounds, evaluated on one step ``p_{t-1} -> p_t`` of the loop.

Notation: ``r*`` the maximum reward over the support (the atoms where ``p_{t-1}``, ``p_t`` or ``p_data`` is
positive: the bounds' derivations only use ``e^{r(x)} <= e^{r*}`` where the expectations put mass, and an atom
outside it with a far larger reward would make ``ā`` underflow to 0 on the support), ``ā = e^{r - r*} ∈ (0, 1]``
there and, for the adversarial reward, ``b̄ = e^{r~ - r~max}``, ``r~max``/``r~min`` the largest/smallest ``r~``
over the support (Wei & Zhang's Assumption 3.2 bounds). Every bound is compared in this scaled space
(``E[e^r] = e^{r*} E[ā]``), so nothing overflows for large rewards; ``*_rhs`` is reported in natural units
(comparable to ``exp_reward`` / ``kl_to_data``), ``*_slack`` = lhs - rhs in scaled units and ``*_holds`` is
1.0 / 0.0 (NaN where the bound does not apply).
``c_K = (K-1)/K`` (1 for ``K = inf``), ``s = 1/(1+λ)`` the real-data share.

* **Ferbach Lemma 2.2** (fully synthetic, benign: ``s = 0``, ``φ = 0``):
  ``E_{p_t}[e^r] >= E_{p_{t-1}}[e^r] + c_K Var_{p_{t-1}}[e^r] / e^{r*}``.
* **Ferbach Theorem 2.3** (``φ = 0``; assumes ``p_0 = p_data``, ``t >= 1``; NaN when ``p0_is_data`` is false):
  ``E_{p_t}[e^r] >= E_{p_data}[e^r] + λ/(1+λ)^3 (K-1) Var_{p_data}[e^r] / (K e^{r*})``;
  ``λ/(1+λ)^3 = (1-s) s^2``.
* **Ferbach Theorem 2.4** (``φ = 0``, applies iff ``λ (K-1) < 1``; assumes ``p_0 = p_data``, NaN otherwise):
  ``KL(p_t || p_data) <= -log(1 - λ(K-1)) = log s - log(s - (1-s)(K-1))``.
* **Wei Lemma 3.3** (fully synthetic, mixed users), in the form of the seed summary:
  ``E_{p_t}[e^r] >= E_{p_{t-1}}[e^r] + g_var + g_cov`` with ``g_var = (1-φ) c_K Var_{p_{t-1}}[e^r] / e^{r*}``.
  Two normalisations of the covariance term are monitored (the seed gives ``g_cov = φ c_K Cov[e^r, e^{r~}]``
  only "up to the paper's normalisation"):

  - ``lemma33_*``: ``g_cov = φ c_K Cov_{p_{t-1}}[e^r, e^{r~}] / e^{r~max}`` (scl's original transcription:
    Lemma 2.2's ``c_K Cov[e^r, e^r] / e^{r*}`` with the curating reward ``r~``; ``φ = 0`` is Lemma 2.2);
  - ``lemma33_signed_*``: ``g_cov_signed = φ c_K Cov / e^{r~max}`` when ``Cov >= 0`` and ``φ c_K Cov / e^{r~min}``
    when ``Cov < 0``. At ``K = inf`` the adversarial users move ``E[e^r]`` by exactly
    ``φ Cov[e^r, e^{r~}] / E[e^{r~}]`` and ``e^{r~min} <= E[e^{r~}] <= e^{r~max}``, so this form is a valid lower
    bound at ``K = inf`` for either sign; the ``e^{r~max}`` form is not when ``Cov < 0``.
* **Wei Lemma 3.4** (mixed data, constant ``φ_t = φ*``; asymptotic: ``t -> inf``), as transcribed from the seed:
  ``E_{p_t}[e^r] >= E_{p_data}[e^r] + φ (λ+1) Cov_min / e^{r~max}``, ``Cov_min`` the smallest
  ``Cov_{p_j}[e^r, e^{r~}]`` over the curated models ``j = 0 .. t-1`` (normalised by ``e^{r~max}`` as
  ``lemma33_*``). Applies when ``λ < inf``. It is reported for every step, but only the value at convergence
  (the last row of a long run) tests the statement.

Findings with the exact engine (``scl.exact``; tests in ``tests/test_theory.py``; rates in ``docs/theory.md``):

* Lemma 2.2, Theorem 2.3 and Theorem 2.4 held on every random instance tried.
* For **finite K**, ``Cov[e^r, e^{r~}] >= 0`` does not imply a non-decreasing ``E[e^r]`` — a finding about the
  paper's Lemma 3.3 itself, whatever the normalisation: the adversarial part moves ``E[e^r]`` by
  ``φ Cov[e^r, H_K^{r~}]`` and ``H_K^{r~}`` is a concave, saturating function of ``e^{r~}``. Three equally likely
  atoms with ``e^r = (1, .001, 1.05)``, ``e^{r~} = (e^{-20}, .5, 1)``, ``K = 2``, ``φ = 1``: ``Cov = 1/120 > 0``
  and ``E[e^r]`` falls. Both forms fail there (about 1-3% of random ``K = 2, 3`` instances with ``Cov >= 0``), and
  the signed form also fails on rare finite-K instances with ``Cov < 0`` (about 0.05%).
* At ``K = inf`` the signed form held on every instance; the ``e^{r~max}`` form fails on about 30% of the
  instances with ``Cov < 0`` — a failure of the original transcription (normalising by ``e^{r~max}``), not of
  the paper.
* Lemma 3.4 as transcribed fails at convergence for small ``λ`` with ``Cov_min > 0`` (at ``λ = 0``, ``p_t = p_data``
  and the bound reads ``φ Cov_min <= 0``) and on a few instances with ``Cov_min < 0``; see ``docs/theory.md``.
"""

from __future__ import annotations

from typing import Any

import chex
import jax.numpy as jnp

from scl import metrics as metrics_lib

Array = chex.Array


def _scaled_exp(r: Array, support: Array) -> tuple[Array, Array]:
  """``(e^{r - r*}, r*)`` with ``r* = max r`` over ``support`` (``[n]`` bool); 0 off the support."""
  r_star = jnp.max(jnp.where(support, r, -jnp.inf))
  return jnp.where(support, jnp.exp(jnp.minimum(r - r_star, 0.0)), 0.0), r_star


def _natural(scale: Array, x: Array) -> Array:
  """``scale * x`` back in natural units, with ``0 * e^{r*}`` exactly 0 when ``e^{r*}`` overflows to inf
  (rewards above ~88 in float32: the natural-unit value of a nonzero ``x`` is then ±inf, its scaled one
  finite)."""
  return jnp.where(x == 0, jnp.zeros_like(x), scale * x)


def _mean(p: Array, x: Array) -> Array:
  return jnp.sum(p * x)


def _cov(p: Array, x: Array, y: Array) -> Array:
  return jnp.sum(p * (x - _mean(p, x)) * (y - _mean(p, y)))


def _holds(lhs_minus_rhs: Array, scale: Array, rtol: float, applies: Array, atol: Any = 0.0) -> Array:
  """1.0 if ``lhs >= rhs`` up to ``rtol * scale + atol`` (the accuracy of the inputs), NaN if not applicable."""
  ok = (lhs_minus_rhs >= -(rtol * scale + atol)).astype(lhs_minus_rhs.dtype)
  return jnp.where(applies, ok, jnp.nan)


def monitors(p_prev: Array, p_next: Array, r: Array, K: Any, real_share: Any, p_data: Array,
             r_tilde: Array | None = None, phi: Any = 0.0, *, p0_is_data: bool | Array = True,
             cov_min_prev: Array | None = None, rtol: float = 1e-6, atol: Any = 0.0,
             support: Array | None = None) -> dict[str, Array]:
  """The papers' bounds for one step ``p_{t-1} -> p_t`` of the loop, each with whether it holds.

  Args:
    p_prev: [n] ``p_{t-1}``, the model that was curated.
    p_next: [n] ``p_t``, the retrained model.
    r: [n] users' reward ``r``.
    K: candidates per choice ``K`` (``inf`` allowed).
    real_share: ``s = 1/(1+λ)`` (0 = fully synthetic).
    p_data: [n] real data distribution.
    r_tilde: optional [n] adversarial reward ``r~`` (without it ``φ`` is taken as 0 and the covariances are
      NaN).
    phi: fraction ``φ`` of malicious users.
    p0_is_data: whether the run started at ``p_0 = p_data`` (bool or traced scalar); Theorems 2.3 and 2.4
      assume it, and their monitors are NaN (not applicable) when it is false.
    cov_min_prev: scalar, the smallest scaled covariance ``Cov_{p_j}[ā, b̄]`` over the models
      ``p_0 .. p_{t-2}`` curated before ``p_prev`` (``+inf`` or None: none). The running minimum through this
      step is returned as ``lemma34_cov_min_scaled``: carry it into the next call.
    rtol: relative tolerance of the ``*_holds`` comparisons: the numerical accuracy of ``p_next`` (e.g. 2e-4
      for the float32 exact engine, 0 for an exact comparison). It is never used to weaken a bound: the
      ``*_slack`` values report the exact margins.
    atol: absolute tolerance of the comparisons of ``E_{p_t}[e^{r - r*}]`` (Lemmas 2.2, 3.3, 3.4, Theorem 2.3;
      scaled units), for a ``p_next`` fitted to samples: a multiple of its standard error (the Monte Carlo
      loop passes 4 of them, :func:`scl.loop.step_monitors`). Not applied to Theorem 2.4's KL.
    support: optional ``[n]`` bool, the atoms over which ``r*``, ``r~max`` and ``r~min`` are taken (it must
      contain the atoms where ``p_prev``, ``p_next`` or ``p_data`` is positive); None: exactly those. A run
      passes one mask for all its steps (:func:`scl.exact.run`: the supports of ``p_0`` and ``p_data``) so that
      the scaled ``cov_min_prev`` it carries keeps its units.
  Returns:
    Scalars (dtype of ``p_prev``): ``exp_reward_prev`` (E_{p_{t-1}}[e^r]); ``lemma22_rhs``,
    ``lemma22_slack``, ``lemma22_holds``; ``thm23_rhs``, ``thm23_slack``, ``thm23_holds``; ``thm24_rhs``,
    ``thm24_slack`` (rhs - KL), ``thm24_holds``; ``cov_r_rtilde`` (Cov_{p_{t-1}}[e^r, e^{r~}], natural units),
    ``cov_r_rtilde_scaled`` (Cov[ā, b̄]), ``g_var``, ``g_cov``, ``g_cov_signed`` (natural units of e^r);
    ``lemma33_rhs``, ``lemma33_slack``, ``lemma33_holds`` (normalised by ``e^{r~max}``);
    ``lemma33_signed_rhs``, ``lemma33_signed_slack``, ``lemma33_signed_holds`` (sign-aware normalisation);
    ``lemma34_cov_min`` (natural units), ``lemma34_cov_min_scaled``, ``lemma34_rhs``, ``lemma34_slack``,
    ``lemma34_holds``.
  """
  chex.assert_rank(p_prev, 1)
  chex.assert_equal_shape([p_prev, p_next, r, p_data])
  dtype = p_prev.dtype
  r = jnp.asarray(r, dtype)
  K = jnp.asarray(K, dtype)
  s = jnp.asarray(real_share, dtype)
  nan = jnp.asarray(jnp.nan, dtype)
  benign = r_tilde is None
  phi = jnp.zeros((), dtype) if benign else jnp.asarray(phi, dtype)
  from_data = jnp.asarray(p0_is_data, bool)

  if support is None:
    support = (p_prev > 0) | (p_next > 0) | (p_data > 0)
  chex.assert_shape(support, p_prev.shape)
  a, r_star = _scaled_exp(r, support)
  scale = jnp.exp(r_star)                                    # e^{r*} (may overflow; only for *_rhs)
  c_K = 1.0 - 1.0 / K                                        # (K-1)/K, 1 for K = inf
  e_prev, e_next, e_data = _mean(p_prev, a), _mean(p_next, a), _mean(p_data, a)
  var_prev, var_data = _cov(p_prev, a, a), _cov(p_data, a, a)

  out = {"exp_reward_prev": _natural(scale, e_prev)}

  # Ferbach Lemma 2.2 (fully synthetic, benign users).
  applies = (s == 0) & (phi == 0)
  rhs = e_prev + c_K * var_prev
  out["lemma22_rhs"] = jnp.where(applies, _natural(scale, rhs), nan)
  out["lemma22_slack"] = jnp.where(applies, e_next - rhs, nan)
  out["lemma22_holds"] = _holds(e_next - rhs, e_next, rtol, applies, atol)

  # Ferbach Theorem 2.3 (real data, benign users, p_0 = p_data).
  applies = (phi == 0) & from_data
  rhs = e_data + (1.0 - s) * s ** 2 * c_K * var_data
  out["thm23_rhs"] = jnp.where(applies, _natural(scale, rhs), nan)
  out["thm23_slack"] = jnp.where(applies, e_next - rhs, nan)
  out["thm23_holds"] = _holds(e_next - rhs, e_next, rtol, applies, atol)

  # Ferbach Theorem 2.4: λ(K-1) < 1  <=>  (1-s)(K-1) < s; bound -log(1 - λ(K-1)); p_0 = p_data.
  Km1 = jnp.where(jnp.isinf(K), 0.0, K - 1.0)
  lam_km1_lt_1 = jnp.where(jnp.isinf(K), s == 1, (1.0 - s) * Km1 < s)
  applies = (phi == 0) & lam_km1_lt_1 & from_data
  denom = jnp.where(applies, s - (1.0 - s) * Km1, 1.0)
  rhs = jnp.where(applies, jnp.log(jnp.where(applies, s, 1.0)) - jnp.log(denom), nan)
  kl = metrics_lib.kl(p_next, p_data)
  out["thm24_rhs"] = rhs
  out["thm24_slack"] = jnp.where(applies, rhs - kl, nan)
  out["thm24_holds"] = _holds(rhs - kl, jnp.maximum(rhs, 1.0), rtol, applies)

  # Wei Lemma 3.3 (fully synthetic, mixed users): g_cov normalised by e^{r~max}, and the sign-aware form.
  g_var = (1.0 - phi) * c_K * var_prev
  if benign:
    cov_scaled = nan
    g_cov = g_cov_signed = jnp.zeros((), dtype)
    adv_scale = nan
  else:
    b, r_tilde_star = _scaled_exp(jnp.asarray(r_tilde, dtype), support)
    cov_scaled = _cov(p_prev, a, b)
    g_cov = phi * c_K * cov_scaled
    # Cov < 0: divide by e^{r~min}, i.e. (scaled) by b̄_min = e^{r~min - r~max} (-inf if it underflows:
    # the bound is then vacuous, never wrong).
    b_min = jnp.min(jnp.where(support, b, jnp.inf))
    g_cov_signed = phi * c_K * jnp.where(cov_scaled >= 0, cov_scaled, cov_scaled / b_min)
    adv_scale = jnp.exp(r_tilde_star)
  applies = s == 0
  out["cov_r_rtilde"] = _natural(scale * adv_scale, cov_scaled)
  out["cov_r_rtilde_scaled"] = cov_scaled
  out["g_var"] = _natural(scale, g_var)
  out["g_cov"] = _natural(scale, g_cov)
  out["g_cov_signed"] = _natural(scale, g_cov_signed)
  for name, g in (("lemma33", g_cov), ("lemma33_signed", g_cov_signed)):
    rhs = e_prev + g_var + g
    out[f"{name}_rhs"] = jnp.where(applies, _natural(scale, rhs), nan)
    out[f"{name}_slack"] = jnp.where(applies, e_next - rhs, nan)
    out[f"{name}_holds"] = _holds(e_next - rhs, e_next, rtol, applies, atol)

  # Wei Lemma 3.4 (mixed data, constant φ; asymptotic in t):
  # E_{p_t}[e^r] >= E_{p_data}[e^r] + φ (λ+1) Cov_min / e^{r~max}, with λ + 1 = 1/s.
  cov_min = cov_scaled if cov_min_prev is None else jnp.minimum(jnp.asarray(cov_min_prev, dtype), cov_scaled)
  applies = s > 0
  g34 = jnp.zeros((), dtype) if benign else phi / jnp.where(applies, s, 1.0) * cov_min
  rhs = e_data + g34
  out["lemma34_cov_min"] = _natural(scale * adv_scale, cov_min)
  out["lemma34_cov_min_scaled"] = cov_min
  out["lemma34_rhs"] = jnp.where(applies, _natural(scale, rhs), nan)
  out["lemma34_slack"] = jnp.where(applies, e_next - rhs, nan)
  out["lemma34_holds"] = _holds(e_next - rhs, e_next, rtol, applies, atol)
  return {k: jnp.asarray(v, dtype) for k, v in out.items()}
