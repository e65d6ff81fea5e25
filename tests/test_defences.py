"""Tests of scl.defences against independent computations (closed forms, brute force, finite differences)
and inside the loop (ε traced, ``defence="none"`` is the undefended pipeline, detection metrics)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.special

import scl
from scl import attacks
from scl import defences
from scl import loop
from scl import platform
from scl import preferences
from scl import registry
from scl import reward_model as rm
from scl import task as task_lib

import _fd  # tests/_fd.py

LINEAR = rm.linear_reward()


def _weights(params):
  return np.asarray(params["params"]["Dense_0"]["kernel"][:, 0], np.float64)


def _cos(a, b):
  return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _defend(name, x, z, o, eps, l2=1e-3, net=LINEAR, **kw):
  theta0 = net.init(jax.random.key(1), x[:1])
  return defences.defend(name, jax.random.key(0), x, z, o, theta0=theta0, net=net, eps=eps, l2=l2, **kw)


# ----------------------------------------------------------------------------------------------------------
# The losses against their definitions.


def test_robust_bt_loss_is_the_unbiased_per_pair_loss():
  """Chowdhury et al.'s per-pair form, computed directly in numpy, and its unbiasedness under random flips."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    n, eps, l2 = 40, 0.3, 1e-2
    x, z = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
    o = rng.integers(0, 2, n).astype(np.float64)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), LINEAR.init(jax.random.key(0), jnp.zeros((1, 2))))
    w = _weights(params)
    b = float(params["params"]["Dense_0"]["bias"][0])
    d = (z - x) @ w
    ell_at = lambda d, lab: -(lab * np.log(scipy.special.expit(d)) + (1 - lab) * np.log(scipy.special.expit(-d)))
    ell = lambda lab: ell_at(d, lab)
    sq = w @ w + b * b
    per_pair = ((1 - eps) * ell(o) - eps * ell(1 - o)) / (1 - 2 * eps)
    ours = float(defences.robust_bt_loss(params, LINEAR.apply, x, z, o, eps, l2, margin=None))
    np.testing.assert_allclose(ours, per_pair.mean() + 0.5 * l2 * sq, rtol=1e-12)
    # E over a flip of each label with probability ε of the robust loss = the clean loss
    flipped = float(defences.robust_bt_loss(params, LINEAR.apply, x, z, 1 - o, eps, l2, margin=None))
    clean = float(rm.bt_loss(params, LINEAR.apply, x, z, o, l2))
    np.testing.assert_allclose((1 - eps) * ours + eps * flipped, clean, rtol=1e-12)
    # label smoothing: Bradley–Terry on o (1 - ε) + (1 - o) ε
    smooth = (1 - eps) * ell(o) + eps * ell(1 - o)
    np.testing.assert_allclose(float(defences.label_smoothing_loss(params, LINEAR.apply, x, z, o, eps, l2)),
                               smooth.mean() + 0.5 * l2 * sq, rtol=1e-12)
    # the fitted loss sees the bounded margin M tanh(d / M): bounded below, the unbiased loss for |d| << M
    m = defences.ROBUST_MARGIN
    bounded = ((1 - eps) * ell_at(m * np.tanh(d / m), o) - eps * ell_at(m * np.tanh(d / m), 1 - o)) / (1 - 2 * eps)
    np.testing.assert_allclose(float(defences.robust_bt_loss(params, LINEAR.apply, x, z, o, eps, l2)),
                               bounded.mean() + 0.5 * l2 * sq, rtol=1e-12)
    big = jax.tree.map(lambda a: 1e3 * a, params)  # huge margins: the bounded loss stays above its floor
    floor = -eps / (1 - 2 * eps) * np.log1p(np.exp(m))
    assert float(defences.robust_bt_loss(big, LINEAR.apply, x, z, o, eps, 0.0)) >= floor


