"""Input validation of scl.exact: invalid concrete inputs raise ValueError naming the argument and its value,
before anything is computed; valid inputs (including edge cases) and traced inputs pass."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scl import exact

P = np.array([0.2, 0.3, 0.5])
R = np.array([0.0, 1.0, 2.0])


@pytest.fixture
def no_compute(monkeypatch):
  """Replace the jitted kernels by functions that fail the test: validation must come first."""
  def forbidden(*args, **kwargs):
    raise AssertionError("computed before validating")
  monkeypatch.setattr(exact, "_curate", forbidden)
  monkeypatch.setattr(exact, "_run_jit", forbidden)


def curate(**kw):
  args = dict(p=P, r=R, K=2.0, r_tilde=-R, phi=0.5)
  args.update(kw)
  return exact.curate(args.pop("p"), args.pop("r"), args.pop("K"), **args)


def run(**kw):
  args = dict(p0=P, r=R, K=2.0, lam=1.0, p_data=P, iterations=3, r_tilde=-R, phi=0.5)
  args.update(kw)
  return exact.run(args.pop("p0"), args.pop("r"), args.pop("K"), args.pop("lam"), args.pop("p_data"), **args)


def raises(fn, pattern):
  with pytest.raises(ValueError, match=pattern) as info:
    fn()
  assert str(info.value).startswith("invalid argument: ")
  return str(info.value)


# ----------------------------------------------------------------------------- curate


def test_curate_p_sums_to_1_1(no_compute):
  msg = raises(lambda: curate(p=np.array([0.3, 0.3, 0.5])), r"p=\[0\.3, 0\.3, 0\.5\]")
  assert "sum to 1" in msg and "1.1" in msg


def test_curate_negative_p(no_compute):
  msg = raises(lambda: curate(p=np.array([0.6, -0.1, 0.5])), r"p=\[0\.6, -0\.1, 0\.5\]")
  assert ">= 0" in msg and "p[1]=-0.1" in msg


def test_curate_nan_reward(no_compute):
  raises(lambda: curate(r=np.array([0.0, np.nan, 1.0])), r"r=\[0\.0, nan, 1\.0\]: must be finite \(r\[1\]=nan\)")
  raises(lambda: curate(r_tilde=np.array([0.0, 1.0, np.inf])), r"r_tilde=\[0\.0, 1\.0, inf\]: must be finite")


def test_curate_k0(no_compute):
  msg = raises(lambda: curate(K=0), r"K=0: ")
  assert msg == "invalid argument: K=0: the number of candidates must be >= 1 (or inf)"
  raises(lambda: curate(K=0.5), r"K=0\.5: ")
  raises(lambda: curate(K=float("nan")), r"K=nan: ")
  raises(lambda: curate(K=-np.inf), r"K=-inf: ")


def test_curate_phi_1_5(no_compute):
  raises(lambda: curate(phi=1.5), r"phi=1\.5: .*\[0, 1\]")
  raises(lambda: curate(phi=-0.1), r"phi=-0\.1: ")


def test_curate_shape_mismatch(no_compute):
  raises(lambda: curate(r=np.array([0.0, 1.0])), r"r has shape \(2,\), expected \(3,\)")
  raises(lambda: curate(r_tilde=np.zeros(4)), r"r_tilde has shape \(4,\), expected \(3,\)")
  raises(lambda: curate(p=P[None], r=R[None]), r"p has shape \(1, 3\)")


# ----------------------------------------------------------------------------- run


def test_run_p_sums_to_1_1(no_compute):
  msg = raises(lambda: run(p0=np.array([0.3, 0.3, 0.5])), r"p0=\[0\.3, 0\.3, 0\.5\]")
  assert "1.1" in msg
  raises(lambda: run(p_data=np.array([0.3, 0.3, 0.5])), r"p_data=\[0\.3, 0\.3, 0\.5\]: .*sum to 1")


def test_run_negative_p(no_compute):
  raises(lambda: run(p0=np.array([0.6, -0.1, 0.5])), r"p0=\[0\.6, -0\.1, 0\.5\]: .*>= 0")
  raises(lambda: run(p_data=np.array([0.6, -0.1, 0.5])), r"p_data=\[0\.6, -0\.1, 0\.5\]: .*>= 0")


def test_run_nan_reward(no_compute):
  raises(lambda: run(r=np.array([0.0, np.nan, 1.0])), r"r=\[0\.0, nan, 1\.0\]: must be finite")
  raises(lambda: run(r_tilde=np.array([np.nan, 0.0, 1.0])), r"r_tilde=\[nan, 0\.0, 1\.0\]: must be finite")


def test_run_k0(no_compute):
  raises(lambda: run(K=0), r"^invalid argument: K=0: the number of candidates must be >= 1 \(or inf\)$")


def test_run_lam_minus_1(no_compute):
  raises(lambda: run(lam=-1), r"lam=-1: λ must be >= 0")
  raises(lambda: run(lam=float("nan")), r"lam=nan: ")


def test_run_phi_1_5(no_compute):
  raises(lambda: run(phi=1.5), r"phi=1\.5: ")


def test_run_shape_mismatch(no_compute):
  raises(lambda: run(r=np.array([0.0, 1.0])), r"r has shape \(2,\), expected \(3,\)")
  raises(lambda: run(p_data=np.array([0.5, 0.25, 0.125, 0.125])), r"p_data has shape \(4,\), expected \(3,\)")


def test_run_iterations(no_compute):
  raises(lambda: run(iterations=-1), r"iterations=-1: .*integer >= 0")
  raises(lambda: run(iterations=2.5), r"iterations=2\.5: ")
  raises(lambda: run(iterations=True), r"iterations=True: ")


def test_one_step_or_run_takes_scalars_and_a_real_share_in_0_1(no_compute):
  raises(lambda: run(lam=[1.0, np.inf]), r"lam has shape \(2,\): expected a scalar")
  raises(lambda: curate(K=[2.0, 4.0]), r"K has shape \(2,\): expected a scalar")
  for share in (1.5, -0.1, np.nan):
    raises(lambda: exact.step(P, R, 2.0, share, P), r"real_share=.*must lie in \[0, 1\]")
  raises(lambda: exact.step(P, R, 2.0, np.array([0.5, 0.5]), P), r"real_share has shape \(2,\)")


def test_num_nodes(no_compute):
  for bad in (0, 1, 2.5, True):
    raises(lambda: run(num_nodes=bad), rf"num_nodes={bad!r}: .*integer >= 2")
    raises(lambda: curate(num_nodes=bad), rf"num_nodes={bad!r}: ")
  from scl import sweeps
  with pytest.raises(ValueError, match="num_nodes=1: "):
    sweeps.exact_sweep(P, R, iterations=1, K=[2.0, 4.0], num_nodes=1)


def test_num_nodes_warns_exactly_where_the_spread_is_clamped():
  """At K = 4, 64 nodes resolve a spread of 0.45 * 63 - 20 - log 20 - log 4 = 3.97: a spread of 3 gives no
  warning and the 256-node result; a spread of 6 warns, and its result is not the 256-node one."""
  import warnings
  p = np.full(4, 0.25)
  for spread, warned in ((3.0, False), (6.0, True)):
    r = np.linspace(0.0, spread, 4)
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      few = np.asarray(exact.curate(p, r, 4.0, num_nodes=64))
    hits = [w for w in caught if issubclass(w.category, RuntimeWarning) and "num_nodes=64" in str(w.message)]
    assert bool(hits) == warned, [str(w.message) for w in caught]
    with jax.enable_x64():
      ref = np.asarray(exact.curate(p, r, 4.0, num_nodes=1024))
    err = np.max(np.abs(few - ref) / ref)
    assert (err > 1e-3) if warned else (err < 1e-4), (spread, err)
  with pytest.warns(RuntimeWarning, match="num_nodes=64 .* r spreads 6"):
    exact.run(p, np.linspace(0.0, 6.0, 4), 4.0, 1.0, iterations=1, num_nodes=64)


def test_clamped_low_atoms_with_mass_warn_in_either_precision():
  """A top atom of negligible mass above two far, widely spread atoms that hold all the mass: K = 2 curation of
  those two is ``p_mid = 1/4 + 2 (1/4) σ(100) = 3/4`` (closed form; σ(100) = 1 to float64). The default 256
  nodes resolve a spread of 91 at K = 2, so the low atoms are clamped together (the engine gives 1/2, 1/2):
  that must warn (it was silent: the check returned early whenever the nodes resolved more than float32's 75),
  and with the node count the warning names the result is right. In float32 no node count helps (the range
  caps the spread at 75): the warning says to use float64. Low atoms without mass do not warn."""
  import warnings
  expected = np.array([2e-30, 0.75, 0.25])
  with jax.enable_x64():
    p, r = np.array([1e-30, 0.5, 0.5 - 1e-30]), np.array([0.0, -100.0, -200.0])
    with pytest.warns(RuntimeWarning, match=r"spreads 200 .* raise num_nodes \(to about (\d+)\)") as caught:
      clamped = np.asarray(exact.curate(p, r, 2))
    assert abs(clamped[1] - 0.5) < 1e-6                    # what the clamp gives: the warning was due
    need = int(re.search(r"to about (\d+)", str(caught[0].message)).group(1))
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      fine = np.asarray(exact.curate(p, r, 2, num_nodes=need))
    np.testing.assert_allclose(fine, expected, rtol=1e-7)
  p32, r32 = np.array([1e-20, 0.5, 0.5], np.float32), np.array([0.0, -80.0, -100.0], np.float32)
  with pytest.warns(RuntimeWarning, match="in float32, .* use float64"):
    exact.curate(p32, r32, 2, num_nodes=4096)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    exact.curate(np.array([0.5, 0.5 - 1e-8, 5e-9, 5e-9], np.float32), np.array([0.0, -1.0, -90.0, -100.0]), 2)


# ----------------------------------------------------------------------------- validate, grids, valid inputs


def test_validate_grids_of_values():
  exact.validate(K=[1, 2.5, np.inf], lam=np.array([0.0, 1.0, np.inf]), phi=[0.0, 0.3, 1.0], iterations=0)
  raises(lambda: exact.validate(K=[1.0, 0.5, np.inf]), r"K=\[1\.0, 0\.5, inf\]: ")
  raises(lambda: exact.validate(lam=np.array([0.5, -2.0])), r"lam=\[0\.5, -2\.0\]: ")
  raises(lambda: exact.validate(phi=(0.0, 1.01)), r"phi=\[0\.0, 1\.01\]: ")
  raises(lambda: exact.validate(K=[[1.0, 2.0]]), r"K has shape \(1, 2\)")


def test_valid_edge_cases_pass_and_match_references():
  """Zeros in p, K = 1 and inf, λ = 0 and inf, φ = 0 and 1, float32-rounded p in float64, iterations = 0."""
  p = np.array([0.0, 0.25, 0.75])
  np.testing.assert_allclose(exact.curate(p, R, 1.0), p, rtol=1e-6)               # K = 1: identity
  w = p * np.exp(R)
  np.testing.assert_allclose(exact.curate(p, R, np.inf), w / w.sum(), rtol=1e-5)  # K = inf: tilt
  np.testing.assert_allclose(exact.curate(p, R, np.inf, -R, 1.0), p * np.exp(-R) / (p * np.exp(-R)).sum(),
                             rtol=1e-5)
  p32 = np.random.default_rng(0).dirichlet(np.ones(50)).astype(np.float32).astype(np.float64)
  with jax.enable_x64(True):
    q = np.asarray(exact.curate(jnp.asarray(p32), jnp.linspace(0.0, 1.0, 50), 3.0))
  assert q.dtype == np.float64 and abs(q.sum() - 1.0) < 1e-12
  traj, metrics = exact.run(P, R, 2.0, 0.0, iterations=2, r_tilde=-R, phi=0.0)   # λ = 0: p_t = p_data
  np.testing.assert_allclose(traj, np.stack([P] * 3), rtol=1e-6)
  traj, metrics = exact.run(P, R, 2.0, np.inf, iterations=0)
  chex.assert_shape(traj, (1, 3))
  np.testing.assert_allclose(traj[0], P)
  assert all(v.shape == (1,) for v in metrics.values())
  np.testing.assert_allclose(metrics["expected_reward"][0], np.sum(P * R), rtol=1e-6)


def test_traced_inputs_skip_value_checks():
  """Under jit/vmap the values are unknown: no check may fail on a tracer (shapes are still checked)."""
  f = jax.jit(lambda p, K: exact.curate(p, R, K))
  np.testing.assert_allclose(f(P, jnp.inf), P * np.exp(R) / np.sum(P * np.exp(R)), rtol=1e-5)
  Ks = jnp.array([1.0, 2.0, jnp.inf])
  traj, _ = jax.vmap(lambda K: exact.run(P, R, K, 1.0, iterations=2))(Ks)
  chex.assert_shape(traj, (3, 3, 3))
  np.testing.assert_allclose(traj[0], np.stack([P] * 3), rtol=1e-6)                 # K = 1: fixed point
  with pytest.raises(ValueError, match=re.escape("r has shape (2,), expected (3,)")):
    jax.jit(lambda p: exact.curate(p, R[:2], 2.0))(P)
