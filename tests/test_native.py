"""Tests of scl's fused Bradley–Terry CPU kernel (scl/_native.py, scl/csrc/bt_mlp1.cc) against float64 autodiff
of the flax reward, which shares no code with it."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scl import _native
from scl import reward_model as rm
from scl.hyper import Hyper
from scl.models import flow

pytestmark = pytest.mark.skipif(not _native.available(), reason="no C++ compiler: the fused kernel is not built")


def _problem(d, hidden, n, seed, scale=3.0):
  net = rm.mlp_reward((hidden,))
  k = jax.random.split(jax.random.key(seed), 6)
  x = jax.random.normal(k[0], (n, d))
  z = jax.random.normal(k[1], (n, d))
  params = jax.tree_util.tree_map(lambda a: scale * a, net.init(k[2], x[:1]))
  params = jax.tree_util.tree_map(lambda a, e: a + 0.1 * jax.random.normal(e, a.shape), params,
                                  jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params),
                                                               jax.random.split(k[3], 4)))
  o = jax.random.uniform(k[4], (n,))  # soft labels
  w = jnp.where(jax.random.uniform(k[5], (n,)) < 0.2, 0.0, 1.0 + jax.random.uniform(k[5], (n,)))
  return net, params, x, z, o, w


def _float64_reference(net, params, x, z, o, w):
  """``Σ w_i nll_i`` and its gradient by float64 autodiff of the flax module (as numpy arrays)."""
  with jax.enable_x64():
    p64, x64, z64, o64, w64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), (params, x, z, o, w))

    def loss(p):
      d = net.apply(p, z64) - net.apply(p, x64)
      return jnp.sum(w64 * (o64 * jax.nn.softplus(-d) + (1 - o64) * jax.nn.softplus(d)))

    value, grad = jax.value_and_grad(loss)(p64)
    return float(value), jax.tree_util.tree_map(np.asarray, grad)


@pytest.mark.parametrize("d,hidden,n", [(1, 8, 1), (2, 64, 7), (3, 16, 513), (4, 64, 1000), (2, 128, 1100)])
def test_fused_loss_and_gradient_match_float64_autodiff(d, hidden, n):
  """Odd sizes cross the kernel's 16-pair blocks, 8-row groups and 128-pair chunks; weights include zeros,
  labels are soft."""
  net, params, x, z, o, w = _problem(d, hidden, n, seed=d * 100 + n)
  value, grad = jax.jit(rm._fused_nll_sum_and_grad, static_argnums=1)(params, net.apply, x, z, o, w)
  ref_value, ref_grad = _float64_reference(net, params, x, z, o, w)
  np.testing.assert_allclose(float(value), ref_value, rtol=2e-6, atol=1e-6)
  scale = max(float(np.max(np.abs(g))) for g in jax.tree_util.tree_leaves(ref_grad))
  for got, want in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(ref_grad)):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=2e-6 * scale * max(1, n) ** 0.5)


def test_large_rewards_do_not_overflow():
  """Reward gaps of order 1e4: the loss is the gap itself for the wrong label (softplus(d) = d), no inf/NaN."""
  net, params, x, z, o, w = _problem(2, 64, 64, seed=7, scale=300.0)
  o = jnp.round(o)
  value, grad = jax.jit(rm._fused_nll_sum_and_grad, static_argnums=1)(params, net.apply, x, z, o, w)
  ref_value, ref_grad = _float64_reference(net, params, x, z, o, w)
  assert ref_value > 1e3
  np.testing.assert_allclose(float(value), ref_value, rtol=1e-5)
  for got, want in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(ref_grad)):
    assert np.all(np.isfinite(np.asarray(got)))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-3, atol=1e-5 * float(np.max(np.abs(want))))


def test_derivatives_through_the_kernel_match_float64_autodiff():
  """The kernel replaces the primal only; a Hessian-vector product and the derivative in the labels (what the
  fit's implicit differentiation takes) come through its custom JVP and match float64 second derivatives."""
  net, params, x, z, o, w = _problem(2, 64, 300, seed=3, scale=1.0)
  v = jax.tree_util.tree_map(lambda a: jnp.cos(jnp.arange(a.size, dtype=a.dtype).reshape(a.shape)), params)
  do = jnp.sin(jnp.arange(o.shape[0], dtype=o.dtype))

  def grad_fused(p, o):
    return rm._nll_sum_and_grad(p, net.apply, x, z, o, w)[1]

  _, tangent = jax.jit(lambda p, o: jax.jvp(grad_fused, (p, o), (v, do)))(params, o)
  with jax.enable_x64():
    p64, v64, x64, z64, o64, do64, w64 = jax.tree_util.tree_map(
        lambda a: np.asarray(a, np.float64), (params, v, x, z, o, do, w))

    def loss(p, o):
      d = net.apply(p, z64) - net.apply(p, x64)
      return jnp.sum(w64 * (o * jax.nn.softplus(-d) + (1 - o) * jax.nn.softplus(d)))

    _, want = jax.jvp(jax.grad(loss), (p64, o64), (v64, do64))
  scale = max(float(np.max(np.abs(g))) for g in jax.tree_util.tree_leaves(want))
  for got, ref in zip(jax.tree_util.tree_leaves(tangent), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-4, atol=1e-5 * scale)


def _float64_hvp(net, params, v, x, z, o, w, l2=0.0, mean=False):
  """``∇²_θ (Σ w_i nll_i (/ n if mean) + l2/2 ||θ||²) v`` by float64 forward-over-reverse autodiff of the flax
  module (as numpy arrays)."""
  with jax.enable_x64():
    p64, v64, x64, z64, o64, w64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), (params, v, x, z, o, w))

    def loss(p):
      d = net.apply(p, z64) - net.apply(p, x64)
      nll = jnp.sum(w64 * (o64 * jax.nn.softplus(-d) + (1 - o64) * jax.nn.softplus(d)))
      penalty = 0.5 * l2 * sum(jnp.sum(jnp.square(a)) for a in jax.tree_util.tree_leaves(p))
      return (nll / x.shape[0] if mean else nll) + penalty

    return jax.tree_util.tree_map(np.asarray, jax.jvp(jax.grad(loss), (p64,), (v64,))[1])