@pytest.mark.parametrize("eps", [0.0, 0.2, 0.5, 0.9])
def test_outlier_terms_minimise_the_l1_penalised_loss(eps):
  """δ_i = argmin_δ ℓ(d_i + δ; o_i) + (1 - ε)|δ| (closed form) vs scipy's bounded scalar minimiser."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(1)
    d = rng.normal(scale=4.0, size=30)
    o = rng.choice([0.0, 0.3, 0.5, 1.0], size=30)
    ours = np.asarray(defences.outlier_terms(jnp.asarray(d), jnp.asarray(o), eps))
    lam = 1 - eps
    for di, oi, delta in zip(d, o, ours):
      f = lambda t: -(oi * np.log(scipy.special.expit(di + t)) + (1 - oi) * np.log(scipy.special.expit(-di - t))) \
          + lam * abs(t)
      best = scipy.optimize.minimize_scalar(f, bounds=(-40, 40), method="bounded", options={"xatol": 1e-10})
      assert f(delta) <= best.fun + 1e-9, (di, oi, delta, best.x)
      assert abs(delta - best.x) < 1e-4 or abs(f(delta) - best.fun) < 1e-10
    if eps == 0.0:
      np.testing.assert_array_equal(ours, 0.0)  # λ_o = 1: no pair ever gets an outlier term
    if eps < 0.5:
      np.testing.assert_array_equal(ours[o == 0.5], 0.0)  # ties never get one (ε < 1/2)


# ----------------------------------------------------------------------------------------------------------
# What each defence does on fixed instances with known flips.


def _separable(seed=0, n=1000, rate=0.2):
  """Pairs with true margin |w·(z - x)| > 1 (w = (2, -1)), deterministic labels, floor(rate n) random flips."""
  rng = np.random.default_rng(seed)
  w = np.array([2.0, -1.0])
  x, z = rng.normal(size=(4 * n, 2)), rng.normal(size=(4 * n, 2))
  m = (z - x) @ w
  keep = np.abs(m) > 1.0
  x, z, m = x[keep][:n], z[keep][:n], m[keep][:n]
  flip = rng.permutation(n) < int(rate * n)
  o = np.where(flip, m <= 0, m > 0).astype(np.float32)
  return jnp.asarray(x, jnp.float32), jnp.asarray(z, jnp.float32), jnp.asarray(o), flip, w


def test_robust_bt_with_the_true_rate_recovers_the_direction_better_than_bradley_terry():
  """Random flips at rate ε = 0.2 bias Bradley–Terry's direction, not the unbiased loss's.

  Pairs of two kinds: half with a small true margin along e1 (z - x ≈ ±(0.5, 0)), half with a large one along
  the diagonal (z - x ≈ ±(3, 3)); labels Bradley–Terry from w = (1, 0). On flipped labels, Bradley–Terry fits
  the log-odds logit(ε + (1 - 2ε) s(m)), which shrinks large margins m more than small ones, so the two kinds
  ask for different scales and the fitted direction tilts; the unbiased loss has the clean loss as its
  expectation. Cosine with w, seed 0: Bradley–Terry 0.932, robust_bt 0.989 (clean labels 0.989); seeds 0-3:
  Bradley–Terry 0.93-0.98, robust_bt 0.986-1.000, a gain of 0.010-0.057.
  """
  rng = np.random.default_rng(0)
  n, eps = 3000, 0.2
  w = np.array([1.0, 0.0])
  atoms = np.array([[0.5, 0.0], [3.0, 3.0]])
  a = atoms[rng.integers(0, 2, n)] * rng.choice([-1.0, 1.0], size=(n, 1))
  x = 0.1 * rng.normal(size=(n, 2))
  z = x + a + 0.1 * rng.normal(size=(n, 2))
  o = (rng.uniform(size=n) < scipy.special.expit((z - x) @ w)).astype(np.float32)
  flip = rng.permutation(n) < int(eps * n)
  o_flip = jnp.asarray(np.where(flip, 1 - o, o))
  x, z = jnp.asarray(x, jnp.float32), jnp.asarray(z, jnp.float32)
  cos = {name: _cos(_weights(_defend(name, x, z, o_flip, eps)[0]), w) for name in ("none", "robust_bt")}
  clean = _cos(_weights(_defend("none", x, z, jnp.asarray(o), 0.0)[0]), w)
  assert cos["robust_bt"] >= cos["none"] + 0.02, (cos, clean)
  assert cos["robust_bt"] > 0.98, (cos, clean)


def test_outlier_defence_flags_most_flipped_pairs_on_a_separable_instance():
  """ε = 0.5: the pairs whose label the joint fit gives probability < 1/2 get δ_i != 0 (observed: precision
  1.0, recall 1.0 on 200 flips of 1000 pairs)."""
  x, z, o, flip, w = _separable()
  theta, flagged = _defend("outlier", x, z, o, 0.5)
  flagged = np.asarray(flagged)
  precision = (flagged & flip).sum() / flagged.sum()
  recall = (flagged & flip).sum() / flip.sum()
  assert precision >= 0.95 and recall >= 0.9, (precision, recall)
  assert _cos(_weights(theta), w) > 0.99
  # weaker ε flags fewer, never more: ε = 0 flags nothing
  assert not np.asarray(_defend("outlier", x, z, o, 0.0)[1]).any()
  assert np.asarray(_defend("outlier", x, z, o, 0.3)[1]).sum() <= flagged.sum()


def test_ensemble_filter_drops_confidently_contradicted_pairs():
  """5 bootstrap members; ε = 0.4 drops the pairs whose label gets probability < 0.4 under the mean margin
  (observed: precision 1.0, recall 0.93-0.99 over seeds)."""
  x, z, o, flip, w = _separable()
  theta, flagged = _defend("ensemble_filter", x, z, o, 0.4, ensemble_size=5)
  flagged = np.asarray(flagged)
  precision = (flagged & flip).sum() / flagged.sum()
  recall = (flagged & flip).sum() / flip.sum()
  assert precision >= 0.95 and recall >= 0.85, (precision, recall)
  assert _cos(_weights(theta), w) > 0.99
  assert not np.asarray(_defend("ensemble_filter", x, z, o, 0.0)[1]).any()


def test_knn_mean_labels_match_brute_force():
  rng = np.random.default_rng(2)
  n, k = 37, 5
  x, z = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
  o = rng.choice([0.0, 0.5, 1.0], size=n)
  ours = np.asarray(defences.knn_mean_labels(jnp.asarray(x), jnp.asarray(z), jnp.asarray(o), k, rows=8))
  for i in range(n):
    cands = [(np.concatenate([x[j], z[j]]), o[j]) for j in range(n) if j != i] + \
            [(np.concatenate([z[j], x[j]]), 1 - o[j]) for j in range(n) if j != i]
    dist = [np.linalg.norm(np.concatenate([x[i], z[i]]) - c) for c, _ in cands]
    nearest = np.argsort(dist, kind="stable")[:k]
    np.testing.assert_allclose(ours[i], np.mean([cands[j][1] for j in nearest]), atol=1e-6)


def test_knn_relabel_repairs_flips_on_a_separable_instance():
  """k = 10, ε = 0.45: relabel when more than 55% of the neighbours disagree (observed: precision 0.97-1.0,
  recall 0.93-1.0 over seeds); ε = 0 relabels nothing."""
  x, z, o, flip, w = _separable()
  theta, flagged = _defend("knn_relabel", x, z, o, 0.45, knn_k=10)
  flagged = np.asarray(flagged)
  precision = (flagged & flip).sum() / flagged.sum()
  recall = (flagged & flip).sum() / flip.sum()
  assert precision >= 0.9 and recall >= 0.85, (precision, recall)
  assert not np.asarray(_defend("knn_relabel", x, z, o, 0.0, knn_k=10)[1]).any()


def test_label_smoothing_at_zero_is_the_plain_fit():
  x, z, o, _, _ = _separable(n=300)
  net = rm.mlp_reward((8,))
  none = _defend("none", x, z, o, 0.0, net=net)[0]
  smooth = _defend("label_smoothing", x, z, o, 0.0, net=net)[0]
  chex.assert_trees_all_equal(none, smooth)


def test_eps_is_traced_in_every_defence():
  """One compiled program per defence for any ε (assert_max_traces raises on a retrace)."""
  x, z, o, _, _ = _separable(n=200)
  theta0 = LINEAR.init(jax.random.key(1), x[:1])
  for name in registry.DEFENCES:
    chex.clear_trace_counter()  # the counter keys on the code of `run`, the same for every defence

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(eps, name=name):
      return defences.defend(name, jax.random.key(0), x, z, o, theta0=theta0, net=LINEAR, eps=eps,
                             ensemble_size=2, knn_k=4)
    flags = [run(jnp.float32(eps))[1] for eps in (0.0, 0.2, 0.45)]
    if flags[0] is not None:
      assert int(flags[0].sum()) == 0 and int(flags[2].sum()) >= int(flags[1].sum()), name


# ----------------------------------------------------------------------------------------------------------
# Invalid values fail before compute.


@pytest.mark.parametrize("defence,eps", [("label_smoothing", 0.5), ("robust_bt", 0.7), ("ensemble_filter", 0.5),
                                         ("knn_relabel", 0.5), ("outlier", 1.0), ("robust_bt", -0.1),
                                         ("none", -0.1), ("outlier", float("nan"))])
def test_invalid_eps_fails_naming_the_field_and_value(defence, eps):
  with pytest.raises(ValueError, match=rf"invalid config: eps={eps!r}"):
    scl.configs.gaussian8(defence=defence, eps=eps)


@pytest.mark.parametrize("defence,eps,match", [("robust_bt", 0.5, r"eps=0.5: defence='robust_bt'"),
                                               ("label_smoothing", 0.8, r"eps=0.8"),
                                               ("outlier", float("nan"), r"eps=nan")])
def test_defend_outside_the_loop_checks_eps_as_run_does(defence, eps, match):
  """robust_bt at ε = 0.5 divided by 1 − 2ε (an infinite loss: θ stayed θ0); label smoothing at 0.8 fitted the
  reversed reward: refused, as scl.run refuses them. Traced ε (under jit) is the caller's to check."""
  x, z, o, _, _ = _separable(n=50)
  with pytest.raises(ValueError, match=match):
    _defend(defence, x, z, o, eps)


