"""Tests of scl.preferences and scl.reward_model against independent computations."""

import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.special
import scipy.stats

from scl import preferences
from scl import reward_model as rm

# One jitted fit shared by the tests (apply_fn static, l2 traced): equal shapes compile once.
_fit = jax.jit(rm.fit_reward, static_argnums=(1,))


def test_label_pairs_deterministic_matches_numpy():
  r_x = jnp.array([0.0, 1.0, 2.0, -1.0, 3.0])
  r_z = jnp.array([1.0, 1.0, 0.5, -1.0, 4.0])
  o = preferences.label_pairs(jax.random.key(0), r_x, r_z, "deterministic")
  np.testing.assert_array_equal(np.asarray(o), [1.0, 0.5, 0.0, 0.5, 1.0])


def test_label_pairs_bradley_terry_frequency():
  n = 20_000
  r_x = jnp.zeros(n)
  r_z = jnp.full(n, 1.0)
  o = preferences.label_pairs(jax.random.key(1), r_x, r_z, "bradley_terry")
  p = scipy.special.expit(1.0)
  se = np.sqrt(p * (1 - p) / n)
  assert abs(float(o.mean()) - p) < 4 * se
  assert set(np.unique(np.asarray(o))) <= {0.0, 1.0}


def test_draw_pairs_come_from_pool_and_are_independent():
  pool = jnp.arange(100.0)[:, None] * jnp.array([[1.0, -1.0]])
  x, z = preferences.draw_pairs(jax.random.key(2), pool, 5000)
  assert x.shape == z.shape == (5000, 2)
  pool_rows = {tuple(r) for r in np.asarray(pool)}
  assert all(tuple(r) in pool_rows for r in np.asarray(x[:200]))
  # independent uniform draws: index correlation ~ 0, uniform marginals
  ix, iz = np.asarray(x[:, 0]), np.asarray(z[:, 0])
  assert abs(np.corrcoef(ix, iz)[0, 1]) < 0.06
  assert scipy.stats.chisquare(np.bincount(ix.astype(int), minlength=100)).pvalue > 1e-4


def test_fit_recovers_known_linear_reward_from_bt_labels():
  d, n = 3, 20_000
  w_true = np.array([2.0, -1.0, 0.5])
  kx, kz, ko = jax.random.split(jax.random.key(3), 3)
  x = jax.random.normal(kx, (n, d))
  z = jax.random.normal(kz, (n, d))
  o = preferences.label_pairs(ko, x @ w_true, z @ w_true, "bradley_terry")
  net = rm.linear_reward()
  params = _fit(net.init(jax.random.key(4), x[:1]), net.apply, x, z, o, 1e-6)
  w = np.asarray(params["params"]["Dense_0"]["kernel"][:, 0])
  cos = w @ w_true / np.linalg.norm(w) / np.linalg.norm(w_true)
  assert cos > 0.998, cos
  # MLE scale: the Fisher information gives a standard error of about 2-3% of |w| here
  assert abs(np.linalg.norm(w) / np.linalg.norm(w_true) - 1) < 0.08


def test_fit_matches_scipy_lbfgs_on_convex_linear_bt():
  """The jaxopt solve agrees with an independent numpy/scipy minimiser of the same L(θ; o)."""
  d, n, l2 = 3, 20_000, 1e-2  # the shapes of the test above: the jitted fit is reused
  rng = np.random.default_rng(0)
  x, z = rng.normal(size=(n, d)), rng.normal(size=(n, d))
  o = rng.uniform(size=n)  # soft labels

  def loss_np(theta):
    w, b = theta[:d], theta[d]
    diff = (z - x) @ w  # b cancels
    nll = -np.mean(o * -np.logaddexp(0, -diff) + (1 - o) * -np.logaddexp(0, diff))
    return nll + 0.5 * l2 * (w @ w + b * b)

  ref = scipy.optimize.minimize(loss_np, np.zeros(d + 1), method="L-BFGS-B", tol=1e-12).x
  net = rm.linear_reward()
  params = _fit(net.init(jax.random.key(0), jnp.zeros((1, d))), net.apply,
                         jnp.asarray(x, jnp.float32), jnp.asarray(z, jnp.float32),
                         jnp.asarray(o, jnp.float32), l2)
  w = np.asarray(params["params"]["Dense_0"]["kernel"][:, 0])
  b = float(params["params"]["Dense_0"]["bias"][0])
  np.testing.assert_allclose(w, ref[:d], atol=1e-4)
  assert abs(b) < 1e-4


