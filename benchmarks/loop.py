"""Speed of scl's flow model and of the whole loop, against the machine's own peak; prints JSON.

(a) ``equal_work``: the work of one iteration of the second paper's public code (``osu-srml/
Adversarial-Curation``), which retrains its 2-D DDPM for 50 epochs of 25,000 samples at batch 1,000 (1,250 Adam
steps) and then draws 50,000 samples with 100 network evaluations. Here scl's flow does the same work: width
128, depth 3, 1,250 Adam steps at batch 1,000 on 25,000 weighted samples, then 50,000 samples with 100 NFE.
Reported: compile seconds, run seconds (median and best of ``--repeats``, ``block_until_ready``), FLOPs, GFLOP/s
and their fraction of the machine's peak (below). Ratios against the reference code come only from
``benchmarks/reference.py``, which runs both programs on one machine in one run.

``peak``: the machine's FP32 peak as jitted code reaches it, measured in the same run: the best of 5 calls of
a ``2048 x 2048 @ 2048 x 2048`` float32 matrix product (17.2 GFLOP), on all CPUs XLA uses. Shared hosts drift:
the same calls can run 1.5-2.5x slower for minutes at a time, so the peak is also probed (best of 3 products)
just before each timed fit and sample call, and each call's GFLOP/s is set against its own probe
(``fraction_of_adjacent_peak_median`` and ``_best``, with the probes in ``adjacent_peak_gflops_per_second``);
``fraction_of_peak`` is the median call against the one peak above. Beside each probe,
``adjacent_core_roundtrip_ns`` is a cache line's round trip between the two first CPUs
(:func:`_machine.core_roundtrip_ns`; null without a C compiler): on a virtual machine the fit's many small
kernels, split over both threads, slow down with it where the large product does not.

FLOPs: XLA's ``compiled.cost_analysis()["flops"]`` counts the body of a ``while`` loop (a ``lax.scan``)
once, not times its trip count, so the FLOPs of a whole fit/sample are taken as those of the same program
compiled with one training step (resp. one midpoint step = 2 NFE) times the number of steps. Where the fit's
gradient and the draw's velocity run on scl's fused CPU kernels (``native_kernel``;
:func:`scl._native.supports_flow`), custom calls whose arithmetic the cost analysis cannot see, the FLOPs are
counted on the ``jax.numpy`` path (``supports_flow`` patched to False while the counting program is traced),
which computes the same products.

(b) ``loop``: seconds per iteration of the whole jitted loop (``scl.loop.make_run_fn``) at paper scale (50,000
candidates, 25,000 kept, 10 iterations) for each model family; the per-iteration time is
``(t(T) - t(T=0)) / T``, where ``T=0`` runs only ``init`` of ``p_0`` and the final evaluation.

(c) ``adversarial``: the same for the adversarial loop at the scale of the second paper's toy run (its
public code's settings, as ``experiments/configs/adversarial.py:code_toy``): 50,000 samples per iteration,
half kept (``luce_pool``, ``β = 0.5``), 50,000 preference pairs, the attacker's reward fitted on the genuine
labels, the gradient attack at ``κ = 0.2`` (5 outer steps), the platform's fit on the flipped labels; the
generative model is the Gaussian mixture (``--adv_model``). Beside it the same loop with ``attack="none"``
(the attacker's fit and the platform's fit, no attack), so the attack's share is visible. The pool has fewer
samples than the pairs' 100,000 rows, so the platform's Bradley–Terry fits and the attack take the pairs as
indices into it (``points=`` of :func:`scl.reward_model.fit_reward`).

Every section reports the peak resident memory of the process so far (``peak_rss_mb``) and the machine
(CPU model, cores, vector extensions) with the load average at start and end.

    python benchmarks/loop.py [--quick] [--repeats 3] [--families categorical,gmm,flow] [--skip_loop]
                              [--skip_equal_work] [--skip_adversarial]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from scl import _native
from scl.models.flow import make_flow
from scl.hyper import Hyper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402


def _time(fn, args, repeats, warmup=True, before=None) -> dict:
  """:func:`_machine.time_calls` of the compiled ``fn(*args)`` (waits for the result); ``warmup=False``
  skips the warm-up call (a program already compiled ahead of time, too expensive to run twice); ``before``
  runs untimed before each call (its results: ``before_all``)."""
  return _machine.time_calls(lambda: fn(*args), repeats, warmup=None if warmup else (lambda: None),
                             sync=jax.block_until_ready, before=before)


def _against_adjacent_peak(flops: float, timing: dict) -> dict:
  """Each call's GFLOP/s as a fraction of the peak probed just before it (``timing["before_all"]``): median
  and best over the calls, and the probes' GFLOP/s. On a shared host whose speed drifts from minute to minute
  this sets each call against the machine's speed at that moment, not against one probe minutes away."""
  peaks = [probe["gflops_per_second"] for probe in timing["before_all"]]
  fractions = [flops / t / 1e9 / peak for t, peak in zip(timing["seconds_all"], peaks)]
  return dict(fraction_of_adjacent_peak_median=float(np.median(fractions)),
              fraction_of_adjacent_peak_best=max(fractions), adjacent_peak_gflops_per_second=peaks,
              adjacent_core_roundtrip_ns=[probe["core_roundtrip_ns"] for probe in timing["before_all"]])