def test_defend_checks_knn_k_against_the_pairs_and_the_name():
  x, z, o, _, _ = _separable(n=3)
  with pytest.raises(ValueError, match=r"knn_k=6: a pair has only 2 \(n_pairs - 1\) = 4 neighbours"):
    _defend("knn_relabel", x, z, o, 0.2, knn_k=6)
  with pytest.raises(ValueError, match="defence"):
    _defend("no_such_defence", x, z, o, 0.2)


def test_defence_or_label_mode_alone_turns_the_platform_on():
  """A defence or a label mode acts only on the platform's pairs: set without an attack they used to be
  ignored (the users curated with r, no pairs were drawn); now the platform learns R~ and reports on it."""
  base = dict(pool_size=400, n_keep=200, n_pairs=100, iterations=1, model="categorical", n_atoms=64)
  assert not scl.configs.gaussian8(**base).platform.active
  res = scl.run(scl.configs.gaussian8(**base, defence="outlier", eps=0.3), seed=0)
  assert {"reward_accuracy", "n_flagged"} <= set(res.metrics)
  assert np.isfinite(res.metrics["reward_accuracy"][0]) and res.metrics["n_flagged"][0] >= 0
  assert scl.configs.gaussian8(**base, labels="bradley_terry").platform.active


def test_invalid_sweep_of_eps_fails_before_compute():
  cfg = scl.configs.gaussian8(defence="robust_bt", attack="dist", model="categorical", iterations=1)
  with pytest.raises(ValueError, match=r"invalid config: eps=.*defence='robust_bt'.*\[0, 0.5\)"):
    scl.sweep(cfg, eps=[0.1, 0.5], seeds=1)


