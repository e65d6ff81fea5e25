"""Defences against label-flip attacks: the platform's reward fit, made robust (DESIGN §1, "Defences").

The platform receives pairs ``(x_i, z_i)`` with labels ``o_i`` (``o_i = 1``: ``z_i`` preferred), some of them
flipped by an attacker, and fits its reward ``R~``. A defence IS that fit: registered in
:data:`scl.registry.DEFENCES` with the signature

    (key, x [n, *event], z [n, *event], o [n], theta0, net: RewardNet, hyper, cfg)
        -> (theta_platform, flagged [n] bool or None[, stats: dict])

``theta0`` is the warm start (in the loop, as for the undefended fit, the attacker's reward fitted on the
genuine labels), ``net`` the reward family (``net.init`` for fresh members, ``net.apply`` static), ``flagged``
the pairs the defence suspects of being flipped (None if it does not flag). Its strength is the traced ``ε``
(``hyper.eps``; sweeping it never recompiles); what ``ε`` means depends on the defence:

  * ``"none"``: the plain Bradley–Terry fit :func:`scl.reward_model.fit_reward` (``ε`` ignored); today's fit,
    bit for bit.
  * ``"label_smoothing"``: Bradley–Terry on the smoothed labels ``o (1 - ε) + (1 - o) ε``, ``ε ∈ [0, 0.5)``
    the smoothing rate (``ε = 0`` is ``"none"`` exactly).
  * ``"robust_bt"``: the unbiased Bradley–Terry loss for a known flip rate ``ε ∈ [0, 0.5)`` (Chowdhury,
    Kini, Natarajan, ICML 2024, "Provably robust DPO"): per pair
    ``[(1 - ε) ℓ(θ; o) - ε ℓ(θ; 1 - o)] / (1 - 2ε)``, whose expectation over random flips at rate ``ε`` is the
    clean loss. ``ℓ`` is linear in the label, so this is ``ℓ(θ; (o - ε) / (1 - 2ε))``: Bradley–Terry on labels
    pushed OUTSIDE ``[0, 1]`` (the inverse of label smoothing's map). ``ε`` is given, not estimated. Taken
    literally the loss is unbounded below: along a pair it agrees with, its slope in the margin tends to
    ``-ε / (1 - 2ε)`` instead of 0, so once the reward orders the pairs with fewer than about ``ε n``
    disagreements, growing its scale lowers the loss without end; for an MLP, whose margins grow like the
    square of its weights' scale, the L2 term cannot stop that and the fit diverges (observed). scl therefore
    feeds the loss the bounded margin ``M tanh(d / M)``, ``M =`` :data:`ROBUST_MARGIN` (10, a label
    probability of ``1 - 5e-5``): the unbiased loss for ``|d| ≪ M``, bounded for any ``d``. It helps when
    the flips are random and the margins moderate; it is not convex and has a high variance near
    ``ε = 0.5``.
  * ``"outlier"``: a sparse per-pair outlier term fitted jointly with ``θ`` (in the spirit of R³M, Bukharin et
    al. 2024): the margin of pair ``i`` is ``R(z_i) - R(x_i) + δ_i`` and the loss adds ``λ_o |δ_i|`` (exact
    L1), ``λ_o = 1 - ε``, ``ε ∈ [0, 1)``. For a fixed ``θ`` the minimising ``δ_i`` has a closed form
    (:func:`outlier_terms`), so the joint minimum over ``(θ, δ)`` is the minimum over ``θ`` of the profile
    loss :func:`outlier_loss` — Bradley–Terry with each pair's influence on ``θ`` (the derivative of its loss
    w.r.t. its margin) capped at ``λ_o`` instead of 1. ``δ_i`` is exactly 0 unless the fit gives pair ``i``'s
    label a probability below ``ε`` (hard labels; a tie ``o = 1/2`` only for ``ε > 1/2``, where
    :func:`outlier_terms` caps its margin at ``±logit(3/2 − ε)``), and those pairs are flagged (``|δ_i| > 0``).
    ``ε = 0`` is plain Bradley–Terry.
  * ``"ensemble_filter"``: ``cfg.platform.ensemble_size`` reward models (vmapped), each from its own random
    initialisation and fitted on a bootstrap resample of the pairs; a pair whose label gets probability below
    ``ε ∈ [0, 0.5)`` under the ensemble's mean margin (a confident disagreement) is dropped (weight 0) and
    flagged; the platform fits Bradley–Terry on the rest, warm-started at ``theta0``.
  * ``"knn_relabel"``: label sanitisation (Paudice, Muñoz-González, Lupu 2018): each pair's ``k =
    cfg.platform.knn_k`` nearest pairs by Euclidean distance on the concatenated inputs ``[x_i, z_i]``,
    counting every other pair in both orientations (``(x_j, z_j, o_j)`` and ``(z_j, x_j, 1 - o_j)`` are the
    same comparison); a pair is relabelled ``o_i -> 1 - o_i`` and flagged when the neighbours' mean label
    differs from ``o_i`` by more than ``1 - ε``, ``ε ∈ [0, 0.5)`` (``ε = 0``: never; ``ε -> 0.5``: a simple
    majority disagrees). Then plain Bradley–Terry on the sanitised labels.

The fits of ``"label_smoothing"``, ``"robust_bt"`` and ``"outlier"`` are one differentiable solve of a loss
(:data:`LOSSES`, through :func:`fit_defended` and :func:`scl._solvers.minimize`), so the adaptive attacker
(``attack="gradient_adaptive"``, :mod:`scl.attacks`) differentiates through the defended fit by the implicit
function theorem; :func:`refit_for` gives it the defended re-fit.
"""