def _compile(jitted, *args):
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - t0


def _flops(compiled) -> float:
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):  # older jax returned one dict per device
    ca = ca[0]
  return float(ca.get("flops", float("nan")))


def jnp_path_flops(fn, *args, static_argnums=()) -> float:
  """FLOPs of ``jax.jit(fn)(*args)`` as XLA counts them on the ``jax.numpy`` path: the flow's fused kernels (its
  training gradient and its velocity) are custom calls, opaque to the cost analysis, that do the same products.
  ``fn`` must be one jit has not traced before (a new model's), or it reuses that trace."""
  with mock.patch.object(_native, "supports_flow", lambda *a: False):
    return _flops(jax.jit(fn, static_argnums=static_argnums).lower(*args).compile())


def _ring(key, n, radius=2.0, std=0.02, modes=8):
  k_mode, k_noise = jax.random.split(key)
  angle = 2 * jnp.pi * jax.random.randint(k_mode, (n,), 0, modes) / modes
  centres = radius * jnp.stack([jnp.cos(angle), jnp.sin(angle)], -1)
  return centres + std * jax.random.normal(k_noise, (n, 2))


def equal_work(args) -> dict:
  """(a): scl's flow fit + sample at the reference code's size and work."""
  n_data, n_samples = args.n_data, args.n_samples
  kw = dict(width=args.width, depth=3, batch_size=args.batch_size, sample_steps=args.nfe)
  model = make_flow(train_steps=args.train_steps, init_steps=args.init_steps, **kw)
  x = _ring(jax.random.PRNGKey(0), n_data)
  # Weighted like a curated set: positive random weights summing to 1 (cost does not depend on them).
  w = jax.random.uniform(jax.random.PRNGKey(1), (n_data,), minval=0.5, maxval=1.5)
  w = w / jnp.sum(w)
  hyper = Hyper.defaults().arrays()
  key = jax.random.PRNGKey(2)

  init_c, init_compile = _compile(jax.jit(model.init), key, x, w)
  t0 = time.perf_counter()
  params = jax.block_until_ready(init_c(key, x, w))
  init_seconds = time.perf_counter() - t0

  probe = peak_probe()
  fit_c, fit_compile = _compile(jax.jit(model.fit), params, key, x, w, hyper)
  fit_t = _time(fit_c, (params, key, x, w, hyper), args.repeats, before=probe)
  sample_c, sample_compile = _compile(jax.jit(model.sample, static_argnums=2), params, key, n_samples)
  sample_t = _time(sample_c, (params, key), args.repeats, before=probe)
  fit_med, sample_med = fit_t["seconds_median"], sample_t["seconds_median"]

  # FLOPs of one training step and of one midpoint step (2 NFE) on all n samples in one chunk (the
  # chunks' lax.map is a while loop too), times the number of steps.
  one_step = make_flow(train_steps=1, init_steps=1, **kw)
  one_midpoint = make_flow(init_steps=1, **{**kw, "sample_steps": 2, "sample_chunk": n_samples})
  fit_flops = jnp_path_flops(one_step.fit, params, key, x, w, hyper) * args.train_steps
  sample_flops = jnp_path_flops(one_midpoint.sample, params, key, n_samples, static_argnums=2) * (args.nfe / 2)

  peak = peak_gflops()
  native = _native.supports_flow(args.width, 2, kw["depth"])
  return dict(
      size=dict(width=args.width, depth=3, train_steps=args.train_steps, batch_size=args.batch_size,
                n_data=n_data, n_samples=n_samples, nfe=args.nfe, solver="midpoint", dtype="float32"),
      peak=peak,
      init=dict(steps=args.init_steps, compile_seconds=init_compile, seconds=init_seconds),
      fit=dict(native_kernel=native, compile_seconds=fit_compile, **fit_t, gflop=fit_flops / 1e9,
               gflops_per_second=fit_flops / fit_med / 1e9,
               gflops_per_second_best=fit_flops / fit_t["seconds_best"] / 1e9,
               fraction_of_peak=fit_flops / fit_med / 1e9 / peak["gflops_per_second"],
               **_against_adjacent_peak(fit_flops, fit_t), ms_per_step=1e3 * fit_med / args.train_steps),
      sample=dict(native_kernel=native, compile_seconds=sample_compile, **sample_t, gflop=sample_flops / 1e9,
                  gflops_per_second=sample_flops / sample_med / 1e9,
                  gflops_per_second_best=sample_flops / sample_t["seconds_best"] / 1e9,
                  fraction_of_peak=sample_flops / sample_med / 1e9 / peak["gflops_per_second"],
                  **_against_adjacent_peak(sample_flops, sample_t)),
      peak_rss_mb=_machine.peak_rss_mb(),
  )


