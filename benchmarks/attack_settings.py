"""The gradient attack's solver settings compared by work and by quality over many instances, printed as JSON.

The attack's flips are chaotic at the level of solver tolerance (a changed rounding changes a few flips on some
instances, and their re-fitted ``J`` either way), so a setting is judged over many instances, never one: each
variant attacks the same instances, its flips are scored by their ``J`` with ``θ~`` re-fitted tightly from ``θ``
(1,000 L-BFGS iterations, tolerance 1e-6; the attack's own selection uses its looser re-fits), and where its
flips differ from the first variant's it counts as better or worse (a one-sided binomial sign test gives the
p-value of "no worse" failing). It also reports the loss-and-gradient evaluations of the attack's re-fits
(mean and per instance) and the best of ``--repeats`` calls per instance.

Instances are those of ``benchmarks/reference.py`` (the 8-mode ring, its true reward, deterministic labels,
``κ = 0.2``, ``α = 0.8``, ``l2 = 1e-3``, 5 outer steps, a 2 -> 64 -> 1 SiLU reward): the first 8 use the data
of seed 0 (at 1,000 and 4,000 pairs the harness's own, drawn in its order) with ``θ`` fitted from network
initialisations 2-9 (the harness's ``over_inits``), the others data seeds 8, 9, ... with initialisation 2.
Variants are keyword arguments of ``scl.attacks.gradient_attack`` (solver settings such as ``history_size`` and
``cg_maxiter`` included; not ``steps`` or the ``return_*`` switches, which the script sets).

  python benchmarks/attack_settings.py --pairs 1000 --instances 40 \\
      --variants '{"former": {"history_size": 10, "select_from": "theta"}, "default": {}}'
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402
import reference  # noqa: E402  (its data: ring, attack_pairs; stdlib-only at import)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--pairs", type=int, default=1000)
  parser.add_argument("--instances", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=3, help="timed calls per instance and variant (best kept)")
  parser.add_argument("--variants", default='{"former": {"history_size": 10, "select_from": "theta"}, '
                                            '"default": {}}',
                      help="JSON object: name -> gradient_attack keyword arguments; the first is the baseline")
  args = parser.parse_args()
  variants = json.loads(args.variants)
  if not isinstance(variants, dict) or len(variants) < 1:
    raise SystemExit(f"--variants must be a JSON object with at least one variant, got {args.variants!r}")
  for name, kw in variants.items():
    if not isinstance(kw, dict):
      raise SystemExit(f"--variants: {name!r} must map to an object of keyword arguments, got {kw!r}")
    fixed = sorted(set(kw) & {"steps", "return_info", "return_scores"})
    if fixed:
      raise SystemExit(f"--variants: {name!r} sets {fixed}, which this script fixes")
  if args.pairs < 10 or args.instances < 1 or args.repeats < 1:
    raise SystemExit(f"need --pairs >= 10, --instances >= 1, --repeats >= 1; got {args.pairs}, "
                     f"{args.instances}, {args.repeats}")

  import jax
  import jax.numpy as jnp
  import numpy as np
  from scl import attacks, reward_model as rm
  import attack as attack_benchmark

  n = args.pairs
  net = rm.mlp_reward((reference.HIDDEN,))
  l2, kappa, alpha = (jnp.float32(v) for v in (reference.L2, reference.KAPPA, reference.ALPHA))
  fit = jax.jit(lambda p, x, z, o: rm.fit_reward(p, net.apply, x, z, o, l2))

  def data(seed):
    rng = np.random.default_rng(seed)
    sizes = reference.FULL["attack_pairs"]
    if seed == 0 and n in sizes:  # the harness draws its sizes' pools from one generator, in order
      for m in sizes[:sizes.index(n)]:  # (reference.write_data)
        reference.ring(rng, 2 * m)
    return tuple(jnp.asarray(a) for a in reference.attack_pairs(rng, n))

  @jax.jit
  def tight_j(o_new, o, x, z, pool, theta):
    r_pool = net.apply(theta, pool)
    return attacks.relaxed_objective(o_new - o, theta, o=o, x=x, z=z, x_pool=pool, r_pool=r_pool,
                                     apply_fn=net.apply, alpha=alpha, l2=l2, shift=jnp.max(r_pool),
                                     standardise=True, maxiter=1000, tol=1e-6)[0]

  programs = {name: jax.jit(lambda x, z, o, pool, theta, kw=kw: attacks.gradient_attack(
      x, z, o, pool, theta, net.apply, kappa, alpha, l2, steps=reference.OUTER_STEPS, return_info=True, **kw))
      for name, kw in variants.items()}
  load_before = os.getloadavg()[0]
  rows = {name: dict(j=[], evals=[], seconds=[], masks=[]) for name in variants}
  for i in range(args.instances):
    seed, init = (0, 2 + i) if i < 8 else (i, 2)
    x, z, o, pool = data(seed)
    theta = fit(net.init(jax.random.key(init), x[:1]), x, z, o)
    for name, program in programs.items():
      out = jax.block_until_ready(program(x, z, o, pool, theta))  # compiles on the first instance
      times = []
      for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(program(x, z, o, pool, theta))
        times.append(time.perf_counter() - t0)
      row = rows[name]
      row["j"].append(float(tight_j(out[0], o, x, z, pool, theta)))
      row["evals"].append(attack_benchmark.refit_work(out[2])["total_evals"])
      row["seconds"].append(min(times))
      row["masks"].append(np.asarray(out[1]))

  base = rows[next(iter(variants))]
  results = {}
  for name, row in rows.items():
    j, jb = np.asarray(row["j"]), np.asarray(base["j"])
    differ = np.array([np.any(a != b) for a, b in zip(row["masks"], base["masks"])])
    worse = int(np.sum(differ & (j > jb + 1e-6 * np.abs(jb))))
    better = int(np.sum(differ & (j < jb - 1e-6 * np.abs(jb))))
    m = better + worse  # the sign test leaves out ties
    results[name] = dict(
        kwargs=variants[name], evals_mean=float(np.mean(row["evals"])), evals=row["evals"],
        seconds_median=statistics.median(row["seconds"]), seconds_best_per_instance=row["seconds"],
        j_median=float(np.median(j)), flips_differ=int(differ.sum()), better=better, worse=worse,
        # P(at least `worse` of the m untied ones worse) if each were a fair coin: small means weaker
        p_weaker=sum(math.comb(m, k) for k in range(worse, m + 1)) / 2 ** m if m else None)
  print(json.dumps(dict(benchmark="attack_settings", machine=_machine.machine(), pairs=n,
                        instances=args.instances, repeats=args.repeats, baseline=next(iter(variants)),
                        load_avg_1min_before=load_before, load_avg_1min_after=os.getloadavg()[0],
                        peak_rss_mb=_machine.peak_rss_mb(), device=str(jax.devices()[0]), results=results),
                   indent=1))


if __name__ == "__main__":
  main()
