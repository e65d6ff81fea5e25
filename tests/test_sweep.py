"""Tests of scl.sweeps: grid points equal single runs, sharding and chunking change nothing, one trace.

The multi-device checks run in a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
(the flag must be set before JAX starts), so the rest of the suite keeps one CPU device.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy import stats

import scl
from scl import exact
from scl import loop
from scl import sweeps

INF = float("inf")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small(model, **overrides):
  extra = dict(n_atoms=64) if model == "categorical" else dict(em_steps=3)
  base = dict(model=model, pool_size=1000, n_keep=500, n_real=500, n_eval=500, iterations=1, K_max=4)
  return scl.configs.gaussian8(**{**base, **extra, **overrides})


def assert_same_metrics(sweep_metrics, run_metrics, rtol=1e-5, atol=1e-5):
  assert set(run_metrics) <= set(sweep_metrics), set(run_metrics) - set(sweep_metrics)
  for name, value in run_metrics.items():
    np.testing.assert_allclose(sweep_metrics[name], value, rtol=rtol, atol=atol, err_msg=name)


# --------------------------------------------------------------------------------------------------------
# Eight devices, in a subprocess: categorical model (every point vs scl.run), sharded == unsharded,
# chunked == unchunked, traced once for the grid and not again when only the values change.

_MULTI_DEVICE = textwrap.dedent("""
  import jax, numpy as np, scl
  from scl import loop, sweeps
  assert jax.device_count() == 8, jax.devices()
  traces = []
  make_run_fn = loop.make_run_fn
  def counting_make_run_fn(cfg):
    fn, data = make_run_fn(cfg)
    def counted(*args):
      traces.append(1)
      return fn(*args)
    return counted, data
  loop.make_run_fn = counting_make_run_fn

  cfg = scl.configs.gaussian8(model="categorical", n_atoms=64, pool_size=1000, n_keep=500, n_real=500,
                              n_eval=500, iterations=2, K_max=4, data_seed=11)
  grid = dict(K=[1, 2, 4], lam=[1.0, float("inf")], phi=0.0)
  a = sweeps.sweep(cfg, seeds=[0, 7], **grid)                 # 12 points over 8 devices: padded to 16
  assert a.info["devices"] == 8 and a.info["chunk"] == 16 and a.info["chunks"] == 1, a.info
  assert len(traces) == 1, f"traced {len(traces)} times for one grid"
  b = sweeps.sweep(cfg, K=[3, 4, 2], lam=[0.5, 2.0], seeds=[1, 2])   # only the values change
  assert len(traces) == 1, f"retraced when only the values changed ({len(traces)} traces)"
  assert a.dims == ("K", "lam", "seed", "iteration") and a.metrics["expected_reward"].shape == (3, 2, 2, 3)
  assert a.metrics["mode_props"].shape == (3, 2, 2, 3, 8) and a.samples is None

  for res, points in ((a, [(1, 1.0, 0), (2, float("inf"), 7), (4, 1.0, 7)]), (b, [(3, 0.5, 2), (2, 2.0, 1)])):
    for K, lam, seed in points:
      single = scl.run(cfg.replace(K=K, lam=lam), seed=seed)
      point = res.sel(K=K, lam=lam, seed=seed)
      for name, value in single.metrics.items():
        np.testing.assert_allclose(point.metrics[name], value, rtol=1e-5, atol=1e-5, err_msg=name)

  one = sweeps.sweep(cfg, seeds=[0, 7], devices=jax.devices()[:1], batch_size=None, **grid)
  assert one.info["devices"] == 1 and one.info["chunk"] == 12 and one.info["batch_size"] == 12, one.info
  chunked = sweeps.sweep(cfg, seeds=[0, 7], max_chunk=8, **grid)
  assert chunked.info["chunk"] == 8 and chunked.info["chunks"] == 2, chunked.info
  # 2 devices x 6 points, 4 per vmap: padded to 16, each device maps over 2 batches of 4.
  mapped = sweeps.sweep(cfg, seeds=[0, 7], devices=jax.devices()[:2], batch_size=4, **grid)
  assert mapped.info["chunk"] == 16 and mapped.info["batch_size"] == 4, mapped.info
  assert a.info["batch_size"] == 1, a.info   # the CPU default
  for other in (one, chunked, mapped):
    for name in a.metrics:
      np.testing.assert_allclose(other.metrics[name], a.metrics[name], rtol=1e-6, atol=1e-6, err_msg=name)

  try:
    sweeps.sweep(cfg, seeds=[0, 7], memory_budget=1000, **grid)
  except ValueError as e:
    assert "does not fit even in chunks" in str(e), e
  else:
    raise AssertionError("a grid larger than the memory budget ran")
  print("OK", len(traces))
