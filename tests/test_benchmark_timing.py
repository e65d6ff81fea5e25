"""The benchmarks' timing bookkeeping for a host whose speed drifts: scl's figures in the side-by-side harness
taken over its workers before and after the reference's (``benchmarks/reference.py``), and each timed call set
against a peak probed just before it (``benchmarks/_machine.py``, ``benchmarks/loop.py``). Stand-in calls and
numbers; no benchmark is run."""

from __future__ import annotations

import os
import statistics
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import _machine  # noqa: E402
import loop  # noqa: E402
import reference  # noqa: E402


def _timing(walls, cpus):
  return dict(seconds_all=walls, seconds_median=statistics.median(walls), seconds_best=min(walls),
              cpu_seconds_all=cpus, cpu_seconds_median=statistics.median(cpus), repeats=len(walls))


def test_bracket_takes_each_figure_over_both_workers_calls():
  before = dict(_timing([0.10, 0.12, 0.11], [0.2, 0.2, 0.3]), compile_seconds=3.0, refits={"total_evals": 458},
                train=_timing([4.0, 5.0], [8.0, 9.0]), sample=_timing([4.5], [9.5]), core_roundtrip_ns=[125.0, 540.0])
  after = dict(_timing([0.07, 0.08], [0.15, 0.16]), compile_seconds=9.0, refits={"total_evals": 1},
               train=_timing([3.0, 3.5, 6.0], [6.0, 7.0, 12.0]), sample=_timing([5.5], [11.5]),
               core_roundtrip_ns=[480.0, None])
  out = reference._bracket(before, after)
  # the attack (top level): five calls, median 0.10 (a 3-call and a 2-call median would give 0.11 and 0.075)
  assert out["seconds_all"] == [0.10, 0.12, 0.11, 0.07, 0.08]
  assert out["seconds_median"] == 0.10 and out["seconds_best"] == 0.07 and out["repeats"] == 5
  assert out["cpu_seconds_median"] == 0.2
  assert out["bracket"] == pytest.approx(dict(before_seconds_median=0.11, after_seconds_median=0.075))
  # nested timings (the retrain worker's train and sample) merge the same way
  assert out["train"]["seconds_median"] == 4.0 and out["train"]["seconds_best"] == 3.0
  assert out["train"]["cpu_seconds_median"] == 8.0
  assert out["sample"]["seconds_median"] == 5.0 and out["sample"]["bracket"]["after_seconds_median"] == 5.5
  # everything else is the first worker's
  assert out["compile_seconds"] == 3.0 and out["refits"] == {"total_evals": 458}
  assert out["core_roundtrip_ns"] == [125.0, 540.0, 480.0, None]  # every probe of both workers
  # the ratio reads the merged median
  assert reference._ratio({"seconds_median": 50.0}, out) == 500.0


def test_bracket_keeps_a_failed_worker_visible():
  good, bad = _timing([0.1], [0.2]), {"error": "exit 1", "stderr_tail": "boom"}
  assert reference._bracket(bad, good) == bad
  out = reference._bracket(good, bad)
  assert out["seconds_all"] == [0.1] and out["bracket"] == {"after_error": bad}


def test_time_calls_runs_the_probe_untimed_before_each_call():
  events = []

  def probe():
    events.append("probe")
    return 100.0 + len(events)

  out = _machine.time_calls(lambda: events.append("call"), 3, warmup=lambda: events.append("warmup"), before=probe)
  assert events == ["warmup", "probe", "call", "probe", "call", "probe", "call"]
  assert out["before_all"] == [102.0, 104.0, 106.0] and len(out["cpu_seconds_all"]) == 3
  assert "before_all" not in _machine.time_calls(lambda: None, 1)


def test_each_call_is_set_against_its_own_probe():
  # 100 GFLOP; calls of 1, 2 and 4 s; probes of 200, 100 and 400 GFLOP/s: fractions 0.5, 0.5 and 0.0625
  probes = [dict(gflops_per_second=g, core_roundtrip_ns=ns) for g, ns in ((200.0, 120.0), (100.0, 540.0),
                                                                            (400.0, None))]
  timing = dict(seconds_all=[1.0, 2.0, 4.0], before_all=probes)
  out = loop._against_adjacent_peak(100e9, timing)
  assert out["fraction_of_adjacent_peak_median"] == 0.5
  assert out["fraction_of_adjacent_peak_best"] == 0.5
  assert out["adjacent_peak_gflops_per_second"] == [200.0, 100.0, 400.0]
  assert out["adjacent_core_roundtrip_ns"] == [120.0, 540.0, None]


def test_core_roundtrip_measures_two_cpus_and_leaves_the_affinity_alone(monkeypatch):
  allowed = os.sched_getaffinity(0)
  ns = _machine.core_roundtrip_ns(rounds=20_000)
  assert os.sched_getaffinity(0) == allowed  # the calling thread is unpinned again
  if len(allowed) >= 2 and _machine._roundtrip_library() is not None:
    assert 1.0 < ns < 1e5, ns  # a cache line's round trip: tens of ns to a few µs, even on a busy host
  else:
    assert ns is None
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
  assert _machine.core_roundtrip_ns() is None


def test_the_flows_flops_count_its_products_whatever_path_runs_them():
  """A training step's and a midpoint step's FLOPs (``loop.jnp_path_flops``) are at least the closed form of their
  matrix products, ``6 B (D0 W + L W² + W d)`` forward and backward for a step, ``2 · 2 n (d W + L W² + W d)`` for
  two evaluations, and at most 1.5× it, though the flow's gradient and velocity may run on native kernels, whose
  custom calls XLA's cost analysis cannot see into."""
  import jax
  import jax.numpy as jnp

  from scl.hyper import Hyper
  from scl.models.flow import N_FREQ, make_flow

  batch, width, depth, d, n = 256, 64, 2, 2, 300
  kw = dict(init_steps=1, width=width, depth=depth, batch_size=batch)
  one_step = make_flow(train_steps=1, **kw)
  one_midpoint = make_flow(sample_steps=2, sample_chunk=n, **kw)
  x = jax.random.normal(jax.random.key(0), (500, d))
  w = jnp.full((500,), 1 / 500)
  key = jax.random.key(1)
  params = one_step.init(key, x, w)
  fit = loop.jnp_path_flops(one_step.fit, params, key, x, w, Hyper.defaults().arrays())
  products = 6 * batch * ((d + 2 * N_FREQ + 1) * width + depth * width * width + width * d)
  assert products <= fit <= 1.5 * products
  draw = loop.jnp_path_flops(one_midpoint.sample, params, key, n, static_argnums=2)
  products = 2 * 2 * n * (d * width + depth * width * width + width * d)
  assert products <= draw <= 1.5 * products


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and the fork's inherited peak are Linux's")
def test_a_workers_peak_memory_is_its_own_not_its_parents():
  """ru_maxrss of a process started by another keeps its parent's peak at the fork through exec: a worker
  started by a harness holding 400 MiB reported 400 MiB. peak_rss_mb reads the worker's own high-water mark."""
  import json
  import subprocess
  import numpy as np
  ballast = np.ones(400 * 2**20 // 8)  # 400 MiB, touched
  here = os.path.dirname(_machine.__file__)
  code = f"import sys, json; sys.path.insert(0, {here!r}); import _machine; print(json.dumps(_machine.peak_rss_mb()))"
  child = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
  assert _machine.peak_rss_mb() >= 400 and child < 100, (child, float(ballast[0]))
