"""Benchmark of the gradient label-flip attack (scl.attacks.gradient_attack), printed as JSON.

Data: the 2-D Gaussian-8 ring (8 modes, radius 2, std 0.02), true reward ``-10 max(|x - (2, 0)| - 3, 0)``,
deterministic labels, a pool of ``2n`` model samples (the pairs are drawn from it; ``Cov`` and ``dist`` are
estimated on it, as the paper's code does on the pairs' samples), ``κ = 0.2``, ``α = 0.8``, 5 outer steps.
The attacker's ``θ`` is fitted first (timed separately, not part of the attack time).

Each setting runs in a fresh subprocess so that ``ru_maxrss`` (peak resident memory) is its own. Ratios
against the second paper's code come only from ``benchmarks/reference.py``, which runs both on one machine in
one run; this script prints scl's absolute figures with the machine they were taken on.

Solver settings: the attacker's fit and the attack use the library defaults
(``scl.attacks.GRADIENT_ATTACK_FIT`` for the warm-started re-fits, ``COARSE_PAIRS`` and ``COARSE_MAXITER``
for the subsample fit that starts the first re-fit from 20,000 pairs on), except for the >= 100,000-parameter
network at n = 50,000, where one function-and-gradient evaluation over the 2n = 100,000 samples costs about
a second on a 2-core CPU: there the attacker's fit is capped at 50 L-BFGS iterations, each re-fit at 10
iterations with 10 CG steps, and the subsample fit at 50 iterations (``CAPS`` below; reported as
``fit_kwargs``/``attack_fit_kwargs``), so that the setting runs in minutes. Each setting reports the work of
the attack's fits (``refits``: L-BFGS iterations and loss-and-gradient evaluations of each outer step's
re-fit, of the selection's and of the subsample fit, and the totals on all pairs; the conjugate-gradient
solves take at most ``cg_maxiter`` Hessian-vector products each). Load averages (1 min) before and after
each setting are reported: timings on a
shared machine are only comparable at similar load.

  python benchmarks/attack.py                 # all settings
  python benchmarks/attack.py --one 1000 64   # one setting (n, hidden widths comma-separated)
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402
SETTINGS = [(1000, (64,)), (4000, (64,)), (50000, (64,)), (50000, (256, 256, 256))]
# (attacker's fit kwargs, attack re-fit kwargs) per (n, hidden); absent: library defaults
CAPS = {(50000, (256, 256, 256)): (dict(maxiter=50), dict(maxiter=10, cg_maxiter=10, coarse_maxiter=50))}


def one(n, hidden):
  import jax
  import jax.numpy as jnp
  from scl import attacks, preferences, reward_model as rm

  def ring(key, m):
    kc, kn = jax.random.split(key)
    ang = 2 * jnp.pi * jax.random.randint(kc, (m,), 0, 8) / 8
    return 2.0 * jnp.stack([jnp.cos(ang), jnp.sin(ang)], -1) + 0.02 * jax.random.normal(kn, (m, 2))

  def reward(x):
    return -10.0 * jnp.maximum(jnp.linalg.norm(x - jnp.array([2.0, 0.0]), axis=-1) - 3.0, 0.0)

  pool = ring(jax.random.key(0), 2 * n)
  x, z, o = preferences.make_preferences(jax.random.key(1), pool, n, reward, "deterministic")
  net = rm.mlp_reward(tuple(hidden))
  p0 = net.init(jax.random.key(2), x[:1])
  n_params = sum(a.size for a in jax.tree_util.tree_leaves(p0))
  l2, kappa, alpha = jnp.float32(1e-3), jnp.float32(0.2), jnp.float32(0.8)

  fit_kw, attack_kw = CAPS.get((n, tuple(hidden)), ({}, {}))
  load_before = os.getloadavg()[0]
  # data passed as arguments, not closed over: as inside scl.run, and XLA does not constant-fold them
  fit = jax.jit(lambda p, x, z, o: rm.fit_reward(p, net.apply, x, z, o, l2, return_info=True, **fit_kw))
  t = time.perf_counter()
  theta, info = jax.block_until_ready(fit(p0, x, z, o))
  fit_s = time.perf_counter() - t

  run = jax.jit(lambda x, z, o, pool, theta, kappa, alpha: attacks.gradient_attack(
      x, z, o, pool, theta, net.apply, kappa, alpha, l2, steps=5, return_info=True, **attack_kw))
  t = time.perf_counter()
  compiled = run.lower(x, z, o, pool, theta, kappa, alpha).compile()
  compile_s = time.perf_counter() - t
  times = []
  for _ in range(3 if n_params < 10000 else 1):  # best of 3, but once for the wide net (minutes)
    t = time.perf_counter()
    o_flip, mask, work = jax.block_until_ready(compiled(x, z, o, pool, theta, kappa, alpha))
    times.append(time.perf_counter() - t)
  out = dict(n_pairs=n, hidden=list(hidden), n_params=int(n_params), pool=2 * n, steps=5,
             fused_kernel="scl_bt_mlp1" in compiled.as_text(),  # scl/_native.py; SCL_NATIVE=0 turns it off
             attack_s=min(times), attack_s_all=times, compile_s=compile_s,
             fit_theta_s_incl_compile=fit_s, fit_theta_iters=int(info.num_iters),
             fit_theta_evals=int(info.num_evals),
             fit_theta_grad_norm=float(info.grad_norm),
             fit_kwargs=fit_kw, attack_fit_kwargs={**attacks.GRADIENT_ATTACK_FIT, "coarse_pairs": attacks.COARSE_PAIRS,
                                                   "coarse_maxiter": attacks.COARSE_MAXITER, **attack_kw},
             load_avg_1min_before=load_before, load_avg_1min_after=os.getloadavg()[0],
             flips=int(mask.sum()), refits=refit_work(work),
             peak_rss_mb=_machine.peak_rss_mb(), device=str(jax.devices()[0]))
  print(json.dumps(out))


def refit_work(info):
  """The attack's re-fits: L-BFGS iterations and loss-and-gradient evaluations per outer step, the
  selection's, and the totals on all pairs (from ``gradient_attack(return_info=True)``); then those of the
  subsample fit that starts the first re-fit (``coarse_*``: on about ``scl.attacks.COARSE_PAIRS`` pairs,
  from 10,000 pairs on). ``reference.py`` reports the same."""
  out = {k: [int(v) for v in info[k]] for k in ("fit_iters", "fit_evals")}
  out.update({k: int(info[k]) for k in ("select_fit_iters", "select_fit_evals", "coarse_fit_iters",
                                        "coarse_fit_evals")})
  out["total_iters"] = sum(out["fit_iters"]) + out["select_fit_iters"]
  out["total_evals"] = sum(out["fit_evals"]) + out["select_fit_evals"]
  return out


def main():
  if len(sys.argv) > 1 and sys.argv[1] == "--one":
    one(int(sys.argv[2]), [int(w) for w in sys.argv[3].split(",")])
    return
  timeout = float(os.environ.get("BENCH_TIMEOUT_S", "1800"))
  results = []
  for n, hidden in SETTINGS:
    cmd = [sys.executable, __file__, "--one", str(n), ",".join(map(str, hidden))]
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
      line = [l for l in proc.stdout.splitlines() if l.startswith("{")]
      results.append(json.loads(line[-1]) if line else
                     dict(n_pairs=n, hidden=list(hidden), error=proc.stderr[-500:]))
    except subprocess.TimeoutExpired:
      results.append(dict(n_pairs=n, hidden=list(hidden), error=f"timed out after {timeout:.0f} s"))
  print(json.dumps(dict(benchmark="gradient_attack", machine=_machine.machine(), results=results), indent=1))


if __name__ == "__main__":
  main()