def test_unknown_defence_lists_the_choices():
  with pytest.raises(ValueError, match=r"invalid config: defence='nope': unknown defence; choose one of .*"
                                       r"'robust_bt'.*'knn_relabel'"):
    scl.configs.gaussian8(defence="nope")
  with pytest.raises(ValueError, match="invalid config: knn_k=10"):
    scl.configs.gaussian8(defence="knn_relabel", n_pairs=4)


# ----------------------------------------------------------------------------------------------------------
# The adaptive attacker differentiates through the defended fit.


def test_adaptive_attack_against_no_defence_is_the_gradient_attack():
  """Against no defence (or a discrete filter) the adaptive attacker's re-fit is the plain one, by the same
  route as "gradient": the same flips. (Through a generic differentiated fit_reward, with the attack's loose
  solver settings, about 30 of 40 flips differed on 200-pair rings.)"""
  assert defences.refit_for("none", 0.3) is None and defences.refit_for("knn_relabel", 0.3) is None
  pool = 2.0 * jax.random.normal(jax.random.key(10), (400, 2))
  x, z, o = preferences.make_preferences(jax.random.key(11), pool, 200, lambda p: -jnp.linalg.norm(p - 2.0, axis=-1))
  net = rm.mlp_reward((16,))
  theta = rm.fit_reward(net.init(jax.random.key(12), x[:1]), net.apply, x, z, o, 1e-3)
  view = attacks.AttackerView(theta, net.apply, pool)
  hyper = scl.Hyper.defaults(kappa=0.2, alpha=0.8, l2=1e-3)
  cfg = scl.configs.gaussian8(attack_recipe="paper")
  masks = [np.asarray(registry.ATTACKS[name](jax.random.key(0), x, z, o, view, hyper,
                                             cfg.replace(attack=name))[1])
           for name in ("gradient", "gradient_adaptive")]
  assert masks[0].sum() == 40
  np.testing.assert_array_equal(masks[1], masks[0])


