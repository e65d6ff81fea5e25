"""Seconds per exact loop iteration (scl.exact.step, float32, jitted), printed as JSON.

K is traced, so one compilation per support size n serves every K; the compile time is reported separately.

    python benchmarks/exact.py [--sizes 1000,100000,1000000] [--Ks 2,64,4096]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from scl import exact

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--sizes", default="1000,100000,1000000")
  parser.add_argument("--Ks", default="2,64,4096")
  parser.add_argument("--lam", type=float, default=1.0)
  parser.add_argument("--num_nodes", type=int, default=exact.NUM_NODES)
  parser.add_argument("--min_seconds", type=float, default=1.0, help="time each case for at least this long")
  args = parser.parse_args()
  sizes = [int(s) for s in args.sizes.split(",")]
  Ks = [float(k) for k in args.Ks.split(",")]

  step = jax.jit(functools.partial(exact.step, num_nodes=args.num_nodes))
  share = jnp.float32(1.0 / (1.0 + args.lam))
  results = []
  for n in sizes:
    rng = np.random.default_rng(n)
    p = jnp.asarray(rng.dirichlet(np.ones(n)), jnp.float32)
    r = jnp.asarray(rng.uniform(0.0, 10.0, n), jnp.float32)
    t0 = time.perf_counter()
    compiled = step.lower(p, r, jnp.float32(2.0), share, p).compile()
    compile_s = time.perf_counter() - t0
    for K in Ks:
      K = jnp.float32(K)
      compiled(p, r, K, share, p).block_until_ready()          # warm-up
      reps, elapsed = 0, 0.0
      q = p
      t0 = time.perf_counter()
      while elapsed < args.min_seconds or reps < 2:
        q = compiled(q, r, K, share, p)
        q.block_until_ready()
        reps += 1
        elapsed = time.perf_counter() - t0
      results.append(dict(n=n, K=float(K), seconds_per_iteration=elapsed / reps, repetitions=reps,
                          compile_seconds=compile_s, finite=bool(jnp.all(jnp.isfinite(q)))))
  print(json.dumps(dict(device=str(jax.devices()[0]), backend=jax.default_backend(),
                        machine=_machine.machine(), load_average=_machine.load_average(),
                        num_nodes=args.num_nodes, dtype="float32", results=results,
                        peak_rss_mb=_machine.peak_rss_mb()), indent=1))


if __name__ == "__main__":
  main()