from __future__ import annotations

import functools

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp

from scl import _solvers
from scl import hyper as hyper_lib
from scl import preferences
from scl import registry
from scl import reward_model

Params = Any
ApplyFn = Callable[[Params, chex.Array], chex.Array]
#: ``(params, apply_fn, x, z, o, eps, l2) -> scalar``: a defended loss; its argmin over ``params`` is the fit.
Loss = Callable[..., chex.Array]

#: ``M``: ``"robust_bt"`` sees the margin ``M tanh(d / M)`` (its literal loss is unbounded below, see above).
ROBUST_MARGIN = 10.0
#: L-BFGS iterations of each ensemble member's fit (static): members start from random initialisations and
#: only their mean margin's sign and rough size are used.
ENSEMBLE_MAXITER = 200
#: Rows of the pair-to-pair distance matrix computed at once by ``"knn_relabel"`` (bounds its memory).
KNN_ROWS = 256


# ----------------------------------------------------------------------------------------------------------
# Losses.


def _sq_norm(params: Params) -> chex.Array:
  return sum(jnp.sum(jnp.square(p)) for p in jax.tree_util.tree_leaves(params))


def pair_margins(params: Params, apply_fn: ApplyFn, x: chex.Array, z: chex.Array) -> chex.Array:
  """``R_θ(z_i) - R_θ(x_i)`` ``[n]`` from one network call on ``[2n, *event]``."""
  r_x, r_z = reward_model.pair_rewards(params, apply_fn, x, z)
  return r_z - r_x


#: Per-pair Bradley–Terry negative log-likelihood ``-[o log s(d) + (1 - o) log s(-d)]`` ``[n]``.
pair_nll = reward_model.bt_nll


def smoothed_labels(o: chex.Array, eps: chex.Array) -> chex.Array:
  """``o (1 - ε) + (1 - o) ε``: labels pulled towards 1/2 (``ε = 0`` returns ``o`` exactly)."""
  return o * (1.0 - eps) + (1.0 - o) * eps


def unbiased_labels(o: chex.Array, eps: chex.Array) -> chex.Array:
  """``(o - ε) / (1 - 2ε)``: the labels for which Bradley–Terry is the unbiased loss of flip rate ``ε``.

  ``(1 - ε) ℓ(θ; o) - ε ℓ(θ; 1 - o) = (1 - 2ε) ℓ(θ; (o - ε) / (1 - 2ε))``, since ``ℓ`` is affine in the
  label.
  """
  return (o - eps) / (1.0 - 2.0 * eps)


def label_smoothing_loss(params, apply_fn, x, z, o, eps, l2):
  """Bradley–Terry loss (:func:`scl.reward_model.bt_loss`) on :func:`smoothed_labels` ``(o, ε)``."""
  return reward_model.bt_loss(params, apply_fn, x, z, smoothed_labels(o, eps), l2)


