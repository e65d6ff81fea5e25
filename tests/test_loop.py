"""The scanned curated loop end to end, on small versions of the papers' Gaussian-8 setting."""

import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scl
from scl import exact
from scl import files
from scl import loop

INF = float("inf")
SMALL = dict(pool_size=4000, n_keep=2000, n_real=2000, n_eval=2000, iterations=4, K_max=8)
FLOW_SMALL = dict(SMALL, width=64, depth=2, train_steps=150, init_steps=1500, batch_size=256,
                  sample_steps=16, lr=2e-3, iterations=3)
# The clipped distance reward on the ring: modes 0, 1, 2, 6, 7 (within r_min = 3 of x* = (2, 0)) get 0.
REWARDED = [0, 1, 2, 6, 7]
UNREWARDED = [3, 4, 5]


def small(model, **kw):
  base = FLOW_SMALL if model == "flow" else SMALL
  return scl.configs.gaussian8(model=model, **{**base, **kw})


@pytest.mark.parametrize("model", ["categorical", "gmm", "flow"])
def test_benign_loop_raises_reward_and_moves_mass_to_rewarded_modes(model):
  res = scl.run(small(model, K=4), seed=0)
  er = res.metrics["expected_reward"]
  assert er.shape == (res.config.iterations + 1,)
  # p_0 fits the ring: 3 of 8 modes are penalised (-10, -7, -7), so E[r] is about -3.
  assert -4.0 < er[0] < -2.0
  # Monotone up to Monte Carlo noise of the 2,000-sample estimate (sd of the mean < 0.1).
  assert np.all(np.diff(er) > -0.15), er
  assert er[-1] > -0.5, er
  props = res.metrics["mode_props"]
  assert props[-1, UNREWARDED].sum() < 0.05
  # Of the mass that sits on a mode, the rewarded modes hold 5/8 at the start and nearly all at the end.
  # (The reward is 0 everywhere within r_min of x*, so a neural model may also blur between rewarded
  # modes without penalty: we measure where the on-mode mass is, not how much is on modes.)
  share = props[:, REWARDED].sum(1) / props.sum(1)
  assert abs(share[0] - 5 / 8) < 0.05
  assert share[-1] > 0.95


def test_real_data_keeps_categorical_loop_within_theorem_2_4():
  # Ferbach Thm 2.4: lam < 1/(K-1) implies KL(p_t || p_data) <= -log(1 - lam (K - 1)) (population law).
  # The Monte Carlo loop adds sampling noise of order (#atoms / n_keep) to the KL, well below the gap.
  K, lam = 2, 0.5
  res = scl.run(small("categorical", K=K, lam=lam, iterations=6, n_atoms=256), seed=0)
  kl = res.metrics["kl_to_data"]
  assert np.all(kl <= -math.log(1 - lam * (K - 1)))
  synthetic = scl.run(small("categorical", K=K, lam=INF, iterations=6, n_atoms=256), seed=0)
  assert synthetic.metrics["kl_to_data"][-1] > 2 * kl.max()


def test_real_data_keeps_gmm_close_to_data():
  mixed = scl.run(small("gmm", K=4, lam=0.25), seed=0)
  synthetic = scl.run(small("gmm", K=4, lam=INF), seed=0)
  ed_mixed = mixed.metrics["energy_distance"]
  ed_synth = synthetic.metrics["energy_distance"]
  # λ = 0.25 keeps 80% real data in every refit: the distance stays an order below the synthetic loop's.
  assert ed_mixed.max() < 0.1, ed_mixed
  assert ed_synth[-1] > 0.3 and ed_synth[-1] > 5 * ed_mixed.max()
  # The mixture with real data still raises the reward (Thm 2.3), just less.
  er = mixed.metrics["expected_reward"]
  assert er[-1] > er[0] + 0.2
  assert er[-1] < synthetic.metrics["expected_reward"][-1]


def test_same_seed_same_result_other_seed_differs():
  cfg = small("gmm", iterations=2)
  a, b, c = scl.run(cfg, 3), scl.run(cfg, 3), scl.run(cfg, 4)
  np.testing.assert_array_equal(a.metrics["expected_reward"], b.metrics["expected_reward"])
  np.testing.assert_array_equal(a.samples, b.samples)
  assert not np.array_equal(a.samples, c.samples)


