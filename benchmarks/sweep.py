"""One vmapped, sharded ``scl.sweeps.sweep`` against sequential ``scl.run`` calls; prints JSON.

The grid: 64 points on Gaussian-8 (``K ∈ {1, 2, 4, 8}`` × ``λ ∈ {0.25, 1, 4, inf}`` × 4 seeds), the Gaussian
mixture model at a reduced sample scale (``--pool_size``, ``--n_keep``, ``--iterations``; every field of the
config is the same for both sides).

Reported (seconds, wall clock, results fetched to the host; ``*_cpu_seconds`` the process CPU time beside
it, less sensitive to other jobs on a shared machine; ``load_average`` before and after):
  ``sequential.with_compile`` 64 ``scl.run`` calls from a cold cache (the first one compiles);
  ``sequential.warm``       64 calls with other values (compiled program reused), best of ``--repeats``;
  ``sweep[<batch>].with_compile`` the first ``sweep`` call (trace + compile + run), for the default
                            ``batch_size`` (``"auto"``: 1 point per vmap on CPU, the whole shard elsewhere)
                            and for ``batch_size=None`` (the whole shard in one vmap, the old behaviour);
  ``sweep[<batch>].warm``   a second ``sweep`` with other values of the same shape (cached program), best of
                            ``--repeats``;
and the speed-ups over sequential (> 1: the sweep is faster). ``workdir``: the warm default sweep again with a
``workdir`` (each repeat a fresh one: every point saved, in about 8 chunks on CPU) against the same sweep without;
``store``: the point store alone (:class:`scl.checkpoint.PointStore`), saving 256 one-point chunks of 40 kB
outputs (the first and the second half timed apart) and reading them back, the worst case of ``max_chunk=1``.
``devices``: where more than one device exists, the warm sweep on 1 device against all of them, per batch size;
on a CPU-only machine this runs in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=<cores>`` (each core a device).

    python benchmarks/sweep.py [--quick] [--model gmm] [--skip_devices]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # Run from a checkout.

import jax  # noqa: E402
import numpy as np  # noqa: E402

import scl  # noqa: E402
from scl import checkpoint  # noqa: E402
from scl import sweeps  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402

GRID = dict(K=[1, 2, 4, 8], lam=[0.25, 1.0, 4.0, float("inf")])
GRID_WARM = dict(K=[2, 3, 5, 8], lam=[0.5, 2.0, 8.0, float("inf")])   # same shape, other values
SEEDS, SEEDS_WARM = [0, 1, 2, 3], [4, 5, 6, 7]


def make_config(args) -> scl.Config:
  return scl.configs.gaussian8(model=args.model, pool_size=args.pool_size, n_keep=args.n_keep,
                               n_real=args.n_keep, n_eval=args.n_eval, iterations=args.iterations, K_max=8,
                               em_steps=args.em_steps, n_atoms=args.n_atoms)


BATCH_SIZES = {"auto": "auto", "full": None}   # report name -> sweep(batch_size=...)


def timed(fn):
  t0, c0 = time.perf_counter(), time.process_time()
  out = fn()
  return time.perf_counter() - t0, time.process_time() - c0, out


def best(fn, repeats: int) -> tuple[float, float]:
  """(wall, cpu) seconds of the fastest of ``repeats`` calls."""
  runs = [timed(fn)[:2] for _ in range(repeats)]
  return min(runs)


def workdir_cost(cfg, repeats: int) -> dict:
  """The warm default sweep with a fresh workdir each time (every point saved) against the same without."""
  root = tempfile.mkdtemp(prefix="scl-bench-sweep-")
  try:
    fresh = iter(range(1_000_000))
    sweep = lambda **kw: sweeps.sweep(cfg, seeds=SEEDS_WARM, **GRID_WARM, **kw)
    with_store = lambda: sweep(workdir=os.path.join(root, str(next(fresh))))
    grid = with_store()  # compiles the chunked program
    wall, cpu = best(with_store, repeats)
    plain_wall, plain_cpu = best(sweep, repeats)
    return dict(with_workdir_seconds=wall, with_workdir_cpu_seconds=cpu, without_seconds=plain_wall,
                without_cpu_seconds=plain_cpu, chunks=grid.info["chunks"],
                files=len(os.listdir(os.path.join(root, "0", checkpoint.SWEEP_DIRNAME))))
  finally:
    shutil.rmtree(root, ignore_errors=True)


def store_cost(n_points: int = 256, floats_per_point: int = 10_000) -> dict:
  """Seconds to save ``n_points`` one-point chunks in a :class:`scl.checkpoint.PointStore` and to reload them."""
  rng = np.random.default_rng(0)
  inputs = {"K": np.arange(n_points, dtype=np.float32),
            "key": rng.integers(0, 2**32, (n_points, 2), dtype=np.uint32)}
  out = rng.standard_normal((n_points, floats_per_point)).astype(np.float32)
  root = tempfile.mkdtemp(prefix="scl-bench-store-")
  try:
    store = checkpoint.PointStore(root, "bench", inputs)
    halves = []
    for half in np.array_split(np.arange(n_points), 2):
      t0 = time.perf_counter()
      for i in half:
        store.add(np.array([i]), {"samples": out[i:i + 1]})
      halves.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    loaded = checkpoint.PointStore(root, "bench", inputs).outputs()["samples"]
    load = time.perf_counter() - t0
    assert np.array_equal(loaded, out)
    # A store that rewrote what it had saved would take about 3x as long over its second half as its first.
    return dict(points=n_points, bytes_per_point=out[0].nbytes, save_seconds=sum(halves),
                save_seconds_first_half=halves[0], save_seconds_second_half=halves[1], load_seconds=load)
  finally:
    shutil.rmtree(root, ignore_errors=True)


def device_scaling(cfg, repeats: int) -> dict:
  """Warm sweep time on 1 device and on all devices (this process's devices), per batch size."""
  devices = jax.devices()
  out = dict(device_count=len(devices), device_kind=devices[0].device_kind)
  for label, batch_size in BATCH_SIZES.items():
    res = {}
    for name, devs in (("one_device", devices[:1]), ("all_devices", devices)):
      grid = sweeps.sweep(cfg, seeds=SEEDS, devices=devs, batch_size=batch_size, **GRID)   # compile
      res[f"{name}_seconds"], res[f"{name}_cpu_seconds"] = best(
          lambda: sweeps.sweep(cfg, seeds=SEEDS_WARM, devices=devs, batch_size=batch_size, **GRID_WARM),
          repeats)
      res[f"{name}_batch_size"] = grid.info["batch_size"]
    res["speedup"] = res["one_device_seconds"] / res["all_devices_seconds"]
    out[label] = res
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--model", default="gmm")
  parser.add_argument("--pool_size", type=int, default=10_000)
  parser.add_argument("--n_keep", type=int, default=5_000)
  parser.add_argument("--n_eval", type=int, default=2_000)
  parser.add_argument("--iterations", type=int, default=5)
  parser.add_argument("--em_steps", type=int, default=10)
  parser.add_argument("--n_atoms", type=int, default=1024)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--quick", action="store_true", help="smaller samples (pool 2,000, 2 iterations)")
  parser.add_argument("--skip_devices", action="store_true")
  parser.add_argument("--devices_only", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.quick:
    args.pool_size, args.n_keep, args.n_eval, args.iterations = 2000, 1000, 1000, 2
  cfg = make_config(args)

  if args.devices_only:  # The subprocess with several CPU devices, with its own peak memory.
    print(json.dumps(dict(device_scaling(cfg, args.repeats), peak_rss_mb=_machine.peak_rss_mb())))
    return

  points = [(K, lam, s) for K in GRID["K"] for lam in GRID["lam"] for s in SEEDS]
  points_warm = [(K, lam, s) for K in GRID_WARM["K"] for lam in GRID_WARM["lam"] for s in SEEDS_WARM]
  assert len(points) == 64

  def sequential(pts):
    return [scl.run(cfg.replace(K=K, lam=lam), seed=s).metrics["expected_reward"] for K, lam, s in pts]

  load_before = os.getloadavg()
  seq_cold, seq_cold_cpu, seq_values = timed(lambda: sequential(points))
  seq_warm, seq_warm_cpu = best(lambda: sequential(points_warm), args.repeats)
  sequential_times = dict(with_compile_seconds=seq_cold, with_compile_cpu_seconds=seq_cold_cpu,
                          warm_seconds=seq_warm, warm_cpu_seconds=seq_warm_cpu)
  sweep_times = {}
  for label, batch_size in BATCH_SIZES.items():
    cold, cold_cpu, grid = timed(lambda: sweeps.sweep(cfg, seeds=SEEDS, batch_size=batch_size, **GRID))
    warm, warm_cpu = best(lambda: sweeps.sweep(cfg, seeds=SEEDS_WARM, batch_size=batch_size, **GRID_WARM),
                          args.repeats)
    max_diff = max(float(np.max(np.abs(grid.sel(K=K, lam=lam, seed=s).metrics["expected_reward"] - v)))
                   for (K, lam, s), v in zip(points, seq_values))
    sweep_times[label] = dict(
        batch_size=grid.info["batch_size"], with_compile_seconds=cold, with_compile_cpu_seconds=cold_cpu,
        warm_seconds=warm, warm_cpu_seconds=warm_cpu, speedup_with_compile=seq_cold / cold,
        speedup_warm=seq_warm / warm, speedup_with_compile_cpu=seq_cold_cpu / cold_cpu,
        speedup_warm_cpu=seq_warm_cpu / warm_cpu, max_abs_diff_expected_reward_vs_run=max_diff,
        sweep_info=grid.info)

  result = dict(
      backend=jax.default_backend(), device=str(jax.devices()[0]), device_count=jax.device_count(),
      machine=_machine.machine(),
      config=cfg.describe(),
      grid=dict(points=64, **GRID, seeds=SEEDS), sequential=sequential_times, sweep=sweep_times,
      workdir=workdir_cost(cfg, args.repeats), store=store_cost())

  if not args.skip_devices:
    if jax.device_count() > 1:
      result["devices"] = device_scaling(cfg, args.repeats)
    elif jax.default_backend() == "cpu" and (os.cpu_count() or 1) > 1:
      env = dict(os.environ, JAX_PLATFORMS="cpu",
                 XLA_FLAGS=f"--xla_force_host_platform_device_count={os.cpu_count()}")
      cmd = [sys.executable, os.path.abspath(__file__), "--devices_only", "--repeats", str(args.repeats),
             "--model", args.model, "--pool_size", str(args.pool_size), "--n_keep", str(args.n_keep),
             "--n_eval", str(args.n_eval), "--iterations", str(args.iterations), "--em_steps",
             str(args.em_steps), "--n_atoms", str(args.n_atoms)]
      proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
      if proc.returncode == 0:
        result["devices"] = dict(json.loads(proc.stdout.strip().splitlines()[-1]),
                                 note="CPU cores as separate devices (XLA flag); one device already uses "
                                      "every core for large ops, so this measures sharding overhead and "
                                      "extra parallelism, not 1 core against N")
      else:
        result["devices"] = dict(error=proc.stderr[-2000:])
    else:
      result["devices"] = dict(note="a single device: no device speed-up to measure")
  result["load_average"] = dict(before=load_before, after=os.getloadavg())
  result["peak_rss_mb"] = _machine.peak_rss_mb()  # the devices' subprocess reports its own, under "devices"
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