def label_smoothing_value_and_grad(params, apply_fn, x, z, o, eps, l2):
  """``(value, gradient)`` of :func:`label_smoothing_loss` by :func:`scl.reward_model.bt_value_and_grad`."""
  return reward_model.bt_value_and_grad(params, apply_fn, x, z, smoothed_labels(o, eps), l2)


def robust_bt_loss(params, apply_fn, x, z, o, eps, l2, margin: float | None = ROBUST_MARGIN):
  """The unbiased loss ``mean_i [(1 - ε) ℓ_i(o_i) - ε ℓ_i(1 - o_i)] / (1 - 2ε) + l2/2 ||θ||²``, ``ε < 1/2``.

  Computed as Bradley–Terry on :func:`unbiased_labels` (the same function, see there), on the bounded margin
  ``M tanh(d / M)`` with ``M = margin`` (static; None: the raw margin, unbounded below).
  """
  d = pair_margins(params, apply_fn, x, z)
  if margin is not None:
    d = margin * jnp.tanh(d / margin)
  return jnp.mean(pair_nll(d, unbiased_labels(o, eps))) + 0.5 * l2 * _sq_norm(params)


def _logit_or_inf(q: chex.Array) -> chex.Array:
  """``logit(q)`` for ``q ∈ (0, 1)``; ``-inf`` for ``q <= 0`` and ``+inf`` for ``q >= 1`` (safe gradients)."""
  inside = (q > 0.0) & (q < 1.0)
  safe = jnp.where(inside, q, 0.5)
  return jnp.where(inside, jnp.log(safe) - jnp.log1p(-safe), jnp.where(q <= 0.0, -jnp.inf, jnp.inf))


def outlier_terms(d: chex.Array, o: chex.Array, eps: chex.Array) -> chex.Array:
  """The optimal outlier terms ``δ_i = argmin_δ ℓ(d_i + δ; o_i) + λ_o |δ|``, ``λ_o = 1 - ε`` (``[n]``).

  ``ℓ(u; o) = -[o log s(u) + (1 - o) log s(-u)]`` is convex with ``ℓ' = s(u) - o``, so the minimiser of
  ``ℓ(u; o) + λ_o |u - d|`` over the margin ``u = d + δ`` is ``d`` clipped to
  ``[logit(o - λ_o), logit(o + λ_o)]`` (``∓inf`` where ``o ∓ λ_o`` leaves ``(0, 1)``). For a hard label
  ``o = 1`` that is ``u = max(d, logit(ε))``: ``δ_i > 0`` exactly when ``s(d_i) < ε``; ties ``o = 1/2`` never
  get one for ``ε < 1/2``.

  Args:
    d: margins ``R(z) - R(x)`` ``[n]``; o: labels ``[n]`` in ``[0, 1]``; eps: ``ε ∈ [0, 1)``.
  """
  lam = 1.0 - eps
  lo = _logit_or_inf(o - lam)
  hi = _logit_or_inf(o + lam)
  return jnp.clip(d, lo, hi) - d


def outlier_loss(params, apply_fn, x, z, o, eps, l2):
  """The profile loss ``min_δ mean_i [ℓ(d_i + δ_i; o_i) + λ_o |δ_i|] + l2/2 ||θ||²``, ``λ_o = 1 - ε``.

  Its minimiser over ``θ`` is the ``θ`` of the joint minimiser over ``(θ, δ)``; the ``δ`` are
  :func:`outlier_terms` at that ``θ``. Differentiable (twice, away from the kinks ``s(±d_i) = ε``) in ``θ``,
  ``o`` and ``ε``.
  """
  d = pair_margins(params, apply_fn, x, z)
  delta = outlier_terms(d, o, eps)
  per_pair = pair_nll(d + delta, o) + (1.0 - eps) * jnp.abs(delta)
  return jnp.mean(per_pair) + 0.5 * l2 * _sq_norm(params)


def weighted_bt_loss(params, apply_fn, x, z, o, w, l2):
  """Bradley–Terry with pair weights ``w [n] >= 0``: ``Σ w_i ℓ_i / max(Σ w_i, 1e-12) + l2/2 ||θ||²``."""
  d = pair_margins(params, apply_fn, x, z)
  return jnp.sum(w * pair_nll(d, o)) / jnp.maximum(jnp.sum(w), 1e-12) + 0.5 * l2 * _sq_norm(params)