def _tangent(params, seed):
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree_util.tree_unflatten(tree, [jax.random.normal(k, a.shape) for k, a in zip(keys, leaves)])


def _assert_tree_close(got, want, rtol, atol_rel):
  scale = max(float(np.max(np.abs(g))) for g in jax.tree_util.tree_leaves(want))
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    assert np.all(np.isfinite(np.asarray(a)))
    np.testing.assert_allclose(np.asarray(a), b, rtol=rtol, atol=atol_rel * scale)


@pytest.mark.parametrize("d,hidden,n", [(1, 8, 1), (2, 64, 7), (3, 16, 513), (4, 64, 1000), (2, 128, 1100)])
def test_fused_hessian_vector_product_matches_float64_autodiff(d, hidden, n):
  """scl_bt_mlp1_hvp against float64 forward-over-reverse autodiff: odd sizes cross its 8-pair blocks, 4-row
  groups and 128-pair chunks; weights include zeros, labels are soft."""
  net, params, x, z, o, w = _problem(d, hidden, n, seed=d * 10 + n, scale=1.0)
  v = _tangent(params, seed=n)
  hv = jax.jit(_native.bt_mlp1_hvp)(*rm._mlp1_arrays(params), *rm._mlp1_arrays(v), x, z, o, w)
  _assert_tree_close(rm._mlp1_tree(params, *hv), _float64_hvp(net, params, v, x, z, o, w), rtol=1e-3,
                     atol_rel=1e-5 * max(1, n) ** 0.5)


def test_fused_hessian_vector_product_with_large_rewards():
  """Reward gaps of order 1e4: the loss's curvature e / (1 + e)^2 vanishes on the saturated pairs, no inf/NaN."""
  net, params, x, z, o, w = _problem(2, 64, 64, seed=7, scale=300.0)
  o, v = jnp.round(o), _tangent(params, seed=1)
  hv = jax.jit(_native.bt_mlp1_hvp)(*rm._mlp1_arrays(params), *rm._mlp1_arrays(v), x, z, o, w)
  _assert_tree_close(rm._mlp1_tree(params, *hv), _float64_hvp(net, params, v, x, z, o, w), rtol=1e-3,
                     atol_rel=1e-5)


def _uses_hvp_kernel(net, params, x, z, o, points=None):
  v = jax.tree_util.tree_map(jnp.ones_like, params)
  text = jax.jit(lambda p: rm.bt_hvp(p, net.apply, x, z, o, 1e-3, v, points)).lower(params).as_text()
  return ("@scl_bt_mlp1_hvp(" if points is None else "@scl_mlp1_pullback_tangent(") in text


