"""Label-flip attacks on preference data (DESIGN §1, "Label-flip attacks"; Wei & Zhang 2025).

The attacker sees model samples ``x_pool [P, *event]`` of ``p_t``, preference pairs ``x, z [n, *event]`` with
their genuine labels ``o [n]`` (``o_i = 1``: ``z_i`` preferred) and its own reward estimate ``R_θ`` (fitted on
the genuine labels with :func:`scl.reward_model.fit_reward`). It flips ``o_i -> 1 - o_i`` on EXACTLY
``floor(κ n)`` pairs, ``κ`` a traced scalar: every attack scores the pairs, ranks them with a stable
descending argsort (ties go to the lower index, so the choice is deterministic) and flips those whose rank is
``< floor(κ n)`` (:func:`flip_top`). A flipped tie (``o = 1/2``) stays ``1/2``; it still counts in the budget.

Attacks, registered in :data:`scl.registry.ATTACKS` with the signature
``(key, x, z, o, view: AttackerView, hyper, cfg) -> (o_flipped, flipped[, stats])``:
  * ``"none"``: no flips (``κ`` ignored).
  * ``"random"``: a uniformly random subset of ``floor(κ n)`` pairs.
  * ``"dist"``: the pairs with the largest ``|R_θ(x) - R_θ(z)|`` (the most confident preferences).
  * ``"top"``: the pairs holding the highest-reward samples, score ``max(R_θ(x), R_θ(z))``.
  * ``"gradient"``: the bi-level attack. Relax the flips to ``o + δ`` with ``o + δ ∈ [0, 1]``, let
    ``θ~(δ) = argmin_θ L(θ; o + δ)`` (the platform's Bradley–Terry fit) and minimise

        J(δ) = Cov_{p_t}[e^{R_θ(x) - c}, e^{R_θ~(δ)(x) - c}] + α · dist(R_θ, R_θ~(δ)),
        dist(R, R~) = mean_x [((R(x) - mean R) - (R~(x) - mean R~))²] / Var_x[R(x)]     (x over x_pool)

    with ``c = max_x R_θ(x)`` over the pool, divided by ``V = Var[e^{R_θ - c}]`` (in code; left out above).
    ``c`` and ``V`` are constants (they do not depend on ``δ``), so the first term is
    ``Cov[e^{R_θ}, e^{R_θ~}] / Var[e^{R_θ}]``, a positive multiple of the paper's covariance: the same
    minimisers and the same sign, computed without overflow (the exponents are ``<= 0`` for ``R_θ``), and
    scale free (it is 1 at ``δ = 0``), so the stealth weight ``α`` means the same thing for any reward.
    ``dist`` is centred because Bradley–Terry rewards are only defined up to a shift, and relative to the
    attacker's reward variance (a constant) so that it is scale free like the covariance term; ``α = 1``
    then prices a centred mean squared error of one reward standard deviation as much as the largest
    possible covariance.
    ``dJ/dδ`` comes from the implicit function theorem (one matrix-free CG solve per gradient, no Hessian):
    for the plain Bradley–Terry fit by the adjoint equation (:func:`bt_adjoint_objective`, each solve
    warm-started at the previous outer step's), for a defended fit by ``jax.grad`` through its implicitly
    differentiated solve (:func:`relaxed_objective`). ``steps`` outer iterations (static) each re-fit
    ``θ~`` (warm-started) and take ``dJ/dδ``; all but the last take a projected step
    ``δ <- Π(δ - η g / max|g|)``, with ``Π`` the projection onto
    ``{o + δ ∈ [0, 1]} ∩ {||δ||_1 <= floor(κ n)}`` (the convex hull of the allowed flips). The last
    gradient scores each pair by the first-order decrease of ``J`` that flipping it brings,
    ``-g_i (1 - 2 o_i)``, and the top ``floor(κ n)`` pairs are flipped.
    Defaults (each static and switchable, see :func:`gradient_attack`): the relaxation starts at the
    ``dist`` heuristic's flips (``init="dist"``), the covariance term uses ``R~`` standardised to ``R``'s
    mean and scale (``standardise=True``), and the attack keeps whichever of its own flips and ``dist``'s
    has the lower discrete ``J`` after a re-fit (``select=True``). Why: a Bradley–Terry fit on flipped
    labels fixes the scale of ``R~`` poorly, so the raw covariance can be lowered by flattening ``R~``
    rather than reversing its order, and the first-order scores from ``δ = 0`` are a poor guide to a
    discrete move of ``floor(κ n)`` labels. On the Gaussian-8 benchmark the original recipe
    (``init="zero", standardise=False, select=False``) beat random flips on 4 of 6 small instances and let
    the true reward climb to about -1.3 in some loop runs; the defaults beat random on 6 of 6 and hold
    the loop at about -2.9, as the ``dist`` heuristic does.

  * ``"gradient_adaptive"``: the same attack by an attacker who knows the platform's defence
    (``cfg.platform.defence``, :mod:`scl.defences`) and its strength ``ε``: ``θ~(δ)`` is the DEFENDED fit
    (label smoothing, the unbiased loss, the outlier model), and ``dJ/dδ`` flows through it by implicit
    differentiation. Against ``"none"`` it is ``"gradient"``; against the discrete filters it falls back to the
    undefended fit as a surrogate.

All functions are pure and jittable (``n``, ``P``, ``steps``, solver iteration caps, ``apply_fn`` and the
attack name static; ``κ``, ``α``, ``l2`` and the data traced), and vmappable over ``κ`` and ``α``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp

from scl import config
from scl import curation
from scl import defences
from scl import hyper as hyper_lib
from scl import preferences
from scl import registry
from scl import reward_model

Params = Any
ApplyFn = Callable[[Params, chex.Array], chex.Array]

# Solver settings of the gradient attack's warm-started re-fits of θ~ and its adjoint solves (overridable by
# ``**fit_kwargs``). Each re-fit starts at the previous outer step's θ~ and stops at ||∇L|| <= 1e-4 or 100
# L-BFGS iterations; each adjoint solve starts at the previous step's solution and takes at most 10 CG steps
# (relative residual 1e-4). The attack only uses dJ/dδ to rank pairs, and it is chaotic at the level of solver
# tolerance (a changed rounding alone changes a few flips on some instances, and their re-fitted J either
# way), so settings are compared over many instances, by the J of each attack's flips with θ~ re-fitted
# tightly from θ (a sign test over the instances where the flips differ):
#   * 10 CG steps against 30: no weaker (better on 16 of 25 differing 500-pair rings and on 8 of 11 1,000-pair
#     rings), and 1.3x faster at 50,000 pairs, where the solves stop at the cap;
#   * 60 or 80 L-BFGS iterations (with 10 CG steps) against 100: weaker (worse on 17 of 27 and 17 of 28;
#     median J -76 and -84 against -89), and not faster at 50,000 pairs (less converged re-fits slow the
#     next ones);
#   * 6 or 4 CG steps against 10 (with a memory of 20 and the selection's start below): worse on 16 of 27 and
#     17 of 25 differing 1,000-pair rings of benchmarks/reference.py's kind (2 -> 64 -> 1), not significant
#     at 1% (p = 0.22 and 0.054) but no sign of a gain in quality for a 5-10% saving; kept at 10;
#   * an L-BFGS memory of 30 curvature pairs against 10, with the selection's re-fit started from the last
#     outer step's θ~ (``select_from="last"``) instead of from θ: no weaker (better on 17 of 30 differing
#     1,000-pair rings and on 6 of 12 4,000-pair ones; on the 24 rings of seeds 100-123 where a memory of 20
#     alone had looked worse, 4 better / 7 worse, a review found 8 better / 6 worse for the pair of changes),
#     and 30% fewer loss-and-gradient evaluations (346 against 495 on average at 1,000 pairs, 352 against
#     479 at 4,000): most re-fits stopped at the cap of 100 iterations with 10 pairs of memory. 20 pairs: as
#     few at 1,000 pairs (364), more at 4,000 (396); 45 or 60: no fewer than 30
#     (benchmarks/attack_settings.py makes these comparisons).
GRADIENT_ATTACK_FIT = dict(maxiter=100, tol=1e-4, cg_maxiter=10, cg_tol=1e-4, history_size=30)

# The first outer step's re-fit (on the ``dist`` heuristic's flips, far from θ's optimum) starts from a fit on
# about COARSE_PAIRS of the pairs when there are at least twice as many (:func:`scl.reward_model.fit_on_subsample`),
# capped at COARSE_MAXITER iterations. In benchmarks/attack.py's 50,000-pair instance that re-fit from θ stopped
# at the cap of 100 iterations with ||∇L|| = 2.4e-2 (about 200 reach the tolerance); after 294 iterations on
# 10,000 pairs it converges in 40, and the attack takes 1.8 s instead of 2.3 s (2.0 s with 5,000 pairs). The
# selection's re-fit does not start from the subsample fit: from θ on the gradient's flips it converged in 17-47
# iterations there (with a memory of 10; 20-24 evaluations from θ and 24-42 from the last outer step's θ~, the
# default, with 30), and took 100 (the cap) after a subsample start. At 400 pairs with 100 in the subsample the
# flips are no weaker by a sign test over 24 instances (tests/test_attacks.py).
COARSE_PAIRS = 10000
COARSE_MAXITER = 300


def flip_budget(kappa: chex.Array, n: int) -> chex.Array:
  """``floor(κ n)`` as int32, clipped to ``[0, n]``, robust to float32 rounding (``κ = 0.7, n = 10`` is 7).

  The same count as the pool filters' :func:`scl.curation.keep_count`.
  """
  return curation.keep_count(kappa, n)


def flip_top(o: chex.Array, scores: chex.Array,
             kappa: chex.Array) -> tuple[chex.Array, chex.Array]:
  """Flip the ``floor(κ n)`` pairs with the largest scores.

  Args:
    o: labels ``[n]`` in ``[0, 1]``.
    scores: ``[n]``; NaN counts as ``-inf``. Ties are broken by index (lower index first).
    kappa: flip budget ``κ`` (traced scalar).

  Returns:
    ``(o_flipped [n], mask [n] bool)`` with ``sum(mask) == floor(κ n)`` exactly.
  """
  chex.assert_rank([o, scores], 1)
  chex.assert_equal_shape([o, scores])
  n = o.shape[0]
  scores = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
  order = jnp.argsort(-scores, stable=True)
  rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
  mask = rank < flip_budget(kappa, n)
  return jnp.where(mask, 1.0 - o, o), mask


def random_attack(key: chex.PRNGKey, o: chex.Array,
                  kappa: chex.Array) -> tuple[chex.Array, chex.Array]:
  """Flip a uniformly random subset of ``floor(κ n)`` pairs (the same key gives the same subset)."""
  chex.assert_rank(o, 1)
  return flip_top(o, jax.random.uniform(key, o.shape), kappa)


def dist_attack(o: chex.Array, r_x: chex.Array, r_z: chex.Array,
                kappa: chex.Array) -> tuple[chex.Array, chex.Array]:
  """Flip the pairs with the largest reward gap ``|R_θ(x) - R_θ(z)|`` (``r_x, r_z [n]``)."""
  chex.assert_equal_shape([o, r_x, r_z])
  return flip_top(o, jnp.abs(r_x - r_z), kappa)


def top_attack(o: chex.Array, r_x: chex.Array, r_z: chex.Array,
               kappa: chex.Array) -> tuple[chex.Array, chex.Array]:
  """Flip the pairs that contain the highest-reward samples, score ``max(R_θ(x), R_θ(z))``."""
  chex.assert_equal_shape([o, r_x, r_z])
  return flip_top(o, jnp.maximum(r_x, r_z), kappa)


def exp_covariance(r: chex.Array, r_tilde: chex.Array, shift: chex.Array) -> chex.Array:
  """``Cov_x[e^{r(x) - c}, e^{r~(x) - c}]`` over samples (``r, r~ [P]``, ``c = shift``), the population form."""
  chex.assert_rank([r, r_tilde], 1)
  a = jnp.exp(r - shift)
  b = jnp.exp(r_tilde - shift)
  return jnp.mean((a - jnp.mean(a)) * (b - jnp.mean(b)))


def reward_distance(r: chex.Array, r_tilde: chex.Array) -> chex.Array:
  """``dist(R, R~) = mean[((R - mean R) - (R~ - mean R~))²] / Var[R]`` over samples (``[P]`` each).

  Invariant to shifting either reward and to a common rescaling of both; ``Var[R]`` (of the attacker's
  reward ``r``, floored at ``1e-12``) is a constant of the attack.
  """
  chex.assert_rank([r, r_tilde], 1)
  d = (r - jnp.mean(r)) - (r_tilde - jnp.mean(r_tilde))
  return jnp.mean(jnp.square(d)) / jnp.maximum(jnp.var(r), 1e-12)


def standardise_like(r: chex.Array, r_tilde: chex.Array) -> chex.Array:
  """``R~`` affinely mapped to the mean and standard deviation of ``R`` on the pool (``[P]`` each).

  ``mean R + std R · (R~ - mean R~) / std R~`` (``std R~`` floored at ``1e-6``): only the shape of ``R~``
  is kept, not its scale, which a Bradley–Terry fit on flipped labels determines poorly.
  """
  chex.assert_rank([r, r_tilde], 1)
  z = (r_tilde - jnp.mean(r_tilde)) / jnp.maximum(jnp.std(r_tilde), 1e-6)
  return jnp.mean(r) + jnp.std(r) * z


#: How the gradient attack weighs its two terms (static): the paper's ``Cov + α dist`` (Section 4.1) or the
#: second paper's public code's ``α Cov + (1 - α) dist`` (its default ``α = 0.8``).
WEIGHTINGS = ("paper", "code")
#: The gradient attack's recipes (static): ``"paper"`` is Section 4.1 as written (start at ``δ = 0``, raw
#: covariance, flip the top ``κn`` by the last gradient); ``"robust"`` is scl's (start at the ``dist`` flips,
#: standardised covariance, keep the better of its own and ``dist``'s flips by refitted ``J``).
RECIPES = {"paper": dict(init="zero", standardise=False, select=False),
           "robust": dict(init="dist", standardise=True, select=True)}


def attack_objective(r: chex.Array, r_tilde: chex.Array, alpha: chex.Array,
                     shift: chex.Array, standardise: bool = False, weighting: str = "paper") -> chex.Array:
  """``J = Cov[e^{R-c}, e^{R~-c}] / Var[e^{R-c}] + α dist(R, R~)`` on the pool (``r, r~ [P]``, ``c = shift``).

  With ``weighting="code"`` (static) ``J = α Cov[...] / Var[...] + (1 - α) dist(R, R~)``, the second paper's
  public code's weighting.

  ``Var[e^{R - c}]`` (floored at ``1e-30``) is a positive constant of the attack, so it changes neither the
  sign nor the minimisers of the covariance; it makes the term scale free (1 when ``R~ = R``).
  ``standardise`` (static): use :func:`standardise_like` ``(R, R~)`` in the covariance term (``dist`` keeps
  the raw ``R~``), so the term cannot be lowered by merely shrinking or inflating the scale of ``R~``.
  """
  var = jnp.maximum(exp_covariance(r, r, shift), 1e-30)
  r_cov = standardise_like(r, r_tilde) if standardise else r_tilde
  cov, dist = exp_covariance(r, r_cov, shift) / var, reward_distance(r, r_tilde)
  if weighting == "code":
    return alpha * cov + (1.0 - alpha) * dist
  if weighting != "paper":
    raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
  return cov + alpha * dist


def relaxed_objective(delta: chex.Array, theta_init: Params, *, o: chex.Array, x: chex.Array,
                      z: chex.Array, x_pool: chex.Array, r_pool: chex.Array, apply_fn: ApplyFn,
                      alpha: chex.Array, l2: chex.Array, shift: chex.Array,
                      standardise: bool = False, weighting: str = "paper", refit: Callable | None = None,
                      points: chex.Array | None = None, return_info: bool = False,
                      **fit_kwargs) -> tuple[chex.Array, Params]:
  """``J(δ)``: re-fit ``θ~ = argmin L(θ; o + δ)`` from ``theta_init`` and evaluate the attack objective.

  Args:
    delta: label perturbation ``δ [n]`` (``o + δ ∈ [0, 1]``).
    theta_init: warm start of the fit (not differentiated).
    o, x, z: genuine labels ``[n]`` and pairs ``[n, *event]``.
    x_pool, r_pool: samples of ``p_t`` ``[P, *event]`` and the attacker's ``R_θ`` on them ``[P]``.
    apply_fn: the reward network (static).
    alpha, l2, shift: ``α``, the platform's L2 weight and the constant ``c``.
    standardise, weighting (static): see :func:`attack_objective`.
    refit: the platform's fit ``(theta_init, apply_fn, x, z, o, l2, **fit_kwargs) -> θ~``, differentiable in
      ``o``; None is the undefended :func:`scl.reward_model.fit_reward` (a defended one:
      :func:`scl.defences.refit_for`).
    points: ``[P, *event]`` when ``x`` and ``z`` are int indices into it (the plain fit only,
      :func:`scl.reward_model.fit_reward`); None when they are the samples.
    return_info (static): also return the plain fit's :class:`scl._solvers.SolveInfo` (the plain fit only).
    **fit_kwargs: solver settings for ``refit``.

  Returns:
    ``(J, θ~)`` (then ``info`` if ``return_info``); ``jax.grad`` w.r.t. ``delta`` (with ``has_aux``)
    differentiates through the solve implicitly.
  """
  if refit is None:
    theta_tilde, solve_info = reward_model.fit_reward(theta_init, apply_fn, x, z, o + delta, l2, points=points,
                                                      return_info=True, **fit_kwargs)
  elif points is not None or return_info:
    raise ValueError("a defended refit takes the pairs' samples (not indices into points) and reports no info")
  else:
    theta_tilde = refit(theta_init, apply_fn, x, z, o + delta, l2, **fit_kwargs)
  info = (solve_info,) if return_info else ()
  r_tilde = apply_fn(theta_tilde, x_pool)
  return (attack_objective(r_pool, r_tilde, alpha, shift, standardise, weighting), theta_tilde) + info


def bt_adjoint_objective(delta: chex.Array, theta_init: Params, u_init: chex.Array, *, o: chex.Array,
                         x: chex.Array, z: chex.Array, x_pool: chex.Array, r_pool: chex.Array,
                         apply_fn: ApplyFn, alpha: chex.Array, l2: chex.Array, shift: chex.Array,
                         standardise: bool = False, weighting: str = "paper", cg_maxiter: int = 10,
                         cg_tol: float = 1e-4, points: chex.Array | None = None, return_info: bool = False,
                         **fit_kwargs) -> tuple[chex.Array, Params, chex.Array, chex.Array]:
  """``J(δ)`` and ``dJ/dδ`` for the plain Bradley–Terry re-fit by the adjoint equation (no autodiff of the fit).

  The labels enter the Bradley–Terry loss linearly, ``∂L/∂o_i = -d_i(θ) / n`` with ``d_i = R(z_i) - R(x_i)``,
  so the implicit function theorem gives

      dJ/dδ_i = (1/n) ∇_θ d_i(θ~) · u,    H(θ~; o + δ) u = ∇_θ J(θ~),

  one Hessian solve (conjugate gradients on Hessian-vector products, :func:`scl.reward_model.bt_hvp`, started
  at ``u_init``) and one forward-mode pass of the pair gaps in the direction ``u``. The same vector as
  ``jax.grad`` of :func:`relaxed_objective` (which solves the same system from ``u = 0`` inside jaxopt's
  implicit differentiation), but the solve can be warm-started at the previous outer step's ``u`` and the
  derivative in ``δ`` is one JVP instead of a reverse pass through the fit.

  Args:
    delta, theta_init: as :func:`relaxed_objective`; u_init: the solve's start ``[p]`` (flattened ``θ``).
    o, x, z, x_pool, r_pool, apply_fn, alpha, l2, shift, standardise, weighting: as :func:`relaxed_objective`.
    cg_maxiter, cg_tol: the conjugate-gradient solve (static cap; tolerance relative to ``||∇_θ J||``).
    points: ``[P, *event]`` when ``x`` and ``z`` are int indices into it, or None.
    return_info (static): also return the re-fit's :class:`scl._solvers.SolveInfo`.
    **fit_kwargs: solver settings of :func:`scl.reward_model.fit_reward`.

  Returns:
    ``(J, θ~, u, dJ/dδ [n])`` (then ``info`` if ``return_info``); nothing is differentiable (the returned
    values are the derivatives).
  """
  n = o.shape[0]
  theta, info = jax.lax.stop_gradient(reward_model.fit_reward(
      theta_init, apply_fn, x, z, o + delta, l2, points=points, return_info=True, **fit_kwargs))
  flat, unravel = ravel_pytree(theta)

  def objective(t):
    return attack_objective(r_pool, apply_fn(unravel(t), x_pool), alpha, shift, standardise, weighting)

  chunks = {k: fit_kwargs[k] for k in ("pair_chunk", "point_chunk") if k in fit_kwargs}

  def gaps(t):
    r_x, r_z = reward_model.pair_rewards(unravel(t), apply_fn, x, z, points)
    return r_z - r_x

  j, grad_j = jax.value_and_grad(objective)(flat)
  hvp = lambda v: ravel_pytree(reward_model.bt_hvp(theta, apply_fn, x, z, o + delta, l2, unravel(v), points,
                                                   **chunks))[0]
  u, _ = jax.scipy.sparse.linalg.cg(hvp, grad_j, x0=u_init, tol=cg_tol, maxiter=cg_maxiter)
  return (j, theta, u, jax.jvp(gaps, (flat,), (u,))[1] / n) + ((info,) if return_info else ())


def project_flips(v: chex.Array, o: chex.Array, budget: chex.Array,
                  bisection_steps: int = 40) -> chex.Array:
  """Euclidean projection of ``v [n]`` onto ``{δ : o + δ ∈ [0, 1], ||δ||_1 <= budget}``.

  The box ``[-o, 1 - o]`` contains 0, so the projection is the soft threshold ``sign(v) max(|v| - λ, 0)``
  clipped to the box, with the smallest ``λ >= 0`` meeting the budget (found by bisection, static steps).
  """
  lo_box, hi_box = -o, 1.0 - o

  def shrink(lam):
    return jnp.clip(jnp.sign(v) * jnp.maximum(jnp.abs(v) - lam, 0.0), lo_box, hi_box)

  def body(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    over = jnp.sum(jnp.abs(shrink(mid))) > budget
    return jnp.where(over, mid, lo), jnp.where(over, hi, mid)

  hi0 = jnp.max(jnp.abs(v))
  _, lam = jax.lax.fori_loop(0, bisection_steps, body, (jnp.zeros_like(hi0), hi0))
  inside = jnp.sum(jnp.abs(shrink(0.0))) <= budget
  return jnp.where(inside, shrink(0.0), shrink(lam))


def gradient_attack(x: chex.Array, z: chex.Array, o: chex.Array, x_pool: chex.Array, params: Params,
                    apply_fn: ApplyFn, kappa: chex.Array, alpha: chex.Array, l2: chex.Array, *,
                    steps: int = 5, step_size: float | chex.Array = 1.0, return_scores: bool = False,
                    init: str = "dist", standardise: bool = True, select: bool = True,
                    weighting: str = "paper", return_info: bool = False, refit: Callable | None = None,
                    points: chex.Array | None = None, coarse_pairs: int | None = COARSE_PAIRS,
                    coarse_maxiter: int = COARSE_MAXITER, select_from: str = "last", **fit_kwargs):
  """The bi-level gradient attack (module docstring): flip the ``floor(κ n)`` pairs that lower ``J`` most.

  Args:
    x, z: pairs ``[n, *event]``, or int indices ``[n]`` into ``points``; o: genuine labels ``[n]``.
    x_pool: samples of ``p_t`` ``[P, *event]`` on which ``Cov`` and ``dist`` are estimated.
    params: the attacker's ``θ`` (its reward fitted on the genuine labels); warm start of every re-fit.
    apply_fn: reward network ``(θ, x) -> [n]`` (static).
    kappa, alpha, l2: ``κ``, ``α`` and the platform's L2 weight (traced scalars).
    steps: outer iterations (static, >= 1); each costs one warm-started fit and one CG solve.
    step_size: ``η``, the largest label move of one projected step (in label units).
    return_scores: also return the final scores ``-g (1 - 2o)`` ``[n]`` and the relaxed ``δ [n]``.
    init (static): the relaxation's start, ``"dist"`` (the vertex of the ``dist`` heuristic's flips) or
      ``"zero"`` (``δ = 0``, the genuine labels).
    standardise (static): the covariance term on ``R~`` standardised to ``R``'s mean and scale
      (:func:`attack_objective`); ``False`` is the raw ``Cov[e^R, e^{R~}] / Var[e^R]``.
    select (static): re-fit ``θ~`` on the gradient's discrete flips and on the ``dist`` heuristic's, and
      keep the flips with the lower ``J`` (one more fit, no CG solve: with ``init="dist"`` the first outer
      step's re-fit is the ``dist`` flips' own, from θ or from the subsample fit of ``coarse_pairs``; with
      ``init="zero"`` two more, the ``dist`` flips' from θ).
    weighting (static): ``"paper"`` (``Cov + α dist``) or ``"code"`` (``α Cov + (1 - α) dist``).
    return_info: also return a dict: ``kept_dist`` (1.0 if the ``dist`` heuristic's flips were kept, else
      0.0) and the work of the plain Bradley–Terry re-fits: ``fit_iters`` and ``fit_evals`` ``[steps]``
      (L-BFGS iterations and loss-and-gradient evaluations of each outer step's re-fit; -1 for a defended
      re-fit, which reports none) and ``select_fit_iters``, ``select_fit_evals`` (the selection's re-fit on
      the gradient's flips; 0 without ``select``), and ``coarse_fit_iters``, ``coarse_fit_evals`` (the
      subsample fit that starts the first re-fit, on about ``coarse_pairs`` pairs; 0 without one), and
      ``nonfinite_steps``: outer steps whose ``J`` or ``dJ/dδ`` was not finite (``e^{R~ - c}`` beyond
      float32's range, where ``R~`` rises far above ``R_θ``'s maximum): they leave ``δ`` where it was, the
      flips come from the last finite gradient, and with none from the ``dist`` heuristic (``kept_dist = 1``).
    refit: the platform's fit the attack differentiates through (see :func:`relaxed_objective`); None is
      plain Bradley–Terry, :func:`scl.defences.refit_for` a defended fit (the adaptive attacker).
    points: ``[P', *event]`` samples that ``x`` and ``z`` index, or None. Every fit and Hessian-vector
      product then evaluates each distinct sample once (:func:`scl.reward_model.bt_value_and_grad`): the
      same attack, faster when the pairs share samples (the loop's pairs, drawn from its pool).
    coarse_pairs, coarse_maxiter (static): with ``init="dist"``, the plain fit and at least
      ``2 coarse_pairs`` pairs, the first outer step's re-fit starts from a fit of at most ``coarse_maxiter``
      iterations on about ``coarse_pairs`` of the pairs (:func:`scl.reward_model.fit_on_subsample`) instead
      of from ``θ``; None: always from ``θ``.
    select_from (static): where the selection's re-fit on the gradient's flips starts: ``"last"`` (the
      ``θ~`` of the last outer step whose ``J`` and ``dJ/dδ`` were finite, fitted on the relaxed labels
      those flips round; ``θ`` if none was) or ``"theta"`` (the attacker's ``θ``, as the ``dist`` flips'
      re-fit). From ``"last"`` it stops sooner (:data:`GRADIENT_ATTACK_FIT`'s comment).
    **fit_kwargs: solver settings for :func:`scl.reward_model.fit_reward` (``maxiter``, ``tol``, ...);
      unset ones take :data:`GRADIENT_ATTACK_FIT`.

  Returns:
    ``(o_flipped [n], mask [n] bool)`` (plus ``(scores, delta)`` if ``return_scores``, then ``info`` if
    ``return_info``).
  """
  fit_kwargs = {**GRADIENT_ATTACK_FIT, **fit_kwargs}
  if init not in ("dist", "zero"):
    raise ValueError(f"unknown init {init!r}; expected 'dist' or 'zero'")
  if select_from not in ("last", "theta"):
    raise ValueError(f"unknown select_from {select_from!r}; expected 'last' or 'theta'")
  chex.assert_rank(o, 1)
  chex.assert_equal_shape([x, z])
  chex.assert_equal_shape_prefix([x, o], 1)
  if points is not None and refit is not None:  # a defended refit takes the samples
    x, z, points = points[x], points[z], None
  chex.assert_equal_shape_suffix([x if points is None else points, x_pool], x_pool.ndim - 1)
  n = o.shape[0]
  r_pool = apply_fn(params, x_pool)
  shift = jax.lax.stop_gradient(jnp.max(r_pool))
  budget = flip_budget(kappa, n).astype(o.dtype)
  kw = dict(o=o, x=x, z=z, x_pool=x_pool, r_pool=r_pool, apply_fn=apply_fn, alpha=alpha, l2=l2, shift=shift,
            standardise=standardise, weighting=weighting, refit=refit, points=points, **fit_kwargs)
  o_dist, mask_dist = dist_attack(o, *reward_model.pair_rewards(params, apply_fn, x, z, points), kappa)
  delta0 = o_dist - o if init == "dist" else jnp.zeros_like(o)

  unknown = (jnp.int32(-1), jnp.int32(-1))

  def value_grad_j(delta, theta, u):
    if refit is None:  # plain Bradley–Terry: the adjoint form, its solve warm-started at the last step's
      j, theta, u, g, info = bt_adjoint_objective(
          delta, theta, u, return_info=True, **{k: v for k, v in kw.items() if k != "refit"})
      return j, theta, u, g, (info.num_iters, info.num_evals)
    (j, theta), g = jax.value_and_grad(relaxed_objective, has_aux=True)(delta, theta, **kw)
    return j, jax.lax.stop_gradient(theta), u, g, unknown

  def outer(carry, _):
    delta, theta, u, theta_ok = carry
    j, theta, u, g, work = value_grad_j(delta, theta, u)
    # e^{R~ - c} beyond float32's range (an R~ far above R_θ's max) makes J and dJ/dδ inf or NaN: such a step
    # gives no direction, so δ stays, and the next adjoint solve starts at 0 instead of at a non-finite u.
    ok = jnp.isfinite(j) & jnp.all(jnp.isfinite(g))
    u = jnp.where(jnp.all(jnp.isfinite(u)), u, jnp.zeros_like(u))
    step = g / (jnp.max(jnp.abs(g)) + jnp.finfo(g.dtype).tiny)
    new_delta = jnp.where(ok, project_flips(delta - step_size * step, o, budget), delta)
    # θ~ of the last finite step: fitted at the δ whose gradient the flips come from (the selection's start)
    theta_ok = jax.tree.map(lambda a, b: jnp.where(ok, a, b), theta, theta_ok)
    return (new_delta, theta, u, theta_ok), (g, delta, j, work, ok)

  u0 = jnp.zeros_like(ravel_pytree(params)[0])
  theta0, coarse_work = params, (jnp.int32(0), jnp.int32(0))
  if init == "dist" and refit is None and coarse_pairs is not None and n >= 2 * coarse_pairs:
    theta0, info = reward_model.fit_on_subsample(  # dist's flips are far from θ's optimum: start nearer
        params, apply_fn, x, z, o_dist, l2, pairs=coarse_pairs, points=points, return_info=True,
        **{**fit_kwargs, "maxiter": coarse_maxiter})
    coarse_work = (info.num_iters, info.num_evals)
  (_, _, _, theta_last), (gs, deltas, js, (fit_iters, fit_evals), oks) = jax.lax.scan(
      outer, (delta0, theta0, u0, params), None, length=steps)
  # The last finite gradient (all are, but where e^{R~ - c} overflowed) and the relaxed point it was taken at;
  # with none, the attack falls back on the dist heuristic's flips.
  last = jnp.max(jnp.where(oks, jnp.arange(steps), -1))
  g, delta = gs[jnp.maximum(last, 0)], deltas[jnp.maximum(last, 0)]
  scores = -g * (1.0 - 2.0 * o)
  o_flipped, mask = flip_top(o, scores, kappa)
  use_grad = last >= 0
  select_work = (jnp.int32(0), jnp.int32(0))
  if select:  # the discrete J of both flip sets, each with θ~ re-fitted
    # "last": the fit of the relaxed labels that o_flipped rounds (θ if no step was finite), nearer its optimum
    start = theta_last if select_from == "last" else params
    if refit is None:
      j_grad, _, info = relaxed_objective(o_flipped - o, start, return_info=True, **kw)
      select_work = (info.num_iters, info.num_evals)
    else:
      j_grad, select_work = relaxed_objective(o_flipped - o, start, **kw)[0], unknown
    # from δ = dist's flips the first outer step re-fitted θ~ from θ already: the same solve, not repeated
    j_dist = js[0] if init == "dist" else relaxed_objective(o_dist - o, params, **kw)[0]
    # J is minimised; an overflowed J compares as ±inf, and a NaN one never wins
    use_grad &= ~jnp.isnan(j_grad) & ((j_grad <= j_dist) | jnp.isnan(j_dist))
  o_flipped = jnp.where(use_grad, o_flipped, o_dist)
  mask = jnp.where(use_grad, mask, mask_dist)
  out = (o_flipped, mask) + ((scores, delta) if return_scores else ())
  info = {"kept_dist": jnp.logical_not(use_grad).astype(jnp.float32), "fit_iters": fit_iters,
          "fit_evals": fit_evals, "select_fit_iters": select_work[0], "select_fit_evals": select_work[1],
          "coarse_fit_iters": coarse_work[0], "coarse_fit_evals": coarse_work[1],
          "nonfinite_steps": jnp.sum(~oks).astype(jnp.float32)}
  return out + (info,) if return_info else out


class AttackerView(NamedTuple):
  """What the attacker knows besides the pairs: its reward estimate ``R_θ`` and samples of ``p_t``.

  Attributes:
    params: ``θ``, the attacker's reward fitted on the genuine labels (None for oblivious attacks).
    apply_fn: ``(θ, x [n, *event]) -> [n]`` (static).
    x_pool: samples of ``p_t`` ``[P, *event]`` on which the gradient attack estimates ``Cov`` and ``dist``.
    indexed: optionally ``(points [P', *event], ix [n], iz [n])``, the attack's pairs as indices into
      ``points`` (``x = points[ix]``, ``z = points[iz]``); the gradient attack then evaluates each distinct
      sample once per loss evaluation (the loop's platform passes it: its pairs are drawn from its pool).
  """

  params: Params = None
  apply_fn: ApplyFn | None = None
  x_pool: chex.Array | None = None
  indexed: tuple[chex.Array, chex.Array, chex.Array] | None = None

  def pair_rewards(self, x: chex.Array, z: chex.Array) -> tuple[chex.Array, chex.Array]:
    """``(R_θ(x), R_θ(z))``, each ``[n]``, from one network call; raises if the attacker has no reward."""
    if self.params is None or self.apply_fn is None:
      raise ValueError("this attack needs the attacker's reward (params, apply_fn)")
    return reward_model.pair_rewards(self.params, self.apply_fn, x, z)


# Registered attacks: ``(key, x, z, o, view, hyper, cfg) -> (o_flipped [n], flipped [n] bool)``.


@registry.ATTACKS.register("none")
def _none(key, x, z, o, view, hyper, cfg):
  del key, x, z, view, hyper, cfg
  return o, jnp.zeros(o.shape, bool)


@registry.ATTACKS.register("random")
def _random(key, x, z, o, view, hyper, cfg):
  del x, z, view, cfg
  return random_attack(key, o, hyper.kappa)


@registry.ATTACKS.register("dist")
def _dist(key, x, z, o, view, hyper, cfg):
  del key, cfg
  return dist_attack(o, *view.pair_rewards(x, z), hyper.kappa)


@registry.ATTACKS.register("top")
def _top(key, x, z, o, view, hyper, cfg):
  del key, cfg
  return top_attack(o, *view.pair_rewards(x, z), hyper.kappa)


def _check_gradient(cfg) -> None:
  p = cfg.platform
  if p.attack_recipe not in RECIPES:
    raise ValueError(f"invalid config: attack_recipe={p.attack_recipe!r}: choose one of {tuple(RECIPES)}")
  if p.attack_weighting not in WEIGHTINGS:
    raise ValueError(f"invalid config: attack_weighting={p.attack_weighting!r}: choose one of {WEIGHTINGS}")


def _run_gradient(x, z, o, view, hyper, cfg, refit=None):
  if view.x_pool is None:
    raise ValueError("the gradient attack needs samples x_pool of the current model p_t")
  view.pair_rewards(x[:1], z[:1])  # checks that the attacker's reward is given
  p = cfg.platform
  points = None
  if view.indexed is not None:
    points, x, z = view.indexed
  o_flipped, flipped, info = gradient_attack(
      x, z, o, view.x_pool, view.params, view.apply_fn, hyper.kappa, hyper.alpha, hyper.l2,
      steps=p.attack_steps, weighting=p.attack_weighting, return_info=True, refit=refit, points=points,
      **RECIPES[p.attack_recipe])
  return o_flipped, flipped, {"attack_kept_dist": info["kept_dist"],
                              "attack_nonfinite_steps": info["nonfinite_steps"]}


@registry.ATTACKS.register("gradient", validate=_check_gradient)
def _gradient(key, x, z, o, view, hyper, cfg):
  """The bi-level attack with ``cfg.platform``'s recipe and weighting; its third output reports
  ``attack_kept_dist`` (1.0 when the ``dist`` heuristic's flips were kept) and ``attack_nonfinite_steps``
  (outer steps whose objective overflowed float32, :func:`gradient_attack`)."""
  del key
  return _run_gradient(x, z, o, view, hyper, cfg)


@registry.ATTACKS.register("gradient_adaptive", validate=_check_gradient)
def _gradient_adaptive(key, x, z, o, view, hyper, cfg):
  """The gradient attack of an attacker who knows the platform's defence and its ``ε``: ``J`` is
  differentiated through the DEFENDED fit (:func:`scl.defences.refit_for`: ``"label_smoothing"``,
  ``"robust_bt"``, ``"outlier"``); against ``"none"`` it is ``"gradient"`` exactly, against the discrete filters
  (``"ensemble_filter"``, ``"knn_relabel"``) it uses the undefended fit as its surrogate."""
  del key
  return _run_gradient(x, z, o, view, hyper, cfg, defences.refit_for(cfg.platform.defence, hyper.eps))


def attack(name: str, key: chex.PRNGKey, x: chex.Array, z: chex.Array, o: chex.Array, *,
           kappa: chex.Array, alpha: chex.Array = 0.0, params: Params = None,
           apply_fn: ApplyFn | None = None, x_pool: chex.Array | None = None,
           l2: chex.Array = 1e-3, steps: int = 5) -> tuple[chex.Array, chex.Array]:
  """Run the registered attack ``name`` (static) outside the loop; returns ``(o_flipped [n], mask [n] bool)``.

  Args:
    name (static): a name in :data:`scl.registry.ATTACKS`.
    key: PRNG key (used by ``"random"``).
    x, z: pairs ``[n, *event]``; o: genuine labels ``[n]``.
    kappa: flip budget ``κ`` (ignored by ``"none"``); alpha: stealth weight ``α`` (``"gradient"``).
    params, apply_fn: the attacker's reward ``R_θ`` (``"dist"``, ``"top"``, ``"gradient"``).
    x_pool: samples of ``p_t`` ``[P, *event]`` (``"gradient"``).
    l2: the platform's L2 weight (``"gradient"``).
    steps: outer steps of the gradient attack (static).
  """
  chex.assert_rank(o, 1)
  preferences.check_labels(o)
  cfg = config.Config().replace(attack=name, attack_steps=steps).validate()
  hyper_lib.validate_concrete(cfg, kappa=kappa, alpha=alpha, l2=l2)  # κ in [0, 1], ... (as scl.run checks)
  hyper = hyper_lib.Hyper.defaults(kappa=kappa, alpha=alpha, l2=l2)
  return registry.ATTACKS[name](key, x, z, o, AttackerView(params, apply_fn, x_pool), hyper, cfg)[:2]