#: The defences whose fit is ``argmin_θ loss(θ, apply_fn, x, z, o, ε, l2)`` (what the adaptive attack
#: differentiates through).
LOSSES: dict[str, Loss] = {"label_smoothing": label_smoothing_loss, "robust_bt": robust_bt_loss,
                           "outlier": outlier_loss}
# Losses with a value-and-gradient that is faster than autodiff of the loss (the same values; for the
# Bradley–Terry loss, the reward network's written-out pull-back, :func:`scl.reward_model.value_and_pullback`).
_VALUE_AND_GRADS = {label_smoothing_loss: label_smoothing_value_and_grad}


# ----------------------------------------------------------------------------------------------------------
# Fits.


def fit_defended(loss: Loss, params0: Params, apply_fn: ApplyFn, x: chex.Array, z: chex.Array, o: chex.Array,
                 eps: chex.Array, l2: chex.Array, *, maxiter: int = 500, tol: float = 1e-5,
                 cg_maxiter: int = 100, cg_tol: float = 1e-6, history_size: int = 10) -> Params:
  """``θ(o, ε) = argmin_θ loss(θ, apply_fn, x, z, o, ε, l2)`` by one L-BFGS solve warm-started at ``params0``.

  The defended analogue of :func:`scl.reward_model.fit_reward` (the same solver and defaults):
  differentiable w.r.t. ``o``, ``ε``, ``l2``, ``x``, ``z`` by implicit differentiation (matrix-free CG on
  Hessian-vector products), ``loss``, ``apply_fn``, ``maxiter`` and ``cg_maxiter`` static.
  """
  chex.assert_rank(o, 1)
  chex.assert_equal_shape_prefix([x, z, o], 1)
  dtype = jnp.result_type(float)

  def fun(params, x, z, o, eps, l2):
    return loss(params, apply_fn, x, z, o, eps, l2)

  value_and_grad = _VALUE_AND_GRADS.get(loss)
  if value_and_grad is not None:
    value_and_grad = functools.partial(_apply_second, value_and_grad, apply_fn)
  params, _ = _solvers.minimize(fun, params0, x, z, jnp.asarray(o, dtype), jnp.asarray(eps, dtype),
                                jnp.asarray(l2, dtype), maxiter=maxiter, tol=tol, cg_maxiter=cg_maxiter,
                                cg_tol=cg_tol, history_size=history_size, value_and_grad=value_and_grad)
  return params


def _apply_second(fn, apply_fn, params, *args):
  return fn(params, apply_fn, *args)


def refit_for(name: str, eps: chex.Array) -> Callable[..., Params] | None:
  """The re-fit an adaptive attacker differentiates through when the platform runs defence ``name``.

  Returns ``(theta_init, apply_fn, x, z, o, l2, **solver) -> θ``: :func:`fit_defended` on the defence's loss
  (:data:`LOSSES`) with strength ``eps`` for ``"label_smoothing"``, ``"robust_bt"`` and ``"outlier"``; None
  otherwise (``"none"``, and the discrete filters ``"ensemble_filter"`` and ``"knn_relabel"``, which have no
  gradient: the attacker uses the undefended fit as its surrogate), which :func:`scl.attacks.gradient_attack`
  reads as the plain Bradley–Terry fit with its own route (the warm-started adjoint solve, the coarse start):
  the same attack as ``"gradient"``.
  """
  loss = LOSSES.get(name)
  if loss is None:
    return None

  def refit(theta_init, apply_fn, x, z, o, l2, **solver):
    return fit_defended(loss, theta_init, apply_fn, x, z, o, eps, l2, **solver)

  return refit