def test_fit_on_subsample_minimises_the_loss_of_every_s_th_pair():
  """fit_on_subsample(pairs=m) fits every (n // m)-th pair: on a convex linear Bradley–Terry problem (n = 1,003,
  m = 100: stride 10, 101 pairs) its θ is scipy's minimiser of the loss of those pairs, not of all of them;
  the same with the pairs as indices into their samples; with fewer than 2m pairs it fits all of them; it
  passes no derivative (a warm start); pairs < 1 is an error."""
  d, n, l2 = 3, 1003, 1e-2
  rng = np.random.default_rng(11)
  points = rng.normal(size=(2 * n, d))
  ix, iz = rng.permutation(2 * n).reshape(2, n)
  o = rng.uniform(size=n)

  def minimiser(x, z, o):
    def loss_np(theta):
      diff = (z - x) @ theta[:d]
      nll = -np.mean(o * -np.logaddexp(0, -diff) + (1 - o) * -np.logaddexp(0, diff))
      return nll + 0.5 * l2 * (theta @ theta)
    return scipy.optimize.minimize(loss_np, np.zeros(d + 1), method="L-BFGS-B", tol=1e-12).x[:d]

  net = rm.linear_reward()
  p0 = net.init(jax.random.key(0), jnp.zeros((1, d)))
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  weights = lambda p: np.asarray(p["params"]["Dense_0"]["kernel"][:, 0])
  kw = dict(tol=1e-7, maxiter=500)
  sub = minimiser(points[ix[::10]], points[iz[::10]], o[::10])
  assert np.abs(sub - minimiser(points[ix], points[iz], o)).max() > 1e-2  # the subsample's optimum differs
  gathered = rm.fit_on_subsample(p0, net.apply, f32(points[ix]), f32(points[iz]), f32(o), l2, pairs=100, **kw)
  indexed = rm.fit_on_subsample(p0, net.apply, jnp.asarray(ix), jnp.asarray(iz), f32(o), l2, pairs=100,
                                points=f32(points), point_chunk=64, **kw)
  for p in (gathered, indexed):
    np.testing.assert_allclose(weights(p), sub, atol=1e-4)
  everything = rm.fit_on_subsample(p0, net.apply, f32(points[ix]), f32(points[iz]), f32(o), l2, pairs=600, **kw)
  np.testing.assert_allclose(weights(everything), minimiser(points[ix], points[iz], o), atol=1e-4)
  total = lambda p: sum(jnp.sum(a) for a in jax.tree_util.tree_leaves(p))
  grad_o = jax.grad(lambda o: total(rm.fit_on_subsample(
      p0, net.apply, f32(points[ix]), f32(points[iz]), o, l2, pairs=100, **kw)))(f32(o))
  assert not np.any(np.asarray(grad_o))
  with pytest.raises(ValueError, match="pairs must be >= 1, got 0"):
    rm.fit_on_subsample(p0, net.apply, f32(points[ix]), f32(points[iz]), f32(o), l2, pairs=0)


def test_mlp_fit_deterministic_labels_high_heldout_accuracy():
  def r(x):
    return -jnp.sum(jnp.square(x - jnp.array([1.0, 0.0])), axis=-1)

  pool = jax.random.normal(jax.random.key(5), (4000, 2))
  x, z, o = preferences.make_preferences(jax.random.key(6), pool[:2000], 2000, r)
  xt, zt, ot = preferences.make_preferences(jax.random.key(7), pool[2000:], 2000, r)
  net = rm.mlp_reward((32,))
  fit = jax.jit(lambda p, x, z, o: rm.fit_reward(p, net.apply, x, z, o, 1e-4))
  params = fit(net.init(jax.random.key(8), x[:1]), x, z, o)
  acc = float(rm.pairwise_accuracy(params, net.apply, xt, zt, ot))
  # independent check of pairwise_accuracy itself
  rx, rz = np.asarray(net.apply(params, xt)), np.asarray(net.apply(params, zt))
  decided = np.asarray(ot) != 0.5  # a pair may draw the same pool sample twice: a tie
  ref = np.mean(((rz > rx) == (np.asarray(ot) > 0.5))[decided])
  assert acc == pytest.approx(ref, abs=1e-6)
  assert acc > 0.95, acc