@pytest.mark.parametrize("d,hidden,n", [(1, 8, 1), (2, 64, 17), (3, 16, 700)])
def test_row_tangents_and_the_pull_backs_tangent_match_float64_autodiff(d, hidden, n):
  """scl_mlp1_tangents (R and its derivative along v) against float64 jax.jvp of the flax module, and
  scl_mlp1_pull_back_tangent against float64 jax.jvp of its vector-Jacobian product Σ c_i ∇R(x_i) along
  (v, c_dot); sizes cross the 16-row blocks, 4-row groups and 256-row chunks."""
  net, params, x, _, o, w = _problem(d, hidden, n, seed=d + n, scale=1.0)
  v, c, c_dot = _tangent(params, seed=d), o - 0.5, w - 1.0
  theta, tangent = rm._mlp1_arrays(params), rm._mlp1_arrays(v)
  r, r_dot = jax.jit(_native.mlp1_values_and_tangents)(*theta, *tangent, x)
  pulled = rm._mlp1_tree(params, *jax.jit(_native.mlp1_pullback_tangent)(*theta, *tangent, x, c, c_dot))
  with jax.enable_x64():
    p64, v64, x64, c64, cd64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), (params, v, x, c, c_dot))
    r64, r_dot64 = jax.jvp(lambda p: net.apply(p, x64), (p64,), (v64,))
    pull = lambda p, c: jax.vjp(lambda q: net.apply(q, x64), p)[1](c)[0]
    want = jax.tree_util.tree_map(np.asarray, jax.jvp(pull, (p64, c64), (v64, cd64))[1])
  np.testing.assert_allclose(np.asarray(r), np.asarray(r64), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(r_dot), np.asarray(r_dot64), rtol=1e-4, atol=1e-4)
  _assert_tree_close(pulled, want, rtol=1e-3, atol_rel=1e-5 * max(1, n) ** 0.5)


def test_bt_hvp_is_the_hessian_of_bt_loss_and_uses_the_kernel_where_it_applies():
  """rm.bt_hvp (the mean loss plus the l2 penalty) against float64 autodiff, on the kernels' paths (pairs, under
  vmap, and pairs that index a pool of samples) and on the jax.numpy path (a deeper net)."""
  net, params, x, z, o, _ = _problem(2, 64, 300, seed=4, scale=1.0)
  o, v, l2, ones = jnp.round(o), _tangent(params, seed=2), 1e-2, jnp.ones_like(o)
  want = _float64_hvp(net, params, v, x, z, o, ones, l2=l2, mean=True)
  _assert_tree_close(jax.jit(lambda p, v: rm.bt_hvp(p, net.apply, x, z, o, l2, v))(params, v), want, 1e-3, 1e-5)
  assert _uses_hvp_kernel(net, params, x, z, o)
  stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a, -a]), v)
  both = jax.jit(jax.vmap(lambda v: rm.bt_hvp(params, net.apply, x, z, o, l2, v)))(stacked)
  _assert_tree_close(jax.tree_util.tree_map(lambda a: a[0], both), want, 1e-3, 1e-5)
  _assert_tree_close(jax.tree_util.tree_map(lambda a: -a[1], both), want, 1e-3, 1e-5)
  points = jnp.concatenate([x, z])  # the same pairs as indices into a pool
  ix, iz = jnp.arange(300), jnp.arange(300, 600)
  assert _uses_hvp_kernel(net, params, ix, iz, o, points)
  _assert_tree_close(jax.jit(lambda p, v: rm.bt_hvp(p, net.apply, ix, iz, o, l2, v, points))(params, v), want,
                     1e-3, 1e-5)
  deep = rm.mlp_reward((16, 16))
  deep_params = deep.init(jax.random.key(0), x[:1])
  assert not _uses_hvp_kernel(deep, deep_params, x, z, o)
  v_deep = _tangent(deep_params, seed=3)
  _assert_tree_close(jax.jit(lambda p, v: rm.bt_hvp(p, deep.apply, x, z, o, l2, v))(deep_params, v_deep),
                     _float64_hvp(deep, deep_params, v_deep, x, z, o, ones, l2=l2, mean=True), 1e-3, 1e-5)


def test_vmap_runs_the_kernel_per_member():
  net, params, x, z, o, w = _problem(2, 32, 200, seed=5)
  stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a, 0.5 * a, -a]), params)
  values, grads = jax.jit(jax.vmap(lambda p: rm._nll_sum_and_grad(p, net.apply, x, z, o, w)))(stacked)
  for i in range(3):
    member = jax.tree_util.tree_map(lambda a: a[i], stacked)
    ref_value, ref_grad = _float64_reference(net, member, x, z, o, w)
    np.testing.assert_allclose(float(values[i]), ref_value, rtol=2e-6)
    for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grad)):
      np.testing.assert_allclose(np.asarray(got[i]), want, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(want))))


def _uses_kernel(net, params, x, z, o):
  text = jax.jit(lambda p: rm.bt_value_and_grad(p, net.apply, x, z, o, 1e-3)).lower(params).as_text()
  return "scl_bt_mlp1" in text