""")


def test_eight_devices_sharded_chunked_equal_single_runs_and_trace_once():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, "-c", _MULTI_DEVICE], env=env, capture_output=True, text=True,
                        timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
  assert "OK" in proc.stdout


# --------------------------------------------------------------------------------------------------------
# One device: the Gaussian mixture (every point vs scl.run) and the exact engine.


def test_gmm_grid_points_equal_single_runs():
  cfg = small("gmm", lam=1.0)
  res = sweeps.sweep(cfg, phi=[0.0, 0.5], K=[4, 1], seeds=2, keep_samples=True)
  assert res.dims == ("phi", "K", "seed", "iteration")
  assert res.samples.shape == (2, 2, 2, 2, 1000, 2)
  assert res.fixed["lam"] == 1.0 and "phi" not in res.fixed
  for phi, K, seed in ((0.0, 4, 0), (0.5, 1, 1), (0.5, 4, 0)):
    single = scl.run(cfg.replace(phi=phi, K=K), seed=seed)
    point = res.sel(phi=phi, K=K, seed=seed)
    assert_same_metrics(point.metrics, single.metrics)
    np.testing.assert_allclose(point.samples, single.samples, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", ["categorical", "gmm"])
def test_batch_size_changes_nothing_and_traces_once(model, monkeypatch):
  """batch_size 1 (lax.map of the unbatched point), 2, 4 (6 points padded to 8) and None (one vmap of the
  whole shard) give the same grid, each from one trace of run_fn; the CPU default is CPU_BATCH_SIZE."""
  traces = []
  make_run_fn = loop.make_run_fn

  def counting_make_run_fn(cfg):
    fn, data = make_run_fn(cfg)

    def counted(*args):
      traces.append(1)
      return fn(*args)
    return counted, data

  monkeypatch.setattr(loop, "make_run_fn", counting_make_run_fn)
  cfg = small(model, iterations=2, data_seed=5)
  grid = dict(K=[1, 2, 4], lam=[1.0], seeds=[0, 3])
  results = {}
  for batch_size in (1, 2, 4, None, "auto"):
    before = len(traces)
    results[batch_size] = sweeps.sweep(cfg, batch_size=batch_size, **grid)
    if batch_size != "auto":  # "auto" is batch 1 on CPU: the cached program of batch_size=1.
      assert len(traces) - before == 1, f"batch_size={batch_size}: traced {len(traces) - before} times"
  assert sweeps.default_batch_size() == sweeps.CPU_BATCH_SIZE == 1
  assert results["auto"].info["batch_size"] == 1 and len(traces) == 4
  assert results[4].info["batch_size"] == 4 and results[4].info["chunk"] == 8
  assert results[None].info["batch_size"] == 6 and results[None].info["chunk"] == 6
  for batch_size, res in results.items():
    for name in results[None].metrics:
      np.testing.assert_allclose(res.metrics[name], results[None].metrics[name], rtol=1e-5, atol=1e-6,
                                 err_msg=f"{name} batch_size={batch_size}")
  single = scl.run(cfg.replace(K=2, lam=1.0), seed=3)
  assert_same_metrics(results[1].sel(K=2, lam=1.0, seed=3).metrics, single.metrics)
  with pytest.raises(ValueError, match="batch_size"):
    sweeps.sweep(cfg, batch_size=0, **grid)


def test_exact_grid_points_equal_exact_run():
  rng = np.random.default_rng(0)
  p0 = rng.dirichlet(np.ones(12)).astype(np.float32)
  r = rng.uniform(-3, 0, 12).astype(np.float32)
  r_tilde = -r
  res = sweeps.exact_sweep(p0, r, iterations=4, K=[1, 3, INF], lam=[0.5, INF], phi=[0.0, 0.3], r_tilde=r_tilde,
                           keep_trajectory=True)
  assert res.dims == ("K", "lam", "phi", "iteration")
  assert res.samples.shape == (3, 2, 2, 5, 12)
  for K in (1, 3, INF):
    for lam in (0.5, INF):
      for phi in (0.0, 0.3):
        traj, metrics = exact.run(p0, r, K, lam, iterations=4, r_tilde=r_tilde, phi=phi)
        point = res.sel(K=K, lam=lam, phi=phi)
        assert_same_metrics(point.metrics, {k: np.asarray(v) for k, v in metrics.items()}, 1e-6, 1e-7)
        np.testing.assert_allclose(point.samples, traj, rtol=1e-6, atol=1e-7)
  # A float32 coordinate (as the sweep ran it) finds its grid point: phi=np.float32(0.3) is 0.30000001...
  np.testing.assert_array_equal(res.sel(K=3, lam=np.float32(0.5), phi=np.float32(0.3)).metrics["expected_reward"],
                                res.sel(K=3, lam=0.5, phi=0.3).metrics["expected_reward"])
  # A scalar is a fixed value, not an axis; chunking changes nothing.
  chunked = sweeps.exact_sweep(p0, r, iterations=4, K=[1, 3, INF], lam=INF, max_chunk=2)
  assert chunked.dims == ("K", "iteration") and chunked.info["chunks"] == 2
  np.testing.assert_allclose(chunked.metrics["expected_reward"],
                             res.sel(lam=INF, phi=0.0).metrics["expected_reward"], rtol=1e-6)


def test_memory_budget_splits_the_grid_into_chunks():
  p0 = np.full(200, 1 / 200, np.float32)
  r = np.linspace(-5, 0, 200).astype(np.float32)
  Ks = [1, 2, 3, 4, 5, 6, 7, 8]
  whole = sweeps.exact_sweep(p0, r, iterations=3, K=Ks, lam=1.0, keep_trajectory=True)
  assert whole.info["chunks"] == 1
  budget = 0.6 * whole.info["bytes_per_device"]
  split = sweeps.exact_sweep(p0, r, iterations=3, K=Ks, lam=1.0, keep_trajectory=True, memory_budget=budget)
  assert split.info["chunks"] >= 2 and split.info["bytes_per_device"] <= budget, split.info
  np.testing.assert_allclose(split.samples, whole.samples, rtol=1e-6, atol=1e-8)
  with pytest.raises(ValueError, match="does not fit even in chunks"):
    sweeps.exact_sweep(p0, r, iterations=3, K=Ks, lam=1.0, memory_budget=100)


# --------------------------------------------------------------------------------------------------------
# A sweep with a workdir keeps its finished points: a stopped sweep resumes, a grown grid runs only new points.


def _assert_same_result(got, want):
  assert list(got.axes) == list(want.axes)
  for name in want.axes:
    np.testing.assert_array_equal(got.axes[name], want.axes[name], err_msg=name)
  assert set(got.metrics) == set(want.metrics)
  for name in want.metrics:  # the same compiled chunk on the same points: the same bits
    np.testing.assert_array_equal(got.metrics[name], want.metrics[name], err_msg=name)


def test_stopped_sweep_resumes_and_a_grown_grid_runs_only_its_new_points(tmp_path, monkeypatch, caplog):
  from scl import checkpoint
  cfg = small("categorical", iterations=2)
  workdir = str(tmp_path / "w")
  grid = dict(K=[1, 2], lam=[1.0, INF], seeds=2, max_chunk=2)  # 8 points in 4 chunks of 2

  # Stop the sweep as its second chunk is saved (a KeyboardInterrupt, as Ctrl-C).
  add, calls = checkpoint.PointStore.add, []
  def add_then_stop(self, points, outputs):
    add(self, points, outputs)
    calls.append(points.tolist())
    if len(calls) == 2:
      raise KeyboardInterrupt
  monkeypatch.setattr(checkpoint.PointStore, "add", add_then_stop)
  with pytest.raises(KeyboardInterrupt):
    sweeps.sweep(cfg, workdir=workdir, **grid)
  monkeypatch.setattr(checkpoint.PointStore, "add", add)
  assert calls == [[0, 1], [2, 3]]
  store = os.path.join(workdir, checkpoint.SWEEP_DIRNAME)
  assert os.listdir(workdir) == [checkpoint.SWEEP_DIRNAME]
  chunks = sorted(os.listdir(store))
  assert len(chunks) == 2 and all(name.endswith(".npz") for name in chunks)  # no temporary file left behind
  for name in chunks:  # each chunk's file holds that chunk's points only: saving never rewrites earlier ones
    with np.load(os.path.join(store, name)) as saved:
      assert len(saved["rows"]) == 2

  resumed = sweeps.sweep(cfg, workdir=workdir, **grid)
  assert resumed.info["resumed"] == 4 and resumed.info["run"] == 4 and resumed.info["points"] == 8, resumed.info
  _assert_same_result(resumed, sweeps.sweep(cfg, **grid))
  np.testing.assert_allclose(resumed.metrics["expected_reward"],  # and a whole-grid chunk, to rounding
                             sweeps.sweep(cfg, **{**grid, "max_chunk": None}).metrics["expected_reward"],
                             rtol=1e-6, atol=1e-6)

  grown = dict(grid, K=[1, 2, 4], seeds=[0, 1, 2])  # 18 points, 8 of them saved
  more = sweeps.sweep(cfg, workdir=workdir, **grown)
  assert more.info["resumed"] == 8 and more.info["run"] == 10 and more.info["points"] == 18, more.info
  _assert_same_result(more, sweeps.sweep(cfg, **grown))
  again = sweeps.sweep(cfg, workdir=workdir, **grown)
  assert again.info["resumed"] == 18 and again.info["run"] == 0 and again.info["points"] == 18, again.info
  assert again.info["chunk"] is None and again.info["batch_size"] is None, again.info  # nothing computed
  _assert_same_result(again, more)

  # A truncated chunk file is not trusted: its points run again, and the file is replaced.
  first = os.path.join(store, sorted(os.listdir(store))[0])
  with open(first, "rb") as f:
    head = f.read(100)
  with open(first, "wb") as f:
    f.write(head)
  with caplog.at_level("WARNING"):
    mended = sweeps.sweep(cfg, workdir=workdir, **grown)
  assert f"1 file(s) in {store} ({os.path.basename(first)}) cannot be read" in caplog.text, caplog.text
  assert mended.info["resumed"] == 16 and mended.info["run"] == 2, mended.info
  _assert_same_result(mended, more)
  assert not os.path.exists(first)

  # Another static setting: the saved points are not this sweep's, so every point runs, and its first saved
  # chunk replaces the other setting's files.
  other = sweeps.sweep(cfg.replace(pool_size=800), workdir=workdir, **grid)
  assert other.info["resumed"] == 0 and other.info["run"] == 8, other.info
  _assert_same_result(other, sweeps.sweep(cfg.replace(pool_size=800), **grid))
  assert len(os.listdir(store)) == 4  # its 4 chunks of 2 points


def test_sweep_workdir_refuses_a_config_it_cannot_fingerprint(tmp_path, monkeypatch):
  class Opaque:
    def __call__(self, x):
      return x[:, 0]
  pts = np.array([[0.0, 0.0], [1.0, 0.0]])
  cfg = scl.configs.points(pts, reward="custom", reward_fn=Opaque(), iterations=1, pool_size=100, n_keep=50)
  monkeypatch.setattr(sweeps, "_execute", lambda *a, **k: pytest.fail("computed before the check"))
  with pytest.raises(ValueError, match="cannot keep this sweep's points.*reward_fn"):
    sweeps.sweep(cfg, K=[1, 2], workdir=str(tmp_path))
  assert not os.listdir(tmp_path)


def test_sweep_workdir_it_cannot_write_to_fails_before_compute(tmp_path, monkeypatch):
  monkeypatch.setattr(sweeps, "_execute", lambda *a, **k: pytest.fail("computed before the check"))
  (tmp_path / "a_file").write_text("")
  with pytest.raises(ValueError, match="cannot keep this sweep's points in workdir .*a_file"):
    sweeps.sweep(small("categorical", iterations=1), K=[1, 2], workdir=str(tmp_path / "a_file"))


# --------------------------------------------------------------------------------------------------------
# Bad input fails before compute.


@pytest.mark.parametrize("grid, message", [
    (dict(K=[]), "empty"),
    (dict(lam=[1.0, 1.0]), "duplicate"),
    (dict(K=[2, 2.0]), "duplicate"),
    (dict(lam=[0.1, 0.1 + 1e-12]), "equal in float32"),  # one point twice, and sel could not tell them apart
    (dict(phi=[0.0, 1.5]), "phi"),
    (dict(kappa=[-0.1]), "kappa"),
    (dict(lam=[-1.0, 1.0]), "lam"),
    (dict(K=[0, 1]), "K"),
    (dict(K=[1.5]), "K"),
    (dict(K=[2, 8]), "K_max"),
    (dict(lr=[0.0]), "lr"),
    (dict(lam="inf"), "sequence"),
    (dict(seeds=[]), "seeds is empty"),
    (dict(seeds=[1, 1]), "duplicate seeds"),
    (dict(seeds=[0.5]), "integers"),
    (dict(seeds=[0, 2**32]), r"\[0, 2\*\*32\)"),  # PRNGKey(2**32) is PRNGKey(0) without 64-bit mode
    # a grid's entries are checked as a scalar's are: booleans and text are refused, not converted to 1.0, 2.0
    (dict(K=["1", "2"]), "not text"),
    (dict(K=[True, 2]), "not booleans"),
    (dict(lam=[False, True]), "not booleans"),
    (dict(seeds=True), "seeds=True"),
    (dict(seeds=2.0), "seeds=2.0"),
    # the points run in float32: 1e-50 is 0 there (one point twice) and 1e39 is inf
    (dict(lam=[0.0, 1e-50]), "equal in float32"),
    (dict(lam=[1e39, float("inf")]), "equal in float32"),
    (dict(lr=[1e-3, 1e39]), "traced as float32"),
])
def test_bad_grids_fail_before_compute(grid, message, monkeypatch):
  def no_compile(*args, **kwargs):
    raise AssertionError("compiled before validating")
  monkeypatch.setattr(sweeps, "_compile", no_compile)
  with pytest.raises(ValueError, match=message):
    sweeps.sweep(small("categorical"), **grid)


def test_unknown_names_fail():
  with pytest.raises(TypeError, match="cannot sweep"):
    sweeps.sweep(small("categorical"), iterations=[1, 2])
  with pytest.raises(ValueError, match="r_tilde"):
    sweeps.exact_sweep(np.full(3, 1 / 3), np.zeros(3), iterations=1, phi=[0.0, 0.5])
  with pytest.raises(ValueError, match="K"):
    sweeps.exact_sweep(np.full(3, 1 / 3), np.zeros(3), iterations=1, K=[0.5, 2])


# --------------------------------------------------------------------------------------------------------
# The labelled result: long table, selection, mean and confidence interval over seeds.


def toy_result():
  rng = np.random.default_rng(1)
  axes = {"K": np.array([1, 2]), "lam": np.array([1.0, INF]), "seed": np.arange(5), "iteration": np.arange(3)}
  metrics = {"expected_reward": rng.normal(size=(2, 2, 5, 3)), "mode_props": rng.uniform(size=(2, 2, 5, 3, 4))}
  return sweeps.SweepResult(axes=axes, metrics=metrics)


def test_to_frame_is_long_format():
  res = toy_result()
  frame = res.to_frame()
  assert len(frame) == 2 * 2 * 5 * 3
  assert list(frame.columns[:4]) == ["K", "lam", "seed", "iteration"]
  assert {"expected_reward", "mode_props_0", "mode_props_3"} <= set(frame.columns)
  row = frame[(frame.K == 2) & np.isinf(frame.lam) & (frame.seed == 3) & (frame.iteration == 1)]
  assert float(row.expected_reward.iloc[0]) == res.metrics["expected_reward"][1, 1, 3, 1]
  assert float(row.mode_props_2.iloc[0]) == res.metrics["mode_props"][1, 1, 3, 1, 2]


def test_sel_and_final():
  res = toy_result()
  sub = res.sel(lam=INF, K=1)
  assert sub.dims == ("seed", "iteration") and sub.fixed == {"lam": INF, "K": 1}
  np.testing.assert_array_equal(sub.metrics["expected_reward"], res.metrics["expected_reward"][0, 1])
  np.testing.assert_array_equal(res.final().metrics["expected_reward"], res.metrics["expected_reward"][..., -1])
  with pytest.raises(KeyError, match="not on the grid"):
    res.sel(K=3)
  with pytest.raises(KeyError, match="no axis"):
    res.sel(phi=0.0)


def test_mean_ci_matches_scipy():
  res = toy_result()
  ci = res.mean_ci("expected_reward", level=0.9)
  x = res.metrics["expected_reward"][1, 0, :, 2]
  lo, hi = stats.t.interval(0.9, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
  assert ci.mean.shape == (2, 2, 3) and ci.n == 5
  np.testing.assert_allclose([ci.mean[1, 0, 2], ci.low[1, 0, 2], ci.high[1, 0, 2]], [x.mean(), lo, hi])
  table = res.summary("expected_reward")
  assert len(table) == 2 * 2 * 3 and {"mean", "low", "high"} <= set(table.columns)
  single = res.sel(seed=0)
  with pytest.raises(ValueError, match="no seed axis"):
    single.mean_ci("expected_reward")
  one_seed = sweeps.SweepResult(axes={**res.axes, "seed": np.arange(1)},
                                metrics={"expected_reward": res.metrics["expected_reward"][:, :, :1]})
  assert np.all(np.isnan(one_seed.mean_ci("expected_reward").low))
  assert math.isclose(ci.level, 0.9)


# --------------------------------------------------------------------------------------------------------
# Two processes over loopback: the multi-host path of experiments/sweep.py (jax.distributed.initialize,
# global inputs, process_allgather of every chunk; Gloo collectives, the CPU default in jax 0.10).


def _free_port() -> int:
  import socket
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(tmp_path, workdirs, tag):
  """Run experiments/sweep.py :tiny as two processes over loopback: [(returncode, stdout, stderr)] per process."""
  import time
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", SCL_CPU_DEVICES="1",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)  # One CPU device per process: two devices in all.
  # max_chunk=8 over 12 points: two chunks (each gathered across the processes), the second one padded.
  procs, logs = [], []
  try:
    for i in range(2):
      cmd = [sys.executable, os.path.join(ROOT, "experiments", "sweep.py"),
             f"--config={os.path.join(ROOT, 'experiments', 'configs', 'sweep.py')}:tiny",
             "--config.max_chunk=8", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
             f"--process_id={i}", f"--workdir={workdirs[i]}"]
      logs.append((open(tmp_path / f"{tag}out{i}.txt", "w"), open(tmp_path / f"{tag}err{i}.txt", "w")))
      procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=logs[-1][0], stderr=logs[-1][1]))
    # Wait for both; stop early if either fails (the other would block in a collective).
    deadline = time.monotonic() + 240
    while any(p.poll() is None for p in procs):
      if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
        break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
    for f in (f for pair in logs for f in pair):
      f.close()
  return [(p.returncode, (tmp_path / f"{tag}out{i}.txt").read_text(), (tmp_path / f"{tag}err{i}.txt").read_text())
          for i, p in enumerate(procs)]


def test_two_process_sweep_over_loopback(tmp_path):
  import json
  runs = _two_processes(tmp_path, [tmp_path / "w0", tmp_path / "w1"], "a")
  for i, (rc, out, err) in enumerate(runs):
    assert rc == 0, f"process {i} exited {rc}:\n{out[-3000:]}\n{err[-6000:]}"
    assert f"process {i} of 2, 2 devices in all" in err, err[-3000:]
  assert "wrote sweep.csv" in runs[0][1] and "wrote" not in runs[1][1]
  assert not (tmp_path / "w1").exists()  # Process 0 alone writes.
  written = json.loads((tmp_path / "w0" / "sweep.json").read_text())
  assert written["info"]["devices"] == 2 and written["info"]["chunks"] == 2, written["info"]
  assert written["info"]["resumed"] == 0, written["info"]

  # Rerun with a shared workdir: both processes find every point saved by process 0, and nothing runs.
  again = _two_processes(tmp_path, [tmp_path / "w0", tmp_path / "w0"], "b")
  for i, (rc, out, err) in enumerate(again):
    assert rc == 0, f"process {i} exited {rc}:\n{out[-3000:]}\n{err[-6000:]}"
  resumed = json.loads((tmp_path / "w0" / "sweep.json").read_text())
  assert resumed["info"]["resumed"] == 12 and resumed["info"]["chunks"] == 0, resumed["info"]
  assert resumed["final_expected_reward_mean"] == written["final_expected_reward_mean"]
  # Workdirs the processes do not share (process 1 finds nothing): both stop with a message, none hangs.
  split = _two_processes(tmp_path, [tmp_path / "w0", tmp_path / "w2"], "c")
  for i, (rc, out, err) in enumerate(split):
    assert rc != 0 and "must be shared by every process" in err, f"process {i} exited {rc}:\n{err[-3000:]}"

  # The same grid in this (one-device, one-process) run, and one grid point as scl.run.
  cfg = small("categorical", iterations=2)
  grid = sweeps.sweep(cfg, K=[1, 2, 4], lam=[1.0, INF], seeds=2)
  final = grid.final().metrics["expected_reward"].mean(-1)
  np.testing.assert_allclose(np.array(written["final_expected_reward_mean"], float), final, rtol=1e-6,
                             atol=1e-6)
  run = scl.run(cfg.replace(K=2, lam=INF), seed=1)
  np.testing.assert_allclose(grid.sel(K=2, lam=INF, seed=1).metrics["expected_reward"],
                             run.metrics["expected_reward"], rtol=1e-6, atol=1e-6)