def test_fit_reward_implicit_derivative_wrt_labels_matches_finite_differences():
  """d θ(o) / d o from implicit differentiation vs central differences of from-scratch re-solves (float64)."""
  with jax.enable_x64(True):
    d, n, l2 = 2, 30, 1e-2
    rng = np.random.default_rng(1)
    x, z = jnp.asarray(rng.normal(size=(n, d))), jnp.asarray(rng.normal(size=(n, d)))
    o = jnp.asarray(rng.uniform(0.2, 0.8, size=n))
    net = rm.linear_reward()
    p0 = jax.tree.map(lambda a: jnp.zeros_like(a, jnp.float64),
                      net.init(jax.random.key(0), jnp.zeros((1, d))))

    def w_of(o):
      p = rm.fit_reward(p0, net.apply, x, z, o, l2, tol=1e-12, maxiter=1000, cg_tol=1e-12)
      return p["params"]["Dense_0"]["kernel"][:, 0]

    h = 1e-5
    eye = jnp.eye(n, dtype=jnp.float64)

    def w_and_jac(o):  # one forward solve: θ(o) and its implicit Jacobian (d reverse passes)
      w, vjp = jax.vjp(w_of, o)
      return w, jax.vmap(vjp)(jnp.eye(d, dtype=jnp.float64))[0]

    # one compiled program (one solver) for a batch of label vectors (lax.map, not vmap: the unbatched
    # solver inside a scan compiles faster)
    w_pm, jacs = map(np.asarray, jax.jit(lambda os: jax.lax.map(w_and_jac, os))(
        jnp.concatenate([o + h * eye, o - h * eye, o[None]])))
    jac = jacs[-1]  # [d, n] at o
    fd = (w_pm[:n] - w_pm[n:2 * n]).T / (2 * h)
    np.testing.assert_allclose(jac, fd, rtol=1e-5, atol=1e-7)


def test_chunked_reward_equals_the_whole_batch_and_needs_less_memory():
  """mlp_reward(chunk_rows=...) evaluates rows in rematerialised chunks: the same rewards, gradients and
  Hessian-vector products as one call (float32 tolerance), and XLA's own memory analysis of the loss's
  gradient shows the chunked program's temporaries a fraction of the unchunked one's."""
  whole = rm.mlp_reward((16, 16), chunk_rows=None)
  chunked = rm.mlp_reward((16, 16), chunk_rows=7)       # 30 rows: 5 chunks, the last one padded
  key = jax.random.key(0)
  x, z = jax.random.normal(key, (2, 15, 3))
  o = (jax.random.uniform(jax.random.key(1), (15,)) > 0.5).astype(jnp.float32)
  params = whole.init(jax.random.key(2), x[:1])
  np.testing.assert_allclose(chunked.apply(params, jnp.concatenate([x, z])),
                             whole.apply(params, jnp.concatenate([x, z])), rtol=1e-5, atol=1e-6)
  loss = lambda net: (lambda p: rm.bt_loss(p, net.apply, x, z, o, 1e-3))
  g_whole, g_chunk = jax.grad(loss(whole))(params), jax.grad(loss(chunked))(params)
  chex.assert_trees_all_close(g_chunk, g_whole, rtol=1e-5, atol=1e-6)
  v = jax.tree.map(jnp.ones_like, params)
  hvp = lambda net: jax.jvp(jax.grad(loss(net)), (params,), (v,))[1]
  chex.assert_trees_all_close(hvp(chunked), hvp(whole), rtol=1e-4, atol=1e-5)

  # memory: 2 x 100,000 rows through a (256, 256, 256) network, gradient of the loss, compiled not run
  wide = (256, 256, 256)
  n = 100_000
  xb = jax.ShapeDtypeStruct((n, 2), jnp.float32)
  ob = jax.ShapeDtypeStruct((n,), jnp.float32)

  def temp_bytes(net):
    p = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 2)))
    grad = jax.jit(jax.grad(lambda p, x, z, o: rm.bt_loss(p, net.apply, x, z, o, 1e-3)))
    return grad.lower(p, xb, xb, ob).compile().memory_analysis().temp_size_in_bytes

  big, small = temp_bytes(rm.mlp_reward(wide, chunk_rows=None)), temp_bytes(rm.mlp_reward(wide))
  assert rm.rows_per_chunk(wide) < 2 * n
  assert small < 0.25 * big, (small, big)