def test_the_loss_uses_the_kernel_exactly_where_it_applies():
  net, params, x, z, o, _ = _problem(2, 64, 100, seed=1)
  assert _uses_kernel(net, params, x, z, o)
  net5, params5, x5, z5, o5, _ = _problem(5, 64, 100, seed=1)  # more than 4 input features
  assert not _uses_kernel(net5, params5, x5, z5, o5)
  net12, params12, x12, z12, o12, _ = _problem(2, 12, 100, seed=1)  # width not a multiple of 8
  assert not _uses_kernel(net12, params12, x12, z12, o12)
  deep = rm.mlp_reward((64, 64))
  assert not _uses_kernel(deep, deep.init(jax.random.key(0), x[:1]), x, z, o)
  with jax.enable_x64():  # float64 stays on the jax.numpy path
    p64, x64, z64, o64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), (params, x, z, o))
    assert not _uses_kernel(net, p64, x64, z64, o64)


def test_scl_native_0_turns_the_kernel_off():
  env = dict(os.environ, SCL_NATIVE="0", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", "from scl import _native; print(_native.available())"],
                       capture_output=True, text=True, env=env, check=True)
  assert out.stdout.strip() == "False"


def test_a_failed_build_warns_and_falls_back(tmp_path):
  """A compiler that fails (here ``false``): a RuntimeWarning, and the loss is computed on the jax.numpy path."""
  code = ("import warnings, jax, jax.numpy as jnp\n"
          "from scl import _native, reward_model as rm\n"
          "with warnings.catch_warnings(record=True) as w:\n"
          "  warnings.simplefilter('always')\n"
          "  ok = _native.available()\n"
          "net = rm.mlp_reward((8,)); x = jnp.ones((3, 2)); p = net.init(jax.random.key(0), x)\n"
          "v, _ = rm.bt_value_and_grad(p, net.apply, x, -x, jnp.ones(3), 1e-3)\n"
          "print(ok, any('building' in str(m.message) for m in w), bool(jnp.isfinite(v)))\n")
  env = dict(os.environ, CXX="false", SCL_NATIVE_CACHE=str(tmp_path), JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
  assert out.stdout.split() == ["False", "True", "True"], out.stderr[-2000:]


def test_a_missing_source_file_warns_and_falls_back(monkeypatch, tmp_path):
  """A kernel source missing from an install (here a header): a RuntimeWarning and no library, not a crash."""
  monkeypatch.setenv("SCL_NATIVE_CACHE", str(tmp_path))
  monkeypatch.setattr(_native, "_HEADERS", (str(tmp_path / "missing.h"),))
  with pytest.warns(RuntimeWarning, match="building .* failed .*missing.h"):
    assert _native._build() is None


def test_the_package_ships_every_kernel_source():
  """pyproject's package data matches every file the build reads and every file in scl/csrc (an install
  without one would fall back to the jax.numpy path)."""
  import fnmatch
  import tomllib
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, "pyproject.toml"), "rb") as f:
    patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["scl"]
  package = os.path.join(root, "scl")
  csrc = os.path.join(package, "csrc")
  needed = {os.path.relpath(p, package) for p in _native._SOURCES + _native._HEADERS}
  needed |= {os.path.join("csrc", name) for name in os.listdir(csrc) if not name.startswith(".")}
  missing = sorted(p for p in needed if not any(fnmatch.fnmatch(p, pattern) for pattern in patterns))
  assert not missing, f"not in pyproject's package data {patterns}: {missing}"


def _indexed_problem(d, hidden, n_points, n_pairs, seed):
  net, params, points, _, o, _ = _problem(d, hidden, n_points, seed)
  k = jax.random.split(jax.random.key(seed + 1), 3)
  ix = jax.random.randint(k[0], (n_pairs,), 0, n_points)
  iz = jax.random.randint(k[1], (n_pairs,), 0, n_points)
  o = jax.random.uniform(k[2], (n_pairs,))
  return net, params, points, ix, iz, o


@pytest.mark.parametrize("d,hidden,n_points,n_pairs", [(2, 64, 300, 500), (1, 8, 1, 3), (3, 16, 1000, 700)])
def test_fused_indexed_loss_and_gradient_match_float64_autodiff(d, hidden, n_points, n_pairs):
  """Pairs that index a pool (each sample in several pairs): the rewards kernel, ∂L/∂r by gathers and
  scatters, and the pull-back kernel, against float64 autodiff of the mean loss plus the L2 term."""
  net, params, points, ix, iz, o = _indexed_problem(d, hidden, n_points, n_pairs, seed=11 * d + n_points)
  l2 = 1e-3
  value, grad = jax.jit(lambda p: rm.bt_value_and_grad(p, net.apply, ix, iz, o, l2, points))(params)
  with jax.enable_x64():
    p64, pts64, o64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), (params, points, o))

    def loss(p):
      r = net.apply(p, pts64)
      dd = r[iz] - r[ix]
      nll = jnp.mean(o64 * jax.nn.softplus(-dd) + (1 - o64) * jax.nn.softplus(dd))
      return nll + 0.5 * l2 * sum(jnp.sum(a ** 2) for a in jax.tree_util.tree_leaves(p))

    ref_value, ref_grad = jax.value_and_grad(loss)(p64)
  np.testing.assert_allclose(float(value), float(ref_value), rtol=2e-6)
  scale = max(float(np.max(np.abs(g))) for g in jax.tree_util.tree_leaves(ref_grad))
  for got, want in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(ref_grad)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5 * scale)