def test_sweeping_K_lam_seed_traces_once():
  cfg = small("categorical", iterations=2)
  run_fn, data = loop.make_run_fn(cfg)
  fn = jax.jit(chex.assert_max_traces(run_fn, n=1))
  for K in (1, 2, 8):
    for lam in (0.0, 1.0, INF):
      for seed in (0, 1):
        fn(cfg.replace(K=K, lam=lam).hyper.arrays(), jax.random.PRNGKey(seed), data)
  # scl.run itself reuses one compiled program across dynamic values.
  cached, _ = loop._jitted_run(cfg.static())
  for K, lam, phi in ((1, INF, 0.0), (4, 0.5, 0.3), (8, 2.0, 1.0)):
    scl.run(cfg.replace(K=K, lam=lam, phi=phi), seed=K)
  assert cached._cache_size() == 1


def test_K1_and_lam0_leave_categorical_model_at_data():
  # K = 1 keeps p_t in law; lam = 0 retrains on p_data alone: both stay at p_data up to sampling noise.
  for kw in (dict(K=1, lam=INF), dict(K=8, lam=0.0)):
    res = scl.run(small("categorical", n_atoms=64, n_keep=4000, **kw), seed=1)
    er = res.metrics["expected_reward"]
    if kw["lam"] == 0.0:
      np.testing.assert_allclose(er, er[0], atol=1e-5)
    else:  # 64 atoms, 4,000 kept: the KL of a multinomial refit is ~ 63 / (2 * 4000) per step.
      assert np.all(res.metrics["kl_to_data"] < 0.1)


def test_curation_variants_run_and_raise_reward():
  for curation in ("topk", "luce_pool"):
    res = scl.run(small("categorical", curation=curation, beta=0.5, iterations=3), seed=0)
    er = res.metrics["expected_reward"]
    assert er[-1] > er[0] + 1.0, (curation, er)


def test_adversarial_users_lower_the_reward():
  # φ = 1 with r~ = -r: every curator prefers the penalised modes.
  res = scl.run(small("categorical", K=4, phi=1.0, iterations=3), seed=0)
  er = res.metrics["expected_reward"]
  assert np.all(np.diff(er) < 0), er


def test_two_moons_and_points_datasets():
  res = scl.run(scl.configs.two_moons(model="gmm", **{**SMALL, "iterations": 2}), seed=0)
  er = res.metrics["expected_reward"]
  assert er[-1] > er[0]
  pts = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [5.0, 0.0]])
  cfg = scl.configs.points(pts, reward="custom", reward_fn=lambda x: x[:, 0], K=4, n_keep=20_000,
                           pool_size=40_000, iterations=1)
  res = scl.run(cfg, seed=0)
  # One K = 4 choice step from uniform on rewards (0, 1, 2, 5), against the exact engine: the Monte Carlo
  # error of 20,000 kept draws from a 40,000-sample pool is about 0.015 (std of r ≈ 1.9); 0.08 is > 5 sigma.
  r = np.array([0.0, 1.0, 2.0, 5.0])
  exact_er = float(np.sum(np.asarray(exact.curate(np.full(4, 0.25), r, 4)) * r))
  assert res.metrics["expected_reward"][0] == pytest.approx(2.0, abs=1e-5)
  assert res.metrics["expected_reward"][1] == pytest.approx(exact_er, abs=0.08)


@pytest.mark.parametrize("overrides,field", [
    (dict(K=0), "K"), (dict(K=2.5), "K"), (dict(K=32), "K"), (dict(lam=-1.0), "lam"),
    (dict(lam=float("nan")), "lam"), (dict(phi=1.5), "phi"), (dict(kappa=-0.1), "kappa"),
    (dict(beta=0.0), "beta"), (dict(model="vae"), "model"), (dict(dataset="mnist"), "dataset"),
    (dict(attack="poison"), "attack"), (dict(iterations=-1), "iterations"), (dict(pool_size=0), "pool_size"),
    (dict(K="3"), "K"), (dict(K=True), "K"), (dict(alpha=1.5, attack_weighting="code"), "alpha"),
    (dict(l2=0.0), "l2"),  # the reward fit's implicit derivative solved a singular system (|dJ/do| 1,000x)
])
def test_invalid_config_names_field_and_value(overrides, field):
  with pytest.raises(ValueError, match=f"{field}="):
    scl.configs.gaussian8(**overrides)