def test_bt_nll_and_its_written_out_derivatives_match_closed_forms():
  """bt_nll's value, ∂/∂d, ∂²/∂d², ∂/∂o and ∂²/∂d∂o (custom JVP, reverse and forward over reverse)
  against numpy float64 closed forms, -[o log s(d) + (1 - o) log s(-d)] with log s(d) = -logaddexp(0, -d),
  s(d) - o, s(d) s(-d), -d and -1, for gaps up to |d| = 1e4 and labels outside [0, 1] (unbiased labels);
  float32 stays finite at |d| = 1e4."""
  d = np.array([-1e4, -80.0, -30.0, -3.0, -0.5, 0.0, 1e-3, 0.7, 4.0, 35.0, 90.0, 1e4])
  o = np.array([0.0, 1.0, 0.3, 1.0, -0.2, 0.5, 1.5, 0.0, 0.9, 0.0, 1.0, 1.0])
  sig = scipy.special.expit(d)
  nll = o * np.logaddexp(0.0, -d) + (1.0 - o) * np.logaddexp(0.0, d)
  with jax.enable_x64(True):
    dj, oj = jnp.asarray(d), jnp.asarray(o)
    np.testing.assert_allclose(rm.bt_nll(dj, oj), nll, rtol=1e-14, atol=1e-300)
    grad_d = jax.vmap(jax.grad(rm.bt_nll))(dj, oj)
    np.testing.assert_allclose(grad_d, sig - o, rtol=1e-12, atol=1e-15)
    hess_d = jax.vmap(jax.jacfwd(jax.grad(rm.bt_nll)))(dj, oj)
    # s(d) (1 - s(d)) in the tails: absolute error at rounding of 1 (as autodiff of log-sigmoids gives)
    np.testing.assert_allclose(hess_d, sig * scipy.special.expit(-d), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(jax.vmap(jax.grad(rm.bt_nll, argnums=1))(dj, oj), -d, rtol=1e-15)
    mixed = jax.vmap(jax.jacfwd(jax.grad(rm.bt_nll), argnums=1))(dj, oj)
    np.testing.assert_allclose(mixed, -np.ones_like(d), rtol=1e-15)
  d32, o32 = jnp.asarray(d, jnp.float32), jnp.asarray(o, jnp.float32)
  value, grad = jax.vmap(jax.value_and_grad(rm.bt_nll))(d32, o32)
  assert np.isfinite(np.asarray(value)).all() and np.isfinite(np.asarray(grad)).all()
  np.testing.assert_allclose(grad, sig - o, rtol=1e-6, atol=1e-6)


def test_bt_value_and_grad_in_pair_chunks_equals_autodiff_of_the_whole_loss():
  """bt_value_and_grad over chunks of pairs (15 pairs in 4 chunks of 4, one padding pair of weight 0):
  the value and gradient of ``jax.value_and_grad(bt_loss)``, its Hessian-vector products, and the fit's
  implicit derivative dθ/do (float64, against the unchunked fit)."""
  with jax.enable_x64(True):
    net = rm.mlp_reward((8,))
    rng = np.random.default_rng(3)
    x, z = jnp.asarray(rng.normal(size=(2, 15, 2)))
    o = jnp.asarray(rng.uniform(size=15))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), net.init(jax.random.key(0), x[:1]))
    l2 = 1e-2
    value, grad = rm.bt_value_and_grad(params, net.apply, x, z, o, l2, pair_chunk=4)
    ref_value, ref_grad = jax.value_and_grad(rm.bt_loss)(params, net.apply, x, z, o, l2)
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    chex.assert_trees_all_close(grad, ref_grad, rtol=1e-10, atol=1e-14)

    v = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), params)
    hvp = jax.jvp(lambda p: rm.bt_value_and_grad(p, net.apply, x, z, o, l2, pair_chunk=4)[1],
                  (params,), (v,))[1]
    ref_hvp = jax.jvp(jax.grad(lambda p: rm.bt_loss(p, net.apply, x, z, o, l2)), (params,), (v,))[1]
    chex.assert_trees_all_close(hvp, ref_hvp, rtol=1e-9, atol=1e-12)

    def theta(o, chunk):
      p = rm.fit_reward(params, net.apply, x, z, o, l2, tol=1e-10, maxiter=2000, cg_tol=1e-12,
                        cg_maxiter=500, pair_chunk=chunk)
      return jax.flatten_util.ravel_pytree(p)[0]

    @jax.jit
    def solution_and_vjp(o, u):  # one program for both fits
      out = []
      for chunk in (4, None):
        t, vjp = jax.vjp(lambda o: theta(o, chunk), o)
        out.append((t, vjp(u)[0]))
      return out

    u = jnp.asarray(rng.normal(size=jax.flatten_util.ravel_pytree(params)[0].shape))
    (t4, g4), (t0, g0) = solution_and_vjp(o, u)
    np.testing.assert_allclose(t4, t0, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(g4, g0, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("features, chunk_rows", [(2, "auto"), (6, "auto"), (2, 16)])
def test_written_out_pullback_of_one_hidden_layer_equals_autodiff(features, chunk_rows):
  """mlp_reward((H,)) with SiLU carries a written-out value_and_pullback (first layer as broadcasts for
  <= 4 input features, a product otherwise; autodiff of the chunked apply beyond chunk_rows rows): its
  rewards, pull-back Σ c_i ∇R(x_i) and that pull-back's own derivative in θ (as Hessian-vector products
  take it) equal flax autodiff of the module (float64); deeper nets and other activations carry none."""
  with jax.enable_x64(True):
    net = rm.mlp_reward((8,), chunk_rows=chunk_rows)
    assert hasattr(net.apply, "value_and_pullback")
    assert not hasattr(rm.mlp_reward((8, 8)).apply, "value_and_pullback")
    assert not hasattr(rm.mlp_reward((8,), activation=jax.nn.tanh).apply, "value_and_pullback")
    module = rm.MLPReward(hidden=(8,))
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(40, features)))
    c = jnp.asarray(rng.normal(size=40))
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), net.init(jax.random.key(0), x[:1]))
    v = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), params)

    def pulled(p):
      return rm.value_and_pullback(p, net.apply, x)[1](c)

    def ref_pulled(p):
      return jax.vjp(lambda q: module.apply(q, x), p)[1](c)[0]

    r = rm.value_and_pullback(params, net.apply, x)[0]
    np.testing.assert_allclose(r, module.apply(params, x), rtol=1e-12, atol=1e-12)
    chex.assert_trees_all_close(pulled(params), ref_pulled(params), rtol=1e-11, atol=1e-12)
    chex.assert_trees_all_close(jax.jvp(pulled, (params,), (v,))[1], jax.jvp(ref_pulled, (params,), (v,))[1],
                                rtol=1e-10, atol=1e-12)