def test_indexed_derivatives_through_the_kernels_match_float64_autodiff():
  net, params, points, ix, iz, o = _indexed_problem(2, 32, 200, 400, seed=21)
  v = jax.tree_util.tree_map(lambda a: jnp.cos(jnp.arange(a.size, dtype=a.dtype).reshape(a.shape)), params)
  do = jnp.sin(jnp.arange(o.shape[0], dtype=o.dtype))
  grad = lambda p, o: rm.bt_value_and_grad(p, net.apply, ix, iz, o, 1e-3, points)[1]
  text = jax.jit(grad).lower(params, o).as_text()
  assert "scl_mlp1_values" in text and "scl_mlp1_pullback" in text
  _, tangent = jax.jit(lambda p, o: jax.jvp(grad, (p, o), (v, do)))(params, o)
  with jax.enable_x64():
    p64, v64, pts64, o64, do64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64),
                                                        (params, v, points, o, do))

    def loss(p, o):
      r = net.apply(p, pts64)
      dd = r[iz] - r[ix]
      return (jnp.mean(o * jax.nn.softplus(-dd) + (1 - o) * jax.nn.softplus(dd))
              + 0.5e-3 * sum(jnp.sum(a ** 2) for a in jax.tree_util.tree_leaves(p)))

    _, want = jax.jvp(jax.grad(loss), (p64, o64), (v64, do64))
  scale = max(float(np.max(np.abs(g))) for g in jax.tree_util.tree_leaves(want))
  for got, ref in zip(jax.tree_util.tree_leaves(tangent), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-4, atol=1e-5 * scale)


# ---------------------------------------------------------------- the L-BFGS iteration (scl/csrc/lbfgs.cc)

def _dense_lbfgs_direction(g, pairs, gamma):
  """``-H g`` with ``H`` built densely (float64) by the BFGS update from ``γ I`` over ``pairs`` (oldest first):
  ``H <- (I - ρ s yᵀ) H (I - ρ y sᵀ) + ρ s sᵀ``: the matrix the two-loop recursion applies without forming it."""
  h = gamma * np.eye(g.size)
  for s, y in pairs:
    rho = 1.0 / (s @ y)
    v = np.eye(g.size) - rho * np.outer(y, s)
    h = v.T @ h @ v + rho * np.outer(s, s)
  return -h @ g


def _lbfgs_state(rng, p, m, count, head):
  """A started state with ``count`` curvature pairs (positive ``s·y``) in a ring of ``m`` rows from ``head``."""
  a = rng.normal(size=(p, p))
  hess = a @ a.T / p + np.eye(p)
  s_rows, y_rows, rho = np.zeros((m, p)), np.zeros((m, p)), np.zeros(m)
  pairs = []
  for j in range(count):
    s = rng.normal(size=p)
    y = hess @ s
    row = (head + j) % m
    s_rows[row], y_rows[row], rho[row] = s, y, 1.0 / (s @ y)
    pairs.append((s, y))
  x, g, d = rng.normal(size=p), rng.normal(size=p), rng.normal(size=p)
  f, t, gd = 2.0, 0.5, -1.5
  state = [x, g, d, s_rows, y_rows, rho, np.array([f, t, gd, 0.7]), np.array([3, 2, 1, 9, head, count, 1])]
  state = [np.asarray(a, np.int32 if i == 7 else np.float32) for i, a in enumerate(state)]
  return state, hess, pairs