def _square_product(size: int):
  """A zero-argument call of the jitted ``size x size`` float32 product (compiled, not yet run)."""
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32)
  mm = jax.jit(jnp.matmul).lower(a, b).compile()
  return lambda: mm(a, b)


def peak_probe(size: int = 2048, calls: int = 3):
  """A probe of the machine at this moment: a function returning ``gflops_per_second``, the best of ``calls``
  calls of the jitted ``size x size`` float32 product (about 0.1-0.3 s on 2 CPU cores), and
  ``core_roundtrip_ns`` (:func:`_machine.core_roundtrip_ns`, about 20 ms)."""
  product = _square_product(size)
  jax.block_until_ready(product())

  def probe() -> dict:
    timing = _machine.time_calls(product, calls, warmup=lambda: None, sync=jax.block_until_ready)
    return dict(gflops_per_second=2.0 * size ** 3 / timing["seconds_best"] / 1e9,
                core_roundtrip_ns=_machine.core_roundtrip_ns())

  return probe


def peak_gflops(size: int = 2048, repeats: int = 5) -> dict:
  """The FP32 GFLOP/s of a jitted ``size x size`` matrix product (best of ``repeats``): the peak to compare to."""
  t = _machine.time_calls(_square_product(size), repeats, sync=jax.block_until_ready)
  flop = 2.0 * size ** 3
  return dict(matmul=f"{size}x{size} @ {size}x{size} float32", gflop=flop / 1e9,
              seconds_best=t["seconds_best"], gflops_per_second=flop / t["seconds_best"] / 1e9)


def _per_iteration(overrides: dict, iterations: int, repeats: int, warmup: bool) -> dict:
  """Seconds per iteration of the whole jitted loop on ``gaussian8(**overrides)``: ``(t(T) - t(0)) / T``.

  ``T = 0`` runs only ``init`` of ``p_0`` and the final evaluation. Each program is compiled ahead of time
  (``compile_seconds``) and timed with :func:`_time`.
  """
  from scl import configs, loop  # imported here so (a) runs even without the loop
  key = jax.random.PRNGKey(0)
  out, runs = {}, {}
  for T in (0, iterations):
    cfg = configs.gaussian8(iterations=T, **overrides)
    hyper = cfg.hyper.arrays()
    run_fn, data = loop.make_run_fn(cfg)
    compiled, compile_s = _compile(jax.jit(run_fn), hyper, key, data)
    timing = _time(compiled, (hyper, key, data), repeats, warmup=warmup)
    runs[T] = (timing["seconds_median"], timing["cpu_seconds_median"])
    out[f"T{T}"] = dict(compile_seconds=compile_s, **timing)
  out["pool_size"], out["n_keep"], out["iterations"] = cfg.curation.pool_size, cfg.curation.n_keep, iterations
  out["seconds_per_iteration"] = (runs[iterations][0] - runs[0][0]) / iterations
  out["cpu_seconds_per_iteration"] = (runs[iterations][1] - runs[0][1]) / iterations
  return out


