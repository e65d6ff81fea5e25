"""Components registered from outside scl (a model family, a data set, an attack) run through scl.run and
scl.sweep unchanged; the run's arrays are arguments of the compiled program, not constants baked into it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scl
from scl import loop


# -- A model family: one full-covariance Gaussian, fitted by weighted maximum likelihood.

def _gaussian_fit(x, w):
  w = w / jnp.sum(w)
  mean = jnp.sum(w[:, None] * x, 0)
  centred = x - mean
  cov = (w[:, None] * centred).T @ centred + 1e-6 * jnp.eye(x.shape[1])
  return {"mean": mean, "chol": jnp.linalg.cholesky(cov)}


def build_gaussian(cfg, event_shape, n_atoms):
  del cfg, n_atoms
  (d,) = event_shape
  return scl.models.Model(
      name="gaussian",
      init=lambda key, x, w: _gaussian_fit(x, w),
      fit=lambda params, key, x, w, hyper: _gaussian_fit(x, w),
      sample=lambda params, key, n: params["mean"] + jax.random.normal(key, (n, d)) @ params["chol"].T)


# -- A data set: a noisy segment from (-1, 0) to (1, 0); the default x* is its right end.

def build_segment(cfg):
  def sample(key, n):
    k_u, k_noise = jax.random.split(key)
    u = jax.random.uniform(k_u, (n,), minval=-1.0, maxval=1.0)
    return jnp.stack([u, jnp.zeros_like(u)], -1) + 0.01 * jax.random.normal(k_noise, (n, 2))
  return scl.task.Dataset(sample=sample, anchor=(1.0, 0.0))


# -- An attack: flip the first floor(κ n) pairs.

def flip_first(key, x, z, o, view, hyper, cfg):
  del key, x, z, view, cfg
  return scl.attacks.flip_top(o, -jnp.arange(o.shape[0], dtype=jnp.float32), hyper.kappa)


@pytest.fixture(scope="module", autouse=True)
def registered():
  scl.register("model", "test_gaussian", build_gaussian)
  scl.register("dataset", "test_segment", build_segment)
  scl.register("attack", "test_flip_first", flip_first)
  yield


def _cfg(**overrides):
  base = dict(dataset="test_segment", model="test_gaussian", reward="clipped_distance", gamma=2.0, r_min=0.5,
              pool_size=2000, n_keep=1000, n_real=1000, n_eval=1000, iterations=3, K=4)
  return scl.Config().replace(**{**base, **overrides}).validate()


def test_registered_model_and_data_set_run_and_sweep():
  cfg = _cfg()
  res = scl.run(cfg, seed=0)
  er = res.metrics["expected_reward"]
  assert er.shape == (4,)
  # The reward is -2 max(|x - (1, 0)| - 0.5, 0): curation moves the Gaussian towards x* = (1, 0).
  assert er[-1] > er[0] + 0.2, er
  # p_0 is the weighted maximum-likelihood Gaussian of the real data: its mean is the data's mean (≈ 0).
  assert abs(float(res.params["mean"][1])) < 0.05
  grid = scl.sweep(cfg, K=[1, 4], seeds=[0])
  np.testing.assert_allclose(grid.sel(K=4, seed=0).metrics["expected_reward"], er, rtol=1e-5, atol=1e-5)
  # K = 1 keeps the law of p_t: the expected reward stays near its start.
  assert abs(grid.sel(K=1, seed=0).metrics["expected_reward"][-1] - er[0]) < 0.1


def test_registered_attack_flips_exactly_its_budget():
  cfg = _cfg(attack="test_flip_first", kappa=0.25, n_pairs=200, iterations=1)
  res = scl.run(cfg, seed=1)
  assert res.metrics["n_flips"][0] == 50
  grid = scl.sweep(cfg, kappa=[0.0, 0.25], seeds=[1])
  np.testing.assert_array_equal(grid.metrics["n_flips"][:, 0, 0], [0, 50])


def test_unknown_names_list_the_registered_choices():
  for field in ("dataset", "model", "reward", "curation", "attack", "labels"):
    with pytest.raises(ValueError, match=f"invalid config: {field}='nope'.*choose one of"):
      scl.configs.gaussian8(**{field: "nope"})
  with pytest.raises(ValueError, match="already registered"):
    scl.register("model", "gmm", build_gaussian)
  with pytest.raises(ValueError, match="unknown component kind"):
    scl.register("defense", "x", build_gaussian)


def test_traced_hyper_parameters_come_from_one_table():
  assert scl.Config.keywords()[-len(scl.hyper.TRACED):] == scl.hyper.traced_names()
  assert tuple(scl.Hyper.defaults().as_dict()) == scl.hyper.traced_names()
  for t in scl.hyper.TRACED:
    with pytest.raises(ValueError, match=f"invalid config: {t.name}="):
      scl.configs.gaussian8(**{t.name: float("nan")})


def test_data_are_arguments_not_constants():
  """The lowered program of a run hardly grows with the real data set (1,000 vs 100,000 points)."""
  sizes = {}
  for n_real in (1_000, 100_000):
    cfg = scl.configs.gaussian8(n_real=n_real, pool_size=1000, n_keep=500, n_eval=500, iterations=1, em_steps=2)
    run_fn, data = loop.make_run_fn(cfg)
    text = jax.jit(run_fn).lower(cfg.hyper.arrays(), jax.random.PRNGKey(0), data).as_text()
    sizes[n_real] = len(text)
  assert sizes[100_000] < 1.1 * sizes[1_000], sizes


def test_a_registered_data_set_has_a_builder_for_the_binaries():
  """``--config.dataset=<registered name>`` in a binary: ``scl.configs.builder`` gives Config defaults with
  that data set and the overrides, validated (the same Config as ``scl.Config().replace(...)``)."""
  overrides = dict(model="test_gaussian", gamma=2.0, r_min=0.5, K=4)
  cfg = scl.configs.builder("test_segment")(**overrides)
  assert cfg == scl.Config().replace(dataset="test_segment", **overrides).validate()
  with pytest.raises(ValueError, match="test_segment"):   # the error lists registered data sets too
    scl.configs.builder("no_such_set")


def _keep_first(key, r, r_tilde, hyper, cfg):
  return jnp.zeros(r.shape).at[0].set(1.0)


def _keep_best(key, r, r_tilde, hyper, cfg):
  return jnp.zeros(r.shape).at[jnp.argmax(r)].set(1.0)


def test_replacing_an_entry_drops_its_compiled_programs_and_its_saved_results(tmp_path):
  from scl import registry
  names = ("scl_test_replaced", "scl_test_best")
  try:
    scl.register("curation", names[0], _keep_first)
    scl.register("curation", names[1], _keep_best)
    make = lambda name: scl.configs.gaussian8(model="categorical", n_atoms=64, pool_size=500, n_keep=100,
                                              n_eval=200, iterations=1, curation=name)
    first = scl.run(make(names[0]), seed=0).metrics["expected_reward"]
    best = scl.run(make(names[1]), seed=0).metrics["expected_reward"]   # the same rule under a name never replaced
    assert not np.allclose(first, best)
    saved = scl.run(make(names[0]), seed=0, workdir=str(tmp_path / "w"), progress=False)
    np.testing.assert_array_equal(saved.metrics["expected_reward"], first)

    scl.register("curation", names[0], _keep_best, replace=True)
    np.testing.assert_array_equal(scl.run(make(names[0]), seed=0).metrics["expected_reward"], best)
    grid = scl.sweep(make(names[0]), K=[4], seeds=[0])
    np.testing.assert_allclose(grid.metrics["expected_reward"][0, 0], best, rtol=1e-6)
    with pytest.raises(ValueError, match=r"different run \(fields \['curation:entry'\] differ"):
      scl.run(make(names[0]), seed=0, workdir=str(tmp_path / "w"), progress=False)
  finally:
    for name in names:
      registry.CURATIONS._entries.pop(name, None)
      registry.CURATIONS._meta.pop(name, None)