@pytest.mark.parametrize("p,m,count,head", [(13, 5, 3, 1), (37, 4, 4, 2), (8, 1, 0, 0)])
def test_lbfgs_step_accepts_a_decrease_and_takes_the_bfgs_direction(p, m, count, head):
  """An accepted trial: the new pair enters the ring (over the oldest when it is full), γ = s·y / y·y, and the
  direction is ``-H g`` of the dense BFGS matrix (float64) of the pairs, oldest first."""
  rng = np.random.default_rng(p + m)
  state, hess, pairs = _lbfgs_state(rng, p, m, count, head)
  x, g, d, *_ = state
  x_try = (x + 0.5 * d).astype(np.float32)
  g_try = (g + hess @ (x_try - x)).astype(np.float32)  # a positive curvature pair
  f_try = np.float32(2.0 - 1.0)  # below the Armijo bound 2 + 1e-4 · 0.5 · (-1.5)
  out = jax.jit(lambda *a: _native.lbfgs_step(tuple(a[:9]), a[9], a[10], maxiter=100, tol=1e-8,
                                              max_backtracks=30))(*state, x_try, f_try, g_try)
  out = [np.asarray(a) for a in out]
  s, y = x_try.astype(np.float64) - x, g_try.astype(np.float64) - g
  pairs = (pairs + [(s, y)])[-m:]
  gamma = (s @ y) / (y @ y)
  want_d = _dense_lbfgs_direction(g_try.astype(np.float64), pairs, gamma)
  np.testing.assert_allclose(out[0], x_try)
  np.testing.assert_allclose(out[1], g_try)
  np.testing.assert_allclose(out[2], want_d, rtol=1e-4, atol=1e-5 * np.abs(want_d).max())
  np.testing.assert_allclose(out[6], [f_try, 1.0, g_try @ want_d, gamma], rtol=1e-4)
  np.testing.assert_array_equal(out[7], [4, 0, 1, 10, (head + (count == m)) % m, min(count + 1, m), 1])
  np.testing.assert_allclose(out[8], x_try + want_d, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("f_try,factor", [(2.5, None), (np.nan, 0.1), (1e6, 0.1)])
def test_lbfgs_step_backtracks_on_a_rejected_trial(f_try, factor):
  """A rejected trial leaves the point and the history and shrinks ``t`` to the minimiser of the quadratic
  through ``f``, ``g·d`` and ``f_try`` (written out below), clipped to ``[0.1 t, 0.5 t]``; 0.1 t if not finite."""
  rng = np.random.default_rng(0)
  state, _, _ = _lbfgs_state(rng, 11, 3, 2, 0)
  f, t, gd = 2.0, 0.5, -1.5
  want_t = t * factor if factor else np.clip(-gd * t * t / (2 * (f_try - f - t * gd)), 0.1 * t, 0.5 * t)
  out = jax.jit(lambda *a: _native.lbfgs_step(tuple(a[:9]), a[9], a[10], maxiter=100, tol=1e-8,
                                              max_backtracks=3))(*state, state[0], np.float32(f_try), state[1])
  out = [np.asarray(a) for a in out]
  for i in (0, 1, 2, 3, 4, 5):
    np.testing.assert_array_equal(out[i], state[i])
  np.testing.assert_allclose(out[6], [f, want_t, gd, 0.7], rtol=1e-6)
  np.testing.assert_array_equal(out[7], [3, 3, 1, 10, 0, 2, 0])  # the third rejection in a row: stop
  np.testing.assert_allclose(out[8], state[0] + want_t * state[2], rtol=1e-6, atol=1e-6)


def _rosenbrock(x):
  return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def test_native_lbfgs_minimises_like_the_jnp_loop():
  """Both loops on a quadratic (minimum ``A⁻¹ b``, same iterates up to rounding) and on the Rosenbrock function
  (minimum at 1): same minimiser, comparable work; the dispatch picks the kernel for float32 on the CPU."""
  from scl import _solvers
  rng = np.random.default_rng(1)
  a = rng.normal(size=(40, 40))
  hess = jnp.asarray(a @ a.T / 40 + 0.1 * np.eye(40), jnp.float32)
  b = jnp.asarray(rng.normal(size=40), jnp.float32)
  quad = lambda x: (0.5 * x @ (hess @ x) - b @ x, hess @ x - b)
  kw = dict(maxiter=200, tol=1e-5, history_size=10)
  x0 = jnp.zeros(40, jnp.float32)
  native = jax.jit(lambda x0: _solvers._lbfgs_armijo_native(quad, x0, **kw))(x0)
  plain = jax.jit(lambda x0: _solvers._lbfgs_armijo_jnp(quad, x0, **kw))(x0)
  want = np.linalg.solve(np.asarray(hess, np.float64), np.asarray(b, np.float64))
  np.testing.assert_allclose(native[0], want, rtol=1e-3, atol=1e-4)
  assert abs(int(native[1]) - int(plain[1])) <= 2 and float(native[2]) <= 1e-5
  rosen = jax.value_and_grad(_rosenbrock)
  x0 = jnp.asarray([-1.2, 1.0, -0.5, 0.8], jnp.float32)
  kw = dict(maxiter=500, tol=1e-4, history_size=10)
  native = jax.jit(lambda x0: _solvers._lbfgs_armijo_native(rosen, x0, **kw))(x0)
  plain = jax.jit(lambda x0: _solvers._lbfgs_armijo_jnp(rosen, x0, **kw))(x0)
  np.testing.assert_allclose(native[0], np.ones(4), atol=2e-3)
  np.testing.assert_allclose(plain[0], np.ones(4), atol=2e-3)
  assert int(native[3]) <= 1.5 * int(plain[3]) + 10
  assert "scl_lbfgs_step" in jax.jit(lambda x0: _solvers._lbfgs_armijo(rosen, x0, **kw)).lower(x0).as_text()
  with jax.enable_x64():
    x64 = jnp.asarray(x0, jnp.float64)
    assert "scl_lbfgs_step" not in jax.jit(lambda x: _solvers._lbfgs_armijo(rosen, x, **kw)).lower(x64).as_text()


def test_native_lbfgs_under_vmap_and_at_its_limits():
  """``vmap`` steps every member in one call (each as alone); ``maxiter=0`` evaluates nothing; an objective that is
  NaN away from its start stops after ``max_backtracks`` rejected trials, as the jnp loop does."""
  from scl import _solvers
  rosen = jax.value_and_grad(_rosenbrock)
  kw = dict(maxiter=300, tol=1e-4, history_size=6)
  starts = jnp.asarray([[-1.2, 1.0, 0.3], [0.5, -0.5, 2.0], [1.0, 1.0, 1.0]], jnp.float32)
  batched = jax.jit(jax.vmap(lambda x0: _solvers._lbfgs_armijo_native(rosen, x0, **kw)))(starts)
  for i in range(3):
    alone = jax.jit(lambda x0: _solvers._lbfgs_armijo_native(rosen, x0, **kw))(starts[i])
    np.testing.assert_allclose(batched[0][i], alone[0], rtol=1e-5, atol=1e-6)
    assert int(batched[3][i]) == int(alone[3])
  none = _solvers._lbfgs_armijo_native(rosen, starts[0], maxiter=0, tol=1e-4, history_size=6)
  np.testing.assert_array_equal(none[0], starts[0])
  assert int(none[3]) == 0
  x0 = starts[0]
  cliff = lambda x: jax.value_and_grad(lambda y: jnp.where(jnp.all(y == x0), 1.0, jnp.nan) + jnp.sum(y))(x)
  for loop in (_solvers._lbfgs_armijo_native, _solvers._lbfgs_armijo_jnp):
    x, k, _, evals = jax.jit(lambda x0: loop(cliff, x0, **kw, max_backtracks=5))(x0)
    np.testing.assert_array_equal(x, x0)
    assert int(k) == 0 and int(evals) == 6  # the start, then 5 rejected trials


def _flow_problem(batch, width, depth, d, seed):
  """A :class:`~scl.models.flow.VelocityMLP` with perturbed parameters (biases non-zero) and a minibatch."""
  net = flow.VelocityMLP(width=width, depth=depth, out_dim=d)
  k = jax.random.split(jax.random.key(seed), 5)
  params = net.init(k[0], jnp.zeros((1, d)), jnp.zeros((1,)))
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(k[1], len(leaves))
  params = jax.tree_util.tree_unflatten(tree, [a + 0.3 * jax.random.normal(e, a.shape) for a, e in zip(leaves, keys)])
  z1 = 2.0 * jax.random.normal(k[2], (batch, d))
  z0 = jax.random.normal(k[3], (batch, d))
  t = jax.random.uniform(k[4], (batch,))
  return net, params, z1, z0, t


def _flow_float64_grad(net, params, z1, z0, t):
  """``jax.grad`` in float64 of the flow's training loss through the flax module (shares no code with the kernel)."""
  with jax.enable_x64():
    p64, z1, z0, t = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), (params, z1, z0, t))

    def loss(p):
      zt = (1.0 - t)[:, None] * z0 + t[:, None] * z1
      v = net.apply(p, zt, t)
      return jnp.mean(jnp.sum(jnp.square(v - (z1 - z0)), axis=-1))

    return jax.tree_util.tree_map(np.asarray, jax.grad(loss)(p64))