@pytest.mark.parametrize("defence,eps", [("label_smoothing", 0.2), ("robust_bt", 0.2), ("outlier", 0.8)])
def test_adaptive_gradient_matches_finite_differences(defence, eps):
  """dJ/dδ through the DEFENDED fit's implicit differentiation vs central differences of J with the
  defended θ~ re-solved (float64): relative L2 error <= 1e-4 (observed ~1e-6 to 1e-5)."""
  with jax.enable_x64(True):
    d = _fd.instance()
    n, pool, l2, alpha, x, z, o, net, p0 = d.n, d.pool, d.l2, d.alpha, d.x, d.z, d.o, d.net, d.p0
    tight, delta0, h, eye = d.tight, d.delta0, d.h, d.eye

    @jax.jit
    def grad_and_fd_values(o, eps):
      theta = rm.fit_reward(p0, net.apply, x, z, o, l2, **tight)
      r_pool = net.apply(theta, pool)
      kw = dict(o=o, x=x, z=z, x_pool=pool, r_pool=r_pool, apply_fn=net.apply, alpha=alpha, l2=l2,
                shift=jnp.max(r_pool), standardise=True, refit=defences.refit_for(defence, eps), **tight)
      grad = jax.grad(attacks.relaxed_objective, has_aux=True)(delta0, theta, **kw)[0]
      j = jax.lax.map(lambda d: attacks.relaxed_objective(d, theta, **kw)[0],
                      jnp.concatenate([delta0 + h * eye, delta0 - h * eye]))
      # the defended fit differs from the plain one (the test is not of fit_reward again)
      plain = attacks.relaxed_objective(delta0, theta, **{**kw, "refit": None})[0]
      return grad, j, plain, attacks.relaxed_objective(delta0, theta, **kw)[0]

    grad, j, plain, defended = map(np.asarray, grad_and_fd_values(o, jnp.float64(eps)))
    fd = (j[:n] - j[n:]) / (2 * h)
    assert np.linalg.norm(grad - fd) <= 1e-4 * np.linalg.norm(fd), (grad, fd)
    assert np.linalg.norm(fd) > 1e-3
    assert abs(plain - defended) > 1e-6, (plain, defended)


# ----------------------------------------------------------------------------------------------------------
# In the loop.

SMALL = dict(model="categorical", n_atoms=128, pool_size=2000, n_keep=1000, n_eval=1000, n_pairs=200,
             K=4, K_max=4, iterations=2, kappa=0.2, alpha=0.0, attack="dist")


