"""Monitors only where the theorems apply, the paper's attack recipe and weighting from a config, and resume
that is exact across processes (content fingerprints) and refuses what it cannot trust."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from flax import serialization

import scl
from scl import checkpoint
from scl import exact

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(model="categorical", n_atoms=64, pool_size=2000, n_keep=1000, iterations=2, K_max=4)
BOUNDS = ("lemma22_holds", "thm23_holds", "thm24_holds", "lemma33_holds")


def test_monitors_are_nan_where_the_theorems_do_not_apply():
  # K-choice with the true reward and an exact refit: each bound is evaluated where its assumptions hold
  # (Lemmas 2.2 and 3.3: fully synthetic; Theorems 2.3 and 2.4: real data with λ (K - 1) < 1).
  synthetic = scl.run(scl.configs.gaussian8(**SMALL, K=4), seed=0).metrics
  mixed = scl.run(scl.configs.gaussian8(**SMALL, K=4, lam=0.25), seed=0).metrics
  for metrics, names in ((synthetic, ("lemma22_holds", "lemma33_holds")), (mixed, ("thm23_holds", "thm24_holds"))):
    for name in names:
      np.testing.assert_array_equal(metrics[name][1:], 1.0, err_msg=name)
  for overrides in (dict(curation="topk"), dict(curation="luce_pool"),
                    dict(learned_reward=True, n_pairs=100), dict(attack="random", kappa=0.2, n_pairs=100)):
    m = scl.run(scl.configs.gaussian8(**SMALL, **overrides), seed=0).metrics
    for name in BOUNDS + ("lemma22_rhs", "g_var", "g_cov"):
      assert np.all(np.isnan(m[name])), (overrides, name)
    assert np.all(np.isfinite(m["cov_r_rtilde"][1:])), overrides   # a measurement, not a bound


def test_sampled_monitors_allow_for_sampling_noise_with_a_calibrated_standard_error():
  """At K = 1, Lemma 2.2 reads E_{p_{t+1}}[e^r] >= E_{p_t}[e^r], with equality in expectation: its slack is pure
  sampling noise. Over 16 seeds x 6 steps, slack / monitor_se has mean 0 (|mean| < 0.4, 4 standard errors) and
  standard deviation 1 (within [0.7, 1.4]), and no step is reported as a violation (a 4-se tolerance)."""
  cfg = scl.configs.gaussian8(model="categorical", n_atoms=64, pool_size=2000, n_keep=1000, iterations=6, K=1)
  res = scl.sweep(cfg, seeds=16)
  slack = np.asarray(res.metrics["lemma22_slack"])[..., 1:]
  se = np.asarray(res.metrics["monitor_se"])[..., 1:]
  z = (slack / se).ravel()
  assert np.all(se > 0) and abs(z.mean()) < 0.4 and 0.7 < z.std() < 1.4, (z.mean(), z.std())
  np.testing.assert_array_equal(np.asarray(res.metrics["lemma22_holds"])[..., 1:], 1.0)


def test_exact_run_reports_thm23_thm24_only_from_p_data():
  r = np.linspace(-2.0, 0.0, 5)
  p_data = np.full(5, 0.2)
  _, from_data = exact.run(p_data, r, 4, 0.25, p_data, iterations=2)   # λ (K - 1) < 1: Thm 2.4 applies
  _, elsewhere = exact.run(np.array([0.6, 0.1, 0.1, 0.1, 0.1]), r, 4, 0.25, p_data, iterations=2)
  for name in ("thm23_rhs", "thm23_holds", "thm24_rhs", "thm24_holds"):
    assert np.all(np.isfinite(np.asarray(from_data[name])[1:])), name
    assert np.all(np.isnan(np.asarray(elsewhere[name]))), name


ATTACKED = dict(model="gmm", em_steps=3, pool_size=2000, n_keep=1000, n_real=1000, n_eval=1000, iterations=2,
                attack="gradient", kappa=0.2, n_pairs=150, attack_steps=2)


def test_attack_recipe_and_weighting_from_the_config():
  paper = scl.run(scl.configs.gaussian8(**ATTACKED, attack_recipe="paper"), seed=0).metrics
  robust = scl.run(scl.configs.gaussian8(**ATTACKED, attack_recipe="robust"), seed=0).metrics
  # The paper's recipe never falls back on the dist heuristic; the robust one says per iteration if it did.
  np.testing.assert_array_equal(paper["attack_kept_dist"][:-1], 0.0)
  assert set(np.unique(robust["attack_kept_dist"][:-1])) <= {0.0, 1.0}
  assert np.isnan(robust["attack_kept_dist"][-1])   # no step follows p_T
  # α·Cov + (1 − α)·dist at α = 1 is the paper's Cov + α·dist at α = 0: the same objective, the same run.
  code = scl.run(scl.configs.gaussian8(**ATTACKED, attack_weighting="code", alpha=1.0), seed=0).metrics
  same = scl.run(scl.configs.gaussian8(**ATTACKED, attack_weighting="paper", alpha=0.0), seed=0).metrics
  np.testing.assert_allclose(code["expected_reward"], same["expected_reward"], rtol=1e-6)
  with pytest.raises(ValueError, match="attack_recipe='clever'"):
    scl.configs.gaussian8(attack="gradient", attack_recipe="clever")
  with pytest.raises(ValueError, match="attack_weighting='both'"):
    scl.configs.gaussian8(attack="gradient", attack_weighting="both")


# -- Resume across processes.

_CHILD = textwrap.dedent("""
  import sys, numpy as np, scl
  from scl import files
  mode, workdir, sign = sys.argv[1], sys.argv[2], float(sys.argv[3])
  pts = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 1.0]])
  cfg = scl.configs.points(pts, reward="custom", reward_fn=lambda x: sign * x[:, 0], pool_size=500,
                           n_keep=200, iterations=4, K=2)
  if mode == "stop":  # die right after the second checkpoint
    real, calls = files.write_bytes, []
    def dying(path, data):
      real(path, data); calls.append(path)
      if len(calls) == 2:
        raise SystemExit(3)
    files.write_bytes = dying
  res = scl.run(cfg, seed=1, workdir=workdir, progress=False)
  print("ER", *res.metrics["expected_reward"].tolist())