@pytest.mark.parametrize("batch,width,depth,d", [(1, 16, 1, 1), (37, 32, 2, 3), (1000, 128, 3, 2), (161, 48, 1, 4),
                                                 (300, 64, 4, 2)])
def test_flow_gradient_matches_float64_autodiff(batch, width, depth, d):
  """Sizes cross the kernel's 6-row tiles, 32-row chunks and 128-row groups; every parameter is compared."""
  assert _native.supports_flow(width, d, depth)
  net, params, z1, z0, t = _flow_problem(batch, width, depth, d, seed=batch + width)
  got = jax.jit(functools.partial(flow._native_grad, depth=depth))(params, z1, z0, t)
  want = _flow_float64_grad(net, params, z1, z0, t)
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  for path, g in jax.tree_util.tree_leaves_with_path(got):
    w = want
    for key in path:
      w = w[key.key]
    np.testing.assert_allclose(np.asarray(g), w, rtol=1e-4, atol=1e-5 * max(1.0, float(np.max(np.abs(w)))),
                               err_msg=jax.tree_util.keystr(path))


def _flow_fit_text(**kwargs):
  model = flow.make_flow(train_steps=4, init_steps=4, batch_size=64, **kwargs)
  x = jax.random.normal(jax.random.key(0), (200,) + kwargs.get("event_shape", (2,)))
  w = jnp.ones((200,)) / 200
  return jax.jit(model.init).lower(jax.random.key(1), x, w).as_text()