def ensemble_label_probs(key: chex.PRNGKey, x: chex.Array, z: chex.Array, o: chex.Array, net, l2: chex.Array,
                         size: int, maxiter: int = ENSEMBLE_MAXITER) -> tuple[chex.Array, chex.Array]:
  """The probability of each pair's label under an ensemble's mean margin, and that margin.

  ``size`` (static) reward models ``net``, each from its own random initialisation, are fitted (vmapped) by
  Bradley–Terry on a bootstrap resample of the ``n`` pairs (multinomial counts as weights). With ``m̄_i`` the
  mean over members of ``R(z_i) - R(x_i)``, returns ``(o s(m̄) + (1 - o) s(-m̄) [n], m̄ [n])``.
  """
  n = o.shape[0]
  k_init, k_boot = jax.random.split(key)
  inits = jax.vmap(lambda k: net.init(k, x[:1]))(jax.random.split(k_init, size))
  idx = jax.random.randint(k_boot, (size, n), 0, n)
  counts = jax.vmap(lambda i: jnp.zeros(n, o.dtype).at[i].add(1.0))(idx)

  def member(params0, w):
    fun = lambda p, w: weighted_bt_loss(p, net.apply, x, z, o, w, l2)
    return _solvers.minimize(fun, params0, w, maxiter=maxiter)[0]

  members = jax.vmap(member)(inits, counts)
  margins = jax.vmap(lambda p: pair_margins(p, net.apply, x, z))(members)
  m = jax.lax.stop_gradient(jnp.mean(margins, axis=0))
  return o * jax.nn.sigmoid(m) + (1.0 - o) * jax.nn.sigmoid(-m), m


def knn_mean_labels(x: chex.Array, z: chex.Array, o: chex.Array, k: int,
                    rows: int = KNN_ROWS) -> chex.Array:
  """The mean label of each pair's ``k`` (static) nearest other pairs, ``[n]``.

  A pair is the point ``[x_i, z_i]`` (flattened, concatenated); the candidates are every other pair in both
  orientations, ``([x_j, z_j], o_j)`` and ``([z_j, x_j], 1 - o_j)`` (``j != i``); Euclidean distance. Rows
  are computed ``rows`` at a time (memory ``rows × 2n``).
  """
  n = o.shape[0]
  fx, fz = x.reshape(n, -1), z.reshape(n, -1)
  pairs = jnp.concatenate([fx, fz], 1)
  cand = jnp.concatenate([pairs, jnp.concatenate([fz, fx], 1)], 0)   # [2n, 2D]
  cand_o = jnp.concatenate([o, 1.0 - o])
  sq = jnp.sum(cand * cand, 1)

  def row(i):
    dist = sq - 2.0 * cand @ pairs[i]          # |pairs_i|² is the same for every candidate
    dist = dist.at[i].set(jnp.inf).at[i + n].set(jnp.inf)
    _, nearest = jax.lax.top_k(-dist, k)
    return jnp.mean(cand_o[nearest])

  return jax.lax.map(row, jnp.arange(n), batch_size=min(rows, n))


# ----------------------------------------------------------------------------------------------------------
# Registered defences: (key, x, z, o, theta0, net, hyper, cfg) -> (theta_platform, flagged or None).


# ``eps_max`` (registration metadata): ε must lie in ``[0, eps_max)`` for this defence, checked before any
# compute with the other traced values (:func:`scl.hyper.validate_traced`, by ``scl.run`` and ``scl.sweep``).


@registry.DEFENCES.register("none")
def _none(key, x, z, o, theta0, net, hyper, cfg):
  """Plain Bradley–Terry (:func:`scl.reward_model.fit_reward`); ``ε`` ignored."""
  del key, cfg
  return reward_model.fit_reward(theta0, net.apply, x, z, o, hyper.l2), None


@registry.DEFENCES.register("label_smoothing", eps_max=0.5, eps_doc="the smoothing rate")
def _label_smoothing(key, x, z, o, theta0, net, hyper, cfg):
  """Bradley–Terry on ``o (1 - ε) + (1 - o) ε``."""
  del key, cfg
  return fit_defended(label_smoothing_loss, theta0, net.apply, x, z, o, hyper.eps, hyper.l2), None


@registry.DEFENCES.register("robust_bt", eps_max=0.5, eps_doc="the flip rate")
def _robust_bt(key, x, z, o, theta0, net, hyper, cfg):
  """The unbiased loss of flip rate ``ε`` (:func:`robust_bt_loss`)."""
  del key, cfg
  return fit_defended(robust_bt_loss, theta0, net.apply, x, z, o, hyper.eps, hyper.l2), None