def loop_family(family: str, args) -> dict:
  """(b): seconds per iteration of the whole jitted loop for one model family."""
  overrides = dict(model=family)
  if args.quick:
    overrides.update(pool_size=2000, n_keep=1000, n_real=1000, n_eval=1000, train_steps=20,
                     init_steps=20, batch_size=100, sample_steps=4, em_steps=5)
  # The flow's loop is expensive: run it once (already compiled, so no warm-up); the others `repeats` times
  # after a warm-up.
  expensive = family == "flow" and not args.quick
  out = dict(model=family, **_per_iteration(overrides, args.iterations, 1 if expensive else args.repeats,
                                            warmup=not expensive))
  out["peak_rss_mb"] = _machine.peak_rss_mb()
  return out


def adversarial(args) -> dict:
  """(c): seconds per iteration of the adversarial loop at the toy run's scale, gradient attack vs none."""
  base = dict(model=args.adv_model, learned_reward=True, ring_scale=1.414, curation="luce_pool", beta=0.5,
              pool_size=50_000, n_keep=25_000, n_pairs=50_000, kappa=0.2, alpha=0.8,
              attack_weighting="code")
  if args.quick:
    base.update(pool_size=2000, n_keep=1000, n_real=1000, n_eval=1000, n_pairs=1000, em_steps=5)
  out = dict(settings=dict(base), iterations=args.adv_iterations)
  for attack in ("gradient", "none"):  # one run each: an iteration takes seconds
    out[attack] = _per_iteration(dict(base, attack=attack), args.adv_iterations, 1, warmup=False)
  out["attack_seconds_per_iteration"] = (out["gradient"]["seconds_per_iteration"]
                                         - out["none"]["seconds_per_iteration"])
  out["peak_rss_mb"] = _machine.peak_rss_mb()
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="small smoke run (seconds)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--families", default="categorical,gmm,flow")
  parser.add_argument("--iterations", type=int, default=10)
  parser.add_argument("--skip_loop", action="store_true", help="only (a)")
  parser.add_argument("--skip_equal_work", action="store_true", help="skip (a)")
  parser.add_argument("--skip_adversarial", action="store_true", help="skip (c)")
  parser.add_argument("--adv_model", default="gmm", help="generative model of (c)")
  parser.add_argument("--adv_iterations", type=int, default=10, help="iterations timed in (c)")
  args = parser.parse_args()
  if args.quick:
    args.n_data, args.n_samples, args.width, args.batch_size = 2000, 2000, 32, 100
    args.train_steps, args.init_steps, args.nfe, args.repeats, args.iterations = 20, 20, 4, 1, 2
    args.adv_iterations = 1
  else:
    args.n_data, args.n_samples, args.width, args.batch_size = 25_000, 50_000, 128, 1000
    args.train_steps, args.init_steps, args.nfe = 1250, 3000, 100

  result = dict(device=str(jax.devices()[0]), backend=jax.default_backend(), machine=_machine.machine(),
                jax_version=jax.__version__, quick=args.quick, load_average_at_start=_machine.load_average())
  if not args.skip_equal_work:
    result["equal_work"] = equal_work(args)
  if not args.skip_loop:
    result["loop"] = {}
    for family in args.families.split(","):
      try:
        result["loop"][family] = loop_family(family, args)
      except Exception as e:  # report and keep going: one broken family should not hide the others
        result["loop"][family] = dict(error=f"{type(e).__name__}: {e}")
  if not args.skip_adversarial:
    result["adversarial"] = adversarial(args)
  result["load_average_at_end"] = _machine.load_average()
  result["peak_rss_mb"] = _machine.peak_rss_mb()
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