@pytest.mark.parametrize("n_pairs", [200, 1200])
def test_defence_none_is_the_undefended_platform(n_pairs):
  """platform.learned_reward with defence="none" vs the pre-defence pipeline written out here (pairs, labels,
  the attacker's fit, the attack, the platform's plain Bradley–Terry fit warm-started at θ): equal. With
  1,200 pairs from the 2,000-sample pool (fewer samples than the pairs' 2,400 rows) the fits take the pairs
  as indices into the pool, as the platform does then (that this equals the fit on the gathered samples is
  tested in tests/test_reward_model.py)."""
  cfg = scl.configs.gaussian8(**{**SMALL, "n_pairs": n_pairs})
  task, data = task_lib.build(cfg)
  hyper = cfg.hyper.arrays()
  key = jax.random.key(4)
  points = data.support[jax.random.randint(jax.random.key(5), (cfg.curation.pool_size,), 0, 128)]
  r_pool = task.reward(data.reward, points)

  def reference(key, points):
    net = rm.mlp_reward((64,))
    k_pairs, k_labels, k_init, k_attack, _ = jax.random.split(key, 5)
    ix, iz = preferences.draw_pairs(k_pairs, jnp.arange(points.shape[0]), cfg.platform.n_pairs)
    x, z = points[ix], points[iz]
    o = preferences.deterministic_labels(k_labels, task.reward(data.reward, x), task.reward(data.reward, z))
    indexed = dict(x=ix, z=iz, points=points) if n_pairs == 1200 else dict(x=x, z=z)
    theta = rm.fit_reward(net.init(k_init, x[:1]), net.apply, o=o, l2=hyper.l2, **indexed)
    r = net.apply(theta, jnp.concatenate([x, z]))
    o_flipped, _ = attacks.dist_attack(o, r[:x.shape[0]], r[x.shape[0]:], hyper.kappa)
    return net.apply(rm.fit_reward(theta, net.apply, o=o_flipped, l2=hyper.l2, **indexed), points)

  ours, stats, _ = jax.jit(lambda k, p: platform.learned_reward(k, p, r_pool, hyper, data, task))(key, points)
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(jax.jit(reference)(key, points)))
  assert "flag_precision" not in stats  # the plain fit flags nothing


@pytest.fixture(scope="module")
def smoothing_program():
  """The label-smoothing loop, jitted once; fails if any later call retraces it."""
  cfg = scl.configs.gaussian8(defence="label_smoothing", **SMALL)
  run_fn, data = loop.make_run_fn(cfg)
  fn = jax.jit(chex.assert_max_traces(run_fn, n=1))
  return lambda seed, **hyper: jax.device_get(
      fn(cfg.replace(**hyper).hyper.arrays(), jax.random.PRNGKey(seed), data)[1])


def test_eps_is_traced_in_the_loop_and_smoothing_at_zero_is_the_undefended_loop(smoothing_program):
  undefended = scl.run(scl.configs.gaussian8(**SMALL), seed=0).metrics
  at_zero = smoothing_program(0, eps=0.0)
  for name in ("expected_reward", "cov_r_learned", "reward_accuracy", "n_flips"):
    np.testing.assert_array_equal(at_zero[name], undefended[name], err_msg=name)
  others = [smoothing_program(0, eps=eps)["cov_r_learned"] for eps in (0.1, 0.4)]  # no retrace
  assert not np.array_equal(others[0][:-1], at_zero["cov_r_learned"][:-1])
  assert not np.array_equal(others[0][:-1], others[1][:-1])


def test_flagging_defence_reports_detection_metrics_in_the_loop():
  res = scl.run(scl.configs.gaussian8(defence="outlier", eps=0.5, **SMALL), seed=0).metrics
  for name in ("n_flagged", "flag_precision", "flag_recall"):
    assert res[name].shape == (SMALL["iterations"] + 1,)
    assert np.isnan(res[name][-1])  # no preferences are collected from p_T
  assert np.all(res["n_flagged"][:-1] > 0)
  assert np.all((res["flag_precision"][:-1] >= 0) & (res["flag_precision"][:-1] <= 1))
  assert np.all((res["flag_recall"][:-1] >= 0) & (res["flag_recall"][:-1] <= 1))
  np.testing.assert_array_equal(res["n_flips"][:-1], 40)


def test_detection_stats_against_counts():
  flagged = jnp.array([True, True, False, False, True])
  changed = jnp.array([True, False, True, False, False])
  out = platform.detection_stats(flagged, changed)
  assert float(out["n_flagged"]) == 3
  np.testing.assert_allclose(float(out["flag_precision"]), 1 / 3)
  np.testing.assert_allclose(float(out["flag_recall"]), 1 / 2)
  none = platform.detection_stats(jnp.zeros(5, bool), jnp.zeros(5, bool))
  assert np.isnan(float(none["flag_precision"])) and np.isnan(float(none["flag_recall"]))