def test_unknown_override_and_bad_data_fail_before_compute():
  with pytest.raises(ValueError, match="unknown config field"):
    scl.configs.gaussian8(temperature=2.0)
  with pytest.raises(ValueError, match="points"):
    scl.configs.points(np.zeros((2, 2, 2)))
  with pytest.raises(ValueError, match="point_weights"):
    scl.configs.points(np.zeros((3, 2)), weights=[1.0, -1.0, 1.0])
  with pytest.raises(ValueError, match=r"points: row 2 is \[1.0, nan\]"):
    scl.configs.points(np.array([[0.0, 0.0], [1.0, 0.0], [1.0, np.nan]]))
  with pytest.raises(ValueError, match=r"n, d >= 1, got shape \(3, 0\)"):
    scl.configs.points(np.zeros((3, 0)))
  from scl import data as data_lib
  _, w = data_lib.validate_points(np.eye(2), [1e308, 1e308])  # summed directly: inf, and p_data all 0
  np.testing.assert_array_equal(w, [0.5, 0.5])
  nan_reward = scl.configs.points(np.eye(3), reward="custom", reward_fn=lambda x: jnp.log(x[:, 0] - 0.5))
  with pytest.raises(ValueError, match="not finite"):
    scl.run(nan_reward)
  bad_shape = scl.configs.points(np.eye(3), reward="custom", reward_fn=lambda x: x)
  with pytest.raises(ValueError, match=r"reward_fn.*\[n\]"):
    scl.run(bad_shape)


def test_reward_is_checked_on_every_row_of_a_large_data_set_in_bounded_chunks():
  """The build checks the reward on all 3,000 support points, at most CHECK_ROWS rows per call (a classifier
  over CIFAR's 50,000 training images in one call would need tens of GB), and names the row that is NaN."""
  from scl import task as task_lib
  pts = np.random.default_rng(0).normal(size=(3000, 2)).astype(np.float32)
  pts[2345] = [9.0, 9.0]
  seen = []

  def reward(x):
    seen.append(x.shape[0])
    return jnp.where(x[:, 0] > 8.0, jnp.nan, x[:, 1])

  with pytest.raises(ValueError, match=r"not finite on the data \(rows \[2345\]"):
    task_lib.build(scl.configs.points(pts, reward="custom", reward_fn=reward))
  assert seen and max(seen) <= task_lib.CHECK_ROWS
  pts[2345] = [0.0, 0.0]
  task_lib.build(scl.configs.points(pts, reward="custom", reward_fn=lambda x: x[:, 1]))


def test_checkpointed_run_resumes_and_matches_uninterrupted(tmp_path, monkeypatch):
  cfg = small("gmm", iterations=4)
  whole = scl.run(cfg, seed=5)
  clean = scl.run(cfg, seed=5, workdir=str(tmp_path / "clean"), progress=False)
  np.testing.assert_allclose(clean.metrics["expected_reward"], whole.metrics["expected_reward"],
                             rtol=1e-5, atol=1e-5)

  # Kill the run right after its second checkpoint is written, then rerun with the same workdir.
  real_write, calls = files.write_bytes, []

  def dying_write(path, data):
    real_write(path, data)
    calls.append(path)
    if len(calls) == 2:
      raise KeyboardInterrupt("simulated stop")

  monkeypatch.setattr(files, "write_bytes", dying_write)
  with pytest.raises(KeyboardInterrupt):
    scl.run(cfg, seed=5, workdir=str(tmp_path / "stopped"), progress=False)
  monkeypatch.setattr(files, "write_bytes", real_write)
  # Resuming does not train p_0 again: its init may be traced (for the params' structure), never run.
  init, *pieces = loop.jitted_pieces(cfg.static())

  def traced_only(*args):
    if not any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(args)):
      raise AssertionError("the resumed run trained p_0 again")
    return init(*args)

  monkeypatch.setattr(loop, "jitted_pieces", lambda static_cfg: (traced_only, *pieces))
  resumed = scl.run(cfg, seed=5, workdir=str(tmp_path / "stopped"), progress=False)
  monkeypatch.undo()
  for name in clean.metrics:
    np.testing.assert_array_equal(resumed.metrics[name], clean.metrics[name])
  np.testing.assert_array_equal(resumed.samples, clean.samples)

  with pytest.raises(ValueError, match="different run"):
    scl.run(cfg.replace(K=4), seed=5, workdir=str(tmp_path / "stopped"), progress=False)