@registry.DEFENCES.register("outlier", eps_max=1.0,
                            eps_doc="1 - λ_o, the outlier penalty's complement (the label probability below "
                                    "which a pair gets an outlier term)")
def _outlier(key, x, z, o, theta0, net, hyper, cfg):
  """Joint fit with sparse outlier terms (:func:`outlier_loss`); flags the pairs with ``|δ_i| > 0``."""
  del key, cfg
  theta = fit_defended(outlier_loss, theta0, net.apply, x, z, o, hyper.eps, hyper.l2)
  delta = outlier_terms(pair_margins(theta, net.apply, x, z), o, hyper.eps)
  return theta, jax.lax.stop_gradient(jnp.abs(delta)) > 0.0


@registry.DEFENCES.register("ensemble_filter", eps_max=0.5,
                            eps_doc="the label probability under the ensemble below which a pair is dropped")
def _ensemble_filter(key, x, z, o, theta0, net, hyper, cfg):
  """Drop the pairs the bootstrap ensemble confidently disagrees with, fit Bradley–Terry on the rest."""
  p_label, _ = ensemble_label_probs(key, x, z, o, net, hyper.l2, cfg.platform.ensemble_size)
  dropped = p_label < hyper.eps
  keep = 1.0 - dropped.astype(o.dtype)
  theta, _ = _solvers.minimize(lambda p, x, z, o, w, l2: weighted_bt_loss(p, net.apply, x, z, o, w, l2),
                               theta0, x, z, o, keep, jnp.asarray(hyper.l2, o.dtype), maxiter=500)
  return theta, dropped


def _check_knn(cfg) -> None:
  p = cfg.platform
  if p.knn_k > 2 * (p.n_pairs - 1):
    raise ValueError(f"invalid config: knn_k={p.knn_k!r}: a pair has only 2 (n_pairs - 1) = "
                     f"{2 * (p.n_pairs - 1)} neighbours (each other pair in both orientations)")


@registry.DEFENCES.register("knn_relabel", eps_max=0.5,
                            eps_doc="1 - the share of disagreeing neighbours that relabels a pair",
                            validate=_check_knn)
def _knn_relabel(key, x, z, o, theta0, net, hyper, cfg):
  """Relabel the pairs whose ``k`` nearest pairs disagree with them by more than ``1 - ε``; then fit."""
  del key
  mean = knn_mean_labels(x, z, o, cfg.platform.knn_k)
  relabel = jnp.abs(mean - o) > 1.0 - hyper.eps
  o_clean = jnp.where(relabel, 1.0 - o, o)
  return reward_model.fit_reward(theta0, net.apply, x, z, o_clean, hyper.l2), relabel


def defend(name: str, key: chex.PRNGKey, x: chex.Array, z: chex.Array, o: chex.Array, *, theta0: Params,
           net, eps: chex.Array = 0.0, l2: chex.Array = 1e-3, ensemble_size: int = 5,
           knn_k: int = 10) -> tuple[Params, chex.Array | None]:
  """Run the registered defence ``name`` (static) outside the loop: ``(theta_platform, flagged or None)``.

  Args:
    name (static): a name in :data:`scl.registry.DEFENCES`.
    key: PRNG key (``"ensemble_filter"``'s initialisations and resamples).
    x, z: pairs ``[n, *event]``; o: labels ``[n]`` (possibly flipped).
    theta0: warm start; net: the reward family (:class:`scl.reward_model.RewardNet`).
    eps, l2: ``ε`` and the L2 weight (traced).
    ensemble_size, knn_k (static): see :class:`scl.config.PlatformConfig`.
  """
  from scl import config  # pylint: disable=import-outside-toplevel  (config imports the registries)
  chex.assert_rank(o, 1)
  preferences.check_labels(o)
  cfg = config.Config().replace(defence=name, ensemble_size=ensemble_size, knn_k=knn_k,
                                n_pairs=max(int(o.shape[0]), 1)).validate()  # the name, knn_k against n
  hyper_lib.validate_concrete(cfg, eps=eps, l2=l2)  # ε in the defence's domain (as scl.run checks it)
  hyper = hyper_lib.Hyper.defaults(eps=eps, l2=l2)
  return tuple(registry.DEFENCES[name](key, x, z, o, theta0, net, hyper, cfg)[:2])