def test_the_flow_fit_uses_its_kernel_exactly_where_it_applies():
  assert "scl_flow_mlp_grad" in _flow_fit_text(width=32, depth=2)
  assert "scl_flow_mlp_grad" in _flow_fit_text(width=32, depth=2, event_shape=(2, 2))  # d = 4, flattened
  assert "scl_flow_mlp_grad" not in _flow_fit_text(width=24, depth=2)  # width not a multiple of 16
  assert "scl_flow_mlp_grad" not in _flow_fit_text(width=32, depth=2, event_shape=(5,))  # more than 4 outputs
  assert "scl_flow_mlp_grad" not in _flow_fit_text(width=32, depth=0)  # no residual block


def _flow_runs(monkeypatch, native: bool):
  """Init, a fit vmapped over two learning rates and a draw of 300 samples, compiled afresh (a new model: jit
  reuses the trace of a function it has seen) with the native kernels on or off; and the compiled text."""
  model = flow.make_flow(train_steps=60, init_steps=20, width=32, depth=2, batch_size=100, sample_steps=8)
  x = jax.random.normal(jax.random.key(0), (500, 2)) * jnp.array([2.0, 0.5])
  w = jnp.ones((500,)) / 500
  hyper = Hyper.defaults().arrays()
  hypers = jax.tree_util.tree_map(lambda a: jnp.stack([a, a]), hyper).replace(lr=jnp.array([1e-3, 3e-3]))

  def runs():
    params = model.init(jax.random.key(1), x, w)
    fitted = jax.vmap(lambda h: model.fit(params, jax.random.key(2), x, w, h))(hypers)
    return fitted, model.sample(params, jax.random.key(3), 300)

  with monkeypatch.context() as m:
    if not native:
      m.setattr(_native, "supports_flow", lambda *a: False)
    compiled = jax.jit(runs).lower().compile()
  return compiled(), compiled.as_text()


def test_the_flow_on_the_kernels_follows_the_jnp_path(monkeypatch):
  """Whole fits (warm-up, 60 Adam steps, vmapped over two learning rates) and draws on either path end within
  float rounding of each other, so the kernels' gradient and velocity are wired into the right parameters."""
  native, native_text = _flow_runs(monkeypatch, True)
  plain, plain_text = _flow_runs(monkeypatch, False)
  assert "scl_flow_mlp_grad" in native_text and "scl_flow_mlp_forward" in native_text
  assert "scl_flow_mlp" not in plain_text
  for a, b in zip(jax.tree_util.tree_leaves(native), jax.tree_util.tree_leaves(plain)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("n,width,depth,d", [(1, 16, 1, 1), (37, 32, 2, 3), (1000, 128, 3, 2), (300, 48, 4, 4)])
def test_flow_velocity_matches_float64_flax(n, width, depth, d):
  """The fused velocity at one time t against the flax module in float64; sizes cross the 6-row tiles, 32-row
  chunks and 256-row units."""
  net, params, z, _, _ = _flow_problem(n, width, depth, d, seed=n + 3 * width)
  for t in (0.0, 0.37, 1.0):
    got = jax.jit(functools.partial(flow._native_velocity, depth=depth))(params, z, jnp.float32(t))
    with jax.enable_x64():
      p64, z64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), (params, z))
      want = np.asarray(net.apply(p64, z64, np.float64(t)))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5 * max(1.0, float(np.max(np.abs(want)))))


def test_flow_gradient_is_the_same_on_every_call():
  """The rows' partial gradients are summed in a fixed order whichever thread runs which part, so repeated calls
  (parts picked up by the pool's threads in varying order) agree bit for bit."""
  net, params, z1, z0, t = _flow_problem(1000, 64, 2, 2, seed=7)
  grad = jax.jit(functools.partial(flow._native_grad, depth=2))
  first = grad(params, z1, z0, t)
  for _ in range(20):
    again = grad(params, z1, z0, t)
    for a, b in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(again)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