def test_result_files_get_the_permissions_open_gives(tmp_path):
  with open(tmp_path / "plain.txt", "w") as f:  # what the umask makes of a plain open()
    f.write("x")
  files.write_json(str(tmp_path / "atomic.json"), {"a": 1})
  assert os.stat(tmp_path / "atomic.json").st_mode & 0o777 == os.stat(tmp_path / "plain.txt").st_mode & 0o777
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("proc", [True, False])
def test_the_umask_is_read_without_being_widened(monkeypatch, proc):
  """``files.current_umask`` returns the umask set, whether read from ``/proc/self/status`` or (where that is
  missing) by setting and restoring it, and leaves it as it was."""
  if not proc:
    real_open = open

    def no_proc(path, *args, **kwargs):
      if str(path).startswith("/proc/"):
        raise FileNotFoundError(path)
      return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_proc)
  before = os.umask(0o027)
  try:
    assert files.current_umask() == 0o027
    assert os.umask(0o027) == 0o027  # unchanged by the read
  finally:
    os.umask(before)


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True])
def test_a_bad_seed_fails_before_compute(seed, monkeypatch):
  """Seeds are integers in [0, 2**32): without 64-bit mode, PRNGKey(2**32) would be PRNGKey(0) again."""
  monkeypatch.setattr(loop, "_jitted_run", lambda *a, **k: pytest.fail("compiled before the check"))
  cfg = scl.configs.points(np.array([[0.0, 0.0], [1.0, 0.0]]), iterations=1, pool_size=100, n_keep=50)
  with pytest.raises(ValueError, match=rf"invalid seed={seed!r}: must be an integer in \[0, 2\*\*32\)"):
    scl.run(cfg, seed=seed)
  with pytest.raises(ValueError, match=r"data_seed=4294967296: must be an integer in \[0, 2\*\*32\)"):
    scl.configs.points(np.array([[0.0, 0.0]]), data_seed=2**32).validate()


def test_an_x_star_of_another_dimension_or_not_finite_fails_before_compute():
  with pytest.raises(ValueError, match=r"x_star=\(2.0,\): data set 'gaussian8' has points of dimension 2"):
    scl.run(scl.configs.gaussian8(x_star=(2.0,), iterations=1, pool_size=100, n_keep=50))
  with pytest.raises(ValueError, match=r"x_star=\(nan, 0.0\): must be a point"):
    scl.configs.gaussian8(x_star=(float("nan"), 0.0))


def test_json_keeps_infinity_apart_from_nan(tmp_path):
  import json
  files.write_json(str(tmp_path / "x.json"), {"lam": [0.25, float("inf")], "low": -np.inf, "missing": np.nan,
                                               "grid": np.array([1.0, np.inf], np.float32)})
  text = (tmp_path / "x.json").read_text()
  assert "Infinity" not in text and "NaN" not in text   # standard JSON
  back = json.loads(text)
  assert back == {"lam": [0.25, "inf"], "low": "-inf", "missing": None, "grid": [1.0, "inf"]}
  assert [float(v) for v in back["lam"]] == [0.25, float("inf")]


def test_a_pool_filter_that_would_keep_nothing_fails_before_compute(monkeypatch):
  message = r"beta=0.001: curation='topk' keeps floor\(β · pool_size\) samples, none of pool_size=500"
  with pytest.raises(ValueError, match=message):
    scl.run(scl.configs.gaussian8(curation="topk", beta=0.001, pool_size=500, n_keep=100, iterations=1))
  cfg = scl.configs.gaussian8(curation="topk", pool_size=500, n_keep=100, iterations=1)
  with pytest.raises(ValueError, match=r"beta=\[0.5, 0.001\]: curation='topk'"):
    scl.sweep(cfg, beta=[0.5, 0.001])
  scl.configs.gaussian8(curation="topk", beta=0.002, pool_size=500, n_keep=100).validate()  # keeps 1


def test_a_ring_of_one_mode_counts_its_samples_on_the_mode():
  cfg = scl.configs.gaussian8(n_modes=1, iterations=0, pool_size=1000, n_keep=500, n_eval=1000)
  props = scl.run(cfg).metrics["mode_props"]
  assert float(np.asarray(props)[0, 0]) > 0.99, props   # 10 std around the one mode: all but ~0 samples


def test_k_max_one_runs_and_vector_hyper_parameters_are_refused():
  """scl.run built its program from the config's static part validated with placeholder traced values (K = 2),
  so a K = 1 baseline with K_max = 1 was refused ("K=2 exceeds K_max=1"). And a vector λ ran, broadcast per
  pool sample (or across a sweep's grid points), instead of being refused."""
  cfg = small("categorical", K=1, K_max=1, iterations=1, n_atoms=64)
  res = scl.run(cfg, seed=0)
  # K = 1 keeps p_t: with λ = ∞ the model is refitted to a sample of itself, E[r] moves by sampling noise only
  assert abs(res.metrics["expected_reward"][1] - res.metrics["expected_reward"][0]) < 0.4  # about 4 s.e.
  scl.sweep(cfg, seeds=[0], lam=[1.0, INF])
  for bad in (dict(lam=np.array([0.0, 1.0])), dict(K=(2, 3)), dict(beta=(0.5, 0.5))):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"invalid config: {name}=.*must be a single number"):
      scl.run(small("categorical", n_atoms=64).replace(**bad), seed=0)
  with pytest.raises(ValueError, match="invalid config: lam=.*must be a single number"):
    scl.sweep(small("categorical", n_atoms=64).replace(lam=(0.0, INF)), K=[2, 4])