def test_indexed_pairs_equal_the_gathered_pairs():
  """Pairs given as indices into their samples (``points=``; 15 pairs from 13 points, so samples repeat):
  bt_value_and_grad in two passes over chunks of 5 points (the last one padded) and unchunked has the value,
  gradient and Hessian-vector products of ``jax.value_and_grad(bt_loss)`` on the gathered samples, and the
  fit's implicit derivatives in the labels and in the points equal the gathered fit's (float64)."""
  with jax.enable_x64(True):
    net = rm.mlp_reward((8,))
    rng = np.random.default_rng(5)
    points = jnp.asarray(rng.normal(size=(13, 2)))
    ix, iz = jnp.asarray(rng.integers(0, 13, size=(2, 15)), jnp.int32)
    assert len(np.unique(np.concatenate([ix, iz]))) < 30  # some sample is in two pairs
    o = jnp.asarray(rng.uniform(size=15))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), net.init(jax.random.key(0), points[:1]))
    l2 = 1e-2
    ref_value, ref_grad = jax.value_and_grad(rm.bt_loss)(params, net.apply, points[ix], points[iz], o, l2)
    v = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), params)
    ref_hvp = jax.jvp(jax.grad(lambda p: rm.bt_loss(p, net.apply, points[ix], points[iz], o, l2)),
                      (params,), (v,))[1]
    for chunk in (5, None):
      value, grad = rm.bt_value_and_grad(params, net.apply, ix, iz, o, l2, points, point_chunk=chunk)
      np.testing.assert_allclose(value, ref_value, rtol=1e-12)
      chex.assert_trees_all_close(grad, ref_grad, rtol=1e-10, atol=1e-14)
      hvp = jax.jvp(lambda p: rm.bt_value_and_grad(p, net.apply, ix, iz, o, l2, points, point_chunk=chunk)[1],
                    (params,), (v,))[1]
      chex.assert_trees_all_close(hvp, ref_hvp, rtol=1e-9, atol=1e-12)
    r_x, r_z = rm.pair_rewards(params, net.apply, ix, iz, points)
    np.testing.assert_allclose(r_z - r_x, net.apply(params, points[iz]) - net.apply(params, points[ix]),
                               rtol=1e-12)

    def theta(o, points, indexed):
      kw = dict(tol=1e-10, maxiter=2000, cg_tol=1e-12, cg_maxiter=500)
      if indexed:
        p = rm.fit_reward(params, net.apply, ix, iz, o, l2, points=points, point_chunk=5, **kw)
      else:
        p = rm.fit_reward(params, net.apply, points[ix], points[iz], o, l2, **kw)
      return jax.flatten_util.ravel_pytree(p)[0]

    @jax.jit
    def solution_and_vjp(o, points, u):
      out = []
      for indexed in (True, False):
        t, vjp = jax.vjp(lambda o, points: theta(o, points, indexed), o, points)
        out.append((t, *vjp(u)))
      return out

    u = jnp.asarray(rng.normal(size=jax.flatten_util.ravel_pytree(params)[0].shape))
    (t1, go1, gp1), (t0, go0, gp0) = solution_and_vjp(o, points, u)
    np.testing.assert_allclose(t1, t0, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(go1, go0, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(gp1, gp0, rtol=1e-5, atol=1e-8)
    assert np.abs(go0).max() > 1e-3 and np.abs(gp0).max() > 1e-3  # not a vacuous comparison


def test_solve_info_counts_the_evaluations():
  """SolveInfo.num_evals is the number of loss-and-gradient evaluations the fit made, counted here by a host
  callback in the reward network: the start, one per accepted iteration, and one per rejected trial step."""
  calls = []
  net = rm.mlp_reward((8,))

  def counted_apply(params, x):
    jax.debug.callback(lambda: calls.append(1))
    return net.apply(params, x)

  rng = np.random.default_rng(6)
  x, z = (jnp.asarray(rng.normal(size=(200, 2)), jnp.float32) for _ in range(2))
  o = jnp.asarray(rng.uniform(size=200) < 0.5, jnp.float32)
  p0 = net.init(jax.random.key(0), x[:1])
  _, info = jax.jit(lambda o: rm.fit_reward(p0, counted_apply, x, z, o, 1e-3, return_info=True))(o)
  jax.effects_barrier()
  assert int(info.num_evals) == len(calls)
  assert int(info.num_evals) > int(info.num_iters) + 1  # some trial step was rejected on this fit


def test_jaxopt_line_search_fit_with_chunked_gradient_matches_armijo():
  """fit_reward(linesearch="zoom") hands the chunked loss-and-gradient to jaxopt.LBFGS (value_and_grad=True):
  on a convex linear Bradley–Terry fit it reaches the minimiser of scl's own L-BFGS, and its implicit
  derivative in the labels equals that one's."""
  d, n, l2 = 3, 300, 1e-2
  rng = np.random.default_rng(4)
  x, z = (jnp.asarray(rng.normal(size=(n, d)), jnp.float32) for _ in range(2))
  o = jnp.asarray(rng.uniform(size=n), jnp.float32)
  net = rm.linear_reward()
  p0 = net.init(jax.random.key(0), jnp.zeros((1, d)))

  def w(o, linesearch):
    p = rm.fit_reward(p0, net.apply, x, z, o, l2, tol=1e-6, linesearch=linesearch, pair_chunk=64)
    return p["params"]["Dense_0"]["kernel"][:, 0]

  @jax.jit
  def solutions_and_vjps(o, ct):
    out = []
    for linesearch in ("zoom", "armijo"):
      w_o, vjp = jax.vjp(lambda o: w(o, linesearch), o)
      out.append((w_o, vjp(ct)[0]))
    return out

  (w_zoom, g_zoom), (w_armijo, g_armijo) = solutions_and_vjps(o, jnp.asarray([1.0, -2.0, 0.5]))
  np.testing.assert_allclose(w_zoom, w_armijo, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(g_zoom, g_armijo, rtol=1e-3, atol=1e-6)


def test_a_fit_without_iterations_is_refused():
  """With maxiter=0 the solver's loop never ran, so SolveInfo.grad_norm stayed at its initial 0 (a caller testing
  grad_norm <= tol read "converged" where the true gradient norm was 0.47)."""
  net = rm.mlp_reward((8,))
  x = jnp.linspace(-1.0, 1.0, 8).reshape(4, 2)
  params = net.init(jax.random.key(0), x[:1])
  for bad in (0, -1, True):
    with pytest.raises(ValueError, match=rf"maxiter={bad!r}"):
      rm.fit_reward(params, net.apply, x, x[::-1], jnp.ones(4), 1e-3, maxiter=bad)


@pytest.mark.parametrize("index, value", [(3, float("nan")), (7, 2.0), (0, -0.5)])
def test_labels_outside_the_unit_interval_are_refused_at_every_entry_point(index, value):
  """A NaN label stopped the fit at its start (0 iterations, the initial θ returned, no NaN anywhere), and
  labels outside [0, 1] went through attacks and defences; each entry point now names the bad label."""
  from scl import attacks, defences
  net = rm.mlp_reward((8,))
  x, z = jax.random.normal(jax.random.key(0), (50, 2)), jax.random.normal(jax.random.key(1), (50, 2))
  o = jnp.where(z[:, 0] > x[:, 0], 1.0, 0.0).at[index].set(value)
  theta = net.init(jax.random.key(2), x[:1])
  match = rf"o\[{index}\]={value!r}"
  with pytest.raises(ValueError, match=match):
    rm.fit_reward(theta, net.apply, x, z, o, 1e-3)
  with pytest.raises(ValueError, match=match):
    attacks.attack("random", jax.random.key(0), x, z, o, kappa=0.2)
  with pytest.raises(ValueError, match=match):
    defences.defend("label_smoothing", jax.random.key(0), x, z, o, theta0=theta, net=net, eps=0.1)
  rm.fit_reward(theta, net.apply, x, z, o.at[index].set(0.5), 1e-3)  # a tie (1/2) is a valid label


@pytest.mark.parametrize("native", [True, False])
def test_fit_under_x64_with_float32_params_converges_and_differentiates(native, monkeypatch):
  """Under jax_enable_x64, flax's init gives float32 params while the labels and L2 weight became float64: the
  loss and gradient came back float64 and the fit crashed (the native step: "expected F32 but got F64"; the jnp
  loop: a carry changing dtype). The solver now keeps the params' dtypes; the fit matches the float64 one."""
  from scl import _native
  if not native:
    monkeypatch.setattr(_native, "available", lambda: False)
  with jax.enable_x64(True):
    net = rm.mlp_reward((16,))
    k = jax.random.split(jax.random.key(0), 4)
    x, z = jax.random.normal(k[0], (300, 2), jnp.float32), jax.random.normal(k[1], (300, 2), jnp.float32)
    o = (z[:, 0] > x[:, 0]).astype(jnp.float32)
    p0 = net.init(k[3], x[:1])
    theta, info = rm.fit_reward(p0, net.apply, x, z, o, 1e-3, return_info=True)
    assert jax.tree.leaves(theta)[0].dtype == jnp.float32 and float(info.grad_norm) <= 1e-5
    as64 = lambda t: jax.tree.map(lambda a: a.astype(jnp.float64), t)
    theta64 = rm.fit_reward(as64(p0), net.apply, x.astype(jnp.float64), z.astype(jnp.float64), o, 1e-3)
    r32, r64 = net.apply(theta, x), net.apply(theta64, x.astype(jnp.float64))
    # Bradley–Terry sees margins only: the common offset is set by the L2 term's weak curvature alone
    centred = lambda r: np.asarray(r - jnp.mean(r), np.float64)
    np.testing.assert_allclose(centred(r32), centred(r64), atol=1e-2 * float(jnp.std(r64)))
    grad = jax.grad(lambda o: jnp.sum(net.apply(rm.fit_reward(p0, net.apply, x, z, o, 1e-3), x)))(o)
    assert np.all(np.isfinite(np.asarray(grad)))