""")


def _child(mode, workdir, sign=1.0):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-c", _CHILD, mode, str(workdir), str(sign)], env=env,
                        capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_points_run_resumes_in_a_new_process_and_a_changed_reward_is_refused(tmp_path):
  stopped = _child("stop", tmp_path / "a")
  assert stopped.returncode == 3, stopped.stderr[-2000:]
  resumed = _child("run", tmp_path / "a")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  whole = _child("run", tmp_path / "b")
  assert resumed.stdout.split("ER")[1] == whole.stdout.split("ER")[1]
  # Same code, other sign: the function's closure changed, so the checkpoint is not this run's.
  other = _child("run", tmp_path / "a", sign=-1.0)
  assert other.returncode != 0 and "different run" in other.stderr and "reward_fn" in other.stderr, other.stderr


def test_untrusted_fingerprint_and_old_checkpoints_are_refused(tmp_path):
  class Opaque:
    def __call__(self, x):
      return x[:, 0]
  pts = np.array([[0.0, 0.0], [1.0, 0.0]])
  cfg = scl.configs.points(pts, reward="custom", reward_fn=Opaque(), iterations=1, pool_size=100, n_keep=50)
  with pytest.raises(ValueError, match="fingerprint cannot be trusted.*reward_fn"):
    scl.run(cfg, workdir=str(tmp_path / "opaque"), progress=False)
  named = Opaque()
  named.scl_fingerprint = "x0-v1"
  scl.run(cfg.replace(reward_fn=named), workdir=str(tmp_path / "named"), progress=False)

  old = tmp_path / "old"
  old.mkdir()
  (old / checkpoint.FILENAME).write_bytes(serialization.msgpack_serialize({"fingerprint": "{}", "done": 1}))
  good = scl.configs.points(pts, iterations=1, pool_size=100, n_keep=50)
  with pytest.raises(ValueError, match="another version of scl"):
    scl.run(good, workdir=str(old), progress=False)
  (old / checkpoint.FILENAME).write_bytes(b"not msgpack at all")
  with pytest.raises(ValueError, match="cannot be read"):
    scl.run(good, workdir=str(old), progress=False)


def test_array_fingerprint_is_a_content_digest():
  pts = np.array([[0.0, 0.0], [1.0, 0.0]])
  a = checkpoint.fingerprint(scl.configs.points(pts.copy()), 0)
  b = checkpoint.fingerprint(scl.configs.points(pts.copy()), 0)
  c = checkpoint.fingerprint(scl.configs.points(pts + 1.0), 0)
  assert a == b and a["points"] != c["points"]


def test_code_digest_follows_the_source_files_only(tmp_path):
  pkg = tmp_path / "pkg"
  (pkg / "csrc").mkdir(parents=True)
  (pkg / "a.py").write_text("x = 1\n")
  (pkg / "csrc" / "k.cc").write_text("int f() { return 1; }\n")
  first = checkpoint.code_digest(str(pkg))
  (pkg / "notes.txt").write_text("not source")  # neither other files ...
  (pkg / "a.cpython-311.pyc").write_bytes(b"\0\1")  # ... nor byte code count
  assert checkpoint.code_digest.__wrapped__(str(pkg)) == first
  (pkg / "csrc" / "k.cc").write_text("int f() { return 2; }\n")
  assert checkpoint.code_digest.__wrapped__(str(pkg)) != first
  (pkg / "csrc" / "k.cc").write_text("int f() { return 1; }\n")
  (pkg / "b.py").write_text("")  # a new, empty module
  second = checkpoint.code_digest.__wrapped__(str(pkg))
  assert second != first
  os.symlink(str(tmp_path / "nowhere"), str(pkg / ".#a.py"))  # an editor's lock file: a dangling link
  assert checkpoint.code_digest.__wrapped__(str(pkg)) == second
  assert len(checkpoint.code_digest()) == 64  # scl's own


def test_a_checkpoint_of_other_scl_code_is_refused(tmp_path, monkeypatch):
  cfg = scl.configs.points(np.array([[0.0, 0.0], [1.0, 0.0]]), iterations=2, pool_size=100, n_keep=50)
  workdir = str(tmp_path / "w")
  first = scl.run(cfg, workdir=workdir, progress=False)
  again = scl.run(cfg, workdir=workdir, progress=False)  # the same code: the saved run is taken as it is
  np.testing.assert_array_equal(again.metrics["expected_reward"], first.metrics["expected_reward"])
  monkeypatch.setattr(checkpoint, "code_digest", lambda root=None: "0" * 64)
  with pytest.raises(ValueError, match=r"\['scl_code'\] differ \(scl_code: scl's source code changed"):
    scl.run(cfg, workdir=workdir, progress=False)


def test_fingerprint_follows_a_notebook_class_and_a_helper_module_state(tmp_path, monkeypatch):
  """A class in a notebook (a module without a source file) was digested by its name alone, and a helper module by
  its file alone: editing the class's method, or setting ``helpers.SCALE = -5`` at run time, left the fingerprint
  unchanged, and a checkpoint of the old reward was resumed. The same run given ``seed=np.int64(5)`` or ``K=2.0``
  (what the compiled run takes is the same) was refused."""
  import importlib
  import types
  pts = np.array([[0.0, 0.0], [1.0, 0.0]])
  digest = lambda fn: checkpoint.fingerprint(scl.configs.points(pts, reward="custom", reward_fn=fn), 0)["reward_fn"]
  notebook = types.ModuleType("scl_test_notebook")
  monkeypatch.setitem(sys.modules, "scl_test_notebook", notebook)
  cell = "class Reward:\n  @staticmethod\n  def apply(x):\n    return {} * jnp.minimum(x[:, 0], 0.0)\n"
  exec("import jax.numpy as jnp\n" + cell.format(1.0) + "reward = lambda x: Reward.apply(x)\n", notebook.__dict__)
  before = digest(notebook.reward)
  assert digest(notebook.reward) == before
  exec(cell.format(-5.0), notebook.__dict__)  # the cell edited and run again
  assert digest(notebook.reward) != before

  (tmp_path / "scl_test_state.py").write_text("SCALE = 1.0\ndef r(x):\n  return SCALE * x[:, 0]\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  helpers = importlib.import_module("scl_test_state")
  monkeypatch.setitem(sys.modules, "scl_test_state", helpers)
  through = lambda x: helpers.r(x)
  before = digest(through)
  monkeypatch.setattr(helpers, "SCALE", -5.0)
  assert digest(through) != before

  cfg = scl.configs.points(pts)
  assert checkpoint.fingerprint(cfg, np.int64(5)) == checkpoint.fingerprint(cfg, 5)
  assert checkpoint.fingerprint(cfg.replace(K=2.0), 5) == checkpoint.fingerprint(cfg.replace(K=2), 5)
  assert checkpoint.fingerprint(cfg.replace(K=3), 5) != checkpoint.fingerprint(cfg.replace(K=2), 5)


def test_fingerprint_follows_keyword_defaults_helper_modules_and_classes(tmp_path, monkeypatch):
  import importlib
  pts = np.array([[0.0, 0.0], [1.0, 0.0]])
  digest = lambda fn: checkpoint.fingerprint(scl.configs.points(pts, reward="custom", reward_fn=fn), 0)["reward_fn"]

  def scaled(x, *, scale=1.0):
    return scale * x[:, 0]
  before = digest(scaled)
  scaled.__kwdefaults__ = {"scale": -1.0}
  assert digest(scaled) != before

  # A reward that reads a helper module (and a class of it): editing the module changes the fingerprint.
  (tmp_path / "scl_test_helpers.py").write_text("SCALE = 1.0\nclass Sign:\n  s = 1.0\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  helpers = importlib.import_module("scl_test_helpers")
  by_module = lambda x: helpers.SCALE * x[:, 0]
  by_class = lambda x, cls=helpers.Sign: cls.s * x[:, 0]
  before = digest(by_module), digest(by_class)
  assert (digest(by_module), digest(by_class)) == before
  (tmp_path / "scl_test_helpers.py").write_text("SCALE = -1.0\nclass Sign:\n  s = -1.0\n")
  after = digest(by_module), digest(by_class)
  assert after[0] != before[0] and after[1] != before[1]
  monkeypatch.delitem(sys.modules, "scl_test_helpers")
